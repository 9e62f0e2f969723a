"""A pod with two VFs of one PF on two networks must not let traffic for its
policed net1 address in through net2.

The simulated node puts VFs of one PF on one bridge, as a NIC's embedded
switch does, so a peer on net2 shares the pod's L2 on both networks. Under
Linux's weak host model the pod's net2 interface answers ARP for its net1
address, and a peer that resolves it that way reaches the net1 address
through net2, where net1's deny-all policy never sees it. The agent sets the
strict host model on the interfaces it attaches: arp_ignore=1 and
arp_announce=2, and policy-routing rules that deliver an interface's
addresses only to packets that arrived on it. Oracles: which MACs answer a
raw ARP request sent from the peer, ping through each answering MAC and
through net2's MAC forced into the peer's neighbour table, and the peer's
neighbour table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent.host import hostmodel
from tests.support.agent_proc import SHIM, Running, cleanup_node, kill_agent, start_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.oracle import run
from tests.support.traffic import ping_ok

pytestmark = [pytest.mark.root, pytest.mark.e2e]

NET1, NET2 = "10.251.80.0/24", "10.251.81.0/24"

# Sends one ARP request for argv[2] out of argv[1] and prints the sender MAC
# of every reply seen within half a second (run inside the peer's netns).
ARP_PROBE = r"""
import socket, struct, sys, time, fcntl
ifname, target = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
info = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()))  # SIOCGIFADDR
sip = info[20:24]
tip = socket.inet_aton(target)
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, sip, b"\0" * 6, tip)
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
s.settimeout(0.1)
seen = set()
end = time.monotonic() + 0.5
while time.monotonic() < end:
    try:
        frame = s.recv(2048)
    except TimeoutError:
        continue
    op, sha, spa = struct.unpack("!H6s4s", frame[20:32])
    if op == 2 and spa == tip:
        seen.add(sha.hex(":"))
print("\n".join(sorted(seen)))
"""


def nad(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "name": name, "type": "nicwarden"})},
    }


def pod(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}, "uid": f"u-{name}"},
        "spec": {"nodeName": "sim", "containers": [{"name": "c", "image": "x"}]},
    }


DENY_NET1 = {
    "apiVersion": "k8s.cni.cncf.io/v1beta1",
    "kind": "MultiNetworkPolicy",
    "metadata": {
        "name": "deny-net1",
        "namespace": "prod",
        "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net-a"},
    },
    "spec": {"podSelector": {"matchLabels": {"app": "target"}}, "policyTypes": ["Ingress"]},
}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
        nad("net-a"),
        nad("net-b"),
        pod("target", "target"),
        pod("peer", "peer"),
        DENY_NET1,
    ]
    (manifests / "world.yaml").write_text(yaml.safe_dump_all(docs))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"manifestsDir": str(manifests)}))
    r = start_agent(tmp_path, "--config", str(cfg), spec="1x4")
    try:
        yield r
    finally:
        kill_agent(r)
        cleanup_node(r.prefix)


def attach(
    agent: Running, tmp: Path, pod_name: str, ns: str, vf: int, net: str, subnet: str, ifname: str
) -> dict[str, Any]:
    conf = {
        "cniVersion": "1.0.0",
        "name": net,
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": f"0000:18:01.{vf}",
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp / "ipam")},
    }
    out = invoke(
        SHIM,
        "ADD",
        conf,
        container=f"c-{pod_name}",
        netns=netns_path(ns),
        ifname=ifname,
        pod=pod_name,
        namespace="prod",
    )
    assert out.code == 0, out.stdout
    result: dict[str, Any] = out.json
    return result


def mac_of(ns: str, ifname: str) -> str:
    return str(json.loads(run("ip", "-n", ns, "-j", "link", "show", ifname).stdout)[0]["address"])


def arp_answers(ns: str, ifname: str, target: str) -> set[str]:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", ARP_PROBE, ifname, target],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(r.stdout.split())


def test_net2_does_not_answer_for_the_policed_net1_address(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    target_ns, peer_ns = netns(), netns()
    net1 = attach(agent, tmp_path, "target", target_ns, 0, "net-a", NET1, "net1")
    net2 = attach(agent, tmp_path, "target", target_ns, 1, "net-b", NET2, "net2")
    attach(agent, tmp_path, "peer", peer_ns, 2, "net-b", NET2, "net1")
    net1_ip = net1["ips"][0]["address"].split("/")[0]
    mac1, mac2 = mac_of(target_ns, "net1"), mac_of(target_ns, "net2")

    # The policy is in force on net1 (deny all ingress).
    def isolated() -> bool:
        rows = agent.ctl_json("policies").get("interfaces", [])
        assert isinstance(rows, list)
        return any(r["ifname"] == "net1" and r.get("ingress_isolated") for r in rows)

    for _ in range(100):
        if isolated():
            break
        run("sleep", "0.1")
    assert isolated()

    # The peer, on net2's subnet, routes net1's subnet out of its interface.
    run("ip", "-n", peer_ns, "route", "add", NET1, "dev", "net1")
    answers = arp_answers(peer_ns, "net1", net1_ip)
    assert mac2 not in answers, "net2 answers ARP for the net1 address (weak host model)"
    assert answers <= {mac1}
    # Whatever MAC answered, traffic to the net1 address meets net1's policy.
    for mac in answers:
        run("ip", "-n", peer_ns, "neigh", "replace", net1_ip, "lladdr", mac, "dev", "net1")
        assert not ping_ok(peer_ns, net1_ip)
    # A peer that forges its neighbour entry still meets a closed door:
    # the net1 address is delivered only to packets that came in on net1.
    run("ip", "-n", peer_ns, "neigh", "replace", net1_ip, "lladdr", mac2, "dev", "net1")
    assert not ping_ok(peer_ns, net1_ip), "the net1 address is reachable through net2"
    # net2 itself (no policy) still answers on its own address.
    assert ping_ok(peer_ns, net2["ips"][0]["address"].split("/")[0])
    # Resolved by the kernel itself: never to net2's MAC.
    run("ip", "-n", peer_ns, "neigh", "del", net1_ip, "dev", "net1")
    assert not ping_ok(peer_ns, net1_ip)
    neigh = run("ip", "-n", peer_ns, "neigh", "show", net1_ip).stdout
    assert mac2 not in neigh, neigh
    # How: the strict host model on both of the pod's interfaces.
    for ifname in ("net1", "net2"):
        conf = f"/proc/sys/net/ipv4/conf/{ifname}"
        for key, want in (("arp_ignore", "1"), ("arp_announce", "2")):
            got = run("ip", "netns", "exec", target_ns, "cat", f"{conf}/{key}").stdout.strip()
            assert got == want, f"{key} on {ifname}"
    rules = hostmodel.delivery_rules(netns_path(target_ns))
    assert (hostmodel.DROP_PREF, "", net1_ip) in rules
    assert (hostmodel.ALLOW_PREF, "net1", net1_ip) in rules
