"""The host boundary's one errno → named-error table, and its per-call overrides."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError

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
from nicwarden.agent.host import errnos
from nicwarden.agent.host.netlink import netlink_error
from nicwarden.agent.host.rtnl import NetlinkFailure
from nicwarden.agent.host.sysfs import translate_write_error
from nicwarden.agent.host.vfnetlink import translate

# Written out independently of the table: a changed mapping must fail here.
DEFAULT = {
    errno.ENOENT: NotFound,
    errno.ENODEV: NotFound,
    errno.ENXIO: NotFound,
    errno.ESRCH: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.EBUSY: Busy,
    errno.ENOTEMPTY: Busy,
    errno.EAGAIN: Unavailable,
    errno.ETIMEDOUT: Unavailable,
    errno.EINTR: Unavailable,
    errno.EOPNOTSUPP: Unsupported,
    errno.ENOTSUP: Unsupported,
    errno.EPROTONOSUPPORT: Unsupported,
    errno.EAFNOSUPPORT: Unsupported,
    errno.ENOSYS: Unsupported,
    # Not listed in the table: the kernel failed for a reason we do not name.
    errno.EINVAL: HostError,
    errno.ERANGE: HostError,
    errno.EPERM: HostError,
    errno.EACCES: HostError,
    errno.ENOMEM: HostError,
    errno.EIO: HostError,
    errno.E2BIG: HostError,
}

OVERRIDES = {
    "SYSFS_WRITE": {errno.EINVAL: InvalidArgument, errno.ERANGE: InvalidArgument},
    "VF_SET": {
        errno.EINVAL: InvalidArgument,
        errno.ERANGE: InvalidArgument,
        errno.EOPNOTSUPP: Unsupported,
        errno.EPROTONOSUPPORT: Unsupported,
        errno.ENODEV: NotFound,
        errno.ENOENT: NotFound,
    },
    "LINK_SET": {
        errno.EINVAL: InvalidArgument,
        errno.ERANGE: InvalidArgument,
        errno.EADDRNOTAVAIL: InvalidArgument,
    },
    "ADDR_DELETE": {errno.EADDRNOTAVAIL: NotFound},
    "TC_LIST": {errno.EINVAL: NotFound},
    "TC_DELETE": {errno.EINVAL: NotFound},
    "SETNS": {errno.EINVAL: InvalidArgument, errno.EPERM: HostError},
}


@pytest.mark.parametrize("code,kind", sorted(DEFAULT.items()), ids=lambda v: str(v))
def test_default_mapping(code: int, kind: type[NicwardenError]) -> None:
    err = errnos.named(code, "frob eth0")
    assert type(err) is kind
    assert err.message == f"frob eth0: {os.strerror(code)}"


def test_table_has_nothing_the_test_does_not_know() -> None:
    assert set(errnos.TABLE) <= set(DEFAULT)
    for code, kind in errnos.TABLE.items():
        assert DEFAULT[code] is kind


@pytest.mark.parametrize(
    "table,code,kind",
    [(name, code, kind) for name, m in OVERRIDES.items() for code, kind in m.items()],
    ids=lambda v: str(v),
)
def test_overrides(table: str, code: int, kind: type[NicwardenError]) -> None:
    overrides = getattr(errnos, table)
    assert set(overrides) == set(OVERRIDES[table])
    assert type(errnos.named(code, "x", overrides)) is kind
    assert errnos.error_type(code, overrides) is kind


def test_overrides_leave_other_errnos_to_the_table() -> None:
    assert type(errnos.named(errno.EBUSY, "x", errnos.VF_SET)) is Busy
    assert type(errnos.named(errno.EEXIST, "x", errnos.SYSFS_WRITE)) is AlreadyExists
    assert type(errnos.named(errno.ENOENT, "x", errnos.TC_LIST)) is NotFound


def test_einval_depends_on_the_call() -> None:
    """The disagreement the table settles: whose fault an EINVAL is."""
    assert type(errnos.named(errno.EINVAL, "tc")) is HostError
    assert type(errnos.named(errno.EINVAL, "numvfs", errnos.SYSFS_WRITE)) is InvalidArgument
    assert type(errnos.named(errno.EINVAL, "vf mac", errnos.VF_SET)) is InvalidArgument
    assert type(errnos.named(errno.EINVAL, "tc list", errnos.TC_LIST)) is NotFound


def test_named_override_replaces_the_reason_and_keeps_detail() -> None:
    err = errnos.named(errno.EPROTONOSUPPORT, "ens1f0 VF 2: set vlan", errnos.VF_SET, "extack")
    assert isinstance(err, Unsupported)
    assert err.message == (
        "ens1f0 VF 2: set vlan: the PF driver does not support this VLAN protocol"
    )
    assert err.details == "extack"


def test_plain_override_keeps_strerror() -> None:
    err = errnos.named(errno.ERANGE, "write '99' to numvfs", errnos.SYSFS_WRITE)
    assert err.message == f"write '99' to numvfs: {os.strerror(errno.ERANGE)}"


def test_from_oserror_keeps_the_errors_own_text() -> None:
    err = errnos.from_oserror(OSError(errno.EBUSY, "4 VFs enabled; write 0 first"), "numvfs")
    assert isinstance(err, Busy)
    assert err.message == "numvfs: 4 VFs enabled; write 0 first"


def test_from_oserror_without_errno_is_a_host_error() -> None:
    err = errnos.from_oserror(OSError("odd"), "read x")
    assert isinstance(err, HostError)
    assert "odd" in err.message


def test_is_gone() -> None:
    assert errnos.is_gone(errno.ENODEV)
    assert errnos.is_gone(errno.ENOENT)
    assert not errnos.is_gone(errno.EINVAL)
    assert errnos.is_gone(errno.EINVAL, errnos.TC_DELETE)
    assert not errnos.is_gone(errno.EBUSY, errnos.TC_DELETE)


def test_sysfs_write_errors_go_through_the_table() -> None:
    e = translate_write_error(OSError(errno.EINVAL, "Invalid argument"), Path("/x"), "7")
    assert isinstance(e, InvalidArgument)
    assert e.message == "write '7' to /x: Invalid argument"


def test_vfnetlink_errors_go_through_the_table() -> None:
    assert isinstance(translate(NetlinkFailure(errno.EINVAL, "bad"), "set mac"), InvalidArgument)
    assert isinstance(translate(NetlinkFailure(errno.EAGAIN), "set mac"), Unavailable)


def test_netlink_errors_go_through_the_table() -> None:
    assert isinstance(netlink_error(NetlinkError(errno.EINVAL), "add filter"), HostError)
    assert isinstance(netlink_error(NetlinkError(errno.EEXIST), "add link"), AlreadyExists)
    err = netlink_error(NetlinkError(errno.EINVAL), "set mtu", errnos.LINK_SET)
    assert isinstance(err, InvalidArgument)
