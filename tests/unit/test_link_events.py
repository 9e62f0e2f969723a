"""rtnetlink message parsing, on bytes shaped like the kernel's."""

from __future__ import annotations

import struct

from nicwarden.agent.host.events import LinkMonitor


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(mtype: int, index: int, attrs: bytes) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, 0x1043, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_parses_new_and_del_link_with_name_and_alias() -> None:
    data = _msg(16, 7, _attr(3, b"eth7\0") + _attr(20, b"nwsim:x:0000:18:01.0\0")) + _msg(
        17, 8, _attr(3, b"veth1\0")
    )
    events = LinkMonitor.parse(data)
    assert [(e.action, e.name, e.index, e.alias) for e in events] == [
        ("newlink", "eth7", 7, "nwsim:x:0000:18:01.0"),
        ("dellink", "veth1", 8, ""),
    ]


def test_ignores_other_messages_and_truncation() -> None:
    route = struct.pack("=IHHII", 28, 24, 0, 0, 0) + b"\0" * 12  # RTM_NEWROUTE
    good = _msg(16, 3, _attr(3, b"lo\0"))
    assert [e.name for e in LinkMonitor.parse(route + good)] == ["lo"]
    assert LinkMonitor.parse(good[:-6]) == []
