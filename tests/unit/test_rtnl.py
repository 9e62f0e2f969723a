"""rtnetlink framing (``agent/host/rtnl.py``) without a kernel: attributes
built against parsed, hand-computed bytes, and the reply loop against a
scripted socket (stale replies, dumps split over reads, errors with
extended acks). Netlink is host-endian; the bytes here are little-endian."""

from __future__ import annotations

import errno
import struct
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nicwarden.agent.errors import Unavailable
from nicwarden.agent.host import errnos, rtnl
from nicwarden.agent.host.rtnl import NLM_F_ACK, NLM_F_DUMP, NetlinkFailure, RtnlSocket

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are LE")

HDR = struct.Struct("<IHHII")
BODY = b"\x01\x02\x03\x04"


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


def msg(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    out = HDR.pack(HDR.size + len(payload), kind, flags, seq, 0) + payload
    return out + b"\0" * (-len(out) % 4)


def error(seq: int, code: int, extack: str = "") -> bytes:
    quoted = HDR.pack(HDR.size, 0, 0, seq, 0)  # capped: the header only
    tlvs = rtnl.nla_str(rtnl.NLMSGERR_ATTR_MSG, extack) if extack else b""
    flags = rtnl.NLM_F_CAPPED | (rtnl.NLM_F_ACK_TLVS if extack else 0)
    return msg(rtnl.NLMSG_ERROR, seq, struct.pack("<i", -code) + quoted + tlvs, flags)


class Scripted:
    """A socket whose datagrams are given in advance, per request sent."""

    def __init__(self, reads: list[list[bytes]]) -> None:
        self.reads = reads
        self.sent: list[bytes] = []
        self._pending: Iterator[bytes] = iter(())
        self._next: bytes | None = None

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        self._pending = iter(self.reads.pop(0))
        return len(data)

    def recv_into(self, buf: bytearray, size: int, flags: int) -> int:
        assert flags & 2  # MSG_PEEK: the datagram stays for recv()
        self._next = next(self._pending, None)
        if self._next is None:
            raise TimeoutError("timed out")  # what a socket timeout raises
        return len(self._next)

    def recv(self, size: int) -> bytes:
        assert self._next is not None and size >= len(self._next)
        data, self._next = self._next, None
        return data


def client(reads: list[list[bytes]]) -> tuple[RtnlSocket, Scripted]:
    sock = object.__new__(RtnlSocket)
    fake = Scripted(reads)
    sock._sock = fake  # type: ignore[assignment]
    sock._seq = iter(range(1, 100))  # type: ignore[assignment]
    return sock, fake


# -- attributes and messages --------------------------------------------------------


def test_attribute_padding_to_four_bytes() -> None:
    assert rtnl.nla(3, b"ab\0") == hx("07 00 03 00  61 62 00  00")
    assert rtnl.nla_str(3, "ab") == rtnl.nla(3, b"ab\0")
    assert rtnl.nla_u32(6, 5) == hx("08 00 06 00  05 00 00 00")


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=12))
def test_attrs_gives_back_what_nla_built(pairs: list[tuple[int, bytes]]) -> None:
    assert list(rtnl.attrs(b"".join(rtnl.nla(t, v) for t, v in pairs))) == pairs


@given(st.binary(max_size=200))
def test_parsers_never_raise_on_garbage(data: bytes) -> None:
    for kind, value in rtnl.attrs(data):
        assert 0 <= kind <= 0x3FFF and len(value) <= len(data)
    for m in rtnl.messages(data):
        assert len(m.payload) <= len(data)


def test_nested_attributes_drop_the_nested_flag() -> None:
    inner = rtnl.nla_u32(6, 5) + rtnl.nla_str(7, "nw")
    ((kind, value),) = list(rtnl.attrs(rtnl.nla(2 | 0x8000, inner)))
    assert kind == 2
    assert dict(rtnl.attrs(value)) == {6: struct.pack("<I", 5), 7: b"nw\0"}


def test_messages_split_and_error_with_extack() -> None:
    orig = hx("34 00 00 00  13 00 05 00  05 00 00 00  00 00 00 00")
    text = b"VF configuration is not supported\0"
    payload = struct.pack("<i", -errno.EOPNOTSUPP) + orig + rtnl.nla(1, text)
    error_ = struct.pack("<IHHII", 16 + len(payload), 2, 0x300, 5, 0) + payload
    ack = struct.pack("<IHHII", 36, 2, 0x100, 6, 0) + struct.pack("<i", 0) + orig
    msgs = rtnl.messages(error_ + ack)
    assert [(m.type, m.seq) for m in msgs] == [(2, 5), (2, 6)]
    assert rtnl.parse_error(msgs[0]) == (errno.EOPNOTSUPP, "VF configuration is not supported")
    assert rtnl.parse_error(msgs[1]) == (0, "")


# -- the reply loop -------------------------------------------------------------------


def test_a_dump_collects_until_done_across_reads_and_skips_stale_replies() -> None:
    reads = [
        [
            msg(44, 0, BODY + rtnl.nla_str(1, "old"), rtnl.NLM_F_MULTI),  # an abandoned request's
            msg(44, 1, BODY + rtnl.nla_str(1, "a"), rtnl.NLM_F_MULTI)
            + msg(44, 1, BODY + rtnl.nla_str(1, "b"), rtnl.NLM_F_MULTI),
            msg(rtnl.NLMSG_DONE, 1, struct.pack("<i", 0), rtnl.NLM_F_MULTI),
        ]
    ]
    sock, fake = client(reads)
    got = sock.request(46, NLM_F_DUMP, BODY)
    assert [(m.type, rtnl.cstr(dict(rtnl.attrs(m.payload[4:]))[1])) for m in got] == [
        (44, "a"),
        (44, "b"),
    ]
    length, kind, flags, seq, _ = HDR.unpack_from(fake.sent[0])
    assert (length, kind, flags, seq) == (HDR.size + 4, 46, NLM_F_DUMP | rtnl.NLM_F_REQUEST, 1)


def test_an_acked_change_returns_nothing_and_a_refusal_carries_errno_and_extack() -> None:
    sock, _ = client([[error(1, 0)], [error(2, errno.EEXIST, "Exclusivity flag on")]])
    assert sock.request(36, NLM_F_ACK, BODY) == []
    with pytest.raises(NetlinkFailure) as e:
        sock.request(36, NLM_F_ACK, BODY)
    assert (e.value.code, e.value.text) == (errno.EEXIST, "Exclusivity flag on")
    assert "Exclusivity flag on" in str(e.value)


def test_a_get_returns_its_answer_before_the_ack() -> None:
    sock, _ = client([[msg(16, 1, BODY + rtnl.nla_str(3, "eth0")), error(1, 0)]])
    (answer,) = sock.request(18, NLM_F_ACK, BODY)
    assert rtnl.cstr(dict(rtnl.attrs(answer.payload[4:]))[3]) == "eth0"


def test_a_refusal_without_extack() -> None:
    sock, _ = client([[error(1, errno.ENODEV)]])
    with pytest.raises(NetlinkFailure) as e:
        sock.request(18, NLM_F_ACK, BODY)
    assert (e.value.code, e.value.text) == (errno.ENODEV, "")


def test_no_answer_is_etimedout_which_names_unavailable() -> None:
    sock, _ = client([[]])
    with pytest.raises(NetlinkFailure) as e:
        sock.request(36, NLM_F_ACK, BODY)
    assert (e.value.code, e.value.text) == (errno.ETIMEDOUT, "the kernel did not answer")
    assert isinstance(errnos.named(e.value.code, "add clsact"), Unavailable)
