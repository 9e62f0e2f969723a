"""Lost state is never taken for a fresh node, and VFs out of place with
nothing on record are held back until an admin decides. The installed
agent, shim and CLI on a simulated node that outlives the agent."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import (
    SHIM,
    Running,
    cleanup_node,
    start_agent,
    stop_agent,
)
from tests.support.cni_runtime import invoke, netns_path
from tests.support.k8s_apiserver import FakeApiServer
from tests.support.kubelet_fake import FakeKubelet, short_tmpdir
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

VF1, VF2 = "0000:18:01.1", "0000:18:01.2"


class Node:
    """One simulated node across agent restarts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agent: Running | None = None
        self.prefix: str | None = None

    def start(self) -> Running:
        self.agent = start_agent(self.tmp, spec="1x4", prefix=self.prefix, persistent=True)
        self.prefix = self.agent.prefix
        return self.agent

    def stop(self) -> None:
        if self.agent is not None:
            stop_agent(self.agent)
            self.agent = None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.stop()
        if n.prefix:
            cleanup_node(n.prefix)


def conf(agent: Running, tmp: Path, device: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "loss-net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": device,
        "ipam": {"type": "host-local", "subnet": "10.57.3.0/24", "dataDir": str(tmp / "ipam")},
    }


def in_pod(ns: str) -> list[str]:
    out = run("ip", "-n", ns, "-br", "link").stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines()]


