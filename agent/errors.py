"""The agent's error vocabulary, and the one table that maps it to CNI codes,
gRPC status codes and CLI exit codes.

Errors cross two process boundaries (gRPC to nicwardenctl, HTTP to the CNI
shim), so each can be rebuilt from ``(kind, message, details)`` on the far side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc


class NicwardenError(Exception):
    """Base class. ``kind`` is the stable name that crosses process boundaries."""

    kind = "internal"

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return self.message if not self.details else f"{self.message} ({self.details})"


class InvalidArgument(NicwardenError):
    kind = "invalid_argument"


class ConfigError(InvalidArgument):
    """Configuration rejected; ``message`` names the file, key and reason."""

    kind = "config"


class NotFound(NicwardenError):
    kind = "not_found"


class AlreadyExists(NicwardenError):
    kind = "already_exists"


class Busy(NicwardenError):
    """The object is in use (allocated, attached, up with addresses)."""

    kind = "busy"


class Unavailable(NicwardenError):
    """Try again later: the agent or a dependency is not ready."""

    kind = "unavailable"


class Unsupported(NicwardenError):
    kind = "unsupported"


class HostError(NicwardenError):
    """A kernel or filesystem operation failed for a reason we did not name."""

    kind = "host"


class StoreError(NicwardenError):
    """The state database is unusable (corrupt, newer schema, unwritable)."""

    kind = "store"


@dataclass(frozen=True)
class ErrorMapping:
    cni_code: int
    grpc_code: grpc.StatusCode
    exit_code: int


# One table for every boundary. CNI codes per the SPEC: 2 unsupported field,
# 3 unknown container, 4 invalid env, 5 I/O, 7 invalid config, 11 try again.
# 100+ are ours (plugin-specific range).
ERROR_TABLE: dict[str, ErrorMapping] = {
    "invalid_argument": ErrorMapping(7, grpc.StatusCode.INVALID_ARGUMENT, 1),
    "config": ErrorMapping(7, grpc.StatusCode.INVALID_ARGUMENT, 1),
    "not_found": ErrorMapping(3, grpc.StatusCode.NOT_FOUND, 1),
    "already_exists": ErrorMapping(100, grpc.StatusCode.ALREADY_EXISTS, 1),
    "busy": ErrorMapping(101, grpc.StatusCode.FAILED_PRECONDITION, 1),
    "unavailable": ErrorMapping(11, grpc.StatusCode.UNAVAILABLE, 1),
    "unsupported": ErrorMapping(2, grpc.StatusCode.UNIMPLEMENTED, 1),
    "host": ErrorMapping(5, grpc.StatusCode.INTERNAL, 1),
    "store": ErrorMapping(5, grpc.StatusCode.INTERNAL, 1),
    "internal": ErrorMapping(999, grpc.StatusCode.INTERNAL, 1),
}

_KINDS: dict[str, type[NicwardenError]] = {
    cls.kind: cls
    for cls in (
        NicwardenError,
        InvalidArgument,
        ConfigError,
        NotFound,
        AlreadyExists,
        Busy,
        Unavailable,
        Unsupported,
        HostError,
        StoreError,
    )
}


def mapping_for(err: NicwardenError) -> ErrorMapping:
    return ERROR_TABLE.get(err.kind, ERROR_TABLE["internal"])


def rebuild(kind: str, message: str, details: str = "") -> NicwardenError:
    """Rebuild an error received from the other side of a boundary."""
    return _KINDS.get(kind, NicwardenError)(message, details)
