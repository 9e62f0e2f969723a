"""The BPF datapath's map layout: one definition for C and Python.

The ctypes structures below are the source of truth. ``render_c_header()``
turns them (plus the constants and the map declarations) into ``layout.h``,
which ``policy.c`` includes; the header carries ``_Static_assert``s of every
size and offset computed here, so a hand edit of either side that disagrees
fails the bcc compile instead of corrupting maps. Regenerate with::

    .venv/bin/python -m nicwarden.bpf.layout > bpf/layout.h

(``tests/integration/test_bpf_layout.py`` fails when the file is stale.)

Key design (see ``policy.c`` for the packet path):

* ``nw_peers`` / ``nw_ports`` are LPM tries whose keys start with the fixed
  fields ``(iface, gen, dir, family|proto)``. The trie's ``prefixlen`` counts
  those leading bits too, so one trie holds every interface, direction and
  generation, and a lookup never crosses into another's entries.
* ``nw_cfg[(iface, dir)]`` selects the active generation: writing a new
  generation's entries, then this one key, then deleting the old entries is
  an atomic policy switch without map-in-map.
* ``iface`` is a number the agent assigns per attached interface and bakes
  into that interface's tc trampoline (see ``agent/host/bpf.py``): in-kernel
  netns identity is not available to tc programs (the tc flavour of
  ``bpf_get_netns_cookie`` reports the *socket's* netns, init_net for
  packets without one), and ifindex is only unique within a netns.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, cast

# Unchanged by the drop-event maps: they are only added, so load() over an
# older instance creates them beside the pinned maps and swaps the program.
LAYOUT_VERSION = 1

# -- enums shared with C ------------------------------------------------------


class Direction(IntEnum):
    INGRESS = 0  # to the pod: tc clsact ingress of its interface; peer = source
    EGRESS = 1  # from the pod: tc clsact egress; peer = destination


class Verdict(IntEnum):
    PASS_ALWAYS = 0  # ARP, IPv6 neighbour discovery and MLD, non-IP ethertypes
    PASS_UNISOLATED = 1  # the direction is not isolated (flow recorded for replies)
    PASS_ESTABLISHED = 2  # packet of a known flow, or an ICMP error about one
    PASS_POLICY = 3  # new flow allowed by the policy tables
    DROP_POLICY = 4  # isolated and not allowed (or malformed)


N_VERDICTS = len(Verdict)


class DropReason(IntEnum):
    """Why a drop-event record's packet was dropped (where policy.c decides)."""

    NO_RULE = 1  # no peer entry covers the address: no rule selects this peer
    EXCEPT = 2  # the covering entry is an ``except`` block (class mask 0)
    PORT = 3  # the peer is allowed, but not for this protocol/port
    MALFORMED = 4  # truncated or invalid IP/L4 header on an isolated direction
    NON_IP = 5  # encapsulation the parser stops at (3rd VLAN tag, MPLS, PPPoE)


# nw_event_cfg defaults: one record per directed flow per second, 1000/s in all.
EVENT_FLOW_INTERVAL_MS = 1000
EVENT_MAX_PER_SECOND = 1000
EVENT_RING_BYTES = 1 << 18  # a power-of-two number of pages
MAX_EVENT_FLOWS = 1 << 14


class EventStat(IntEnum):
    """Slots of the per-CPU ``nw_evstats`` array."""

    EMITTED = 0  # records written to the ring
    FLOW_SUPPRESSED = 1  # a record for the same directed flow went out recently
    CAP_SUPPRESSED = 2  # the global per-second cap was reached
    RING_FULL = 3  # bpf_ringbuf_reserve failed: the agent is behind


N_EVENT_STATS = len(EventStat)

# nw_cfg_val.flags
CFG_KEEP_ESTABLISHED = 0x1  # flows admitted by an older generation are not revalidated

# nw_flow_val.flags
FLOW_ORIG_SRC_IS_LO = 0x1  # the admitting packet's source is the key's "lo" endpoint
FLOW_CLOSING = 0x2  # TCP FIN or RST seen

# nw_iface_info.flags (userspace bookkeeping only)
IFACE_OWNS_CLSACT = 0x1  # we created the clsact qdisc, so we may remove it
IFACE_FILTERS = 0x2  # our filters are installed (both hooks)

