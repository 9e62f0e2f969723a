"""The pieces both object sources share: the delivery ledger (what the
consumer has seen) and the retry backoff."""

from __future__ import annotations

import random
from typing import Any

import pytest

from nicwarden.agent.backoff import Backoff, BackoffPolicy
from nicwarden.agent.k8s.kinds import RESOURCES, object_key
from nicwarden.agent.k8s.ledger import Ledger
from nicwarden.agent.policy import Event


def obj(kind: str, name: str, namespace: str | None = "prod", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": RESOURCES[kind].api_version, "kind": kind, "metadata": meta}


def recorded(ledger: Ledger) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []

    def sink(event: Event) -> None:
        out.append((str(event.action), event.kind or "", event.obj["metadata"]["name"]))

    ledger.attach(sink)
    return out  # filled as the ledger delivers


def test_upsert_delivers_add_then_update_and_skips_exact_repeats() -> None:
    ledger = Ledger()
    seen = recorded(ledger)
    key = ("Pod", "prod", "web")
    assert ledger.upsert(key, obj("Pod", "web", app="a"))
    assert not ledger.upsert(key, obj("Pod", "web", app="a"))  # a replayed watch event
    assert ledger.upsert(key, obj("Pod", "web", app="b"))
    assert ledger.remove(key)
    assert not ledger.remove(key)  # unknown to the consumer: nothing to delete
    assert seen == [("add", "Pod", "web"), ("update", "Pod", "web"), ("delete", "Pod", "web")]


def test_remove_delivers_the_final_state_when_given() -> None:
    ledger = Ledger()
    finals: list[dict[str, Any]] = []
    ledger.attach(lambda e: finals.append(dict(e.obj)))
    key = ("Pod", "prod", "web")
    ledger.upsert(key, obj("Pod", "web", v="1"))
    ledger.remove(key, obj("Pod", "web", v="2"))
    assert [f["metadata"]["labels"] for f in finals] == [{"v": "1"}, {"v": "2"}]


def test_replace_diffs_only_the_given_kinds_upserts_before_deletes() -> None:
    ledger = Ledger()
    seen = recorded(ledger)
    ledger.replace(
        ("Pod", "MultiNetworkPolicy"),
        {
            ("Pod", "prod", "a"): obj("Pod", "a"),
            ("Pod", "prod", "b"): obj("Pod", "b"),
            ("MultiNetworkPolicy", "prod", "old"): obj("MultiNetworkPolicy", "old"),
        },
    )
    ledger.upsert(("Namespace", "", "prod"), obj("Namespace", "prod", None))
    seen.clear()
    count = ledger.replace(
        ("Pod", "MultiNetworkPolicy"),
        {
            ("Pod", "prod", "b"): obj("Pod", "b", changed="yes"),
            ("MultiNetworkPolicy", "prod", "new"): obj("MultiNetworkPolicy", "new"),
        },
    )
    # The Namespace is another kind: untouched. The renamed policy is added
    # before the old one is deleted, so its pods are never unisolated.
    assert seen == [
        ("update", "Pod", "b"),
        ("add", "MultiNetworkPolicy", "new"),
        ("delete", "Pod", "a"),
        ("delete", "MultiNetworkPolicy", "old"),
    ]
    assert count == 4
    assert set(ledger.known("Namespace")) == {("Namespace", "", "prod")}


def test_object_key_defaults_namespace_and_needs_a_name() -> None:
    assert object_key("Pod", obj("Pod", "web", None)) == ("Pod", "default", "web")
    assert object_key("Namespace", obj("Namespace", "prod", "ignored")) == ("Namespace", "", "prod")
    assert object_key("Pod", {"metadata": {}}) is None
    assert object_key("Pod", {"metadata": "nope"}) is None


def test_backoff_doubles_to_the_cap_within_jitter_and_resets() -> None:
    policy = BackoffPolicy(initial=1.0, cap=8.0, factor=2.0, jitter=0.5)
    backoff = Backoff(policy, random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_backoff_without_jitter_is_exact_and_survives_long_outages() -> None:
    backoff = Backoff(BackoffPolicy(initial=0.1, cap=30.0, jitter=0.0))
    assert [round(backoff.next_delay(), 6) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    for _ in range(5000):  # no float overflow after days of failures
        last = backoff.next_delay()
    assert last == 30.0


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 2, "cap": 1}, {"factor": 0.5}, {"jitter": 1.5}]
)
def test_backoff_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)
