"""Dropped-flow records, resolved to pods and fanned out to subscribers.

The ring reader (``agent/host/bpf_events.py``) hands each kernel record to
``DropEventHub.publish``; the hub names the pod, network and policies behind
the record's interface key (through a resolver the enforcer provides), keeps a
bounded history for ``--since`` and gives every subscriber its own bounded
queue. A slow subscriber loses its oldest records, counted, and never slows
the reader or the other subscribers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nicwarden.agent.errors import Busy
from nicwarden.agent.host.bpf_events import DropRecord

HISTORY = 4096  # records kept for subscribers asking for the recent past
QUEUE = 1024  # per-subscriber backlog before the oldest records go
# Each stream holds one of the gRPC server's 8 worker threads: leave most
# of them to the other RPCs.
MAX_SUBSCRIBERS = 4


@dataclass(frozen=True)
class IfaceOwner:
    namespace: str
    pod: str
    network: str
    ifname: str
    policies: tuple[str, ...]  # "ns/name" of the policies selecting the interface


@dataclass(frozen=True)
class ObservedFlow:
    time: float  # wall clock (seconds since the epoch)
    record: DropRecord
    owner: IfaceOwner | None  # None: the interface is no longer known

    @property
    def verdict(self) -> str:
        return "dropped" if self.record.verdict.name.startswith("DROP") else "allowed"


Resolver = Callable[[int], IfaceOwner | None]


class Subscription:
    def __init__(self, hub: DropEventHub, size: int) -> None:
        self._hub = hub
        self._q: deque[ObservedFlow] = deque()
        self._size = size
        self._cv = threading.Condition()
        self.dropped = 0  # records this subscriber lost by being slow
        self.closed = False

    def _put(self, flow: ObservedFlow) -> None:
        with self._cv:
            if len(self._q) >= self._size:
                self._q.popleft()
                self.dropped += 1
            self._q.append(flow)
            self._cv.notify()

    def get(self, timeout: float) -> list[ObservedFlow]:
        """Everything queued, waiting up to ``timeout`` for the first one."""
        with self._cv:
            if not self._q and not self.closed:
                self._cv.wait(timeout)
            out = list(self._q)
            self._q.clear()
            return out

    def close(self) -> None:
        self._hub._unsubscribe(self)
        with self._cv:
            self.closed = True
            self._cv.notify_all()


class DropEventHub:
    def __init__(self, resolver: Resolver, history: int = HISTORY) -> None:
        self._resolver = resolver
        self._lock = threading.Lock()
        self._history: deque[ObservedFlow] = deque(maxlen=history)
        self._subs: list[Subscription] = []
        # bpf_ktime_get_ns is CLOCK_MONOTONIC: convert once, at publish.
        self.received = 0
        self.subscriber_drops = 0

    def publish(self, rec: DropRecord) -> None:
        wall = time.time() - (time.monotonic_ns() - rec.ts_ns) / 1e9
        flow = ObservedFlow(wall, rec, self._resolver(rec.iface))
        with self._lock:
            self.received += 1
            self._history.append(flow)
            subs = list(self._subs)
        for s in subs:
            before = s.dropped
            s._put(flow)
            if s.dropped != before:
                with self._lock:
                    self.subscriber_drops += 1

    def subscribe(self, since: float | None = None, size: int = QUEUE) -> Subscription:
        """A new subscription, primed with the history newer than ``since``
        (wall-clock seconds) when given."""
        sub = Subscription(self, size)
        with self._lock:
            if len(self._subs) >= MAX_SUBSCRIBERS:
                raise Busy(f"{MAX_SUBSCRIBERS} observe streams are open already; try again later")
            if since is not None:
                for f in self._history:
                    if f.time >= since:
                        sub._put(f)
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)
