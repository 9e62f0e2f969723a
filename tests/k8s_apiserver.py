"""A small Kubernetes API server for tests: enough of the real wire format that
the real ``kubernetes`` client (and so ``ApiSource``/``EventRecorder``) runs
against it unmodified.

Served (the URLs and query parameters kubernetes-client 37.x sends; anything
else is a 404, an unknown query parameter a 400, so drift shows up):

* ``GET /api/v1/namespaces``, ``/api/v1/pods``, ``/api/v1/namespaces/{ns}/pods``,
  ``/apis/k8s.cni.cncf.io/v1[/namespaces/{ns}]/network-attachment-definitions``,
  ``/apis/k8s.cni.cncf.io/v1beta1[/namespaces/{ns}]/multi-networkpolicies``:
  lists (``{"kind": "PodList", "metadata": {"resourceVersion", "continue"},
  "items"}``, paged by ``limit``/``continue`` from a consistent snapshot; items
  of built-in kinds carry no kind/apiVersion, as the real server's) and, with
  ``watch=true``, a chunked stream of ``{"type", "object"}`` lines from
  ``resourceVersion`` (ADDED/MODIFIED/DELETED; BOOKMARK only when
  ``allowWatchBookmarks=true``; ``ERROR`` with a 410 Status for a compacted
  version), ended cleanly after ``timeoutSeconds``.
* ``POST /api/v1/namespaces/{ns}/events``, ``PATCH .../events/{name}``
  (merge patch), ``GET .../events``.

One global resourceVersion counter orders every change, as etcd's revision
does. Test controls: ``add``/``update``/``delete``, ``compact``,
``drop_watches``, ``bookmark``, ``fail_next``, ``wait_for_watches``,
``on_request``; the
``requests`` log; the stored ``events``. Also ``EventLog``, a recording sink.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nicwarden.agent.policy import Event

# Defined here independently of nicwarden.agent.k8s.kinds, so a wrong group,
# version or plural in the agent's table fails against this server.
_CNI = "k8s.cni.cncf.io"


@dataclass(frozen=True)
class _Type:
    kind: str
    api_version: str
    plural: str
    namespaced: bool
    builtin: bool  # built-in list items omit kind/apiVersion; CRD items keep them


TYPES = {
    t.kind: t
    for t in (
        _Type("Namespace", "v1", "namespaces", namespaced=False, builtin=True),
        _Type("Pod", "v1", "pods", namespaced=True, builtin=True),
        _Type(
            "NetworkAttachmentDefinition",
            f"{_CNI}/v1",
            "network-attachment-definitions",
            namespaced=True,
            builtin=False,
        ),
        _Type(
            "MultiNetworkPolicy",
            f"{_CNI}/v1beta1",
            "multi-networkpolicies",
            namespaced=True,
            builtin=False,
        ),
    )
}

_NS = r"(?:/namespaces/(?P<ns>[a-z0-9-]+))"
_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^/api/v1/namespaces$"), "Namespace"),
    (re.compile(rf"^/api/v1{_NS}?/pods$"), "Pod"),
    (
        re.compile(rf"^/apis/{re.escape(_CNI)}/v1{_NS}?/network-attachment-definitions$"),
        "NetworkAttachmentDefinition",
    ),
    (
        re.compile(rf"^/apis/{re.escape(_CNI)}/v1beta1{_NS}?/multi-networkpolicies$"),
        "MultiNetworkPolicy",
    ),
]
_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[a-z0-9-]+)/events(?:/(?P<name>[^/]+))?$")

_LIST_PARAMS = {
    "allowWatchBookmarks",
    "continue",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "timeoutSeconds",
    "watch",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    at: float  # time.monotonic()


@dataclass
class _Watcher:
    kind: str
    namespace: str | None
    bookmarks: bool
    lines: list[bytes] = field(default_factory=list)
    dropped: bool = False


@dataclass
class _Failure:
    remaining: int
    status: int
    match: str | None


Key = tuple[str, str]  # (namespace, name); namespace "" for Namespaces


class FakeApiServer:
    def __init__(self, token: str | None = "test-token") -> None:
        self.token = token
        self.requests: list[Request] = []
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._rv = 1
        self._compacted = 0
        # Per kind: the state at the compaction point plus the changes since,
        # so a paged list can be served from the snapshot its first page saw.
        self._base: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in TYPES}
        self._log: dict[str, list[tuple[int, str, dict[str, Any]]]] = {k: [] for k in TYPES}
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {k: {} for k in TYPES}
        self._watchers: list[_Watcher] = []
        self._watches_opened: dict[str, int] = {k: 0 for k in TYPES}
        self._failures: list[_Failure] = []
        # Called (outside the store lock) with each request before it is
        # served, to change the world at an exact point of a client's sequence.
        self.on_request: Callable[[Request], None] | None = None
        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # -- store controls ---------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._change("ADDED", obj)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._change("MODIFIED", obj)

    def delete(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._change("DELETED", obj)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            found = self._objects[kind].get((namespace if TYPES[kind].namespaced else "", name))
            return copy.deepcopy(found)

    def compact(self, rv: int | None = None) -> int:
        """Forget history up to ``rv`` (default: now): watches and continue
        tokens from older versions get 410 Gone from then on."""
        with self._cond:
            rv = self._rv if rv is None else rv
            for kind in TYPES:
                keep = []
                for entry in self._log[kind]:
                    if entry[0] <= rv:
                        _apply(self._base[kind], entry)
                    else:
                        keep.append(entry)
                self._log[kind] = keep
            self._compacted = max(self._compacted, rv)
            return self._compacted

    def drop_watches(self) -> int:
        """Cut every open watch connection without ending its stream; events
        not yet written are lost with it, as on a real broken connection."""
        with self._cond:
            for watcher in self._watchers:
                watcher.dropped = True
                watcher.lines.clear()
            self._cond.notify_all()
            return len(self._watchers)

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to every open watch
        that asked for bookmarks; returns that version."""
        with self._cond:
            for watcher in self._watchers:
                if watcher.bookmarks:
                    t = TYPES[watcher.kind]
                    obj = {
                        "kind": t.kind,
                        "apiVersion": t.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                    }
                    watcher.lines.append(_line("BOOKMARK", obj))
            self._cond.notify_all()
            return self._rv

    def fail_next(self, n: int, status: int = 500, match: str | None = None) -> None:
        """The next ``n`` requests (whose path contains ``match``) get ``status``.
        ``n=0`` cancels pending failures."""
        with self._cond:
            if n == 0:
                self._failures.clear()
            else:
                self._failures.append(_Failure(n, status, match))

    def open_watches(self, kind: str) -> int:
        with self._cond:
            return sum(1 for w in self._watchers if w.kind == kind)

    def wait_for_watches(self, kind: str, opened: int, timeout: float = 5.0) -> None:
        """Wait until ``opened`` watches of ``kind`` were established in total."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._watches_opened[kind] < opened:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{kind}: {self._watches_opened[kind]} watches opened, want {opened}"
                    )
                self._cond.wait(left)

    def watches_opened(self, kind: str) -> int:
        with self._cond:
            return self._watches_opened[kind]

    def requests_for(self, kind: str, *, watch: bool | None = None) -> list[Request]:
        plural = TYPES[kind].plural
        with self._cond:
            out = [r for r in self.requests if r.path.endswith("/" + plural)]
        if watch is not None:
            out = [r for r in out if (r.query.get("watch") == "true") == watch]
        return out

    # -- internals --------------------------------------------------------

    def _change(self, action: str, obj: dict[str, Any]) -> dict[str, Any]:
        kind = obj.get("kind")
        if kind not in TYPES:
            raise ValueError(f"unsupported kind {kind!r}")
        t = TYPES[kind]
        if obj.get("apiVersion") != t.api_version:
            raise ValueError(f"{kind} needs apiVersion {t.api_version}")
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        if t.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        with self._cond:
            current = self._objects[kind].get(key)
            if action == "ADDED" and current is not None:
                raise ValueError(f"{kind} {key} already exists")
            if action != "ADDED" and current is None:
                raise ValueError(f"{kind} {key} not found")
            if action == "DELETED":
                assert current is not None
                stored = copy.deepcopy(current)
                meta = stored["metadata"]
            elif current is not None:
                meta["uid"] = current["metadata"]["uid"]
                meta["creationTimestamp"] = current["metadata"]["creationTimestamp"]
            else:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._rv += 1
            # A deleted object's final state carries the deletion's version.
            meta["resourceVersion"] = str(self._rv)
            entry = (self._rv, action, stored)
            self._log[kind].append(entry)
            _apply(self._objects[kind], entry)
            for watcher in self._watchers:
                if (
                    watcher.kind == kind
                    and watcher.namespace in (None, key[0])
                    and not watcher.dropped
                ):
                    watcher.lines.append(_line(action, stored))
            self._cond.notify_all()
            return copy.deepcopy(stored)

    def _take_failure(self, path: str) -> int | None:
        with self._cond:
            for failure in self._failures:
                if failure.match is None or failure.match in path:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure.status
        return None

    def _snapshot(self, kind: str, rv: int) -> dict[Key, dict[str, Any]]:
        state = dict(self._base[kind])
        for entry in self._log[kind]:
            if entry[0] > rv:
                break
            _apply(state, entry)
        return state


def _apply(state: dict[Key, dict[str, Any]], entry: tuple[int, str, dict[str, Any]]) -> None:
    _rv, action, obj = entry
    meta = obj["metadata"]
    key = (meta.get("namespace", ""), meta["name"])
    if action == "DELETED":
        state.pop(key, None)
    else:
        state[key] = obj


def _line(action: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": action, "object": obj}).encode() + b"\n"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def _make_handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the real server

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -- plumbing -----------------------------------------------------

        def _send_json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send_json(code, _status(code, _REASONS.get(code, "Unknown"), message))

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def _prologue(self) -> tuple[str, dict[str, str]] | None:
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            request = Request(self.command, split.path, query, time.monotonic())
            with server._cond:
                server.requests.append(request)
            if server.on_request is not None:
                server.on_request(request)
            if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                self._error(401, "Unauthorized")
                return None
            status = server._take_failure(split.path)
            if status is not None:
                self._error(status, f"injected failure {status}")
                return None
            return split.path, query

        # -- verbs --------------------------------------------------------

        def do_GET(self) -> None:
            start = self._prologue()
            if start is None:
                return
            path, query = start
            for pattern, kind in _ROUTES:
                match = pattern.match(path)
                if match:
                    unknown = set(query) - _LIST_PARAMS
                    if unknown:
                        self._error(400, f"unsupported query parameters {sorted(unknown)}")
                    elif query.get("watch") == "true":
                        self._watch(
                            kind, match.group("ns") if "ns" in pattern.groupindex else None, query
                        )
                    else:
                        self._list(
                            kind, match.group("ns") if "ns" in pattern.groupindex else None, query
                        )
                    return
            match = _EVENTS.match(path)
            if match and not match.group("name"):
                with server._cond:
                    items = [e for (ns, _), e in server.events.items() if ns == match.group("ns")]
                self._send_json(
                    200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}
                )
                return
            self._error(404, f"no route for GET {path}")

        def do_POST(self) -> None:
            start = self._prologue()
            if start is None:
                return
            path, _query = start
            match = _EVENTS.match(path)
            if not match or match.group("name"):
                self._error(404, f"no route for POST {path}")
                return
            body = self._body()
            ns = match.group("ns")
            meta = body.setdefault("metadata", {})
            if meta.get("namespace", ns) != ns:
                self._error(400, "metadata.namespace does not match the request")
                return
            name = meta.get("name") or f"{meta.get('generateName', 'event.')}{uuid.uuid4().hex[:5]}"
            with server._cond:
                if (ns, name) in server.events:
                    self._error(409, f"events {name!r} already exists")
                    return
                server._rv += 1
                meta.update(
                    name=name, namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(server._rv)
                )
                body.setdefault("apiVersion", "v1")
                body.setdefault("kind", "Event")
                server.events[(ns, name)] = body
            self._send_json(201, body)

        def do_PATCH(self) -> None:
            start = self._prologue()
            if start is None:
                return
            path, _query = start
            match = _EVENTS.match(path)
            if not match or not match.group("name"):
                self._error(404, f"no route for PATCH {path}")
                return
            content_type = self.headers.get("Content-Type", "")
            if content_type not in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                self._error(415, f"unsupported patch type {content_type!r}")
                return
            patch = self._body()
            key = (match.group("ns"), match.group("name"))
            with server._cond:
                event = server.events.get(key)
                if event is None:
                    self._error(404, f'events "{key[1]}" not found')
                    return
                _merge_patch(event, patch)
                server._rv += 1
                event["metadata"]["resourceVersion"] = str(server._rv)
                body = copy.deepcopy(event)
            self._send_json(200, body)

        # -- list and watch -----------------------------------------------

        def _list(self, kind: str, namespace: str | None, query: dict[str, str]) -> None:
            t = TYPES[kind]
            token = query.get("continue")
            with server._cond:
                if token:
                    decoded = json.loads(base64.b64decode(token))
                    rv, offset = int(decoded["rv"]), int(decoded["offset"])
                    if rv < server._compacted:
                        self._error(
                            410,
                            "The provided continue parameter is too old to display a "
                            "consistent list result.",
                        )
                        return
                else:
                    rv, offset = server._rv, 0
                state = server._snapshot(kind, rv)
            keys = sorted(k for k in state if namespace in (None, k[0]))
            limit = int(query.get("limit") or 0)
            page = keys[offset : offset + limit] if limit else keys[offset:]
            items = []
            for key in page:
                item = copy.deepcopy(state[key])
                if t.builtin:
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                items.append(item)
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            rest = len(keys) - offset - len(page)
            if limit and rest > 0:
                next_token = {"rv": rv, "offset": offset + len(page)}
                meta["continue"] = base64.b64encode(json.dumps(next_token).encode()).decode()
                meta["remainingItemCount"] = rest
            list_version = "v1" if t.builtin else t.api_version
            self._send_json(
                200,
                {
                    "kind": f"{kind}List",
                    "apiVersion": list_version,
                    "metadata": meta,
                    "items": items,
                },
            )

        def _watch(self, kind: str, namespace: str | None, query: dict[str, str]) -> None:
            raw_rv = query.get("resourceVersion", "")
            timeout = float(query.get("timeoutSeconds") or 1800)
            watcher = _Watcher(kind, namespace, query.get("allowWatchBookmarks") == "true")
            gone = False
            with server._cond:
                if raw_rv in ("", "0"):
                    # "Any version": start with the current state as ADDED events.
                    for key, obj in sorted(server._objects[kind].items()):
                        if namespace in (None, key[0]):
                            watcher.lines.append(_line("ADDED", obj))
                else:
                    rv = int(raw_rv)
                    if rv < server._compacted:
                        gone = True
                        message = f"too old resource version: {rv} ({server._compacted})"
                        watcher.lines.append(
                            json.dumps(
                                {"type": "ERROR", "object": _status(410, "Expired", message)}
                            ).encode()
                            + b"\n"
                        )
                    else:
                        for entry_rv, action, obj in server._log[kind]:
                            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                            if entry_rv > rv and namespace in (None, key[0]):
                                watcher.lines.append(_line(action, obj))
                if not gone:
                    server._watchers.append(watcher)
                    server._watches_opened[kind] += 1
                    server._cond.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + timeout
            try:
                self._stream(watcher, deadline, gone)
            finally:
                with server._cond:
                    if watcher in server._watchers:
                        server._watchers.remove(watcher)

        def _client_gone(self) -> bool:
            """The client closed its end (a real server notices through the
            request context); only an idle stream needs to look."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _stream(self, watcher: _Watcher, deadline: float, once: bool) -> None:
            while True:
                with server._cond:
                    while not (watcher.lines or watcher.dropped or server._stopping) and not once:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        server._cond.wait(min(left, 0.05))
                        if self._client_gone():
                            break
                    lines, watcher.lines = watcher.lines, []
                    abort = watcher.dropped or server._stopping
                if not abort and not lines and self._client_gone():
                    self.close_connection = True
                    return
                try:
                    for line in lines:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if abort:
                        # No terminating chunk: the client sees the stream cut.
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if once or time.monotonic() >= deadline:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return
                except OSError:
                    self.close_connection = True
                    return  # the client went away

    return Handler


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class EventLog:
    """A sink for ``ObjectSource.start`` that records events and lets a test
    wait for them (shared by the directory and API source tests)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[Event] = []
        self.times: list[float] = []  # time.monotonic() of each event
        self.concurrent = 0  # how often a call overlapped another (must stay 0)
        self._inside = False

    def __call__(self, event: Event) -> None:
        with self._cond:
            if self._inside:
                self.concurrent += 1
            self._inside = True
        time.sleep(0)  # let an overlapping call, if any, show itself
        with self._cond:
            self.events.append(event)
            self.times.append(time.monotonic())
            self._inside = False
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Event]:
        """Wait until at least ``count`` events in total; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.events)} events, want {count}: {self.summary()}")
                self._cond.wait(left)
            return list(self.events)

    def summary(self, start: int = 0) -> list[tuple[str, str, str]]:
        """``[(action, kind, "ns/name")]`` from event ``start`` on."""
        with self._cond:
            events = self.events[start:]
        out = []
        for e in events:
            meta = e.obj["metadata"]
            ns = meta.get("namespace")
            out.append(
                (str(e.action), e.kind or "", f"{ns}/{meta['name']}" if ns else meta["name"])
            )
        return out

    def state(self) -> dict[tuple[str, str, str], Any]:
        """The world as the consumer sees it after folding every event."""
        out: dict[tuple[str, str, str], Any] = {}
        with self._cond:
            events = list(self.events)
        for e in events:
            meta = e.obj["metadata"]
            key = (e.kind or "", meta.get("namespace", ""), meta["name"])
            if str(e.action) == "delete":
                assert key in out, f"DELETE for {key}, which was never added"
                del out[key]
            else:
                out[key] = e.obj
        return out


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what or "condition not reached")
        time.sleep(0.01)
