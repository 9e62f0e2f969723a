"""One kind's list + watch loop against the API server (a "reflector" in
client-go terms): list, then watch from the list's resourceVersion; resume a
dropped watch from the last resourceVersion seen; relist when the server says
that version is gone (410); back off with jitter on errors.

Responses are parsed once, from the wire JSON, and each object is cut down
to what the policy engine reads (``project.py``) before anything keeps it.
List pages are parsed in a child process (``list_worker.py``), watch
events here.
A reflector may ask for metadata-only objects (``PartialObjectMetadata``,
as client-go's metadata informers do); a server that answers with full
objects instead is followed with full objects from then on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nicwarden.agent.backoff import Backoff, BackoffPolicy

from ._kube import ApiException
from .kinds import ResourceType
from .ledger import Ledger
from .list_json import list_head, no_pause
from .list_parse import normalise
from .list_worker import page_parser
from .source import SourceProblem

log = logging.getLogger(__name__)

HTTP_GONE = 410
# A watch the server ends cleanly sooner than this did not prove anything.
_MIN_CLEAN_WATCH = 1.0

# etcd keeps objects up to 1.5 MiB; a watch event is one object plus a little.
MAX_EVENT_BYTES = 16 << 20

# What client-go's metadata client asks for (JSON only: no protobuf here).
# The trailing plain type lets a server that cannot convert answer anyway.
LIST_METADATA = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
WATCH_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


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


# (kind, changed, seconds) of one handled watch event.
EventTimer = Callable[[str, bool, float], None]


class Reflector:
    def __init__(
        self,
        resource: ResourceType,
        call: Callable[..., Any],
        args: tuple[Any, ...],
        ledger: Ledger,
        settings: WatchSettings,
        stopping: threading.Event,
        *,
        metadata_only: bool = False,
        field_selector: str | None = None,
        pause: Callable[[], None] | None = None,
        timed: EventTimer | None = None,
    ) -> None:
        self.resource = resource
        self._call = call  # the client's list function for this kind
        self._args = args
        self._ledger = ledger
        self._settings = settings
        self._stopping = stopping
        self._backoff = Backoff(settings.backoff)
        self._lock = threading.Lock()
        self._response: Any = None  # the open watch's urllib3 response, if any
        # None: ask for metadata-only objects and see what the server sends;
        # then True (it serves them) or False (it sent full objects).
        self._partial: bool | None = None if metadata_only else False
        self._asked = metadata_only
        self._field_selector = field_selector
        # Called between the items of a list: waits while more urgent work
        # (a CNI request) runs, for a bounded time (policy_feed.Priority).
        self._pause = pause or no_pause
        self._timed = timed
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

    @property
    def metadata_only(self) -> bool | None:
        """Whether the server serves this kind metadata-only (None: never
        asked, or no answer yet)."""
        return self._partial if self._asked else None

    def interrupt(self) -> None:
        """Unblock a watch read (from ``stop``): shuts down the socket under
        it. Only a shutdown wakes a thread blocked in recv; close() would
        wait for it (and under TLS, for the lock that thread holds)."""
        with self._lock:
            current = self._response
        if current is not None:
            conn = getattr(current, "connection", None)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

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
        """List every page and deliver it; returns the list's resourceVersion.

        Pages are parsed by a child (``list_worker``) while this thread asks
        for the next page (its continue token is read from the page's first
        bytes) and delivers the previous one, so the server, the parser and
        the policy engine work at the same time.
        """
        version: str | None = None
        relist = self._ledger.relist((self.kind,))
        first = self._fetch(None)
        head = list_head(first)
        # A child only for a list of several pages, and only once the server
        # answered: a failing server costs no process per retry.
        several = head is None or _token(head) is not None
        with page_parser(self.resource, self._pause, child=several) as parser:
            parser.send(first)
            data: bytes | None = first
            del first
            while data is not None:
                del data
                token = _token(head) if head is not None else None
                following = self._fetch(token) if token is not None else None
                page = parser.receive()
                if head is None:  # the page had to be parsed to know
                    token = page.continue_token or None
                    following = self._fetch(token) if token is not None else None
                if self._partial is None and self._asked:
                    self._decide(page.list_kind)
                # Every page of a list is served from the first page's snapshot.
                version = version or page.resource_version
                if not isinstance(version, str) or not version:
                    raise ValueError(f"{self.resource.plural} list carries no resourceVersion")
                if following is not None:
                    parser.send(following)  # parsed while this page is delivered
                    head = list_head(following)
                data = following
                for key, known, obj in page.items:
                    relist.put(key, obj, known)
                del page, following
                # What this page kept lives as long as the agent: taking it out of
                # the cyclic collector's sight keeps the next pages' collections
                # from walking the whole cluster again and again.
                gc.freeze()
                if data is not None and self._stopping.is_set():
                    # What the pages not read hold would be delivered as DELETE.
                    raise InterruptedError("stopping")
        if version is None:  # unreachable: every page checks it; for the type checker
            raise ValueError(f"{self.resource.plural} list carries no resourceVersion")
        delivered = relist.finish()
        log.info(
            "listed",
            extra={"kind": self.kind, "objects": relist.listed, "events": delivered, "rv": version},
        )
        self.synced.set()
        self._fresh_list = True
        return version

    def _fetch(self, token: str | None) -> bytes:
        """One page of the list, as the server sent it."""
        timeout = self._settings.request_timeout
        kwargs: dict[str, Any] = {}
        if self._partial is not False:
            kwargs["_headers"] = {"Accept": LIST_METADATA}
        if self._field_selector:
            kwargs["field_selector"] = self._field_selector
        response = self._call(
            *self._args,
            limit=self._settings.page_size,
            _continue=token,
            _preload_content=False,
            _request_timeout=(timeout, timeout),
            **kwargs,
        )
        try:
            # The raw JSON, not the client's models: the models would be
            # converted straight back to dicts, cost a deserialisation of
            # every Pod, and reject objects a newer server sends with
            # fields they do not know.
            data: bytes = response.data
        finally:
            response.release_conn()
        self._pause()
        return data

    # -- watch ------------------------------------------------------------

    def _watch_once(self) -> None:
        """Watch from ``resource_version`` until the stream ends; raises on
        errors (``_Gone`` for 410), returns when the server closed it cleanly."""
        duration = int(self._settings.watch_timeout * (1 + random.random()))
        if self._stopping.is_set():
            return
        kwargs: dict[str, Any] = {}
        if self._partial:
            kwargs["_headers"] = {"Accept": WATCH_METADATA}
        if self._field_selector:
            kwargs["field_selector"] = self._field_selector
        # The raw stream, not kubernetes.watch: that parses each event's JSON,
        # serialises the object back and parses it again.
        response = self._call(
            *self._args,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=duration,
            _preload_content=False,
            _request_timeout=(
                self._settings.request_timeout,
                duration + self._settings.request_timeout,
            ),
            **kwargs,
        )
        with self._lock:
            self._response = response
        # The client raises for non-2xx before returning, so this is an
        # established watch: an earlier failure is over even if no event
        # arrives for a long time. The backoff stays: a server (or proxy)
        # that accepts watches and drops them at once must still be backed off.
        self._clear_problem()
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    return
                self._pause()  # a burst of events nobody needs never reaches the feed's
                start = time.perf_counter()
                event = json.loads(line)
                if isinstance(event, dict):
                    changed = self._handle(event)
                    if changed is not None and self._timed is not None:
                        self._timed(self.kind, changed, time.perf_counter() - start)
        finally:
            with self._lock:
                self._response = None
            with contextlib.suppress(Exception):
                response.close()
                response.release_conn()

    def _handle(self, event: Mapping[str, Any]) -> bool | None:
        """Whether the event changed what the ledger delivers (None: not an
        object event)."""
        kind = event.get("type")
        raw = event.get("object")
        if kind == "ERROR":
            status = raw if isinstance(raw, dict) else {}
            error = ApiException(
                status=status.get("code"),
                reason=f"{status.get('reason')}: {status.get('message')}",
            )
            if status.get("code") == HTTP_GONE:
                raise _Gone() from error
            raise error
        if not isinstance(raw, dict):
            log.warning("watch event without an object", extra={"kind": self.kind, "type": kind})
            return None
        meta = raw.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        changed: bool | None = None
        if kind == "BOOKMARK":
            # Nothing changed up to this version: resume from here next time.
            pass
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            key, obj = normalise(self.resource, raw)
            if key is None:
                log.warning("watched object has no name", extra={"kind": self.kind})
            elif kind == "DELETED":
                changed = self._ledger.remove(key, obj)
            else:
                # A resumed watch may replay what we have, and most writes
                # to a pod touch nothing we keep: the ledger drops both.
                changed = self._ledger.upsert(key, obj)
        else:
            log.warning("unknown watch event type", extra={"kind": self.kind, "type": kind})
            return None
        if isinstance(version, str) and version:
            self.resource_version = version
        self._fresh_list = False
        self._healthy()
        return changed

    # -- helpers ----------------------------------------------------------

    def _decide(self, list_kind: Any) -> None:
        self._partial = list_kind == "PartialObjectMetadataList"
        if not self._partial:
            log.info(
                "the server does not serve metadata-only lists; following full objects",
                extra={"kind": self.kind, "list_kind": list_kind},
            )

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


def _token(head: Mapping[str, Any]) -> str | None:
    token = head["metadata"].get("continue")
    return token if isinstance(token, str) and token else None


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, _Gone) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ApiException):
        detail = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            detail = json.loads(exc.body).get("message", "")
        return f"HTTP {exc.status} {exc.reason}" + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated JSON documents of a watch stream; ``ValueError``
    for one longer than any object the API server stores could make."""
    pending: list[bytes] = []
    size = 0
    for chunk in response.stream(amt=None, decode_content=True):
        if b"\n" not in chunk:
            # Joined only once a line ends: a large object split over many
            # chunks is not copied again for each.
            pending.append(chunk)
            size += len(chunk)
            if size > MAX_EVENT_BYTES:
                raise ValueError(f"watch event longer than {MAX_EVENT_BYTES} bytes")
            continue
        pending.append(chunk)
        parts = b"".join(pending).split(b"\n")
        last = parts.pop()
        pending, size = [last], len(last)
        for part in parts:
            if part.strip():  # blank lines are keep-alives
                yield part
    rest = b"".join(pending)
    if rest.strip():
        yield rest
