"""The policy feed: coalescing keeps the consumer's end state, the queue's
bound holds (the source waits, nothing is lost), lag is the oldest queued
event's age, and readiness waits for the initial state to be applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicwarden.agent.k8s.source import Sink, SourceProblem
from nicwarden.agent.policy import Action, Event
from nicwarden.agent.policy_feed import PolicyFeed, Priority, event_key, merge

Key = tuple[str, str, str]


class FakeSource:
    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.is_synced = False
        self.stopped = False

    def start(self, sink: Sink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.stopped = True

    def synced(self) -> bool:
        return self.is_synced

    def problems(self) -> list[SourceProblem]:
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def obj(key: Key, version: int) -> dict[str, Any]:
    kind, ns, name = key
    meta: dict[str, Any] = {"name": name, "resourceVersion": str(version)}
    if ns:
        meta["namespace"] = ns
    return {"kind": kind, "metadata": meta}


class Consumer:
    """A consumer as strict as the source contract lets one be: ADD only
    for an object it lacks, UPDATE and DELETE only for one it has."""

    def __init__(self) -> None:
        self.state: dict[Key, dict[str, Any]] = {}
        self.log: list[tuple[Action, Key]] = []

    def apply(self, events: Sequence[Event]) -> None:
        for e in events:
            key = event_key(e)
            self.log.append((e.action, key))
            if e.action is Action.ADD:
                assert key not in self.state, f"ADD of {key}, which the consumer has"
                self.state[key] = dict(e.obj)
            elif e.action is Action.UPDATE:
                assert key in self.state, f"UPDATE of {key}, which the consumer lacks"
                self.state[key] = dict(e.obj)
            else:
                assert key in self.state, f"DELETE of {key}, which the consumer lacks"
                del self.state[key]


def drain(feed: PolicyFeed, consumer: Consumer, batches: int | None = None) -> None:
    n = 0
    while feed.stats().queued and (batches is None or n < batches):
        consumer.apply(feed.take())
        feed.done(1, 0.0)
        n += 1


KEYS: list[Key] = [
    ("Pod", "a", "p1"),
    ("Pod", "a", "p2"),
    ("Pod", "b", "p1"),
    ("Namespace", "", "a"),
    ("MultiNetworkPolicy", "a", "deny"),
    ("NetworkAttachmentDefinition", "a", "net"),
]

# An op: an event for KEYS[i] (its action follows from whether the source
# has the object: ADD when it lacks it, else UPDATE or, if `gone`, DELETE),
# or a drain of up to n batches by the consumer.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.integers(0, len(KEYS) - 1), st.booleans()),
        st.tuples(st.just("drain"), st.integers(1, 3), st.booleans()),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, bound=st.integers(1, 4), batch=st.integers(1, 3))
def test_coalesced_stream_ends_where_every_event_would(
    ops: list[tuple[str, int, bool]], bound: int, batch: int
) -> None:
    feed = PolicyFeed(FakeSource(), max_objects=bound, max_batch=batch, clock=Clock())
    coalesced, every = Consumer(), Consumer()
    source: dict[Key, int] = {}  # what the source has delivered: key -> version
    version = 0
    for op, arg, gone in ops:
        if op == "drain":
            drain(feed, coalesced, arg)
            continue
        key = KEYS[arg]
        version += 1
        if key not in source:
            event = Event(Action.ADD, obj(key, version), key[0])
            source[key] = version
        elif gone:
            event = Event(Action.DELETE, obj(key, source.pop(key)), key[0])
        else:
            event = Event(Action.UPDATE, obj(key, version), key[0])
            source[key] = version
        every.apply([event])
        if len(feed._slots) >= bound and event_key(event) not in feed._slots:
            drain(feed, coalesced, 1)  # the source would block here; the worker frees room
        feed.put(event)
        assert len(feed._slots) <= bound
    drain(feed, coalesced)
    assert coalesced.state == every.state
    assert {k: int(o["metadata"]["resourceVersion"]) for k, o in coalesced.state.items()} == source
    # Never more events than went in; fewer whenever any coalesced.
    st_ = feed.stats()
    assert st_.applied == len(coalesced.log) <= len(every.log) == st_.received
    assert st_.queued == 0 and st_.lag_s == 0.0


@pytest.mark.parametrize(
    ("first", "last", "want"),
    [
        (Action.ADD, Action.UPDATE, Action.ADD),
        (Action.ADD, Action.DELETE, None),
        (Action.UPDATE, Action.UPDATE, Action.UPDATE),
        (Action.UPDATE, Action.DELETE, Action.DELETE),
        (Action.DELETE, Action.ADD, Action.UPDATE),
        (Action.DELETE, Action.DELETE, Action.DELETE),
    ],
)
def test_merge_table(first: Action, last: Action, want: Action | None) -> None:
    assert merge(first, last) is want


def test_add_then_delete_of_an_unseen_object_costs_nothing() -> None:
    feed = PolicyFeed(FakeSource(), clock=Clock())
    key = ("Pod", "a", "ghost")
    feed.put(Event(Action.ADD, obj(key, 1), "Pod"))
    feed.put(Event(Action.UPDATE, obj(key, 2), "Pod"))
    feed.put(Event(Action.DELETE, obj(key, 2), "Pod"))
    assert feed.take() == []
    st_ = feed.stats()
    assert (st_.received, st_.coalesced, st_.queued) == (3, 2, 0)


def test_a_policy_turned_delete_goes_after_upserts_queued_before_it() -> None:
    """A rename: old policy updated, new one added, old one deleted. In order
    the new policy is in force before the old one goes; coalescing must not
    apply the delete first (its pods would briefly fail open)."""
    feed = PolicyFeed(FakeSource(), clock=Clock())
    old, new = ("MultiNetworkPolicy", "a", "old"), ("MultiNetworkPolicy", "a", "new")
    feed.put(Event(Action.UPDATE, obj(old, 1), old[0]))
    feed.put(Event(Action.ADD, obj(new, 2), new[0]))
    feed.put(Event(Action.DELETE, obj(old, 1), old[0]))
    order = [(e.action, event_key(e)) for e in feed.take()]
    assert order == [(Action.ADD, new), (Action.DELETE, old)]


def test_lag_is_the_oldest_queued_event_age() -> None:
    clock = Clock()
    feed = PolicyFeed(FakeSource(), max_batch=1, clock=clock)
    a, b = ("Pod", "a", "a"), ("Pod", "a", "b")
    assert feed.stats().lag_s == 0.0
    feed.put(Event(Action.ADD, obj(a, 1), "Pod"))
    clock.now += 5
    feed.put(Event(Action.UPDATE, obj(b, 2), "Pod"))  # one the consumer has
    clock.now += 5
    assert feed.stats().lag_s == 10.0
    feed.put(Event(Action.UPDATE, obj(a, 3), "Pod"))  # coalesced: keeps a's first time
    clock.now += 2
    assert feed.stats().lag_s == 12.0
    (event,) = feed.take()  # a, in flight: still counts
    assert event.obj["metadata"]["resourceVersion"] == "3"
    assert feed.stats().lag_s == 12.0
    feed.done(1, 0.001)
    assert (feed.stats().lag_s, feed.stats().queued) == (7.0, 1)
    feed.put(Event(Action.DELETE, obj(b, 2), "Pod"))  # b turns DELETE: moves, keeps age
    assert feed.stats().lag_s == 7.0
    (event,) = feed.take()
    assert event.action is Action.DELETE
    feed.done(1, 0.001)
    assert (feed.stats().lag_s, feed.stats().queued) == (0.0, 0)


def test_synced_only_once_the_initial_state_is_applied() -> None:
    source = FakeSource()
    feed = PolicyFeed(source, max_batch=2, clock=Clock())
    keys = [("Pod", "a", f"p{i}") for i in range(5)]
    for i, key in enumerate(keys):
        feed.put(Event(Action.ADD, obj(key, i), "Pod"))
    assert not feed.synced()  # the source is still listing
    source.is_synced = True
    assert not feed.synced()  # listed, but 5 events wait
    feed.take()
    feed.done(2, 0.0)
    # Events after the initial state do not hold readiness back.
    feed.put(Event(Action.ADD, obj(("Pod", "b", "late"), 9), "Pod"))
    feed.put(Event(Action.DELETE, obj(keys[4], 4), "Pod"))  # cancels an initial one
    assert not feed.synced()
    batch = feed.take()  # keys[2], keys[3]: the last of the initial state
    assert [event_key(e) for e in batch] == keys[2:4]
    assert not feed.synced()  # in flight is not applied
    feed.done(2, 0.0)
    assert feed.synced()
    st_ = feed.stats()
    assert st_.synced and st_.synced_at is not None and st_.queued == 1


def test_a_full_queue_blocks_the_source_not_the_worker() -> None:
    """A source thread pushes 2,000 events for 500 objects through a queue
    of 8 while the consumer is slow: it waits (time counted), the bound
    holds at every batch, and the consumer ends with the source's state."""
    source = FakeSource()
    feed = PolicyFeed(source, max_objects=8, max_batch=4)
    consumer = Consumer()
    seen_queued: list[int] = []

    def apply(events: Sequence[Event]) -> None:
        seen_queued.append(len(feed._slots))
        time.sleep(0.0005)
        consumer.apply(events)

    feed.start_batched(apply)
    assert source.sink is not None
    want: dict[Key, int] = {}
    version = 0

    def produce() -> None:
        nonlocal version
        assert source.sink is not None
        for round_ in range(4):
            for i in range(500):
                key = ("Pod", f"ns{i % 7}", f"p{i}")
                version += 1
                if key in want and round_ == 2 and i % 3 == 0:
                    source.sink(Event(Action.DELETE, obj(key, want.pop(key)), "Pod"))
                    continue
                action = Action.UPDATE if key in want else Action.ADD
                source.sink(Event(action, obj(key, version), "Pod"))
                want[key] = version

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(60)
    assert not producer.is_alive()
    source.is_synced = True
    deadline = time.monotonic() + 30
    while not feed.synced():
        assert time.monotonic() < deadline, feed.stats()
        time.sleep(0.01)
    feed.stop()
    assert source.stopped
    assert max(seen_queued) <= 8
    st_ = feed.stats()
    assert st_.blocked_s > 0 and st_.received == 2000 and st_.queued == 0
    assert {k: int(o["metadata"]["resourceVersion"]) for k, o in consumer.state.items()} == want


