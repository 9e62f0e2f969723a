#!/usr/bin/python3 -IS
"""nicwarden CNI shim: forwards one CNI invocation to the nicwarden agent.

The runtime (or Multus) execs this for every pod attachment, so it is one
stdlib-only file that any host ``python3 >= 3.9`` runs, copied to
``/opt/cni/bin/nicwarden`` or installed as ``nicwarden-cni``. It holds no CNI
logic beyond answering VERSION: it sends ``{"env": {CNI_*}, "stdin": "<config>"}``
to ``POST /v1/cni`` on the agent's unix socket and prints the answer verbatim
with the exit code from ``X-CNI-Exit-Code``.

``-IS`` (isolated, no site packages) halves interpreter start-up: the shim
needs only the stdlib. ``nicwardenctl install-cni`` rewrites this line when
the host's python3 lives elsewhere.

The socket is the config's top-level ``agentSocket``, else
``$NICWARDEN_CNI_SOCKET``, else ``/run/nicwarden/cni.sock``.
"""

from __future__ import annotations

import errno
import os
import sys
import time

# Start-up is most of this program's cost (it runs twice per pod), so the
# request path avoids the pure-Python json, re and socket modules (~12 ms
# together) and uses their C cores; the fallbacks serve other interpreters.
try:
    import _json
    import _socket as socket

    _SCANNER_OK = True
except ImportError:  # pragma: no cover - CPython always has them
    import socket  # type: ignore[no-redef]

    _SCANNER_OK = False

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

DEFAULT_SOCKET = "/run/nicwarden/cni.sock"
SOCKET_ENV = "NICWARDEN_CNI_SOCKET"
CONFIG_SOCKET_KEY = "agentSocket"
API_PATH = "/v1/cni"
EXIT_CODE_HEADER = "x-cni-exit-code"

# Long enough to ride out an agent restart, short enough that the runtime's
# own retry (kubelet re-runs the sandbox setup) takes over promptly.
CONNECT_WINDOW = 3.0
FIRST_BACKOFF = 0.05
CONNECT_TIMEOUT = 1.0
# An ADD may wait on IPAM and kernel work. Kubelet cancels a sandbox request
# after 2 minutes; answering before that yields a readable error, not a kill.
RESPONSE_TIMEOUT = 110.0
_TRANSIENT_ERRNOS = (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN)
# For labelling a decode error with the caller's version when the JSON is
# broken elsewhere (compiled on that rare path only).
_VERSION_PATTERN = r'"cniVersion"\s*:\s*"([^"\\]*)"'

IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_ENVIRONMENT = 4
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
INTERNAL = 999


class ShimError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class AgentUnavailable(Exception):
    """The agent did not take the request; it was not run, so the caller may
    say "try again" without risking a half-done ADD."""


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    command = env.get("CNI_COMMAND", "")
    version = CURRENT_VERSION
    try:
        stdin, config, decode_error = _read_config()
        version = _input_version(config, stdin) or version
        if command == "VERSION":
            _write(_render(_version_answer(config)))
            return 0
        _check_command(command)
        if decode_error:
            raise ShimError(
                DECODE_FAILURE, f"decoding the network config from stdin: {decode_error}"
            )
        path = _socket_path(config)
        try:
            exit_code, output = _forward(path, env, stdin)
        except AgentUnavailable as why:
            raise _unavailable(command, env, path, str(why)) from None
    except ShimError as err:
        _write(_render(_error(err, version)))
        return 1
    except Exception as err:
        # A bug here must still give the runtime a CNI error, not a traceback.
        bug = ShimError(INTERNAL, f"nicwarden shim failed: {type(err).__name__}: {err}")
        _write(_render(_error(bug, version)))
        return 1
    _write(output)
    return exit_code


# ------------------------------------------------------------------ input

_UNDECODABLE = object()


