"""The DRA kubelet plugin against a test kubelet (registration, DRA v1 and
v1beta1 over real unix sockets) and the in-repo API server (claims).

Without the ``root`` mark, inventories are hand-built and VFs already sit on
the drivers their claims ask for, so nothing is rebound. The ``root`` tests
run on a simulated node, where Prepare and Unprepare move drivers for real
and the driver links in sysfs are the oracle.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import link_name
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.k8s.api import load_client
from nicwarden.agent.model import InventorySource
from nicwarden.agent.sim import SimulatedNode
from nicwarden.agent.sim.vfconfig import SimVfConfigurator
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.dra.claims import ApiClaimReader
from nicwarden.deviceplugin.dra.config import DraConfig, selector_list
from nicwarden.deviceplugin.dra.devices import device_name
from nicwarden.deviceplugin.dra.plugin import DraPlugin
from tests.support.k8s_apiserver import FakeApiServer
from tests.support.kubelet_dra import DraClient, DraKubelet, as_plain
from tests.support.kubelet_fake import (
    MemoryInventory,
    PfSpec,
    build_inventory,
    default_group,
    kernel_vfs,
    make_vfio_nodes,
    short_tmpdir,
    vf_address,
    vfio_vfs,
    wait_until,
)

DRIVER = "vf.nicwarden.io"
NODE = "node-a"
PF0 = "0000:18:00.0"
KERNEL0, KERNEL1 = vf_address(PF0, 0), vf_address(PF0, 1)
VFIO2, VFIO3 = vf_address(PF0, 2), vf_address(PF0, 3)


def claim_object(
    name: str,
    results: list[tuple[str, str]],
    *,
    configs: Sequence[tuple[list[str], object]] = (),
    driver: str = DRIVER,
    pool: str = NODE,
    allocated: bool = True,
    namespace: str = "default",
) -> dict[str, Any]:
    """A ResourceClaim as the scheduler leaves it: ``results`` are
    (request, device) pairs allocated from ``pool`` by ``driver``."""
    requests = sorted({r for r, _ in results})
    obj: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "devices": {
                "requests": [
                    {"name": r, "exactly": {"deviceClassName": "vf.nicwarden.io"}} for r in requests
                ]
            }
        },
    }
    if allocated:
        obj["status"] = {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": r, "driver": driver, "pool": pool, "device": d}
                        for r, d in results
                    ],
                    "config": [
                        # Another driver's config must be ignored, whatever it says.
                        {
                            "source": "FromClass",
                            "requests": [],
                            "opaque": {"driver": "gpu.example.com", "parameters": {"x": 1}},
                        },
                        *(
                            {
                                "source": "FromClaim",
                                "requests": reqs,
                                "opaque": {"driver": DRIVER, "parameters": params},
                            }
                            for reqs, params in configs
                        ),
                    ],
                },
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [NODE]}
                            ]
                        }
                    ]
                },
            }
        }
    return obj


@dataclass
class Env:
    root: Path
    cfg: DraConfig
    store: Store
    ctx: DeviceCtx
    inventory: InventorySource
    api: FakeApiServer
    kubelet: DraKubelet
    reader: ApiClaimReader
    plugins: list[DraPlugin]

    def plugin(self) -> DraPlugin:
        p = DraPlugin(
            self.cfg,
            self.store,
            self.ctx,
            self.inventory,
            self.reader,
            NODE,
            poll_interval=0.05,
        )
        p.start()
        self.plugins.append(p)
        return p

    def add(self, obj: dict[str, Any]) -> tuple[str, str, str]:
        stored = self.api.add(obj)
        meta = stored["metadata"]
        return (meta["namespace"], meta["name"], meta["uid"])

    def client(self, service: str | None = None) -> DraClient:
        self.kubelet.wait_registered(DRIVER)
        return self.kubelet.client(DRIVER, service)

    def spec_file(self, uid: str) -> Path:
        return self.cfg.cdi_dir / f"{DRIVER}-vf_{uid}.json"

    def cdi_files(self) -> list[str]:
        return (
            sorted(p.name for p in self.cfg.cdi_dir.glob("*")) if self.cfg.cdi_dir.exists() else []
        )


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def _env(root: Path, api: FakeApiServer, ctx_for: Callable[[Store], DeviceCtx]) -> Env:
    cfg = DraConfig(
        enabled=True,
        driver=DRIVER,
        registry_dir=root / "reg",
        plugins_dir=root / "plugins",
        cdi_dir=root / "cdi",
    )
    store = Store.open(root / "state")
    ctx = ctx_for(store)
    reader = ApiClaimReader(load_client(api.write_kubeconfig(root / "kubeconfig")))
    kubelet = DraKubelet(cfg.registry_dir)
    cfg.registry_dir.mkdir(parents=True)
    return Env(root, cfg, store, ctx, ctx.inventory, api, kubelet.start(), reader, [])


def _close(env: Env) -> None:
    env.kubelet.stop()
    for p in env.plugins:
        p.stop()
    env.store.close()
    shutil.rmtree(env.root, ignore_errors=True)


@pytest.fixture
def env(api: FakeApiServer) -> Iterator[Env]:
    root = short_tmpdir("nwdra")
    dev = root / "dev"
    make_vfio_nodes(dev, [default_group(VFIO2), default_group(VFIO3)])
    (dev / "net").mkdir()
    (dev / "vhost-net").touch()
    (dev / "net" / "tun").touch()
    inventory = MemoryInventory(
        build_inventory([PfSpec(PF0, vfs=kernel_vfs(2) + vfio_vfs(2, start=2))], dev=dev), dev=dev
    )

    def ctx_for(store: Store) -> DeviceCtx:
        return DeviceCtx(
            paths=HostPaths(dev=dev),
            writer=None,  # type: ignore[arg-type]  # nothing is rebound here
            inventory=inventory,  # type: ignore[arg-type]
            store=store,
            netdevs=None,  # type: ignore[arg-type]
            vfconf=None,  # type: ignore[arg-type]
        )

    e = _env(root, api, ctx_for)
    try:
        yield e
    finally:
        _close(e)


# -- registration -------------------------------------------------------------


def test_get_info_and_registration(env: Env) -> None:
    plugin = env.plugin()
    reg = env.kubelet.wait_registered(DRIVER)
    assert reg.socket == env.cfg.registry_dir / f"{DRIVER}-reg.sock"
    info = reg.info
    assert info.type == "DRAPlugin"
    assert info.name == DRIVER
    assert info.endpoint == str(env.cfg.plugins_dir / DRIVER / "dra.sock")
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    assert reg.service == "v1.DRAPlugin"
    for sock in (reg.socket, Path(info.endpoint)):
        assert stat.S_ISSOCK(sock.stat().st_mode), sock
    wait_until(lambda: plugin.registration_state.registered)
    assert plugin.registration_state.error == ""

    plugin.stop()
    assert not reg.socket.exists() and not Path(info.endpoint).exists()
    env.kubelet.wait_deregistered(DRIVER)


def test_a_refused_registration_is_recorded(env: Env) -> None:
    env.kubelet.stop()
    picky = DraKubelet(env.cfg.registry_dir, services=("v2.DRAPlugin",)).start()
    try:
        plugin = env.plugin()
        wait_until(lambda: plugin.registration_state.notifications >= 1)
        state = plugin.registration_state
        assert not state.registered
        assert "none of ['v1.DRAPlugin', 'v1beta1.DRAPlugin'] is supported" in state.error
        assert DRIVER not in picky.drivers
    finally:
        picky.stop()


def test_stale_sockets_are_replaced_at_start(env: Env) -> None:
    # A previous run's files (here: plain files, which would block bind()).
    sock_dir = env.cfg.plugins_dir / DRIVER
    sock_dir.mkdir(parents=True)
    (sock_dir / "dra.sock").write_text("stale")
    env.kubelet.stop()
    (env.cfg.registry_dir / f"{DRIVER}-reg.sock").write_text("stale")
    env.plugin()
    env.kubelet.start()
    env.kubelet.wait_registered(DRIVER)
    with env.client() as c:
        assert c.unprepare(("default", "x", "no-such-uid")) == {"no-such-uid": ""}


def test_reregisters_after_the_registration_socket_is_removed(env: Env) -> None:
    plugin = env.plugin()
    first = env.kubelet.wait_registered(DRIVER)
    first.socket.unlink()  # e.g. the registry directory was cleaned
    again = env.kubelet.wait_registered(DRIVER, count=2)
    assert again.identity != first.identity
    assert env.kubelet.deregistrations == 1
    wait_until(lambda: plugin.registration_state.notifications >= 2)
    assert plugin.registration_state.registered
    with env.client() as c:
        assert c.unprepare(("default", "x", "u1")) == {"u1": ""}

    # A restarted kubelet finds the socket that is already there.
    env.kubelet.stop()
    fresh = DraKubelet(env.cfg.registry_dir).start()
    try:
        assert fresh.wait_registered(DRIVER).info.name == DRIVER
    finally:
        fresh.stop()


def test_dra_socket_removed_is_served_again(env: Env) -> None:
    env.plugin()
    reg = env.kubelet.wait_registered(DRIVER)
    Path(reg.info.endpoint).unlink()
    # The plugin re-serves the endpoint and makes kubelet register it afresh.
    env.kubelet.wait_registered(DRIVER, count=2)
    wait_until(lambda: Path(reg.info.endpoint).exists())
    with env.client() as c:
        assert c.unprepare(("default", "x", "u1")) == {"u1": ""}


# -- prepare and unprepare ------------------------------------------------------


def test_prepare_two_devices_and_the_cdi_spec(env: Env) -> None:
    env.plugin()
    net, dpdk = device_name(KERNEL0), device_name(VFIO2)
    ref = env.add(
        claim_object(
            "pair",
            [("net", net), ("dpdk", dpdk)],
            configs=[
                (["net"], {"driver": "netdev", "ifName": "net1", "networkName": "prod/sriov-a"}),
                (
                    ["dpdk"],
                    {
                        "apiVersion": "nicwarden.io/v1alpha1",
                        "kind": "VfConfig",
                        "driver": "vfio-pci",
                        "vhostNet": True,
                    },
                ),
            ],
        )
    )
    uid = ref[2]
    with env.client("v1.DRAPlugin") as c:
        answer = c.prepare(ref)
    assert list(answer) == [uid]
    got = as_plain(answer[uid])
    ids = [f"{DRIVER}/vf={uid}-{net}", f"{DRIVER}/vf={uid}-{dpdk}"]
    assert got == {
        "devices": [
            {
                "request_names": ["net"],
                "pool_name": NODE,
                "device_name": net,
                "cdi_device_ids": [ids[0]],
            },
            {
                "request_names": ["dpdk"],
                "pool_name": NODE,
                "device_name": dpdk,
                "cdi_device_ids": [ids[1]],
            },
        ],
        "error": "",
    }

    spec_file = env.spec_file(uid)
    assert env.cdi_files() == [spec_file.name]
    assert stat.S_IMODE(spec_file.stat().st_mode) == 0o644
    spec = json.loads(spec_file.read_text())
    assert set(spec) == {"cdiVersion", "kind", "devices", "containerEdits"}
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == f"{DRIVER}/vf"
    dev = env.root / "dev"
    group = default_group(VFIO2)
    assert spec["devices"] == [
        {
            "name": f"{uid}-{net}",
            "containerEdits": {"env": [f"PCIDEVICE_VF_NICWARDEN_IO_0000_19_00_0={KERNEL0}"]},
        },
        {
            "name": f"{uid}-{dpdk}",
            "containerEdits": {
                "env": [f"PCIDEVICE_VF_NICWARDEN_IO_0000_19_00_2={VFIO2}"],
                "deviceNodes": [
                    {"path": "/dev/vfio/vfio", "hostPath": f"{dev}/vfio/vfio", "permissions": "rw"},
                    {
                        "path": f"/dev/vfio/{group}",
                        "hostPath": f"{dev}/vfio/{group}",
                        "permissions": "rw",
                    },
                    {"path": "/dev/vhost-net", "hostPath": f"{dev}/vhost-net", "permissions": "rw"},
                    {"path": "/dev/net/tun", "hostPath": f"{dev}/net/tun", "permissions": "rw"},
                ],
            },
        },
    ]
    env_vars = dict(e.split("=", 1) for e in spec["containerEdits"]["env"])
    assert set(env_vars) == {"PCIDEVICE_VF_NICWARDEN_IO", "PCIDEVICE_VF_NICWARDEN_IO_INFO"}
    assert env_vars["PCIDEVICE_VF_NICWARDEN_IO"] == f"{KERNEL0},{VFIO2}"
    assert json.loads(env_vars["PCIDEVICE_VF_NICWARDEN_IO_INFO"]) == {
        KERNEL0: {"generic": {"deviceID": KERNEL0}},
        VFIO2: {
            "generic": {"deviceID": VFIO2},
            "vfio": {"dev-mount": f"/dev/vfio/{group}", "mount": "/dev/vfio/vfio"},
            "vhost": {"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"},
        },
    }

    # The checkpoint: what the CNI and Unprepare need, recorded before answering.
    record = env.store.dra_claim(uid)
    assert record is not None and record.state == "prepared"
    assert (record.namespace, record.name) == ("default", "pair")
    assert record.cdi_ids == ids
    first = record.devices[0]
    assert (first["address"], first["ifName"], first["networkName"]) == (
        KERNEL0,
        "net1",
        "prod/sriov-a",
    )

    # Repeated over v1beta1: the same answer, no second API read.
    gets = len(env.api.requests)
    with env.client("v1beta1.DRAPlugin") as c:
        again = c.prepare(ref)
        assert as_plain(again[uid]) == got
        assert len(env.api.requests) == gets
        assert c.unprepare(ref) == {uid: ""}
        assert env.cdi_files() == [] and env.store.dra_claim(uid) is None
        assert c.unprepare(ref) == {uid: ""}  # unpreparing twice is fine

    # Prepared afresh over v1beta1: the same answer as v1 gave.
    with env.client("v1beta1.DRAPlugin") as c:
        assert as_plain(c.prepare(ref)[uid]) == got


def test_each_bad_claim_fails_alone(env: Env) -> None:
    env.plugin()
    d = device_name
    good = env.add(claim_object("good", [("nic", d(KERNEL0))]))
    replaced = env.add(claim_object("replaced", [("nic", d(KERNEL1))]))
    stale = (replaced[0], replaced[1], "00000000-0000-0000-0000-000000000000")
    missing = ("default", "missing", "11111111-1111-1111-1111-111111111111")
    unallocated = env.add(claim_object("pending", [("nic", d(KERNEL1))], allocated=False))
    foreign = env.add(claim_object("foreign", [("gpu", "gpu-0")], driver="gpu.example.com"))
    elsewhere = env.add(claim_object("elsewhere", [("nic", d(KERNEL1))], pool="node-b"))
    unknown = env.add(claim_object("unknown", [("nic", "0000-99-00-1")]))
    taken = env.add(claim_object("taken", [("nic", d(KERNEL0))]))
    refs = [good, stale, missing, unallocated, foreign, elsewhere, unknown, taken]
    with env.client() as c:
        answer = c.prepare(*refs)
    assert sorted(answer) == sorted(r[2] for r in refs)
    errors = {r[1]: answer[r[2]].error for r in refs}  # type: ignore[attr-defined]
    assert errors["good"] == ""
    assert [dev.device_name for dev in answer[good[2]].devices] == [d(KERNEL0)]  # type: ignore[attr-defined]
    assert f"has uid {replaced[2]}, not {stale[2]}" in errors["replaced"]
    assert "ResourceClaim default/missing not found" in errors["missing"]
    assert "default/pending is not allocated" in errors["pending"]
    assert f"no devices allocated by {DRIVER}" in errors["foreign"]
    assert f"not in this node's pool {NODE}" in errors["elsewhere"]
    assert "0000-99-00-1 is not a VF this node offers" in errors["unknown"]
    assert f"already prepared for claim default/good (uid {good[2]})" in errors["taken"]
    for r in refs:
        if r is not good:
            assert not answer[r[2]].devices  # type: ignore[attr-defined]
            assert env.store.dra_claim(r[2]) is None
    assert env.cdi_files() == [env.spec_file(good[2]).name]


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"driver": "netdev", "ifname": "net1"}, "config[1].opaque.parameters.ifname: unknown key"),
        ({"vhostNet": "yes"}, "config[1].opaque.parameters.vhostNet: expected true or false"),
        ({"vhostNet": "true"}, "config[1].opaque.parameters.vhostNet: expected true or false"),
        (
            {"driver": "igb_uio"},
            "config[1].opaque.parameters.driver: expected one of netdev, vfio-pci, got 'igb_uio'",
        ),
        (
            {"ifName": "a-very-long-interface"},
            "config[1].opaque.parameters.ifName: expected an interface name",
        ),
        (
            {"networkName": "Prod/Net"},
            "config[1].opaque.parameters.networkName: expected a NetworkAttachmentDefinition",
        ),
        ({"kind": "GpuConfig"}, "config[1].opaque.parameters.kind: expected VfConfig"),
        (["driver", "netdev"], "config[1].opaque.parameters: expected an object"),
    ],
)
def test_invalid_opaque_config_fails_the_claim_naming_the_field(
    env: Env, parameters: object, problem: str
) -> None:
    env.plugin()
    bad = env.add(claim_object("bad", [("nic", device_name(KERNEL0))], configs=[([], parameters)]))
    ok = env.add(claim_object("ok", [("nic", device_name(KERNEL1))]))
    with env.client() as c:
        answer = c.prepare(bad, ok)
    error = answer[bad[2]].error  # type: ignore[attr-defined]
    assert "invalid opaque config" in error and problem in error, error
    assert answer[ok[2]].error == ""  # type: ignore[attr-defined]
    assert env.store.dra_claim(bad[2]) is None
    assert env.cdi_files() == [env.spec_file(ok[2]).name]


def test_idempotent_across_a_restart_and_a_deleted_claim(env: Env) -> None:
    first = env.plugin()
    obj = claim_object("web", [("nic", device_name(VFIO3))])
    ref = env.add(obj)
    uid = ref[2]
    with env.client() as c:
        answer = as_plain(c.prepare(ref)[uid])
    assert answer["error"] == ""
    spec = env.spec_file(uid).read_text()

    # The agent restarts after a reboot emptied the CDI directory: a new
    # plugin on the same store puts the spec back; the claim is gone.
    first.stop()
    env.kubelet.wait_deregistered(DRIVER)
    env.spec_file(uid).unlink()
    env.api.delete(env.api.get("ResourceClaim", "default", "web") or {})
    env.plugin()
    assert env.spec_file(uid).read_text() == spec
    gets = len(env.api.requests)
    with env.client() as c:
        assert as_plain(c.prepare(ref)[uid]) == answer
        env.spec_file(uid).write_text("{}")  # damaged: a repeated prepare repairs it
        assert as_plain(c.prepare(ref)[uid]) == answer
        assert env.spec_file(uid).read_text() == spec
        assert len(env.api.requests) == gets
        assert c.unprepare(ref) == {uid: ""}
    assert env.cdi_files() == [] and env.store.dra_claims() == []


# -- on a simulated node: drivers really move -------------------------------------


@pytest.fixture
def sim_env(api: FakeApiServer, make_sim: Callable[[str], SimulatedNode]) -> Iterator[Env]:
    sim = make_sim("1x4")
    root = short_tmpdir("nwdra")
    inventory = LiveInventory(sim.paths, watch_kernel=False)
    inventory.rescan()

    def ctx_for(store: Store) -> DeviceCtx:
        return DeviceCtx(
            paths=sim.paths,
            writer=sim,
            inventory=inventory,
            store=store,
            netdevs=Netlink(),
            vfconf=SimVfConfigurator(sim),
            timeout_s=5.0,
        )

    e = _env(root, api, ctx_for)
    e.sim = sim  # type: ignore[attr-defined]
    try:
        yield e
    finally:
        _close(e)


def _driver(sim: SimulatedNode, address: str) -> str | None:
    return link_name(sim.paths.pci_devices / address / "driver")


@pytest.mark.root
def test_prepare_binds_vfio_and_unprepare_moves_it_home(sim_env: Env) -> None:
    env, sim = sim_env, sim_env.sim  # type: ignore[attr-defined]
    from nicwarden.agent.devices import binding
    from nicwarden.agent.errors import Busy

    env.plugin()
    vf = sim.vf_address(0, 1)
    ref = env.add(
        claim_object("dpdk", [("nic", device_name(vf))], configs=[([], {"driver": "vfio-pci"})])
    )
    uid = ref[2]
    assert _driver(sim, vf) == "iavf"
    with env.client() as c:
        assert c.prepare(ref)[uid].error == ""  # type: ignore[attr-defined]
    assert _driver(sim, vf) == "vfio-pci"
    group = link_name(sim.paths.pci_devices / vf / "iommu_group")
    spec = json.loads(env.spec_file(uid).read_text())
    nodes = spec["devices"][0]["containerEdits"]["deviceNodes"]
    assert nodes == [
        {
            "path": "/dev/vfio/vfio",
            "hostPath": str(sim.paths.dev / "vfio" / "vfio"),
            "permissions": "rw",
        },
        {
            "path": f"/dev/vfio/{group}",
            "hostPath": str(sim.paths.dev / "vfio" / str(group)),
            "permissions": "rw",
        },
    ]
    # A prepared VF is in use: the CLI's bind refuses to pull it away.
    with pytest.raises(Busy, match="prepared for DRA claim default/dpdk"):
        binding.bind(env.ctx, vf, "kernel")

    with env.client() as c:
        assert c.unprepare(ref) == {uid: ""}
    assert _driver(sim, vf) == "iavf"
    assert env.cdi_files() == [] and env.store.dra_claims() == []
    assert env.store.pending_intents() == []


@pytest.mark.root
def test_a_failed_bind_leaves_nothing_half_prepared(sim_env: Env) -> None:
    env, sim = sim_env, sim_env.sim  # type: ignore[attr-defined]
    env.plugin()
    first, second = sim.vf_address(0, 0), sim.vf_address(0, 2)
    # The second VF is in use on the host (up with an address): binding it is refused.
    name = sim.vf_name(0, 2)
    subprocess.run(["ip", "addr", "add", "192.0.2.7/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    env.inventory.rescan()
    ref = env.add(
        claim_object(
            "two",
            [("a", device_name(first)), ("b", device_name(second))],
            configs=[([], {"driver": "vfio-pci"})],
        )
    )
    with env.client() as c:
        error = c.prepare(ref)[ref[2]].error  # type: ignore[attr-defined]
    assert f"{second} is in use" in error and "192.0.2.7/24" in error, error
    assert "nothing is left prepared" in error
    # The first VF was moved, then moved back (each a completed bind intent).
    moves = [env.store.intent(i) for i in (1, 2)]
    assert [(m.target, m.payload["target"], m.state) for m in moves if m] == [
        (first, "vfio-pci", "done"),
        (first, "iavf", "done"),
    ]
    assert env.store.intent(3) is None
    assert _driver(sim, first) == "iavf" and _driver(sim, second) == "iavf"
    assert env.cdi_files() == [] and env.store.dra_claims() == []


@pytest.mark.root
def test_invalid_config_moves_no_driver(sim_env: Env) -> None:
    env, sim = sim_env, sim_env.sim  # type: ignore[attr-defined]
    env.plugin()
    first, second = sim.vf_address(0, 0), sim.vf_address(0, 1)
    ref = env.add(
        claim_object(
            "mixed",
            [("a", device_name(first)), ("b", device_name(second))],
            configs=[(["a"], {"driver": "vfio-pci"}), (["b"], {"driver": "uio"})],
        )
    )
    with env.client() as c:
        error = c.prepare(ref)[ref[2]].error  # type: ignore[attr-defined]
    assert "config[2].opaque.parameters.driver" in error, error
    assert _driver(sim, first) == "iavf" and _driver(sim, second) == "iavf"
    assert env.cdi_files() == [] and env.store.dra_claims() == []


@pytest.mark.root
def test_a_prepare_cut_short_by_a_crash_resumes_or_unprepares(sim_env: Env) -> None:
    env, sim = sim_env, sim_env.sim  # type: ignore[attr-defined]
    env.plugin()
    vf = sim.vf_address(0, 3)
    ref = env.add(
        claim_object("cut", [("nic", device_name(vf))], configs=[([], {"driver": "vfio-pci"})])
    )
    uid = ref[2]
    with env.client() as c:
        answer = as_plain(c.prepare(ref)[uid])
    assert answer["error"] == "" and _driver(sim, vf) == "vfio-pci"

    def crash_after_bind() -> None:
        # As the store looks when the agent died after the bind, before the
        # spec and the final checkpoint: the plan as first recorded.
        record = env.store.dra_claim(uid)
        assert record is not None
        plan = [
            {k: v for k, v in d.items() if k not in ("vfioNode", "vfioPath")}
            for d in record.devices
        ]
        env.store.put_dra_claim(uid, ref[0], ref[1], plan, [], "preparing")
        env.spec_file(uid).unlink()

    crash_after_bind()
    env.api.delete(env.api.get("ResourceClaim", "default", "cut") or {})  # not needed to resume
    with env.client() as c:
        assert as_plain(c.prepare(ref)[uid]) == answer
    record = env.store.dra_claim(uid)
    assert record is not None and record.state == "prepared"
    assert record.devices[0]["previous"] == "iavf"  # where it came from, not where it is
    assert env.spec_file(uid).exists()

    crash_after_bind()
    with env.client() as c:
        assert c.unprepare(ref) == {uid: ""}
    assert _driver(sim, vf) == "iavf"
    assert env.cdi_files() == [] and env.store.dra_claims() == []


def test_reloaded_selectors_apply_to_the_next_prepare(env: Env) -> None:
    plugin = env.plugin()
    only_vfio = dataclasses.replace(env.cfg, selectors=selector_list({"drivers": ["vfio-pci"]}))
    plugin.set_config(only_vfio)
    kernel = env.add(claim_object("k", [("nic", device_name(KERNEL0))]))
    vfio = env.add(claim_object("v", [("nic", device_name(VFIO2))]))
    with env.client() as c:
        answer = c.prepare(kernel, vfio)
    assert "is not a VF this node offers" in answer[kernel[2]].error  # type: ignore[attr-defined]
    assert answer[vfio[2]].error == ""  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="only with a restart"):
        plugin.set_config(dataclasses.replace(env.cfg, driver="other.example.com"))


def test_concurrent_prepares_of_one_device_let_exactly_one_claim_have_it(env: Env) -> None:
    env.plugin()
    refs = [env.add(claim_object(f"c{i}", [("nic", device_name(KERNEL1))])) for i in range(6)]
    answers: dict[str, str] = {}

    def call(ref: tuple[str, str, str]) -> None:
        with env.client() as c:
            answers[ref[2]] = c.prepare(ref)[ref[2]].error  # type: ignore[attr-defined]

    threads = [threading.Thread(target=call, args=(r,)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [uid for uid, error in answers.items() if not error]
    assert len(answers) == 6 and len(winners) == 1, answers
    assert all("already prepared for claim" in e for e in answers.values() if e)
    assert [r.uid for r in env.store.dra_claims()] == winners
    assert env.cdi_files() == [env.spec_file(winners[0]).name]
