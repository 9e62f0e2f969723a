"""Issue 3 end to end: the installed agent on a simulated node, a test kubelet
speaking the real v1beta1 protocol, nicwardenctl for provisioning/binding."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import Running, cleanup_node, start_agent, stop_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.kubelet_fake import FakeKubelet, short_tmpdir
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NETDEV, VFIO = "nicwarden.io/sriov_netdevice", "nicwarden.io/sriov_vfio"


def config(tmp: Path, kubelet_dir: Path, **extra: Any) -> Path:
    cfg = {
        "kubeletDir": str(kubelet_dir),
        "deviceInfoDir": str(tmp / "devinfo"),
        "resourceList": [
            {"resourceName": "sriov_netdevice", "selectors": [{"drivers": ["iavf"]}]},
            {"resourceName": "sriov_vfio", "selectors": [{"drivers": ["vfio-pci"]}]},
        ],
        **extra,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def kubelet() -> Iterator[FakeKubelet]:
    k = FakeKubelet(short_tmpdir("nwk") / "device-plugins")
    k.start()
    yield k
    k.stop()


@pytest.fixture
def agent(tmp_path: Path, kubelet: FakeKubelet) -> Iterator[Running]:
    r = start_agent(tmp_path, "--config", str(config(tmp_path, kubelet.plugin_dir)), spec="2x4")
    try:
        yield r
    finally:
        stop_agent(r)
        cleanup_node(r.prefix)


def ids(devices: list[Any]) -> list[str]:
    return sorted(d.ID for d in devices)


def test_pools_register_and_follow_numvfs_binding_and_health(
    agent: Running, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    net = kubelet.wait_for_registration(NETDEV)
    vfio = kubelet.wait_for_registration(VFIO)
    first = net.wait_for(lambda d: len(d) == 8)
    assert all(d.health == "Healthy" for d in first)
    assert {d.topology.nodes[0].ID for d in first} == {0, 1}
    vfio.wait_for(lambda d: d == [])

    pools = agent.ctl_json("pools")["pools"]
    assert {p["resource"]: p["device_count"] for p in pools} == {NETDEV: 8, VFIO: 0}

    # Provisioning: the kernel's rule (0 first) is the agent's job.
    out = agent.ctl("numvfs", f"{agent.prefix}0", "2")
    assert out.returncode == 0, out.stderr
    net.wait_for(lambda d: len(d) == 6)
    assert "2/64" in agent.ctl("pfs").stdout

    # DPDK: bind VF 1.0 to vfio-pci → it moves pools and gets vfio device specs.
    bound = agent.ctl_json("bind", "0000:19:01.0", "vfio-pci")
    assert bound["driver"] == "vfio-pci" and bound["changed"]
    vfio.wait_for(lambda d: ids(d) == ["0000:19:01.0"])
    net.wait_for(lambda d: "0000:19:01.0" not in ids(d))
    alloc = vfio.allocate(["0000:19:01.0"]).container_responses[0]
    group = agent.ctl_json("device", "0000:19:01.0")["iommu_group"]
    assert {s.container_path for s in alloc.devices} == {"/dev/vfio/vfio", f"/dev/vfio/{group}"}
    assert all(s.permissions == "rw" for s in alloc.devices)
    env = alloc.envs["PCIDEVICE_NICWARDEN_IO_SRIOV_VFIO"]
    assert env == "0000:19:01.0"
    allocations = agent.ctl_json("allocations")["allocations"]
    assert [a["device_id"] for a in allocations] == ["0000:19:01.0"]

    # Health follows the VF's link.
    run("ip", "link", "set", f"{agent.prefix}1v1", "down")
    net.wait_for(lambda d: any(x.ID == "0000:19:01.1" and x.health == "Unhealthy" for x in d))
    run("ip", "link", "set", f"{agent.prefix}1v1", "up")
    net.wait_for(lambda d: all(x.health == "Healthy" for x in d))

    # Allocated by kubelet (no pod attached yet): refused unless forced.
    refused = agent.ctl("bind", "0000:19:01.0", "kernel")
    assert refused.returncode == 1 and "allocated by kubelet" in refused.stderr
    back = agent.ctl_json("bind", "0000:19:01.0", "kernel", "--force")
    assert back["driver"] == "iavf" and back["overridden"]
    net.wait_for(lambda d: "0000:19:01.0" in ids(d))


def test_kubelet_restart_re_registers(agent: Running, kubelet: FakeKubelet) -> None:
    kubelet.wait_for_registration(NETDEV)
    kubelet.restart()
    conn = kubelet.wait_for_registration(NETDEV, count=2, timeout=5)
    conn.wait_for(lambda d: len(d) == 8)


def test_bad_requests_get_specific_errors(agent: Running) -> None:
    cases = [
        (["numvfs", f"{agent.prefix}0", "99"], 1, "sriov_totalvfs"),
        (["numvfs", f"{agent.prefix}0", "two"], 2, "expected a number"),
        (["numvfs", "0000:77:00.0", "2"], 1, "0000:77:00.0"),
        (["bind", "0000:18:00.0", "vfio-pci"], 1, "PF"),
        (["bind", "0000:99:01.0", "vfio-pci"], 1, "0000:99:01.0"),
        (["vf", "0000:18:01.0", "set", "vlan", "5000"], 2, "out of range (0 to 4095)"),
        (["vf", "0000:18:01.0", "set", "spoofchk", "maybe"], 2, "on or off"),
        (["vf", "0000:18:01.0", "set", "colour", "red"], 2, "unknown VF attribute"),
    ]
    for args, code, needle in cases:
        out = agent.ctl(*args)
        assert out.returncode == code and needle in out.stderr, (args, out.stderr)
    # Nothing half-done: every VF still on its driver, counts unchanged.
    devices = agent.ctl_json("devices", "--role", "vf")["devices"]
    assert len(devices) == 8 and all(d["driver"] == "iavf" for d in devices)


def test_vf_settings_round_trip(agent: Running) -> None:
    r = agent.ctl_json(
        "vf",
        "0000:18:01.1",
        "set",
        "vlan",
        "100",
        "qos",
        "3",
        "spoofchk",
        "off",
        "trust",
        "on",
        "rate",
        "1000",
        "mac",
        "02:aa:bb:cc:dd:01",
    )
    after = r["after"]
    assert (after["vlan"], after["qos"], after["spoofchk"], after["trust"]) == (100, 3, False, True)
    assert after["max_tx_rate"] == 1000 and after["mac"] == "02:aa:bb:cc:dd:01"
    assert r["before"]["spoofchk"] is True  # VFs default to spoofchk on
    # The simulator applies an admin MAC to the VF netdev, as VF drivers do.
    assert "02:aa:bb:cc:dd:01" in run("ip", "-br", "link", "show", f"{agent.prefix}0v1").stdout


def test_shrink_refused_while_attached_names_the_pod(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    conf = {
        "cniVersion": "1.0.0",
        "name": "net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": "0000:18:01.3",
    }
    kw = dict(container="busy1", netns=netns_path(ns), ifname="net1", pod="db", namespace="prod")
    assert invoke(str(Path(agent.args[0]).parent / "nicwarden-cni"), "ADD", conf, **kw).code == 0
    out = agent.ctl("numvfs", f"{agent.prefix}0", "2")
    assert out.returncode == 1 and "prod/db" in out.stderr
    forced = agent.ctl("bind", "0000:18:01.3", "vfio-pci")
    assert forced.returncode == 1 and "prod/db" in forced.stderr
    assert invoke(str(Path(agent.args[0]).parent / "nicwarden-cni"), "DEL", conf, **kw).code == 0
    assert agent.ctl("numvfs", f"{agent.prefix}0", "2").returncode == 0


def test_sighup_applies_new_desired_state(
    agent: Running, tmp_path: Path, kubelet: FakeKubelet
) -> None:
    net = kubelet.wait_for_registration(NETDEV)
    cfg_path = tmp_path / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["sriov"] = [
        {
            "pfNames": [f"{agent.prefix}1"],
            "numVfs": 3,
            "vfDrivers": [{"vfs": "2", "driver": "vfio-pci"}],
        }
    ]
    cfg_path.write_text(yaml.safe_dump(cfg))
    agent.proc.send_signal(signal.SIGHUP)
    vfio = kubelet.wait_for_registration(VFIO)
    vfio.wait_for(lambda d: ids(d) == ["0000:19:01.2"], timeout=15)
    net.wait_for(lambda d: len(d) == 6, timeout=15)  # 4 + 2 kernel VFs on PF 1
    dry = agent.ctl_json("converge", "--dry-run")
    assert dry["converged"] and not dry.get("drift")
    # Drift: someone changes a driver by hand; converge puts it back.
    assert agent.ctl("bind", "0000:19:01.2", "kernel").returncode == 0
    report = agent.ctl_json("converge", "--dry-run")
    assert any("0000:19:01.2" in d for d in report["drift"])
    assert agent.ctl_json("converge")["converged"]
    # A bad config on SIGHUP is refused and the running one kept.
    cfg_path.write_text("sriov: [{numVfs: -1}]\n")
    agent.proc.send_signal(signal.SIGHUP)
    assert agent.ctl("health").returncode == 0
    assert json.loads(agent.ctl("-o", "json", "pfs").stdout)["devices"][1]["num_vfs"] == 3
