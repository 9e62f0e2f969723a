"""DRA end to end, no cluster: the installed agent on a simulated node serves
a test kubelet over the published DRA and registration protos, reads and
writes ResourceClaims in the in-repo API server through the real kubernetes
client, and attaches through the installed CNI shim into a network namespace.

The oracles are the kernel (``ip -j addr`` in the pod, ``ip -j link`` on the
host, found by the simulated VF's ifalias), the API server's stored objects
and the CDI directory, never the agent's own account of itself.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.deviceplugin.dra.devices import device_name
from tests.support.agent_proc import SHIM, Running, cleanup_node, kill_agent, start_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.k8s_apiserver import FakeApiServer, wait_until
from tests.support.kubelet_dra import DraKubelet
from tests.support.kubelet_fake import FakeKubelet, short_tmpdir
from tests.support.oracle import run

pytestmark = [
    pytest.mark.root,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/host-local").exists(), reason="containernetworking-plugins missing"
    ),
]

DRIVER = "vf.nicwarden.io"
NODE = "node-dra"
RESOURCE = "intel.com/sriov_netdevice"
CLAIM_UID = "6b2d1f3e-0000-4000-8000-00000000e2e1"


def vf(i: int) -> str:
    """The simulated node's PF 0, VF ``i``."""
    return f"0000:18:01.{i}"


@dataclass
class Env:
    api: FakeApiServer
    kubelet: DraKubelet
    dp_kubelet: FakeKubelet
    agent: Running
    tmp: Path
    cdi_dir: Path
    config: Path

    def restart(self) -> None:
        """kill -9, then the same agent again on the same simulated node."""
        kill_agent(self.agent)
        self.agent = start_agent(
            self.tmp,
            "--config",
            str(self.config),
            spec="1x4",
            prefix=self.agent.prefix,
            persistent=True,
            env=_env(),
        )


def _env() -> dict[str, str]:
    return {**os.environ, "NODE_NAME": NODE}


# Both front-ends on one node: VFs 0-1 to the device plugin, 2-3 to DRA.
SPLIT_POOLS = [{"resourceName": "sriov_netdevice", "selectors": {"pciAddresses": [vf(0), vf(1)]}}]
SPLIT_DRA = {"pciAddresses": [vf(2), vf(3)]}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with running(tmp_path, SPLIT_POOLS, SPLIT_DRA) as e:
        yield e


@contextmanager
def running(tmp_path: Path, pools: list[dict[str, Any]], dra: dict[str, Any]) -> Iterator[Env]:
    # Unix socket paths must fit 108 bytes: kubelet's dirs live in a short temp dir.
    short = short_tmpdir("nwdra")
    api = FakeApiServer().start()
    kubelet = DraKubelet(short / "plugins_registry")
    (short / "plugins_registry").mkdir()
    kubelet.start()
    dp_kubelet = FakeKubelet(short / "device-plugins")
    dp_kubelet.start()
    cdi_dir = tmp_path / "cdi"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubernetes": {
                    "watch": True,
                    "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                    "events": False,
                },
                "kubeletDir": str(dp_kubelet.plugin_dir),
                "deviceInfoDir": str(tmp_path / "devinfo"),
                "resourcePrefix": "intel.com",
                "resourceList": pools,
                "dra": {
                    "enabled": True,
                    "driver": DRIVER,
                    "selectors": dra,
                    "registryDir": str(short / "plugins_registry"),
                    "pluginsDir": str(short / "plugins"),
                    "cdiDir": str(cdi_dir),
                },
            }
        )
    )
    agent = start_agent(tmp_path, "--config", str(config), spec="1x4", persistent=True, env=_env())
    e = Env(api, kubelet, dp_kubelet, agent, tmp_path, cdi_dir, config)
    try:
        yield e
    finally:
        kill_agent(e.agent)
        cleanup_node(e.agent.prefix)
        kubelet.stop()
        dp_kubelet.stop()
        api.stop()
        shutil.rmtree(short, ignore_errors=True)


