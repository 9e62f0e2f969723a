"""Live host events: kernel uevents through pyudev (no udevd needed:
``source='kernel'``) and rtnetlink link messages (link up/down emits no
uevent, yet health depends on it)."""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyudev

from nicwarden.agent.host import rtnl
from nicwarden.agent.wake import WakePipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostEvent:
    source: str  # "udev", "rtnl", "sim"
    action: str  # "add", "remove", "change", "move", "bind", "unbind", "newlink", "dellink"
    subsystem: str  # "net", "pci"
    name: str  # netdev name or PCI address
    index: int = 0
    alias: str = ""


EventCallback = Callable[[HostEvent], None]


class _Loop:
    """A daemon thread reading one fd until stopped, woken by a pipe.

    It sleeps in poll() with no timeout: an idle agent's threads used to
    wake five times a second each to look at a stop flag, and on a VM each
    of those wakeups costs about a millisecond of CPU."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = WakePipe()
        self._poller: select.poll | None = None  # the loop's fd and the wake pipe

    def _start(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name=self._name, daemon=True)
        self._thread.start()

    def _wait(self, fd: int) -> bool:
        """Block until ``fd`` is readable (True) or stop() is called (False).
        poll(), not select(): an agent holding many fds may pass 1024."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
            self._poller.register(self._wake.fd, select.POLLIN)
        ready = {f for f, _ in self._poller.poll()}
        return fd in ready and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.stop_thread(self._thread, timeout=2)


class UdevMonitor(_Loop):
    # "vfio": udev creates /dev/vfio/<group> after a vfio-pci bind, and
    # health reads that node from the inventory.
    SUBSYSTEMS = ("net", "pci", "vfio")

    def __init__(self, callback: EventCallback) -> None:
        super().__init__("udev-monitor")
        self._callback = callback
        ctx = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(ctx, source="kernel")
        for sub in self.SUBSYSTEMS:
            self._monitor.filter_by(sub)
        self._monitor.start()

    def start(self) -> UdevMonitor:
        self._start(self._run)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wait(self._monitor.fileno()):
                continue
            while True:
                dev = self._monitor.poll(timeout=0)
                if dev is None:
                    break
                ev = HostEvent(
                    "udev",
                    dev.action or "",
                    dev.subsystem or "",
                    dev.sys_name or "",
                    _ifindex(dev) if dev.subsystem == "net" else 0,
                )
                _safe(self._callback, ev)


class LinkMonitor(_Loop):
    """rtnetlink RTM_NEWLINK/RTM_DELLINK in the host netns.

    A plain AF_NETLINK socket rather than pyroute2: pyroute2 0.9 buffers
    messages in an asyncio queue, so select() on its fd misses queued events.
    """

    RTMGRP_LINK = 1

    def __init__(self, callback: EventCallback) -> None:
        super().__init__("rtnl-monitor")
        self._callback = callback
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind((0, self.RTMGRP_LINK))

    def start(self) -> LinkMonitor:
        self._start(self._run)
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._wait(self._sock.fileno()):
                    continue
                try:
                    data = self._sock.recv(1 << 16)
                except OSError as e:
                    # ENOBUFS: we fell behind; subscribers rescan on any event.
                    log.warning("rtnetlink monitor: %s", e)
                    _safe(self._callback, HostEvent("rtnl", "overrun", "net", ""))
                    continue
                for ev in self.parse(data):
                    _safe(self._callback, ev)
        finally:
            self._sock.close()

    @classmethod
    def parse(cls, data: bytes) -> list[HostEvent]:
        out = []
        for msg in rtnl.messages(data):
            if msg.type not in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
                continue
            if len(msg.payload) < rtnl.IFINFOMSG.size:
                continue
            index = rtnl.IFINFOMSG.unpack_from(msg.payload)[2]
            attrs = dict(rtnl.attrs(msg.payload[rtnl.IFINFOMSG.size :]))
            out.append(
                HostEvent(
                    "rtnl",
                    "newlink" if msg.type == rtnl.RTM_NEWLINK else "dellink",
                    "net",
                    rtnl.cstr(attrs.get(rtnl.IFLA_IFNAME, b"")),
                    index,
                    rtnl.cstr(attrs.get(rtnl.IFLA_IFALIAS, b"")),
                )
            )
        return out


def _ifindex(dev: Any) -> int:
    raw = dev.properties.get("IFINDEX", "")
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 11 else 0


def _safe(callback: EventCallback, ev: HostEvent) -> None:
    try:
        callback(ev)
    except Exception:  # a bad subscriber must not kill the event thread
        log.exception("event callback failed for %s", ev)
