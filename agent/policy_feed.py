"""Between an object source and the policy enforcer: a bounded queue that
coalesces events per object, drained by one worker in small batches.

Without it the source's own thread runs the policy engine under the
enforcer's lock, so a relist of 100,000 pods after a 410, or a burst of
thousands of watch events, holds CNI ADD/DEL (which take the same lock) for
the whole burst. Here the source only enqueues. The worker takes the lock
for a batch sized to a few milliseconds of work, and the enforcer lets a
waiting CNI call go first between batches. When ``max_objects`` distinct
objects are queued the source's thread blocks: a backlog pushes back on
the API reader, never on CNI. Locks are not the whole story in one Python
process: the worker and the source also stand aside while a CNI request
runs (``Priority``), for a bounded time.

Coalescing. A consumer holds, per object (kind, namespace, name), either
nothing or the object's last state, and ADD and UPDATE both mean "it is
now this" (the policy engine treats them alike). So the events queued for
one object since the consumer last saw it reduce to one: the last object,
with an action that depends only on the first and the last event:

    first ADD,    last ADD/UPDATE  -> ADD      (the consumer never had it)
    first ADD,    last DELETE      -> nothing  (it never needs to know)
    first other,  last ADD/UPDATE  -> UPDATE   (DELETE then ADD included)
    first other,  last DELETE      -> DELETE

One difference remains: an object the engine rejects (it cannot be parsed)
after a valid one leaves the earlier valid state in force when applied in
order, and the state before both when coalesced. Either way the engine
logs it and the bad object is not enforced.

A merged event keeps its place in the queue and its first event's enqueue
time (the lag metric is honest), except that an object turning into a
DELETE moves to the back: sources deliver upserts before deletes (a renamed
policy is added before the old one goes, so its pods never fail open), and
coalescing must not undo that order.

Readiness. ``synced`` is true only once the source has delivered its initial
state and every event of it has been applied, so a pod reports ready when
its policies are enforced, not when they were merely received.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nicwarden.agent.policy import Action, Event

if TYPE_CHECKING:
    # Types only: the k8s package pulls in the Kubernetes client, which a
    # directory-fed (standalone) agent never needs.
    from nicwarden.agent.k8s.source import ObjectSource, Sink, SourceProblem

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # kind, namespace, name
BatchSink = Callable[[Sequence[Event]], None]

# Distinct objects queued before the source blocks. A slot costs an Event and
# a reference to an object the source built anyway: small next to the cluster.
DEFAULT_MAX_OBJECTS = 4096
# How long one batch should hold the enforcer's lock: what a CNI call that
# arrives during a batch waits at most.
DEFAULT_BATCH_BUDGET_S = 0.005
DEFAULT_MAX_BATCH = 256
# How long the feed stands aside for priority work at most (longer than a
# CNI ADD takes), then goes ahead regardless for a while: a steady stream of
# CNI calls slows enforcement down but never stops it.
DEFAULT_YIELD_S = 0.2
DEFAULT_PASS_S = 0.05
_STOP_TIMEOUT_S = 10.0


class Priority:
    """Work that must not share the CPU with the policy source: CNI
    requests. One Python process has one interpreter lock, so a reflector
    parsing a relist's pages, or a worker applying events, slows a CNI call
    even when it holds none of the call's locks: each blocking syscall the
    call makes releases the lock, and getting it back from a busy thread
    takes up to ``sys.getswitchinterval()`` (5 ms). So the source's threads
    wait, between items, until no such work runs.

    A wait lasts ``max_wait_s`` at most; then everyone goes ahead for
    ``pass_s``, so a steady stream of CNI calls slows how fast the policy
    source is followed (to a fifth at worst, by default), and never stops it.
    The call that gives up always returns, so even a thread that gets no
    CPU in a pass moves one item per ``max_wait_s``."""

    def __init__(
        self, max_wait_s: float | None = DEFAULT_YIELD_S, pass_s: float = DEFAULT_PASS_S
    ) -> None:
        """``max_wait_s=None``: wait as long as priority work runs (for work
        that must never overtake it, not for a source that must not starve)."""
        if (max_wait_s is not None and max_wait_s < 0) or pass_s <= 0:
            raise ValueError("need max_wait_s >= 0 (or None) and pass_s > 0")
        self.max_wait_s = max_wait_s
        self.pass_s = pass_s
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._pass_until = 0.0
        self.waits = 0  # wait_idle calls that found priority work running
        self.passes = 0  # of them, those that gave up waiting
        self.waited_s = 0.0

    @property
    def active(self) -> int:
        """Priority calls running (or waiting for their locks) now."""
        return self._running

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    def wait_idle(self) -> None:
        """Called very often (between the items of a page), so it costs one
        attribute read when nothing runs."""
        if not self._running:
            return
        with self._cond:
            if not self._running:
                return
            now = time.monotonic()
            if now < self._pass_until:
                return
            self.waits += 1
            if self.max_wait_s is None:
                try:
                    self._cond.wait_for(lambda: not self._running)
                finally:
                    self.waited_s += time.monotonic() - now
                return
            deadline = now + self.max_wait_s
            try:
                while self._running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.passes += 1
                        self._pass_until = time.monotonic() + self.pass_s
                        return
                    self._cond.wait(left)
            finally:
                self.waited_s += time.monotonic() - now


def event_key(event: Event) -> Key:
    meta = event.obj.get("metadata") or {}
    kind = event.kind or str(event.obj.get("kind", ""))
    return (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def merge(first: Action, last: Action) -> Action | None:
    """The one action equivalent to a run of events from ``first`` to
    ``last`` for one object; None when the run changes nothing."""
    if last is Action.DELETE:
        return None if first is Action.ADD else Action.DELETE
    return Action.ADD if first is Action.ADD else Action.UPDATE


@dataclass
class _Slot:
    first: Action  # the first action since the consumer last saw the object
    event: Event  # what will be delivered: the last object, the merged action
    seq: int  # the first event's sequence number
    since: float  # monotonic time of the first event


@dataclass(frozen=True)
class FeedStats:
    queued: int  # objects waiting, the batch being applied included
    lag_s: float  # age of the oldest of them, 0 when none
    received: int
    applied: int
    coalesced: int  # events merged into one already queued (cancelled ones included)
    blocked_s: float  # time the source spent waiting for room
    synced: bool
    synced_at: float | None  # wall time the initial state was applied
    last_applied_at: float | None  # wall time of the last applied batch


class PolicyFeed:
    """An ObjectSource wrapping another one; see the module docstring."""

    def __init__(
        self,
        source: ObjectSource,
        *,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        batch_budget_s: float = DEFAULT_BATCH_BUDGET_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        priority: Priority | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_objects < 1 or max_batch < 1 or batch_budget_s <= 0:
            raise ValueError("need max_objects >= 1, max_batch >= 1 and batch_budget_s > 0")
        self.source = source
        self.max_objects = max_objects
        self.batch_budget_s = batch_budget_s
        self.max_batch = max_batch
        self.priority = priority
        self._clock = clock
        self._cond = threading.Condition()  # guards everything below
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()
        # (seq, key) per slot created, oldest first; entries whose slot is
        # gone are dropped lazily. Finds the oldest slot although DELETEs
        # move to the back.
        self._ages: deque[tuple[int, Key]] = deque()
        self._seq = 0
        self._inflight: list[_Slot] = []
        self._inflight_since: float | None = None
        self._mark: int | None = None  # last seq of the initial state
        self._initial_left = 0
        self._synced_at: float | None = None
        self._last_applied_at: float | None = None
        self._received = self._applied = self._coalesced = 0
        self._blocked_s = 0.0
        self._per_event_s = 0.001  # running estimate, sizes the batches
        self._stopping = False
        self._apply: BatchSink | None = None
        self._worker: threading.Thread | None = None

    # -- ObjectSource -----------------------------------------------------

    def start(self, sink: Sink) -> None:
        def each(events: Sequence[Event]) -> None:
            for event in events:
                try:
                    sink(event)
                except Exception:
                    log.exception("object sink failed", extra={"action": str(event.action)})

        self.start_batched(each)

    def start_batched(self, apply: BatchSink) -> None:
        """Like ``start``, with a sink that takes a whole batch (so it can
        take its lock once per batch). One use: a stopped feed stays stopped,
        because the events it dropped when stopping are delivered, as far as
        the source knows."""
        if self._worker is not None or self._stopping:
            raise RuntimeError("PolicyFeed can be started once")
        self._apply = apply
        self._worker = threading.Thread(target=self._run, name="policy-feed", daemon=True)
        self._worker.start()
        self.source.start(self.put)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True  # frees a source thread blocked in put()
            self._cond.notify_all()
        self.source.stop()
        if self._worker is not None:
            self._worker.join(_STOP_TIMEOUT_S)
            if self._worker.is_alive():
                log.warning("policy feed worker did not stop")

    def synced(self) -> bool:
        with self._cond:
            if self._synced_at is not None:
                return True
            if self._mark is not None:
                return False
        # Outside our lock: the source's may be held by a thread in put().
        if not self.source.synced():
            return False
        with self._cond:
            if self._mark is None:
                # Everything the source delivered so far is its initial state.
                self._mark = self._seq
                self._initial_left = len(self._slots) + len(self._inflight)
                if self._initial_left == 0:
                    self._synced_at = time.time()
            return self._synced_at is not None

    def problems(self) -> list[SourceProblem]:
        return self.source.problems()

    # -- the source's side ------------------------------------------------

    def put(self, event: Event) -> None:
        """The sink the wrapped source calls; blocks while the queue is full
        and (briefly) while priority work runs."""
        if self.priority is not None:
            self.priority.wait_idle()
        key = event_key(event)
        with self._cond:
            if self._stopping:
                return
            self._received += 1
            waited_from: float | None = None
            try:
                while True:
                    slot = self._slots.get(key)
                    if slot is not None:
                        self._merge(key, slot, event)
                        return
                    if len(self._slots) < self.max_objects:
                        break
                    if waited_from is None:
                        waited_from = self._clock()
                    self._cond.wait()
                    if self._stopping:
                        return
            finally:
                if waited_from is not None:
                    self._blocked_s += self._clock() - waited_from
            self._seq += 1
            self._slots[key] = _Slot(event.action, event, self._seq, self._clock())
            self._ages.append((self._seq, key))
            self._cond.notify_all()

    def _merge(self, key: Key, slot: _Slot, event: Event) -> None:
        self._coalesced += 1
        action = merge(slot.first, event.action)
        if action is None:
            del self._slots[key]
            self._gone(slot)
            self._cond.notify_all()  # room for a blocked source
            return
        if action is Action.DELETE and slot.event.action is not Action.DELETE:
            self._slots.move_to_end(key)
        slot.event = Event(action, event.obj, event.kind)

    # -- the worker -------------------------------------------------------

    def _run(self) -> None:
        assert self._apply is not None
        while True:
            with self._cond:
                while not self._slots and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            if self.priority is not None:
                self.priority.wait_idle()
            batch = self.take()
            started = self._clock()
            try:
                self._apply(batch)
            except Exception:
                log.exception("policy feed batch failed", extra={"events": len(batch)})
            self.done(len(batch), self._clock() - started)

    def take(self) -> list[Event]:
        """The worker's first step: the next batch, sized to the time budget
        by what events have cost so far. Public so tests can drive a feed
        without its thread."""
        with self._cond:
            size = int(self.batch_budget_s / max(self._per_event_s, 1e-6))
            size = max(0, min(self.max_batch, size or 1, len(self._slots)))
            slots = [self._slots.popitem(last=False)[1] for _ in range(size)]
            self._inflight = slots
            self._inflight_since = min((s.since for s in slots), default=None)
            self._cond.notify_all()  # room for a blocked source
            return [s.event for s in slots]

    def done(self, count: int, took_s: float) -> None:
        """The worker's second step: the batch ``take`` gave was applied."""
        with self._cond:
            slots, self._inflight, self._inflight_since = self._inflight, [], None
            if count:
                self._per_event_s = 0.8 * self._per_event_s + 0.2 * took_s / count
            self._applied += len(slots)
            self._last_applied_at = time.time()
            for slot in slots:
                self._gone(slot)
            self._oldest()  # keeps _ages short
            pending_mark = self._mark is None
        if pending_mark:
            self.synced()  # latch readiness even if nobody asks

    def _gone(self, slot: _Slot) -> None:
        """A slot left the queue: applied, or cancelled."""
        if self._mark is not None and self._synced_at is None and slot.seq <= self._mark:
            self._initial_left -= 1
            if self._initial_left == 0:
                self._synced_at = time.time()
                log.info("policy source's initial state applied", extra={"events": self._mark})

    def _oldest(self) -> float | None:
        while self._ages:
            seq, key = self._ages[0]
            slot = self._slots.get(key)
            if slot is not None and slot.seq == seq:
                return slot.since
            self._ages.popleft()
        return None

    # -- reporting --------------------------------------------------------

    def stats(self) -> FeedStats:
        with self._cond:
            oldest = [t for t in (self._oldest(), self._inflight_since) if t is not None]
            lag = max(0.0, self._clock() - min(oldest)) if oldest else 0.0
            return FeedStats(
                queued=len(self._slots) + len(self._inflight),
                lag_s=lag,
                received=self._received,
                applied=self._applied,
                coalesced=self._coalesced,
                blocked_s=self._blocked_s,
                synced=self._synced_at is not None,
                synced_at=self._synced_at,
                last_applied_at=self._last_applied_at,
            )
