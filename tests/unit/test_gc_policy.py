"""The agent runs its old generation's collections on its own schedule."""

from __future__ import annotations

import gc
import weakref

import pytest

from nicwarden.agent.gc_policy import FullCollections


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_collection_runs_once_per_interval() -> None:
    clock, calls = Clock(), []
    fc = FullCollections(10.0, collect=lambda gen: calls.append(gen) or 0, clock=clock)
    assert not fc.tick()
    clock.now += 9.9
    assert not fc.tick()
    clock.now += 0.2
    assert fc.tick() and calls == [2]
    assert not fc.tick()  # the next one is a whole interval later
    clock.now += 10.0
    assert fc.tick() and calls == [2, 2] and fc.runs == 2


def test_install_turns_automatic_full_collections_off_and_uninstall_restores() -> None:
    before = gc.get_threshold()
    fc = FullCollections()
    fc.install()
    try:
        t0, t1, t2 = gc.get_threshold()
        assert (t0, t1) == before[:2] and t2 >= 1 << 30
        fc.install()  # idempotent: the saved thresholds stay the original ones
    finally:
        fc.uninstall()
    assert gc.get_threshold() == before
    fc.uninstall()
    assert gc.get_threshold() == before


def test_old_cyclic_garbage_waits_for_the_scheduled_collection() -> None:
    class Node:
        pass

    clock = Clock()
    fc = FullCollections(30.0, clock=clock)
    gc.collect()
    fc.install()
    try:
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]
        ref = weakref.ref(cycle)
        gc.collect(1)  # survives the young collections: now in the old generation
        del cycle
        for _ in range(200):  # plenty of young collections; none is full
            [[] for _ in range(5000)]
        gc.collect(1)
        assert ref() is not None
        clock.now += 30.0
        assert fc.tick()
        assert ref() is None
    finally:
        fc.uninstall()


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        FullCollections(0)
