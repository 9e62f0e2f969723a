"""Builders shared by the policy tests (imported as a module; no tests here).

Every verdict check goes through ``allowed``, which evaluates the packet on the
semantic table AND on its lowered form and asserts they agree, so every
semantic test is also a lowering test.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from nicwarden.agent.policy import (
    ClusterState,
    CompileOptions,
    DirectionTable,
    InterfaceTables,
    PolicedInterface,
    compile_interface,
    evaluate,
    lookup,
    lower,
    parse_object,
)

TCP, UDP, SCTP, ICMP, ICMPV6, GRE = 6, 17, 132, 1, 58, 47


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    ns: str,
    name: str,
    labels: dict[str, str] | None = None,
    nets: list[tuple[str, list[str]]] | None = None,
    ports: list[tuple[str, int, str]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """``nets``: [(network key, [ips])] written as Multus's network-status."""
    status = [
        {"name": "cbr0", "interface": "eth0", "ips": ["192.168.0.9"], "default": True, "dns": {}}
    ]
    status += [
        {
            "name": net,
            "interface": f"net{i + 1}",
            "ips": ips,
            "mac": f"02:00:00:00:00:{i:02x}",
            "dns": {},
        }
        for i, (net, ips) in enumerate(nets or [])
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": ns,
            "name": name,
            "uid": f"uid-{ns}-{name}",
            "labels": labels or {},
            "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "main",
                    "ports": [
                        {"name": n, "containerPort": p, "protocol": proto}
                        for n, p, proto in (ports or [])
                    ],
                }
            ],
        },
        "status": {"phase": phase},
    }


def nad(ns: str, name: str) -> dict[str, Any]:
    config = {"cniVersion": "1.0.0", "type": "nicwarden", "ipam": {"type": "host-local"}}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"config": json.dumps(config)},
    }


def mnp(
    spec: dict[str, Any],
    name: str = "p",
    ns: str = "prod",
    policy_for: str | None = "net-a",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name}
    if policy_for is not None:
        meta["annotations"] = {"k8s.v1.cni.cncf.io/policy-for": policy_for}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": meta,
        "spec": spec,
    }


def ipb(cidr: str, *excepts: str) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": cidr}
    if excepts:
        block["except"] = list(excepts)
    return {"ipBlock": block}


def world() -> list[dict[str, Any]]:
    """The cluster most compile tests run in. Target: prod/server on prod/net-a."""
    return [
        namespace("prod", env="prod", team="a"),
        namespace("dev", env="dev", team="b"),
        namespace("other"),
        nad("prod", "net-a"),
        nad("prod", "net-b"),
        pod(
            "prod",
            "server",
            {"app": "server", "tier": "backend"},
            [("prod/net-a", ["10.1.0.10", "fd00:a::10"]), ("prod/net-b", ["10.2.0.10"])],
            [("http", 8080, "TCP"), ("dns", 53, "UDP"), ("diameter", 3868, "SCTP")],
        ),
        pod(
            "prod",
            "client",
            {"app": "client", "tier": "frontend"},
            [("prod/net-a", ["10.1.0.20", "fd00:a::20"]), ("prod/net-b", ["10.2.0.20"])],
        ),
        pod("prod", "other-client", {"app": "other"}, [("prod/net-a", ["10.1.0.21"])]),
        pod("dev", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.30"])]),
        pod("other", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.40"])]),
        pod("prod", "bnet-only", {"app": "client"}, [("prod/net-b", ["10.2.0.50"])]),
        pod("prod", "no-status", {"app": "client"}),
        pod("prod", "web", {"app": "web"}, [("prod/net-a", ["10.1.0.60"])], [("http", 80, "TCP")]),
        pod("dev", "web", {"app": "web"}, [("prod/net-a", ["10.1.0.61"])], [("http", 8000, "TCP")]),
        pod(
            "prod",
            "finished",
            {"app": "client"},
            [("prod/net-a", ["10.1.0.70"])],
            phase="Succeeded",
        ),
    ]


SERVER_NET_A = PolicedInterface(
    "prod", "server", "net1", "prod/net-a", (ipaddress.ip_address("10.1.0.10"),), "uid-prod-server"
)
SERVER_NET_B = PolicedInterface("prod", "server", "net2", "prod/net-b", (), "uid-prod-server")


def state_of(objs: list[dict[str, Any]]) -> ClusterState:
    return ClusterState(parse_object(o) for o in objs)


def compile_for(
    policies: list[dict[str, Any]],
    target: PolicedInterface = SERVER_NET_A,
    options: CompileOptions | None = None,
    base: list[dict[str, Any]] | None = None,
) -> InterfaceTables:
    objs = (world() if base is None else base) + policies
    return compile_interface(state_of(objs), target, options or CompileOptions())


def allowed(table: DirectionTable, ip: str, proto: int = TCP, dport: int = 80) -> bool:
    """Verdict on the semantic form, asserted equal to the lowered form's."""
    family = ipaddress.ip_address(ip).version
    semantic = evaluate(table, family, ip, proto, dport)
    lowered = lookup(lower(table), family, ip, proto, dport)
    assert semantic == lowered, f"semantic {semantic} != lowered {lowered} for {ip} {proto}/{dport}"
    return semantic