TC_PRIO = 0x4E57  # "NW": the tc filter preference our filters use on both hooks
TC_HANDLE = 1
# Interface keys up to this go in the filter's classid, read by the shared
# entry programs (cls_bpf hands the program 16 bits of it); larger ones get
# a trampoline of their own.
CLASSID_KEY_MAX = 0xFFFF

# Protocols whose destination port the datapath reads (the policy contract's
# "ported" protocols); anything else is matched with port prefixlen 0 only.
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
PORTED_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})

# Flow lifetimes (idle), in seconds. TCP is long because long-lived idle
# connections are normal; after FIN/RST only stragglers need to pass.
FLOW_TIMEOUT_TCP_S = 6 * 3600
FLOW_TIMEOUT_TCP_CLOSING_S = 10
FLOW_TIMEOUT_OTHER_S = 60
# last_seen is rewritten at most this often: a write per packet would bounce
# the entry's cache line between CPUs on a busy flow.
FLOW_TOUCH_S = 1

IPV6_EXT_MAX = 4  # extension headers skipped before giving up (bounded loop)

MAX_IFACES = 4096
MAX_PEER_ENTRIES = 1 << 20  # all interfaces x directions x 2 live generations
MAX_PORT_ENTRIES = 1 << 18
MAX_FLOWS = 1 << 16
NETNS_PATH_MAX = 224

# -- structures -----------------------------------------------------------------


class PeerKey(ct.Structure):
    """LPM key; the fixed part is iface..pad (96 bits), then the address."""

    _fields_ = [
        ("prefixlen", ct.c_uint32),
        ("iface", ct.c_uint32),
        ("gen", ct.c_uint32),
        ("dir", ct.c_uint8),
        ("family", ct.c_uint8),  # 4 or 6
        ("pad", ct.c_uint8 * 2),  # always zero; keeps addr 4-byte aligned
        ("addr", ct.c_uint8 * 16),  # network order; IPv4 in the first 4 bytes
    ]


