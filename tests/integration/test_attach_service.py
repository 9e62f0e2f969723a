"""AttachService in-process on a simulated node: every undo step of a failing
ADD, every crash point (NICWARDEN_CRASH_AT) followed by what a restarted
agent runs (reconcile() for an ADD, device recovery for a CLI VF change),
and DEL idempotence.

No CLI, no agent process: the service is wired as ``agent/runtime.py`` wires
it, IPAM is the real host-local plugin, and failures are injected by
wrapping the real collaborators (a Netlink subclass, a VF configurator
wrapper), never by mocking the kernel. The oracles are ``ip -j link`` in the
host and the pod netns, and host-local's lease directory.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import nicwarden.agent.attach as attach_mod
from nicwarden.agent.attach import AttachContext, AttachService
from nicwarden.agent.devices import vfsettings
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.devices.recover import recover as recover_devices
from nicwarden.agent.errors import HostError, NicwardenError
from nicwarden.agent.faults import ENV as CRASH_ENV
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.vfnetlink import VfSettings
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.sim import SimulatedNode
from nicwarden.agent.sim.vfconfig import SimVfConfigurator
from nicwarden.agent.store import Store
from nicwarden.cni.errors import CniError
from nicwarden.cni.request import CniRequest, parse_request
from tests.support.oracle import run

PLUGIN_DIR = Path("/usr/lib/cni")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (PLUGIN_DIR / "host-local").exists(), reason="containernetworking-plugins missing"
    ),
]

NETWORK = "sriov-att"
POD_MAC = "02:aa:bb:cc:dd:01"
POD_MTU = 1400
VLAN = 100
ATTACH_CRASH_POINTS = ("attach.after_move", "attach.before_commit")


# ---------------------------------------------------------------- oracles


def host_link(name: str) -> dict[str, Any] | None:
    proc = run("ip", "-j", "link", "show", "dev", name, check=False)
    if proc.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(proc.stdout)
    return links[0] if links else None


def ns_links(ns: str) -> dict[str, dict[str, Any]]:
    """Every non-loopback link in ``ns`` by name (oracle: ip -n NS -j link)."""
    out: list[dict[str, Any]] = json.loads(run("ip", "-n", ns, "-j", "link").stdout)
    return {link["ifname"]: link for link in out if link["ifname"] != "lo"}


def ns_addresses(ns: str, ifname: str) -> list[str]:
    out = json.loads(run("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).stdout)
    infos = out[0].get("addr_info", [])
    return [f"{a['local']}/{a['prefixlen']}" for a in infos if a.get("scope") == "global"]


def leases(data_dir: Path) -> dict[str, str]:
    """host-local's reservations: file name = IP, content = container id + ifname."""
    net_dir = data_dir / NETWORK
    if not net_dir.exists():
        return {}
    return {
        p.name: p.read_text().split()[0]
        for p in net_dir.iterdir()
        if not p.name.startswith("last_reserved_ip") and p.name != "lock"
    }


@dataclass(frozen=True)
class VfView:
    """What an observer outside the agent sees of one VF in the host netns."""

    name: str
    mac: str
    mtu: int
    alias: str  # the simulator's identity label: this is the VF, not a namesake
    settings: VfSettings


# ---------------------------------------------------------------- the rig


