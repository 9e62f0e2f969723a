"""Lowering to the BPF map contract: prefix closure, excepts, port blocks,
limits, digests, scale, and agreement of the lowered form with the semantic
form on many random packets."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from test_policy_helpers import GRE, ICMP, ICMPV6, SCTP, TCP, UDP

from nicwarden.agent.policy import (
    ALL,
    MAX_CLASSES,
    Block,
    DirectionTable,
    InterfaceTables,
    LoweringError,
    PortRange,
    TrafficClass,
    digest,
    evaluate,
    lookup,
    lower,
    lower_interface,
)
from nicwarden.agent.policy.lower import range_to_prefixes
from nicwarden.agent.policy.tables import PortSet


def net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def block(cidr: str, *excepts: str) -> Block:
    return Block(net(cidr), frozenset(net(e) for e in excepts))


def tcp_ports(*ports: int) -> frozenset[PortRange]:
    return frozenset(PortRange(TCP, p, p) for p in ports)


def table(*classes: tuple[PortSet, list[Block]], allow_icmp: bool = False) -> DirectionTable:
    return DirectionTable(
        True, tuple(TrafficClass(frozenset(b), p) for p, b in classes), allow_icmp=allow_icmp
    )


def v4(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


# --- exact map contents ------------------------------------------------------------------


def test_except_entry_carries_covering_mask_minus_its_bit() -> None:
    t = lower(
        table(
            (tcp_ports(80), [block("10.0.0.0/8", "10.1.0.0/16")]),
            (tcp_ports(443), [block("10.1.2.0/24")]),
        )
    )
    assert t.isolated and t.class_count == 2 and t.any_proto_mask == 0
    assert dict(t.peers) == {
        (4, v4("10.0.0.0"), 8): 0b01,
        (4, v4("10.1.0.0"), 16): 0b00,
        (4, v4("10.1.2.0"), 24): 0b10,
    }
    assert dict(t.ports) == {(TCP, 80, 16): 0b01, (TCP, 443, 16): 0b10}
    assert lookup(t, 4, "10.1.2.3", TCP, 443) and not lookup(t, 4, "10.1.2.3", TCP, 80)
    assert not lookup(t, 4, "10.1.3.3", TCP, 80) and lookup(t, 4, "10.9.0.1", TCP, 80)


def test_nested_prefixes_inherit_shorter_bits() -> None:
    t = lower(
        table(
            (tcp_ports(80), [block("10.0.0.0/8")]),
            (tcp_ports(443), [block("10.1.0.0/16"), block("fd00::/8")]),
        )
    )
    assert dict(t.peers) == {
        (4, v4("10.0.0.0"), 8): 0b01,
        (4, v4("10.1.0.0"), 16): 0b11,
        (6, net("fd00::/8").network_address.packed, 8): 0b10,
    }


def test_except_still_covered_by_another_block_of_the_same_class() -> None:
    t = lower(table((tcp_ports(80), [block("10.0.0.0/8", "10.1.0.0/16"), block("10.0.0.0/12")])))
    # 10.1/16 is excepted from the /8 but lies inside the /12 of the same class.
    assert lookup(t, 4, "10.1.0.1", TCP, 80)
    assert lookup(t, 4, "10.16.0.1", TCP, 80)  # inside the /8, outside its except
    assert dict(t.peers) == {(4, v4("10.0.0.0"), 8): 1}  # every other entry is redundant


def test_redundant_entries_are_compacted() -> None:
    t = lower(
        table(
            (
                tcp_ports(80),
                [block("10.0.0.0/8"), block("10.1.0.5/32"), block("10.2.0.0/16", "10.2.1.0/24")],
            )
        )
    )
    # Everything else lies inside the /8 of the same class (the except too, and
    # the /8 has none), so no other entry changes an LPM answer.
    assert dict(t.peers) == {(4, v4("10.0.0.0"), 8): 1}


def test_except_outside_other_coverage_needs_no_entry_when_uncovered() -> None:
    t = lower(table((tcp_ports(80), [block("10.0.0.0/8", "10.1.0.0/16")])))
    assert (4, v4("10.1.0.0"), 16) in t.peers and t.peers[(4, v4("10.1.0.0"), 16)] == 0


def test_ports_prefix_closed_and_any_proto() -> None:
    t = lower(
        table(
            (ALL, [block("192.168.0.0/16")]),
            (frozenset({PortRange(TCP, 0, 65535)}), [block("10.1.0.0/16")]),
            (
                frozenset({PortRange(TCP, 8000, 8003), PortRange(UDP, 53, 53)}),
                [block("10.2.0.0/16")],
            ),
        )
    )
    # Classes are ordered ALL first, then by port set.
    assert t.any_proto_mask == 0b001
    assert dict(t.ports) == {
        (TCP, 0, 0): 0b010,
        (TCP, 8000, 14): 0b110,  # 8000-8003 inherits the whole-TCP bit
        (UDP, 53, 16): 0b100,
    }
    assert lookup(t, 4, "10.1.9.9", TCP, 1) and not lookup(t, 4, "10.1.9.9", UDP, 53)
    assert lookup(t, 4, "10.2.0.1", TCP, 8003) and not lookup(t, 4, "10.2.0.1", TCP, 8004)
    assert lookup(t, 4, "192.168.0.1", GRE, 0) and lookup(t, 4, "192.168.0.1", ICMP, 0)
    assert not lookup(t, 4, "10.1.0.1", ICMP, 0)


def test_icmp_entries_only_with_option() -> None:
    t = lower(
        table(
            (tcp_ports(80), [block("10.0.0.0/8")]),
            (tcp_ports(81), [block("fd00::/8")]),
            allow_icmp=True,
        )
    )
    assert t.ports[(ICMP, 0, 0)] == 0b11 and t.ports[(ICMPV6, 0, 0)] == 0b11
    assert lookup(t, 4, "10.0.0.1", ICMP, 0) and lookup(t, 6, "fd00::1", ICMPV6, 0)
    assert not lookup(t, 4, "11.0.0.1", ICMP, 0)
    off = lower(table((tcp_ports(80), [block("10.0.0.0/8")])))
    assert (ICMP, 0, 0) not in off.ports and not lookup(off, 4, "10.0.0.1", ICMP, 0)


def test_not_isolated_and_fail_closed() -> None:
    free = lower(DirectionTable(isolated=False))
    assert not free.isolated and free.peers == {} and lookup(free, 4, "1.2.3.4", TCP, 1)
    closed = lower(
        DirectionTable(
            True, (TrafficClass(frozenset({block("0.0.0.0/0")}), ALL),), fail_closed=("x",)
        )
    )
    assert closed.isolated and closed.peers == {} and not lookup(closed, 4, "1.2.3.4", TCP, 1)
    assert free.always_pass == closed.always_pass == ("arp", "icmpv6-nd")


def test_keys_are_well_formed() -> None:
    rng = random.Random(7)
    t = lower(random_table(rng, classes=12))
    for (fam, addr, plen), mask in t.peers.items():
        width = 32 if fam == 4 else 128
        assert len(addr) == width // 8 and 0 <= plen <= width
        assert int.from_bytes(addr, "big") & ((1 << (width - plen)) - 1) == 0
        assert 0 <= mask < 1 << t.class_count
    for (proto, port, plen), mask in t.ports.items():
        assert 0 <= plen <= 16 and port & ((1 << (16 - plen)) - 1) == 0
        if proto not in (TCP, UDP, SCTP):
            assert plen == 0  # port-less protocols: only prefixlen-0 entries
        assert 0 <= mask < 1 << t.class_count


# --- port ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (80, 80, [(80, 16)]),
        (0, 65535, [(0, 0)]),
        (8000, 8003, [(8000, 14)]),
        (1, 3, [(1, 16), (2, 15)]),
        (65534, 65535, [(65534, 15)]),
    ],
)
def test_range_to_prefixes(lo: int, hi: int, expected: list[tuple[int, int]]) -> None:
    assert range_to_prefixes(lo, hi) == expected


def test_range_to_prefixes_random_cover_exactly() -> None:
    rng = random.Random(1)
    assert len(range_to_prefixes(1, 65534)) == 30  # the worst case
    for _ in range(2000):
        lo = rng.randrange(0, 65536)
        hi = rng.randrange(lo, 65536)
        blocks = range_to_prefixes(lo, hi)
        assert len(blocks) <= 30
        covered = 0
        expect_next = lo
        for value, plen in blocks:
            size = 1 << (16 - plen)
            assert value % size == 0 and value == expect_next
            expect_next += size
            covered += size
        assert covered == hi - lo + 1


# --- limits ------------------------------------------------------------------------------


def distinct_port_classes(n: int) -> DirectionTable:
    return table(*((tcp_ports(1000 + i), [block(f"10.0.{i}.0/24")]) for i in range(n)))


def test_64_classes_fit() -> None:
    t = lower(distinct_port_classes(MAX_CLASSES))
    assert t.class_count == 64
    assert t.peers[(4, v4("10.0.63.0"), 24)] == 1 << 63
    assert lookup(t, 4, "10.0.63.1", TCP, 1063) and not lookup(t, 4, "10.0.63.1", TCP, 1062)


def test_65_port_sets_raise() -> None:
    with pytest.raises(
        LoweringError, match="65 distinct port sets exceed the datapath's 64 classes"
    ):
        lower(distinct_port_classes(65))


def test_identical_port_sets_share_a_class() -> None:
    t = table(*((tcp_ports(80), [block(f"10.0.{i}.0/24")]) for i in range(100)))
    assert lower(t).class_count == 1


def test_lower_interface_fails_closed_per_direction() -> None:
    ok = table((ALL, [block("10.0.0.0/8")]))
    lowered = lower_interface(InterfaceTables(distinct_port_classes(65), ok))
    assert lowered.ingress.isolated and lowered.ingress.peers == {}
    assert not lookup(lowered.ingress, 4, "10.0.0.1", TCP, 1000)
    assert lookup(lowered.egress, 4, "10.0.0.1", TCP, 1000)
    assert lowered.errors == (
        "ingress: 65 distinct port sets exceed the datapath's 64 classes; failing closed",
    )


# --- digests -----------------------------------------------------------------------------


def test_digest_stable_and_sensitive() -> None:
    a = table(
        (tcp_ports(80), [block("10.0.0.0/8"), block("fd00::/8")]), (ALL, [block("10.1.0.0/16")])
    )
    b = table(
        (ALL, [block("10.1.0.0/16")]), (tcp_ports(80), [block("fd00::/8"), block("10.0.0.0/8")])
    )
    assert digest(lower(a)) == digest(lower(b))
    assert len(digest(lower(a))) == 64
    c = table(
        (tcp_ports(81), [block("10.0.0.0/8"), block("fd00::/8")]), (ALL, [block("10.1.0.0/16")])
    )
    assert digest(lower(a)) != digest(lower(c))
    assert digest(lower(DirectionTable(False))) != digest(lower(DirectionTable(True)))
    ia = lower_interface(InterfaceTables(a, DirectionTable(False)))
    ib = lower_interface(InterfaceTables(DirectionTable(False), a))
    assert digest(ia) == ia.digest() != digest(ib)


# --- random agreement --------------------------------------------------------------------

V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
V6_BASE = int(ipaddress.IPv6Address("fd00::"))


def random_net(rng: random.Random, family: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # A small address space so blocks overlap, nest and collide often.
    if family == 4:
        plen = rng.choice([16, 18, 20, 22, 24, 26, 28, 30, 32, rng.randint(16, 32)])
        addr = V4_BASE + rng.randrange(1 << 16)
        return ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
    plen = rng.choice([112, 116, 120, 124, 128, rng.randint(104, 128)])
    addr = V6_BASE + rng.randrange(1 << 24)
    return ipaddress.IPv6Network((addr >> (128 - plen) << (128 - plen), plen))


def random_block(rng: random.Random) -> Block:
    cidr = random_net(rng, rng.choice([4, 4, 6]))
    excepts = set()
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        if cidr.prefixlen < cidr.max_prefixlen:
            sub = rng.randint(cidr.prefixlen + 1, cidr.max_prefixlen)
            excepts.add(_random_subnet(rng, cidr, sub))  # may nest or repeat: on purpose
    return Block(cidr, frozenset(excepts))


def _random_subnet(
    rng: random.Random, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, plen: int
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    host_bits = cidr.max_prefixlen - cidr.prefixlen
    offset = (
        rng.randrange(1 << host_bits) >> (cidr.max_prefixlen - plen) << (cidr.max_prefixlen - plen)
    )
    return ipaddress.ip_network((int(cidr.network_address) + offset, plen))


def random_ports(rng: random.Random) -> PortSet:
    if rng.random() < 0.15:
        return ALL
    ranges = set()
    for _ in range(rng.randint(1, 3)):
        proto = rng.choice([TCP, UDP, SCTP])
        kind = rng.random()
        if kind < 0.2:
            ranges.add(PortRange(proto, 0, 65535))
        elif kind < 0.6:
            p = rng.randint(1, 65535)
            ranges.add(PortRange(proto, p, p))
        else:
            lo = rng.randint(1, 65535)
            ranges.add(PortRange(proto, lo, min(65535, lo + rng.randint(1, 5000))))
    return frozenset(ranges)


def random_table(rng: random.Random, classes: int | None = None) -> DirectionTable:
    n = classes if classes is not None else rng.randint(1, 10)
    return DirectionTable(
        True,
        tuple(
            TrafficClass(
                frozenset(random_block(rng) for _ in range(rng.randint(1, 8))), random_ports(rng)
            )
            for _ in range(n)
        ),
        allow_icmp=rng.random() < 0.3,
    )


def interesting_ips(t: DirectionTable) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Both edges of every cidr and except, and the addresses just outside."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for cls in t.classes:
        for b in cls.peers:
            for n in (b.cidr, *b.excepts):
                first, last = int(n.network_address), int(n.broadcast_address)
                make = ipaddress.IPv4Address if n.version == 4 else ipaddress.IPv6Address
                out += [
                    make(v)
                    for v in (first - 1, first, last, last + 1)
                    if 0 <= v < 1 << n.max_prefixlen
                ]
    return out


def interesting_ports(t: DirectionTable) -> list[int]:
    out = [0, 1, 65535]
    for cls in t.classes:
        if cls.ports is not ALL:
            for r in cls.ports:
                out += [max(0, r.lo - 1), r.lo, r.hi, min(65535, r.hi + 1)]
    return out


def test_lowered_agrees_with_semantic_on_random_packets() -> None:
    rng = random.Random(20240611)
    checked = allowed_count = 0
    for _ in range(150):
        t = random_table(rng)
        lowered = lower(t)
        ips = interesting_ips(t)
        ports = interesting_ports(t)
        for _ in range(150):
            if rng.random() < 0.7 and ips:
                ip = rng.choice(ips)
            else:
                ip = random_net(rng, rng.choice([4, 6])).network_address
            proto = rng.choice([TCP, TCP, UDP, SCTP, ICMP, ICMPV6, GRE])
            dport = rng.choice(ports) if rng.random() < 0.7 else rng.randint(0, 65535)
            fam = ip.version
            expected = evaluate(t, fam, ip, proto, dport)
            assert lookup(lowered, fam, ip, proto, dport) == expected, (t, ip, proto, dport)
            checked += 1
            allowed_count += expected
    # Make sure the generator exercises both verdicts substantially.
    assert checked == 150 * 150
    assert 0.1 * checked < allowed_count < 0.9 * checked


# --- scale -------------------------------------------------------------------------------


def big_table(rng: random.Random, n: int) -> DirectionTable:
    classes = []
    for c in range(4):
        blocks = set()
        for _ in range(n // 4):
            if rng.random() < 0.9:
                plen = rng.randint(8, 32)
                addr = rng.randrange(1 << 32) >> (32 - plen) << (32 - plen)
                cidr: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                    (addr, plen)
                )
            else:
                plen = rng.randint(16, 128)
                addr = rng.randrange(1 << 128) >> (128 - plen) << (128 - plen)
                cidr = ipaddress.IPv6Network((addr, plen))
            excepts = frozenset(
                {_random_subnet(rng, cidr, rng.randint(cidr.prefixlen + 1, cidr.max_prefixlen))}
                if cidr.prefixlen < cidr.max_prefixlen and rng.random() < 0.1
                else set()
            )
            blocks.add(Block(cidr, excepts))
        classes.append(TrafficClass(frozenset(blocks), tcp_ports(80 + c)))
    return DirectionTable(True, tuple(classes))


def host_table(rng: random.Random, n: int) -> DirectionTable:
    """``n`` distinct /32s over 4 classes: nothing can be compacted away."""
    hosts = rng.sample(range(1 << 24), n)
    classes = [
        TrafficClass(
            frozenset(Block(ipaddress.IPv4Network((V4_BASE + h, 32))) for h in hosts[c::4]),
            tcp_ports(80 + c),
        )
        for c in range(4)
    ]
    return DirectionTable(True, tuple(classes))


@pytest.mark.parametrize(
    ("shape", "n"), [("mixed", 10_000), ("hosts", 10_000), ("mixed", 20_000), ("hosts", 20_000)]
)
def test_lowering_10k_cidrs_is_fast(shape: str, n: int) -> None:
    rng = random.Random(n)
    t = big_table(rng, n) if shape == "mixed" else host_table(rng, n)
    start = time.perf_counter()
    lowered = lower(t)
    elapsed = time.perf_counter() - start
    print(
        f"\nlowered {n} {shape} CIDRs into {len(lowered.peers)} peer entries in {elapsed * 1000:.1f} ms"
    )
    if shape == "hosts":
        assert len(lowered.peers) == n
    ips = [b.cidr.network_address for cls in t.classes for b in cls.peers]
    for ip in rng.sample(ips, 40):
        for port in (80, 81, 82, 83, 84):
            assert lookup(lowered, ip.version, ip, TCP, port) == evaluate(
                t, ip.version, ip, TCP, port
            )
