"""The datapath's interface registry (``nw_ifaces``) and the tc filters that
hook each registered interface to the policy program.

An interface key is ours (an allocated number recorded with the netns path,
cookie, ifindex and name it stands for) because tc programs have no
in-kernel view of their device's netns: on this kernel the tc
``bpf_get_netns_cookie()`` is ``skb->sk``'s netns, init_net for a
socket-less skb (measured: ARP replies report init_net's cookie).

The tc filters run one of two shared entry programs (ingress, egress),
each interface's filter carrying its key as the filter's classid: cls_bpf
stores the classid's low 16 bits in the skb before running the program,
which copies them and the direction into ``skb->cb`` and tail-calls the
policy program. Nothing is loaded per interface, so a first isolation costs
tc requests only (two program loads were ~0.25 ms of its ~0.4 ms). A key
past 16 bits gets per-interface trampolines that hold it as an immediate,
as every key did before. Both filters or none: a direction without policy still
records flows so that replies pass the isolated one. Whether filters should
be there (isolation, and the linger after it) is the facade's decision.
"""

from __future__ import annotations

import os
import socket

from nicwarden.agent.errors import InvalidArgument, NotFound
from nicwarden.agent.host import errnos, netns
from nicwarden.agent.host.bpf_pins import Maps
from nicwarden.agent.host.bpfsys import U32, load_entry, load_trampoline
from nicwarden.agent.host.tc import TC_H_EGRESS, TC_H_INGRESS, Tc
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey

_HOOKS = {Direction.INGRESS: TC_H_INGRESS, Direction.EGRESS: TC_H_EGRESS}


def locate(netns_path: str, ifname: str) -> tuple[int, int]:
    """A link's ifindex and its netns's cookie, read in one netns entry."""

    def read() -> tuple[int, int]:
        try:
            index = socket.if_nametoindex(ifname)
        except OSError as e:
            raise errnos.from_oserror(e, f"link {ifname} in netns {netns_path}") from e
        return index, netns.cookie()

    return netns.run_in(netns_path, read)


