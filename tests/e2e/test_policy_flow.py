"""Issue 5 end to end: the installed agent on a simulated node, pods (netns)
attached through the installed shim, MultiNetworkPolicy manifests in a
watched directory, and real TCP/UDP/ICMP between the pods."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import SHIM, Running, cleanup_node, kill_agent, start_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.oracle import run
from tests.support.traffic import Servers, ping_ok, tcp_ok, udp_ok

pytestmark = [pytest.mark.root, pytest.mark.e2e]


@dataclass
class PodNet:
    name: str
    namespace: str
    netns: str
    ip: str


class Cluster:
    """Manifests directory + pods attached through the shim."""

    def __init__(self, agent: Running, tmp: Path, manifests: Path) -> None:
        self.agent, self.tmp, self.manifests = agent, tmp, manifests
        self.pods: dict[str, PodNet] = {}

    def write(self, name: str, *docs: dict[str, Any]) -> None:
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(docs))
        os.replace(tmp, self.manifests / f"{name}.yaml")

    def remove(self, name: str) -> None:
        (self.manifests / f"{name}.yaml").unlink()

    def pod(
        self,
        name: str,
        ns: str,
        labels: dict[str, str],
        vf: str,
        netns: str,
        ports: list[dict[str, Any]] | None = None,
    ) -> PodNet:
        self.write(
            f"pod-{ns}-{name}",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"},
                "spec": {
                    "nodeName": "sim",
                    "containers": [{"name": "c", "image": "x", "ports": ports or []}],
                },
            },
        )
        conf = {
            "cniVersion": "1.0.0",
            "name": "sriov-net",
            "type": "nicwarden",
            "agentSocket": str(self.agent.cni_sock),
            "deviceID": vf,
            "ipam": {
                "type": "host-local",
                "subnet": "10.56.0.0/24",
                "dataDir": str(self.tmp / "ipam"),
            },
        }
        out = invoke(
            SHIM,
            "ADD",
            conf,
            container=f"c-{name}",
            netns=netns_path(netns),
            ifname="net1",
            pod=name,
            namespace=ns,
        )
        assert out.code == 0, out.stdout
        ip = out.json["ips"][0]["address"].split("/")[0]
        self.pods[name] = PodNet(name, ns, netns, ip)
        return self.pods[name]

    def policies(self) -> dict[str, Any]:
        return self.agent.ctl_json("policies")


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def nad(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "name": name, "type": "nicwarden"})},
    }


def mnp(name: str, ns: str, spec: dict[str, Any], networks: str = "sriov-net") -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": networks},
        },
        "spec": spec,
    }


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> float:
    """Seconds until ``check()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path, netns: Callable[[], str]) -> Iterator[Cluster]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"manifestsDir": str(manifests)}))
    agent = start_agent(tmp_path, "--config", str(cfg), spec="1x4", persistent=True)
    c = Cluster(agent, tmp_path, manifests)
    c.write(
        "base", namespace("prod", env="prod"), namespace("dev", env="dev"), nad("prod", "sriov-net")
    )
    nss = [netns() for _ in range(4)]
    c.pod(
        "db",
        "prod",
        {"app": "db"},
        "0000:18:01.0",
        nss[0],
        ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
    )
    c.pod("web", "prod", {"app": "web"}, "0000:18:01.1", nss[1])
    c.pod("other", "prod", {"app": "other"}, "0000:18:01.2", nss[2])
    c.pod("devweb", "dev", {"app": "web"}, "0000:18:01.3", nss[3])
    try:
        yield c
    finally:
        kill_agent(c.agent)
        cleanup_node(c.agent.prefix)


