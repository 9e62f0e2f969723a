"""Lower a semantic ``DirectionTable`` to the map entries the BPF datapath
loads. This module docstring is the contract with the BPF side.

Classes
    Each traffic class gets one bit of a u64 (bit i = the i-th class, classes
    ordered by port set, ALL first). More than 64 distinct port sets in one
    direction, or more ``peers`` or ``ports`` entries than ``TableLimits``
    allows, raise ``LoweringError``; the agent then fails that direction
    closed (deny-all) and reports it on the policies that select it.

``peers``: ``{(family, addr, prefixlen): mask}``
    ``family`` is 4 or 6, ``addr`` the network address (4 or 16 bytes, network
    order, host bits zero), ``prefixlen`` 0..32 or 0..128. Meant for one LPM
    trie per family (key ``{prefixlen, addr}``). An LPM lookup returns only the
    longest matching entry, so the table is **prefix-closed**: each entry's
    mask already holds the bits of every shorter covering prefix, minus the
    bits an ``except`` removes. An except is its own entry carrying the
    covering mask minus its block's class bit (unless another block of that
    class still covers it). A miss means mask 0.

``ports``: ``{(ipproto, port, port_prefixlen): mask}``
    ``port`` is the first port of an aligned block of ``2**(16 - prefixlen)``
    ports, ``prefixlen`` 0..16; the protocol is matched exactly (in a trie key
    ``{8 + prefixlen, proto, port_be16}``). Ranges are split into at most 30
    aligned blocks; a whole protocol is prefixlen 0. Prefix-closed like
    ``peers``. With ``allow_icmp``, ICMP (1) and ICMPv6 (58) get a prefixlen-0
    entry holding every class's bit. Only TCP, UDP and SCTP have port entries
    longer than prefixlen 0.

``any_proto_mask``
    Bits of the classes that allow every protocol and port (rules without
    ``ports``), ICMP and port-less protocols included.

Verdict, per packet on an isolated direction::

    allowed = lpm(peers, family, peer_ip) & (lpm(ports, proto, dport) | any_proto_mask) != 0

where on ingress ``peer_ip`` is the source address and ``dport`` the
destination port, on egress ``peer_ip`` is the destination address and
``dport`` the destination port; for protocols without ports (ICMP, …)
``dport = 0`` and only prefixlen-0 entries can match. ``isolated == False``:
pass, no program needed. ``always_pass`` names traffic the datapath passes
before the verdict (ARP, ICMPv6 neighbour discovery types 133-136). Replies of
allowed flows pass through the datapath's own flow table (K8s policies are
connection-oriented); that table is not described here.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from nicwarden.bpf.layout import MAX_PEER_ENTRIES, MAX_PORT_ENTRIES

from ..errors import Unsupported
from .objects import IPAddress
from .tables import (
    ALL,
    ICMP,
    ICMPV6,
    PORTED_PROTOCOLS,
    Block,
    DirectionTable,
    InterfaceTables,
    PortRange,
    PortSet,
    outermost,
    port_set_key,
)

MAX_CLASSES = 64
PORT_BITS = 16
_WIDTH = {4: 32, 6: 128}

PeerKey = tuple[int, bytes, int]
PortKey = tuple[int, int, int]


class LoweringError(Unsupported):
    """The table does not fit the datapath (too many classes or entries)."""


@dataclass(frozen=True)
class TableLimits:
    """What one direction of one interface may hold. A switch writes the new
    generation while the old one is still in the shared trie, so a table
    over half a trie could never be switched in even on an empty node; past
    these the kernel would refuse the write halfway and the old table would
    stay in force, which is worse than failing closed."""

    classes: int = MAX_CLASSES
    peer_entries: int = MAX_PEER_ENTRIES // 2
    port_entries: int = MAX_PORT_ENTRIES // 2

    def check(self, table: LoweredTable) -> LoweredTable:
        if len(table.peers) > self.peer_entries:
            raise LoweringError(
                f"{len(table.peers)} peer entries exceed the datapath's {self.peer_entries}"
            )
        if len(table.ports) > self.port_entries:
            raise LoweringError(
                f"{len(table.ports)} port entries exceed the datapath's {self.port_entries}"
            )
        return table


DEFAULT_LIMITS = TableLimits()


@dataclass(frozen=True)
class _Basis:
    """What the next lowering of the same interface can start from."""

    table: DirectionTable  # the table this one was lowered from
    static: Mapping[tuple[int, int, int], list[tuple[int, int]]]  # non-host blocks' deltas
    bits: tuple[int, ...]  # class index -> bit


@dataclass(frozen=True)
class LoweredTable:
    """One direction as map entries; the dicts are not to be mutated."""

    isolated: bool
    peers: Mapping[PeerKey, int]
    ports: Mapping[PortKey, int]
    any_proto_mask: int = 0
    class_count: int = 0
    always_pass: tuple[str, ...] = ()
    # Order-independent sum of the peer entries' hashes: the digest follows
    # an in-place change in O(changed entries) instead of re-sorting them all.
    peer_sum: int | None = field(default=None, compare=False, repr=False)
    basis: _Basis | None = field(default=None, compare=False, repr=False)

    def digest(self) -> str:
        return _digest(self._canonical())

    def _canonical(self) -> Iterable[str]:
        yield f"isolated={int(self.isolated)} any={self.any_proto_mask:x} classes={self.class_count}"
        yield "pass=" + ",".join(self.always_pass)
        total = self.peer_sum if self.peer_sum is not None else _peer_sum(self.peers)
        yield f"peers={len(self.peers)} sum={total:032x}"
        for (proto, port, plen), mask in sorted(self.ports.items()):
            yield f"q{proto} {port}/{plen} {mask:x}"


@dataclass(frozen=True)
class LoweredInterface:
    ingress: LoweredTable
    egress: LoweredTable
    errors: tuple[str, ...] = ()  # lowering failures (the direction is then deny-all)
    # The directions ("ingress", "egress") that failed so, each with its reason.
    failed: Mapping[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        cached: str | None = self.__dict__.get("_digest")
        if cached is None:
            lines = ["ingress", *self.ingress._canonical(), "egress", *self.egress._canonical()]
            cached = self.__dict__["_digest"] = _digest(lines)
        return cached


def digest(tables: LoweredTable | LoweredInterface) -> str:
    """A stable hex digest, for generation tracking and change detection."""
    return tables.digest()


def _digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def deny_all(always_pass: tuple[str, ...]) -> LoweredTable:
    return LoweredTable(True, {}, {}, 0, 0, always_pass)


def lower(
    table: DirectionTable,
    previous: LoweredTable | None = None,
    limits: TableLimits = DEFAULT_LIMITS,
) -> LoweredTable:
    """``previous``: this direction's last lowering, when the change from it
    is only single addresses entering or leaving classes (pods coming and
    going) the work is proportional to them, not to the table."""
    if not table.isolated:
        return LoweredTable(False, {}, {}, 0, 0, table.always_pass)
    if table.fail_closed:
        return deny_all(table.always_pass)
    if previous is not None:
        again = _relower(table, previous)
        if again is not None:
            return limits.check(again)
    # Group again by port set so a hand-built table lowers like a compiled one.
    groups: dict[PortSet, set[Block]] = defaultdict(set)
    for cls in table.classes:
        if cls.peers:
            groups[cls.ports].update(cls.peers)
    max_classes = min(limits.classes, MAX_CLASSES)
    if len(groups) > max_classes:
        raise LoweringError(
            f"{len(groups)} distinct port sets exceed the datapath's {max_classes} classes"
        )
    ordered = sorted(groups.items(), key=lambda kv: port_set_key(kv[0]))
    static: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    hosts: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    port_deltas: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    any_mask = 0
    for bit, (ports, blocks) in enumerate(ordered):
        for block in blocks:
            if block.is_host:
                hosts[_node(block)].append((bit, 1))
            else:
                _add_block(static, bit, block)
        if ports is ALL:
            any_mask |= 1 << bit
        else:
            for r in ports:
                _add_range(port_deltas, bit, r)
        if table.allow_icmp:
            for proto in (ICMP, ICMPV6):
                port_deltas[(proto, 0, 0)].append((bit, 1))
    peer_deltas = dict(static)
    for node, changes in hosts.items():
        peer_deltas[node] = static[node] + changes if node in static else changes
    peers = {
        (fam, value.to_bytes(_WIDTH[fam] // 8, "big"), plen): mask
        for (fam, value, plen), mask in _prefix_close(peer_deltas, _WIDTH.__getitem__).items()
    }
    ports_map = _prefix_close(port_deltas, lambda _proto: PORT_BITS)
    basis = _Basis(table, dict(static), _class_bits(table)) if _regular(table) else None
    return limits.check(
        LoweredTable(
            True,
            peers,
            ports_map,
            any_mask,
            len(ordered),
            table.always_pass,
            _peer_sum(peers),
            basis,
        )
    )


# Past this many changed addresses a full lowering is as cheap.
_RELOWER_MAX = 4096


def _relower(table: DirectionTable, previous: LoweredTable) -> LoweredTable | None:
    """``previous`` changed by single addresses only, or None when the change
    is anything else (ports, ipBlocks, a class appearing or emptying)."""
    basis = previous.basis
    if basis is None or not _regular(table):
        return None
    old = basis.table
    if table.allow_icmp != old.allow_icmp or table.always_pass != previous.always_pass:
        return None
    if [c.ports for c in table.classes] != [c.ports for c in old.classes]:
        return None
    changed: dict[tuple[int, int, int], Block] = {}
    for before, after in zip(old.classes, table.classes, strict=True):
        if before.peers is after.peers:
            continue
        for block in after.peers ^ before.peers:
            if not block.is_host:
                return None
            changed[_node(block)] = block
            if len(changed) > _RELOWER_MAX:
                return None
    peers = dict(previous.peers)
    total = previous.peer_sum if previous.peer_sum is not None else _peer_sum(peers)
    for node, block in changed.items():
        fam, value, full = node
        counts: dict[int, int] = defaultdict(int)
        for plen in range(full):
            shift = full - plen
            for bit, d in basis.static.get((fam, (value >> shift) << shift, plen), ()):
                counts[bit] += d
        enclosing = _mask(counts)
        for bit, d in basis.static.get(node, ()):
            counts[bit] += d
        for i, cls in enumerate(table.classes):
            if block in cls.peers:
                counts[basis.bits[i]] += 1
        mask = _mask(counts)
        key = (fam, value.to_bytes(_WIDTH[fam] // 8, "big"), full)
        was = peers.pop(key, None)
        if was is not None:
            total = (total - _entry_hash(key, was)) % _SUM_MOD
        if mask != enclosing:
            peers[key] = mask
            total = (total + _entry_hash(key, mask)) % _SUM_MOD
    return LoweredTable(
        True,
        peers,
        previous.ports,
        previous.any_proto_mask,
        previous.class_count,
        previous.always_pass,
        total,
        _Basis(table, basis.static, basis.bits),
    )


def _regular(table: DirectionTable) -> bool:
    """Classes as the compiler makes them: each non-empty, each port set
    once, so class i always holds the same bit."""
    sets = [c.ports for c in table.classes]
    return all(c.peers for c in table.classes) and len(set(sets)) == len(sets)


def _class_bits(table: DirectionTable) -> tuple[int, ...]:
    order = sorted(range(len(table.classes)), key=lambda i: port_set_key(table.classes[i].ports))
    bits = [0] * len(order)
    for bit, i in enumerate(order):
        bits[i] = bit
    return tuple(bits)


def _node(block: Block) -> tuple[int, int, int]:
    return (block.cidr.version, int(block.cidr.network_address), block.cidr.prefixlen)


def _mask(counts: Mapping[int, int]) -> int:
    out = 0
    for bit, n in counts.items():
        if n > 0:
            out |= 1 << bit
    return out


_SUM_MOD = 1 << 128


def _entry_hash(key: PeerKey, mask: int) -> int:
    fam, addr, plen = key
    data = bytes((fam, plen)) + addr + mask.to_bytes(8, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


def _peer_sum(peers: Mapping[PeerKey, int]) -> int:
    total = 0
    for key, mask in peers.items():
        total += _entry_hash(key, mask)
    return total % _SUM_MOD


def lower_interface(
    tables: InterfaceTables,
    previous: LoweredInterface | None = None,
    limits: TableLimits = DEFAULT_LIMITS,
) -> LoweredInterface:
    """Both directions; a direction that cannot be lowered becomes deny-all.
    ``previous``: the interface's last lowering (see ``lower``)."""
    lowered: list[LoweredTable] = []
    errors: list[str] = []
    failed: dict[str, str] = {}
    for name, table in (("ingress", tables.ingress), ("egress", tables.egress)):
        before = None if previous is None else getattr(previous, name)
        try:
            lowered.append(lower(table, before, limits))
        except LoweringError as exc:
            errors.append(f"{name}: {exc.message}; failing closed")
            failed[name] = exc.message
            lowered.append(deny_all(table.always_pass))
    return LoweredInterface(lowered[0], lowered[1], tuple(errors), failed)


