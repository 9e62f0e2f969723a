"""Runs one parsed CNI request against the agent's backend and turns the
outcome into exactly what the shim prints: (exit code, stdout bytes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Protocol

from nicwarden.agent.errors import NicwardenError
from nicwarden.cni.errors import (
    INTERNAL,
    NOT_AVAILABLE,
    NOT_AVAILABLE_DEGRADED,
    CniError,
    from_nicwarden_error,
)
from nicwarden.cni.request import CniRequest, Command, error_version, parse_request
from nicwarden.cni.result import Result
from nicwarden.cni.version import version_answer

log = logging.getLogger(__name__)

SUCCESS = 0
FAILURE = 1


class CniBackend(Protocol):
    """What the agent implements to serve CNI. Each method may raise CniError
    or any agent error (mapped through cni.errors.CNI_CODES)."""

    def add(self, request: CniRequest) -> Result:
        """Attach and return the result; handle() renders it in the request's version."""
        ...

    def delete(self, request: CniRequest) -> None:
        """Idempotent: succeeds when the attachment or the netns is already gone."""
        ...

    def check(self, request: CniRequest) -> None:
        """Raise when what ADD set up (or its IPAM reservation) is missing."""
        ...

    def status(self, request: CniRequest) -> CniError | None:
        """None when ADD can be served; otherwise a code 50 or 51 error."""
        ...

    def gc(self, request: CniRequest) -> None:
        """Remove everything not in ``request.valid_attachments``."""
        ...


def handle(request: CniRequest, backend: CniBackend) -> tuple[int, bytes]:
    """Never raises, and never puts a traceback on stdout."""
    try:
        return _dispatch(request, backend)
    except CniError as err:
        return _error(_for_command(err, request.command), request.cni_version)
    except NicwardenError as err:
        return _error(_for_command(from_nicwarden_error(err), request.command), request.cni_version)
    except Exception as err:
        log.exception("CNI %s for %s failed unexpectedly", request.command, request.container_id)
        internal = CniError(
            INTERNAL, f"internal error in the nicwarden agent: {type(err).__name__}: {err}"
        )
        return _error(_for_command(internal, request.command), request.cni_version)


def handle_invocation(env: Mapping[str, str], stdin: str, backend: CniBackend) -> tuple[int, bytes]:
    """Parse and handle: the callable the agent gives CniHttpServer."""
    try:
        request = parse_request(env, stdin)
    except CniError as err:
        return _error(err, error_version(stdin))
    except Exception as err:
        log.exception("parsing a CNI request failed unexpectedly")
        internal = CniError(
            INTERNAL, f"internal error parsing the request: {type(err).__name__}: {err}"
        )
        return _error(internal, error_version(stdin))
    for warning in request.warnings:
        log.warning(
            "CNI %s %s/%s: %s", request.command, request.container_id, request.ifname, warning
        )
    return handle(request, backend)


def _dispatch(request: CniRequest, backend: CniBackend) -> tuple[int, bytes]:
    command = request.command
    if command is Command.VERSION:
        return (SUCCESS, _json(version_answer(request.cni_version)))
    if command is Command.ADD:
        result = backend.add(request)
        return (SUCCESS, _json(result.render(request.cni_version)))
    if command is Command.DEL:
        backend.delete(request)
    elif command is Command.CHECK:
        backend.check(request)
    elif command is Command.GC:
        backend.gc(request)
    elif command is Command.STATUS:
        problem = backend.status(request)
        if problem is not None:
            raise problem
    return (SUCCESS, b"")


def _for_command(err: CniError, command: Command) -> CniError:
    # A failing STATUS means "cannot serve ADD", which the runtime only
    # understands as 50 or 51, whatever the underlying cause was.
    if command is Command.STATUS and err.code not in (NOT_AVAILABLE, NOT_AVAILABLE_DEGRADED):
        details = f"code {err.code}" + (f": {err.details}" if err.details else "")
        return CniError(NOT_AVAILABLE, err.msg, details)
    return err


def _error(err: CniError, cni_version: str) -> tuple[int, bytes]:
    return (FAILURE, _json(err.to_dict(cni_version)))


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=4) + "\n").encode()
