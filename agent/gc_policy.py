"""When the agent's cyclic garbage collector walks its old generation.

CPython starts a full collection once the objects promoted since the last one
exceed a quarter of the old generation that is not frozen. The agent freezes
what a cluster list leaves behind (``k8s/reflector.py``), so that unfrozen
part is small, and a large watch event crosses the quarter on its own: a
10,000-CIDR policy is ~20,000 containers, alive long enough while the engine
works on it to be promoted. Measured on the benchmark's node, that was a full
collection every two such events, ~50 ms each: more than the event's own work.

So the agent turns automatic full collections off and runs one itself on a
fixed period, from its main thread, which is otherwise idle. The young
generations still collect on their own as usual; only cyclic garbage that
reached the old generation (pyroute2's netlink messages, mostly) waits up to
one period to be freed.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FULL_INTERVAL = 30.0
# Full collections after this many young-generation collections: never, in
# practice (CPython keeps the threshold in a C int).
_NEVER = 1 << 30


class FullCollections:
    """Own the old generation's schedule: ``install`` at start, ``tick`` from
    a loop that runs often (due collections happen there), ``uninstall`` at
    stop."""

    def __init__(
        self,
        interval: float = FULL_INTERVAL,
        collect: Callable[[int], int] = gc.collect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._collect = collect
        self._clock = clock
        self._due = clock() + interval
        self._saved: tuple[int, int, int] | None = None
        self.runs = 0

    def install(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(self._saved[0], self._saved[1], _NEVER)

    def uninstall(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def tick(self) -> bool:
        """Run the full collection if it is due; whether it ran."""
        now = self._clock()
        if now < self._due:
            return False
        started = time.perf_counter()
        found = self._collect(2)
        took = time.perf_counter() - started
        self.runs += 1
        self._due = self._clock() + self.interval
        log.debug("full collection", extra={"unreachable": found, "seconds": round(took, 4)})
        return True
