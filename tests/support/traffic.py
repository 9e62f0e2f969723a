"""Probe real traffic between network namespaces the tests made.

Sockets are opened inside a netns from a throwaway thread that setns()es (a
socket stays in the netns it was created in), so probes cost no process start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from tests.support.oracle import run

PROBE_TIMEOUT = 0.5  # veth between two netns answers in well under a millisecond

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that has entered netns ``ns``."""
    out: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class Servers:
    """TCP and UDP echo servers inside a netns, served by one thread."""

    def __init__(self, ns: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> None:
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        socks: list[socket.socket] = []

        def make() -> None:
            for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                for port in tcp:
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((any_addr, port))
                    s.listen(64)
                    socks.append(s)
                for port in udp:
                    s = socket.socket(fam, socket.SOCK_DGRAM)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((any_addr, port))
                    socks.append(s)

        in_netns(ns, make)
        for s in socks:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.05):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if key.data == "conn":
                        data = s.recv(256)
                        if data:
                            s.sendall(data)
                        else:
                            self.sel.unregister(s)
                            s.close()
                    elif s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.setblocking(False)
                        self.sel.register(conn, selectors.EVENT_READ, "conn")
                    else:
                        data, peer = s.recvfrom(256)
                        s.sendto(data, peer)
                except OSError:
                    with contextlib.suppress(Exception):
                        self.sel.unregister(s)
                    s.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


def tcp_connect(ns: str, dst: str, port: int, src: str | None = None) -> socket.socket | None:
    """A connected TCP socket from ``ns``, or None if the handshake fails."""
    s = in_netns(ns, lambda: socket.socket(family_of(dst), socket.SOCK_STREAM))
    s.settimeout(PROBE_TIMEOUT)
    try:
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
    except OSError:
        s.close()
        return None
    return s


def echo(s: socket.socket, msg: bytes = b"hello") -> bool:
    try:
        s.sendall(msg)
        return s.recv(256) == msg
    except OSError:
        return False


def tcp_ok(ns: str, dst: str, port: int, src: str | None = None) -> bool:
    s = tcp_connect(ns, dst, port, src)
    if s is None:
        return False
    with s:
        return echo(s)


def udp_ok(ns: str, dst: str, port: int, src: str | None = None) -> bool:
    s = in_netns(ns, lambda: socket.socket(family_of(dst), socket.SOCK_DGRAM))
    with s:
        s.settimeout(PROBE_TIMEOUT)
        if src:
            s.bind((src, 0))
        try:
            s.sendto(b"ping", (dst, port))
            data, _ = s.recvfrom(256)
        except OSError:
            return False
        return data == b"ping"


def ping_ok(ns: str, dst: str) -> bool:
    fam = "-6" if ":" in dst else "-4"
    r = run(
        "ip", "netns", "exec", ns, "ping", fam, "-c1", "-W", str(PROBE_TIMEOUT), dst, check=False
    )
    return r.returncode == 0
