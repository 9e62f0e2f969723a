"""Netlink access (pyroute2): links, netns moves, addresses, routes, tc.

The only module that imports pyroute2's IPRoute. Raw errnos become the
agent's named errors through ``errnos``, and deleting what is already gone
succeeds (neutron's ip_lib lesson: idempotent cleanup paths).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nicwarden.agent.errors import NicwardenError, NotFound
from nicwarden.agent.host import errnos, netns

ARPHRD_NAMES = {1: "ether", 32: "infiniband", 772: "loopback"}


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mac: str
    mtu: int
    operstate: str
    up: bool  # administratively up (IFF_UP)
    carrier: bool
    kind: str  # "veth", "bridge", "" for physical devices
    link_type: str
    alias: str
    altnames: tuple[str, ...] = ()
    master: int = 0
    parent: str = ""  # the parent device (a PCI address for a NIC function), if any


@dataclass(frozen=True)
class Address:
    ifname: str
    cidr: str  # "10.1.0.5/24"

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.cidr)


@dataclass(frozen=True)
class Route:
    dst: str  # "0.0.0.0/0", "10.2.0.0/16"
    gateway: str | None = None
    ifname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def netlink_error(
    err: NetlinkError, what: str, overrides: errnos.Overrides | None = None
) -> NicwardenError:
    """Name a netlink errno so it can cross gRPC and the CNI shim intact."""
    return errnos.named(int(err.code or 0), what, overrides)


def open_iproute(target: str | None) -> IPRoute:
    """An IPRoute bound to ``target``'s netns (path or name; None: the host's).

    Use it from the thread that opened it: pyroute2 0.9 keeps a socket per
    thread, and another thread's socket would be opened in that thread's netns.
    """
    if target is None:
        return IPRoute()
    return netns.run_in(target, IPRoute)


def _link_info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    props = msg.get_attr("IFLA_PROP_LIST")
    altnames: tuple[str, ...] = ()
    if props is not None:
        altnames = tuple(props.get_attrs("IFLA_ALT_IFNAME"))
    flags = int(msg["flags"])
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        mac=str(msg.get_attr("IFLA_ADDRESS") or ""),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN").lower(),
        up=bool(flags & 0x1),
        carrier=bool(msg.get_attr("IFLA_CARRIER")),
        kind=str(kind or ""),
        link_type=ARPHRD_NAMES.get(int(msg["ifi_type"]), str(msg["ifi_type"])),
        alias=str(msg.get_attr("IFLA_IFALIAS") or ""),
        altnames=altnames,
        master=int(msg.get_attr("IFLA_MASTER") or 0),
        parent=str(msg.get_attr("IFLA_PARENT_DEV_NAME") or ""),
    )


class Netlink:
    """Netlink operations in one network namespace (``netns=None``: the host's).

    ``netns`` is a path (``/var/run/netns/x``, ``/proc/<pid>/ns/net``) or a
    name under /var/run/netns. A socket is opened per call: calls are rare on
    the control path and this keeps the object safe to share across threads.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._held: Any = None

    def __repr__(self) -> str:
        return f"Netlink(netns={self.netns!r})"

    def __enter__(self) -> Netlink:
        """Hold one socket for a burst of calls (an ADD makes a dozen), on
        this thread only: pyroute2 keeps a socket per thread, and another
        thread would get one in its own netns (see ``netns``)."""
        self._held = self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    @contextmanager
    def _sock(self) -> Iterator[Any]:
        if self._held is not None:
            yield self._held
            return
        sock = self._open()
        try:
            yield sock
        finally:
            sock.close()

    def _open(self) -> Any:
        # pyroute2's NetNS would spawn a helper process (~13 ms per open).
        return open_iproute(self.netns)

    def _get(self, sock: Any, name: str) -> Any | None:
        # One RTM_GETLINK by name; link_lookup() dumps every link instead.
        try:
            msgs = sock.link("get", ifname=name)
        except NetlinkError as e:
            if errnos.is_gone(e.code):
                return None
            raise netlink_error(e, f"get link {name}") from e
        return msgs[0] if msgs else None

    def _index(self, sock: Any, name: str) -> int:
        msg = self._get(sock, name)
        if msg is None:
            raise NotFound(f"link {name} not found in {self._where()}")
        return int(msg["index"])

    def _where(self) -> str:
        return "the host netns" if self.netns is None else f"netns {self.netns}"

    # -- reads ---------------------------------------------------------------

    def links(self) -> list[LinkInfo]:
        with self._sock() as s:
            return [_link_info(m) for m in s.get_links()]

    def link(self, name: str) -> LinkInfo | None:
        with self._sock() as s:
            msg = self._get(s, name)
            return None if msg is None else _link_info(msg)

    def link_by_alias(self, alias: str) -> LinkInfo | None:
        for link in self.links():
            if link.alias == alias:
                return link
        return None

    def addresses(self, name: str) -> list[Address]:
        with self._sock() as s:
            idx = self._index(s, name)
            out = []
            for m in s.get_addr(index=idx):
                out.append(Address(name, f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"))
            return out

    def routes(self, name: str) -> list[Route]:
        with self._sock() as s:
            idx = self._index(s, name)
            out = []
            for family in (2, 10):
                for m in s.get_routes(family=family, oif=idx, table=254):
                    dst = m.get_attr("RTA_DST")
                    plen = m["dst_len"]
                    if dst is None:
                        dst = "0.0.0.0" if family == 2 else "::"
                    if family == 10 and str(dst).startswith("fe80"):
                        continue
                    out.append(Route(f"{dst}/{plen}", m.get_attr("RTA_GATEWAY"), name))
            return out

    # -- writes --------------------------------------------------------------

    def _do(
        self,
        what: str,
        fn: Any,
        *args: Any,
        overrides: errnos.Overrides | None = None,
        **kwargs: Any,
    ) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            raise netlink_error(e, what, overrides) from e

    def create_veth(self, name: str, peer: str, mac: str | None = None) -> None:
        with self._sock() as s:
            kwargs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": {"ifname": peer}}
            if mac:
                kwargs["address"] = mac
            self._do(
                f"create veth {name}/{peer}", s.link, "add", overrides=errnos.LINK_SET, **kwargs
            )

    def create_bridge(self, name: str) -> None:
        with self._sock() as s:
            self._do(f"create bridge {name}", s.link, "add", ifname=name, kind="bridge")

    def delete_link(self, name: str) -> bool:
        """Delete a link; True if it existed. Already gone is success."""
        with self._sock() as s:
            msg = self._get(s, name)
            if msg is None:
                return False
            try:
                s.link("del", index=msg["index"])
            except NetlinkError as e:
                if errnos.is_gone(e.code):
                    return False
                raise netlink_error(e, f"delete link {name}") from e
            return True

    def set_link(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        alias: str | None = None,
        new_name: str | None = None,
        master: str | None = None,
    ) -> None:
        with self._sock() as s:
            idx = self._index(s, name)
            kwargs: dict[str, Any] = {}
            if mtu is not None:
                kwargs["mtu"] = mtu
            if mac is not None:
                kwargs["address"] = mac
            if alias is not None:
                kwargs["ifalias"] = alias
            if new_name is not None and new_name != name:
                kwargs["ifname"] = new_name
            if master is not None:
                kwargs["master"] = self._index(s, master)

            def send(attrs: dict[str, Any]) -> None:
                self._do(
                    f"set link {name} {sorted(attrs)}",
                    s.link,
                    "set",
                    index=idx,
                    overrides=errnos.LINK_SET,
                    **attrs,
                )

            if "ifname" in kwargs:
                # The kernel refuses to rename an up device: down first, then
                # rename with everything else, then the requested state.
                self._do(f"set {name} down", s.link, "set", index=idx, state="down")
                send(kwargs)
                kwargs = {}
            if up is not None:
                kwargs["state"] = "up" if up else "down"
            if kwargs:
                send(kwargs)  # one message: each round trip costs ~2 ms on the pod path

    def drop_altnames(self, name: str) -> list[str]:
        """Remove alternative names: stale ones would collide in the target netns."""
        link = self.link(name)
        if link is None:
            raise NotFound(f"link {name} not found in {self._where()}")
        with self._sock() as s:
            for alt in link.altnames:
                self._do(
                    f"drop altname {alt}", s.link, "property_del", index=link.index, altname=alt
                )
        return list(link.altnames)

    def move_to_netns(self, name: str, target: str | None, new_name: str | None = None) -> None:
        """Move a link into ``target`` (path or name; None = the host's netns)."""
        with self._sock() as s:
            idx = self._index(s, name)
            kwargs: dict[str, Any] = {}
            if new_name and new_name != name:
                # Renamed in the same message: the kernel closes the device for
                # the move and names it on arrival, so no separate "down".
                kwargs["ifname"] = new_name
            fd = netns.open_fd(target)
            try:
                self._do(
                    f"move {name} to {target or 'host netns'}",
                    s.link,
                    "set",
                    index=idx,
                    net_ns_fd=fd,
                    **kwargs,
                )
            finally:
                os.close(fd)

    def add_address(self, name: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with self._sock() as s:
            idx = self._index(s, name)
            self._do(
                f"add address {cidr} to {name}",
                s.addr,
                "add",
                index=idx,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
            )

    def _route_args(self, s: Any, dst: str, gateway: str | None, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dst": dst, "oif": self._index(s, name)}
        if gateway:
            kwargs["gateway"] = gateway
        return kwargs

    def add_route(self, dst: str, gateway: str | None, name: str) -> None:
        with self._sock() as s:
            kwargs = self._route_args(s, dst, gateway, name)
            self._do(f"add route {dst} via {gateway} dev {name}", s.route, "add", **kwargs)

    def delete_address(self, name: str, cidr: str) -> bool:
        """Remove ``cidr`` from ``name``; False when it was not there."""
        iface = ipaddress.ip_interface(cidr)
        with self._sock() as s:
            idx = self._index(s, name)
            try:
                s.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            except NetlinkError as e:
                if errnos.is_gone(e.code, errnos.ADDR_DELETE):
                    return False
                raise netlink_error(e, f"delete address {cidr} from {name}") from e
            return True

    def delete_route(self, dst: str, gateway: str | None, name: str) -> bool:
        """Remove the route ``dst`` via ``name``; False when it was not there."""
        with self._sock() as s:
            kwargs = self._route_args(s, dst, gateway, name)
            try:
                s.route("del", **kwargs)
            except NetlinkError as e:
                if errnos.is_gone(e.code):
                    return False
                raise netlink_error(e, f"delete route {dst} dev {name}") from e
            return True
