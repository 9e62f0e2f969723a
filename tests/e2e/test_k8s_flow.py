"""Issue 6 end to end, no cluster: a test kubelet and a Multus-like step play
their parts over the real protocols (device plugin v1beta1 gRPC, CNI exec of
the installed shim), objects come from an API-server fixture through the real
kubernetes client, and pods are network namespaces on a simulated node."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import SHIM, Running, cleanup_node, kill_agent, start_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.k8s_apiserver import FakeApiServer
from tests.support.kubelet_fake import FakeKubelet, PluginConnection, short_tmpdir
from tests.support.oracle import run
from tests.support.traffic import Servers, tcp_ok

pytestmark = [pytest.mark.root, pytest.mark.e2e]

RESOURCE = "intel.com/sriov_netdevice"
NAD_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
STATUS = "k8s.v1.cni.cncf.io/network-status"


def nad() -> dict[str, Any]:
    config = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "vlan": 0,
        "ipam": {"type": "host-local", "subnet": "10.66.0.0/24"},
    }
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "sriov-net",
            "namespace": "prod",
            "annotations": {NAD_ANNOTATION: RESOURCE},
        },
        "spec": {"config": json.dumps(config)},
    }


def pod_obj(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"uid-{name}",
            "labels": {"app": app},
            "annotations": {"k8s.v1.cni.cncf.io/networks": "sriov-net"},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "c", "image": "x", "resources": {"limits": {RESOURCE: "1"}}}],
        },
    }


@dataclass
class PodRun:
    name: str
    netns: str
    device: str
    result: dict[str, Any]


class Node:
    """Plays kubelet (device plugin side) and Multus (CNI side) for one node."""

    def __init__(self, api: FakeApiServer, kubelet: FakeKubelet, agent: Running, tmp: Path):
        self.api, self.kubelet, self.agent, self.tmp = api, kubelet, agent, tmp
        self.allocated: dict[str, list[str]] = {}

    def plugin(self) -> PluginConnection:
        return self.kubelet.wait_for_registration(RESOURCE)

    def admit(self, name: str) -> list[str]:
        """Kubelet: choose (preferred allocation) and Allocate one device."""
        conn = self.plugin()
        devices = conn.wait_for(lambda d: len(d) > 0)
        taken = {d for ids in self.allocated.values() for d in ids}
        available = [d.ID for d in devices if d.health == "Healthy" and d.ID not in taken]
        chosen = conn.preferred(available, [], 1)
        resp = conn.allocate(chosen)
        env = resp.container_responses[0].envs
        assert env["PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE"] == ",".join(chosen)
        self.allocated[name] = chosen
        return chosen

    def multus_add(self, name: str, netns: str) -> PodRun:
        """Multus: NAD → resourceName → the pod's devices (sorted) → deviceID."""
        net = self.api.get("NetworkAttachmentDefinition", "prod", "sriov-net")
        assert net is not None
        resource = net["metadata"]["annotations"][NAD_ANNOTATION]
        assert resource == RESOURCE
        device = sorted(self.allocated[name])[0]
        config = json.loads(net["spec"]["config"])
        config["ipam"]["dataDir"] = str(self.tmp / "ipam")
        config.update(deviceID=device, pciBusID=device, agentSocket=str(self.agent.cni_sock))
        info = self.tmp / "devinfo" / "cni" / f"prod-sriov-net-c-{name}_net1"
        config["runtimeConfig"] = {"CNIDeviceInfoFile": str(info)}
        out = invoke(
            SHIM,
            "ADD",
            config,
            container=f"c-{name}",
            netns=netns_path(netns),
            ifname="net1",
            pod=name,
            namespace="prod",
        )
        assert out.code == 0, out.stdout
        result = out.json
        # Multus writes network-status from the result (IPs without prefix).
        status = [
            {
                "name": "prod/sriov-net",
                "interface": "net1",
                "ips": [ip["address"].split("/")[0] for ip in result["ips"]],
                "mac": result["interfaces"][0]["mac"],
                "dns": {},
                "device-info": json.loads(info.read_text()),
            }
        ]
        obj = self.api.get("Pod", "prod", name)
        assert obj is not None
        obj["metadata"]["annotations"][STATUS] = json.dumps(status)
        self.api.update(obj)
        return PodRun(name, netns, device, result)

    def multus_del(self, run_: PodRun) -> None:
        net = self.api.get("NetworkAttachmentDefinition", "prod", "sriov-net")
        assert net is not None
        config = json.loads(net["spec"]["config"])
        config["ipam"]["dataDir"] = str(self.tmp / "ipam")
        config.update(
            deviceID=run_.device, pciBusID=run_.device, agentSocket=str(self.agent.cni_sock)
        )
        out = invoke(
            SHIM,
            "DEL",
            config,
            container=f"c-{run_.name}",
            netns=netns_path(run_.netns),
            ifname="net1",
            pod=run_.name,
            namespace="prod",
        )
        assert out.code == 0, out.stdout
        self.allocated.pop(run_.name, None)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    api = FakeApiServer().start()
    kubelet = FakeKubelet(short_tmpdir("nwk") / "device-plugins")
    kubelet.start()
    for obj in ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}, nad()):
        api.add(obj)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kubernetes": {"watch": True, "kubeconfig": str(kubeconfig), "events": True},
                "kubeletDir": str(kubelet.plugin_dir),
                "deviceInfoDir": str(tmp_path / "devinfo"),
                "resourcePrefix": "intel.com",
                "resourceList": [
                    {"resourceName": "sriov_netdevice", "selectors": [{"drivers": ["iavf"]}]}
                ],
            }
        )
    )
    agent = start_agent(tmp_path, "--config", str(cfg), spec="1x4", persistent=True)
    n = Node(api, kubelet, agent, tmp_path)
    try:
        yield n
    finally:
        kill_agent(n.agent)
        cleanup_node(n.agent.prefix)
        kubelet.stop()
        api.stop()


