"""Netlink access (pyroute2): links, netns moves, addresses, routes.

The only module that imports pyroute2's IPRoute/NetNS. Raw errnos are turned
into the agent's named errors here, and deleting what is already gone succeeds
(neutron's ip_lib lesson: idempotent cleanup paths).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nicwarden.agent.errors import (
    AlreadyExists,
    Busy,
    HostError,
    NicwardenError,
    NotFound,
    Unsupported,
)

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


def translate(err: NetlinkError, what: str) -> NicwardenError:
    """Name a netlink errno so it can cross gRPC and the CNI shim intact."""
    code = err.code
    reason = os.strerror(code) if code else str(err)
    msg = f"{what}: {reason}"
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        return NotFound(msg)
    if code == errno.EEXIST:
        return AlreadyExists(msg)
    if code == errno.EBUSY:
        return Busy(msg)
    if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return Unsupported(msg)
    return HostError(msg)


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
        """Hold one socket for a burst of calls (an ADD makes a dozen)."""
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
        if self.netns is None:
            return IPRoute()
        else:
            # A netlink socket belongs to the netns its creating thread was in,
            # so enter the target briefly on this thread. pyroute2's NetNS
            # costs ~13 ms per open (a helper process); this costs ~1 ms.
            with _entered(self.netns):
                sock = IPRoute()
        return sock

    def _get(self, sock: Any, name: str) -> Any | None:
        # One RTM_GETLINK by name; link_lookup() dumps every link instead.
        try:
            msgs = sock.link("get", ifname=name)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise translate(e, f"get link {name}") from e
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

    def _do(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            raise translate(e, what) from e

    def create_veth(self, name: str, peer: str, mac: str | None = None) -> None:
        with self._sock() as s:
            kwargs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": {"ifname": peer}}
            if mac:
                kwargs["address"] = mac
            self._do(f"create veth {name}/{peer}", s.link, "add", **kwargs)

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
                if e.code == errno.ENODEV:
                    return False
                raise translate(e, f"delete link {name}") from e
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
            if "ifname" in kwargs:
                # The kernel refuses to rename an up device: down first, then
                # rename with everything else, then the requested state.
                self._do(f"set {name} down", s.link, "set", index=idx, state="down")
                self._do(f"set link {name} {sorted(kwargs)}", s.link, "set", index=idx, **kwargs)
                kwargs = {}
            if up is not None:
                kwargs["state"] = "up" if up else "down"
            if kwargs:
                # One message: each round trip costs ~2 ms on the pod path.
                self._do(f"set link {name} {sorted(kwargs)}", s.link, "set", index=idx, **kwargs)

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
            fd = _open_netns(target)
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

    def add_route(self, dst: str, gateway: str | None, name: str) -> None:
        with self._sock() as s:
            idx = self._index(s, name)
            kwargs: dict[str, Any] = {"dst": dst, "oif": idx}
            if gateway:
                kwargs["gateway"] = gateway
            self._do(f"add route {dst} via {gateway} dev {name}", s.route, "add", **kwargs)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise HostError(f"cannot enter network namespace {what}: {os.strerror(err)}")


@contextmanager
def _entered(target: str) -> Iterator[None]:
    """Run the body with this thread in ``target``'s netns, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = _open_netns(target)
        try:
            _setns(fd, target)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            # Failing to return would leave a worker thread in a pod's netns.
            _setns(home, "of the agent")
    finally:
        os.close(home)


def _open_netns(target: str | None) -> int:
    if target is None:
        # The agent runs in the host netns (hostNetwork in a DaemonSet).
        path = "/proc/self/ns/net"
    elif "/" in target:
        path = target
    else:
        path = f"/var/run/netns/{target}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NotFound(f"network namespace {path} does not exist") from e
    except OSError as e:
        raise HostError(f"cannot open network namespace {path}: {e.strerror}") from e


def netns_exists(path: str) -> bool:
    return os.path.exists(path if "/" in path else f"/var/run/netns/{path}")