class PortKey(ct.Structure):
    """LPM key; the fixed part is iface..proto (80 bits), then the port."""

    _fields_ = [
        ("prefixlen", ct.c_uint32),
        ("iface", ct.c_uint32),
        ("gen", ct.c_uint32),
        ("dir", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("port_be", ct.c_uint16),  # network order: the trie compares bytes MSB first
    ]


class CfgKey(ct.Structure):
    _fields_ = [("iface", ct.c_uint32), ("dir", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class CfgVal(ct.Structure):
    _fields_ = [
        ("any_proto_mask", ct.c_uint64),
        ("gen", ct.c_uint32),
        ("isolated", ct.c_uint8),
        ("flags", ct.c_uint8),
        # Bumped by each in-place change to generation ``gen``'s peer entries
        # (agent/host/bpf_tables.py): flows admitted before it are re-checked.
        ("epoch", ct.c_uint16),
    ]


class FlowKey(ct.Structure):
    """Endpoints ordered (lo < hi) so both directions of a flow share a key."""

    _fields_ = [
        ("iface", ct.c_uint32),
        ("family", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint16),
        ("lo_addr", ct.c_uint32 * 4),
        ("hi_addr", ct.c_uint32 * 4),
        ("lo_port", ct.c_uint16),  # network order; ICMP echo: the identifier
        ("hi_port", ct.c_uint16),
    ]


class FlowVal(ct.Structure):
    _fields_ = [
        ("last_seen_ns", ct.c_uint64),  # bpf_ktime_get_ns()
        ("admit_gen", ct.c_uint32),  # generation of admit_dir's table that allowed it
        ("admit_dir", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("admit_epoch", ct.c_uint16),  # epoch of that generation when it allowed it
    ]


class CounterKey(ct.Structure):
    _fields_ = [
        ("iface", ct.c_uint32),
        ("dir", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("pad", ct.c_uint16),
    ]


class CounterVal(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


class IfaceInfo(ct.Structure):
    """Userspace registry (the program never reads it): lets a restarted
    agent learn which interface each key stands for without its own state."""

    _fields_ = [
        ("netns_cookie", ct.c_uint64),
        ("ifindex", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("ifname", ct.c_char * 16),
        ("netns", ct.c_char * NETNS_PATH_MAX),
    ]


class Meta(ct.Structure):
    _fields_ = [("layout_version", ct.c_uint32), ("next_iface", ct.c_uint32)]


class EventCfg(ct.Structure):
    """Written by the agent; ``enabled`` 0 keeps the drop path event-free."""

    _fields_ = [
        ("per_flow_interval_ns", ct.c_uint64),
        ("enabled", ct.c_uint32),
        ("max_per_sec", ct.c_uint32),
    ]


class EventWindow(ct.Structure):
    """The global cap's one-second window (shared by all CPUs, atomics)."""

    _fields_ = [("start_ns", ct.c_uint64), ("count", ct.c_uint64)]


class EventFlowKey(ct.Structure):
    """A directed flow, for the per-flow dedup of drop records."""

    _fields_ = [
        ("iface", ct.c_uint32),
        ("dir", ct.c_uint8),
        ("family", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("sport", ct.c_uint16),  # network order
        ("dport", ct.c_uint16),
    ]


class EventStats(ct.Structure):
    _fields_ = [("n", ct.c_uint64 * N_EVENT_STATS)]


class DropEvent(ct.Structure):
    """One ring-buffer record."""

    _fields_ = [
        ("ts_ns", ct.c_uint64),  # bpf_ktime_get_ns()
        ("iface", ct.c_uint32),
        ("dir", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("reason", ct.c_uint8),
        ("family", ct.c_uint8),  # 0 when no IP header could be read
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
        ("sport", ct.c_uint16),  # network order
        ("dport", ct.c_uint16),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
    ]


# The fixed (always fully matched) bits ahead of the variable part of each key.
PEER_FIXED_BITS = 8 * (PeerKey.addr.offset - PeerKey.iface.offset)
PORT_FIXED_BITS = 8 * (PortKey.port_be.offset - PortKey.iface.offset)

STRUCTS: dict[str, type[ct.Structure]] = {
    "nw_peer_key": PeerKey,
    "nw_port_key": PortKey,
    "nw_cfg_key": CfgKey,
    "nw_cfg_val": CfgVal,
    "nw_flow_key": FlowKey,
    "nw_flow_val": FlowVal,
    "nw_counter_key": CounterKey,
    "nw_counter_val": CounterVal,
    "nw_iface_info": IfaceInfo,
    "nw_meta": Meta,
    "nw_event_cfg": EventCfg,
    "nw_event_window": EventWindow,
    "nw_event_flow_key": EventFlowKey,
    "nw_event_stats": EventStats,
    "nw_drop_event": DropEvent,
}

# -- maps -----------------------------------------------------------------------

# Kernel map type numbers (uapi enum bpf_map_type) for the shape check at adoption.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
BPF_F_NO_PREALLOC = 1


@dataclass(frozen=True)
class MapSpec:
    name: str  # also the pin's file name and the kernel map name (<16 chars)
    bcc_type: str
    kernel_type: int
    key: str  # C type
    value: str
    max_entries: int
    flags: int = 0

    def key_size(self) -> int:
        return _c_sizeof(self.key)

    def value_size(self) -> int:
        return _c_sizeof(self.value)


def _c_sizeof(ctype: str) -> int:
    if ctype == "":
        return 0  # a ring buffer has neither key nor value
    if ctype.startswith("struct "):
        return ct.sizeof(STRUCTS[ctype[len("struct ") :]])
    return {"__u32": 4, "__u64": 8}[ctype]


MAPS: tuple[MapSpec, ...] = (
    # LPM tries must be created with BPF_F_NO_PREALLOC.
    MapSpec(
        "nw_peers",
        "lpm_trie",
        BPF_MAP_TYPE_LPM_TRIE,
        "struct nw_peer_key",
        "__u64",
        MAX_PEER_ENTRIES,
        BPF_F_NO_PREALLOC,
    ),
    MapSpec(
        "nw_ports",
        "lpm_trie",
        BPF_MAP_TYPE_LPM_TRIE,
        "struct nw_port_key",
        "__u64",
        MAX_PORT_ENTRIES,
        BPF_F_NO_PREALLOC,
    ),
    # NO_PREALLOC: a preallocated hash recycles a replaced element at once, so
    # a reader racing a policy switch could see it half rewritten; without
    # preallocation the old element is freed after an RCU grace period.
    MapSpec(
        "nw_cfg",
        "hash",
        BPF_MAP_TYPE_HASH,
        "struct nw_cfg_key",
        "struct nw_cfg_val",
        2 * MAX_IFACES,
        BPF_F_NO_PREALLOC,
    ),
    MapSpec(
        "nw_flows",
        "lru_hash",
        BPF_MAP_TYPE_LRU_HASH,
        "struct nw_flow_key",
        "struct nw_flow_val",
        MAX_FLOWS,
    ),
    MapSpec(
        "nw_counters",
        "percpu_hash",
        BPF_MAP_TYPE_PERCPU_HASH,
        "struct nw_counter_key",
        "struct nw_counter_val",
        2 * N_VERDICTS * MAX_IFACES,
    ),
    MapSpec(
        "nw_ifaces",
        "hash",
        BPF_MAP_TYPE_HASH,
        "__u32",
        "struct nw_iface_info",
        MAX_IFACES,
        BPF_F_NO_PREALLOC,
    ),
    MapSpec("nw_meta", "array", BPF_MAP_TYPE_ARRAY, "__u32", "struct nw_meta", 1),
    # Slot 0 holds the policy program; every interface's trampoline tail-calls it.
    MapSpec("nw_progs", "prog", BPF_MAP_TYPE_PROG_ARRAY, "__u32", "__u32", 1),
    # Drop events: config (agent-written), the global cap's window, per-CPU
    # stats, the per-flow dedup LRU, and the ring itself.
    MapSpec("nw_evcfg", "array", BPF_MAP_TYPE_ARRAY, "__u32", "struct nw_event_cfg", 1),
    MapSpec("nw_evwindow", "array", BPF_MAP_TYPE_ARRAY, "__u32", "struct nw_event_window", 1),
    MapSpec(
        "nw_evstats", "percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY, "__u32", "struct nw_event_stats", 1
    ),
    MapSpec(
        "nw_evseen",
        "lru_hash",
        BPF_MAP_TYPE_LRU_HASH,
        "struct nw_event_flow_key",
        "__u64",
        MAX_EVENT_FLOWS,
    ),
    MapSpec("nw_events", "ringbuf", BPF_MAP_TYPE_RINGBUF, "", "", EVENT_RING_BYTES),
)
MAPS_BY_NAME = {m.name: m for m in MAPS}
PROG_PIN = "nw_policy"  # pin name of the policy program
PROG_FUNC = "nw_policy"  # its function name in policy.c

# -- the lowered-table contract -------------------------------------------------

PeerEntry = tuple[int, bytes, int]  # (family 4|6, network address bytes, prefixlen)
PortEntry = tuple[int, int, int]  # (ipproto, first port of the block, port prefixlen 0..16)


class LoweredLike(Protocol):
    """Anything shaped like the policy compiler's lowered table."""

    @property
    def isolated(self) -> bool: ...
    @property
    def peers(self) -> Mapping[PeerEntry, int]: ...
    @property
    def ports(self) -> Mapping[PortEntry, int]: ...
    @property
    def any_proto_mask(self) -> int: ...


@dataclass(frozen=True)
class LoweredDirection:
    """One direction's tables, as the compiler lowers them (see
    ``agent/policy/lower.py`` for the contract). Allowed iff
    ``lpm(peers, peer) & (lpm(ports, proto, dport) | any_proto_mask) != 0``."""

    isolated: bool
    peers: dict[PeerEntry, int] = field(default_factory=dict)
    ports: dict[PortEntry, int] = field(default_factory=dict)
    any_proto_mask: int = 0

    @classmethod
    def of(cls, table: LoweredLike) -> LoweredDirection:
        return cls(table.isolated, dict(table.peers), dict(table.ports), table.any_proto_mask)


@dataclass(frozen=True)
class IfaceKey:
    """An attached interface. ``id`` is what the datapath's maps are keyed by."""

    id: int
    netns: str  # absolute path of the netns file
    ifname: str
    ifindex: int  # inside netns
    netns_cookie: int  # SO_NETNS_COOKIE of netns: unique for the boot, never reused


_ADDR_LEN = {4: 4, 6: 16}
U64_MAX = (1 << 64) - 1


def peer_key(iface: int, direction: Direction, gen: int, entry: PeerEntry) -> PeerKey:
    """Pack one ``peers`` entry; rejects host bits set past the prefix, since
    the trie would silently merge such a key with its canonical twin."""
    family, addr, plen = entry
    if family not in _ADDR_LEN or len(addr) != _ADDR_LEN[family]:
        raise ValueError(
            f"peer {entry!r}: family must be 4 or 6 with a {_ADDR_LEN.get(family)}-byte address"
        )
    width = 8 * len(addr)
    if not 0 <= plen <= width:
        raise ValueError(f"peer {entry!r}: prefixlen out of range 0..{width}")
    if int.from_bytes(addr, "big") & ((1 << (width - plen)) - 1):
        raise ValueError(f"peer {_fmt_peer(entry)}: host bits set past the prefix")
    k = PeerKey(
        prefixlen=PEER_FIXED_BITS + plen, iface=iface, gen=gen, dir=direction, family=family
    )
    ct.memmove(ct.addressof(k) + PeerKey.addr.offset, addr, len(addr))
    return k


def peer_lookup_key(
    iface: int, direction: Direction, gen: int, family: int, addr: bytes
) -> PeerKey:
    """A full-length key, as the datapath builds it to look a packet up."""
    width = 8 * len(addr)
    return peer_key(iface, direction, gen, (family, addr, width))


def unpack_peer_key(k: PeerKey) -> tuple[int, Direction, int, PeerEntry]:
    n = _ADDR_LEN[k.family]
    return (
        k.iface,
        Direction(k.dir),
        k.gen,
        (k.family, bytes(k.addr[:n]), k.prefixlen - PEER_FIXED_BITS),
    )


def port_key(iface: int, direction: Direction, gen: int, entry: PortEntry) -> PortKey:
    proto, port, plen = entry
    if not 0 <= proto <= 255:
        raise ValueError(f"port {entry!r}: protocol out of range")
    if not 0 <= plen <= 16 or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {entry!r}: port/prefixlen out of range")
    if port & ((1 << (16 - plen)) - 1):
        raise ValueError(f"port {entry!r}: bits set past the port prefix")
    return PortKey(
        prefixlen=PORT_FIXED_BITS + plen,
        iface=iface,
        gen=gen,
        dir=direction,
        proto=proto,
        port_be=_htons(port),
    )


def unpack_port_key(k: PortKey) -> tuple[int, Direction, int, PortEntry]:
    return (
        k.iface,
        Direction(k.dir),
        k.gen,
        (k.proto, _htons(k.port_be), k.prefixlen - PORT_FIXED_BITS),
    )


def check_mask(mask: int, what: str) -> int:
    if not 0 <= mask <= U64_MAX:
        raise ValueError(f"{what}: class mask {mask:#x} does not fit in u64")
    return mask


def _htons(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "big"), sys.byteorder)


def _fmt_peer(entry: PeerEntry) -> str:
    family, addr, plen = entry
    return f"{ipaddress.ip_address(addr)}/{plen}"


# -- C header rendering --------------------------------------------------------

_C_SCALAR: dict[type, str] = {
    ct.c_uint8: "__u8",
    ct.c_uint16: "__u16",
    ct.c_uint32: "__u32",
    ct.c_uint64: "__u64",
    ct.c_char: "char",
}


def _c_field(name: str, ctype: type) -> str:
    if issubclass(ctype, ct.Array):
        elem = cast(type, ctype._type_)
        return f"{_C_SCALAR[elem]} {name}[{ctype._length_}]"
    return f"{_C_SCALAR[ctype]} {name}"


def _fields(st: type[ct.Structure]) -> list[tuple[str, type]]:
    return [(f[0], f[1]) for f in st._fields_]


def _constants() -> list[tuple[str, int]]:
    consts: list[tuple[str, int]] = [("NW_LAYOUT_VERSION", LAYOUT_VERSION)]
    consts += [(f"NW_DIR_{d.name}", int(d)) for d in Direction]
    consts += [(f"NW_V_{v.name}", int(v)) for v in Verdict]
    consts += [(f"NW_R_{r.name}", int(r)) for r in DropReason]
    consts += [(f"NW_EVS_{e.name}", int(e)) for e in EventStat]
    consts += [
        ("NW_N_VERDICTS", N_VERDICTS),
        ("NW_N_EVENT_STATS", N_EVENT_STATS),
        ("NW_CFG_KEEP_ESTABLISHED", CFG_KEEP_ESTABLISHED),
        ("NW_FLOW_ORIG_SRC_IS_LO", FLOW_ORIG_SRC_IS_LO),
        ("NW_FLOW_CLOSING", FLOW_CLOSING),
        ("NW_PEER_FIXED_BITS", PEER_FIXED_BITS),
        ("NW_PORT_FIXED_BITS", PORT_FIXED_BITS),
        ("NW_IPV6_EXT_MAX", IPV6_EXT_MAX),
    ]
    ns = 1_000_000_000
    consts += [
        ("NW_FLOW_TIMEOUT_TCP_NS", FLOW_TIMEOUT_TCP_S * ns),
        ("NW_FLOW_TIMEOUT_TCP_CLOSING_NS", FLOW_TIMEOUT_TCP_CLOSING_S * ns),
        ("NW_FLOW_TIMEOUT_OTHER_NS", FLOW_TIMEOUT_OTHER_S * ns),
        ("NW_FLOW_TOUCH_NS", FLOW_TOUCH_S * ns),
    ]
    return consts


def render_c_header() -> str:
    out = [
        "/* Generated by nicwarden.bpf.layout: do not edit. Regenerate with",
        " *   .venv/bin/python -m nicwarden.bpf.layout > bpf/layout.h",
        " * The _Static_asserts pin every size and offset to the Python side. */",
        "#ifndef NW_LAYOUT_H",
        "#define NW_LAYOUT_H",
        "",
    ]
    for name, value in _constants():
        suffix = "ULL" if value > 0x7FFFFFFF else ""
        out.append(f"#define {name} {value}{suffix}")
    out.append("")
    for cname, st in STRUCTS.items():
        out.append(f"struct {cname} {{")
        for fname, ftype in _fields(st):
            out.append(f"    {_c_field(fname, ftype)};")
        out.append("};")
        out.append(f'_Static_assert(sizeof(struct {cname}) == {ct.sizeof(st)}, "{cname} size");')
        for fname, _ in _fields(st):
            off = getattr(st, fname).offset
            out.append(
                f"_Static_assert(__builtin_offsetof(struct {cname}, {fname}) == {off}, "
                f'"{cname}.{fname} offset");'
            )
        out.append("")
    out.append("/* Maps, each pinned as NW_PIN_DIR/<name>: bcc reuses a pinned map when")
    out.append(" * the pin exists (state survives an agent restart) and creates and pins")
    out.append(" * it otherwise. NW_PIN_DIR is passed by the loader (-DNW_PIN_DIR=...). */")
    out.append("#define NW_DECLARE_MAPS \\")
    for spec in MAPS:
        if spec.kernel_type == BPF_MAP_TYPE_RINGBUF:
            # bcc has no pinned form of BPF_RINGBUF_OUTPUT: the same table
            # struct, with the pin path in the section name.
            out.append(
                f"    struct {spec.name}_table_t {{ int key; __u32 leaf; "
                "void *(*ringbuf_reserve)(__u64); void (*ringbuf_submit)(void *, __u64); "
                "void (*ringbuf_discard)(void *, __u64); __u32 max_entries; }; \\"
            )
            out.append(
                f'    __attribute__((section("maps/ringbuf:" NW_PIN_DIR "/{spec.name}"))) '
                f"struct {spec.name}_table_t {spec.name} = "
                f"{{ .max_entries = {spec.max_entries} }}; \\"
            )
            continue
        out.append(
            f'    BPF_TABLE_PINNED("{spec.bcc_type}", {spec.key}, {spec.value}, {spec.name}, '
            f'{spec.max_entries}, NW_PIN_DIR "/{spec.name}", {spec.flags}); \\'
        )
    out.append("    /* end of maps */")
    out.append("")
    out.append("#endif /* NW_LAYOUT_H */")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_c_header())