def test_full_pod_flow(node: Node, netns: Callable[[], str], tmp_path: Path) -> None:
    pods = {}
    for name, app in (("db", "db"), ("web", "web"), ("other", "other")):
        node.api.add(pod_obj(name, app))
        node.admit(name)
        pods[name] = node.multus_add(name, netns())
    db, web, other = pods["db"], pods["web"], pods["other"]
    ip = {n: p.result["ips"][0]["address"].split("/")[0] for n, p in pods.items()}

    # The pod netns has net1 with its IP; the agent's view matches the result.
    assert ip["db"] in run("ip", "-n", db.netns, "-br", "addr", "show", "net1").stdout
    att = node.agent.ctl_json("attachment", "c-db")["attachments"][0]
    assert json.loads(att["result_json"])["ips"][0]["address"] == db.result["ips"][0]["address"]
    assert (att["pod_namespace"], att["pod_name"], att["device"]) == ("prod", "db", db.device)
    allocs = {
        a["device_id"]: a.get("pod_name") for a in node.agent.ctl_json("allocations")["allocations"]
    }
    assert allocs[db.device] == "db"

    # A MultiNetworkPolicy from the API is enforced.
    srv = Servers(db.netns, tcp=(5432,))
    try:
        assert tcp_ok(other.netns, ip["db"], 5432)
        node.api.add(
            {
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "db",
                    "namespace": "prod",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "sriov-net"},
                },
                "spec": {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
                },
            }
        )
        eventually(lambda: not tcp_ok(other.netns, ip["db"], 5432))
        assert tcp_ok(web.netns, ip["db"], 5432)

        # An invalid policy is reported as an Event on the object.
        node.api.add(
            {
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "broken",
                    "namespace": "prod",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "sriov-net"},
                },
                "spec": {
                    "podSelector": {"matchLabels": {"app": "nobody"}},
                    "ingress": [{"ports": [{"protocol": "TCP", "endPort": 90}]}],
                },
            }
        )
        eventually(
            lambda: any(
                e.get("reason") == "NicwardenPolicyInvalid"
                and e["involvedObject"]["name"] == "broken"
                for e in node.api.events.values()
            )
        )

        # Agent restart in the middle loses nothing: kill -9, enforcement holds,
        # the new agent adopts the node, pins, attachments and allocations.
        kill_agent(node.agent)
        assert not tcp_ok(other.netns, ip["db"], 5432)
        assert tcp_ok(web.netns, ip["db"], 5432)
        node.agent = start_agent(
            tmp_path,
            *node.agent.args[
                node.agent.args.index("--config") : node.agent.args.index("--config") + 2
            ],
            spec="1x4",
            prefix=node.agent.prefix,
            persistent=True,
        )
        assert len(node.agent.ctl_json("attachments")["attachments"]) == 3
        node.kubelet.wait_for_registration(RESOURCE, count=2, timeout=10)
        assert not tcp_ok(other.netns, ip["db"], 5432)
        assert tcp_ok(web.netns, ip["db"], 5432)
    finally:
        srv.close()

    # Pod deletion: Multus DELs, the VF goes home and is free for the next pod.
    node.multus_del(other)
    node.api.delete(node.api.get("Pod", "prod", "other") or {})
    atts = node.agent.ctl_json("attachments")["attachments"]
    assert sorted(a["pod_name"] for a in atts) == ["db", "web"]
    assert other.device not in {
        a["device_id"] for a in node.agent.ctl_json("allocations").get("allocations", [])
    }
    vf_index = int(other.device.split(".")[-1])
    assert f"{node.agent.prefix}0v{vf_index}" in run("ip", "-br", "link").stdout
    node.api.add(pod_obj("next", "web"))
    assert node.admit("next") == [other.device]  # the freed VF is the one left
