"""tc over netlink: clsact qdiscs and direct-action bpf filters, in any netns.

Requests go over ``rtnl.RtnlSocket`` opened in the target netns, built by
hand: a policy's isolation flip is four tc requests and a link lookup, and
through pyroute2 they cost ~3 ms per interface. Errnos are named through
``errnos``. Nothing here knows about the policy datapath.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nicwarden.agent.errors import AlreadyExists
from nicwarden.agent.host import errnos, rtnl
from nicwarden.agent.host.rtnl import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NetlinkFailure,
    nla,
    nla_str,
    nla_u32,
)

# clsact's two hooks, as tc parents (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS/EGRESS)).
TC_H_INGRESS = 0xFFFFFFF2
TC_H_EGRESS = 0xFFFFFFF3
TC_H_CLSACT = 0xFFFFFFF1
_CLSACT_HANDLE = 0xFFFF0000  # TC_H_MAKE(TC_H_CLSACT, 0)

_RTM_NEWQDISC, _RTM_DELQDISC = 36, 37
_RTM_NEWTFILTER, _RTM_DELTFILTER, _RTM_GETTFILTER = 44, 45, 46
_TCA_KIND, _TCA_OPTIONS = 1, 2
_TCA_BPF_CLASSID, _TCA_BPF_FD, _TCA_BPF_NAME, _TCA_BPF_FLAGS = 3, 6, 7, 8
_TCA_BPF_FLAG_ACT_DIRECT = 1
_ETH_P_ALL_BE = 0x0300  # htons(ETH_P_ALL): the filter sees every protocol

_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info


@dataclass(frozen=True)
class Filter:
    """One filter on a clsact hook (not the chain head the kernel also lists)."""

    kind: str  # "bpf", "u32", ...
    prio: int
    handle: int
    name: str  # a bpf filter's program name as given at attach ("" otherwise)


def _tcmsg(ifindex: int, handle: int, parent: int, info: int = 0) -> bytes:
    return _TCMSG.pack(0, ifindex, handle, parent, info)


def _clsact(ifindex: int) -> bytes:
    """The clsact qdisc of a link, as adding and deleting both name it."""
    return _tcmsg(ifindex, _CLSACT_HANDLE, TC_H_CLSACT) + nla_str(_TCA_KIND, "clsact")


def _bpf_filter(ifindex: int, parent: int, prio: int, handle: int) -> bytes:
    """A bpf filter of every protocol, as adding and deleting both name it."""
    return _tcmsg(ifindex, handle, parent, prio << 16 | _ETH_P_ALL_BE) + nla_str(_TCA_KIND, "bpf")


class Tc:
    """tc operations in one netns over one netlink socket."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._nl = rtnl.RtnlSocket(netns)

    def __enter__(self) -> Tc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._nl.close()

    def _where(self) -> str:
        return "the host netns" if self.netns is None else f"netns {self.netns}"

    def ifindex(self, ifname: str) -> int | None:
        """The link's index in this netns, or None when there is no such link."""
        try:
            msgs = self._nl.request(
                rtnl.RTM_GETLINK, NLM_F_ACK, rtnl.ifinfomsg() + nla_str(rtnl.IFLA_IFNAME, ifname)
            )
        except NetlinkFailure as e:
            if errnos.is_gone(e.code):
                return None
            raise e.named(f"get link {ifname} in {self._where()}") from e
        return rtnl.IFINFOMSG.unpack_from(msgs[0].payload)[2] if msgs else None

    def add_clsact(self, ifindex: int) -> bool:
        """Add the clsact qdisc; False when one was already there (not ours)."""
        try:
            self._nl.request(_RTM_NEWQDISC, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, _clsact(ifindex))
        except NetlinkFailure as e:
            if errnos.error_type(e.code) is AlreadyExists:
                return False
            raise e.named(f"add clsact to ifindex {ifindex}") from e
        return True

    def del_clsact(self, ifindex: int) -> bool:
        """Remove the clsact qdisc (and every filter on it); False if absent."""
        try:
            self._nl.request(_RTM_DELQDISC, NLM_F_ACK, _clsact(ifindex))
        except NetlinkFailure as e:
            if errnos.is_gone(e.code, errnos.TC_DELETE):
                return False
            raise e.named(f"delete clsact of ifindex {ifindex}") from e
        return True

    def filters(self, ifindex: int, parent: int) -> list[Filter]:
        """Filters on one clsact hook; none when the device has no clsact."""
        try:
            msgs = self._nl.request(_RTM_GETTFILTER, NLM_F_DUMP, _tcmsg(ifindex, 0, parent))
        except NetlinkFailure as e:
            if errnos.is_gone(e.code, errnos.TC_LIST):
                return []
            raise e.named(f"list tc filters of ifindex {ifindex}") from e
        out: list[Filter] = []
        for msg in msgs:
            attrs = dict(rtnl.attrs(msg.payload[_TCMSG.size :]))
            options = attrs.get(_TCA_OPTIONS)
            if options is None:  # the chain head: prio and kind, no filter
                continue
            _, _, handle, _, info = _TCMSG.unpack_from(msg.payload)
            name = dict(rtnl.attrs(options)).get(_TCA_BPF_NAME, b"")
            out.append(
                Filter(
                    kind=rtnl.cstr(attrs.get(_TCA_KIND, b"")),
                    prio=info >> 16,  # tcm_info = prio << 16 | protocol
                    handle=handle,
                    name=rtnl.cstr(name),
                )
            )
        return out

    def add_bpf_filter(
        self,
        ifindex: int,
        parent: int,
        *,
        prio: int,
        handle: int,
        prog_fd: int,
        name: str,
        classid: int | None = None,
    ) -> None:
        """A direct-action bpf filter running ``prog_fd`` (the filter keeps
        its own reference: the caller may close the fd). ``classid``: what
        the program reads as ``skb->tc_classid`` (its low 16 bits)."""
        options = (
            (nla_u32(_TCA_BPF_CLASSID, classid) if classid is not None else b"")
            + nla_u32(_TCA_BPF_FD, prog_fd)
            + nla_str(_TCA_BPF_NAME, name)
            + nla_u32(_TCA_BPF_FLAGS, _TCA_BPF_FLAG_ACT_DIRECT)
        )
        try:
            self._nl.request(
                _RTM_NEWTFILTER,
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                _bpf_filter(ifindex, parent, prio, handle) + nla(_TCA_OPTIONS, options),
            )
        except NetlinkFailure as e:
            raise e.named(f"attach bpf filter {name} to ifindex {ifindex}") from e

    def del_bpf_filter(self, ifindex: int, parent: int, *, prio: int, handle: int) -> bool:
        """False when the filter (or the qdisc) was already gone."""
        try:
            self._nl.request(
                _RTM_DELTFILTER,
                NLM_F_ACK,
                _bpf_filter(ifindex, parent, prio, handle),
            )
        except NetlinkFailure as e:
            if errnos.is_gone(e.code, errnos.TC_DELETE):
                return False
            raise e.named(f"detach bpf filter from ifindex {ifindex}") from e
        return True
