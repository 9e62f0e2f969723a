"""One kind's list + watch loop against the API server (a "reflector" in
client-go terms): list, then watch from the list's resourceVersion; resume a
dropped watch from the last resourceVersion seen; relist when the server says
that version is gone (410); back off with jitter on errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nicwarden.agent.backoff import Backoff, BackoffPolicy

from ._kube import ApiException, watch
from .kinds import ObjectKey, ResourceType, object_key
from .ledger import Ledger
from .source import SourceProblem

log = logging.getLogger(__name__)

HTTP_GONE = 410
# A watch the server ends cleanly sooner than this did not prove anything.
_MIN_CLEAN_WATCH = 1.0


@dataclass(frozen=True)
class WatchSettings:
    backoff: BackoffPolicy = BackoffPolicy()
    # Server-side watch duration; each watch asks for a random value in
    # [t, 2t) so a cluster's agents do not all reconnect at once (client-go
    # does the same with 5-10 minutes).
    watch_timeout: float = 300.0
    # Connect timeout, and read timeout for lists. A watch's read timeout is
    # its duration plus this, which catches half-open connections.
    request_timeout: float = 30.0
    page_size: int = 500

    def __post_init__(self) -> None:
        # timeoutSeconds is whole seconds, and 0 would mean "server default".
        if self.watch_timeout < 1 or self.request_timeout <= 0 or self.page_size < 1:
            raise ValueError("need watch_timeout >= 1 s, request_timeout > 0 and page_size >= 1")


class _Gone(Exception):
    """The watch's resourceVersion is no longer available: relist."""

    def __str__(self) -> str:
        return "HTTP 410 Gone"


