"""The compiler's lowered tables and the kernel maps agree: compile real
policies, load them through the datapath, read the maps back."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.policy import Action, Event, LoweredTable, PolicedInterface, PolicyEngine
from nicwarden.bpf.layout import Direction, LoweredDirection
from tests.support.oracle import run

pytestmark = pytest.mark.root


def pod(
    name: str, ns: str, labels: dict[str, str], ip: str, ports: list[Any] | None = None
) -> dict[str, Any]:
    status = [{"name": "prod/net", "interface": "net1", "ips": [ip]}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "uid": f"u-{name}",
            "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)},
        },
        "spec": {"containers": [{"name": "c", "ports": ports or []}]},
    }


POLICIES = [
    {
        "podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [
            {
                "from": [
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.0/24"]}},
                    {"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:1::/32"]}},
                ],
                "ports": [
                    {"protocol": "TCP", "port": 8000, "endPort": 8100},
                    {"protocol": "UDP", "port": "dns"},
                ],
            },
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "app", "operator": "In", "values": ["web", "api"]}
                            ]
                        }
                    }
                ],
                "ports": [{"protocol": "SCTP"}],
            },
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]},
        ],
        "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}], "ports": [{"port": 443}]}],
    },
]


@pytest.fixture
def datapath() -> Iterator[PolicyDatapath]:
    dp = PolicyDatapath(f"agree-{uuid.uuid4().hex[:8]}")
    dp.load()
    try:
        yield dp
    finally:
        dp.cleanup(force=True)


def test_compiled_tables_equal_kernel_maps(
    datapath: PolicyDatapath, netns: Callable[[], str]
) -> None:
    ns = netns()
    run("ip", "-n", ns, "link", "add", "net1", "type", "veth", "peer", "name", "p1")
    engine = PolicyEngine()
    for obj in (
        {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "prod"}},
        {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {"name": "ops", "labels": {"team": "ops"}},
        },
        pod(
            "db",
            "prod",
            {"app": "db"},
            "10.56.0.2",
            [{"name": "dns", "containerPort": 53, "protocol": "UDP"}],
        ),
        pod("web", "prod", {"app": "web"}, "10.56.0.3"),
        pod("api", "prod", {"app": "api"}, "fd56::3"),
        pod("tool", "ops", {"x": "y"}, "10.57.0.9"),
        *[
            {
                "kind": "MultiNetworkPolicy",
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "metadata": {
                    "name": f"p{i}",
                    "namespace": "prod",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net"},
                },
                "spec": spec,
            }
            for i, spec in enumerate(POLICIES)
        ],
    ):
        engine.apply(Event(Action.ADD, obj))
    target = PolicedInterface(
        "prod", "db", "net1", "prod/net", (ipaddress.ip_address("10.56.0.2"),), "u-db"
    )
    engine.set_targets([target])
    lowered = engine.lowered(target.key)
    assert lowered is not None and lowered.ingress.isolated and lowered.egress.isolated
    assert len(lowered.ingress.peers) > 5 and len(lowered.ingress.ports) > 5

    iface = datapath.attach(f"/var/run/netns/{ns}", "net1")
    for direction, table in (
        (Direction.INGRESS, lowered.ingress),
        (Direction.EGRESS, lowered.egress),
    ):
        datapath.apply(iface, direction, table)
        assert datapath.read_back(iface, direction) == LoweredDirection.of(table)
    # After a change the active generation holds exactly the new tables.
    engine.apply(
        Event(
            Action.DELETE,
            {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "prod"}},
        )
    )
    changed = engine.lowered(target.key)
    assert changed is not None and changed.ingress != lowered.ingress
    datapath.apply(iface, Direction.INGRESS, changed.ingress)
    assert datapath.read_back(iface, Direction.INGRESS) == LoweredDirection.of(changed.ingress)
    assert isinstance(changed.ingress, LoweredTable)
    datapath.detach(iface)
