"""The agent's error vocabulary: one exception class per *kind*.

Errors cross two process boundaries (gRPC to nicwardenctl, HTTP to the CNI
shim), so each is rebuilt from ``(kind, message, details)`` on the far side
with :func:`rebuild`. How a kind is spelt on each wire lives with that wire:
gRPC status codes in ``agent/api_status.py`` (the API layer), CNI error codes
in ``cni/errors.py``. This module imports neither, so the policy compiler and
the host layer can raise these errors without pulling in grpcio.
"""

from __future__ import annotations

from typing import Any


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
    """Try again later: the agent or a dependency is not ready, or a kernel
    write has not returned in time."""

    kind = "unavailable"


class Unsupported(NicwardenError):
    """This node cannot do what was asked (a driver is not loaded, the PF
    driver lacks a feature)."""

    kind = "unsupported"


class UnsupportedField(Unsupported):
    """A request or config field this agent does not support. The message
    names the key and the value, as CNI's "unsupported field" code requires."""

    kind = "unsupported_field"

    @classmethod
    def of(cls, key: str, value: object, why: str = "") -> UnsupportedField:
        reason = f": {why}" if why else ""
        return cls(f"{key}: {value!r} is not supported{reason}")


class HostError(NicwardenError):
    """A kernel or filesystem operation failed for a reason we did not name."""

    kind = "host"


class StoreError(NicwardenError):
    """The state database is unusable (corrupt, newer schema, unwritable)."""

    kind = "store"


ERROR_CLASSES: tuple[type[NicwardenError], ...] = (
    NicwardenError,
    InvalidArgument,
    ConfigError,
    NotFound,
    AlreadyExists,
    Busy,
    Unavailable,
    Unsupported,
    UnsupportedField,
    HostError,
    StoreError,
)

_BY_KIND: dict[str, type[NicwardenError]] = {cls.kind: cls for cls in ERROR_CLASSES}

# Every kind that may cross a boundary; each wire's table must cover them all
# (tests/unit/test_error_contract.py holds them to it).
KINDS: tuple[str, ...] = tuple(_BY_KIND)


def rebuild(kind: str, message: str, details: str = "") -> NicwardenError:
    """Rebuild an error received from the other side of a boundary. An
    unknown kind (a newer agent) becomes the base class, keeping the kind
    name readable in the message's owner, not lost."""
    cls = _BY_KIND.get(kind)
    if cls is None:
        err = NicwardenError(message, details)
        err.kind = kind if kind else NicwardenError.kind
        return err
    return cls(message, details)
