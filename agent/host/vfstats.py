"""Per-VF traffic counters, read at scrape time.

Two readers behind one protocol:

* :class:`NetlinkVfStatsReader` (a real node): the PF's own view of each
  VF, ``IFLA_VF_STATS`` inside ``IFLA_VFINFO_LIST`` of an ``RTM_GETLINK``
  that asks for the VF list (``IFLA_EXT_MASK`` = ``RTEXT_FILTER_VF``). It
  works whatever the VF is bound to (a vfio VF has no netdev to ask). The
  kernel attribute has no transmit-error count; drivers with the SR-IOV
  sysfs stats directory (i40e, ice) report one there, and it is read from
  there when present.
* :class:`NetdevVfStatsReader`: the VF netdev's own counters
  (``IFLA_STATS64``), found by its identity (its ``ifalias``) in the host
  netns or, when it is away, in the netns the caller says it is in. This is
  what a node without PF-side statistics (the simulator) can offer.

The message framing is :mod:`vfnetlink`'s; only the parsers are here.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

from nicwarden.agent.errors import HostError, NotFound, Unsupported
from nicwarden.agent.host import netns, rtnl
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.vfnetlink import (
    IFLA_VF_INFO,
    IFLA_VF_MAC,
    IFLA_VFINFO_LIST,
    getlink_vfs,
    translate,
)

# -- uapi constants (include/uapi/linux/if_link.h) ------------------------------

IFLA_STATS64 = 23
IFLA_VF_STATS = 8
# IFLA_VF_STATS_* (nested u64 counters); 6 is padding.
VF_STATS_FIELDS = {
    0: "rx_packets",
    1: "tx_packets",
    2: "rx_bytes",
    3: "tx_bytes",
    4: "rx_broadcast",
    5: "rx_multicast",
    7: "rx_dropped",
    8: "tx_dropped",
}
# struct rtnl_link_stats64: the leading u64 fields, in order.
_STATS64_FIELDS = (
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "rx_multicast",
)
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


@dataclass(frozen=True)
class VfCounters:
    """Counters of one VF as the VF sees them (rx: received by the VF).
    ``None``: this source does not report that counter."""

    rx_packets: int | None = None
    tx_packets: int | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    rx_dropped: int | None = None
    tx_dropped: int | None = None
    tx_errors: int | None = None
    rx_broadcast: int | None = None
    rx_multicast: int | None = None

    def items(self) -> Iterator[tuple[str, int]]:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, int(value)


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(VfCounters))


@dataclass(frozen=True)
class VfRef:
    index: int  # virtfnN
    address: str  # the VF's PCI address


class VfStatsReader(Protocol):
    def read(self, pf_ifname: str, pf_address: str, vfs: Sequence[VfRef]) -> dict[str, VfCounters]:
        """Counters by VF PCI address; a VF the source cannot see is absent."""
        ...


# -- parsers (pure) ------------------------------------------------------------


def parse_vf_stats(nest: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for attr_type, payload in rtnl.attrs(nest):
        name = VF_STATS_FIELDS.get(attr_type)
        if name is not None and len(payload) >= _U64.size:
            out[name] = _U64.unpack_from(payload)[0]
    return out


def parse_link_vf_stats(payload: bytes) -> dict[int, dict[str, int]] | None:
    """An RTM_NEWLINK payload → counters per VF index; None when the link
    reports no VF list (not a PF, or a driver without VF configuration)."""
    if len(payload) < rtnl.IFINFOMSG.size:
        raise HostError("short RTM_NEWLINK reply")
    found: dict[int, dict[str, int]] | None = None
    for attr_type, data in rtnl.attrs(payload[rtnl.IFINFOMSG.size :]):
        if attr_type != IFLA_VFINFO_LIST:
            continue
        found = {}
        for info_type, info in rtnl.attrs(data):
            if info_type != IFLA_VF_INFO:
                continue
            vf, stats = -1, None
            for t, p in rtnl.attrs(info):
                if t == IFLA_VF_MAC and len(p) >= 4:
                    vf = _U32.unpack_from(p)[0]
                elif t == IFLA_VF_STATS:
                    stats = parse_vf_stats(p)
            if vf >= 0 and stats is not None:
                found[vf] = stats
    return found


def parse_link_stats(payload: bytes) -> tuple[str, dict[str, int]] | None:
    """An RTM_NEWLINK payload → (ifalias, its IFLA_STATS64 counters); None
    when the link reports no 64-bit stats."""
    if len(payload) < rtnl.IFINFOMSG.size:
        return None
    alias, stats = "", None
    for attr_type, data in rtnl.attrs(payload[rtnl.IFINFOMSG.size :]):
        if attr_type == rtnl.IFLA_IFALIAS:
            alias = rtnl.cstr(data)
        elif attr_type == IFLA_STATS64 and len(data) >= _U64.size * len(_STATS64_FIELDS):
            values = struct.unpack_from(f"={len(_STATS64_FIELDS)}Q", data)
            stats = dict(zip(_STATS64_FIELDS, values, strict=True))
    return None if stats is None else (alias, stats)


def dump_links(seq: int) -> bytes:
    """RTM_GETLINK dump of every link in the socket's netns."""
    return rtnl.nlmsg(rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq, rtnl.ifinfomsg())


