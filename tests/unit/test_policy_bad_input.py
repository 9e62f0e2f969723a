"""Bad input from the cluster (issue 14, "Bad input").

A pod whose Multus network-status is malformed keeps its last valid networks,
is logged once per valid-to-bad change and counted; a policy whose tables
would not fit the datapath fails closed for the interfaces it selects, with
the reason in its status and an Event, while other interfaces keep theirs.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_enforcer import CLIENT_IP, FakeDatapath, FakeSource, cluster, primed, put_ready
from test_policy_helpers import TCP, mnp, nad, namespace, pod

from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.k8s.project import project_pod
from nicwarden.agent.metrics_collect import PolicyCollector
from nicwarden.agent.policy import Action, Event, PolicedInterface, PolicyEngine, lookup
from nicwarden.agent.policy.lower import TableLimits
from nicwarden.agent.policy.objects import (
    MAX_NETWORK_STATUS_BYTES,
    NETWORK_STATUS,
    parse_pod,
)
from nicwarden.agent.store import Store

ENGINE_LOG = "nicwarden.agent.policy.engine"
SERVER = PolicedInterface("prod", "server", "net1", "prod/net-a", pod_uid="uid-prod-server")
WEB = PolicedInterface("prod", "web", "net1", "prod/net-a", pod_uid="uid-prod-web")

ALLOW_CLIENTS = mnp(
    {
        "podSelector": {"matchLabels": {"app": "server"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
    name="allow-clients",
)
WEB_FROM_CLIENTS = mnp(
    {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
    name="web-from-clients",
)

# Each way an annotation can be bad, as Multus (or anyone with patch rights)
# could write it.
MALFORMED: dict[str, Any] = {
    "not-json": "[{oops",
    "not-a-list": json.dumps({"name": "prod/net-a", "ips": ["10.1.0.20"]}),
    "entry-not-object": json.dumps(["prod/net-a"]),
    "no-name": json.dumps([{"interface": "net1", "ips": ["10.1.0.20"]}]),
    "bad-ip": json.dumps([{"name": "prod/net-a", "ips": ["10.1.0.300"]}]),
    "ips-not-list": json.dumps([{"name": "prod/net-a", "ips": "10.1.0.20"}]),
    "bad-network": json.dumps([{"name": "a/b/c", "ips": ["10.1.0.20"]}]),
    "oversized": json.dumps(
        [{"name": "prod/net-a", "ips": ["10.1.0.20"], "pad": "x" * MAX_NETWORK_STATUS_BYTES}]
    ),
    "too-many-entries": json.dumps([{"name": "prod/net-a", "ips": []}] * 65),
    "too-many-ips": json.dumps([{"name": "prod/net-a", "ips": ["10.1.0.20"] * 65}]),
    "not-a-string": 17,
}


def with_status(raw: dict[str, Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["metadata"]["annotations"][NETWORK_STATUS] = value
    return out


def base() -> list[dict[str, Any]]:
    return [
        namespace("prod"),
        nad("prod", "net-a"),
        pod("prod", "server", {"app": "server"}, [("prod/net-a", ["10.1.0.10"])]),
        pod("prod", "web", {"app": "web"}, [("prod/net-a", ["10.1.0.11"])]),
        pod("prod", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.20"])]),
        ALLOW_CLIENTS,
    ]


def engine_with(objs: list[dict[str, Any]], **kw: Any) -> PolicyEngine:
    engine = PolicyEngine(**kw)
    engine.set_targets([SERVER, WEB])
    engine.apply_all(Event(Action.ADD, o) for o in objs)
    return engine


def server_allows(engine: PolicyEngine, src: str, port: int = 80) -> bool:
    lowered = engine.lowered(SERVER.key)
    assert lowered is not None
    return lookup(lowered.ingress, 4, src, TCP, port)


# ---------------------------------------------------------------- network-status


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_status_keeps_the_last_valid_networks(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_with(base())
    assert server_allows(engine, "10.1.0.20")
    digest = engine.digest(SERVER.key)
    client = pod("prod", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.20"])])
    bad = with_status(client, MALFORMED[kind])
    with caplog.at_level(logging.INFO, logger=ENGINE_LOG):
        changed = engine.apply(Event(Action.UPDATE, bad))
        # The same bad value again (a resync), then another bad one: quiet.
        engine.apply(Event(Action.UPDATE, bad))
        engine.apply(Event(Action.UPDATE, with_status(client, "still [bad")))
    assert changed == set() and engine.digest(SERVER.key) == digest
    assert server_allows(engine, "10.1.0.20")
    kept = engine.state.pods["prod/client"]
    assert [str(ip) for ip in kept.ips_on("prod/net-a")] == ["10.1.0.20"]
    status = engine.status_page(kind="Pod", namespace="prod", problems_only=True)
    assert [s.key for s in status] == ["prod/client"] and not status[0].ok
    assert engine.malformed() == {"Pod": 1} and engine.malformed_total == {"Pod": 1}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and getattr(warnings[0], "pod", "") == "prod/client"


def test_logged_again_only_after_becoming_valid_in_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engine_with(base())
    client = pod("prod", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.20"])])
    moved = pod("prod", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.21"])])
    with caplog.at_level(logging.INFO, logger=ENGINE_LOG):
        for obj in (
            with_status(client, "x"),
            with_status(client, "y"),
            moved,  # valid again: a new address, which takes effect
            with_status(client, "x"),
            with_status(client, "x"),
        ):
            engine.apply(Event(Action.UPDATE, obj))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    cleared = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 2 and len(cleared) == 1
    assert engine.malformed_total == {"Pod": 2} and engine.malformed() == {"Pod": 1}
    # The kept networks are the last valid ones, not the first.
    assert server_allows(engine, "10.1.0.21") and not server_allows(engine, "10.1.0.20")
    engine.apply(Event(Action.DELETE, client))
    assert engine.malformed() == {} and not server_allows(engine, "10.1.0.21")


def test_malformed_without_a_valid_past_contributes_nothing() -> None:
    engine = engine_with(base())
    stranger = pod("prod", "stranger", {"app": "client"}, [("prod/net-a", ["10.1.0.30"])])
    # One valid entry beside a bad one: the annotation as a whole is not trusted.
    partial = json.dumps([{"name": "prod/net-a", "ips": ["10.1.0.30", "bogus"]}])
    engine.apply(Event(Action.ADD, with_status(stranger, partial)))
    assert engine.state.pods["prod/stranger"].networks == ()
    assert not server_allows(engine, "10.1.0.30")
    # A new pod under an old name (another UID) inherits nothing either.
    engine.apply(Event(Action.UPDATE, stranger))
    assert server_allows(engine, "10.1.0.30")
    reborn = with_status(stranger, "garbage")
    reborn["metadata"]["uid"] = "uid-new"
    engine.apply(Event(Action.UPDATE, reborn))
    assert not server_allows(engine, "10.1.0.30")


def test_projection_bounds_an_oversized_annotation() -> None:
    huge = "[" + " " * (4 * MAX_NETWORK_STATUS_BYTES) + "]"
    raw = with_status(pod("prod", "client", {"app": "client"}), huge)
    projected = project_pod(raw)
    kept = projected["metadata"]["annotations"][NETWORK_STATUS]
    assert len(kept) == MAX_NETWORK_STATUS_BYTES + 1
    # Rejected for its size whatever the rest held, before and after projection.
    for obj in (raw, projected):
        (error,) = parse_pod(obj).errors
        assert f"longer than {MAX_NETWORK_STATUS_BYTES} characters" in error


# Property: whatever sequence of valid and malformed values pods go through,
# the engine ends equal to a fresh one fed only each pod's last valid value.

PODS = ("c0", "c1", "c2")
IPS = [f"10.1.0.{i}" for i in range(20, 28)]
VALID = st.lists(st.sampled_from(IPS), max_size=3, unique=True).map(
    lambda ips: json.dumps([{"name": "prod/net-a", "interface": "net1", "ips": ips}])
)
STEP = st.tuples(
    st.sampled_from(PODS),
    st.one_of(
        VALID.map(lambda v: ("valid", v)),
        st.sampled_from(sorted(MALFORMED)).map(lambda k: ("bad", MALFORMED[k])),
        st.just(("delete", None)),
    ),
    st.sampled_from(("client", "other")),
)


def _client(name: str, app: str, status: Any) -> dict[str, Any]:
    return with_status(pod("prod", name, {"app": app}), status)


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=25))
def test_bad_values_leave_the_engine_as_the_last_valid_ones(
    steps: list[tuple[str, tuple[str, Any], str]],
) -> None:
    engine = engine_with([*base(), WEB_FROM_CLIENTS])
    last: dict[str, dict[str, Any]] = {}  # pod -> its last valid object
    present: set[str] = set()
    for name, (what, value), app in steps:
        if what == "delete":
            engine.apply(Event(Action.DELETE, _client(name, app, "[]")))
            present.discard(name)
            last.pop(name, None)
            continue
        action = Action.UPDATE if name in present else Action.ADD
        obj = _client(name, app, value)
        engine.apply(Event(action, obj))
        present.add(name)
        if what == "valid":
            last[name] = obj
        else:
            # Labels are read as ever; only the addresses are held back.
            kept = last[name]["metadata"]["annotations"][NETWORK_STATUS] if name in last else "[]"
            last[name] = _client(name, app, kept)
    fresh = engine_with([*base(), WEB_FROM_CLIENTS, *(last[n] for n in sorted(last))])
    for target in (SERVER, WEB):
        assert engine.lowered(target.key) == fresh.lowered(target.key)
        assert engine.digest(target.key) == fresh.digest(target.key)
    for name in PODS:
        key = f"prod/{name}"
        mine, theirs = engine.state.pods.get(key), fresh.state.pods.get(key)
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            assert mine.networks == theirs.networks and mine.labels == theirs.labels
    bad_now = sum(1 for (what, _value), _app in _last_step(steps).values() if what == "bad")
    assert engine.malformed() == ({"Pod": bad_now} if bad_now else {})


def _last_step(
    steps: list[tuple[str, tuple[str, Any], str]],
) -> dict[str, tuple[tuple[str, Any], str]]:
    out: dict[str, tuple[tuple[str, Any], str]] = {}
    for name, what, app in steps:
        out[name] = (what, app)
    return out


def test_malformed_metrics(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state")
    try:
        enforcer = PolicyEnforcer(store, None, None)
        enforcer.start()
        client = pod("prod", "client", {"app": "client"}, [("prod/net-a", ["10.1.0.20"])])
        for obj in (client, with_status(client, "bad"), with_status(client, "worse")):
            enforcer.on_event(Event(Action.UPDATE, obj))
        families = {f.name: f for f in PolicyCollector(lambda: enforcer).collect()}
        gauge = families["nicwarden_source_malformed_objects"]
        counter = families["nicwarden_source_malformed"]  # the client strips _total
        assert [(s.labels, s.value) for s in gauge.samples] == [({"kind": "Pod"}, 1.0)]
        total = [s for s in counter.samples if s.name.endswith("_total")]
        assert [(s.labels, s.value) for s in total] == [({"kind": "Pod"}, 1.0)]
        enforcer.on_event(Event(Action.UPDATE, client))
        families = {f.name: f for f in PolicyCollector(lambda: enforcer).collect()}
        assert families["nicwarden_source_malformed_objects"].samples[0].value == 0.0
    finally:
        store.close()


# ---------------------------------------------------------------- datapath limits


def many_ports(n: int, name: str = "many-ports") -> dict[str, Any]:
    """n ingress rules with n distinct port sets: n traffic classes."""
    return mnp(
        {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": "10.9.0.0/16"}}],
                    "ports": [{"protocol": "TCP", "port": 1000 + i}],
                }
                for i in range(n)
            ],
        },
        name=name,
    )


def test_too_many_classes_fails_closed_with_a_reason_on_the_policy() -> None:
    engine = engine_with([*base(), WEB_FROM_CLIENTS])
    assert server_allows(engine, "10.1.0.20")
    engine.apply(Event(Action.ADD, many_ports(65)))
    lowered = engine.lowered(SERVER.key)
    assert lowered is not None
    # Isolated with nothing allowed: not the old table, not the policy ignored.
    assert lowered.ingress.isolated and not lowered.ingress.peers
    assert not lowered.ingress.any_proto_mask
    assert not server_allows(engine, "10.1.0.20") and not server_allows(engine, "10.9.0.1", 1000)
    assert not lowered.egress.isolated  # the policy isolates ingress only
    status = engine.policy_status("prod/many-ports")
    assert status is not None and not status.ok
    (reason,) = status.errors
    assert "ingress table of pod prod/server net1" in reason
    # allow-clients' rule (all ports) is the 66th class.
    assert "66 distinct port sets exceed the datapath's 64 classes" in reason
    assert "fails closed (deny-all)" in reason
    # The other policy selecting the same interface shares the blame.
    other = engine.policy_status("prod/allow-clients")
    assert other is not None and not other.ok
    # A policy on another pod is untouched.
    web = engine.lowered(WEB.key)
    assert web is not None and lookup(web.ingress, 4, "10.1.0.20", TCP, 80)
    ok = engine.policy_status("prod/web-from-clients")
    assert ok is not None and ok.ok
    # Back under the limit: enforced again, and the reason goes.
    engine.apply(Event(Action.UPDATE, many_ports(63)))
    assert server_allows(engine, "10.9.0.1", 1062) and server_allows(engine, "10.1.0.20")
    assert not server_allows(engine, "10.9.0.1", 1063)
    cleared = engine.policy_status("prod/many-ports")
    assert cleared is not None and cleared.ok


def test_peers_growing_past_the_limit_fail_closed_and_report() -> None:
    limits = TableLimits(peer_entries=3)
    engine = engine_with([*base(), WEB_FROM_CLIENTS], limits=limits)
    engine.take_policy_changes()
    for i in (21, 22):
        engine.apply(Event(Action.ADD, _client(f"c{i}", "client", _status(f"10.1.0.{i}"))))
    assert server_allows(engine, "10.1.0.22") and engine.take_policy_changes() == set()
    # A fourth client: a pod event, not a policy event, crosses the limit.
    engine.apply(Event(Action.ADD, _client("c23", "client", _status("10.1.0.23"))))
    assert engine.take_policy_changes() == {"prod/allow-clients", "prod/web-from-clients"}
    assert not server_allows(engine, "10.1.0.20")
    status = engine.policy_status("prod/allow-clients")
    assert status is not None and "4 peer entries exceed the datapath's 3" in status.errors[0]
    engine.apply(Event(Action.DELETE, _client("c23", "client", "[]")))
    assert engine.take_policy_changes() == {"prod/allow-clients", "prod/web-from-clients"}
    assert server_allows(engine, "10.1.0.20")
    status = engine.policy_status("prod/allow-clients")
    assert status is not None and status.ok


def _status(*ips: str) -> str:
    return json.dumps([{"name": "prod/net-a", "interface": "net1", "ips": list(ips)}])


def test_enforcer_reports_an_over_limit_policy_with_an_event(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state")
    reports: list[tuple[dict[str, Any], str]] = []
    dp, source = FakeDatapath(), FakeSource()
    enforcer = PolicyEnforcer(
        store, dp, source, on_invalid=lambda obj, msg: reports.append((dict(obj), msg))
    )
    enforcer.engine.limits = TableLimits(peer_entries=2)
    enforcer.start()
    try:
        allow = mnp(
            {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
            },
            name="allow-clients",
        )
        allow["metadata"]["uid"] = "uid-policy"
        source.deliver(Action.ADD, *cluster(), allow)
        primed(enforcer, source)
        enforcer.on_attach(put_ready(store))
        assert dp.allows("net1", CLIENT_IP) and reports == []
        for i in (31, 32):
            extra = pod("prod", f"c{i}", {"app": "client"}, [("prod/net-a", [f"10.1.0.{i}"])])
            source.deliver(Action.ADD, extra)
        assert not dp.allows("net1", CLIENT_IP)
        ((obj, message),) = reports
        assert obj["metadata"] == {
            "name": "allow-clients",
            "namespace": "prod",
            "uid": "uid-policy",
        }
        assert obj["kind"] == "MultiNetworkPolicy"
        assert "peer entries exceed the datapath's 2" in message
        rows = {r["key"]: r for r in enforcer.objects() if r["kind"] == "MultiNetworkPolicy"}
        assert not rows["prod/allow-clients"]["ok"]
        source.deliver(Action.DELETE, pod("prod", "c32", {"app": "client"}))
        assert dp.allows("net1", CLIENT_IP) and len(reports) == 1
        rows = {r["key"]: r for r in enforcer.objects() if r["kind"] == "MultiNetworkPolicy"}
        assert rows["prod/allow-clients"]["ok"]
    finally:
        enforcer.stop()
        store.close()
