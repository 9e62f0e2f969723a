"""Lowering from the previous lowering (pods entering or leaving classes)
gives exactly what lowering from scratch gives: entries, digest and all."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from nicwarden.agent.policy.lower import lower
from nicwarden.agent.policy.tables import ALL, Block, DirectionTable, PortRange, TrafficClass

PORT_SETS = [
    ALL,
    frozenset({PortRange(6, 80, 80)}),
    frozenset({PortRange(17, 53, 53), PortRange(6, 53, 53)}),
]
STATIC = [
    Block(ipaddress.ip_network("10.0.0.0/8")),
    Block(ipaddress.ip_network("10.1.0.0/16"), frozenset({ipaddress.ip_network("10.1.2.0/24")})),
    Block(ipaddress.ip_network("10.1.2.0/30")),
    Block(
        ipaddress.ip_network("10.1.2.4/30"),
        frozenset({ipaddress.ip_network("10.1.2.5/32")}),
    ),
    Block(ipaddress.ip_network("fd00::/64"), frozenset({ipaddress.ip_network("fd00::8/125")})),
]
HOSTS = [
    Block(ipaddress.ip_network(a))
    for a in (
        "10.1.2.1/32",
        "10.1.2.5/32",
        "10.1.2.9/32",
        "10.1.3.1/32",
        "10.9.9.9/32",
        "192.168.0.1/32",
        "fd00::9/128",
        "fd00::1:1/128",
    )
]

# A table: per class (port set index), its static and host blocks.
class_specs = st.lists(
    st.tuples(st.sets(st.sampled_from(STATIC)), st.sets(st.sampled_from(HOSTS))),
    min_size=1,
    max_size=3,
)


def table_of(spec: list[tuple[set[Block], set[Block]]], allow_icmp: bool) -> DirectionTable:
    classes = [
        TrafficClass(frozenset(static | hosts), PORT_SETS[i])
        for i, (static, hosts) in enumerate(spec)
    ]
    return DirectionTable(True, tuple(classes), allow_icmp)


steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # class
        st.sampled_from(HOSTS),  # toggled host
        st.booleans(),  # also toggle a static block (forces a full lowering)
        st.sampled_from(STATIC),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300)
@given(class_specs, steps, st.booleans())
def test_relowering_equals_lowering_from_scratch(
    spec: list[tuple[set[Block], set[Block]]],
    changes: list[tuple[int, Block, bool, Block]],
    allow_icmp: bool,
) -> None:
    spec = [(set(s), set(h)) for s, h in spec]
    previous = lower(table_of(spec, allow_icmp))
    for i, host, static_too, block in changes:
        static, hosts = spec[i % len(spec)]
        hosts ^= {host}
        if static_too:
            static ^= {block}
        table = table_of(spec, allow_icmp)
        again = lower(table, previous)
        fresh = lower(table)
        assert again == fresh
        assert dict(again.peers) == dict(fresh.peers)
        assert again.peer_sum == fresh.peer_sum and again.digest() == fresh.digest()
        previous = again


def test_a_pod_change_reuses_the_previous_lowering() -> None:
    big = frozenset(
        Block(ipaddress.ip_network(f"11.{i // 256}.{i % 256}.0/24")) for i in range(2000)
    )
    host = Block(ipaddress.ip_network("11.0.0.7/32"))
    before = lower(DirectionTable(True, (TrafficClass(big, ALL),)))
    after = lower(DirectionTable(True, (TrafficClass(big | {host}, ALL),)), before)
    # Inside an allowed /24 of the same class: no entry of its own.
    assert after.peers == before.peers and after.basis is not None
    assert after.basis.static is before.basis.static  # type: ignore[union-attr]
    outside = Block(ipaddress.ip_network("12.0.0.1/32"))
    third = lower(DirectionTable(True, (TrafficClass(big | {outside}, ALL),)), after)
    assert third.peers[(4, bytes([12, 0, 0, 1]), 32)] == 1
    assert len(third.peers) == len(before.peers) + 1
    assert third.basis.static is before.basis.static  # type: ignore[union-attr]