# -- readers -------------------------------------------------------------------


class NetlinkVfStatsReader:
    """The PF's per-VF statistics (a real node)."""

    def __init__(
        self,
        paths: HostPaths,
        transport: rtnl.Transport = rtnl.netlink_request,
        index_of: Callable[[str], int] = socket.if_nametoindex,
    ) -> None:
        self.paths = paths
        self._transport = transport
        self._index_of = index_of
        self._seq = 0

    def read(self, pf_ifname: str, pf_address: str, vfs: Sequence[VfRef]) -> dict[str, VfCounters]:
        what = f"read VF statistics of {pf_ifname}"
        try:
            index = self._index_of(pf_ifname)
        except OSError as e:
            raise NotFound(f"PF netdev {pf_ifname} not found in the host netns") from e
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            replies = self._transport(getlink_vfs(index, self._seq))
        except rtnl.NetlinkFailure as e:
            raise translate(e, what) from e
        per_index: dict[int, dict[str, int]] | None = None
        for msg in replies:
            if msg.type == rtnl.RTM_NEWLINK:
                per_index = parse_link_vf_stats(msg.payload)
                break
        if per_index is None:
            raise Unsupported(
                f"{what}: the device reports no VF statistics (not an SR-IOV PF,"
                " or its driver does not expose them)"
            )
        out: dict[str, VfCounters] = {}
        for vf in vfs:
            stats = per_index.get(vf.index)
            if stats is None:
                continue
            tx_errors = self._sysfs_counter(pf_address, vf.index, "tx_errors")
            out[vf.address] = VfCounters(**stats, tx_errors=tx_errors)
        return out

    def _sysfs_counter(self, pf_address: str, vf: int, name: str) -> int | None:
        # <pf>/sriov/<vf>/stats/<name>: i40e and ice only; absent elsewhere.
        path = self.paths.pci_devices / pf_address / "sriov" / str(vf) / "stats" / name
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


def _link_stats(replies: Sequence[rtnl.NetlinkMessage]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for msg in replies:
        if msg.type != rtnl.RTM_NEWLINK:
            continue
        parsed = parse_link_stats(msg.payload)
        if parsed is not None and parsed[0]:
            out[parsed[0]] = parsed[1]
    return out


class NetdevVfStatsReader:
    """Each VF netdev's own counters, found by its ``ifalias`` identity.

    ``alias_of(address)`` gives a VF's identity; ``netns_of(address)`` the
    netns a VF away from the host netns was moved to (None: not known, and
    the VF is left out rather than guessed)."""

    def __init__(
        self,
        alias_of: Callable[[str], str],
        netns_of: Callable[[str], str | None],
        transport: rtnl.Transport = rtnl.netlink_request,
        netns_dir: Path = netns.NETNS_DIR,
    ) -> None:
        self._alias_of = alias_of
        self._netns_of = netns_of
        self._transport = transport
        self._netns_dir = netns_dir
        self._seq = 0

    def _dump(self, target: str | None) -> dict[str, dict[str, int]]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        message = dump_links(self._seq)
        if target is None:
            return _link_stats(self._transport(message))
        # The request runs inside the netns: the socket is made there.
        return _link_stats(netns.run_in(target, lambda: self._transport(message), self._netns_dir))

    def read(self, pf_ifname: str, pf_address: str, vfs: Sequence[VfRef]) -> dict[str, VfCounters]:
        try:
            found = self._dump(None)
        except rtnl.NetlinkFailure as e:
            raise translate(e, "list host links") from e
        out: dict[str, VfCounters] = {}
        away: dict[str, list[VfRef]] = {}
        for vf in vfs:
            stats = found.get(self._alias_of(vf.address))
            if stats is not None:
                out[vf.address] = _netdev_counters(stats)
                continue
            where = self._netns_of(vf.address)
            if where:
                away.setdefault(where, []).append(vf)
        for where, refs in away.items():
            try:
                there = self._dump(where)
            except (NotFound, rtnl.NetlinkFailure):
                continue  # the netns went between the lookup and now
            for vf in refs:
                stats = there.get(self._alias_of(vf.address))
                if stats is not None:
                    out[vf.address] = _netdev_counters(stats)
        return out


def _netdev_counters(stats: Mapping[str, int]) -> VfCounters:
    names = set(COUNTER_NAMES)
    return VfCounters(**{k: v for k, v in stats.items() if k in names})
