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
  version), ended cleanly after ``timeoutSeconds``. Pods take a
  ``fieldSelector`` on ``spec.nodeName``, ``spec.hostNetwork``,
  ``status.phase``, ``metadata.name`` and ``metadata.namespace``; a watched
  object that leaves the selection arrives as DELETED, one that enters it as
  ADDED, as from the real server.
* Metadata-only lists and watches, as client-go's metadata informers ask for
  them: ``Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1``
  (``as=PartialObjectMetadata`` for a watch) gets a ``PartialObjectMetadataList``
  of ``PartialObjectMetadata`` items (``meta.k8s.io/v1``, metadata only), and
  watch events carrying ``PartialObjectMetadata`` objects. The wrong ``as`` for
  the verb, with nothing else acceptable, is a 406. ``metadata_only = False``
  makes the server ignore such media types (an old or aggregated server), so
  the client's plain ``application/json`` fallback gets full objects.
* ``POST /api/v1/namespaces/{ns}/events``, ``PATCH .../events/{name}``
  (merge patch), ``GET .../events``.
* ``resource.k8s.io/v1`` ResourceSlices (cluster-scoped) and ResourceClaims
  (namespaced): list/watch (with ``fieldSelector``: ``spec.nodeName``,
  ``spec.driver``, ``spec.pool.name`` for slices, ``metadata.name`` /
  ``metadata.namespace`` for both), ``POST`` (create, ``generateName``),
  ``GET``/``PUT``/``DELETE``/``PATCH`` of one object and ``GET``/``PUT``/``PATCH``
  of a claim's ``/status``. ``PUT`` and a merge patch carrying
  ``metadata.resourceVersion`` are conditional (409 Conflict on a stale
  version), as the real server's; JSON patch (``test`` included) and merge
  patch are served, other patch types get 415. A written ResourceSlice is
  checked against the API's validation rules (device names, 128/64 devices per
  slice, attribute names and sizes, pool fields, node selection): 422 Invalid.

One global resourceVersion counter orders every change, as etcd's revision
does. A large cluster is loaded with ``add_many`` then ``compact``; a paged
list's snapshot is computed once per list, not per page. Test controls:
``add``/``update``/``delete``, ``add_many``, ``compact``,
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
_RESOURCE = "resource.k8s.io"


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
        _Type("ResourceSlice", f"{_RESOURCE}/v1", "resourceslices", namespaced=False, builtin=True),
        _Type("ResourceClaim", f"{_RESOURCE}/v1", "resourceclaims", namespaced=True, builtin=True),
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
    (re.compile(rf"^/apis/{re.escape(_RESOURCE)}/v1/resourceslices$"), "ResourceSlice"),
    (re.compile(rf"^/apis/{re.escape(_RESOURCE)}/v1{_NS}?/resourceclaims$"), "ResourceClaim"),
]
# One object of a resource.k8s.io kind, optionally its status subresource.
_OBJECT = re.compile(
    rf"^/apis/{re.escape(_RESOURCE)}/v1{_NS}?/(?P<plural>resourceslices|resourceclaims)"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$"
)
_BY_PLURAL = {"resourceslices": "ResourceSlice", "resourceclaims": "ResourceClaim"}
# Field selectors each kind supports (the real server: "field label not supported").
_FIELDS: dict[str, set[str]] = {
    "Pod": {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.hostNetwork",
        "status.phase",
    },
    "ResourceSlice": {"metadata.name", "spec.nodeName", "spec.driver", "spec.pool.name"},
    "ResourceClaim": {"metadata.name", "metadata.namespace"},
}
_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[a-z0-9-]+)/events(?:/(?P<name>[^/]+))?$")