def _read_config() -> tuple[str, object, str]:
    """stdin as text, the decoded config (or _UNDECODABLE) and why not."""
    try:
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
    except OSError as err:
        raise ShimError(IO_FAILURE, f"reading the network config from stdin: {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        # Kept readable (not raised) so VERSION still answers and the error
        # can carry the version found in the rest of the text.
        return data.decode("utf-8", "replace"), _UNDECODABLE, f"not UTF-8: {err}"
    try:
        return text, _loads(text), ""
    except ValueError as err:
        return text, _UNDECODABLE, str(err) or "not JSON"


class _ScanContext:
    """What _json.make_scanner reads off json.JSONDecoder, without importing it."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant: object = None
    memo: dict[str, str] = {}


_WHITESPACE = " \t\n\r"


def _loads(text: str) -> object:
    if not _SCANNER_OK:
        import json

        return json.loads(text)
    ctx = _ScanContext()
    ctx.memo = {}
    ctx.parse_constant = _constant
    scan = _json.make_scanner(ctx)  # type: ignore[arg-type]  # duck-typed JSONDecoder
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = scan(text, start)
        if not text[end:].strip(_WHITESPACE):
            return obj
    except (StopIteration, SystemError):
        # The C scanner cannot build its error in isolated mode: let the
        # pure-Python decoder (slow path only) say precisely what is wrong.
        pass
    import json

    return json.loads(text)


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def _dumps_str(value: str) -> str:
    if _SCANNER_OK:
        return str(_json.encode_basestring_ascii(value))
    import json

    return json.dumps(value)


def _input_version(config: object, stdin: str) -> str | None:
    if isinstance(config, dict):
        value = config.get("cniVersion")
        return value if isinstance(value, str) else None
    if config is not _UNDECODABLE:
        return None
    import re

    match = re.search(_VERSION_PATTERN, stdin)
    return match.group(1) if match else None


def _version_answer(config: object) -> dict[str, object]:
    # SPEC: echo the input version; with none we speak, offer our newest.
    requested = config.get("cniVersion") if isinstance(config, dict) else None
    chosen = requested if requested in SUPPORTED_VERSIONS else CURRENT_VERSION
    return {"cniVersion": chosen, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _check_command(command: str) -> None:
    if not command:
        raise ShimError(INVALID_ENVIRONMENT, "missing environment variables: CNI_COMMAND")
    if command not in COMMANDS:
        raise ShimError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")


def _socket_path(config: object) -> str:
    value = config.get(CONFIG_SOCKET_KEY) if isinstance(config, dict) else None
    if value is not None:
        if not isinstance(value, str) or not value:
            raise ShimError(INVALID_CONFIG, f"{CONFIG_SOCKET_KEY}: must be a socket path")
        return value
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


# -------------------------------------------------------------- transport


def _forward(path: str, env: dict[str, str], stdin: str) -> tuple[int, bytes]:
    pairs = ",".join(f"{_dumps_str(k)}:{_dumps_str(v)}" for k, v in sorted(env.items()))
    body = f'{{"env":{{{pairs}}},"stdin":{_dumps_str(stdin)}}}'.encode()
    # A hand-written request: importing http.client would triple this
    # program's start-up time, and it runs for every pod.
    request = (
        b"POST " + API_PATH.encode() + b" HTTP/1.1\r\n"
        b"Host: nicwarden-agent\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )
    deadline = time.monotonic() + CONNECT_WINDOW
    delay = FIRST_BACKOFF
    while True:
        try:
            status, headers, payload = _exchange(_connect(path), request)
            if status != 503:
                return _interpret(status, headers, payload)
            reason = "the agent is not ready"
        except AgentUnavailable as why:
            reason = str(why)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnavailable(reason)
        time.sleep(min(delay, remaining))
        delay *= 2


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except socket.timeout:
        sock.close()
        raise AgentUnavailable("connecting timed out") from None
    except OSError as err:
        sock.close()
        if err.errno in _TRANSIENT_ERRNOS:
            raise AgentUnavailable(os.strerror(err.errno)) from None
        raise ShimError(
            IO_FAILURE, f"cannot connect to the nicwarden agent at {path}: {err}"
        ) from None
    return sock


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    # Once the request is sent the agent may be acting on it, so failures from
    # here on are never retried: a second ADD is not allowed (C22).
    try:
        sock.settimeout(RESPONSE_TIMEOUT)
        sock.sendall(request)
        return _read_response(sock)
    except socket.timeout:
        raise ShimError(
            TRY_AGAIN_LATER,
            f"the nicwarden agent did not answer within {RESPONSE_TIMEOUT:g} s",
        ) from None
    except OSError as err:
        raise ShimError(
            TRY_AGAIN_LATER, f"the connection to the nicwarden agent failed: {err}"
        ) from None
    finally:
        sock.close()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ShimError(TRY_AGAIN_LATER, "the nicwarden agent closed the connection unanswered")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ShimError(INTERNAL, f"the nicwarden agent sent a malformed status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        raise ShimError(INTERNAL, "the nicwarden agent's answer has no Content-Length")
    want = int(length)
    body = rest
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            raise ShimError(TRY_AGAIN_LATER, "the nicwarden agent's answer was cut short")
        body += chunk
    return int(parts[1]), headers, body[:want]


def _interpret(status: int, headers: dict[str, str], payload: bytes) -> tuple[int, bytes]:
    if status != 200:
        text = payload.decode("utf-8", "replace").strip()
        raise ShimError(INTERNAL, f"the nicwarden agent answered HTTP {status}: {text}")
    raw = headers.get(EXIT_CODE_HEADER, "")
    if not raw.isdigit() or int(raw) > 255:
        raise ShimError(INTERNAL, f"the nicwarden agent's answer has no valid {EXIT_CODE_HEADER}")
    return int(raw), payload


def _unavailable(command: str, env: dict[str, str], path: str, reason: str) -> ShimError:
    where = f"the nicwarden agent is not reachable at {path} ({reason})"
    if command == "DEL":
        # Never a silent success: that would let the runtime forget a VF that
        # is still attached. An error makes kubelet retry the DEL later.
        attachment = f"{env.get('CNI_CONTAINERID', '?')}/{env.get('CNI_IFNAME', '?')}"
        return ShimError(
            TRY_AGAIN_LATER,
            f"could not confirm that attachment {attachment} was removed: {where}",
            "DEL must be retried once the agent is running",
        )
    if command == "STATUS":
        # C28: a runtime reads a STATUS failure as 50/51 ("cannot serve ADD").
        return ShimError(NOT_AVAILABLE, where)
    return ShimError(TRY_AGAIN_LATER, where)


# ----------------------------------------------------------------- output


def _error(err: ShimError, version: str) -> dict[str, object]:
    out: dict[str, object] = {"cniVersion": version, "code": err.code, "msg": err.msg}
    if err.details:
        out["details"] = err.details
    return out


def _render(obj: object) -> bytes:
    import json  # only for local answers (VERSION, errors): off the hot path

    return (json.dumps(obj, indent=4) + "\n").encode("utf-8")


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    sys.exit(main())
