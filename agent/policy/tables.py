"""The compiler's output in semantic form, and a reference evaluator for it.

A direction of an interface is either not isolated (everything passes) or
isolated with a list of *traffic classes*. A class is a set of peer address
blocks and a set of ports; a packet is allowed iff some class contains both its
peer address and its (protocol, port). Classes are the OR of every rule of
every selecting policy, merged so that no two classes share a port set (the
lowering gives each class one bit, and there are at most 64).

Peers are kept as ``Block(cidr, excepts)`` rather than pre-subtracted disjoint
networks: ``except`` narrows only its own ipBlock, and the lowering turns each
except into one LPM entry instead of up to 128 leftover prefixes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from .objects import IPAddress, IPNetwork

ICMP = 1
ICMPV6 = 58
ICMP_PROTOCOLS = frozenset({ICMP, ICMPV6})
# Protocols whose header carries a destination port the datapath reads.
PORTED_PROTOCOLS = frozenset({6, 17, 132})
# Always passed by the datapath on isolated directions, whatever the policy:
# without ARP and IPv6 neighbour discovery (ICMPv6 133-136) nothing works, and
# the API cannot express them (see docs/contracts.md#multinetworkpolicy).
ALWAYS_PASS: tuple[str, ...] = ("arp", "icmpv6-nd")


class AllPorts(Enum):
    """Every protocol and port, ICMP and protocols without ports included."""

    ALL = "all"


ALL = AllPorts.ALL


@dataclass(frozen=True, order=True)
class PortRange:
    """Inclusive ``[lo, hi]`` of one protocol; ``(p, 0, 65535)`` = the whole protocol."""

    proto: int
    lo: int
    hi: int


PortSet = frozenset[PortRange] | Literal[AllPorts.ALL]


def port_set_key(ports: PortSet) -> tuple[tuple[int, int, int], ...]:
    """A total order on port sets (ALL first) so class bits are stable."""
    if ports is ALL:
        return ()
    return tuple((r.proto, r.lo, r.hi) for r in sorted(ports)) or ((-1, 0, 0),)


@dataclass(frozen=True)
class Block:
    """``cidr`` minus ``excepts``: each except strictly inside ``cidr``, of its
    family, none inside another (``outermost`` makes them so)."""

    cidr: IPNetwork
    excepts: frozenset[IPNetwork] = frozenset()

    def __post_init__(self) -> None:
        # Tables hold up to a cluster's worth of blocks in sets that are
        # compared on every change; ipaddress objects hash slowly, so once.
        object.__setattr__(self, "_hash", hash((self.cidr, self.excepts)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    @property
    def is_host(self) -> bool:
        """One address, nothing excepted: a /32 or /128 entry of its own."""
        return not self.excepts and self.cidr.prefixlen == self.cidr.max_prefixlen

    def contains(self, ip: IPAddress) -> bool:
        return (
            ip.version == self.cidr.version
            and ip in self.cidr
            and not any(ip in e for e in self.excepts)
        )


def outermost(excepts: Iterable[IPNetwork]) -> frozenset[IPNetwork]:
    """Drop excepts nested in another: each address is excluded once per block."""
    kept: list[IPNetwork] = []
    for net in sorted(set(excepts), key=lambda n: (n.version, n.prefixlen)):
        if not any(k.version == net.version and net.network_address in k for k in kept):
            kept.append(net)
    return frozenset(kept)


@dataclass(frozen=True)
class TrafficClass:
    peers: frozenset[Block]
    ports: PortSet


@dataclass(frozen=True)
class DirectionTable:
    isolated: bool = False
    classes: tuple[TrafficClass, ...] = ()
    # With it, ICMP/ICMPv6 pass from/to every peer of any class; without it
    # only classes with ALL ports admit them (the API has no ICMP ports).
    allow_icmp: bool = False
    # Why the direction is deny-all despite the rules (invalid policy, unknown
    # pod); empty when the classes are authoritative.
    fail_closed: tuple[str, ...] = ()
    always_pass: tuple[str, ...] = ALWAYS_PASS


@dataclass(frozen=True)
class PolicedInterface:
    """One secondary interface of a pod on this node that policies may police."""

    namespace: str  # the pod's
    pod: str
    ifname: str  # inside the pod, e.g. "net1"
    network: str  # NAD key "ns/nad"
    ips: tuple[IPAddress, ...] = ()  # the interface's own addresses
    pod_uid: str = ""

    @property
    def key(self) -> InterfaceKey:
        return InterfaceKey(self.pod_uid or f"{self.namespace}/{self.pod}", self.ifname)


@dataclass(frozen=True, order=True)
class InterfaceKey:
    pod: str  # the pod UID, or "ns/name" when the UID is not known
    ifname: str

    def __str__(self) -> str:
        return f"{self.pod}:{self.ifname}"


@dataclass(frozen=True)
class InterfaceTables:
    ingress: DirectionTable
    egress: DirectionTable
    policies: tuple[str, ...] = ()  # "ns/name" of every policy selecting the interface
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompileOptions:
    allow_icmp: bool = False
    # Admit the interface's own addresses as peers on every port. Off by
    # default: the kernel delivers a pod's traffic to itself over lo, so a
    # packet on the policed interface carrying its own address is spoofed.
    allow_self: bool = False


def evaluate(
    table: DirectionTable, family: int, ip: IPAddress | str, proto: int, dport: int
) -> bool:
    """Does ``table`` allow a packet? ``ip`` is the peer (source on ingress,
    destination on egress); ``dport`` is ignored for protocols without ports."""
    if not table.isolated:
        return True
    addr = ipaddress.ip_address(ip)
    if addr.version != family:
        raise ValueError(f"{addr} is not an IPv{family} address")
    for cls in table.classes:
        if any(b.contains(addr) for b in cls.peers) and _port_allowed(table, cls, proto, dport):
            return True
    return False


def _port_allowed(table: DirectionTable, cls: TrafficClass, proto: int, dport: int) -> bool:
    if cls.ports is ALL:
        return True
    if proto in ICMP_PROTOCOLS:
        return table.allow_icmp
    if proto not in PORTED_PROTOCOLS:
        return False
    return any(r.proto == proto and r.lo <= dport <= r.hi for r in cls.ports)
