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
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from nicwarden.agent.errors import InvalidArgument

from . import netns
from .netlink import open_iproute
from .netns import NETNS_DIR, Target

STRICT_ARP = {"arp_ignore": "1", "arp_announce": "2"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOCAL_TABLE = 255
LOCAL_PREF = 100  # where the local table's rule moves to
ALLOW_PREF = 9  # "to <addr> iif <its interface>|lo lookup local"
DROP_PREF = 10  # "to <addr> blackhole"
_BLACKHOLE = "FR_ACT_BLACKHOLE"


def _conf_dir(ifname: str) -> Path:
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise InvalidArgument(f"interface name {ifname!r} cannot name a sysctl directory")
    return Path("/proc/sys/net/ipv4/conf") / ifname


def set_strict_arp(target: Target, ifname: str, netns_dir: Path = NETNS_DIR) -> None:
    """Set ``STRICT_ARP`` on ``ifname`` in ``target``'s netns.

    /proc/sys/net shows the netns of the thread that opens it, so the files
    are opened inside ``run_in``."""
    conf = _conf_dir(ifname)

    def write() -> None:
        for name, value in STRICT_ARP.items():
            (conf / name).write_text(value)

    netns.run_in(target, write, netns_dir)


def arp_settings(target: Target, ifname: str, netns_dir: Path = NETNS_DIR) -> dict[str, str]:
    """The current values of ``STRICT_ARP``'s keys on ``ifname``."""
    conf = _conf_dir(ifname)
    return netns.run_in(
        target, lambda: {n: (conf / n).read_text().strip() for n in STRICT_ARP}, netns_dir
    )


def apply(target: Target, ifname: str, addresses: Iterable[IPAddress]) -> None:
    """The whole strict host model for one pod interface and its addresses."""
    set_strict_arp(target, ifname)
    deliver_only_via(target, ifname, addresses)


def deliver_only_via(target: Target, ifname: str, addresses: Iterable[IPAddress]) -> None:
    """Rules so that ``addresses`` are delivered only to packets arriving on
    ``ifname`` (or sent by the pod itself). Replaces any earlier rules for
    these addresses (an address moved to another interface)."""
    _conf_dir(ifname)  # the same name check
    wanted = sorted(set(addresses), key=lambda a: (a.version, int(a)))
    if not wanted:
        return
    with closing(open_iproute(str(target))) as ipr:
        for family in sorted({_family(a) for a in wanted}):
            _move_local_rule(ipr, family)
        for addr in wanted:
            family, bits = _family(addr), addr.max_prefixlen
            have = {_rule_key(r): r for r in _rules_for(ipr, family, addr)}
            want = [(ALLOW_PREF, ifname), (ALLOW_PREF, "lo"), (DROP_PREF, "")]
            # Allow first, then drop, then remove the old: never a moment in
            # which the address is unreachable through its own interface.
            for prio, via in want:
                if (prio, via) in have:
                    continue
                extra: dict[str, Any] = (
                    {"iifname": via, "table": LOCAL_TABLE} if via else {"action": _BLACKHOLE}
                )
                ipr.rule("add", family=family, priority=prio, dst=str(addr), dst_len=bits, **extra)
            for key, rule in have.items():
                if key not in want:
                    _delete(ipr, rule)


def delivery_rules(target: Target) -> list[tuple[int, str, str]]:
    """(priority, iif or "", destination) of the rules ``deliver_only_via``
    manages, for tests and diagnostics."""
    out = []
    with closing(open_iproute(str(target))) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for rule in ipr.get_rules(family=family):
                prio = int(rule.get_attr("FRA_PRIORITY") or 0)
                if prio in (ALLOW_PREF, DROP_PREF):
                    iif = str(rule.get_attr("FRA_IIFNAME") or "")
                    out.append((prio, iif, str(rule.get_attr("FRA_DST"))))
    return sorted(out)


def _family(addr: IPAddress) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _rules_for(ipr: Any, family: int, addr: IPAddress) -> list[Any]:
    return [
        r
        for r in ipr.get_rules(family=family)
        if int(r.get_attr("FRA_PRIORITY") or 0) in (ALLOW_PREF, DROP_PREF)
        and r.get_attr("FRA_DST") is not None
        and ipaddress.ip_address(r.get_attr("FRA_DST")) == addr
    ]


def _rule_key(rule: Any) -> tuple[int, str]:
    return int(rule.get_attr("FRA_PRIORITY") or 0), str(rule.get_attr("FRA_IIFNAME") or "")


def _delete(ipr: Any, rule: Any) -> None:
    iif = rule.get_attr("FRA_IIFNAME")
    kwargs: dict[str, Any] = {
        "family": rule["family"],
        "priority": int(rule.get_attr("FRA_PRIORITY") or 0),
        "dst": rule.get_attr("FRA_DST"),
        "dst_len": rule["dst_len"],
    }
    if iif:
        kwargs["iifname"] = iif
    if rule["action"] == 1:
        kwargs["table"] = LOCAL_TABLE
    else:
        kwargs["action"] = _BLACKHOLE
    ipr.rule("del", **kwargs)


def _move_local_rule(ipr: Any, family: int) -> None:
    prios = {
        int(r.get_attr("FRA_PRIORITY") or 0)
        for r in ipr.get_rules(family=family)
        if r["action"] == 1
        and int(r.get_attr("FRA_TABLE") or r["table"]) == LOCAL_TABLE
        and r.get_attr("FRA_DST") is None
        and not r.get_attr("FRA_IIFNAME")
    }
    if LOCAL_PREF not in prios:
        ipr.rule("add", family=family, priority=LOCAL_PREF, table=LOCAL_TABLE)
    if 0 in prios:
        ipr.rule("del", family=family, priority=0, table=LOCAL_TABLE)
