"""CNI error objects (SPEC "Error" section) and their bridge to the agent's
exception vocabulary (``nicwarden.agent.errors.ERROR_TABLE``)."""

from __future__ import annotations

import json
from typing import Any

from nicwarden.agent.errors import NicwardenError, mapping_for

# Well-known codes (SPEC error tables; 8 and 999 are libcni's, not spec codes).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_DEGRADED = 51
INTERNAL = 999


class CniError(Exception):
    """An error as a CNI plugin reports it: a code, a message and details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"CNI error {self.code}: {self.msg}" + (f" ({self.details})" if self.details else "")

    def __repr__(self) -> str:
        return f"CniError({self.code!r}, {self.msg!r}, {self.details!r})"

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        # ``details`` is omitempty in libcni's types.Error.
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, cni_version: str) -> str:
        return json.dumps(self.to_dict(cni_version))


def from_nicwarden_error(err: NicwardenError) -> CniError:
    """Translate an agent exception through the one shared error table."""
    return CniError(mapping_for(err).cni_code, err.message, err.details)
