"""SR-IOV provisioning and vfio binding on a simulated node, real kernel.

Oracles independent of the agent: `ip` for links and MACs, the filesystem
for sysfs links and /dev/vfio nodes, and the log of sysfs writes the agent
made (the kernel protocol: override, unbind, probe, clear)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nicwarden.agent.devices import binding, converge
from nicwarden.agent.devices import numvfs as vfcount
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.devices.spec import parse_sriov
from nicwarden.agent.errors import (
    Busy,
    HostError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)
from nicwarden.agent.host import pci
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.sysfs import link_name, read_attr
from nicwarden.agent.host.vfnetlink import NetlinkVfConfigurator, VfSettings
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.sim import SimulatedNode
from nicwarden.agent.sim.vfconfig import FRESH_VF, SimVfConfigurator
from nicwarden.agent.store import AttachmentKey, Store
from tests.support.oracle import host_links, run

pytestmark = pytest.mark.root

Hook = Callable[[str, str], None]


class Crash(BaseException):
    """The agent dying mid-operation: nothing catches it."""


class Writer:
    """The simulator's writer, logging each write (path relative to sysfs)
    and running hooks first, which may fail, block or crash."""

    def __init__(self, sim: SimulatedNode) -> None:
        self.sim = sim
        self.log: list[tuple[str, str]] = []
        self.hooks: list[Hook] = []

    def write(self, path: Path, value: str) -> None:
        rel = str(path.relative_to(self.sim.paths.sys))
        for hook in list(self.hooks):
            hook(rel, value)
        self.log.append((rel, value))
        self.sim.write(path, value)

    def values(self, suffix: str) -> list[str]:
        return [v for p, v in self.log if p.endswith(suffix)]


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", name, check=False).returncode == 0


@pytest.fixture
def sim(make_sim: Callable[[str], SimulatedNode]) -> SimulatedNode:
    return make_sim("2x4")


@pytest.fixture
def ctx(sim: SimulatedNode, tmp_path: Path) -> Iterator[DeviceCtx]:
    inventory = LiveInventory(sim.paths, watch_kernel=False)
    inv0 = inventory.rescan()
    shape = [(p.name, len(p.vfs), sum(1 for v in p.vfs if v.fn.netdev)) for p in inv0.pfs]
    assert shape == [(sim.pf_name(0), 4, 4), (sim.pf_name(1), 4, 4)], f"sim came up as {shape}"
    with Store.open(tmp_path / "state") as store:
        yield DeviceCtx(
            paths=sim.paths,
            writer=Writer(sim),
            inventory=inventory,
            store=store,
            netdevs=Netlink(),
            vfconf=SimVfConfigurator(sim),
            timeout_s=5.0,
        )


def writer(ctx: DeviceCtx) -> Writer:
    assert isinstance(ctx.writer, Writer)
    return ctx.writer


def numvfs(sim: SimulatedNode, i: int) -> int:
    return int(read_attr(sim.paths.pci_devices / sim.pf_address(i) / "sriov_numvfs") or -1)


def driver(sim: SimulatedNode, address: str) -> str | None:
    return link_name(sim.paths.pci_devices / address / "driver")


def override(sim: SimulatedNode, address: str) -> str | None:
    return read_attr(sim.paths.pci_devices / address / "driver_override")


def allocate(store: Store, address: str, ns: str = "default", pod: str = "web-0") -> None:
    store.record_allocation("nicwarden.io/fast", [address], ns, pod, f"uid-{pod}")


def attach(store: Store, address: str, ns: str = "prod", pod: str = "db-1") -> None:
    store.put_attachment(
        AttachmentKey(f"c-{pod}", "net1", f"{ns}/sriov-net"),
        netns="/proc/1/ns/net",
        device=address,
        kind="sriov",
        pod_namespace=ns,
        pod_name=pod,
        pod_uid=f"uid-{pod}",
        original={},
        config={},
    )


# -- numvfs ---------------------------------------------------------------


def test_numvfs_shrink_and_grow_go_through_zero(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    res = vfcount.set_num_vfs(ctx, sim.pf_name(0), 2)
    assert (res.previous, res.current, res.changed) == (4, 2, True)
    assert writer(ctx).values("sriov_numvfs") == ["0", "2"]
    links = host_links(sim.prefix)
    assert {sim.vf_name(0, 0), sim.vf_name(0, 1)} <= links
    assert not {sim.vf_name(0, 2), sim.vf_name(0, 3)} & links
    pf = ctx.inventory.snapshot().pfs[0]
    assert [vf.fn.driver for vf in pf.vfs] == ["iavf", "iavf"]

    writer(ctx).log.clear()
    vfcount.set_num_vfs(ctx, sim.pf_address(0), 6)
    assert writer(ctx).values("sriov_numvfs") == ["0", "6"]
    assert {sim.vf_name(0, j) for j in range(6)} <= host_links(sim.prefix)

    writer(ctx).log.clear()
    assert not vfcount.set_num_vfs(ctx, sim.pf_name(0), "6").changed
    vfcount.set_num_vfs(ctx, sim.pf_name(0), 0)
    vfcount.set_num_vfs(ctx, sim.pf_name(0), 1)
    assert writer(ctx).values("sriov_numvfs") == ["0", "1"]  # from 0, no extra 0 first
    assert ctx.store.pending_intents() == []
    assert all(ctx.store.intent(i).state == "done" for i in (1, 2, 3, 4))  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [65, -1, "four", True])
def test_numvfs_refuses_bad_counts_naming_the_limit(
    sim: SimulatedNode, ctx: DeviceCtx, bad: object
) -> None:
    with pytest.raises(InvalidArgument, match="0-64 \\(sriov_totalvfs\\)"):
        vfcount.set_num_vfs(ctx, sim.pf_name(0), bad)  # type: ignore[arg-type]
    assert writer(ctx).log == [] and numvfs(sim, 0) == 4


def test_numvfs_refuses_vf_and_unknown(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    with pytest.raises(InvalidArgument, match="is a VF"):
        vfcount.set_num_vfs(ctx, sim.vf_address(0, 1), 2)
    with pytest.raises(NotFound):
        vfcount.set_num_vfs(ctx, "nosuchpf", 2)


def test_numvfs_busy_names_the_pods(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    allocate(ctx.store, sim.vf_address(0, 1))
    attach(ctx.store, sim.vf_address(0, 3))
    with pytest.raises(Busy) as err:
        vfcount.set_num_vfs(ctx, sim.pf_name(0), 2)
    assert "default/web-0" in str(err.value) and "prod/db-1" in str(err.value)
    assert writer(ctx).log == [] and numvfs(sim, 0) == 4
    assert ctx.store.pending_intents() == []
    # The other PF's VFs are not held by anyone.
    vfcount.set_num_vfs(ctx, sim.pf_name(1), 2)
    assert numvfs(sim, 1) == 2


def test_waits_for_vfs_that_appear_after_the_write(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    # A driver that returns from the write before its VFs are probed.
    late: list[threading.Thread] = []

    class LateWriter(Writer):
        def write(self, path: Path, value: str) -> None:
            if path.name == "sriov_numvfs" and value != "0":
                t = threading.Timer(0.4, self.sim.write, (path, value))
                t.start()
                late.append(t)
                return
            super().write(path, value)

    slow = dataclasses.replace(ctx, writer=LateWriter(sim))
    try:
        start = time.monotonic()
        vfcount.set_num_vfs(slow, sim.pf_name(0), 3)
        assert time.monotonic() - start >= 0.35
        pf = ctx.inventory.snapshot().pfs[0]
        assert len(pf.vfs) == 3 and all(vf.fn.driver == "iavf" for vf in pf.vfs)

        # From 0 VFs there is no "0" write: the short timeout bounds only the wait.
        vfcount.set_num_vfs(ctx, sim.pf_name(0), 0)
        hurried = dataclasses.replace(slow, timeout_s=0.2)
        with pytest.raises(Unavailable, match="sriov_numvfs reads 0; 0 of 2 VFs present"):
            vfcount.set_num_vfs(hurried, sim.pf_name(0), 2)
    finally:
        for t in late:
            t.join()


def test_hung_numvfs_write_times_out_and_recover_settles_it(
    sim: SimulatedNode, ctx: DeviceCtx
) -> None:
    release = threading.Event()

    def hang(path: str, value: str) -> None:
        if path.endswith("sriov_numvfs") and value == "2":
            release.wait(10)

    # From 0 VFs, so the one timed write is the hanging one.
    vfcount.set_num_vfs(ctx, sim.pf_name(0), 0)
    writer(ctx).hooks.append(hang)
    hurried = dataclasses.replace(ctx, timeout_s=0.3)
    try:
        with pytest.raises(Unavailable, match="has not returned after 0.3s"):
            vfcount.set_num_vfs(hurried, sim.pf_name(0), 2)
        (pending,) = ctx.store.pending_intents()
        assert pending.kind == "sriov.numvfs" and pending.payload["to"] == 2
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while numvfs(sim, 0) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (settled,) = vfcount.recover(ctx)
    assert settled.outcome == "completed" and ctx.store.pending_intents() == []


# -- vfio binding ---------------------------------------------------------


def test_bind_to_vfio_and_back(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    vf, name = sim.vf_address(0, 1), sim.vf_name(0, 1)
    group = link_name(sim.paths.pci_devices / vf / "iommu_group")
    assert group is not None and link_exists(name)

    res = binding.bind(ctx, vf, "vfio-pci")
    assert (res.previous, res.driver, res.changed) == ("iavf", "vfio-pci", True)
    assert writer(ctx).log == [
        (f"bus/pci/devices/{vf}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/iavf/unbind", vf),
        ("bus/pci/drivers_probe", vf),
        (f"bus/pci/devices/{vf}/driver_override", "\n"),
    ]
    assert driver(sim, vf) == "vfio-pci" and override(sim, vf) == "(null)"
    assert (sim.paths.vfio / group).exists() and not link_exists(name)
    assert list(res.devices) == [sim.paths.vfio / "vfio", sim.paths.vfio / group]
    assert pci.vfio_nodes(sim.paths, vf) == list(res.devices)
    snap = ctx.inventory.snapshot().find(vf)
    assert snap is not None and snap.fn.driver == "vfio-pci" and snap.fn.netdev is None
    assert not binding.bind(ctx, vf, "vfio-pci").changed

    back = binding.bind(ctx, vf, "kernel")
    assert (back.previous, back.driver) == ("vfio-pci", "iavf")
    assert driver(sim, vf) == "iavf" and override(sim, vf) == "(null)"
    assert not (sim.paths.vfio / group).exists() and link_exists(name)
    assert ctx.store.pending_intents() == []


def test_kernel_driver_is_remembered_across_vfio(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    # Bound to vfio-pci behind our back: the PF model's map names iavf.
    vf = sim.vf_address(1, 0)
    binding.bind(ctx, vf, "vfio-pci")
    assert ctx.store.get_meta(f"dpdk.kernel_driver.{vf}") == "iavf"
    ctx.store.set_meta(f"dpdk.kernel_driver.{vf}", "")
    assert binding.bind(ctx, vf, "kernel").driver == "iavf"


def test_refuses_a_vf_in_use_unless_forced(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    vf, name = sim.vf_address(0, 2), sim.vf_name(0, 2)
    # Up with only its automatic IPv6 link-local address: not in use.
    binding.bind(ctx, vf, "vfio-pci")
    binding.bind(ctx, vf, "kernel")
    run("ip", "link", "set", name, "up")
    run("ip", "addr", "add", "192.0.2.10/24", "dev", name)
    writer(ctx).log.clear()
    with pytest.raises(Busy, match=f"netdev {name} is up with addresses 192.0.2.10/24"):
        binding.bind(ctx, vf, "vfio-pci")
    assert writer(ctx).log == [] and driver(sim, vf) == "iavf"
    assert ctx.store.pending_intents() == []

    res = binding.bind(ctx, vf, "vfio-pci", force=True)
    assert res.driver == "vfio-pci" and "192.0.2.10/24" in res.overridden[0]

    allocate(ctx.store, vf, pod="dpdk-0")
    with pytest.raises(Busy, match="allocated to pod default/dpdk-0"):
        binding.bind(ctx, vf, "kernel")
    assert driver(sim, vf) == "vfio-pci"


def test_refuses_pf_unknown_and_bad_target(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    with pytest.raises(InvalidArgument, match="is a PF"):
        binding.bind(ctx, sim.pf_address(0), "vfio-pci")
    with pytest.raises(NotFound):
        binding.bind(ctx, "0000:77:00.0", "vfio-pci")
    with pytest.raises(InvalidArgument, match="vfio-pci or kernel"):
        binding.bind(ctx, sim.vf_address(0, 0), "uio")
    assert writer(ctx).log == []


def test_vfio_pci_missing_is_unsupported_and_nothing_moves(
    sim: SimulatedNode, ctx: DeviceCtx
) -> None:
    vf = sim.vf_address(0, 0)
    shutil.rmtree(sim.paths.pci_drivers / "vfio-pci")
    with pytest.raises(Unsupported, match="modprobe vfio-pci"):
        binding.bind(ctx, vf, "vfio-pci")
    assert writer(ctx).log == [] and ctx.store.pending_intents() == []
    assert driver(sim, vf) == "iavf" and override(sim, vf) == "(null)"
    assert link_exists(sim.vf_name(0, 0))


def test_no_iommu_group_needs_the_iommu_or_explicit_noiommu(
    sim: SimulatedNode, ctx: DeviceCtx
) -> None:
    vf = sim.vf_address(0, 0)
    (sim.paths.pci_devices / vf / "iommu_group").unlink()
    with pytest.raises(Unsupported, match="intel_iommu=on or amd_iommu=on"):
        binding.bind(ctx, vf, "vfio-pci")
    allowed = dataclasses.replace(ctx, allow_noiommu=True)
    with pytest.raises(Unsupported, match="enable_unsafe_noiommu_mode"):
        binding.bind(allowed, vf, "vfio-pci")
    assert writer(ctx).log == [] and driver(sim, vf) == "iavf"


def test_failed_probe_rolls_back_to_the_previous_driver(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    vf = sim.vf_address(0, 3)
    failed: list[str] = []

    def refuse_first_probe(path: str, value: str) -> None:
        if path.endswith("drivers_probe") and not failed:
            failed.append(value)
            raise HostError(f"write {value} to drivers_probe: No such device")

    writer(ctx).hooks.append(refuse_first_probe)
    with pytest.raises(HostError, match="probe for vfio-pci.*rolled back to iavf"):
        binding.bind(ctx, vf, "vfio-pci")
    assert writer(ctx).log == [
        (f"bus/pci/devices/{vf}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/iavf/unbind", vf),
        # the probe was refused (not logged); then the way back:
        (f"bus/pci/devices/{vf}/driver_override", "iavf"),
        ("bus/pci/drivers_probe", vf),
        (f"bus/pci/devices/{vf}/driver_override", "\n"),
    ]
    assert driver(sim, vf) == "iavf" and override(sim, vf) == "(null)"
    assert link_exists(sim.vf_name(0, 3))
    intent = ctx.store.intent(1)
    assert intent is not None and intent.state == "rolled_back"


def _crash_at(ctx: DeviceCtx, suffix: str, value: str | None = None) -> None:
    def crash(path: str, written: str) -> None:
        if path.endswith(suffix) and (value is None or written == value):
            raise Crash(path)

    writer(ctx).hooks.append(crash)


def test_recover_finishes_a_bind_that_reached_its_driver(
    sim: SimulatedNode, ctx: DeviceCtx
) -> None:
    vf = sim.vf_address(0, 1)
    _crash_at(ctx, "driver_override", "\n")  # after the probe, before the clear
    with pytest.raises(Crash):
        binding.bind(ctx, vf, "vfio-pci")
    assert driver(sim, vf) == "vfio-pci" and override(sim, vf) == "vfio-pci"
    assert len(ctx.store.pending_intents("dpdk.bind")) == 1
    writer(ctx).hooks.clear()

    (done,) = binding.recover(ctx)
    assert done.outcome == "completed"
    assert override(sim, vf) == "(null)" and driver(sim, vf) == "vfio-pci"
    assert ctx.store.pending_intents() == []


def test_recover_rolls_back_a_bind_cut_short(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    vf = sim.vf_address(1, 2)
    _crash_at(ctx, "drivers_probe")  # after the unbind: the VF has no driver
    with pytest.raises(Crash):
        binding.bind(ctx, vf, "vfio-pci")
    assert driver(sim, vf) is None and not link_exists(sim.vf_name(1, 2))
    writer(ctx).hooks.clear()

    (done,) = binding.recover(ctx)
    assert (done.outcome, done.detail) == ("rolled_back", "back on iavf")
    assert driver(sim, vf) == "iavf" and override(sim, vf) == "(null)"
    assert link_exists(sim.vf_name(1, 2))
    assert ctx.store.pending_intents() == []


# -- converge -------------------------------------------------------------


def test_converge_applies_reports_and_fixes_drift(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    desired = parse_sriov(
        [
            {
                "pfNames": [sim.pf_name(0)],
                "numVfs": 3,
                "mtu": 9000,
                "vfDrivers": [{"vfs": "0", "driver": "vfio-pci"}],
            }
        ]
    )
    report = converge.converge(ctx, desired)
    assert report.applied == [
        f"{sim.pf_name(0)} ({sim.pf_address(0)}): numVfs 4 -> 3",
        f"VF 0 {sim.vf_address(0, 0)}: driver iavf -> vfio-pci",
        f"VF {sim.vf_address(0, 1)} ({sim.vf_name(0, 1)}): mtu 1500 -> 9000",
        f"VF {sim.vf_address(0, 2)} ({sim.vf_name(0, 2)}): mtu 1500 -> 9000",
    ]
    assert report.converged and report.skipped == []
    assert not link_exists(sim.vf_name(0, 0))
    for j in (1, 2):
        assert " mtu 9000 " in run("ip", "-o", "link", "show", sim.vf_name(0, j)).stdout
    assert numvfs(sim, 1) == 4  # not selected: untouched

    again = converge.converge(ctx, desired)
    assert again.applied == [] and again.drift == []

    run("ip", "link", "set", sim.vf_name(0, 2), "mtu", "1400")
    fixed = converge.converge(ctx, desired)
    assert [str(d) for d in fixed.drift] == [f"{sim.vf_address(0, 2)}: mtu is 1400, desired 9000"]
    assert fixed.converged

    allocate(ctx.store, sim.vf_address(0, 1), pod="web-7")
    smaller = parse_sriov([{"pfNames": [sim.pf_name(0)], "numVfs": 2}])
    blocked = converge.converge(ctx, smaller)
    assert blocked.applied == [] and not blocked.converged
    assert "default/web-7" in blocked.skipped[0].reason
    assert numvfs(sim, 0) == 3


def test_converge_collects_per_pf_errors(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    def refuse_pf0(path: str, value: str) -> None:
        if sim.pf_address(0) in path and path.endswith("sriov_numvfs"):
            raise HostError("write to sriov_numvfs: Input/output error")

    writer(ctx).hooks.append(refuse_pf0)
    desired = parse_sriov([{"rootDevices": [sim.pf_address(i)], "numVfs": 2} for i in (0, 1)])
    report = converge.converge(ctx, desired)
    assert report.applied == [f"{sim.pf_name(1)} ({sim.pf_address(1)}): numVfs 4 -> 2"]
    assert [s.subject for s in report.skipped] == [sim.pf_address(0)]
    assert "Input/output error" in report.skipped[0].reason
    assert (numvfs(sim, 0), numvfs(sim, 1)) == (4, 2)


# -- VF admin attributes --------------------------------------------------


def test_sim_vf_config_round_trip(sim: SimulatedNode, ctx: DeviceCtx) -> None:
    cfg = SimVfConfigurator(sim)
    pf = sim.pf_name(0)
    assert cfg.get(pf, 1) == FRESH_VF
    cfg.set(
        pf,
        1,
        VfSettings(
            mac="02:AB:CD:00:00:01",
            vlan=100,
            qos=2,
            spoofchk=False,
            trust=True,
            link_state="enable",
            max_tx_rate=1000,
        ),
    )
    want = VfSettings(
        mac="02:ab:cd:00:00:01",
        vlan=100,
        qos=2,
        vlan_proto="802.1q",
        spoofchk=False,
        trust=True,
        link_state="enable",
        min_tx_rate=0,
        max_tx_rate=1000,
    )
    assert cfg.get(pf, 1) == want
    assert run("ip", "-br", "link", "show", sim.vf_name(0, 1)).stdout.split()[2] == (
        "02:ab:cd:00:00:01"
    )
    state = json.loads((sim.root / "vfconfig" / f"{sim.pf_address(0)}.json").read_text())
    assert state["1"]["settings"]["vlan"] == 100
    assert cfg.get(pf, 0) == FRESH_VF

    cfg.set(pf, 1, VfSettings(vlan=5))  # one request: qos and protocol reset
    assert (cfg.get(pf, 1).vlan, cfg.get(pf, 1).qos, cfg.get(pf, 1).trust) == (5, 0, True)
    cfg.set(pf, 1, VfSettings(vlan=6, qos=1, vlan_proto="802.1ad"))
    assert cfg.get(pf, 1).vlan_proto == "802.1ad"

    with pytest.raises(InvalidArgument, match="vlan 4095"):
        cfg.set(pf, 1, VfSettings(vlan=4095))
    with pytest.raises(InvalidArgument, match="qos 9"):
        cfg.set(pf, 1, VfSettings(vlan=1, qos=9))
    with pytest.raises(NotFound, match="no VF 4"):
        cfg.get(pf, 4)
    with pytest.raises(NotFound):
        cfg.set("nosuchpf", 0, VfSettings(trust=True))

    # Re-created VFs start fresh, as after a real numvfs change.
    vfcount.set_num_vfs(ctx, pf, 2)
    assert cfg.get(pf, 1) == FRESH_VF


def test_netlink_configurator_against_the_kernel(sim: SimulatedNode) -> None:
    # A veth has no VFs: the real kernel answers GETLINK without a VF list and
    # refuses VF attributes with EOPNOTSUPP, through our own socket code.
    cfg = NetlinkVfConfigurator()
    with pytest.raises(Unsupported, match="reports no VFs"):
        cfg.get(sim.pf_name(0), 0)
    with pytest.raises(Unsupported, match=f"{sim.pf_name(0)} VF 0: set spoofchk: the PF driver"):
        cfg.set(sim.pf_name(0), 0, VfSettings(spoofchk=False))
    with pytest.raises(NotFound):
        cfg.get("nwnosuchdev0", 0)


def test_new_vfs_are_brought_up_like_a_real_driver_leaves_them_down(
    sim: SimulatedNode, ctx: DeviceCtx
) -> None:
    # Real VF drivers create netdevs administratively down (Unhealthy to the
    # device plugin); provisioning puts them in service.
    sim.vf_admin_up = False
    vfcount.set_num_vfs(ctx, sim.pf_name(1), 0)
    vfcount.set_num_vfs(ctx, sim.pf_name(1), 3)
    for j in range(3):
        state = run("ip", "-br", "link", "show", sim.vf_name(1, j)).stdout.split()[1]
        assert state in ("UP", "UNKNOWN"), (sim.vf_name(1, j), state)
