"""Kubernetes Events for problems the cluster's users should see (a policy
that does not compile, an attachment that failed): ``kubectl describe``
shows them next to the object.

* Never raises into the caller and never blocks it: ``record`` only queues;
  one background thread talks to the API server. Failures are logged.
* Repeats are folded: the same (object, type, reason, message) within
  ``window`` seconds of the last write is only counted. The next occurrence
  after the window patches the existing Event's ``count`` and
  ``lastTimestamp`` (a new Event if it was garbage-collected meanwhile), so
  a policy failing on every resync costs one write a minute, not one per
  resync. The count shown is exact as of the last write.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._kube import ApiException, client
from .kinds import DEFAULT_NAMESPACE, RESOURCES

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
# Events are for people; the full detail belongs in the agent's logs.
MAX_MESSAGE = 1024
_HTTP_NOT_FOUND = 404


@dataclass(frozen=True)
class ObjectRef:
    """The ``involvedObject`` of an Event."""

    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    uid: str = ""
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], kind: str | None = None) -> ObjectRef:
        meta = obj.get("metadata") or {}
        kind = kind or str(obj.get("kind") or "")
        resource = RESOURCES.get(kind)
        namespace = str(meta.get("namespace") or "")
        if resource is not None and resource.namespaced:
            namespace = namespace or DEFAULT_NAMESPACE
        return cls(
            kind=kind,
            name=str(meta.get("name") or ""),
            namespace=namespace,
            api_version=str(
                obj.get("apiVersion") or (resource.api_version if resource is not None else "")
            ),
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def to_api(self) -> dict[str, str]:
        fields = {
            "kind": self.kind,
            "name": self.name,
            "namespace": self.namespace,
            "apiVersion": self.api_version,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
        }
        return {k: v for k, v in fields.items() if v}


_Key = tuple[str, str, str, str, str, str, str]


@dataclass
class _Series:
    ref: ObjectRef
    type: str
    reason: str
    message: str
    first: str  # RFC 3339 wall-clock times, as the API wants them
    last: str
    count: int
    written_at: float  # monotonic time of the last write we queued
    name: str = ""  # the Event's name once created
    namespace: str = ""


class EventRecorder:
    def __init__(
        self,
        api_client: Any,
        node_name: str,
        component: str = "nicwarden",
        *,
        window: float = 60.0,
        queue_size: int = 256,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.component = component
        self.window = window
        self._timeout = request_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[_Key, _Series] = {}
        self._queue: queue.Queue[_Key | None] = queue.Queue(queue_size)
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread: threading.Thread | None = None

    def warning(self, obj: ObjectRef | Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, reason, message, WARNING)

    def normal(self, obj: ObjectRef | Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, reason, message, NORMAL)

    def record(
        self, obj: ObjectRef | Mapping[str, Any], reason: str, message: str, type: str = WARNING
    ) -> None:
        """Queue an Event about ``obj`` (an ``ObjectRef`` or the object itself)."""
        try:
            self._record(obj, reason, message, type)
        except Exception:
            log.exception("cannot record event", extra={"reason": reason})

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued write was attempted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    # -- internals --------------------------------------------------------

    def _record(
        self, obj: ObjectRef | Mapping[str, Any], reason: str, message: str, type: str
    ) -> None:
        ref = obj if isinstance(obj, ObjectRef) else ObjectRef.from_object(obj)
        message = message[:MAX_MESSAGE]
        key: _Key = (ref.kind, ref.namespace, ref.name, ref.uid, type, reason, message)
        now, wall = self._clock(), _rfc3339()
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                series.count += 1
                series.last = wall
                if now - series.written_at < self.window:
                    return  # folded into the next write
                series.written_at = now
            else:
                self._prune(now)
                self._series[key] = _Series(ref, type, reason, message, wall, wall, 1, now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="k8s-events", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(key)
            except queue.Full:
                log.warning("event queue full, dropping event", extra={"reason": reason})
                return
            self._pending += 1

    def _prune(self, now: float) -> None:
        # Series whose window has passed would be written again anyway; only
        # their Event name (for patching) is lost, so drop them when many.
        if len(self._series) >= 1024:
            expired = [k for k, s in self._series.items() if now - s.written_at >= self.window]
            for k in expired:
                del self._series[k]

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            try:
                self._write(key)
            except Exception:
                log.exception("cannot write event")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _write(self, key: _Key) -> None:
        with self._lock:
            series = self._series.get(key)
            if series is None:
                return
            snapshot = _Series(**vars(series))
        if snapshot.name:
            try:
                self._core.patch_namespaced_event(
                    snapshot.name,
                    snapshot.namespace,
                    {"count": snapshot.count, "lastTimestamp": snapshot.last},
                    _content_type="application/merge-patch+json",
                    _request_timeout=self._timeout,
                )
                return
            except ApiException as exc:
                if exc.status != _HTTP_NOT_FOUND:
                    raise
                # Garbage-collected (events have a TTL): create it afresh.
        name, namespace = self._create(snapshot)
        with self._lock:
            series.name, series.namespace = name, namespace

    def _create(self, s: _Series) -> tuple[str, str]:
        # Events live in the involved object's namespace; cluster-scoped
        # objects' events go to "default", as kubectl describe expects.
        namespace = s.ref.namespace or DEFAULT_NAMESPACE
        # client-go's naming: unique, and greppable by object name.
        name = f"{s.ref.name}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": s.ref.to_api(),
            "reason": s.reason,
            "message": s.message,
            "type": s.type,
            "source": {"component": self.component, "host": self.node_name},
            "reportingComponent": self.component,
            "reportingInstance": self.node_name,
            "firstTimestamp": s.first,
            "lastTimestamp": s.last,
            "count": s.count,
        }
        response = self._core.create_namespaced_event(
            namespace, body, _preload_content=False, _request_timeout=self._timeout
        )
        try:
            created = json.loads(response.data)
        finally:
            response.release_conn()
        meta = created.get("metadata") or {}
        return str(meta.get("name") or name), namespace


def _rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
