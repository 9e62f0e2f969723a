"""PolicyEnforcer behind a PolicyFeed: the same end state as direct delivery,
priming (and so readiness) only once the initial state is applied, CNI calls
ahead of the feed's next batch, and the ``policy-source`` health component."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_policy_enforcer import (
    ALLOW_CLIENTS,
    CLIENT_IP,
    OTHER_IP,
    FakeDatapath,
    FakeSource,
    cluster,
    put_ready,
    wait_for,
)
from test_policy_helpers import pod

from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.k8s.source import SourceProblem
from nicwarden.agent.policy import Action, Event
from nicwarden.agent.policy_feed import PolicyFeed
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def test_through_the_feed_tables_match_and_priming_waits_for_the_backlog(store: Store) -> None:
    dp, source = FakeDatapath(), FakeSource()
    feed = PolicyFeed(source, max_batch=2)
    enforcer = PolicyEnforcer(store, dp, feed)
    gate = threading.Event()
    real = enforcer.on_events

    def held(events: Any) -> None:
        gate.wait(10)
        real(events)

    enforcer.on_events = held  # type: ignore[method-assign]
    enforcer.start()
    try:
        # Churn the feed coalesces: 50 relabels of one peer, last one wins.
        source.deliver(Action.ADD, *cluster(), ALLOW_CLIENTS)
        for i in range(50):
            source.deliver(Action.UPDATE, pod("prod", "other", {"app": f"x{i}"}))
        source.deliver(
            Action.UPDATE, pod("prod", "other", {"app": "client"}, [("prod/net-a", [OTHER_IP])])
        )
        enforcer.on_attach(put_ready(store))
        source.is_synced = True
        time.sleep(0.2)
        assert not enforcer.primed and not feed.synced()  # listed, not yet applied
        assert dp.calls == []
        gate.set()
        wait_for(lambda: enforcer.primed, "the enforcer to prime")
        assert dp.allows("net1", CLIENT_IP) and dp.allows("net1", OTHER_IP)
        st = feed.stats()
        assert st.synced and st.queued == 0 and st.coalesced >= 50
    finally:
        enforcer.stop()
    assert source.stopped


def test_a_waiting_cni_call_goes_before_the_next_batch(store: Store) -> None:
    dp, source = FakeDatapath(), FakeSource()
    feed = PolicyFeed(source)
    enforcer = PolicyEnforcer(store, dp, feed)
    order: list[str] = []
    on_event, remember = enforcer.on_event, enforcer._remember

    def record_event(event: Event) -> None:
        order.append("feed")
        on_event(event)

    def record_attach(att: Any) -> None:
        order.append("cni")
        remember(att)

    enforcer.on_event = record_event  # type: ignore[method-assign]
    enforcer._remember = record_attach  # type: ignore[method-assign]
    source.is_synced = True
    enforcer.start()
    try:
        wait_for(lambda: enforcer.primed, "the enforcer to prime")
        att = put_ready(store)
        with enforcer._lock:  # a batch in progress
            cni = threading.Thread(target=enforcer.on_attach, args=(att,))
            cni.start()
            wait_for(lambda: enforcer._cni.active == 1, "the CNI call to wait")
            source.deliver(Action.ADD, *cluster())  # the next batch
            wait_for(lambda: not feed._slots, "the worker to take its batch")
            time.sleep(0.1)
        cni.join(10)
        wait_for(lambda: feed.stats().applied == len(cluster()), "the batch")
        assert order[0] == "cni" and order.count("feed") == len(cluster())
    finally:
        enforcer.stop()


class _Feed:
    def __init__(self, synced: bool, queued: int, lag: float, problems: list[str]) -> None:
        self._st = SimpleNamespace(
            synced=synced, queued=queued, lag_s=lag, last_applied_at=time.time() - 3
        )
        self._problems = [SourceProblem("", "pods", p) for p in problems]

    def synced(self) -> bool:
        return bool(self._st.synced)

    def stats(self) -> Any:
        return self._st

    def problems(self) -> list[SourceProblem]:
        return self._problems


def test_policy_source_health() -> None:
    health = AgentRuntime._source_health
    rt: Any = SimpleNamespace(enforcer=None, policy_feed=None)
    assert health(rt) == ("policy-source", False, "not started")
    rt.enforcer = object()
    assert health(rt) == ("policy-source", True, "no object source configured")
    rt.policy_feed = _Feed(False, 1200, 4.25, ["list failed: HTTP 500"])
    name, ok, detail = health(rt)
    assert not ok
    assert detail == "syncing: 1200 events queued, lag 4.2 s; pods: list failed: HTTP 500"
    rt.policy_feed = _Feed(True, 3, 0.5, [])
    name, ok, detail = health(rt)
    assert ok and detail == "synced, last event 3 s ago, 3 events queued, lag 0.5 s"