def test_policy_enforced_updated_and_survives_restart(cluster: Cluster) -> None:
    db, web, other, devweb = (cluster.pods[n] for n in ("db", "web", "other", "devweb"))
    servers = Servers(db.netns, tcp=(8080, 9090), udp=(5353,))
    try:
        # No policy: everything flows and nothing is attached (zero overhead).
        assert tcp_ok(web.netns, db.ip, 8080) and tcp_ok(other.netns, db.ip, 9090)
        assert ping_ok(other.netns, db.ip)
        assert run("tc", "-n", db.netns, "filter", "show", "dev", "net1", "ingress").stdout == ""

        # Ingress to db only from app=web pods of its own namespace, on the named port.
        cluster.write(
            "policy",
            mnp(
                "db-in",
                "prod",
                {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"protocol": "TCP", "port": "http"}],
                        }
                    ],
                },
            ),
        )
        took = eventually(lambda: not tcp_ok(other.netns, db.ip, 8080))
        assert took < 1.5
        assert tcp_ok(web.netns, db.ip, 8080)  # allowed peer + named port
        assert not tcp_ok(web.netns, db.ip, 9090)  # port not allowed
        assert not tcp_ok(devweb.netns, db.ip, 8080)  # podSelector is namespace-scoped
        assert not udp_ok(web.netns, db.ip, 5353)
        assert not ping_ok(web.netns, db.ip)  # ports given: ICMP not allowed
        assert tcp_ok(db.netns, other.ip, 1) is False  # egress not isolated (no server)
        assert ping_ok(db.netns, other.ip)  # db's egress is open; replies pass

        pol = cluster.policies()
        (row,) = [i for i in pol["interfaces"] if i["pod"] == "prod/db"]
        assert row["ingress_isolated"] and not row.get("egress_isolated", False)
        assert row["policies"] == ["prod/db-in"]
        assert int(row["counters"].get("ingress_drop_policy", 0)) > 0
        assert int(row["counters"].get("ingress_pass_policy", 0)) > 0
        assert "db-in" in cluster.agent.ctl("policies").stdout

        # Peers that change update enforcement without restarts.
        cluster.write(
            "pod-prod-other",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "other",
                    "namespace": "prod",
                    "labels": {"app": "web"},
                    "uid": "uid-other",
                },
                "spec": {"nodeName": "sim", "containers": [{"name": "c", "image": "x"}]},
            },
        )
        eventually(lambda: tcp_ok(other.netns, db.ip, 8080))

        # namespaceSelector peer admits devweb.
        cluster.write(
            "policy",
            mnp(
                "db-in",
                "prod",
                {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}]}],
                },
            ),
        )
        eventually(lambda: tcp_ok(devweb.netns, db.ip, 9090))
        assert not tcp_ok(web.netns, db.ip, 8080)

        # Agent killed: pinned programs keep enforcing while it is down…
        kill_agent(cluster.agent)
        assert not tcp_ok(web.netns, db.ip, 8080)
        assert tcp_ok(devweb.netns, db.ip, 9090)
        # …and a restart adopts them: still enforced, same tables.
        tmp = cluster.tmp
        cluster.agent = start_agent(
            tmp,
            "--config",
            str(tmp / "config.yaml"),
            spec="1x4",
            prefix=cluster.agent.prefix,
            persistent=True,
        )
        assert not tcp_ok(web.netns, db.ip, 8080)
        assert tcp_ok(devweb.netns, db.ip, 9090)
        eventually(
            lambda: any(
                i["pod"] == "prod/db" and i["ingress_isolated"]
                for i in cluster.policies()["interfaces"]
            )
        )

        # Deleting the policy opens everything again.
        cluster.remove("policy")
        eventually(lambda: tcp_ok(web.netns, db.ip, 8080))
        assert ping_ok(other.netns, db.ip)
    finally:
        servers.close()


def test_egress_policy_with_ipblock_except_and_bad_objects(cluster: Cluster) -> None:
    db, web, other = (cluster.pods[n] for n in ("db", "web", "other"))
    servers = {n: Servers(cluster.pods[n].netns, tcp=(80,)) for n in ("db", "other")}
    try:
        # web may reach 10.56.0.0/24 except other's address.
        cluster.write(
            "policy",
            mnp(
                "web-out",
                "prod",
                {
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {
                            "to": [
                                {"ipBlock": {"cidr": "10.56.0.0/24", "except": [f"{other.ip}/32"]}}
                            ]
                        }
                    ],
                },
            ),
        )
        eventually(lambda: not tcp_ok(web.netns, other.ip, 80))
        assert tcp_ok(web.netns, db.ip, 80)
        assert tcp_ok(other.netns, web.ip, 1) is False  # web's ingress is not isolated

        # A broken policy is reported and fails closed for what it selects,
        # while the valid one keeps working.
        cluster.write(
            "broken",
            mnp(
                "bad",
                "prod",
                {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}],
                },
            ),
        )
        cluster.write("garbage", {"kind": "Nonsense", "metadata": {"name": "x"}})
        eventually(lambda: not tcp_ok(other.netns, db.ip, 80))
        objs = cluster.policies()["objects"]
        bad = [o for o in objs if o["key"] == "prod/bad"]
        assert bad and not bad[0]["ok"] and "10.0.0.1/8" in " ".join(bad[0]["errors"])
        assert any("garbage" in o["key"] for o in objs if not o["ok"])
        assert tcp_ok(web.netns, db.ip, 80) is False  # db's ingress fails closed
        assert not tcp_ok(web.netns, other.ip, 80)  # web-out still enforced
    finally:
        for s in servers.values():
            s.close()


