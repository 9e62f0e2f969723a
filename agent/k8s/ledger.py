"""What a source has delivered, and the only place that calls its sink.

Both sources describe the world to the ledger (one object, or every object of
some kinds) and the ledger turns that into the events the consumer has not
seen yet. Keeping the delivered state here is what lets a resync emit DELETE
for objects that disappeared while nobody was watching, and lets a resumed
watch replay events without the consumer seeing duplicates.

The ledger compares objects by a 16-byte digest. The API source has it keep
nothing else: at 100,000 pods a second copy of each would cost more than
everything else the source holds, so a DELETE there without a final state
carries only the object's identity, which is all a consumer needs to forget
it. A small source (a directory of manifests) keeps the objects too, and its
DELETEs carry their last state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..policy import Action, Event
from .kinds import KINDS, RESOURCES, ObjectKey
from .list_json import no_pause
from .project import digest
from .source import Sink

log = logging.getLogger(__name__)

_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}


def _order(key: ObjectKey) -> tuple[int, str, str]:
    return (_KIND_ORDER.get(key[0], len(KINDS)), key[1], key[2])


class Ledger:
    def __init__(
        self, *, keep_objects: bool = True, pause: Callable[[], None] | None = None
    ) -> None:
        # Reentrant so a sink may call back into its source (problems(), synced()).
        self._lock = threading.RLock()
        self._delivered: dict[ObjectKey, bytes] = {}  # key -> digest()
        self._objects: dict[ObjectKey, Mapping[str, Any]] | None = {} if keep_objects else None
        self._sink: Sink | None = None
        # Called between the objects of a replace (a relist of the whole
        # cluster): may wait while more urgent work runs (policy_feed.Priority).
        self._pause = pause or no_pause

    def attach(self, sink: Sink | None) -> None:
        with self._lock:
            self._sink = sink

    def known(self, kind: str) -> dict[ObjectKey, bytes]:
        with self._lock:
            return {k: v for k, v in self._delivered.items() if k[0] == kind}

    def upsert(self, key: ObjectKey, obj: Mapping[str, Any], known: bytes | None = None) -> bool:
        """Deliver ADD or UPDATE unless the consumer already has exactly this
        (its resourceVersion aside). ``known`` is ``digest(obj)`` when the
        caller has it already (the list parser computes it)."""
        new = digest(obj) if known is None else known
        with self._lock:
            old = self._delivered.get(key)
            if old == new:
                return False
            self._delivered[key] = new
            if self._objects is not None:
                self._objects[key] = obj
            self._emit(Action.ADD if old is None else Action.UPDATE, key, obj)
            return True

    def remove(self, key: ObjectKey, final: Mapping[str, Any] | None = None) -> bool:
        """Deliver DELETE (with the object's final state when known) unless the
        consumer never had it."""
        with self._lock:
            if self._delivered.pop(key, None) is None:
                return False
            last = self._objects.pop(key, None) if self._objects is not None else None
            if final is None:
                final = last if last is not None else _identity(key)
            self._emit(Action.DELETE, key, final)
            return True

    def replace(
        self, kinds: Collection[str], objects: Mapping[ObjectKey, Mapping[str, Any]]
    ) -> int:
        """Make the delivered state of ``kinds`` equal ``objects``; returns the
        number of events delivered."""
        with self._lock:
            relist = self.relist(kinds)
            for key in _sorted(objects, self._pause):
                relist.put(key, objects[key])
            return relist.finish()

    def relist(self, kinds: Collection[str]) -> Relist:
        """A replacement of the delivered state of ``kinds`` that arrives in
        pieces (the pages of a list): each object is delivered as it comes,
        and ``finish`` delivers DELETE for what the whole list did not hold.
        A relist never finished (the list failed half-way) deletes nothing:
        what it delivered are true states, only possibly not the latest."""
        return Relist(self, kinds)

    def _emit(self, action: Action, key: ObjectKey, obj: Mapping[str, Any]) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            sink(Event(action, obj, key[0]))
        except Exception:
            # The consumer's failure must not stop the stream for every other
            # object; the event is considered delivered (re-sending it would
            # most likely fail the same way forever).
            log.exception("object sink failed", extra={"action": str(action), "object": key})


class Relist:
    """See ``Ledger.relist``. Upserts go before deletes: when a policy is
    renamed, deleting first would leave a moment where nothing isolates its
    pods (fail open); adding first only briefly unions two policies' allows.
    """

    def __init__(self, ledger: Ledger, kinds: Collection[str]) -> None:
        self._ledger = ledger
        self._kinds = frozenset(kinds)
        self._seen: set[ObjectKey] = set()
        self.count = 0  # events delivered
        self.listed = 0  # objects the relist held, once finished

    def put(self, key: ObjectKey, obj: Mapping[str, Any], known: bytes | None = None) -> None:
        self._ledger._pause()
        self._seen.add(key)
        self.count += self._ledger.upsert(key, obj, known)

    def finish(self) -> int:
        """Deliver DELETE for the objects of ``kinds`` the relist did not
        hold; returns the number of events the whole relist delivered."""
        ledger, pause, seen, kinds = self._ledger, self._ledger._pause, self._seen, self._kinds
        self.listed = len(seen)
        with ledger._lock:
            gone = []
            for i, key in enumerate(ledger._delivered):
                if not i & 1023:
                    pause()
                if key[0] in kinds and key not in seen:
                    gone.append(key)
            for key in sorted(gone, key=_order):
                pause()
                self.count += ledger.remove(key)
        self._seen = set()
        return self.count


def _sorted(keys: Collection[ObjectKey], pause: Callable[[], None]) -> list[ObjectKey]:
    """``keys`` in delivery order. A list from the API server is in that
    order already, and sorting a relist's keys anyway is one C call that
    holds the interpreter for tens of milliseconds; checking is a loop that
    can pause."""
    out = list(keys)
    last: tuple[int, str, str] | None = None
    for i, key in enumerate(out):
        if not i & 1023:
            pause()
        order = _order(key)
        if last is not None and order < last:
            out.sort(key=_order)
            break
        last = order
    return out


def _identity(key: ObjectKey) -> dict[str, Any]:
    kind, namespace, name = key
    meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"kind": kind, "apiVersion": RESOURCES[kind].api_version, "metadata": meta}
