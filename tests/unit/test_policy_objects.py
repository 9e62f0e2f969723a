"""Parsing and validation of the objects the policy engine reads: every error
names the object and the field, and invalid policies keep their podSelector."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_helpers import ipb, mnp, nad, namespace, pod

from nicwarden.agent.policy import LabelSelector, parse_object
from nicwarden.agent.policy.mnp import Direction, MultiNetworkPolicy, Protocol, parse_policy
from nicwarden.agent.policy.objects import (
    NetworkAttachmentDefinition,
    Pod,
    parse_nad,
    parse_namespace,
    parse_pod,
)
from nicwarden.agent.policy.selectors import Operator, Requirement


def policy(spec: dict[str, Any], **kw: Any) -> MultiNetworkPolicy:
    return parse_policy(mnp(spec, **kw))


def ingress_peer(peer: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"from": [peer]}]}


def ingress_port(port: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"ports": [port]}]}


# (id, spec, annotation, expected substring of the single error)
INVALID = [
    (
        "bad-cidr",
        ingress_peer(ipb("10.0.0.0/33")),
        "net-a",
        "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33' is not a valid CIDR",
    ),
    (
        "cidr-not-string",
        ingress_peer({"ipBlock": {"cidr": 10}}),
        "net-a",
        "ipBlock.cidr: must be a CIDR string, got int",
    ),
    (
        "cidr-missing",
        ingress_peer({"ipBlock": {"except": ["10.0.0.0/9"]}}),
        "net-a",
        "ipBlock.cidr: required",
    ),
    (
        "cidr-host-bits",
        ingress_peer(ipb("10.0.0.1/8")),
        "net-a",
        "ipBlock.cidr: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
    ),
    (
        "except-host-bits",
        ingress_peer(ipb("10.0.0.0/8", "10.1.0.1/16")),
        "net-a",
        "ipBlock.except[0]: '10.1.0.1/16' has host bits set",
    ),
    (
        "except-wrong-family",
        ingress_peer(ipb("10.0.0.0/8", "fd00::/64")),
        "net-a",
        "ipBlock.except[0]: fd00::/64 is IPv6 but cidr 10.0.0.0/8 is IPv4",
    ),
    (
        "except-outside",
        ingress_peer(ipb("10.0.0.0/8", "11.0.0.0/16")),
        "net-a",
        "ipBlock.except[0]: 11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8",
    ),
    (
        "except-equal",
        ingress_peer(ipb("10.0.0.0/8", "10.0.0.0/8")),
        "net-a",
        "is not strictly inside cidr",
    ),
    (
        "except-wider",
        ingress_peer(ipb("10.0.0.0/8", "0.0.0.0/0")),
        "net-a",
        "is not strictly inside cidr",
    ),
    (
        "ipblock-with-selector",
        ingress_peer({**ipb("10.0.0.0/8"), "podSelector": {}}),
        "net-a",
        "from[0]: ipBlock cannot be combined",
    ),
    (
        "empty-peer",
        ingress_peer({}),
        "net-a",
        "from[0]: must set podSelector, namespaceSelector or ipBlock",
    ),
    (
        "endport-without-port",
        ingress_port({"endPort": 90}),
        "net-a",
        "ports[0].endPort: requires port",
    ),
    (
        "endport-below-port",
        ingress_port({"port": 90, "endPort": 80}),
        "net-a",
        "ports[0].endPort: 80 is less than port 90",
    ),
    (
        "endport-named",
        ingress_port({"port": "http", "endPort": 80}),
        "net-a",
        "endPort: cannot be used with the named port 'http'",
    ),
    (
        "endport-too-big",
        ingress_port({"port": 90, "endPort": 70000}),
        "net-a",
        "endPort: 70000 is not in 1..65535",
    ),
    (
        "endport-string",
        ingress_port({"port": 90, "endPort": "100"}),
        "net-a",
        "endPort: must be a number, got str",
    ),
    (
        "protocol-unknown",
        ingress_port({"protocol": "ICMP"}),
        "net-a",
        "ports[0].protocol: unknown protocol 'ICMP' (want TCP, UDP or SCTP)",
    ),
    (
        "protocol-lowercase",
        ingress_port({"protocol": "tcp", "port": 80}),
        "net-a",
        "unknown protocol 'tcp'",
    ),
    ("port-zero", ingress_port({"port": 0}), "net-a", "ports[0].port: 0 is not in 1..65535"),
    ("port-too-big", ingress_port({"port": 65536}), "net-a", "65536 is not in 1..65535"),
    (
        "port-bool",
        ingress_port({"port": True}),
        "net-a",
        "must be a number or a port name, got bool",
    ),
    (
        "port-digits-string",
        ingress_port({"port": "80"}),
        "net-a",
        "'80' is neither a number nor a valid port name",
    ),
    (
        "port-name-too-long",
        ingress_port({"port": "a-very-long-name-x"}),
        "net-a",
        "neither a number nor a valid port name",
    ),
    (
        "port-name-double-hyphen",
        ingress_port({"port": "a--b"}),
        "net-a",
        "neither a number nor a valid port name",
    ),
    (
        "bad-operator",
        ingress_peer(
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}}
        ),
        "net-a",
        "matchExpressions[0].operator: unknown operator 'in'",
    ),
    (
        "in-without-values",
        ingress_peer({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        "net-a",
        "matchExpressions[0].values: operator In needs at least one value",
    ),
    (
        "notin-empty-values",
        ingress_peer(
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}}
        ),
        "net-a",
        "operator NotIn needs at least one value",
    ),
    (
        "exists-with-values",
        ingress_peer(
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                }
            }
        ),
        "net-a",
        "namespaceSelector.matchExpressions[0].values: operator Exists takes no values",
    ),
    (
        "doesnotexist-with-values",
        ingress_peer(
            {
                "podSelector": {
                    "matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]
                }
            }
        ),
        "net-a",
        "operator DoesNotExist takes no values",
    ),
    (
        "expression-no-key",
        ingress_peer({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}),
        "net-a",
        "matchExpressions[0].key: required",
    ),
    (
        "matchlabels-int",
        ingress_peer({"podSelector": {"matchLabels": {"v": 1}}}),
        "net-a",
        "matchLabels.v: must be a string, got int",
    ),
    (
        "selector-unknown-field",
        ingress_peer({"podSelector": {"matchLabel": {"a": "b"}}}),
        "net-a",
        "podSelector.matchLabel: unknown field",
    ),
    (
        "rule-typo",
        {"podSelector": {}, "ingress": [{"form": [{"podSelector": {}}]}]},
        "net-a",
        "spec.ingress[0].form: unknown field",
    ),
    (
        "egress-rule-with-from",
        {"podSelector": {}, "egress": [{"from": []}]},
        "net-a",
        "spec.egress[0].from: unknown field",
    ),
    ("spec-typo", {"podSelector": {}, "egres": []}, "net-a", "spec.egres: unknown field"),
    (
        "policytypes-bad",
        {"podSelector": {}, "policyTypes": ["Ingres"]},
        "net-a",
        "spec.policyTypes[0]: 'Ingres' is not Ingress or Egress",
    ),
    ("podselector-missing", {"ingress": [{}]}, "net-a", "spec.podSelector: required"),
    (
        "rules-not-list",
        {"podSelector": {}, "ingress": {"from": []}},
        "net-a",
        "spec.ingress: must be a list, got dict",
    ),
    (
        "rule-null",
        {"podSelector": {}, "ingress": [None]},
        "net-a",
        "spec.ingress[0]: must be an object, got null",
    ),
    (
        "annotation-too-many-slashes",
        {"podSelector": {}},
        "a/b/c",
        "policy-for]: malformed network reference: 'a/b/c' has more than one '/'",
    ),
    (
        "annotation-bad-name",
        {"podSelector": {}},
        "Net_A",
        "malformed network reference: 'Net_A': name 'Net_A' is not a DNS-1123 subdomain",
    ),
    (
        "annotation-bad-namespace",
        {"podSelector": {}},
        "Prod/net-a",
        "namespace 'Prod' is not a DNS-1123 label",
    ),
    ("annotation-empty", {"podSelector": {}}, " , ", "policy-for]: names no network"),
]


@pytest.mark.parametrize(
    ("spec", "annotation", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_policies_report_object_and_field(
    spec: dict[str, Any], annotation: str, expected: str
) -> None:
    p = policy(spec, name="bad", policy_for=annotation)
    assert not p.valid
    assert len(p.errors) == 1, p.errors
    assert p.errors[0].startswith("MultiNetworkPolicy prod/bad: ")
    assert expected in p.errors[0]


def test_invalid_policy_keeps_pod_selector_and_types() -> None:
    p = policy(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [ipb("10.0.0.0/33")]}],
        }
    )
    assert not p.valid
    assert p.pod_selector == LabelSelector(frozenset({("app", "db")}))
    assert p.policy_types == {Direction.EGRESS}


def test_unparseable_pod_selector_is_none() -> None:
    p = policy({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bad"}]}})
    assert p.pod_selector is None and not p.valid


def test_unreadable_policy_types_means_both() -> None:
    assert policy({"podSelector": {}, "policyTypes": "Ingress"}).policy_types == set(Direction)
    assert policy({"podSelector": {}, "policyTypes": ["Egress", "x"]}).policy_types == set(
        Direction
    )


def test_errors_accumulate() -> None:
    p = policy(
        {
            "podSelector": {},
            "ingress": [
                {"from": [ipb("10.0.0.1/8")], "ports": [{"protocol": "tcp"}, {"endPort": 5}]}
            ],
        }
    )
    assert len(p.errors) == 3


def test_valid_policy_model() -> None:
    p = policy(
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [
                        ipb("10.0.0.0/8", "10.1.0.0/16"),
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}},
                    ],
                    "ports": [
                        {"port": 80},
                        {"protocol": "UDP"},
                        {"protocol": "SCTP", "port": 10, "endPort": 20},
                        {"port": "http"},
                    ],
                },
                {},
            ],
        },
        policy_for="net-a, other/net-b",
    )
    assert p.valid and p.warnings == ()
    assert p.key == "prod/p"
    assert p.networks == {"prod/net-a", "other/net-b"}
    assert p.policy_types == {Direction.INGRESS}
    rule = p.ingress[0]
    assert rule.peers[0].ip_block is not None
    assert rule.peers[0].ip_block.cidr == ipaddress.ip_network("10.0.0.0/8")
    assert rule.peers[0].ip_block.excepts == (ipaddress.ip_network("10.1.0.0/16"),)
    assert rule.peers[1].namespace_selector == LabelSelector()
    assert [(s.protocol, s.port, s.end_port) for s in rule.ports] == [
        (Protocol.TCP, 80, None),
        (Protocol.UDP, None, None),
        (Protocol.SCTP, 10, 20),
        (Protocol.TCP, "http", None),
    ]
    assert p.ingress[1].peers == () and p.ingress[1].ports == ()


def test_policy_without_annotation_is_valid_but_warned() -> None:
    p = policy({"podSelector": {}}, policy_for=None)
    assert p.valid and p.networks == frozenset()
    assert "no k8s.v1.cni.cncf.io/policy-for annotation" in p.warnings[0]


def test_policy_wrong_api_version_and_kind() -> None:
    raw = mnp({"podSelector": {}})
    raw["apiVersion"] = "networking.k8s.io/v1"
    assert (
        "apiVersion: 'networking.k8s.io/v1' is not k8s.cni.cncf.io/v1beta1"
        in parse_policy(raw).errors[0]
    )
    raw = mnp({"podSelector": {}})
    raw["kind"] = "NetworkPolicy"
    assert "kind: 'NetworkPolicy' is not MultiNetworkPolicy" in parse_policy(raw).errors[0]


def test_policy_spec_missing_and_default_namespace() -> None:
    p = parse_policy({"kind": "MultiNetworkPolicy", "metadata": {"name": "x"}})
    assert p.namespace == "default"
    assert "spec: required" in p.errors[0]


def test_nameless_object_raises() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        parse_policy({"metadata": {}})
    with pytest.raises(ValueError, match="unsupported kind"):
        parse_object({"kind": "Service", "metadata": {"name": "x"}})


# --- selectors ---------------------------------------------------------------------------

SELECTOR_CASES = [
    (LabelSelector(), {}, True),
    (LabelSelector(), {"a": "1"}, True),
    (LabelSelector(frozenset({("a", "1")})), {"a": "1", "b": "2"}, True),
    (LabelSelector(frozenset({("a", "1")})), {"a": "2"}, False),
    (LabelSelector(frozenset({("a", "1")})), {}, False),
    (
        LabelSelector(requirements=(Requirement("a", Operator.IN, frozenset({"1", "2"})),)),
        {"a": "2"},
        True,
    ),
    (LabelSelector(requirements=(Requirement("a", Operator.IN, frozenset({"1"})),)), {}, False),
    (LabelSelector(requirements=(Requirement("a", Operator.NOT_IN, frozenset({"1"})),)), {}, True),
    (
        LabelSelector(requirements=(Requirement("a", Operator.NOT_IN, frozenset({"1"})),)),
        {"a": "1"},
        False,
    ),
    (LabelSelector(requirements=(Requirement("a", Operator.EXISTS),)), {"a": ""}, True),
    (LabelSelector(requirements=(Requirement("a", Operator.EXISTS),)), {"b": "1"}, False),
    (LabelSelector(requirements=(Requirement("a", Operator.DOES_NOT_EXIST),)), {"b": "1"}, True),
    (LabelSelector(requirements=(Requirement("a", Operator.DOES_NOT_EXIST),)), {"a": "1"}, False),
    (
        LabelSelector(frozenset({("x", "y")}), (Requirement("a", Operator.EXISTS),)),
        {"a": "1"},
        False,  # matchLabels AND expressions
    ),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_selector_matching(selector: LabelSelector, labels: dict[str, str], expected: bool) -> None:
    assert selector.matches(labels) is expected


def test_selector_parsing_round_trip() -> None:
    p = policy(
        {
            "podSelector": {
                "matchLabels": {"app": "x"},
                "matchExpressions": [
                    {"key": "a", "operator": "In", "values": ["1", "2"]},
                    {"key": "b", "operator": "DoesNotExist"},
                ],
            }
        }
    )
    assert p.pod_selector == LabelSelector(
        frozenset({("app", "x")}),
        (
            Requirement("a", Operator.IN, frozenset({"1", "2"})),
            Requirement("b", Operator.DOES_NOT_EXIST),
        ),
    )
    assert (
        policy({"podSelector": {"matchLabels": None, "matchExpressions": None}}).pod_selector
        == LabelSelector()
    )


# --- pods, namespaces, NADs --------------------------------------------------------------


def test_pod_parsing() -> None:
    raw = pod(
        "prod",
        "a",
        {"app": "a"},
        [("prod/net-a", ["10.0.0.1", "fd00::1"]), ("net-b", ["10.0.1.1/24"])],
        [("http", 80, "TCP"), ("", 53, "UDP")],
    )
    p = parse_pod(raw)
    assert isinstance(p, Pod) and p.errors == ()
    assert (p.key, p.uid, p.node_name, p.phase) == ("prod/a", "uid-prod-a", "node-1", "Running")
    # The default-network entry is not a secondary network; a bare name is the pod's namespace.
    assert p.network_keys() == {"prod/net-a", "prod/net-b"}
    assert p.ips_on("prod/net-a") == (
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    )
    assert p.ips_on("prod/net-b") == (ipaddress.ip_address("10.0.1.1"),)
    # Only secondary networks are kept (the default entry is validated, then dropped).
    assert [e.network for e in p.networks] == ["prod/net-a", "prod/net-b"]
    assert p.networks[0].interface == "net1" and p.networks[0].mac == "02:00:00:00:00:00"
    assert p.resolve_port("http", Protocol.TCP) == {80}
    assert p.resolve_port("http", Protocol.UDP) == frozenset()
    assert p.is_peer_candidate


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("not json", "network-status]: not valid JSON"),
        ('{"name": "x"}', "network-status]: must be a JSON list, got dict"),
        ('[{"interface": "net1"}]', "network-status][0].name: required string"),
        ('[{"name": "a/b/c", "ips": []}]', "has more than one '/'"),
        (
            '[{"name": "prod/n", "ips": ["10.0.0.300"]}]',
            "network-status][0].ips[0]: '10.0.0.300' is not an IP address",
        ),
    ],
)
def test_pod_bad_network_status(annotation: str, expected: str) -> None:
    raw = pod("prod", "a")
    raw["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] = annotation
    p = parse_pod(raw)
    assert p.errors and p.errors[0].startswith("Pod prod/a: ")
    assert expected in p.errors[0]


def test_pod_partial_network_status_keeps_good_ips() -> None:
    raw = pod("prod", "a")
    raw["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] = json.dumps(
        [{"name": "prod/n", "ips": ["10.0.0.1", "bogus"]}]
    )
    p = parse_pod(raw)
    assert p.ips_on("prod/n") == (ipaddress.ip_address("10.0.0.1"),) and len(p.errors) == 1


def test_pod_bad_container_port() -> None:
    raw = pod("prod", "a", ports=[("x", 0, "TCP"), ("y", 80, "ICMP")])
    p = parse_pod(raw)
    assert p.ports == () and len(p.errors) == 2
    assert "spec.containers[0].ports[0].containerPort: 0 is not a port number" in p.errors[0]


def test_pod_terminal_and_host_network() -> None:
    assert not parse_pod(pod("prod", "a", phase="Failed")).is_peer_candidate
    raw = pod("prod", "a")
    raw["spec"]["hostNetwork"] = True
    assert not parse_pod(raw).is_peer_candidate


def test_namespace_parsing_adds_name_label() -> None:
    ns = parse_namespace(namespace("prod", env="prod"))
    assert ns.labels == {"env": "prod", "kubernetes.io/metadata.name": "prod"}
    bad = parse_namespace({"metadata": {"name": "x", "labels": {"a": 1}}})
    assert bad.errors == ("Namespace x: metadata.labels.a: must be a string, got int",)


def test_nad_parsing() -> None:
    n = parse_nad(nad("prod", "net-a"))
    assert isinstance(n, NetworkAttachmentDefinition)
    assert n.key == "prod/net-a" and n.config["type"] == "nicwarden" and n.errors == ()
    raw = nad("prod", "bad")
    raw["spec"]["config"] = "{nope"
    assert (
        "NetworkAttachmentDefinition prod/bad: spec.config: not valid JSON"
        in parse_nad(raw).errors[0]
    )
    raw["spec"]["config"] = "[]"
    assert "must be a JSON object, got list" in parse_nad(raw).errors[0]


def _ip_by_ipaddress(raw: object) -> object:
    """What ``_parse_ip`` answered before its C fast path."""
    if not isinstance(raw, str):
        return None
    try:
        return ipaddress.ip_interface(raw).ip
    except ValueError:
        return None


@given(
    st.one_of(
        st.text(alphabet="0123456789./:abcdef% x\x00\u0661", max_size=24),
        st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
        st.tuples(*[st.integers(0, 255)] * 4, st.sampled_from(["", "0", "00"])).map(
            lambda t: ".".join(t[4] + str(x) for x in t[:4])
        ),
        st.ip_addresses().map(str),
        st.integers(),
    )
)
@settings(max_examples=400, deadline=None)
def test_pod_addresses_parse_as_ipaddress_would(raw: object) -> None:
    from nicwarden.agent.policy.objects import _parse_ip

    assert _parse_ip(raw) == _ip_by_ipaddress(raw)


def test_pod_ports_seen_before_are_shared_but_lookalikes_are_still_checked() -> None:
    a = parse_pod(pod("prod", "a", ports=[("http", 80, "TCP")]))
    b = parse_pod(pod("prod", "b", ports=[("http", 80, "TCP")]))
    assert a.ports == b.ports and a.ports[0] is b.ports[0]
    for odd in (True, 80.0, "80"):
        raw = pod("prod", "c", ports=[("http", 80, "TCP")])
        raw["spec"]["containers"][0]["ports"][0]["containerPort"] = odd
        p = parse_pod(raw)
        assert p.ports == () and "is not a port number" in p.errors[0], odd
    raw = pod("prod", "d")
    raw["spec"]["containers"] = [{"ports": [None, 7, {"containerPort": [80]}]}, "x"]
    errors = parse_pod(raw).errors
    assert [e.split(": ", 2)[1] for e in errors] == [
        "spec.containers[0].ports[0].containerPort",
        "spec.containers[0].ports[1]",
        "spec.containers[0].ports[1].containerPort",
        "spec.containers[0].ports[2].containerPort",
        "spec.containers[1]",
    ]


@given(
    st.one_of(
        st.text(alphabet="0123456789./:abcdef ", max_size=24),
        st.tuples(
            st.ip_addresses(v=4).map(str), st.integers(0, 40), st.sampled_from(["", "0"])
        ).map(lambda t: f"{t[0]}/{t[2]}{t[1]}"),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"{a}/64"),
    )
)
@settings(max_examples=400, deadline=None)
def test_policy_cidrs_parse_as_ipaddress_would(raw: str) -> None:
    from nicwarden.agent.policy._fields import Issues
    from nicwarden.agent.policy.mnp import _parse_network

    try:
        expected: object = ipaddress.ip_network(raw, strict=True)
    except ValueError:
        expected = None
    issues = Issues("test")
    got = _parse_network(raw, issues, "cidr")
    assert got == expected
    assert type(got) is type(expected)
    assert bool(issues.messages) == (expected is None)
