"""rtnetlink framing and a synchronous request/reply socket, in any netns.

Messages are built by hand from the kernel uapi with ``struct``: the VF
attributes (``vfnetlink``), the VF counters (``vfstats``), tc (``tc``) and
the strict host model's rules and devconf (``hostmodel``) each send a few
fixed-shape requests, and the link monitor (``events``) parses the same
attributes. pyroute2 wraps every request in an
asyncio loop and a full message object model, ~1 ms per tc request here
(measured: a policy's isolation flip, four tc requests and a link lookup,
took 3 ms through pyroute2, 0.3-0.6 ms this way).

A netlink socket stays bound to the netns it was created in, so
:class:`RtnlSocket` is created inside the target netns and can then be used
from any thread, one request at a time. Netlink integers are host-endian.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nicwarden.agent.errors import NicwardenError
from nicwarden.agent.host import errnos, netns

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200  # on a new-object request
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: the request is quoted without its body
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

# The kernel answers rtnetlink at once; no answer means something is badly
# wrong, and a caller holding a lock must not wait for ever.
TIMEOUT_S = 5.0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLA = struct.Struct("=HH")  # len, type

# Link messages: their types, their fixed header (struct ifinfomsg), and
# the attributes naming a link (a request may name it instead of giving an
# index).
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
IFLA_IFNAME = 3
IFLA_IFALIAS = 20


# -- builders -------------------------------------------------------------------


def nla(attr_type: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (NLA_ALIGN)."""
    length = _NLA.size + len(payload)
    return _NLA.pack(length, attr_type) + payload + b"\0" * (-length % 4)


def nla_str(attr_type: int, value: str) -> bytes:
    return nla(attr_type, value.encode() + b"\0")


def nla_u32(attr_type: int, value: int) -> bytes:
    return nla(attr_type, struct.pack("=I", value))


def ifinfomsg(index: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)


def nlmsg(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


# -- parsers --------------------------------------------------------------------


def attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in ``data``; stops at a malformed one."""
    off = 0
    while off + _NLA.size <= len(data):
        length, attr_type = _NLA.unpack_from(data, off)
        if length < _NLA.size or off + length > len(data):
            return
        yield attr_type & NLA_TYPE_MASK, data[off + _NLA.size : off + length]
        off += (length + 3) & ~3


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True)
class NetlinkMessage:
    type: int
    flags: int
    seq: int
    payload: bytes


def messages(data: bytes) -> list[NetlinkMessage]:
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        out.append(NetlinkMessage(msg_type, flags, seq, data[off + _NLMSGHDR.size : off + length]))
        off += (length + 3) & ~3
    return out


def parse_error(msg: NetlinkMessage) -> tuple[int, str]:
    """An NLMSG_ERROR → (positive errno or 0 for an ACK, the kernel's extack text)."""
    (code,) = struct.unpack_from("=i", msg.payload)
    text = ""
    if msg.flags & NLM_F_ACK_TLVS:
        # struct nlmsgerr: error, then the request's header (plus its body
        # unless the ACK is capped), then the extended-ACK attributes.
        off = 4 + _NLMSGHDR.size
        if not msg.flags & NLM_F_CAPPED:
            off = 4 + _NLMSGHDR.unpack_from(msg.payload, 4)[0]
        for attr_type, data in attrs(msg.payload[(off + 3) & ~3 :]):
            if attr_type == NLMSGERR_ATTR_MSG:
                text = cstr(data)
    return -code, text


# -- the kernel boundary ----------------------------------------------------------


class NetlinkFailure(Exception):
    """The kernel refused a request: its errno and extended-ack text."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(os.strerror(code) + (f": {text}" if text else ""))
        self.code = code
        self.text = text

    def named(self, what: str, overrides: errnos.Overrides | None = None) -> NicwardenError:
        """The named error for ``what`` (``errnos``), the kernel's text as details."""
        return errnos.named(self.code, what, overrides, self.text)


Transport = Callable[[bytes], list[NetlinkMessage]]


class RtnlSocket:
    """One rtnetlink socket, opened in ``target``'s netns (None: this
    thread's). Not thread-safe: one request at a time."""

    def __init__(self, target: netns.Target | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self._sock = _open() if target is None else netns.run_in(target, _open)
        self._sock.settimeout(timeout_s)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[NetlinkMessage]:
        """Build, send and answer one request (see :meth:`exchange`)."""
        seq = next(self._seq) & 0xFFFFFFFF
        return self.exchange(nlmsg(msg_type, flags | NLM_F_REQUEST, seq, body))

    def exchange(self, message: bytes) -> list[NetlinkMessage]:
        """Send one built request; return its replies before the ACK (a
        get's answer, a dump's messages, nothing for a change).

        Raises NetlinkFailure with the errno (and the kernel's extended-ACK
        text) when the kernel refuses, ``ETIMEDOUT`` past the timeout. A
        request needs ``NLM_F_ACK`` or ``NLM_F_DUMP`` to be answered at all."""
        try:
            return self._exchange(message)
        except TimeoutError as e:
            raise NetlinkFailure(errno.ETIMEDOUT, "the kernel did not answer") from e

    def _exchange(self, message: bytes) -> list[NetlinkMessage]:
        seq = _NLMSGHDR.unpack_from(message)[3]
        self._sock.send(message)
        replies: list[NetlinkMessage] = []
        while True:
            # A PF with hundreds of VFs answers in one large datagram: peek at
            # its real size (MSG_TRUNC) instead of guessing a buffer.
            size = self._sock.recv_into(bytearray(16), 16, socket.MSG_PEEK | socket.MSG_TRUNC)
            for msg in messages(self._sock.recv(max(size, 16))):
                if msg.seq != seq:
                    continue  # a late answer to an abandoned request
                if msg.type == NLMSG_ERROR:
                    code, text = parse_error(msg)
                    if code:
                        raise NetlinkFailure(code, text)
                    return replies
                if msg.type == NLMSG_DONE:
                    return replies
                replies.append(msg)


def netlink_request(message: bytes, timeout_s: float = TIMEOUT_S) -> list[NetlinkMessage]:
    """One built request in the host netns, on a socket of its own."""
    with RtnlSocket(timeout_s=timeout_s) as s:
        return s.exchange(message)


def _open() -> socket.socket:
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE)
    try:
        # Errors quote the header only, and say why when the kernel knows.
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):  # best effort: older kernels lack them
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, opt, 1)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock
