"""The C/Python map layout stays in one piece (no root needed)."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pytest

from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction

BPF_DIR = Path(L.__file__).resolve().parent


def test_layout_header_is_fresh() -> None:
    on_disk = (BPF_DIR / "layout.h").read_text()
    assert on_disk == L.render_c_header(), (
        "bpf/layout.h is stale: .venv/bin/python -m nicwarden.bpf.layout > bpf/layout.h"
    )


def test_header_asserts_every_struct() -> None:
    header = L.render_c_header()
    for cname, st in L.STRUCTS.items():
        assert f"sizeof(struct {cname}) == {ct.sizeof(st)}" in header


def test_policy_c_uses_generated_maps_only() -> None:
    src = (BPF_DIR / "policy.c").read_text()
    assert '#include "layout.h"' in src
    assert "NW_DECLARE_MAPS" in src
    # Maps are declared in one place (the generated header), never by hand.
    assert "BPF_TABLE" not in src and "BPF_HASH(" not in src


def test_key_sizes_and_fixed_bits() -> None:
    assert ct.sizeof(L.PeerKey) == 32
    assert L.PEER_FIXED_BITS == 96  # iface, gen, dir, family, pad
    assert ct.sizeof(L.PortKey) == 16
    assert L.PORT_FIXED_BITS == 80  # iface, gen, dir, proto
    # The LPM trie's data part must hold the longest prefix.
    assert 8 * (ct.sizeof(L.PeerKey) - 4) >= L.PEER_FIXED_BITS + 128
    assert 8 * (ct.sizeof(L.PortKey) - 4) >= L.PORT_FIXED_BITS + 16
    for spec in L.MAPS:
        assert len(spec.name) < 16  # BPF_OBJ_NAME_LEN
        assert "." not in spec.name  # bpffs refuses dotted names


@pytest.mark.parametrize(
    "entry",
    [
        (4, bytes([10, 1, 0, 0]), 16),
        (4, bytes(4), 0),
        (6, bytes.fromhex("fd77" + "00" * 14), 16),
        (6, bytes(range(16)), 128),
    ],
)
def test_peer_key_round_trip(entry: L.PeerEntry) -> None:
    k = L.peer_key(7, Direction.EGRESS, 3, entry)
    assert k.prefixlen == L.PEER_FIXED_BITS + entry[2]
    assert L.unpack_peer_key(L.PeerKey.from_buffer_copy(bytes(k))) == (
        7,
        Direction.EGRESS,
        3,
        entry,
    )


def test_port_key_is_big_endian_for_prefix_blocks() -> None:
    k = L.port_key(1, Direction.INGRESS, 1, (6, 0x2328, 13))  # 9000-9007
    raw = bytes(k)
    assert raw[14:16] == b"\x23\x28"
    assert k.prefixlen == L.PORT_FIXED_BITS + 13
    assert L.unpack_port_key(k)[3] == (6, 0x2328, 13)


@pytest.mark.parametrize(
    "entry",
    [
        (4, bytes([10, 1, 0, 1]), 24),
        (4, bytes(3), 8),
        (5, bytes(4), 8),
        (4, bytes(4), 33),
        (6, bytes(4), 8),
    ],
)
def test_bad_peer_entries_rejected(entry: L.PeerEntry) -> None:
    with pytest.raises(ValueError):
        L.peer_key(1, Direction.INGRESS, 1, entry)


@pytest.mark.parametrize("entry", [(6, 9001, 13), (6, 70000, 16), (6, 80, 17), (300, 0, 0)])
def test_bad_port_entries_rejected(entry: L.PortEntry) -> None:
    with pytest.raises(ValueError):
        L.port_key(1, Direction.INGRESS, 1, entry)


def test_lowered_direction_from_compiler_shape() -> None:
    class Compiled:  # the compiler's LoweredTable has these plus extras
        isolated = True
        peers = {(4, bytes(4), 0): 1}
        ports = {(6, 80, 16): 1}
        any_proto_mask = 0
        class_count = 1

    lowered = L.LoweredDirection.of(Compiled())
    assert lowered == L.LoweredDirection(True, {(4, bytes(4), 0): 1}, {(6, 80, 16): 1}, 0)


def test_trampoline_encoding() -> None:
    from nicwarden.agent.host.bpfsys import trampoline_insns

    code = trampoline_insns(5, Direction.EGRESS, 42)
    assert len(code) == 10 * 8  # nine instructions, ld_imm64 takes two slots
    assert code[4:8] == (5).to_bytes(4, "little")  # r2 = iface
    assert code[32 + 4 : 32 + 8] == (42).to_bytes(4, "little")  # map fd
    assert code[33] >> 4 == 1  # BPF_PSEUDO_MAP_FD


def test_entry_encoding() -> None:
    from nicwarden.agent.host.bpfsys import entry_insns

    code = entry_insns(Direction.EGRESS, 42)
    assert len(code) == 11 * 8
    assert code[0] == 0x61 and code[2:4] == (72).to_bytes(2, "little")  # r2 = skb->tc_classid
    # A classid of 0 jumps to the drop: seven instructions on, to "r0 = SHOT".
    assert code[8] == 0x15 and int.from_bytes(code[10:12], "little") == 7
    assert code[9 * 8] == 0xB7 and code[9 * 8 + 4 : 9 * 8 + 8] == (2).to_bytes(4, "little")
    assert code[3 * 8 + 4 : 3 * 8 + 8] == (1).to_bytes(4, "little")  # r2 = EGRESS
    assert code[5 * 8 + 4 : 5 * 8 + 8] == (42).to_bytes(4, "little")  # map fd