def _add_block(
    deltas: dict[tuple[int, int, int], list[tuple[int, int]]], bit: int, block: Block
) -> None:
    fam = block.cidr.version
    deltas[(fam, int(block.cidr.network_address), block.cidr.prefixlen)].append((bit, 1))
    # Nested excepts would subtract the block twice; keep the outermost only.
    for exc in outermost(block.excepts):
        deltas[(fam, int(exc.network_address), exc.prefixlen)].append((bit, -1))


def _add_range(
    deltas: dict[tuple[int, int, int], list[tuple[int, int]]], bit: int, r: PortRange
) -> None:
    for value, plen in range_to_prefixes(r.lo, r.hi):
        deltas[(r.proto, value, plen)].append((bit, 1))


def range_to_prefixes(lo: int, hi: int, width: int = PORT_BITS) -> list[tuple[int, int]]:
    """Split ``[lo, hi]`` into the fewest aligned ``(value, prefixlen)`` blocks
    (at most ``2 * width - 2``: 30 for ports)."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        # The largest power-of-two block aligned at lo that still fits.
        size = (lo & -lo) if lo else 1 << width
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, width - size.bit_length() + 1))
        lo += size
    return out


def _prefix_close(
    deltas: Mapping[tuple[int, int, int], list[tuple[int, int]]],
    width_of: Callable[[int], int],
) -> dict[tuple[int, int, int], int]:
    """Turn per-prefix class deltas into prefix-closed masks in O(n log n).

    Nodes are ``(space, value, prefixlen)``; a +1 delta says "this class
    covers the prefix", -1 "this except removes it". Sorting by (space, value,
    prefixlen) visits every ancestor before its descendants, so a stack of the
    open ancestors gives each node the per-class counts of all prefixes that
    cover it. A node is emitted only when its mask differs from what the LPM
    would return without it (its enclosing mask): excepts of an otherwise
    uncovered range, or a pod IP inside an allowed CIDR of the same class,
    cost no entry.
    """
    counts: dict[int, int] = defaultdict(int)
    stack: list[tuple[int, int, list[tuple[int, int]], int]] = []  # space, last, deltas, outer mask
    mask = 0
    out: dict[tuple[int, int, int], int] = {}
    for node in sorted(deltas):
        space, value, plen = node
        while stack and (stack[-1][0] != space or value > stack[-1][1]):
            _, _, undo, mask = stack.pop()
            for bit, d in undo:
                counts[bit] -= d
        enclosing = mask
        changes = deltas[node]
        for bit, d in changes:
            counts[bit] += d
        for bit, _ in changes:
            if counts[bit] > 0:
                mask |= 1 << bit
            else:
                mask &= ~(1 << bit)
        host_bits = width_of(space) - plen
        stack.append((space, value | ((1 << host_bits) - 1), changes, enclosing))
        if mask != enclosing:
            out[node] = mask
    return out


def lookup(table: LoweredTable, family: int, ip: IPAddress | str, proto: int, dport: int) -> bool:
    """Reference evaluator of the lowered form, emulating the datapath's LPM
    lookups literally (longest prefix first)."""
    if not table.isolated:
        return True
    addr = ipaddress.ip_address(ip)
    if addr.version != family:
        raise ValueError(f"{addr} is not an IPv{family} address")
    width = _WIDTH[family]
    value = int(addr)
    peer_mask = 0
    for plen in range(width, -1, -1):
        masked = (value >> (width - plen)) << (width - plen)
        hit = table.peers.get((family, masked.to_bytes(width // 8, "big"), plen))
        if hit is not None:
            peer_mask = hit
            break
    port = dport if proto in PORTED_PROTOCOLS else 0
    port_mask = 0
    for plen in range(PORT_BITS, -1, -1):
        masked = (port >> (PORT_BITS - plen)) << (PORT_BITS - plen)
        hit = table.ports.get((proto, masked, plen))
        if hit is not None:
            port_mask = hit
            break
    return peer_mask & (port_mask | table.any_proto_mask) != 0
