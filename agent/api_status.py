"""How agent errors travel over gRPC, both ways.

The server aborts with the kind's status code and a human status message
(``message (details)``), and sends the error itself in trailing metadata:
``nicwarden-error-kind`` (ASCII, readable by any gRPC client) and
``nicwarden-error-bin`` (JSON ``{kind, message, details}``, UTF-8). A client
rebuilds the agent's exception from those with :func:`error_from_rpc`; a
failed call without them never reached the agent's handlers (the socket is
unreachable, the method does not exist there).

This is the only place status codes are chosen: code below the API layer
raises the kinds of ``agent/errors.py`` and never imports grpc.
"""

from __future__ import annotations

import json
from typing import NoReturn, Protocol

import grpc

from nicwarden.agent.errors import NicwardenError, rebuild

KIND_KEY = "nicwarden-error-kind"
ERROR_KEY = "nicwarden-error-bin"  # the -bin suffix lets the value be any bytes

# Status code per error kind. Clients should read the kind from the trailer;
# the code is for generic gRPC tooling (grpcurl, kubelet's logs).
GRPC_CODES: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "config": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "busy": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unsupported": grpc.StatusCode.UNIMPLEMENTED,
    "unsupported_field": grpc.StatusCode.UNIMPLEMENTED,
    "host": grpc.StatusCode.INTERNAL,
    "store": grpc.StatusCode.INTERNAL,
    "internal": grpc.StatusCode.INTERNAL,
}


class _AbortContext(Protocol):
    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None: ...
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...


def grpc_code(err: NicwardenError) -> grpc.StatusCode:
    return GRPC_CODES.get(err.kind, grpc.StatusCode.INTERNAL)


def abort_with(context: _AbortContext, err: NicwardenError) -> NoReturn:
    """End the call with ``err``: its status code, and the error in trailers."""
    payload = json.dumps(err.to_dict()).encode()
    context.set_trailing_metadata(((KIND_KEY, err.kind), (ERROR_KEY, payload)))
    context.abort(grpc_code(err), str(err))


def error_from_rpc(failure: grpc.RpcError) -> NicwardenError | None:
    """The agent's error carried by a failed call, or None when the call
    failed before the agent's handler answered it."""
    trailers = _trailers(failure)
    kind = trailers.get(KIND_KEY)
    if not isinstance(kind, str) or not kind:
        return None
    raw = trailers.get(ERROR_KEY)
    if isinstance(raw, bytes):
        try:
            body = json.loads(raw.decode())
        except ValueError:
            body = None
        if isinstance(body, dict):
            message, details = body.get("message"), body.get("details", "")
            if isinstance(message, str) and isinstance(details, str):
                return rebuild(kind, message, details)
    # An agent that sends only the kind: the status message is all there is.
    return rebuild(kind, _status_message(failure))


def _trailers(failure: grpc.RpcError) -> dict[str, str | bytes]:
    method = getattr(failure, "trailing_metadata", None)
    items = method() if callable(method) else None
    return {key: value for key, value in items or ()}


def _status_message(failure: grpc.RpcError) -> str:
    method = getattr(failure, "details", None)
    text = method() if callable(method) else None
    return text if isinstance(text, str) else str(failure)
