"""CNI error objects (SPEC "Error" section) and the table that gives each
agent error kind (``nicwarden.agent.errors``) its CNI code."""

from __future__ import annotations

import json
from typing import Any

from nicwarden.agent.errors import NicwardenError

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
# Plugin-specific codes (100 and up are ours to define).
ALREADY_EXISTS = 100
BUSY = 101
UNSUPPORTED_HERE = 102

# The CNI code of each agent error kind. The SPEC's codes are narrow, so a
# kind gets one only when the SPEC's wording fits every place it is raised:
#   3 ("container unknown", so the runtime may skip DEL) is never a kind's
#     code; only CHECK on an attachment nobody ADDed says it, explicitly.
#   2 ("unsupported field"; the message names the key and value) only for
#     unsupported_field. A node that cannot do something (no vfio-pci module,
#     a PF driver without a VF attribute) is our 102.
#   not_found is 7: on the CNI path, what is missing is what the network
#     config names (the deviceID, its PF), so the config is invalid here.
#   host and store are 5 (I/O failure): a kernel, sysfs or state-file
#     operation failed.
CNI_CODES: dict[str, int] = {
    "invalid_argument": INVALID_CONFIG,
    "config": INVALID_CONFIG,
    "not_found": INVALID_CONFIG,
    "already_exists": ALREADY_EXISTS,
    "busy": BUSY,
    "unavailable": TRY_AGAIN_LATER,
    "unsupported": UNSUPPORTED_HERE,
    "unsupported_field": UNSUPPORTED_FIELD,
    "host": IO_FAILURE,
    "store": IO_FAILURE,
    "internal": INTERNAL,
}


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


def cni_code(err: NicwardenError) -> int:
    return CNI_CODES.get(err.kind, INTERNAL)


def from_nicwarden_error(err: NicwardenError) -> CniError:
    """Translate an agent exception through :data:`CNI_CODES`."""
    return CniError(cni_code(err), err.message, err.details)
