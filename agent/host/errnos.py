"""The one errno → named-error table of the host boundary.

Every kernel call in ``agent/host/`` that fails with an errno goes through
:func:`named` (or :func:`from_oserror`), so an errno means the same error
everywhere unless a call says otherwise. Errors cross gRPC and the CNI shim
by kind, so the kind chosen here is what a user finally sees.

The default answers the question "whose fault is it, and will retrying
help?" from the kernel's side only. A call that knows more passes an
override: ``EINVAL`` is ``HostError`` by default (we built a request the
kernel rejects: our bug), but a VF attribute write or a sysfs write carries a
value the user chose, so there it is ``InvalidArgument``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass

from nicwarden.agent.errors import (
    AlreadyExists,
    Busy,
    HostError,
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
    Unsupported,
)

ErrorType = type[NicwardenError]


@dataclass(frozen=True)
class Named:
    """An override that also says what the errno means for this call; the
    text replaces ``strerror`` in the message."""

    error: ErrorType
    reason: str


Override = ErrorType | Named
Overrides = Mapping[int, Override]

# Not listed: HostError (EPERM, EACCES, ENOMEM, EIO, EINVAL, ...).
TABLE: Mapping[int, ErrorType] = {
    errno.ENOENT: NotFound,
    errno.ENODEV: NotFound,
    errno.ENXIO: NotFound,
    errno.ESRCH: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOTEMPTY: Busy,
    errno.EBUSY: Busy,
    errno.EAGAIN: Unavailable,
    errno.ETIMEDOUT: Unavailable,
    errno.EINTR: Unavailable,
    errno.EOPNOTSUPP: Unsupported,  # == ENOTSUP on Linux
    errno.EPROTONOSUPPORT: Unsupported,
    errno.EAFNOSUPPORT: Unsupported,
    errno.ENOSYS: Unsupported,
}

# -- per-call overrides ---------------------------------------------------------
# Named for the call they belong to, so a reader of the table sees every
# place an errno means something else.

# A value the user chose went into a sysfs attribute (numvfs, driver_override,
# a bind/unbind address): the kernel's "bad value" is the user's.
SYSFS_WRITE: Overrides = {
    errno.EINVAL: InvalidArgument,
    errno.ERANGE: InvalidArgument,
}

# PF-side VF attributes: the driver judges the values (a MAC, a VLAN, a
# rate), and a driver without the feature answers "not supported".
VF_SET: Overrides = {
    errno.EINVAL: Named(InvalidArgument, "the PF driver rejected the value"),
    errno.ERANGE: Named(InvalidArgument, "the PF driver rejected the value"),
    errno.EOPNOTSUPP: Named(Unsupported, "the PF driver does not support this VF attribute"),
    # i40e, for one, has no 802.1ad VF tagging.
    errno.EPROTONOSUPPORT: Named(Unsupported, "the PF driver does not support this VLAN protocol"),
    errno.ENODEV: Named(NotFound, "no such device"),
    errno.ENOENT: Named(NotFound, "no such device"),
}

# Link changes whose values come from a CNI config (MTU, MAC, name).
LINK_SET: Overrides = {
    errno.EINVAL: InvalidArgument,
    errno.ERANGE: InvalidArgument,
    errno.EADDRNOTAVAIL: InvalidArgument,
}

# Deleting an address: the kernel says "address not available" when the
# link does not carry it, i.e. it is already gone.
ADDR_DELETE: Overrides = {errno.EADDRNOTAVAIL: NotFound}

# Listing tc filters: a device without a clsact qdisc answers EINVAL, which
# here means "no filter", not a malformed request.
TC_LIST: Overrides = {errno.EINVAL: NotFound}

# Deleting a tc filter or qdisc: gone already (EINVAL without the qdisc).
TC_DELETE: Overrides = {errno.EINVAL: NotFound}

# setns(2) on a file that is not a network namespace.
SETNS: Overrides = {
    errno.EINVAL: Named(InvalidArgument, "not a network namespace"),
    errno.EPERM: Named(HostError, "permission denied (the agent needs CAP_SYS_ADMIN)"),
}


def error_type(code: int, overrides: Overrides | None = None) -> ErrorType:
    """The named error ``code`` stands for (under ``overrides``)."""
    if overrides is not None and code in overrides:
        hit = overrides[code]
        return hit.error if isinstance(hit, Named) else hit
    return TABLE.get(code, HostError)


def named(
    code: int,
    what: str,
    overrides: Overrides | None = None,
    detail: str = "",
    reason: str | None = None,
) -> NicwardenError:
    """``what``: the failed operation ("set mtu of eth0"); ``detail``: extra
    text such as the kernel's extended ACK; ``reason``: the failure's own
    text when it has one (else ``strerror``), unless an override names it."""
    hit = overrides.get(code) if overrides is not None else None
    if isinstance(hit, Named):
        reason = hit.reason
    elif not reason:
        reason = os.strerror(code) if code else "failed"
    return error_type(code, overrides)(f"{what}: {reason}", detail)


def from_oserror(e: OSError, what: str, overrides: Overrides | None = None) -> NicwardenError:
    if e.errno is None:
        return HostError(f"{what}: {e}")
    return named(e.errno, what, overrides, reason=e.strerror)


def is_gone(code: int, overrides: Overrides | None = None) -> bool:
    """Whether ``code`` says the object is not there (idempotent deletes and
    lookups treat this as an answer, not a failure)."""
    return error_type(code, overrides) is NotFound