class Registry:
    """Attached interfaces, mirrored from ``nw_ifaces``. Not locked: the
    datapath facade serializes calls."""

    def __init__(self, maps: Maps, instance: str) -> None:
        self.maps = maps
        self.instance = instance
        self._ifaces: dict[int, IfaceKey] = {}
        self._entries: dict[Direction, int] = {}  # loaded on first use, per process

    def close(self) -> None:
        """Our fds of the entry programs; filters hold their own references."""
        for fd in self._entries.values():
            os.close(fd)
        self._entries.clear()

    def _entry(self, direction: Direction) -> int:
        fd = self._entries.get(direction)
        if fd is None:
            fd = self._entries[direction] = load_entry(direction, self.maps.progs.fd)
        return fd

    def recover(self) -> None:
        self._ifaces.clear()
        for k in list(self.maps.ifaces.iter_keys()):
            info = self.maps.ifaces.lookup(k)
            if info is None:
                continue
            self._ifaces[k.v] = IfaceKey(
                k.v, info.netns.decode(), info.ifname.decode(), info.ifindex, info.netns_cookie
            )

    def clear(self) -> None:
        self._ifaces.clear()

    def all(self) -> list[IfaceKey]:
        return sorted(self._ifaces.values(), key=lambda k: k.id)

    def get(self, iface_id: int) -> IfaceKey | None:
        return self._ifaces.get(iface_id)

    def known(self, iface: IfaceKey) -> None:
        if iface.id not in self._ifaces:
            raise NotFound(f"interface key {iface.id} ({iface.ifname}) is not attached")

    def register(self, netns_path: str, ifname: str) -> IfaceKey:
        """The key of ``ifname`` in ``netns_path``, allocated on first sight."""
        ifindex, cookie = locate(netns_path, ifname)
        for known in self._ifaces.values():
            if (known.netns_cookie, known.ifindex) == (cookie, ifindex):
                return known
        info_of(IfaceKey(0, netns_path, ifname, ifindex, cookie), 0)  # refuse before allocating
        meta_key = U32(0)
        meta = self.maps.meta.lookup(meta_key) or L.Meta()
        iface_id = max(meta.next_iface, 1)
        meta.next_iface = iface_id + 1
        self.maps.meta.update(meta_key, meta)
        key = IfaceKey(iface_id, netns_path, ifname, ifindex, cookie)
        self.maps.ifaces.update(U32(iface_id), info_of(key, 0))
        self._ifaces[iface_id] = key
        return key

    def forget(self, iface_id: int) -> None:
        self.maps.ifaces.delete(U32(iface_id))
        self._ifaces.pop(iface_id, None)

    def filtered(self, iface_id: int) -> bool:
        """Whether our filters are recorded as installed."""
        info = self.maps.ifaces.lookup(U32(iface_id))
        return info is not None and bool(info.flags & L.IFACE_FILTERS)

    # -- tc -----------------------------------------------------------------

    def filter_name(self, iface: IfaceKey, direction: Direction) -> str:
        return f"nicwarden:{self.instance}:{iface.id}:{direction.name.lower()}"

    def filters_installed(self, iface: IfaceKey) -> dict[Direction, bool]:
        with Tc(iface.netns) as tc:
            return {d: _ours(tc, iface.ifindex, d) for d in Direction}

    def set_filters(self, iface: IfaceKey, want: bool) -> None:
        """Install both filters (``want``) or remove both, and record it.
        NotFound when the netns or the link is gone (so are the filters)."""
        info = self.maps.ifaces.lookup(U32(iface.id))
        flags = int(info.flags) if info is not None else 0
        with Tc(iface.netns) as tc:
            if tc.ifindex(iface.ifname) != iface.ifindex:
                raise NotFound(
                    f"link {iface.ifname} (ifindex {iface.ifindex}) is gone from {iface.netns}"
                )
            flags = self._install(tc, iface, flags) if want else self._remove(tc, iface, flags)
        if info is not None and info.flags != flags:
            info.flags = flags
            self.maps.ifaces.update(U32(iface.id), info)

    def _install(self, tc: Tc, iface: IfaceKey, flags: int) -> int:
        idx = iface.ifindex
        created = tc.add_clsact(idx)
        if created:
            flags |= L.IFACE_OWNS_CLSACT
        for d in Direction:
            if not created and _ours(tc, idx, d):  # a qdisc just made holds no filter
                continue
            keyed = iface.id <= L.CLASSID_KEY_MAX
            fd = self._entry(d) if keyed else load_trampoline(iface.id, d, self.maps.progs.fd)
            try:
                tc.add_bpf_filter(
                    idx,
                    _HOOKS[d],
                    prio=L.TC_PRIO,
                    handle=L.TC_HANDLE,
                    prog_fd=fd,
                    name=self.filter_name(iface, d),
                    classid=iface.id if keyed else None,
                )
            finally:
                if not keyed:
                    os.close(fd)  # the filter holds its own reference
        return flags | L.IFACE_FILTERS

    def _remove(self, tc: Tc, iface: IfaceKey, flags: int) -> int:
        idx = iface.ifindex
        for d in Direction:
            if _ours(tc, idx, d):
                tc.del_bpf_filter(idx, _HOOKS[d], prio=L.TC_PRIO, handle=L.TC_HANDLE)
        flags &= ~L.IFACE_FILTERS
        # Someone else's filters keep the qdisc alive; so does a qdisc we found.
        if flags & L.IFACE_OWNS_CLSACT and not any(tc.filters(idx, h) for h in _HOOKS.values()):
            tc.del_clsact(idx)
            flags &= ~L.IFACE_OWNS_CLSACT
        return flags


def _ours(tc: Tc, ifindex: int, direction: Direction) -> bool:
    return any(
        f.kind == "bpf" and f.prio == L.TC_PRIO for f in tc.filters(ifindex, _HOOKS[direction])
    )


def info_of(key: IfaceKey, flags: int) -> L.IfaceInfo:
    netns_path = key.netns.encode()
    if len(netns_path) >= L.NETNS_PATH_MAX:
        raise InvalidArgument(f"netns path {key.netns} is longer than {L.NETNS_PATH_MAX - 1}")
    return L.IfaceInfo(
        netns_cookie=key.netns_cookie,
        ifindex=key.ifindex,
        flags=flags,
        ifname=key.ifname.encode(),
        netns=netns_path,
    )