def metric(agent: Running, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics").read()
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_zero_byte_database_is_refused_and_nothing_touched(
    node: Node, netns: Callable[[], str]
) -> None:
    ns = netns()
    agent = node.start()
    out = invoke(
        SHIM,
        "ADD",
        conf(agent, node.tmp, VF1),
        container="c1",
        netns=netns_path(ns),
        ifname="net1",
    )
    assert out.code == 0, out.stdout + out.stderr
    node.stop()
    db = node.tmp / "state" / "nicwarden.db"
    db.write_bytes(b"")
    with pytest.raises(AssertionError, match=r"nicwarden.db is empty \(0 bytes\)"):
        node.start()
    assert db.stat().st_size == 0
    assert "net1" in in_pod(ns)  # the VF was left where it is


def test_unexplained_vfs_are_held_back_until_adopted_or_released(
    node: Node, netns: Callable[[], str]
) -> None:
    ns, other = netns(), netns()
    agent = node.start()
    c = conf(agent, node.tmp, VF1)
    out = invoke(SHIM, "ADD", c, container="c1", netns=netns_path(ns), ifname="net1")
    assert out.code == 0, out.stdout + out.stderr
    node.stop()
    # The state is gone, and the admin cleared the way for a fresh start.
    for p in (node.tmp / "state").iterdir():
        if p.name.startswith("nicwarden.db"):
            p.unlink()
    agent = node.start()

    health = agent.ctl("health")
    assert health.returncode == 1, health.stdout
    assert VF1 in health.stdout and "not in the host network namespace" in health.stdout
    assert metric(agent, "nicwarden_vf_unexplained") == 1
    dev = agent.ctl_json("device", VF1)
    assert dev["healthy"] is False and "reconcile --adopt" in dev["health_detail"]
    # Not offered: an ADD of it is refused and the pod keeps it.
    refused = invoke(SHIM, "ADD", c, container="c2", netns=netns_path(other), ifname="net1")
    assert refused.code != 0 and "not offered to pods" in refused.json["msg"], refused.stdout
    assert "net1" in in_pod(ns) and in_pod(other) == ["lo"]

    # A VF renamed on the host behind the agent's back is reported too.
    vf2 = f"{node.prefix}0v2"
    run("ip", "link", "set", vf2, "down")
    run("ip", "link", "set", vf2, "name", f"{node.prefix}x2")
    run("ip", "link", "set", f"{node.prefix}x2", "up")
    rec = agent.ctl("reconcile")
    assert rec.returncode == 0, rec.stderr
    assert f"{VF2}: renamed from {vf2} to {node.prefix}x2" in rec.stdout, rec.stdout
    assert metric(agent, "nicwarden_vf_unexplained") == 2

    adopt = agent.ctl("reconcile", "--adopt", VF2)
    assert adopt.returncode == 0 and f"{node.prefix}x2 is its home name now" in adopt.stdout
    assert agent.ctl_json("device", VF2)["healthy"] is True

    release = agent.ctl("reconcile", "--release", VF1)
    assert release.returncode == 0, release.stderr
    assert "moved back from" in release.stdout, release.stdout
    assert "net1" not in in_pod(ns)
    assert run("ip", "-br", "link", "show", "vf18s01f1").returncode == 0
    assert agent.ctl("health").returncode == 0
    assert metric(agent, "nicwarden_vf_unexplained") == 0
    # Offered again.
    ok = invoke(SHIM, "ADD", c, container="c3", netns=netns_path(other), ifname="net1")
    assert ok.code == 0, ok.stdout + ok.stderr
    assert invoke(SHIM, "DEL", c, container="c3", netns=netns_path(other), ifname="net1").code == 0


def test_adopting_a_vf_away_from_home_holds_it(node: Node, netns: Callable[[], str]) -> None:
    ns = netns()
    agent = node.start()
    vf1 = f"{node.prefix}0v1"
    run("ip", "link", "set", vf1, "netns", ns)  # someone else's doing
    assert agent.ctl("reconcile").returncode == 0
    assert agent.ctl("health").returncode == 1
    adopt = agent.ctl("reconcile", "--adopt", VF1)
    assert adopt.returncode == 0 and "held where it is" in adopt.stdout, adopt.stdout
    assert agent.ctl("health").returncode == 0
    # Held: still not offered to pods.
    c = conf(agent, node.tmp, VF1)
    other = netns()
    refused = invoke(SHIM, "ADD", c, container="c9", netns=netns_path(other), ifname="net1")
    assert refused.code != 0 and "held by an admin" in refused.json["msg"], refused.stdout
    release = agent.ctl("reconcile", "--release", VF1)
    assert release.returncode == 0, release.stderr
    assert run("ip", "-br", "link", "show", vf1).returncode == 0  # home under its name
    ok = invoke(SHIM, "ADD", c, container="c9", netns=netns_path(other), ifname="net1")
    assert ok.code == 0, ok.stdout + ok.stderr
    assert invoke(SHIM, "DEL", c, container="c9", netns=netns_path(other), ifname="net1").code == 0


def test_cluster_mode_event_and_kubelet_sees_it_unhealthy(
    tmp_path: Path, netns: Callable[[], str]
) -> None:
    api = FakeApiServer().start()
    kubelet_dir = short_tmpdir("nwk")
    kubelet = FakeKubelet(kubelet_dir / "device-plugins")
    kubelet.start()
    agent: Running | None = None
    try:
        cfg = tmp_path / "config.yaml"
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        cfg.write_text(
            yaml.safe_dump(
                {
                    "kubernetes": {"watch": True, "kubeconfig": str(kubeconfig), "events": True},
                    "kubeletDir": str(kubelet.plugin_dir),
                    "deviceInfoDir": str(tmp_path / "devinfo"),
                    "resourcePrefix": "intel.com",
                    "resourceList": [{"resourceName": "vfs", "selectors": [{"drivers": ["iavf"]}]}],
                }
            )
        )
        agent = start_agent(tmp_path, "--config", str(cfg), spec="1x4")
        conn = kubelet.wait_for_registration("intel.com/vfs", timeout=15)
        conn.wait_for(lambda devs: len(devs) == 4 and all(d.health == "Healthy" for d in devs))

        run("ip", "link", "set", f"{agent.prefix}0v1", "netns", netns())  # someone else's doing
        assert agent.ctl("reconcile").returncode == 0
        conn.wait_for(
            lambda devs: (
                {d.ID: d.health for d in devs}[VF1] == "Unhealthy"
                and sum(d.health == "Healthy" for d in devs) == 3
            )
        )
        deadline = time.monotonic() + 10
        while not any(
            e.get("reason") == "NicwardenVfUnexplained" and VF1 in e.get("message", "")
            for e in api.events.values()
        ):
            assert time.monotonic() < deadline, list(api.events.values())
            time.sleep(0.05)
        (event,) = [e for e in api.events.values() if e.get("reason") == "NicwardenVfUnexplained"]
        assert event["involvedObject"]["kind"] == "Node" and event["type"] == "Warning"

        assert agent.ctl("reconcile", "--release", VF1).returncode == 0
        conn.wait_for(lambda devs: all(d.health == "Healthy" for d in devs))
    finally:
        if agent is not None:
            stop_agent(agent)
            cleanup_node(agent.prefix)
        kubelet.stop()
        api.stop()
        shutil.rmtree(kubelet_dir, ignore_errors=True)