_LIST_PARAMS = {
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
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
    fields: tuple[tuple[str, str, bool], ...] = ()  # (path, value, equal)
    partial: bool = False  # metadata-only events

    def wants(self, key: Key, obj: dict[str, Any]) -> bool:
        return self.namespace in (None, key[0]) and _fields_match(obj, self.fields)

    def event(
        self, key: Key, action: str, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> bytes | None:
        """The line this watcher sees for a change from ``old`` to ``new``:
        with a field selector, leaving the selection is a DELETED and entering
        it an ADDED."""
        if self.namespace not in (None, key[0]):
            return None
        was = old is not None and _fields_match(old, self.fields)
        now = _fields_match(new, self.fields)
        if action == "DELETED":
            action = "DELETED" if was else ""
        elif was and not now:
            action = "DELETED"
        elif now and not was:
            action = "ADDED"
        elif not now:
            action = ""
        if not action:
            return None
        return _line(action, _partial(new) if self.partial else new)


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
        # The DRADeviceTaints feature gate: off, the server drops device taints
        # from written ResourceSlices, as a real one does with a gated field.
        self.device_taints = True
        # Called (outside the store lock) with each request before it is
        # served, to change the world at an exact point of a client's sequence.
        self.on_request: Callable[[Request], None] | None = None
        # Serve metadata-only lists/watches when asked (a real server does);
        # off: answer them with full objects, as a server without it would.
        self.metadata_only = True
        # One paged list's snapshot (kind, rv, namespace, fields) -> sorted keys
        # and state, so 200 pages of a 100,000-pod list do not rebuild it each.
        self._list_cache: dict[str, tuple[Any, list[Key], dict[Key, dict[str, Any]]]] = {}
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

    def commit(self, action: str, obj: dict[str, Any]) -> tuple[int, float]:
        """``add``/``update``/``delete`` (``action`` is the watch event type)
        for a caller that hands ``obj`` over, as a benchmark's driver does: no
        copy of it in or out, which for a 10,000-peer policy would be most of
        this Python server's time and would run beside the agent under test.
        Returns the new resourceVersion and when the watch events were queued
        (``time.monotonic()``, after encoding them)."""
        stored, queued_at = self._store(action, obj)
        return int(stored["metadata"]["resourceVersion"]), queued_at

    def add_many(self, objs: list[dict[str, Any]]) -> int:
        """Add many objects at once (a generated cluster), taking ownership of
        the dicts rather than copying them; one version each, as ``add``
        would. Watches are not told: load before anyone watches, then
        ``compact``. Returns the last version."""
        with self._cond:
            for obj in objs:
                t = TYPES[obj["kind"]]
                meta = obj.setdefault("metadata", {})
                if t.namespaced:
                    meta.setdefault("namespace", "default")
                key = (meta.get("namespace", "") if t.namespaced else "", meta["name"])
                if key in self._objects[t.kind]:
                    raise ValueError(f"{t.kind} {key} already exists")
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self._rv += 1
                meta["resourceVersion"] = str(self._rv)
                entry = (self._rv, "ADDED", obj)
                self._log[t.kind].append(entry)
                _apply(self._objects[t.kind], entry)
            self._cond.notify_all()
            return self._rv

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
        stored, _ = self._store(action, copy.deepcopy(obj))
        return copy.deepcopy(stored)

    def _store(self, action: str, stored: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Commit ``stored`` (owned from here on, never changed after) and
        queue its watch events; the stored object and when they were queued."""
        kind = stored.get("kind")
        if kind not in TYPES:
            raise ValueError(f"unsupported kind {kind!r}")
        t = TYPES[kind]
        if stored.get("apiVersion") != t.api_version:
            raise ValueError(f"{kind} needs apiVersion {t.api_version}")
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
                if watcher.kind == kind and not watcher.dropped:
                    line = watcher.event(key, action, current, stored)
                    if line is not None:
                        watcher.lines.append(line)
            queued_at = time.monotonic()
            self._cond.notify_all()
            return stored, queued_at

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


_META_V1 = "meta.k8s.io/v1"


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": _META_V1, "metadata": obj["metadata"]}


def _negotiate(accept: str | None, want: str, enabled: bool) -> bool | None:
    """From an Accept header, whether to answer metadata-only (``want`` is
    the ``as=`` this verb can serve); None: nothing acceptable (406)."""
    if not accept:
        return False
    for media in accept.split(","):
        kind, *raw_params = (p.strip() for p in media.split(";"))
        params = dict(p.split("=", 1) for p in raw_params if "=" in p)
        if kind not in ("application/json", "application/*", "*/*"):
            continue
        if "as" not in params:
            return False
        if (
            enabled
            and params["as"] == want
            and params.get("g") == "meta.k8s.io"
            and params.get("v") == "v1"
        ):
            return True
    return None


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
        # Headers and body go out as separate writes; with Nagle on, the body
        # waits for the client's delayed ACK (~40 ms) on a kept-alive connection.
        disable_nagle_algorithm = True

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
            if _OBJECT.match(path):
                self._object_verb("GET", path, query)
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
            if _OBJECT.match(path):
                self._object_verb("POST", path, _query)
                return
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
            if _OBJECT.match(path):
                self._object_verb("PATCH", path, _query)
                return
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

        def do_PUT(self) -> None:
            start = self._prologue()
            if start is not None:
                self._object_verb("PUT", *start)

        def do_DELETE(self) -> None:
            start = self._prologue()
            if start is not None:
                self._object_verb("DELETE", *start)

        # -- resource.k8s.io objects --------------------------------------

        def _field_selector(
            self, kind: str, query: dict[str, str]
        ) -> tuple[tuple[str, str, bool], ...] | None:
            try:
                return _parse_fields(kind, query.get("fieldSelector", ""))
            except ValueError as e:
                self._error(400, str(e))
                return None

        def _object_verb(self, verb: str, path: str, query: dict[str, str]) -> None:
            match = _OBJECT.match(path)
            if match is None:
                self._error(404, f"no route for {verb} {path}")
                return
            kind = _BY_PLURAL[match.group("plural")]
            t = TYPES[kind]
            ns, name, status = match.group("ns"), match.group("name"), bool(match.group("status"))
            if (ns is not None) != t.namespaced or (name is None) != (verb == "POST"):
                self._error(404, f"no route for {verb} {path}")
                return
            unknown = set(query) - {"fieldManager", "fieldValidation", "dryRun", "pretty"}
            if unknown:
                self._error(400, f"unsupported query parameters {sorted(unknown)}")
                return
            if status and kind != "ResourceClaim":
                self._error(404, f"{t.plural} has no status subresource")
                return
            body: Any = None
            if verb in ("POST", "PUT", "PATCH"):
                try:
                    body = self._body()
                except ValueError:
                    self._error(400, "request body is not JSON")
                    return
            with server._cond:
                result = _object_op(server, verb, kind, ns or "", name, status, body, self.headers)
            self._send_json(*result)

        # -- list and watch -----------------------------------------------

        def _list(self, kind: str, namespace: str | None, query: dict[str, str]) -> None:
            t = TYPES[kind]
            fields = self._field_selector(kind, query)
            if fields is None:
                return
            partial = _negotiate(
                self.headers.get("Accept"), "PartialObjectMetadataList", server.metadata_only
            )
            if partial is None:
                self._error(406, "none of the requested media types is served")
                return
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
                ident = (rv, namespace, fields)
                cached = server._list_cache.get(kind)
                if cached is not None and cached[0] == ident:
                    keys, state = cached[1], cached[2]
                else:
                    state = server._snapshot(kind, rv)
                    keys = sorted(
                        k
                        for k in state
                        if namespace in (None, k[0]) and _fields_match(state[k], fields)
                    )
                    server._list_cache[kind] = (ident, keys, state)
            limit = int(query.get("limit") or 0)
            page = keys[offset : offset + limit] if limit else keys[offset:]
            # Stored objects are never changed in place (a change stores a new
            # one), so the page is serialised from them without copying.
            items: list[dict[str, Any]] = []
            for key in page:
                if partial:
                    items.append(_partial(state[key]))
                elif t.builtin:
                    items.append(
                        {k: v for k, v in state[key].items() if k not in ("kind", "apiVersion")}
                    )
                else:
                    items.append(state[key])
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            rest = len(keys) - offset - len(page)
            if limit and rest > 0:
                next_token = {"rv": rv, "offset": offset + len(page)}
                meta["continue"] = base64.b64encode(json.dumps(next_token).encode()).decode()
                meta["remainingItemCount"] = rest
            list_version = _META_V1 if partial else "v1" if t.builtin else t.api_version
            self._send_json(
                200,
                {
                    "kind": "PartialObjectMetadataList" if partial else f"{kind}List",
                    "apiVersion": list_version,
                    "metadata": meta,
                    "items": items,
                },
            )

        def _watch(self, kind: str, namespace: str | None, query: dict[str, str]) -> None:
            raw_rv = query.get("resourceVersion", "")
            timeout = float(query.get("timeoutSeconds") or 1800)
            fields = self._field_selector(kind, query)
            if fields is None:
                return
            partial = _negotiate(
                self.headers.get("Accept"), "PartialObjectMetadata", server.metadata_only
            )
            if partial is None:
                self._error(406, "none of the requested media types is served")
                return
            watcher = _Watcher(
                kind,
                namespace,
                query.get("allowWatchBookmarks") == "true",
                fields=fields,
                partial=partial,
            )
            gone = False
            with server._cond:
                if raw_rv in ("", "0"):
                    # "Any version": start with the current state as ADDED events.
                    for key, obj in sorted(server._objects[kind].items()):
                        line = watcher.event(key, "ADDED", None, obj)
                        if line is not None:
                            watcher.lines.append(line)
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
                        # Replayed against the state at rv, so that an object
                        # leaving a field selection replays as DELETED.
                        state = server._snapshot(kind, rv)
                        for entry in server._log[kind]:
                            if entry[0] <= rv:
                                continue
                            _rv, action, obj = entry
                            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                            line = watcher.event(key, action, state.get(key), obj)
                            if line is not None:
                                watcher.lines.append(line)
                            _apply(state, entry)
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


_GROUP_RESOURCE = {"ResourceSlice": "resourceslices", "ResourceClaim": "resourceclaims"}


def _not_found(kind: str, name: str) -> tuple[int, dict[str, Any]]:
    what = f"{_GROUP_RESOURCE[kind]}.{_RESOURCE}"
    return 404, _status(404, "NotFound", f'{what} "{name}" not found')


def _object_op(
    server: FakeApiServer,
    verb: str,
    kind: str,
    ns: str,
    name: str | None,
    status: bool,
    body: Any,
    headers: Any,
) -> tuple[int, dict[str, Any]]:
    """One write or read of a resource.k8s.io object; called with the store
    lock held so check-then-write is atomic. Returns (HTTP code, body)."""
    t = TYPES[kind]
    if verb == "POST":
        if not isinstance(body, dict):
            return 400, _status(400, "BadRequest", "body must be an object")
        obj = copy.deepcopy(body)
        if (
            obj.setdefault("kind", kind) != kind
            or obj.setdefault("apiVersion", t.api_version) != t.api_version
        ):
            return 400, _status(400, "BadRequest", f"body is not a {t.api_version} {kind}")
        meta = obj.setdefault("metadata", {})
        if t.namespaced and meta.setdefault("namespace", ns) != ns:
            return 400, _status(400, "BadRequest", "metadata.namespace does not match the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                return 422, _invalid(kind, "", ["metadata.name: Required value"])
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        meta.pop("resourceVersion", None)
        if (ns, meta["name"]) in server._objects[kind]:
            msg = f'{_GROUP_RESOURCE[kind]}.{_RESOURCE} "{meta["name"]}" already exists'
            return 409, _status(409, "AlreadyExists", msg)
        if kind == "ResourceClaim":
            obj.pop("status", None)  # status is written through /status only
        if problems := _validate(kind, obj):
            return 422, _invalid(kind, meta["name"], problems)
        _drop_gated(server, kind, obj)
        return 201, server._change("ADDED", obj)
    assert name is not None
    current = server._objects[kind].get((ns, name))
    if current is None:
        return _not_found(kind, name)
    if verb == "GET":
        return 200, copy.deepcopy(current)
    if verb == "DELETE":
        return 200, server._change("DELETED", current)
    if verb == "PUT":
        if not isinstance(body, dict):
            return 400, _status(400, "BadRequest", "body must be an object")
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        if meta.get("name") != name:
            return 400, _status(400, "BadRequest", "metadata.name does not match the request")
        wanted = meta.get("resourceVersion")
    elif verb == "PATCH":
        content_type = headers.get("Content-Type", "")
        new = copy.deepcopy(current)
        wanted = None
        if content_type == "application/merge-patch+json" and isinstance(body, dict):
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            _merge_patch(new, body)
        elif content_type == "application/json-patch+json" and isinstance(body, list):
            try:
                new = _json_patch(new, body)
            except ValueError as e:
                return 422, _invalid(kind, name, [str(e)])
        else:
            return 415, _status(
                415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}"
            )
    else:
        return 405, _status(405, "MethodNotAllowed", verb)
    if wanted is not None and str(wanted) != current["metadata"]["resourceVersion"]:
        message = (
            f'Operation cannot be fulfilled on {_GROUP_RESOURCE[kind]}.{_RESOURCE} "{name}": '
            "the object has been modified; please apply your changes to the latest version "
            "and try again"
        )
        return 409, _status(409, "Conflict", message)
    if kind == "ResourceClaim":
        # The status subresource changes only status; the main resource never does.
        if status:
            kept = copy.deepcopy(current)
            kept["status"] = new.get("status") or {}
            new = kept
        else:
            new["status"] = copy.deepcopy(current.get("status") or {})
    new["kind"], new["apiVersion"] = kind, t.api_version
    meta = new.setdefault("metadata", {})
    meta["name"] = name
    if t.namespaced:
        meta["namespace"] = ns
    if problems := _validate(kind, new):
        return 422, _invalid(kind, name, problems)
    _drop_gated(server, kind, new)
    return 200, server._change("MODIFIED", new)


def _drop_gated(server: FakeApiServer, kind: str, obj: dict[str, Any]) -> None:
    if kind == "ResourceSlice" and not server.device_taints:
        for device in obj.get("spec", {}).get("devices") or []:
            if isinstance(device, dict):
                device.pop("taints", None)


def _invalid(kind: str, name: str, problems: list[str]) -> dict[str, Any]:
    body = _status(
        422, "Invalid", f'{kind}.{_RESOURCE} "{name}" is invalid: ' + "; ".join(problems)
    )
    body["details"] = {
        "name": name,
        "group": _RESOURCE,
        "kind": _GROUP_RESOURCE[kind],
        "causes": [{"message": p} for p in problems],
    }
    return body


def _parse_fields(kind: str, text: str) -> tuple[tuple[str, str, bool], ...]:
    out: list[tuple[str, str, bool]] = []
    for term in filter(None, text.split(",")):
        m = re.fullmatch(r"([A-Za-z.]+)(==|=|!=)(.*)", term)
        if m is None:
            raise ValueError(f"invalid field selector term {term!r}")
        if m[1] not in _FIELDS.get(kind, {"metadata.name", "metadata.namespace"}):
            raise ValueError(f'field label not supported: "{m[1]}"')
        out.append((m[1], m[3], m[2] != "!="))
    return tuple(out)


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if path == "spec.hostNetwork":  # a bool the server always has a value for
        return "true" if value is True else "false"
    return "" if value is None else str(value)


def _fields_match(obj: dict[str, Any], fields: tuple[tuple[str, str, bool], ...]) -> bool:
    return all((_field_value(obj, path) == value) == equal for path, value, equal in fields)


def _json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 (add, remove, replace, test) over JSON pointers."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "path" not in op:
            raise ValueError(f"malformed JSON patch operation {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise ValueError(f"path {op['path']!r} does not exist")
        last = parts[-1] if parts else ""
        kind = op.get("op")
        if kind == "test":
            here = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if here != op.get("value"):
                raise ValueError(f"testing value {op['path']} failed")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            else:
                if kind == "replace" and last not in parent:
                    raise ValueError(f"replace of missing path {op['path']!r}")
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ValueError(f"remove of missing path {op['path']!r}")
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")
    return doc


_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_C_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_TAINT_EFFECTS = {"None", "NoSchedule", "NoExecute"}


def _validate(kind: str, obj: dict[str, Any]) -> list[str]:
    """The subset of the API server's validation a node agent's writes can hit."""
    if kind != "ResourceSlice":
        return []
    problems: list[str] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return ["spec: Required value"]
    driver = spec.get("driver")
    if not isinstance(driver, str) or len(driver) > 63 or not _SUBDOMAIN_RE.fullmatch(driver):
        problems.append(f"spec.driver: Invalid value: {driver!r}")
    pool = spec.get("pool") or {}
    pool_name = pool.get("name")
    if not isinstance(pool_name, str) or not pool_name or len(pool_name) > 253:
        problems.append(f"spec.pool.name: Invalid value: {pool_name!r}")
    generation = pool.get("generation", 0)
    if not isinstance(generation, int) or generation < 0:
        problems.append(f"spec.pool.generation: Invalid value: {generation!r}")
    count = pool.get("resourceSliceCount")
    if not isinstance(count, int) or count <= 0:
        problems.append(f"spec.pool.resourceSliceCount: Invalid value: {count!r}")
    chosen = [
        k
        for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")
        if spec.get(k) not in (None, "", False)
    ]
    if len(chosen) != 1:
        problems.append(
            f"spec: exactly one of nodeName, nodeSelector, allNodes, "
            f"perDeviceNodeSelection is required, got {chosen}"
        )
    devices = spec.get("devices") or []
    tainted = any(d.get("taints") for d in devices if isinstance(d, dict))
    limit = 64 if tainted else 128
    if len(devices) > limit:
        problems.append(f"spec.devices: Too many: {len(devices)}: must have at most {limit} items")
    seen: set[str] = set()
    for i, device in enumerate(devices):
        where = f"spec.devices[{i}]"
        if not isinstance(device, dict):
            problems.append(f"{where}: must be an object")
            continue
        dname = device.get("name")
        if not isinstance(dname, str) or len(dname) > 63 or not _DNS_LABEL_RE.fullmatch(dname):
            problems.append(f"{where}.name: Invalid value: {dname!r}: must be a DNS label")
        elif dname in seen:
            problems.append(f"{where}.name: Duplicate value: {dname!r}")
        else:
            seen.add(str(dname))
        attributes = device.get("attributes") or {}
        capacity = device.get("capacity") or {}
        if len(attributes) + len(capacity) > 32:
            problems.append(f"{where}: Too many: attributes and capacities must be at most 32")
        for key, value in attributes.items():
            domain, slash, ident = key.rpartition("/")
            if (slash and (len(domain) > 63 or not _SUBDOMAIN_RE.fullmatch(domain))) or (
                len(ident) > 32 or not _C_IDENT_RE.fullmatch(ident)
            ):
                problems.append(f"{where}.attributes[{key}]: Invalid value: not a qualified name")
            set_fields = (
                [k for k in ("int", "bool", "string", "version") if k in (value or {})]
                if isinstance(value, dict)
                else []
            )
            if len(set_fields) != 1:
                problems.append(f"{where}.attributes[{key}]: exactly one value type is required")
            for k in ("string", "version"):
                text = value.get(k) if isinstance(value, dict) else None
                if isinstance(text, str) and len(text) > 64:
                    problems.append(f"{where}.attributes[{key}].{k}: Too long: at most 64")
        taints = device.get("taints") or []
        if len(taints) > 16:
            problems.append(f"{where}.taints: Too many: at most 16")
        for j, taint in enumerate(taints):
            tkey = taint.get("key") if isinstance(taint, dict) else None
            tname = (tkey or "").rpartition("/")[2]
            if not isinstance(tkey, str) or not _LABEL_NAME_RE.fullmatch(tname):
                problems.append(f"{where}.taints[{j}].key: Invalid value: {tkey!r}")
            effect = taint.get("effect") if isinstance(taint, dict) else None
            if effect not in _TAINT_EFFECTS:
                problems.append(f"{where}.taints[{j}].effect: Unsupported value: {effect!r}")
    return problems


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