class Reflector:
    def __init__(
        self,
        resource: ResourceType,
        call: Callable[..., Any],
        args: tuple[Any, ...],
        ledger: Ledger,
        settings: WatchSettings,
        stopping: threading.Event,
    ) -> None:
        self.resource = resource
        self._call = call  # the client's list function for this kind
        self._args = args
        self._ledger = ledger
        self._settings = settings
        self._stopping = stopping
        self._backoff = Backoff(settings.backoff)
        self._lock = threading.Lock()
        self._watch: Any = None  # the open kubernetes.watch.Watch, if any
        self._problem: SourceProblem | None = None
        self.synced = threading.Event()
        self.resource_version: str | None = None
        self._fresh_list = False  # listed, and no watch event seen since

    @property
    def kind(self) -> str:
        return self.resource.kind

    def problem(self) -> SourceProblem | None:
        with self._lock:
            return self._problem

    def interrupt(self) -> None:
        """Unblock a watch read (from ``stop``): closes the socket under it."""
        with self._lock:
            current = self._watch
        if current is not None:
            current.stop()

    def run(self) -> None:
        while not self._stopping.is_set():
            phase = "list"
            try:
                if self.resource_version is None:
                    self.resource_version = self._list()
                    # The backoff is reset only by a working watch: a list
                    # that succeeds before every failing watch must not
                    # restart the delays from the bottom.
                    self._clear_problem()
                phase = "watch"
                started = time.monotonic()
                self._watch_once()
                if time.monotonic() - started < _MIN_CLEAN_WATCH:
                    # Closed cleanly at once, again and again (a proxy, an
                    # overloaded server): retrying at once would spin.
                    raise ConnectionError("the server closed the watch at once")
                self._healthy()  # the server ended the watch cleanly
            except _Gone as gone:
                log.info("watch expired, relisting", extra={"kind": self.kind})
                self.resource_version = None
                if self._fresh_list:
                    # Gone straight after a list: the server serves lists
                    # older than its watch window; relisting at once would spin.
                    self._failed("watch", gone)
                # Otherwise relist at once: the gap is only growing.
            except Exception as exc:
                if self._stopping.is_set():
                    return
                # A failed list (an expired continue token included) starts
                # over from the first page; a failed watch resumes from the
                # last version it saw.
                self._failed(phase, exc)

    # -- list -------------------------------------------------------------

    def _list(self) -> str:
        objects: dict[ObjectKey, Mapping[str, Any]] = {}
        version: str | None = None
        token: str | None = None
        timeout = self._settings.request_timeout
        while True:
            response = self._call(
                *self._args,
                limit=self._settings.page_size,
                _continue=token,
                _preload_content=False,
                _request_timeout=(timeout, timeout),
            )
            try:
                # The raw JSON, not the client's models: the models would be
                # converted straight back to dicts, cost a deserialisation of
                # every Pod, and reject objects a newer server sends with
                # fields they do not know.
                body = json.loads(response.data)
            finally:
                response.release_conn()
            meta = body.get("metadata") or {}
            # Every page of a list is served from the first page's snapshot.
            version = version or meta.get("resourceVersion")
            for item in body.get("items") or []:
                key, obj = self._normalise(item)
                if key is not None:
                    objects[key] = obj
            token = meta.get("continue") or None
            if token is None:
                break
            if self._stopping.is_set():
                # Never replace the delivered state with a partial list: the
                # objects on the pages not read would be delivered as DELETE.
                raise InterruptedError("stopping")
        if not isinstance(version, str) or not version:
            raise ValueError(f"{self.resource.plural} list carries no resourceVersion")
        delivered = self._ledger.replace((self.kind,), objects)
        log.info(
            "listed",
            extra={"kind": self.kind, "objects": len(objects), "events": delivered, "rv": version},
        )
        self.synced.set()
        self._fresh_list = True
        return version

    # -- watch ------------------------------------------------------------

    def _watch_once(self) -> None:
        """Watch from ``resource_version`` until the stream ends; raises on
        errors (``_Gone`` for 410), returns when the server closed it cleanly."""
        duration = int(self._settings.watch_timeout * (1 + random.random()))
        current = watch.Watch(return_type="object")  # "object": hand back dicts, no models
        with self._lock:
            self._watch = current
        if self._stopping.is_set():
            return
        stream = current.stream(
            self._opened_call,
            *self._args,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=duration,  # also stops the client's own silent retry
            _request_timeout=(
                self._settings.request_timeout,
                duration + self._settings.request_timeout,
            ),
        )
        try:
            with contextlib.closing(stream):
                for event in stream:
                    if self._stopping.is_set():
                        return
                    if isinstance(event, Mapping):  # blank keep-alive lines come as None
                        self._handle(event)
        except ApiException as exc:
            if exc.status == HTTP_GONE:
                raise _Gone() from exc
            raise
        finally:
            with self._lock:
                self._watch = None

    def _opened_call(self, *args: Any, **kwargs: Any) -> Any:
        """The list call, noting success: the client raises for non-2xx before
        returning, so a returned response is an established watch, and an
        earlier failure is over even if no event arrives for a long time."""
        response = self._call(*args, **kwargs)
        # Clear the problem but keep the backoff: a server (or proxy) that
        # accepts watches and drops them at once must still be backed off from.
        self._clear_problem()
        return response

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        raw = event.get("raw_object")
        if not isinstance(raw, dict):
            log.warning("watch event without an object", extra={"kind": self.kind, "type": kind})
            return
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            # Nothing changed up to this version: resume from here next time.
            pass
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            key, obj = self._normalise(raw)
            if key is None:
                log.warning("watched object has no name", extra={"kind": self.kind})
            elif kind == "DELETED":
                self._ledger.remove(key, obj)
            else:
                # A resumed watch may replay what we have: the ledger drops
                # exact repeats, so the consumer sees each change once.
                self._ledger.upsert(key, obj)
        else:
            log.warning("unknown watch event type", extra={"kind": self.kind, "type": kind})
            return
        if isinstance(version, str) and version:
            self.resource_version = version
        self._fresh_list = False
        self._healthy()

    # -- helpers ----------------------------------------------------------

    def _normalise(self, raw: dict[str, Any]) -> tuple[ObjectKey | None, dict[str, Any]]:
        # List items of built-in kinds come without kind/apiVersion; fill them
        # in so objects look the same from a list, a watch or a manifest.
        raw.setdefault("kind", self.kind)
        raw.setdefault("apiVersion", self.resource.api_version)
        meta = raw.get("metadata")
        if isinstance(meta, dict):
            # Server-side-apply bookkeeping: large, and nothing here reads it.
            meta.pop("managedFields", None)
        return object_key(self.kind, raw), raw

    def _healthy(self) -> None:
        self._backoff.reset()
        self._clear_problem()

    def _clear_problem(self) -> None:
        with self._lock:
            self._problem = None

    def _failed(self, phase: str, exc: Exception) -> None:
        delay = self._backoff.next_delay()
        message = f"{phase} failed: {_describe_error(exc)}; retrying in {delay:.3g}s"
        with self._lock:
            self._problem = SourceProblem("", self.resource.plural, message)
        log.warning("%s %s", self.kind, message, extra={"kind": self.kind})
        self._stopping.wait(delay)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, _Gone) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ApiException):
        detail = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            detail = json.loads(exc.body).get("message", "")
        return f"HTTP {exc.status} {exc.reason}" + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"