def claim_object(results: list[tuple[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """A ResourceClaim the scheduler allocated: (request, device) results and
    one opaque config per request (``params`` by request name)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "pair", "namespace": "prod", "uid": CLAIM_UID},
        "spec": {
            "devices": {
                "requests": [
                    {"name": r, "exactly": {"deviceClassName": DRIVER}} for r, _d in results
                ]
            }
        },
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": r, "driver": DRIVER, "pool": NODE, "device": d}
                        for r, d in results
                    ],
                    "config": [
                        {
                            "source": "FromClaim",
                            "requests": [r],
                            "opaque": {"driver": DRIVER, "parameters": p},
                        }
                        for r, p in params.items()
                    ],
                }
            }
        },
    }


def slice_devices(api: FakeApiServer) -> set[str]:
    with api._cond:
        slices: list[dict[str, Any]] = list(api._objects["ResourceSlice"].values())
    return {d["name"] for s in slices for d in s["spec"]["devices"]}


def host_link_by_alias(prefix: str, address: str) -> dict[str, Any] | None:
    """The simulated VF's netdev in the host netns, found by its ifalias."""
    links = json.loads(run("ip", "-j", "link").stdout)
    alias = f"nwsim:{prefix}:{address}"
    return next((link for link in links if link.get("ifalias") == alias), None)


def pod_view(ns: str, ifname: str) -> dict[str, Any]:
    (link,) = json.loads(run("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).stdout)
    ips = [
        f"{a['local']}/{a['prefixlen']}"
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]
    return {"interfaceName": link["ifname"], "ips": ips, "hardwareAddress": link["address"]}


def cni(env: Env, command: str, device: str, ns: str) -> Any:
    config = {
        "cniVersion": "1.0.0",
        "name": "dra-net",
        "type": "nicwarden",
        "deviceID": device,
        "agentSocket": str(env.agent.cni_sock),
        "ipam": {
            "type": "host-local",
            "dataDir": str(env.tmp / "ipam"),
            "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]],
        },
    }
    return invoke(
        SHIM,
        command,
        config,
        container="c-dra",
        netns=netns_path(ns),
        ifname="net1",
        pod="web-0",
        namespace="prod",
    )


def our_status(env: Env) -> list[dict[str, Any]]:
    claim = env.api.get("ResourceClaim", "prod", "pair")
    assert claim is not None
    devices = (claim.get("status") or {}).get("devices") or []
    return [d for d in devices if d.get("driver") == DRIVER]


def test_claim_prepare_attach_restart_detach_unprepare(env: Env, netns: Callable[[], str]) -> None:
    prefix = env.agent.prefix
    net, dpdk = device_name(vf(2)), device_name(vf(3))

    # One node, both front-ends, each VF offered by exactly one.
    wait_until(lambda: slice_devices(env.api) == {net, dpdk}, timeout=10, what="slices")
    conn = env.dp_kubelet.wait_for_registration(RESOURCE, timeout=10)
    listed = {d.ID for d in conn.wait_for(lambda d: len(d) == 2)}
    assert listed == {vf(0), vf(1)}
    assert not listed & {vf(2), vf(3)}

    # A claim allocated two of this driver's devices: one netdev, one vfio.
    env.api.add(
        claim_object(
            [("net", net), ("dpdk", dpdk)],
            {
                "net": {"driver": "netdev", "ifName": "net1", "networkName": "prod/dra-net"},
                "dpdk": {"driver": "vfio-pci"},
            },
        )
    )
    reg = env.kubelet.wait_registered(DRIVER, timeout=10)
    assert reg.info.endpoint.endswith(f"{DRIVER}/dra.sock")
    with env.kubelet.client(DRIVER) as kubelet:
        answer = kubelet.prepare(("prod", "pair", CLAIM_UID))[CLAIM_UID]
    assert answer.error == "", answer.error  # type: ignore[attr-defined]
    ids = {d.device_name: list(d.cdi_device_ids) for d in answer.devices}  # type: ignore[attr-defined]
    assert ids == {
        net: [f"{DRIVER}/vf={CLAIM_UID}-{net}"],
        dpdk: [f"{DRIVER}/vf={CLAIM_UID}-{dpdk}"],
    }
    spec_files = list(env.cdi_dir.iterdir())
    assert len(spec_files) == 1
    assert spec_files[0].name == f"{DRIVER}-vf_{CLAIM_UID}.json"
    spec = json.loads(spec_files[0].read_text())
    assert spec["kind"] == f"{DRIVER}/vf"
    assert {d["name"] for d in spec["devices"]} == {f"{CLAIM_UID}-{net}", f"{CLAIM_UID}-{dpdk}"}
    # The vfio VF left the host netns; the netdev one waits there for the ADD.
    assert host_link_by_alias(prefix, vf(3)) is None
    assert host_link_by_alias(prefix, vf(2)) is not None

    # CNI ADD with the claim's netdev VF, through the installed shim.
    ns = netns()
    out = cni(env, "ADD", vf(2), ns)
    assert out.code == 0, out.stdout + out.stderr
    assert host_link_by_alias(prefix, vf(2)) is None  # in the pod now

    # The claim's status entry matches the kernel's view of the pod.
    wait_until(lambda: len(our_status(env)) == 1, timeout=10, what="claim status")
    (entry,) = our_status(env)
    assert (entry["pool"], entry["device"]) == (NODE, net)
    assert entry["conditions"][0]["type"] == "Ready"
    assert entry["conditions"][0]["status"] == "True"
    view = pod_view(ns, "net1")
    data = entry["networkData"]
    assert data["interfaceName"] == view["interfaceName"] == "net1"
    assert data["hardwareAddress"] == view["hardwareAddress"]
    assert sorted(data["ips"]) == sorted(view["ips"]) and len(view["ips"]) == 2

    # kill -9 and restart on the same node: the claim and attachment survive.
    env.restart()
    reg = env.kubelet.wait_registered(DRIVER, count=2, timeout=10)
    assert len(env.agent.ctl_json("attachments")["attachments"]) == 1  # type: ignore[arg-type]
    assert pod_view(ns, "net1") == view

    # DEL: the status entry is cleared; the VF is back in the host netns.
    out = cni(env, "DEL", vf(2), ns)
    assert out.code == 0, out.stdout + out.stderr
    wait_until(lambda: our_status(env) == [], timeout=10, what="status cleared")
    wait_until(lambda: host_link_by_alias(prefix, vf(2)) is not None, what="netdev VF home")

    # Unprepare: the CDI spec is gone, the vfio VF is back on its kernel driver.
    with env.kubelet.client(DRIVER) as kubelet:
        assert kubelet.unprepare(("prod", "pair", CLAIM_UID)) == {CLAIM_UID: ""}
    assert list(env.cdi_dir.iterdir()) == []
    for i in (2, 3):
        link = host_link_by_alias(prefix, vf(i))
        assert link is not None, f"VF {vf(i)} is not home"
        assert link["ifname"] == f"{prefix}0v{i}"
    assert our_status(env) == []
    # And again: Unprepare is idempotent.
    with env.kubelet.client(DRIVER) as kubelet:
        assert kubelet.unprepare(("prod", "pair", CLAIM_UID)) == {CLAIM_UID: ""}


def test_add_of_a_dra_vf_without_a_prepared_claim_is_refused(
    env: Env, netns: Callable[[], str]
) -> None:
    ns = netns()
    out = cni(env, "ADD", vf(2), ns)
    assert out.code != 0
    error = json.loads(out.stdout)
    assert error["code"] == 7
    assert vf(2) in error["msg"] and "no prepared ResourceClaim holds it" in error["msg"]
    # Nothing moved: the VF is still home, and no attachment was recorded.
    assert host_link_by_alias(env.agent.prefix, vf(2)) is not None
    assert env.agent.ctl_json("attachments").get("attachments", []) == []
    # A device plugin VF still attaches without any claim.
    out = cni(env, "ADD", vf(0), ns)
    assert out.code == 0, out.stdout + out.stderr
    assert cni(env, "DEL", vf(0), ns).code == 0


def slice_taints(api: FakeApiServer, device: str) -> list[tuple[str, str]]:
    with api._cond:
        slices: list[dict[str, Any]] = list(api._objects["ResourceSlice"].values())
    for s in slices:
        for d in s["spec"]["devices"]:
            if d["name"] == device:
                return [(t["key"], t["effect"]) for t in d.get("taints") or []]
    raise AssertionError(f"{device} is in no slice")


def test_prepare_of_an_in_use_vf_and_held_back_vfs(env: Env, netns: Callable[[], str]) -> None:
    prefix = env.agent.prefix
    dpdk = device_name(vf(3))
    wait_until(lambda: dpdk in slice_devices(env.api), timeout=10, what="slices")
    assert slice_taints(env.api, dpdk) == []

    # In use on the host (its netdev up with an address): Prepare refuses the
    # claim, in words for kubelet's side, not the CLI's force advice.
    name = f"{prefix}0v3"
    run("ip", "link", "set", name, "up")
    run("ip", "addr", "add", "192.0.2.33/32", "dev", name)
    env.api.add(claim_object([("dpdk", dpdk)], {"dpdk": {"driver": "vfio-pci"}}))
    env.kubelet.wait_registered(DRIVER, timeout=10)
    with env.kubelet.client(DRIVER) as kubelet:
        error = kubelet.prepare(("prod", "pair", CLAIM_UID))[CLAIM_UID].error  # type: ignore[attr-defined]
    assert vf(3) in error and "in use" in error and "192.0.2.33/32" in error, error
    assert "force" not in error, error
    assert not env.cdi_dir.exists() or list(env.cdi_dir.iterdir()) == []
    link = host_link_by_alias(prefix, vf(3))
    assert link is not None and link["ifname"] == name  # still on its kernel driver, home

    # Freed, kubelet's retry goes through.
    run("ip", "addr", "del", "192.0.2.33/32", "dev", name)
    with env.kubelet.client(DRIVER) as kubelet:
        answer = kubelet.prepare(("prod", "pair", CLAIM_UID))[CLAIM_UID]
        assert answer.error == "", answer.error  # type: ignore[attr-defined]
        assert kubelet.unprepare(("prod", "pair", CLAIM_UID)) == {CLAIM_UID: ""}
    wait_until(lambda: host_link_by_alias(prefix, vf(3)) is not None, what="VF home")

    # A VF someone else moved out of the host netns is held back: its
    # device is tainted NoSchedule until an admin releases it.
    ns = netns()
    run("ip", "link", "set", name, "netns", ns)
    env.agent.ctl("reconcile")
    wait_until(
        lambda: slice_taints(env.api, dpdk) == [("nicwarden.io/vf-held-back", "NoSchedule")],
        timeout=10,
        what="held-back taint",
    )
    assert env.agent.ctl("reconcile", "--release", vf(3)).returncode == 0
    wait_until(lambda: slice_taints(env.api, dpdk) == [], timeout=10, what="taint lifted")
    assert host_link_by_alias(prefix, vf(3)) is not None


def test_a_vf_both_would_select_after_a_rebind_is_offered_by_dra_only(tmp_path: Path) -> None:
    """The pool selects every VF by address, DRA selects vfio-pci VFs: none
    at start (no config error), then a rebind makes VF 3 match both. It
    leaves ListAndWatch and enters a slice: never offered by both."""
    every = [
        {
            "resourceName": "sriov_netdevice",
            "selectors": {"pciAddresses": [vf(i) for i in range(4)]},
        }
    ]
    with running(tmp_path, every, {"drivers": ["vfio-pci"]}) as e:
        conn = e.dp_kubelet.wait_for_registration(RESOURCE, timeout=10)
        conn.wait_for(lambda d: {x.ID for x in d} == {vf(i) for i in range(4)})
        wait_until(
            lambda: bool(e.api._objects["ResourceSlice"]), timeout=10, what="the (empty) pool"
        )
        assert slice_devices(e.api) == set()

        bound = e.agent.ctl("bind", vf(3), "vfio-pci")
        assert bound.returncode == 0, bound.stderr
        wait_until(
            lambda: slice_devices(e.api) == {device_name(vf(3))}, timeout=10, what="VF 3 in a slice"
        )
        listed = conn.wait_for(lambda d: vf(3) not in {x.ID for x in d})
        assert {x.ID for x in listed} == {vf(0), vf(1), vf(2)}
        in_slices = {a for a in map(vf, range(4)) if device_name(a) in slice_devices(e.api)}
        assert in_slices == {vf(3)}
        assert not {x.ID for x in conn.latest() or []} & in_slices

        # Back on its kernel driver: the device plugin offers it again, DRA not.
        assert e.agent.ctl("bind", vf(3), "kernel").returncode == 0
        wait_until(lambda: slice_devices(e.api) == set(), timeout=10, what="VF 3 out of slices")
        conn.wait_for(lambda d: {x.ID for x in d} == {vf(i) for i in range(4)})
