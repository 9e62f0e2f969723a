"""The strict host model on a pod interface, inside the pod's netns.

Linux answers ARP for any of the host's addresses on any interface and
accepts a packet for any of them on any interface (the weak host model). A
pod with two VFs on different networks would then answer, on net2, ARP
requests for its net1 address, and traffic to the policed net1 address could
arrive through net2, past net1's policy. Two measures, both per interface:

* ``arp_ignore=1`` answers only for addresses configured on the receiving
  interface; ``arp_announce=2`` picks the outgoing interface's own address
  as the ARP source. (IPv6 neighbour discovery already answers per
  interface.)
* Policy-routing rules deliver the interface's addresses only to packets that
  came in on that interface (or are the pod's own, ``iif lo``); any other
  packet for them hits a blackhole rule. This also stops a peer that forges
  its neighbour entry. The rules must come before the ``local`` table's
  lookup, which the kernel installs at priority 0, where nothing can precede
  it, so that rule is moved to ``LOCAL_PREF`` (added there first, then
  removed from 0: the local table is never out of reach).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nicwarden.agent.errors import InvalidArgument

from . import netns, rtnl
from .netns import NETNS_DIR, Target
from .rtnl import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NetlinkFailure, RtnlSocket

STRICT_ARP = {"arp_ignore": "1", "arp_announce": "2"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCAL_TABLE = 255
LOCAL_PREF = 100  # where the local table's rule moves to
ALLOW_PREF = 9  # "to <addr> iif <its interface>|lo lookup local"
DROP_PREF = 10  # "to <addr> blackhole"


def _conf_dir(ifname: str) -> Path:
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise InvalidArgument(f"interface name {ifname!r} cannot name a sysctl directory")
    return Path("/proc/sys/net/ipv4/conf") / ifname


def arp_settings(target: Target, ifname: str, netns_dir: Path = NETNS_DIR) -> dict[str, str]:
    """The current values of ``STRICT_ARP``'s keys on ``ifname``."""
    conf = _conf_dir(ifname)
    return netns.run_in(
        target, lambda: {n: (conf / n).read_text().strip() for n in STRICT_ARP}, netns_dir
    )


def apply(target: Target, ifname: str, addresses: Iterable[IPAddress]) -> None:
    """The whole strict host model for one pod interface and its addresses,
    over one netlink socket in the pod's netns."""
    _conf_dir(ifname)  # the same name check
    with RtnlSocket(target) as nl:
        _set_strict_arp(nl, ifname)
        _deliver_only_via(nl, ifname, addresses)


def deliver_only_via(target: Target, ifname: str, addresses: Iterable[IPAddress]) -> None:
    """Rules so that ``addresses`` are delivered only to packets arriving on
    ``ifname`` (or sent by the pod itself). Replaces any earlier rules for
    these addresses (an address moved to another interface)."""
    _conf_dir(ifname)  # the same name check
    with RtnlSocket(target) as nl:
        _deliver_only_via(nl, ifname, addresses)


# -- devconf over rtnetlink --------------------------------------------------------
# RTM_SETLINK with IFLA_AF_SPEC / AF_INET / IFLA_INET_CONF sets IPv4 devconf
# entries by their IPV4_DEVCONF_* number (include/uapi/linux/ip.h), as a
# sysctl write does. Measured in a pod's netns: opening the two sysctl files
# there cost more than the rest of the host model together.
_IFLA_AF_SPEC, _IFLA_INET_CONF = 26, 1
_DEVCONF = {"arp_announce": 18, "arp_ignore": 19}


def _set_strict_arp(nl: RtnlSocket, ifname: str) -> None:
    conf = b"".join(rtnl.nla_u32(_DEVCONF[k], int(v)) for k, v in STRICT_ARP.items())
    inet = rtnl.nla(socket.AF_INET, rtnl.nla(_IFLA_INET_CONF, conf))
    body = rtnl.ifinfomsg() + rtnl.nla_str(rtnl.IFLA_IFNAME, ifname)
    settings = ", ".join(f"{k}={v}" for k, v in STRICT_ARP.items())
    _request(
        nl, rtnl.RTM_SETLINK, body + rtnl.nla(_IFLA_AF_SPEC, inet), f"set {settings} on {ifname}"
    )


def _deliver_only_via(nl: RtnlSocket, ifname: str, addresses: Iterable[IPAddress]) -> None:
    wanted = sorted(set(addresses), key=lambda a: (a.version, int(a)))
    if not wanted:
        return
    for family in sorted({_family(a) for a in wanted}):
        rules = _rules(nl, family)
        _move_local_rule(nl, family, rules)
        for addr in (a for a in wanted if _family(a) == family):
            have = {
                (r.prio, r.iif): r
                for r in rules
                if r.prio in (ALLOW_PREF, DROP_PREF) and r.dst == addr
            }
            want = [(ALLOW_PREF, ifname), (ALLOW_PREF, "lo"), (DROP_PREF, "")]
            # Allow first, then drop, then remove the old: never a moment
            # in which the address is unreachable through its own interface.
            for prio, via in want:
                if (prio, via) not in have:
                    _add(nl, family, prio, addr, via)
            for key, rule in have.items():
                if key not in want:
                    what = f"delete rule pref {rule.prio} to {addr} iif {rule.iif or 'any'}"
                    _request(nl, _RTM_DELRULE, rule.payload, what)