@dataclass
class Rig:
    sim: SimulatedNode
    state_dir: Path
    data_dir: Path
    store: Store
    inventory: LiveInventory
    svc: AttachService

    @property
    def vf(self) -> str:
        return self.sim.vf_address(0, 0)

    @property
    def vf_name(self) -> str:
        return self.sim.vf_name(0, 0)

    @property
    def pf_name(self) -> str:
        return self.sim.pf_name(0)

    def view(self) -> VfView:
        link = host_link(self.vf_name)
        assert link is not None, f"{self.vf_name} is not in the host netns"
        settings = SimVfConfigurator(self.sim).get(self.pf_name, 0)
        return VfView(
            link["ifname"], link["address"], link["mtu"], link.get("ifalias", ""), settings
        )

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "nicwarden",
            "deviceID": self.vf,
            "mac": POD_MAC,
            "mtu": POD_MTU,
            "vlan": VLAN,
            "spoofchk": "off",
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.data_dir),
                "ranges": [[{"subnet": "10.231.0.0/24", "gateway": "10.231.0.1"}]],
                "routes": [{"dst": "10.232.0.0/16"}],
            },
            **extra,
        }

    def request(
        self, command: str, container: str, ns: str, ifname: str = "net1", **extra: Any
    ) -> CniRequest:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": f"/var/run/netns/{ns}" if ns else "",
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(PLUGIN_DIR),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p-{container}",
        }
        return parse_request(env, json.dumps(self.config(**extra)))

    def service(self, **changes: Any) -> AttachService:
        """A service over the same node and store with some collaborators swapped."""
        return AttachService(replace(self.svc.ctx, **changes))


def build(sim: SimulatedNode, state_dir: Path) -> tuple[Store, LiveInventory, AttachService]:
    """As agent/runtime.py wires the attach service (a restart builds it anew)."""
    store = Store.open(state_dir)
    inventory = LiveInventory(sim.paths, watch_kernel=False).start()
    sim.subscribe(inventory.notify)
    ctx = AttachContext(
        paths=sim.paths,
        inventory=inventory,
        store=store,
        vfconf=SimVfConfigurator(sim),
        ready=inventory.ready.is_set,
    )
    return store, inventory, AttachService(ctx)


@pytest.fixture
def rig(make_sim: Callable[[str], SimulatedNode], tmp_path: Path) -> Iterator[Rig]:
    sim = make_sim("1x2")
    store, inventory, svc = build(sim, tmp_path / "state")
    r = Rig(sim, tmp_path / "state", tmp_path / "ipam", store, inventory, svc)
    try:
        yield r
    finally:
        inventory.stop()
        store.close()


def assert_home(rig: Rig, before: VfView, container: str) -> None:
    """The VF is back with what it had, and nothing of the attachment remains."""
    assert rig.view() == before
    assert rig.store.list_attachments() == []
    assert container not in leases(rig.data_dir).values()


# ---------------------------------------------------------------- a good ADD first


