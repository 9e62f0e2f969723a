"""The indexed engine (selector indexes, narrowed recompute, cached status)
must equal a fresh engine built from the final state, entry for entry, after
any sequence of pod/namespace/policy/NAD events."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nicwarden.agent.policy.engine import Action, Event, PolicyEngine
from nicwarden.agent.policy.labelindex import LabelIndex
from nicwarden.agent.policy.selectors import LabelSelector, Operator, Requirement
from nicwarden.agent.policy.state import ClusterState
from nicwarden.agent.policy.tables import PolicedInterface

NAMESPACES = ("a", "b", "c")
NETS = ("a/n1", "b/n2")
LABELS = st.dictionaries(st.sampled_from(("app", "role")), st.sampled_from(("x", "y")), max_size=2)


def _selector(draw: Any) -> dict[str, Any]:
    labels = draw(LABELS)
    op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist", None)))
    out: dict[str, Any] = {"matchLabels": labels}
    if op is not None:
        expr: dict[str, Any] = {
            "key": draw(st.sampled_from(("app", "role", "team"))),
            "operator": op,
        }
        if op in ("In", "NotIn"):
            expr["values"] = draw(
                st.lists(st.sampled_from(("x", "y", "t1")), min_size=1, max_size=2)
            )
        out["matchExpressions"] = [expr]
    return out


def _pod(ns: str, i: int, labels: dict[str, str], nets: list[str], phase: str) -> dict[str, Any]:
    status = [
        {
            "name": n,
            "interface": f"net{j}",
            "ips": [
                str(ipaddress.ip_address(0x0A000000 + 256 * NAMESPACES.index(ns) + 16 * i + j + 1))
            ],
        }
        for j, n in enumerate(nets)
    ]
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"p{i}",
            "namespace": ns,
            "labels": labels,
            "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)},
        },
        "spec": {
            "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 80 + i}]}]
        },
        "status": {"phase": phase},
    }


# Every target's pod and the NADs exist first, so random policies select
# something and later events move real peers in and out.
SEED = [
    Event(Action.ADD, _pod(ns, i, {"app": "x"}, list(NETS), "Running"))
    for ns in NAMESPACES
    for i in range(4)
] + [
    Event(
        Action.ADD,
        {
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": n.split("/")[1], "namespace": n.split("/")[0]},
            "spec": {"config": "{}"},
        },
    )
    for n in NETS
]


NS_SELECTORS: tuple[dict[str, Any], ...] = (
    {},
    {"matchLabels": {"team": "t1"}},
    {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["t2"]}]},
    {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]},
)


@st.composite
def events(draw: Any) -> Event:
    kind = draw(st.sampled_from(("Pod", "Pod", "Pod", "Namespace", "MultiNetworkPolicy", "NAD")))
    action = draw(st.sampled_from((Action.ADD, Action.UPDATE, Action.DELETE)))
    ns = draw(st.sampled_from(NAMESPACES))
    obj: dict[str, Any]
    if kind == "Namespace":
        obj = {
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"team": draw(st.sampled_from(("t1", "t2")))}},
        }
    elif kind == "NAD":
        net = draw(st.sampled_from(NETS))
        obj = {
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": net.split("/")[1], "namespace": net.split("/")[0]},
            "spec": {"config": "{}"},
        }
    elif kind == "Pod":
        i = draw(st.integers(0, 5))
        nets = draw(st.lists(st.sampled_from(NETS), max_size=2, unique=True))
        obj = _pod(
            ns, i, draw(LABELS), nets, draw(st.sampled_from(("Running", "Running", "Succeeded")))
        )
    else:
        net = draw(st.sampled_from(NETS))
        peer: dict[str, Any] = {"podSelector": _selector(draw)}
        if draw(st.booleans()):
            peer["namespaceSelector"] = draw(st.sampled_from(NS_SELECTORS))
        direction = draw(st.sampled_from(("ingress", "egress")))
        rule: dict[str, Any] = {
            "from" if direction == "ingress" else "to": draw(st.sampled_from(([peer], [])))
        }
        if draw(st.booleans()):
            rule["ports"] = [{"port": draw(st.sampled_from((80, "web")))}]
        obj = {
            "kind": "MultiNetworkPolicy",
            "metadata": {
                "name": f"m{draw(st.integers(0, 2))}",
                "namespace": ns,
                "annotations": {"k8s.v1.cni.cncf.io/policy-for": net},
            },
            "spec": {
                "podSelector": draw(st.sampled_from(({}, _selector(draw)))),
                "policyTypes": [direction.capitalize()],
                direction: [rule],
            },
        }
    return Event(action, obj)


TARGETS = [
    PolicedInterface(ns, f"p{i}", f"net{j}", net, (ipaddress.ip_address(0x0A000000 + 16 * i + 1),))
    for ns in NAMESPACES
    for i in range(2)
    for j, net in enumerate(NETS)
    if net.startswith(ns) or i == 1
]


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), min_size=5, max_size=60))
def test_indexed_engine_matches_fresh_compile(evts: list[Event]) -> None:
    engine = PolicyEngine()
    engine.set_targets(TARGETS)
    for ev in [*SEED, *evts]:
        engine.apply(ev)
    fresh = PolicyEngine(state=ClusterState(list(engine.state.objects())))
    fresh.set_targets(TARGETS)
    for t in TARGETS:
        assert engine.tables(t.key) == fresh.tables(t.key)
        assert engine.lowered(t.key) == fresh.lowered(t.key)
        assert engine.digest(t.key) == fresh.digest(t.key)
    assert engine.status() == fresh.status()
    for key in engine.state.policies:
        assert engine.policy_status(key) == fresh.policy_status(key)


POD_LABELS = st.dictionaries(
    st.sampled_from(("a", "b", "c")), st.sampled_from(("1", "2")), max_size=3
)
REQS = st.builds(
    Requirement,
    st.sampled_from(("a", "b", "c")),
    st.sampled_from(list(Operator)),
    st.frozensets(st.sampled_from(("1", "2", "3")), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(POD_LABELS, max_size=12),
    st.frozensets(st.tuples(st.sampled_from(("a", "b")), st.sampled_from(("1", "2"))), max_size=2),
    st.lists(REQS, max_size=3),
)
def test_label_index_candidates_cover_every_match(
    objs: list[dict[str, str]], match_labels: frozenset[tuple[str, str]], reqs: list[Requirement]
) -> None:
    index = LabelIndex()
    for i, labels in enumerate(objs):
        index.add(str(i), labels)
    index.add("gone", {"a": "1"})
    index.discard("gone", {"a": "1"})
    selector = LabelSelector(match_labels, tuple(reqs))
    matching = {str(i) for i, labels in enumerate(objs) if selector.matches(labels)}
    candidates = index.candidates(selector)
    everything = {str(i) for i in range(len(objs))}
    assert matching <= (everything if candidates is None else set(candidates))
    assert "gone" not in (candidates or set())


def test_label_index_narrows_only_on_positive_terms() -> None:
    index = LabelIndex()
    index.add("p1", {"app": "x"})
    index.add("p2", {"app": "y", "tier": "db"})
    index.add("p3", {})
    sel = LabelSelector(frozenset({("app", "x")}))
    assert index.candidates(sel) == {"p1"}
    exists = LabelSelector(requirements=(Requirement("tier", Operator.EXISTS),))
    assert index.candidates(exists) == {"p2"}
    within = LabelSelector(requirements=(Requirement("app", Operator.IN, frozenset({"x", "y"})),))
    assert index.candidates(within) == {"p1", "p2"}
    # NotIn / DoesNotExist match pods without the key: no narrowing.
    not_in = LabelSelector(requirements=(Requirement("app", Operator.NOT_IN, frozenset({"x"})),))
    assert index.candidates(not_in) is None
    assert not_in.matches({}) and not not_in.matches({"app": "x"})
    index.discard("p2", {"app": "y", "tier": "db"})
    assert index.candidates(exists) == set()


def _ns(name: str, team: str) -> Event:
    return Event(
        Action.UPDATE, {"kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}}
    )


def _cross_ns_engine(monkeypatch: Any) -> tuple[PolicyEngine, list[PolicedInterface]]:
    """A target in ``a`` on b/n2 whose ingress admits team=t1 pods with
    role=db; the pods live in ``b``. Counts compiles in ``compiles``."""
    import nicwarden.agent.policy.engine as engine_mod

    calls: list[str] = []
    real = engine_mod.compile_interface  # type: ignore[attr-defined]

    def counting(state: Any, iface: PolicedInterface, options: Any) -> Any:
        calls.append(iface.pod)
        return real(state, iface, options)

    monkeypatch.setattr(engine_mod, "compile_interface", counting)
    engine = PolicyEngine()
    engine.compiles = calls  # type: ignore[attr-defined]
    for ev in SEED:
        engine.apply(ev)
    engine.apply(_ns("b", "t2"))
    engine.apply(Event(Action.ADD, _pod("b", 5, {"role": "db"}, ["b/n2"], "Running")))
    engine.apply(
        Event(
            Action.ADD,
            {
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "m",
                    "namespace": "a",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "b/n2"},
                },
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {"matchLabels": {"team": "t1"}},
                                    "podSelector": {"matchLabels": {"role": "db"}},
                                }
                            ]
                        }
                    ],
                },
            },
        )
    )
    targets = [t for t in TARGETS if t.network == "b/n2"]
    engine.set_targets(targets)
    calls.clear()
    return engine, targets


def _peers(engine: PolicyEngine, target: PolicedInterface) -> set[str]:
    tables = engine.tables(target.key)
    assert tables is not None
    return {str(b.cidr) for c in tables.ingress.classes for b in c.peers}


def test_namespace_relabel_recomputes_interfaces_whose_selectors_it_crosses(
    monkeypatch: Any,
) -> None:
    engine, targets = _cross_ns_engine(monkeypatch)
    a_target = next(t for t in targets if t.namespace == "a")
    peer_ip = f"{ipaddress.ip_address(0x0A000000 + 256 + 16 * 5 + 1)}/32"
    assert peer_ip not in _peers(engine, a_target)
    changed = engine.apply(_ns("b", "t1"))
    assert a_target.key in changed
    assert peer_ip in _peers(engine, a_target)
    # A namespace no selector of these policies can see recomputes nothing
    # beyond its own pods' interfaces.
    engine.compiles.clear()  # type: ignore[attr-defined]
    engine.apply(_ns("c", "t2"))
    assert set(engine.compiles) <= {t.pod for t in targets if t.namespace == "c"}  # type: ignore[attr-defined]


def test_irrelevant_pod_events_compile_nothing(monkeypatch: Any) -> None:
    engine, targets = _cross_ns_engine(monkeypatch)
    # No secondary network at all.
    assert engine.apply(Event(Action.ADD, _pod("b", 7, {"role": "db"}, [], "Running"))) == set()
    # On the targets' network, but no peer selector selects it.
    assert (
        engine.apply(Event(Action.ADD, _pod("b", 8, {"role": "web"}, ["b/n2"], "Running"))) == set()
    )
    assert engine.compiles == []  # type: ignore[attr-defined]
    # The same pod entering the selector (once its namespace matches) does.
    engine.apply(_ns("b", "t1"))
    engine.compiles.clear()  # type: ignore[attr-defined]
    changed = engine.apply(Event(Action.UPDATE, _pod("b", 8, {"role": "db"}, ["b/n2"], "Running")))
    assert {t.key for t in targets if t.namespace == "a"} <= changed
    # And leaving it again.
    changed = engine.apply(Event(Action.UPDATE, _pod("b", 8, {"role": "web"}, ["b/n2"], "Running")))
    assert {t.key for t in targets if t.namespace == "a"} <= changed


def test_status_is_kept_per_object_and_follows_nads() -> None:
    engine = PolicyEngine()
    engine.apply(
        Event(
            Action.ADD,
            {
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "m",
                    "namespace": "a",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "n1"},
                },
                "spec": {"podSelector": {}},
            },
        )
    )
    status = engine.policy_status("a/m")
    assert status is not None and any(
        "no NetworkAttachmentDefinition a/n1" in w for w in status.warnings
    )
    engine.apply(SEED[-2])  # NAD a/n1 appears
    status = engine.policy_status("a/m")
    assert status is not None and status.warnings == ()
    engine.apply(Event(Action.DELETE, SEED[-2].obj))
    status = engine.policy_status("a/m")
    assert status is not None and status.warnings
    page = engine.status_page(limit=1)
    assert [s.key for s in page] == ["a/m"]
    assert engine.status_page(after=("MultiNetworkPolicy", "a/m")) == []
