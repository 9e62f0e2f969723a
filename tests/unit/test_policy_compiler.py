"""Kubernetes NetworkPolicy semantics applied per network, rule by rule, with
allow AND deny packets. Every verdict is checked on the semantic table and on
its lowered form (``allowed`` asserts they agree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from test_policy_helpers import (
    GRE,
    ICMP,
    ICMPV6,
    SCTP,
    SERVER_NET_A,
    SERVER_NET_B,
    TCP,
    UDP,
    allowed,
    compile_for,
    ipb,
    mnp,
    pod,
    world,
)

from nicwarden.agent.policy import ALL, CompileOptions, PolicedInterface, PortRange

ALL_PODS: dict[str, Any] = {"podSelector": {}}
# Peer IPs on prod/net-a (see test_policy_helpers.world).
SERVER, CLIENT, OTHER, DEV_CLIENT, OTHER_CLIENT = (
    "10.1.0.10",
    "10.1.0.20",
    "10.1.0.21",
    "10.1.0.30",
    "10.1.0.40",
)
WEB, DEV_WEB, FINISHED, OUTSIDE = "10.1.0.60", "10.1.0.61", "10.1.0.70", "192.0.2.1"
CLIENT_NET_B, BNET_ONLY, CLIENT6 = "10.2.0.20", "10.2.0.50", "fd00:a::20"

Packet = tuple[str, int, int, bool]  # (peer ip, protocol, dport, expected verdict)


def tcp(ip: str, port: int, ok: bool) -> Packet:
    return (ip, TCP, port, ok)


def ingress(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": list(rules), **extra}


def egress(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"podSelector": {}, "egress": list(rules), **extra}


def from_(*peers: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": list(peers)}
    if ports is not None:
        rule["ports"] = ports
    return rule


def to(*peers: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": list(peers)}
    if ports is not None:
        rule["ports"] = ports
    return rule


def pods(**labels: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": labels}}


def nss(**labels: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": labels}}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    e: dict[str, Any] = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return {"podSelector": {"matchExpressions": [e]}}


@dataclass
class Case:
    id: str
    policies: list[dict[str, Any]]
    isolated: tuple[bool, bool]  # (ingress, egress)
    ingress: list[Packet] = field(default_factory=list)
    egress: list[Packet] = field(default_factory=list)
    options: CompileOptions = field(default_factory=CompileOptions)
    target: PolicedInterface = SERVER_NET_A


CASES = [
    # --- isolation and policyTypes defaulting -------------------------------------------
    Case("no-policy", [], (False, False), [tcp(OUTSIDE, 1, True)], [tcp(OUTSIDE, 1, True)]),
    Case(
        "default-types-ingress-only",
        [mnp(ingress(from_(pods(app="client"))))],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(OTHER, 80, False)],
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "default-types-with-egress-rules",
        [mnp(egress(to(ipb("10.1.0.0/16"))))],
        (True, True),
        [tcp(CLIENT, 80, False)],  # Ingress implied, no ingress rules: deny all
        [tcp("10.1.9.9", 80, True), tcp(OUTSIDE, 80, False)],
    ),
    Case(
        "egress-empty-list-does-not-imply-egress",
        [mnp({"podSelector": {}, "egress": []})],
        (True, False),
        [tcp(CLIENT, 80, False)],
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "explicit-types-honoured",
        [mnp(ingress({}, policyTypes=["Egress"]))],
        (False, True),
        [tcp(OUTSIDE, 80, True)],
        [tcp(CLIENT, 80, False)],
    ),
    Case(
        "empty-policytypes-defaults",
        [mnp(ingress({}, policyTypes=[]))],
        (True, False),
        [tcp(OUTSIDE, 80, True)],
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "egress-only-policy-does-not-isolate-ingress",
        [mnp(egress(to(pods(app="web")), policyTypes=["Egress"]))],
        (False, True),
        [tcp(OUTSIDE, 22, True)],
        [tcp(WEB, 80, True), tcp(CLIENT, 80, False)],
    ),
    Case(
        "deny-all-both",
        [mnp({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
        (True, True),
        [tcp(CLIENT, 80, False), (CLIENT, ICMP, 0, False)],
        [tcp(CLIENT, 80, False)],
    ),
    # --- OR across policies and rules ----------------------------------------------------
    Case(
        "two-policies-or",
        [
            mnp(ingress(from_(pods(app="client"))), name="a"),
            mnp(ingress(from_(pods(app="other"))), name="b"),
        ],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(OTHER, 80, True), tcp(DEV_CLIENT, 80, False)],
    ),
    Case(
        "rules-or",
        [
            mnp(
                ingress(
                    from_(pods(app="client"), ports=[{"port": 80}]),
                    from_(pods(app="other"), ports=[{"port": 443}]),
                )
            )
        ],
        (True, False),
        [
            tcp(CLIENT, 80, True),
            tcp(CLIENT, 443, False),
            tcp(OTHER, 443, True),
            tcp(OTHER, 80, False),
        ],
    ),
    Case(
        "peers-or-ports-or-inside-rule",
        [
            mnp(
                ingress(
                    from_(
                        pods(app="client"),
                        pods(app="other"),
                        ports=[{"port": 80}, {"port": 443}],
                    )
                )
            )
        ],
        (True, False),
        [tcp(CLIENT, 443, True), tcp(OTHER, 80, True), tcp(OTHER, 22, False), tcp(WEB, 80, False)],
    ),
    # --- empty vs missing ----------------------------------------------------------------
    Case(
        "ingress-empty-list-denies",
        [mnp({"podSelector": {}, "ingress": [], "policyTypes": ["Ingress"]})],
        (True, False),
        [tcp(CLIENT, 80, False), (CLIENT, ICMP, 0, False)],
    ),
    Case(
        "rule-empty-object-allows-all",
        [mnp(ingress({}))],
        (True, False),
        [
            tcp(OUTSIDE, 1, True),
            (OUTSIDE, UDP, 53, True),
            (OUTSIDE, ICMP, 0, True),
            ("2001:db8::1", GRE, 0, True),
        ],
    ),
    Case(
        "from-empty-list-is-all-peers",
        [mnp(ingress({"from": [], "ports": [{"port": 80}]}))],
        (True, False),
        [tcp(OUTSIDE, 80, True), tcp("2001:db8::1", 80, True), tcp(OUTSIDE, 81, False)],
    ),
    Case(
        "from-missing-is-all-peers",
        [mnp(ingress({"ports": [{"port": 80}]}))],
        (True, False),
        [tcp(OUTSIDE, 80, True), tcp(OUTSIDE, 81, False)],
    ),
    Case(
        "ports-empty-list-is-all-ports",
        [mnp(ingress({"from": [pods(app="client")], "ports": []}))],
        (True, False),
        [
            tcp(CLIENT, 1, True),
            (CLIENT, SCTP, 9, True),
            (CLIENT, ICMP, 0, True),
            tcp(OTHER, 1, False),
        ],
    ),
    Case(
        "egress-to-missing-is-all",
        [mnp(egress({"ports": [{"port": 53, "protocol": "UDP"}]}))],
        (True, True),
        [],
        [(OUTSIDE, UDP, 53, True), (OUTSIDE, TCP, 53, False), ("2001:db8::53", UDP, 53, True)],
    ),
    # --- peers and selectors -------------------------------------------------------------
    Case(
        "podselector-only-is-policy-namespace",
        [mnp(ingress(from_(pods(app="client"))))],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(DEV_CLIENT, 80, False), tcp(OTHER_CLIENT, 80, False)],
    ),
    Case(
        "empty-podselector-only-is-whole-policy-namespace",
        [mnp(ingress(from_(ALL_PODS)))],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(OTHER, 80, True), tcp(DEV_CLIENT, 80, False)],
    ),
    Case(
        "namespaceselector-only",
        [mnp(ingress(from_(nss(env="dev"))))],
        (True, False),
        [tcp(DEV_CLIENT, 80, True), tcp(DEV_WEB, 80, True), tcp(CLIENT, 80, False)],
    ),
    Case(
        "empty-namespaceselector-is-all-namespaces",
        [mnp(ingress(from_({"namespaceSelector": {}})))],
        (True, False),
        [
            tcp(CLIENT, 80, True),
            tcp(DEV_CLIENT, 80, True),
            tcp(OTHER_CLIENT, 80, True),
            tcp(OUTSIDE, 80, False),
        ],
    ),
    Case(
        "namespace-implicit-name-label",
        [
            mnp(
                ingress(
                    from_(
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "other"}
                            }
                        }
                    )
                )
            )
        ],
        (True, False),
        [tcp(OTHER_CLIENT, 80, True), tcp(DEV_CLIENT, 80, False)],
    ),
    Case(
        "both-selectors-intersect",
        [mnp(ingress(from_({**nss(env="dev"), **pods(app="client")})))],
        (True, False),
        [tcp(DEV_CLIENT, 80, True), tcp(DEV_WEB, 80, False), tcp(CLIENT, 80, False)],
    ),
    Case(
        "expr-in",
        [mnp(ingress(from_(expr("app", "In", "client", "web"))))],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(WEB, 80, True), tcp(OTHER, 80, False)],
    ),
    Case(
        "expr-notin-matches-missing-key",
        [mnp(ingress(from_(expr("tier", "NotIn", "frontend"))))],
        (True, False),
        # server (tier=backend), other/web (no tier) match; client (frontend) does not
        [tcp(SERVER, 80, True), tcp(OTHER, 80, True), tcp(WEB, 80, True), tcp(CLIENT, 80, False)],
    ),
    Case(
        "expr-exists",
        [mnp(ingress(from_(expr("tier", "Exists"))))],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(SERVER, 80, True), tcp(OTHER, 80, False)],
    ),
    Case(
        "expr-doesnotexist",
        [mnp(ingress(from_(expr("tier", "DoesNotExist"))))],
        (True, False),
        [tcp(OTHER, 80, True), tcp(WEB, 80, True), tcp(CLIENT, 80, False)],
    ),
    Case(
        "matchlabels-and-expressions-and",
        [
            mnp(
                ingress(
                    from_(
                        {
                            "podSelector": {
                                "matchLabels": {"app": "client"},
                                "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                            }
                        }
                    )
                )
            )
        ],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(OTHER, 80, False)],
    ),
    Case(
        "namespace-expressions",
        [
            mnp(
                ingress(
                    from_(
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": "team", "operator": "NotIn", "values": ["a"]}
                                ]
                            }
                        }
                    )
                )
            )
        ],
        (True, False),
        [tcp(DEV_CLIENT, 80, True), tcp(OTHER_CLIENT, 80, True), tcp(CLIENT, 80, False)],
    ),
    Case(
        "selector-matching-nothing",
        [mnp(ingress(from_(pods(app="nope")), from_(nss(env="nope"))))],
        (True, False),
        [tcp(CLIENT, 80, False), tcp(DEV_CLIENT, 80, False)],
    ),
    Case(
        "pods-without-status-or-finished-contribute-nothing",
        [mnp(ingress(from_(pods(app="client"))))],
        (True, False),
        [tcp(FINISHED, 80, False), tcp("192.168.0.9", 80, False)],  # 192.168.0.9 = default net IP
    ),
    # --- ipBlock -------------------------------------------------------------------------
    Case(
        "ipblock-except-narrows-only-its-own-block",
        [
            mnp(
                ingress(
                    from_(ipb("10.0.0.0/8", "10.1.0.0/16")),
                    from_(ipb("10.1.2.0/24")),
                )
            )
        ],
        (True, False),
        [
            tcp("10.1.2.3", 80, True),
            tcp("10.1.3.3", 80, False),
            tcp("10.9.9.9", 80, True),
            tcp("11.0.0.1", 80, False),
        ],
    ),
    Case(
        "ipblock-except-across-policies",
        [
            mnp(ingress(from_(ipb("10.0.0.0/8", "10.1.0.0/16"))), name="a"),
            mnp(ingress(from_(ipb("10.1.0.0/16"), ports=[{"port": 22}])), name="b"),
        ],
        (True, False),
        [tcp("10.1.0.1", 22, True), tcp("10.1.0.1", 80, False), tcp("10.2.0.1", 80, True)],
    ),
    Case(
        "ipblock-nested-excepts-and-peer-pod-inside-except",
        [
            mnp(
                ingress(
                    from_(ipb("10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/24", "10.3.0.0/16")),
                    from_(pods(app="client")),
                )
            )
        ],
        (True, False),
        [
            tcp(CLIENT, 80, True),
            tcp(OTHER, 80, False),
            tcp("10.3.1.1", 80, False),
            tcp("10.4.1.1", 80, True),
        ],
    ),
    Case(
        "ipblock-ipv6",
        [mnp(ingress(from_(ipb("fd00::/16", "fd00:1::/32"))))],
        (True, False),
        [
            tcp("fd00:2::1", 80, True),
            tcp("fd00:1::5", 80, False),
            tcp("fe80::1", 80, False),
            tcp("10.0.0.1", 80, False),
        ],
    ),
    Case(
        "ipblock-host-routes-and-zero",
        [mnp(ingress(from_(ipb("0.0.0.0/0", "203.0.113.7/32"), ipb("2001:db8::1/128"))))],
        (True, False),
        [
            tcp("203.0.113.8", 80, True),
            tcp("203.0.113.7", 80, False),
            tcp("2001:db8::1", 80, True),
            tcp("2001:db8::2", 80, False),
        ],
    ),
    Case(
        "ipv6-pod-peers",
        [mnp(ingress(from_(pods(app="client"))))],
        (True, False),
        [tcp(CLIENT6, 80, True), tcp("fd00:a::10", 80, False)],
    ),
    # --- ports ---------------------------------------------------------------------------
    Case(
        "protocol-only",
        [mnp(ingress(from_(ports=[{"protocol": "UDP"}])))],
        (True, False),
        [
            (OUTSIDE, UDP, 1, True),
            (OUTSIDE, UDP, 65535, True),
            (OUTSIDE, TCP, 53, False),
            (OUTSIDE, ICMP, 0, False),
        ],
    ),
    Case(
        "default-protocol-tcp",
        [mnp(ingress({"ports": [{"port": 53}]}))],
        (True, False),
        [(OUTSIDE, TCP, 53, True), (OUTSIDE, UDP, 53, False)],
    ),
    Case(
        "endport-range",
        [mnp(ingress({"ports": [{"port": 8000, "endPort": 8100}]}))],
        (True, False),
        [
            tcp(OUTSIDE, 8000, True),
            tcp(OUTSIDE, 8050, True),
            tcp(OUTSIDE, 8100, True),
            tcp(OUTSIDE, 7999, False),
            tcp(OUTSIDE, 8101, False),
        ],
    ),
    Case(
        "endport-full-range",
        [mnp(ingress({"ports": [{"port": 1, "endPort": 65535, "protocol": "UDP"}]}))],
        (True, False),
        [(OUTSIDE, UDP, 1, True), (OUTSIDE, UDP, 65535, True), (OUTSIDE, TCP, 1, False)],
    ),
    Case(
        "sctp",
        [mnp(ingress({"ports": [{"protocol": "SCTP", "port": 3868}]}))],
        (True, False),
        [(OUTSIDE, SCTP, 3868, True), (OUTSIDE, TCP, 3868, False), (OUTSIDE, SCTP, 3869, False)],
    ),
    Case(
        "named-port-ingress-resolves-on-target",
        [mnp(ingress({"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}))],
        (True, False),
        [
            tcp(OUTSIDE, 8080, True),
            tcp(OUTSIDE, 80, False),
            (OUTSIDE, UDP, 53, True),
            (OUTSIDE, TCP, 53, False),
        ],
    ),
    Case(
        "named-port-ingress-protocol-must-match",
        [mnp(ingress({"ports": [{"port": "http", "protocol": "UDP"}]}))],
        (True, False),
        [(OUTSIDE, UDP, 8080, False), tcp(OUTSIDE, 8080, False)],
    ),
    Case(
        "named-port-egress-resolves-per-peer",
        [mnp(egress(to({"namespaceSelector": {}, **pods(app="web")}, ports=[{"port": "http"}])))],
        (True, True),
        [],
        [
            tcp(WEB, 80, True),
            tcp(WEB, 8000, False),
            tcp(DEV_WEB, 8000, True),
            tcp(DEV_WEB, 80, False),
        ],
    ),
    Case(
        "named-port-egress-ipblock-matches-nothing",
        [mnp(egress(to(ipb("10.1.0.0/16"), ports=[{"port": "http"}, {"port": 443}])))],
        (True, True),
        [],
        # 8080 is the *target's* http port: it must not leak onto egress peers.
        [
            tcp(WEB, 80, False),
            tcp(WEB, 443, True),
            tcp("10.1.5.5", 443, True),
            tcp("10.1.5.5", 8080, False),
        ],
    ),
    Case(
        "named-port-egress-to-all-resolves-on-every-pod",
        [mnp(egress({"ports": [{"port": "http"}]}))],
        (True, True),
        [],
        [
            tcp(WEB, 80, True),
            tcp(DEV_WEB, 8000, True),
            tcp(DEV_WEB, 80, False),
            tcp(OUTSIDE, 80, False),
            tcp(OUTSIDE, 8080, False),
        ],
    ),
    Case(
        "named-port-unresolved-fails-closed",
        [mnp(ingress({"ports": [{"port": "nosuch"}]}))],
        (True, False),
        [tcp(OUTSIDE, 80, False), tcp(OUTSIDE, 8080, False)],
    ),
    # --- ICMP ----------------------------------------------------------------------------
    Case(
        "icmp-denied-by-rules-with-ports",
        [mnp(ingress(from_(pods(app="client"), ports=[{"port": 80}])))],
        (True, False),
        [(CLIENT, ICMP, 0, False), (CLIENT6, ICMPV6, 0, False), tcp(CLIENT, 80, True)],
    ),
    Case(
        "icmp-option-allows-from-peers",
        [mnp(ingress(from_(pods(app="client"), ports=[{"port": 80}])))],
        (True, False),
        [
            (CLIENT, ICMP, 0, True),
            (CLIENT6, ICMPV6, 0, True),
            (OTHER, ICMP, 0, False),
            (CLIENT, GRE, 0, False),
        ],
        options=CompileOptions(allow_icmp=True),
    ),
    Case(
        "icmp-allowed-by-rule-without-ports",
        [mnp(ingress(from_(pods(app="client"))))],
        (True, False),
        [(CLIENT, ICMP, 0, True), (CLIENT, GRE, 0, True), (OTHER, ICMP, 0, False)],
    ),
    # --- networks ------------------------------------------------------------------------
    Case(
        "peer-ips-only-from-the-policed-network",
        [mnp(ingress(from_(pods(app="client"))), policy_for="net-a,net-b")],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(CLIENT_NET_B, 80, False), tcp(BNET_ONLY, 80, False)],
    ),
    Case(
        "policy-for-other-network-does-not-isolate",
        [mnp({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, policy_for="net-b")],
        (False, False),
        [tcp(OUTSIDE, 80, True)],
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "policy-for-selected-network-isolates-second-interface",
        [mnp(ingress(from_(pods(app="client"))), policy_for="net-b")],
        (True, False),
        [tcp(CLIENT_NET_B, 80, True), tcp(BNET_ONLY, 80, True), tcp(CLIENT, 80, False)],
        target=SERVER_NET_B,
    ),
    Case(
        "policy-for-ns-qualified",
        [mnp(ingress(from_(pods(app="client"))), policy_for="prod/net-a")],
        (True, False),
        [tcp(CLIENT, 80, True), tcp(OTHER, 80, False)],
    ),
    Case(
        "policy-for-spaces-and-several",
        [mnp(ingress(from_(pods(app="client"))), policy_for=" dev/net-x , net-a ")],
        (True, False),
        [tcp(CLIENT, 80, True)],
    ),
    Case(
        "policy-for-same-name-other-namespace",
        [mnp({"podSelector": {}, "ingress": []}, policy_for="dev/net-a")],
        (False, False),
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "policy-in-other-namespace-never-selects",
        [mnp({"podSelector": {}, "ingress": []}, ns="dev", policy_for="prod/net-a")],
        (False, False),
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "policy-for-partly-malformed-fails-closed-on-good-networks",
        [mnp({"podSelector": {}, "ingress": [{}]}, policy_for="net-a,Bad_Net")],
        (True, False),
        [tcp(OUTSIDE, 80, False)],
    ),
    Case(
        "policy-without-annotation-ignored",
        [mnp({"podSelector": {}, "ingress": []}, policy_for=None)],
        (False, False),
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "podselector-not-matching-target",
        [mnp({"podSelector": {"matchLabels": {"app": "client"}}, "ingress": []})],
        (False, False),
        [tcp(OUTSIDE, 80, True)],
    ),
    # --- fail closed ---------------------------------------------------------------------
    Case(
        "invalid-policy-fails-closed-despite-other-allows",
        [
            mnp(ingress(from_(ipb("10.0.0.0/33"))), name="broken"),
            mnp(ingress({}), name="allow-all"),
        ],
        (True, False),
        [tcp(OUTSIDE, 80, False), tcp(CLIENT, 80, False)],
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "invalid-policy-fails-closed-its-types",
        [mnp({**egress({}), "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]})],
        (True, True),
        [tcp(OUTSIDE, 80, False)],
        [tcp(OUTSIDE, 80, False)],
    ),
    Case(
        "invalid-policy-not-selecting-target-is-harmless",
        [
            mnp(
                {"podSelector": {"matchLabels": {"app": "x"}}, "ingress": [{"from": [{}]}]},
                name="broken",
            ),
            mnp(ingress({}), name="allow-all"),
        ],
        (True, False),
        [tcp(OUTSIDE, 80, True)],
    ),
    Case(
        "invalid-podselector-selects-everything",
        [
            mnp(
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "app", "operator": "in", "values": ["x"]}]
                    },
                    "ingress": [{}],
                }
            )
        ],
        (True, False),
        [tcp(OUTSIDE, 80, False)],
    ),
    Case(
        "allow-self-option",
        [mnp({"podSelector": {}, "ingress": []})],
        (True, False),
        [tcp(SERVER, 80, True), tcp(CLIENT, 80, False)],
        options=CompileOptions(allow_self=True),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_semantics(case: Case) -> None:
    tables = compile_for(case.policies, case.target, case.options)
    assert (tables.ingress.isolated, tables.egress.isolated) == case.isolated
    for direction, table, packets in (
        ("ingress", tables.ingress, case.ingress),
        ("egress", tables.egress, case.egress),
    ):
        for ip, proto, dport, expected in packets:
            got = allowed(table, ip, proto, dport)
            assert got == expected, f"{direction} {ip} proto {proto} port {dport}: got {got}"


def test_case_ids_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


def test_contributing_policies_listed() -> None:
    tables = compile_for(
        [
            mnp(ingress({}), name="b"),
            mnp(ingress({}), name="a"),
            mnp(ingress({}), name="c", policy_for="net-b"),
            mnp({"podSelector": {"matchLabels": {"app": "client"}}}, name="d"),
        ]
    )
    assert tables.policies == ("prod/a", "prod/b")
    assert tables.errors == ()


def test_invalid_policy_reported_on_interface() -> None:
    tables = compile_for([mnp(ingress(from_(ipb("10.0.0.1/8"))), name="broken")])
    assert tables.ingress.fail_closed == ("invalid policy prod/broken",)
    assert tables.errors[0] == "invalid policy prod/broken selects this interface: Ingress deny-all"
    assert any("10.0.0.1/8" in e and "host bits" in e for e in tables.errors)


def test_unknown_target_pod_fails_closed_only_under_policy() -> None:
    stranger = PolicedInterface("prod", "ghost", "net1", "prod/net-a")
    tables = compile_for([mnp(ingress({}))], stranger)
    assert tables.ingress.isolated and tables.egress.isolated
    assert not allowed(tables.ingress, OUTSIDE) and not allowed(tables.egress, OUTSIDE)
    assert "ghost is unknown" in tables.errors[0]
    free = compile_for([mnp(ingress({}), policy_for="net-b")], stranger)
    assert not free.ingress.isolated and not free.egress.isolated and free.errors == ()


def test_unresolved_named_ports_warn() -> None:
    tables = compile_for(
        [
            mnp(ingress({"ports": [{"port": "nosuch"}, {"port": "http"}]}), name="in"),
            mnp(egress(to(pods(app="client")), {"ports": [{"port": "metrics"}]}), name="out"),
        ]
    )
    assert tables.warnings == (
        "policy prod/in: Ingress named port 'nosuch' resolves on no target pod; it matches nothing",
        "policy prod/out: Egress named port 'metrics' resolves on no peer pod; it matches nothing",
    )


def test_classes_merge_identical_port_sets() -> None:
    tables = compile_for(
        [
            mnp(ingress(from_(pods(app="client"), ports=[{"port": 80}, {"port": 81}])), name="a"),
            mnp(ingress(from_(ipb("192.0.2.0/24"), ports=[{"port": 80, "endPort": 81}])), name="b"),
            mnp(ingress(from_(pods(app="other"), ports=[{"port": "http"}])), name="c"),
            mnp(ingress(from_(pods(app="web"), ports=[{"port": 8080}])), name="d"),
        ]
    )
    classes = tables.ingress.classes
    assert [c.ports for c in classes] == [
        frozenset({PortRange(TCP, 80, 81)}),
        frozenset({PortRange(TCP, 8080, 8080)}),
    ]
    assert len(classes[0].peers) == 3  # client v4 + v6, 192.0.2.0/24
    assert len(classes[1].peers) == 2  # other, web


def test_all_ports_class_sorted_first() -> None:
    tables = compile_for([mnp(ingress(from_(ports=[{"port": 1}]), from_(pods(app="web"))))])
    assert tables.ingress.classes[0].ports is ALL


def test_named_port_egress_multiple_containers_and_duplicate_ips() -> None:
    # A peer pod attached twice to the same network contributes both IPs.
    extra = [
        pod(
            "prod",
            "twice",
            {"app": "twice"},
            [("prod/net-a", ["10.1.7.1"]), ("prod/net-a", ["10.1.7.2"])],
            [("api", 9000, "TCP")],
        )
    ]
    tables = compile_for(
        [mnp(egress(to(pods(app="twice"), ports=[{"port": "api"}])))], base=world() + extra
    )
    assert allowed(tables.egress, "10.1.7.1", TCP, 9000)
    assert allowed(tables.egress, "10.1.7.2", TCP, 9000)
    assert not allowed(tables.egress, "10.1.7.2", TCP, 9001)
