"""The one interface both object sources implement, so the policy engine
never knows whether its objects come from the API server or a directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..policy import Event
from .kinds import KINDS

__all__ = ["KINDS", "ObjectSource", "Sink", "SourceProblem"]

Sink = Callable[[Event], None]


@dataclass(frozen=True)
class SourceProblem:
    """Something a source could not use, for ``nicwardenctl policies``.

    ``file`` is the manifest path (directory source) or "" (API source);
    ``object`` names the object ("MultiNetworkPolicy prod/deny") or, when the
    problem is not about one object, the file or the kind being listed;
    ``line`` is 1-based, where known.
    """

    file: str
    object: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else self.file
        parts = [p for p in (where, self.object, self.message) if p]
        return ": ".join(parts)


class ObjectSource(Protocol):
    """A stream of Namespace, Pod, NetworkAttachmentDefinition and
    MultiNetworkPolicy add/update/delete events.

    Contract:
    * ``sink`` is called from a background thread, never concurrently with
      itself, with plain-dict objects the consumer must treat as read-only.
      An exception from the sink is logged, never fatal to the source.
    * Objects may be cut down to the fields the policy engine reads
      (``project.py``): the API source delivers Namespaces and Pods that way,
      and may deliver Pods without spec and status (metadata-only).
    * Deliveries are relative to what this source delivered before: after a
      (re)sync (first start, restart after ``stop``, API relist) objects that
      vanished meanwhile are delivered as DELETE, unchanged ones not at all.
      "Unchanged" is judged on the delivered form, resourceVersion aside: a
      write to a field that was cut away delivers nothing. A DELETE carries
      the object's last state when the source saw it, else only its kind and
      identity. Give a fresh consumer a fresh source.
    * ``synced`` turns true once the initial state of every kind was delivered.
    """

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...

    def synced(self) -> bool: ...

    def problems(self) -> list[SourceProblem]: ...