def test_stop_frees_a_blocked_source() -> None:
    source = FakeSource()
    feed = PolicyFeed(source, max_objects=1)
    release = threading.Event()
    feed.start_batched(lambda events: release.wait(10))
    assert source.sink is not None
    sink = source.sink
    # One in flight (the worker is stuck in apply), one queued: the third waits.
    done = threading.Event()

    def produce() -> None:
        for i in range(3):
            sink(Event(Action.ADD, obj(("Pod", "a", f"p{i}"), i), "Pod"))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set()
    stopper = threading.Thread(target=feed.stop)
    stopper.start()
    assert done.wait(5)
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    with pytest.raises(RuntimeError):
        feed.start_batched(lambda events: None)


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"max_objects": 0}, {"max_batch": 0}, {"batch_budget_s": 0}):
        with pytest.raises(ValueError):
            PolicyFeed(FakeSource(), **kwargs)  # type: ignore[arg-type]


def test_priority_holds_the_feed_while_cni_runs_but_never_for_good() -> None:
    patient = Priority(max_wait_s=30)
    returned = threading.Event()
    with patient.running():
        waiter = threading.Thread(target=lambda: (patient.wait_idle(), returned.set()))
        waiter.start()
        time.sleep(0.2)
        assert not returned.is_set()  # held while priority work runs
    assert returned.wait(5)  # and let go when it ends
    waiter.join(5)

    impatient = Priority(max_wait_s=0.01, pass_s=30)
    with impatient.running():
        impatient.wait_idle()  # gives up waiting: the feed is never stopped for good
        impatient.wait_idle()  # within the pass: goes ahead
    impatient.wait_idle()  # idle: at once
