"""A policy past the datapath's limits fails closed in the kernel for the pod
it selects, while another pod's policy keeps being enforced: real compile and
lowering, real pinned maps, real traffic between network namespaces."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.policy import Action, Event, PolicedInterface, PolicyEngine
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection
from tests.integration.test_bpf_datapath import Pair, loaded_datapath, make_pair
from tests.support.policy_objects import pod, policy
from tests.support.traffic import Servers, tcp_ok

pytestmark = pytest.mark.root

NET = "prod/net"
DB_IP, DB_CLIENT, DB_STRANGER = "10.77.0.1", "10.77.0.2", "10.77.0.3"
WEB_IP, WEB_CLIENT, WEB_STRANGER = "10.78.0.1", "10.78.0.2", "10.78.0.3"


def from_clients(app: str) -> dict[str, Any]:
    return policy(
        f"{app}-from-clients",
        {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        },
    )


# 65 distinct port sets: one more traffic class than a u64 mask has bits.
TOO_MANY_CLASSES = policy(
    "db-many-ports",
    {
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 20000 + i}]}
            for i in range(65)
        ],
    },
)


@pytest.fixture(scope="module")
def datapath() -> Iterator[PolicyDatapath]:
    with loaded_datapath("ol") as dp:
        yield dp


@pytest.fixture
def pairs(netns: Callable[[], str]) -> tuple[Pair, Pair]:
    return make_pair(netns), make_pair(netns, "10.78.0", "fd78")


def target(name: str, ip: str) -> PolicedInterface:
    return PolicedInterface("prod", name, "nws0", NET, (ipaddress.ip_address(ip),), f"u-{name}")


def test_over_limit_policy_denies_its_pod_and_spares_the_other(
    datapath: PolicyDatapath, pairs: tuple[Pair, Pair]
) -> None:
    db_pair, web_pair = pairs
    engine = PolicyEngine()
    db, web = target("db", DB_IP), target("web", WEB_IP)
    engine.set_targets([db, web])
    for obj in (
        {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "prod"}},
        pod("db", {"app": "db"}, DB_IP),
        pod("web", {"app": "web"}, WEB_IP),
        pod("db-client", {"role": "client"}, DB_CLIENT),
        pod("web-client", {"role": "client"}, WEB_CLIENT),
        from_clients("db"),
        from_clients("web"),
    ):
        engine.apply(Event(Action.ADD, obj))

    keys: dict[str, IfaceKey] = {}
    servers: list[Servers] = []
    try:
        for name, pair in (("db", db_pair), ("web", web_pair)):
            keys[name] = datapath.attach(pair.server, pair.srv_if)
            servers.append(Servers(pair.server, tcp=(8080, 20000)))

        def load() -> None:
            for name, t in (("db", db), ("web", web)):
                lowered = engine.lowered(t.key)
                assert lowered is not None
                datapath.apply(keys[name], Direction.INGRESS, lowered.ingress)
                datapath.apply(keys[name], Direction.EGRESS, lowered.egress)

        load()
        assert tcp_ok(db_pair.client, DB_IP, 8080, src=DB_CLIENT)
        assert not tcp_ok(db_pair.client, DB_IP, 8080, src=DB_STRANGER)

        engine.apply(Event(Action.ADD, TOO_MANY_CLASSES))
        load()
        # db: isolated with no allowed entry, in the kernel as in the engine.
        assert datapath.read_back(keys["db"], Direction.INGRESS) == LoweredDirection(True)
        assert not tcp_ok(db_pair.client, DB_IP, 8080, src=DB_CLIENT)
        # Neither the old table nor the new policy's rules: it allowed 20000.
        assert not tcp_ok(db_pair.client, DB_IP, 20000, src=DB_CLIENT)
        status = engine.policy_status("prod/db-many-ports")
        assert status is not None and not status.ok
        assert "exceed the datapath's 64 classes" in status.errors[0]
        # web: its own policy still enforced, both ways.
        assert tcp_ok(web_pair.client, WEB_IP, 8080, src=WEB_CLIENT)
        assert not tcp_ok(web_pair.client, WEB_IP, 8080, src=WEB_STRANGER)
        web_status = engine.policy_status("prod/web-from-clients")
        assert web_status is not None and web_status.ok

        engine.apply(Event(Action.DELETE, TOO_MANY_CLASSES))
        load()
        assert tcp_ok(db_pair.client, DB_IP, 8080, src=DB_CLIENT)
        assert not tcp_ok(db_pair.client, DB_IP, 8080, src=DB_STRANGER)
    finally:
        for s in servers:
            s.close()
        for key in keys.values():
            datapath.detach(key)