def delivery_rules(target: Target) -> list[tuple[int, str, str]]:
    """(priority, iif or "", destination) of the rules ``deliver_only_via``
    manages, for tests and diagnostics."""
    with RtnlSocket(target) as nl:
        return sorted(
            (r.prio, r.iif, str(r.dst))
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in _rules(nl, family)
            if r.prio in (ALLOW_PREF, DROP_PREF) and r.dst is not None
        )


# -- FIB rules over rtnetlink (include/uapi/linux/fib_rules.h) -----------------

_RTM_NEWRULE, _RTM_DELRULE, _RTM_GETRULE = 32, 33, 34
_FRA_DST, _FRA_IIFNAME, _FRA_PRIORITY, _FRA_TABLE = 1, 3, 6, 15
_FR_ACT_TO_TBL, _FR_ACT_BLACKHOLE = 1, 6
# family, dst_len, src_len, tos, table, res1, res2, action; flags
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")


@dataclass(frozen=True)
class _Rule:
    family: int
    prio: int
    action: int
    table: int
    dst: IPAddress | None  # the destination prefix's address (None: any)
    iif: str
    # As dumped: sent back as RTM_DELRULE, it deletes exactly this rule.
    payload: bytes = field(repr=False)


def _rules(nl: RtnlSocket, family: int) -> list[_Rule]:
    try:
        msgs = nl.request(_RTM_GETRULE, NLM_F_DUMP, _FIB_RULE_HDR.pack(family, *[0] * 8))
    except NetlinkFailure as e:
        raise e.named("list policy-routing rules") from e
    out = []
    for m in msgs:
        fam, _, _, _, table, _, _, action, _ = _FIB_RULE_HDR.unpack_from(m.payload)
        a = dict(rtnl.attrs(m.payload[_FIB_RULE_HDR.size :]))
        out.append(
            _Rule(
                family=fam,
                prio=_u32(a.get(_FRA_PRIORITY)),
                action=action,
                table=_u32(a.get(_FRA_TABLE)) or table,
                dst=ipaddress.ip_address(a[_FRA_DST]) if _FRA_DST in a else None,
                iif=rtnl.cstr(a.get(_FRA_IIFNAME, b"")),
                payload=m.payload,
            )
        )
    return out


def _add(
    nl: RtnlSocket, family: int, prio: int, addr: IPAddress | None = None, via: str = ""
) -> None:
    """``to addr iif via lookup local`` (``via`` given), ``to addr
    blackhole`` (no ``via``), or with no address ``lookup local``."""
    blackhole = addr is not None and not via
    table = 0 if blackhole else LOCAL_TABLE
    action = _FR_ACT_BLACKHOLE if blackhole else _FR_ACT_TO_TBL
    bits = addr.max_prefixlen if addr is not None else 0
    body = _FIB_RULE_HDR.pack(family, bits, 0, 0, table, 0, 0, action, 0)
    body += rtnl.nla_u32(_FRA_PRIORITY, prio)
    if addr is not None:
        body += rtnl.nla(_FRA_DST, addr.packed)
    if via:
        body += rtnl.nla_str(_FRA_IIFNAME, via)
    if table:
        body += rtnl.nla_u32(_FRA_TABLE, table)
    what = f"add rule pref {prio} to {addr or 'all'} iif {via or 'any'}"
    _request(nl, _RTM_NEWRULE, body, what, NLM_F_CREATE | NLM_F_EXCL)


def _request(nl: RtnlSocket, msg_type: int, body: bytes, what: str, flags: int = 0) -> None:
    try:
        nl.request(msg_type, NLM_F_ACK | flags, body)
    except NetlinkFailure as e:
        raise e.named(what) from e


def _u32(raw: bytes | None) -> int:
    return int(struct.unpack("=I", raw)[0]) if raw is not None and len(raw) == 4 else 0


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _move_local_rule(nl: RtnlSocket, family: int, rules: list[_Rule]) -> None:
    local = [
        r
        for r in rules
        if r.action == _FR_ACT_TO_TBL and r.table == LOCAL_TABLE and r.dst is None and not r.iif
    ]
    if all(r.prio != LOCAL_PREF for r in local):
        _add(nl, family, LOCAL_PREF)
    for r in local:
        if r.prio == 0:
            _request(nl, _RTM_DELRULE, r.payload, "move the local table's rule from pref 0")
