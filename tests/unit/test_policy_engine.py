"""Incremental recompute: the engine reports exactly the interfaces whose
lowered tables changed, and always agrees with a full recompile."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from test_policy_helpers import (
    SERVER_NET_A,
    SERVER_NET_B,
    TCP,
    ipb,
    mnp,
    namespace,
    pod,
    world,
)

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.policy import (
    Action,
    CompileOptions,
    Event,
    InterfaceKey,
    PolicedInterface,
    PolicyEngine,
    compile_policies,
    lookup,
    lower_interface,
)

DEV_CLIENT_NET_A = PolicedInterface("dev", "client", "net1", "prod/net-a", (), "uid-dev-client")
TARGETS = [SERVER_NET_A, SERVER_NET_B, DEV_CLIENT_NET_A]
A, B, D = SERVER_NET_A.key, SERVER_NET_B.key, DEV_CLIENT_NET_A.key

ALLOW_CLIENTS = mnp(
    {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    }
)


def add(obj: dict[str, Any]) -> Event:
    return Event(Action.ADD, obj)


def engine_with_world(
    *extra: dict[str, Any], options: CompileOptions | None = None
) -> PolicyEngine:
    engine = PolicyEngine(options)
    assert engine.apply_all(add(o) for o in [*world(), *extra]) == set()  # no targets yet
    assert engine.set_targets(TARGETS) == {A, B, D}
    return engine


def ingress_allows(engine: PolicyEngine, key: InterfaceKey, ip: str, port: int = 80) -> bool:
    lowered = engine.lowered(key)
    assert lowered is not None
    return lookup(lowered.ingress, 4, ip, TCP, port)


def test_interface_key() -> None:
    assert InterfaceKey("uid-prod-server", "net1") == A
    assert PolicedInterface("ns", "p", "net1", "ns/n").key == InterfaceKey("ns/p", "net1")


def test_set_targets_reports_new_changed_and_removed() -> None:
    engine = engine_with_world()
    assert engine.set_targets(TARGETS) == set()
    moved = PolicedInterface("prod", "server", "net2", "prod/net-a", (), "uid-prod-server")
    # B's network changed (and B's tables with it only if a policy differs; here both
    # are unpoliced, so its digest is unchanged), D is removed.
    assert engine.set_targets([SERVER_NET_A, moved]) == {D}
    assert engine.tables(D) is None and engine.lowered(D) is None
    assert [t.key for t in engine.targets()] == sorted([A, B])
    with pytest.raises(InvalidArgument, match="listed twice"):
        engine.set_targets([SERVER_NET_A, SERVER_NET_A])


def test_policy_add_update_delete() -> None:
    engine = engine_with_world()
    assert engine.apply(add(ALLOW_CLIENTS)) == {A}  # net-a in prod: server; dev/client is in dev
    assert ingress_allows(engine, A, "10.1.0.20") and not ingress_allows(engine, A, "10.1.0.21")
    assert engine.apply(Event(Action.UPDATE, ALLOW_CLIENTS)) == set()  # same digest
    retarget = copy.deepcopy(ALLOW_CLIENTS)
    retarget["metadata"]["annotations"]["k8s.v1.cni.cncf.io/policy-for"] = "net-b"
    assert engine.apply(Event(Action.UPDATE, retarget)) == {A, B}  # leaves net-a, enters net-b
    assert engine.apply(
        Event(Action.DELETE, {"kind": "MultiNetworkPolicy", "metadata": retarget["metadata"]})
    ) == {B}
    assert engine.apply(Event(Action.DELETE, retarget)) == set()  # already gone: fine


def test_policy_update_recompiles_only_the_pods_it_selects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nicwarden.agent.policy import engine as engine_module

    other = PolicedInterface("prod", "web", "net1", "prod/net-a", (), "uid-prod-web")
    engine = engine_with_world()
    engine.set_targets([*TARGETS, other])
    compiled: list[InterfaceKey] = []
    real = engine_module.compile_interface

    def counting(state: Any, iface: PolicedInterface, options: Any) -> Any:
        compiled.append(iface.key)
        return real(state, iface, options)

    monkeypatch.setattr(engine_module, "compile_interface", counting)
    web_only = mnp({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []}, name="w")
    assert engine.apply(add(web_only)) == {other.key}
    assert compiled == [other.key]  # prod/server is on net-a too, but unselected
    compiled.clear()
    moved = mnp({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": []}, name="w")
    assert engine.apply(Event(Action.UPDATE, moved)) == {A, other.key}
    assert sorted(compiled) == sorted([A, other.key])  # left one pod, entered the other
    compiled.clear()
    everyone = mnp({"podSelector": {}, "ingress": []}, name="w")
    engine.apply(Event(Action.UPDATE, everyone))
    assert sorted(compiled) == sorted([A, other.key])  # no selector: every pod on net-a


def test_peer_relabel_updates_every_affected_interface() -> None:
    # Policies on both networks select app=client peers.
    both = mnp(ALLOW_CLIENTS["spec"], name="both", policy_for="net-a,net-b")
    dev = mnp(ALLOW_CLIENTS["spec"], name="dev", ns="dev")  # dev's interface on prod/net-a
    engine = engine_with_world(both, dev)
    client = pod(
        "prod",
        "client",
        {"app": "client", "tier": "frontend"},
        [("prod/net-a", ["10.1.0.20", "fd00:a::20"]), ("prod/net-b", ["10.2.0.20"])],
    )
    client["metadata"]["labels"] = {"app": "gone"}
    # prod/client is a peer of server on net-a and net-b; dev's policy only sees dev pods.
    assert engine.apply(Event(Action.UPDATE, client)) == {A, B}
    assert not ingress_allows(engine, A, "10.1.0.20")
    client["metadata"]["labels"] = {"app": "client"}
    assert engine.apply(Event(Action.UPDATE, client)) == {A, B}
    assert ingress_allows(engine, A, "10.1.0.20")


def test_peer_appearing_and_disappearing() -> None:
    engine = engine_with_world(ALLOW_CLIENTS)
    newcomer = pod("prod", "new", {"app": "client"}, [("prod/net-a", ["10.1.0.99"])])
    assert engine.apply(add(newcomer)) == {A}
    assert ingress_allows(engine, A, "10.1.0.99")
    # Network-status IP change (e.g. the pod restarted its sandbox).
    moved = pod("prod", "new", {"app": "client"}, [("prod/net-a", ["10.1.0.98"])])
    assert engine.apply(Event(Action.UPDATE, moved)) == {A}
    assert not ingress_allows(engine, A, "10.1.0.99") and ingress_allows(engine, A, "10.1.0.98")
    finished = pod(
        "prod", "new", {"app": "client"}, [("prod/net-a", ["10.1.0.98"])], phase="Succeeded"
    )
    assert engine.apply(Event(Action.UPDATE, finished)) == {A}
    assert engine.apply(Event(Action.DELETE, finished)) == set()
    # A pod that selects nothing changes nothing.
    assert (
        engine.apply(add(pod("prod", "bystander", {"app": "x"}, [("prod/net-a", ["10.1.0.97"])])))
        == set()
    )


def test_target_pod_relabel() -> None:
    scoped = mnp({"podSelector": {"matchLabels": {"app": "server"}}, "ingress": []})
    engine = engine_with_world(scoped)
    assert engine.tables(A) is not None and engine.tables(A).ingress.isolated  # type: ignore[union-attr]
    server = [o for o in world() if o["metadata"]["name"] == "server"][0]
    server["metadata"]["labels"] = {"app": "renamed"}
    assert engine.apply(Event(Action.UPDATE, server)) == {A}
    assert not engine.tables(A).ingress.isolated  # type: ignore[union-attr]


def test_namespace_relabel() -> None:
    by_ns = mnp(
        {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}]}],
        }
    )
    engine = engine_with_world(by_ns)
    assert ingress_allows(engine, A, "10.1.0.30")
    assert engine.apply(Event(Action.UPDATE, namespace("dev", env="staging"))) == {A}
    assert not ingress_allows(engine, A, "10.1.0.30")
    assert engine.apply(Event(Action.UPDATE, namespace("other", env="dev"))) == {A}
    assert ingress_allows(engine, A, "10.1.0.40")


def test_nad_events_change_nothing() -> None:
    engine = engine_with_world(ALLOW_CLIENTS)
    nad = {
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"namespace": "prod", "name": "net-c"},
        "spec": {},
    }
    assert engine.apply(add(nad)) == set()


def test_status_reports_validation() -> None:
    broken = mnp(
        {"podSelector": {}, "ingress": [{"from": [ipb("10.0.0.0/8", "11.0.0.0/8")]}]}, name="broken"
    )
    engine = engine_with_world(broken, mnp({"podSelector": {}}, name="inert", policy_for=None))
    assert engine.apply(add(ALLOW_CLIENTS)) == set()  # A was already deny-all (fail closed)
    status = {(s.kind, s.key): s for s in engine.status()}
    assert status[("MultiNetworkPolicy", "prod/p")].ok
    bad = status[("MultiNetworkPolicy", "prod/broken")]
    assert not bad.ok and bad.errors == (
        "MultiNetworkPolicy prod/broken: spec.ingress[0].from[0].ipBlock.except[0]: "
        "11.0.0.0/8 is not strictly inside cidr 10.0.0.0/8",
    )
    inert = status[("MultiNetworkPolicy", "prod/inert")]
    assert inert.ok and inert.warnings
    assert status[("Pod", "prod/server")].ok and status[("Namespace", "prod")].ok
    assert [s.kind for s in engine.status()] == sorted(s.kind for s in engine.status())
    tables = engine.tables(A)
    assert tables is not None and tables.errors and not ingress_allows(engine, A, "10.1.0.20")
    # Fixing the policy reopens what the other policy allows.
    fixed = mnp(
        {"podSelector": {}, "ingress": [{"from": [ipb("10.0.0.0/8", "10.9.0.0/16")]}]},
        name="broken",
    )
    assert engine.apply(Event(Action.UPDATE, fixed)) == {A}
    assert ingress_allows(engine, A, "10.1.0.20") and not ingress_allows(engine, A, "10.9.0.1")


def test_lowering_error_fails_interface_closed() -> None:
    many = mnp({"podSelector": {}, "ingress": [{"ports": [{"port": 1000 + i}]} for i in range(65)]})
    engine = engine_with_world(many)
    lowered = engine.lowered(A)
    assert lowered is not None and lowered.errors
    assert not ingress_allows(engine, A, "10.1.0.20", 1000)


def test_watch_events_and_bad_input() -> None:
    engine = engine_with_world()
    assert engine.apply(Event.from_watch("ADDED", ALLOW_CLIENTS)) == {A}
    assert engine.apply(Event.from_watch("DELETED", ALLOW_CLIENTS)) == {A}
    with pytest.raises(InvalidArgument, match="unknown watch event type"):
        Event.from_watch("BOOKMARK", ALLOW_CLIENTS)
    with pytest.raises(InvalidArgument, match="unsupported object kind"):
        engine.apply(add({"kind": "Service", "metadata": {"name": "x"}}))
    with pytest.raises(InvalidArgument, match="metadata.name"):
        engine.apply(add({"kind": "Pod", "metadata": {}}))
    with pytest.raises(InvalidArgument, match="metadata.name"):
        engine.apply(Event(Action.DELETE, {"kind": "Pod"}))
    # Kind may come from the event instead of the object.
    obj = {k: v for k, v in ALLOW_CLIENTS.items() if k != "kind"}
    assert engine.apply(Event(Action.ADD, obj, kind="MultiNetworkPolicy")) == {A}


def random_event(rng: random.Random) -> Event:
    """Random churn over a small vocabulary so objects collide and come back."""
    labels = rng.choice([{"app": "client"}, {"app": "web"}, {"app": "server"}, {}])
    nets = [("prod/net-a", [f"10.1.0.{rng.randint(1, 9)}"])] if rng.random() < 0.7 else []
    if rng.random() < 0.4:
        nets.append(("prod/net-b", [f"10.2.0.{rng.randint(1, 9)}"]))
    ns_name = rng.choice(["prod", "dev"])
    choice = rng.random()
    if choice < 0.45:
        obj = pod(
            ns_name,
            rng.choice(["server", "client", "x", "y"]),
            labels,
            nets,
            [("http", rng.choice([80, 81]), "TCP")],
        )
    elif choice < 0.6:
        obj = namespace(ns_name, env=rng.choice(["prod", "dev"]))
    else:
        peer = rng.choice(
            [
                {"podSelector": {"matchLabels": labels}},
                {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
                ipb("10.1.0.0/29", "10.1.0.4/30"),
                {
                    "podSelector": {
                        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]
                    }
                },
            ]
        )
        ports = rng.choice(
            [[], [{"port": "http"}], [{"port": 80, "endPort": 81}], [{"protocol": "UDP"}]]
        )
        direction, peers = rng.choice([("ingress", "from"), ("egress", "to")])
        rule = {peers: [peer], "ports": ports}
        if rng.random() < 0.1:
            rule["ports"] = [{"port": 80, "endPort": 79}]  # invalid: fails closed
        spec: dict[str, Any] = {
            "podSelector": rng.choice([{}, {"matchLabels": {"app": "server"}}]),
            direction: [rule],
        }
        networks = rng.choice(["prod/net-a", "prod/net-b", "prod/net-a,prod/net-b"])
        obj = mnp(spec, name=rng.choice(["p1", "p2"]), ns=ns_name, policy_for=networks)
    action = Action.DELETE if rng.random() < 0.2 else Action.ADD
    return Event(action, obj)


def test_incremental_matches_full_recompile_on_random_churn() -> None:
    rng = random.Random(99)
    targets = [
        *TARGETS,
        PolicedInterface("prod", "client", "net1", "prod/net-a", (), "uid-prod-client"),
    ]
    engine = PolicyEngine(CompileOptions(allow_icmp=True))
    engine.set_targets(targets)
    digests = {t.key: engine.digest(t.key) for t in targets}
    for _ in range(400):
        changed = engine.apply(random_event(rng))
        full = compile_policies(engine.state, targets, engine.options)
        for key, tables in full.items():
            expected = lower_interface(tables).digest()
            assert engine.digest(key) == expected
            assert (key in changed) == (digests[key] != expected)
            digests[key] = expected