def test_add_then_del_round_trip(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    result = rig.svc.add(rig.request("ADD", "c-ok", ns))

    pod = ns_links(ns)
    assert set(pod) == {"net1"} and pod["net1"]["address"] == POD_MAC
    assert pod["net1"]["mtu"] == POD_MTU
    assert host_link(rig.vf_name) is None
    assert [str(ip.address) for ip in result.ips] == ns_addresses(ns, "net1")
    assert SimVfConfigurator(rig.sim).get(rig.pf_name, 0).vlan == VLAN
    assert list(leases(rig.data_dir).values()) == ["c-ok"]
    (att,) = rig.store.list_attachments()
    assert att.state == "ready"

    rig.svc.delete(rig.request("DEL", "c-ok", ns))
    assert_home(rig, before, "c-ok")
    assert ns_links(ns) == {}


# ---------------------------------------------------------------- each undo step


class FailingNetlink(Netlink):
    """The real Netlink, with one operation failing in the pod's netns.

    ``fail`` names the method; with ``after_real`` the real call is made
    first (the kernel did it, then something went wrong), so the undo must
    cope with the change having happened."""

    fail = ""
    after_real = False
    pod_netns = ""

    def _pod(self) -> bool:
        return self.netns == self.pod_netns

    def move_to_netns(self, name: str, target: str | None, new_name: str | None = None) -> None:
        if self.fail == "move" and target == self.pod_netns:
            raise HostError(f"injected: move {name} to {target} failed")
        super().move_to_netns(name, target, new_name=new_name)

    def set_link(self, name: str, **kwargs: Any) -> None:
        if self.fail == "set_link" and self._pod():
            raise HostError(f"injected: set {name} {sorted(kwargs)} failed")
        super().set_link(name, **kwargs)

    def add_address(self, name: str, cidr: str) -> None:
        if self.fail == "add_address" and self._pod():
            super().add_address(name, cidr)
            raise HostError(f"injected: address {cidr} on {name} failed after the kernel took it")
        super().add_address(name, cidr)


def failing_netlink(fail: str, pod_netns: str) -> type[Netlink]:
    return type("Failing", (FailingNetlink,), {"fail": fail, "pod_netns": pod_netns})


class PartialVfConfigurator:
    """The real (simulated) PF driver, failing the first ADD-time write after
    applying part of it, as a kernel taking attributes one request at a time
    can stop half-way."""

    def __init__(self, real: SimVfConfigurator) -> None:
        self.real = real
        self.failed = False

    def get(self, pf_ifname: str, vf: int) -> VfSettings:
        return self.real.get(pf_ifname, vf)

    def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None:
        if not self.failed and settings.vlan is not None:
            self.failed = True
            self.real.set(pf_ifname, vf, VfSettings(vlan=settings.vlan, qos=settings.qos))
            raise HostError("injected: spoofchk refused after the VLAN was applied")
        self.real.set(pf_ifname, vf, settings)


class PausingNetlink(Netlink):
    """The real Netlink, pausing an ADD after the VF reached the pod (the
    attachment row says "adding" and the ADD holds the VF's lock)."""

    pod_netns = ""
    reached = threading.Event()
    go_on = threading.Event()

    def add_address(self, name: str, cidr: str) -> None:
        if self.netns == self.pod_netns:
            self.reached.set()
            assert self.go_on.wait(10)
        super().add_address(name, cidr)


def test_periodic_reconcile_during_an_add_leaves_it_alone(
    rig: Rig, netns: Callable[[], str]
) -> None:
    """The reconcile lists attachments, sees an ADD half-done, and waits for
    the VF's lock; once it has it, the ADD is complete and must stay."""
    ns = netns()
    nl = type(
        "Pausing",
        (PausingNetlink,),
        {
            "pod_netns": f"/var/run/netns/{ns}",
            "reached": threading.Event(),
            "go_on": threading.Event(),
        },
    )
    svc = rig.service(netlink=nl)
    added: list[object] = []
    adder = threading.Thread(target=lambda: added.append(svc.add(rig.request("ADD", "c-busy", ns))))
    adder.start()
    assert nl.reached.wait(10)
    (att,) = rig.store.list_attachments()
    assert att.state == "adding"
    actions: list[list[str]] = []
    reconciler = threading.Thread(target=lambda: actions.append(svc.reconcile()))
    reconciler.start()
    reconciler.join(0.5)  # it waits for the VF's lock the ADD holds
    nl.go_on.set()
    adder.join(10)
    reconciler.join(10)
    assert added and actions == [[]]
    (att,) = rig.store.list_attachments()
    assert att.state == "ready"
    assert set(ns_links(ns)) == {"net1"} and host_link(rig.vf_name) is None


def fail_add(rig: Rig, svc: AttachService, req: CniRequest) -> Exception:
    with pytest.raises(Exception) as info:
        svc.add(req)
    return info.value


def test_pf_side_failure_restores_vf_attributes(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    wrapper = PartialVfConfigurator(SimVfConfigurator(rig.sim))
    err = fail_add(rig, rig.service(vfconf=wrapper), rig.request("ADD", "c-pf", ns))

    assert "spoofchk refused" in str(err) and wrapper.failed
    assert_home(rig, before, "c-pf")
    assert ns_links(ns) == {}


def test_move_failure_leaves_vf_home(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    nl = failing_netlink("move", f"/var/run/netns/{ns}")
    err = fail_add(rig, rig.service(netlink=nl), rig.request("ADD", "c-move", ns))

    assert "injected: move" in str(err)
    assert_home(rig, before, "c-move")
    assert ns_links(ns) == {}


def test_rename_refused_by_the_kernel_leaves_vf_home(rig: Rig, netns: Callable[[], str]) -> None:
    """The pod gains a link named like ours between the check and the move.
    The kernel moves a link under its current name when that is free in the
    target and renames it afterwards, so the move happens and the rename
    fails (EEXIST): the undo must find the VF by identity, not by name."""
    ns = netns()
    before = rig.view()
    squatter = f"sq{uuid.uuid4().hex[:6]}"

    class Racing(Netlink):
        def move_to_netns(self, name: str, target: str | None, new_name: str | None = None) -> None:
            if target == f"/var/run/netns/{ns}" and new_name:
                run("ip", "-n", ns, "link", "add", new_name, "type", "veth", "peer", squatter)
            super().move_to_netns(name, target, new_name=new_name)

    err = fail_add(rig, rig.service(netlink=Racing), rig.request("ADD", "c-name", ns))

    assert not isinstance(err, AssertionError), err
    assert_home(rig, before, "c-name")
    assert set(ns_links(ns)) == {"net1", squatter}  # only the squatter pair


def test_pod_side_link_config_failure_leaves_vf_home(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    nl = failing_netlink("set_link", f"/var/run/netns/{ns}")
    err = fail_add(rig, rig.service(netlink=nl), rig.request("ADD", "c-link", ns))

    assert "injected: set" in str(err)
    assert_home(rig, before, "c-link")
    assert ns_links(ns) == {}


def test_address_failure_releases_lease_and_brings_vf_home(
    rig: Rig, netns: Callable[[], str]
) -> None:
    ns = netns()
    before = rig.view()
    nl = failing_netlink("add_address", f"/var/run/netns/{ns}")
    err = fail_add(rig, rig.service(netlink=nl), rig.request("ADD", "c-addr", ns))

    assert "injected: address" in str(err)
    assert_home(rig, before, "c-addr")
    # Leaving the pod netns dropped the address the kernel had taken.
    host_addrs = json.loads(run("ip", "-j", "addr", "show", "dev", rig.vf_name).stdout)[0]
    assert [a for a in host_addrs.get("addr_info", []) if a.get("scope") == "global"] == []
    assert ns_links(ns) == {}


def test_ipam_failure_leaves_vf_home_and_foreign_lease_alone(
    rig: Rig, netns: Callable[[], str]
) -> None:
    """A range with its only address taken: host-local itself fails."""
    ns = netns()
    before = rig.view()
    net_dir = rig.data_dir / NETWORK
    net_dir.mkdir(parents=True)
    (net_dir / "10.231.0.2").write_text("someone-else\r\nnet1")
    full = {
        "type": "host-local",
        "dataDir": str(rig.data_dir),
        "ranges": [
            [{"subnet": "10.231.0.0/24", "rangeStart": "10.231.0.2", "rangeEnd": "10.231.0.2"}]
        ],
    }
    err = fail_add(rig, rig.svc, rig.request("ADD", "c-ipam", ns, ipam=full))

    assert isinstance(err, CniError) and "no IP addresses available" in str(err), err
    assert_home(rig, before, "c-ipam")
    assert leases(rig.data_dir) == {"10.231.0.2": "someone-else"}
    assert ns_links(ns) == {}


def test_device_info_failure_after_every_step_undoes_them_all(
    rig: Rig, netns: Callable[[], str], tmp_path: Path
) -> None:
    """The last step before the commit fails for real (the device-info
    file's directory is a plain file): every step before it is undone."""
    ns = netns()
    before = rig.view()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    info = str(blocker / "sriov-att-c-info_net1")
    err = fail_add(
        rig,
        rig.svc,
        rig.request("ADD", "c-info", ns, runtimeConfig={"CNIDeviceInfoFile": info}),
    )

    assert isinstance(err, OSError | CniError), err
    assert_home(rig, before, "c-info")
    assert ns_links(ns) == {}


def test_device_info_failure_names_the_file(
    rig: Rig, netns: Callable[[], str], tmp_path: Path
) -> None:
    ns = netns()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    info = str(blocker / "sriov-att-c-info_net1")
    err = fail_add(
        rig,
        rig.svc,
        rig.request("ADD", "c-info", ns, runtimeConfig={"CNIDeviceInfoFile": info}),
    )
    # An I/O failure (CNI code 5, or the agent's "host" kind that maps to it)
    # that says which file.
    io_failure = (isinstance(err, CniError) and err.code == 5) or (
        isinstance(err, NicwardenError) and err.kind == "host"
    )
    assert io_failure and info in str(err), repr(err)


# ---------------------------------------------------------------- crash points


class Died(BaseException):
    """The parked operation's thread, released after the test: the process
    it stands for is long gone."""


class Parked:
    """Run ``fn`` on a thread that stops dead at the crash point ``point``:
    the module's ``crash_point`` is swapped for one that, where
    NICWARDEN_CRASH_AT names the point, parks the thread instead of killing
    the process. Nothing after the point runs (no undo, no commit) until the
    test is done with the aftermath; then the thread unwinds."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, module: Any, point: str, fn: Callable[[], object]
    ) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.outcome: list[BaseException] = []

        def parked(name: str) -> None:  # faults.crash_point, minus killing the test runner
            if os.environ.get(CRASH_ENV) == name:
                self.reached.set()
                self.release.wait()
                raise Died(name)

        def body() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001  (recorded for died())
                self.outcome.append(e)

        monkeypatch.setenv(CRASH_ENV, point)
        monkeypatch.setattr(module, "crash_point", parked)
        self.point = point
        self.thread = threading.Thread(target=body, daemon=True)

    def __enter__(self) -> Parked:
        self.thread.start()
        assert self.reached.wait(30), f"never reached {self.point}: {self.outcome}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)

    def died(self) -> bool:
        return len(self.outcome) == 1 and isinstance(self.outcome[0], Died)


@pytest.mark.parametrize("point", ATTACH_CRASH_POINTS)
def test_attach_crash_point_then_restart_reconcile_restores(
    rig: Rig, netns: Callable[[], str], monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The ADD stops dead at the point, as NICWARDEN_CRASH_AT makes the agent
    do; a restarted service over the same store and node reconciles
    everything back."""
    ns = netns()
    before = rig.view()
    parked = Parked(
        monkeypatch, attach_mod, point, lambda: rig.svc.add(rig.request("ADD", "c-crash", ns))
    )
    with parked:
        # What the crash left: the VF in the pod, the row still 'adding'.
        assert host_link(rig.vf_name) is None and "net1" in ns_links(ns)
        (att,) = rig.store.list_attachments()
        assert att.state == "adding"
        if point == "attach.before_commit":
            assert list(leases(rig.data_dir).values()) == ["c-crash"]

        store, inventory, restarted = build(rig.sim, rig.state_dir)
        try:
            actions = restarted.reconcile()
            assert [a for a in actions if a.startswith("released c-crash/net1")], actions
            assert store.list_attachments() == []
        finally:
            inventory.stop()
            store.close()
        assert_home(rig, before, "c-crash")
        assert ns_links(ns) == {}
    assert parked.died()


@pytest.mark.parametrize("point", [vfsettings.CRASH_PARTIAL, vfsettings.CRASH_APPLIED])
def test_vf_settings_crash_point_then_restart_recover_restores(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A CLI VF attribute change (several kernel requests) stops dead; the
    restarted agent's device recovery puts back what the caller never heard
    succeed."""
    before = rig.view()
    change = VfSettings(mac="02:00:00:00:0a:01", vlan=200, qos=3, spoofchk=False, trust=True)

    def devices(store: Store, inventory: LiveInventory) -> DeviceCtx:
        return DeviceCtx(
            paths=rig.sim.paths,
            writer=rig.sim,
            inventory=inventory,
            store=store,
            netdevs=Netlink(),
            vfconf=SimVfConfigurator(rig.sim),
            timeout_s=10.0,
        )

    ctx = devices(rig.store, rig.inventory)
    parked = Parked(monkeypatch, vfsettings, point, lambda: vfsettings.set_vf(ctx, rig.vf, change))
    with parked:
        now = SimVfConfigurator(rig.sim).get(rig.pf_name, 0)
        assert now.mac == change.mac  # the first request reached the "kernel"
        if point == vfsettings.CRASH_APPLIED:
            assert (now.vlan, now.qos, now.spoofchk, now.trust) == (200, 3, False, True)

        store, inventory, _ = build(rig.sim, rig.state_dir)
        try:
            done = recover_devices(devices(store, inventory))
            assert [(r.target, r.outcome) for r in done] == [(rig.vf, "rolled_back")]
            assert store.pending_intents() == []
        finally:
            inventory.stop()
            store.close()
        assert rig.view().settings == before.settings
    assert parked.died()


def test_every_crash_point_is_covered_here() -> None:
    """A new crash point in the agent needs an in-process test above."""
    root = Path(attach_mod.__file__).resolve().parent
    points = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        consts = dict(re.findall(r'^([A-Z_]+) = "([^"]+)"', text, re.M))
        for arg in re.findall(r"\bcrash_point\(([^)]*)\)", text):
            if path.name == "faults.py":
                continue
            arg = arg.strip()
            points.add(arg.strip("\"'") if arg[:1] in "\"'" else consts.get(arg, arg))
    covered = {*ATTACH_CRASH_POINTS, vfsettings.CRASH_PARTIAL, vfsettings.CRASH_APPLIED}
    assert points == covered


# ---------------------------------------------------------------- DEL idempotence


def test_del_twice_succeeds(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    rig.svc.add(rig.request("ADD", "c-twice", ns))
    rig.svc.delete(rig.request("DEL", "c-twice", ns))
    rig.svc.delete(rig.request("DEL", "c-twice", ns))
    assert_home(rig, before, "c-twice")


def test_del_of_unknown_container_changes_nothing(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    rig.svc.add(rig.request("ADD", "c-kept", ns))
    pod_before = ns_links(ns)

    rig.svc.delete(rig.request("DEL", "c-never-added", ns))
    rig.svc.delete(rig.request("DEL", "c-never-added", ""))

    assert ns_links(ns) == pod_before
    assert list(leases(rig.data_dir).values()) == ["c-kept"]
    assert [a.container_id for a in rig.store.list_attachments()] == ["c-kept"]
    rig.svc.delete(rig.request("DEL", "c-kept", ns))
    assert_home(rig, before, "c-kept")


@pytest.mark.parametrize("netns_given", [True, False], ids=["netns-path", "empty-netns"])
def test_del_after_netns_deleted(rig: Rig, netns: Callable[[], str], netns_given: bool) -> None:
    ns = netns()
    before = rig.view()
    rig.svc.add(rig.request("ADD", "c-gone", ns))
    run("ip", "netns", "del", ns)

    rig.svc.delete(rig.request("DEL", "c-gone", ns if netns_given else ""))
    assert_home(rig, before, "c-gone")


def test_del_after_rename_in_pod(rig: Rig, netns: Callable[[], str]) -> None:
    ns = netns()
    before = rig.view()
    rig.svc.add(rig.request("ADD", "c-renamed", ns))
    run("ip", "-n", ns, "link", "set", "net1", "down")
    run("ip", "-n", ns, "link", "set", "net1", "name", "renamed0")

    rig.svc.delete(rig.request("DEL", "c-renamed", ns))
    assert_home(rig, before, "c-renamed")
    assert ns_links(ns) == {}
