"""The agent's side of the shim protocol: HTTP/1.1 on a root-only unix socket.

``POST /v1/cni`` takes ``{"env": {CNI_*...}, "stdin": "<config text>"}`` and
answers 200 with the bytes the shim prints and ``X-CNI-Exit-Code``. ``GET
/v1/ready`` answers 200 or 503. While the agent is not ready, ``POST`` answers
503 without running the request, so the shim may safely retry it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import selectors
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.sockets import claim
from nicwarden.agent.wake import WakePipe
from nicwarden.cni.errors import INVALID_CONFIG
from nicwarden.cni.version import CURRENT_VERSION, is_supported

log = logging.getLogger(__name__)

CniHandler = Callable[[dict[str, str], str], tuple[int, bytes]]
ReadyCheck = Callable[[], bool]

CNI_PATH = "/v1/cni"
READY_PATH = "/v1/ready"
EXIT_CODE_HEADER = "X-CNI-Exit-Code"
# The shim names the config's cniVersion here, so that an error given before
# the body is read (an oversized request) still carries the caller's version.
VERSION_HEADER = "X-CNI-Version"
MAX_REQUEST_BYTES = 1 << 20  # a CNI config is a few KiB; a prevResult adds little
_REQUEST_READ_TIMEOUT = 30.0  # a client that stalls mid-request must not pin a thread
# After refusing an oversized body the server keeps reading (and dropping) it
# for a while before it closes, so that a client still writing does not meet
# EPIPE and lose the answer (RFC 9112, 9.6). Both bounds keep a hostile client
# from holding the thread.
_LINGER_MAX_BYTES = 16 << 20
_LINGER_SECONDS = 2.0


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # stop() must not wait for a handler stuck in the backend (a slow kernel write).
    block_on_close = False
    # handle_request() is called only once the socket polled readable; 0
    # keeps it from blocking should the client be gone by then.
    timeout = 0.0

    def __init__(self, path: Path, handler: CniHandler, ready: ReadyCheck, max_bytes: int) -> None:
        self.cni_handler = handler
        self.ready = ready
        self.max_bytes = max_bytes
        self.bound_inode: tuple[int, int] | None = None
        # The accept loop sleeps until a client connects or stop() writes
        # here; socketserver's own loop polls (ten wakeups a second, idle).
        self._wake = WakePipe()
        self._stopping = False
        super().__init__(str(path), _RequestHandler)

    def serve_until_stopped(self) -> None:
        with selectors.PollSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake.fd, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self and not self._stopping:
                        self.handle_request()  # readable: accepts at once

    def stop_serving(self) -> None:
        self._stopping = True
        self._wake.wake()

    def server_close(self) -> None:
        super().server_close()
        self._wake.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr. A client that
        # hung up before reading its answer (a shim killed or timed out after
        # a DEL) is routine; anything else is logged with its traceback, in
        # the agent's log format.
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            log.debug("cni endpoint: the client closed before the answer was sent")
        else:
            log.exception("cni endpoint: request failed")

    def server_bind(self) -> None:
        # bind() creates the socket file with the process umask, and changing
        # the umask would race other threads. So bind inside a private 0700
        # directory next to the target, tighten the mode, then rename into
        # place: the socket is never reachable with a loose mode, and the
        # rename atomically replaces any stale file.
        target = Path(self.server_address)  # type: ignore[arg-type]
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            temp = scratch / "sock"
            self.socket.bind(str(temp))
            os.chmod(temp, 0o600)
            os.rename(temp, target)
        finally:
            with contextlib.suppress(OSError):
                (scratch / "sock").unlink()
            scratch.rmdir()
        st = os.stat(target)
        self.bound_inode = (st.st_dev, st.st_ino)
        self.server_address = str(target)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nicwarden-cni"
    timeout = _REQUEST_READ_TIMEOUT
    server: _Server

    def do_GET(self) -> None:  # BaseHTTPRequestHandler dispatches on this name
        if self.path != READY_PATH:
            self._reply(404, b"not found\n")
        elif self._is_ready():
            self._reply(200, b"ready\n")
        else:
            self._reply(503, b"not ready\n")

    def do_POST(self) -> None:
        if self.path != CNI_PATH:
            self._reply(404, b"not found\n")
            return
        length = self._content_length()
        if length is None:
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._reply(400, b"request body shorter than Content-Length\n")
            return
        if not self._is_ready():
            self._reply(503, b"the nicwarden agent is not ready\n")
            return
        try:
            env, stdin = _decode_body(body)
        except InvalidArgument as err:
            self._reply(400, f"{err}\n".encode())
            return
        try:
            exit_code, output = self.server.cni_handler(env, stdin)
        except Exception:
            log.exception("CNI handler failed")
            self._reply(500, b"the CNI handler failed; see the agent log\n")
            return
        self._reply(200, output, {EXIT_CODE_HEADER: str(exit_code)}, "application/json")

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._reply(411, b"Content-Length required\n")
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._reply(400, b"bad Content-Length\n")
            return None
        if length > self.server.max_bytes:
            # The body is not parsed, so the connection cannot be reused. The
            # answer is a CNI error the shim prints as it is: the same config
            # is refused every time, so it must not read as "try again" (11).
            self.close_connection = True
            self._reply(
                413,
                _oversized(self.headers.get(VERSION_HEADER), length, self.server.max_bytes),
                {EXIT_CODE_HEADER: "1"},
                "application/json",
            )
            self._linger(length)
            return None
        return length

    def _linger(self, length: int) -> None:
        """Half-close, then drop what the client still sends, within bounds."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        left = min(length, _LINGER_MAX_BYTES)
        deadline = time.monotonic() + _LINGER_SECONDS
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def _is_ready(self) -> bool:
        try:
            return bool(self.server.ready())
        except Exception:
            log.exception("readiness check failed")
            return False

    def _reply(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        # A unix-socket peer has no address; the base class would index "".
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("cni endpoint: " + format, *args)


def _oversized(version: str | None, length: int, limit: int) -> bytes:
    error = {
        "cniVersion": version if is_supported(version) else CURRENT_VERSION,
        "code": INVALID_CONFIG,
        "msg": f"the CNI request is larger than the {limit} bytes the nicwarden agent accepts",
        "details": f"the network config and environment came to {length} bytes",
    }
    return (json.dumps(error, indent=4) + "\n").encode()


def _decode_body(body: bytes) -> tuple[dict[str, str], str]:
    try:
        obj = json.loads(body)
    except ValueError as err:
        raise InvalidArgument(f"body is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument("body is not a JSON object")
    env, stdin = obj.get("env"), obj.get("stdin")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidArgument('"env" must be an object of strings')
    if not isinstance(stdin, str):
        raise InvalidArgument('"stdin" must be a string')
    return env, stdin


def _always_ready() -> bool:
    return True


class CniHttpServer:
    """Serves the CNI shim on ``socket_path`` from a background thread."""

    def __init__(
        self,
        socket_path: Path,
        handler: CniHandler,
        ready: ReadyCheck = _always_ready,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._handler = handler
        self._ready = ready
        self._max_bytes = max_request_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("CniHttpServer already started")
        claim(self.socket_path, "nicwarden agent (its CNI endpoint)")
        self._server = _Server(self.socket_path, self._handler, self._ready, self._max_bytes)
        self._thread = threading.Thread(
            target=self._server.serve_until_stopped,
            name=f"cni-http {self.socket_path}",
            daemon=True,
        )
        self._thread.start()
        log.info("CNI endpoint listening on %s", self.socket_path)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stop_serving()
        if thread is not None:
            thread.join()
        server.server_close()
        _remove_if_ours(self.socket_path, server.bound_inode)

    def __enter__(self) -> CniHttpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_if_ours(path: Path, inode: tuple[int, int] | None) -> None:
    # A successor agent may already have replaced the socket; leave its file be.
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if inode == (st.st_dev, st.st_ino):
        path.unlink()