def test_detach_removes_enforcement(cluster: Cluster) -> None:
    db = cluster.pods["db"]
    cluster.write("policy", mnp("deny", "prod", {"podSelector": {}}))
    eventually(
        lambda: run("tc", "-n", db.netns, "filter", "show", "dev", "net1", "ingress").stdout != ""
    )
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": str(cluster.agent.cni_sock),
        "deviceID": "0000:18:01.0",
        "ipam": {
            "type": "host-local",
            "subnet": "10.56.0.0/24",
            "dataDir": str(cluster.tmp / "ipam"),
        },
    }
    out = invoke(SHIM, "DEL", conf, container="c-db", netns=netns_path(db.netns), ifname="net1")
    assert out.code == 0
    assert all(i["pod"] != "prod/db" for i in cluster.policies()["interfaces"])
    # The VF is home, with no filter left on it.
    vf = f"{cluster.agent.prefix}0v0"
    assert run("tc", "filter", "show", "dev", vf, "ingress").stdout == ""


@pytest.mark.parametrize("plugin", ["macvlan", "bridge"])
def test_policy_on_chained_interfaces(
    cluster: Cluster, netns: Callable[[], str], plugin: str
) -> None:
    """Policy-only mode: another plugin makes the interface, we police it."""
    bridge = f"nwbr{cluster.agent.prefix}"[:15]
    first: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "chainnet",
        "type": plugin,
        "ipam": {
            "type": "host-local",
            "subnet": "10.89.0.0/24",
            "dataDir": str(cluster.tmp / "ipam-chain"),
        },
    }
    if plugin == "macvlan":
        first.update(master=f"{cluster.agent.prefix}0", mode="bridge")
    else:
        first.update(bridge=bridge)
    ours = {
        "cniVersion": "1.0.0",
        "name": "chainnet",
        "type": "nicwarden",
        "agentSocket": str(cluster.agent.cni_sock),
    }
    cluster.write("chain-nad", nad("prod", "chainnet"))
    ips: dict[str, str] = {}
    spaces: dict[str, str] = {}
    try:
        for name, app in (("csrv", "csrv"), ("cok", "cok"), ("cbad", "cbad")):
            ns = netns()
            spaces[name] = ns
            cluster.write(
                f"pod-prod-{name}",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": "prod",
                        "labels": {"app": app},
                        "uid": f"uid-{name}",
                    },
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            )
            kw = dict(
                container=f"c-{name}",
                netns=netns_path(ns),
                ifname="net2",
                pod=name,
                namespace="prod",
            )
            res = invoke(f"/usr/lib/cni/{plugin}", "ADD", first, **kw)
            assert res.code == 0, res.stdout
            out = invoke(SHIM, "ADD", dict(ours, prevResult=res.json), **kw)
            assert out.code == 0, out.stdout
            ips[name] = res.json["ips"][0]["address"].split("/")[0]
        srv = Servers(spaces["csrv"], tcp=(7000,))
        try:
            assert tcp_ok(spaces["cbad"], ips["csrv"], 7000)
            cluster.write(
                "chain-policy",
                mnp(
                    "csrv-in",
                    "prod",
                    {
                        "podSelector": {"matchLabels": {"app": "csrv"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cok"}}}]}],
                    },
                    networks="chainnet",
                ),
            )
            eventually(lambda: not tcp_ok(spaces["cbad"], ips["csrv"], 7000))
            assert tcp_ok(spaces["cok"], ips["csrv"], 7000)
            # The VF network (sriov-net) is not selected: db stays open to everyone.
            assert not any(
                i["pod"] == "prod/db" and i["ingress_isolated"]
                for i in cluster.policies()["interfaces"]
            )
        finally:
            srv.close()
    finally:
        for name, ns in spaces.items():
            kw = dict(
                container=f"c-{name}",
                netns=netns_path(ns),
                ifname="net2",
                pod=name,
                namespace="prod",
            )
            invoke(SHIM, "DEL", ours, **kw)
            invoke(f"/usr/lib/cni/{plugin}", "DEL", first, **kw)
        if plugin == "bridge":
            run("ip", "link", "del", bridge, check=False)
