"""tc over netlink: clsact qdiscs and direct-action bpf filters, in any netns.

The same path as every other netlink call: a pyroute2 ``IPRoute`` opened in
the target netns by ``netns.run_in`` (no ``NetNS`` helper process), errnos
named through ``errnos``. Nothing here knows about the policy datapath.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from nicwarden.agent.errors import AlreadyExists
from nicwarden.agent.host import errnos
from nicwarden.agent.host.netlink import netlink_error, open_iproute

# clsact's two hooks, as tc parents (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS/EGRESS)).
TC_H_INGRESS = 0xFFFFFFF2
TC_H_EGRESS = 0xFFFFFFF3


@dataclass(frozen=True)
class Filter:
    """One filter on a clsact hook (not the chain head pyroute2 also lists)."""

    kind: str  # "bpf", "u32", ...
    prio: int
    handle: int
    name: str  # a bpf filter's program name as given at attach ("" otherwise)


class Tc:
    """tc operations in one netns over one netlink socket. Use it from the
    thread that opened it (pyroute2 keeps a socket per thread)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._ipr: Any = open_iproute(netns)

    def __enter__(self) -> Tc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def _where(self) -> str:
        return "the host netns" if self.netns is None else f"netns {self.netns}"

    def ifindex(self, ifname: str) -> int | None:
        """The link's index in this netns, or None when there is no such link."""
        try:
            msgs = self._ipr.link("get", ifname=ifname)
        except NetlinkError as e:
            if errnos.is_gone(e.code):
                return None
            raise netlink_error(e, f"get link {ifname} in {self._where()}") from e
        return int(msgs[0]["index"]) if msgs else None

    def add_clsact(self, ifindex: int) -> bool:
        """Add the clsact qdisc; False when one was already there (not ours)."""
        try:
            self._ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if errnos.error_type(e.code) is AlreadyExists:
                return False
            raise netlink_error(e, f"add clsact to ifindex {ifindex}") from e
        return True

    def del_clsact(self, ifindex: int) -> bool:
        """Remove the clsact qdisc (and every filter on it); False if absent."""
        try:
            self._ipr.tc("del", "clsact", ifindex)
        except NetlinkError as e:
            if errnos.is_gone(e.code, errnos.TC_DELETE):
                return False
            raise netlink_error(e, f"delete clsact of ifindex {ifindex}") from e
        return True

    def filters(self, ifindex: int, parent: int) -> list[Filter]:
        """Filters on one clsact hook; none when the device has no clsact."""
        try:
            msgs = self._ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError as e:
            if errnos.is_gone(e.code, errnos.TC_LIST):
                return []
            raise netlink_error(e, f"list tc filters of ifindex {ifindex}") from e
        out: list[Filter] = []
        for msg in msgs:
            options = msg.get_attr("TCA_OPTIONS")
            if options is None:  # the chain head: prio and kind, no filter
                continue
            out.append(
                Filter(
                    kind=str(msg.get_attr("TCA_KIND") or ""),
                    prio=int(msg["info"]) >> 16,  # tcm_info = prio << 16 | protocol
                    handle=int(msg["handle"]),
                    name=str(options.get_attr("TCA_BPF_NAME") or ""),
                )
            )
        return out

    def add_bpf_filter(
        self, ifindex: int, parent: int, *, prio: int, handle: int, prog_fd: int, name: str
    ) -> None:
        """A direct-action bpf filter running ``prog_fd`` (the filter keeps
        its own reference: the caller may close the fd)."""
        try:
            self._ipr.tc(
                "add-filter",
                "bpf",
                ifindex,
                handle,
                fd=prog_fd,
                name=name,
                parent=parent,
                prio=prio,
                direct_action=True,
            )
        except NetlinkError as e:
            raise netlink_error(e, f"attach bpf filter {name} to ifindex {ifindex}") from e

    def del_bpf_filter(self, ifindex: int, parent: int, *, prio: int, handle: int) -> bool:
        """False when the filter (or the qdisc) was already gone."""
        try:
            self._ipr.tc("del-filter", "bpf", ifindex, handle, parent=parent, prio=prio)
        except NetlinkError as e:
            if errnos.is_gone(e.code, errnos.TC_DELETE):
                return False
            raise netlink_error(e, f"detach bpf filter from ifindex {ifindex}") from e
        return True
