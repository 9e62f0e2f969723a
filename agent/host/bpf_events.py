"""The consumer side of the datapath's drop-event ring buffer (``nw_events``).

A BPF ring buffer is read by mmap: page 0 is the consumer position (ours to
write), then the producer position page, then the data pages, mapped twice
in a row so a record that wraps is still contiguous. Each record has an
8-byte header (length with BUSY/DISCARD bits, page offset) and is padded to
8 bytes. epoll on the map fd wakes us when the kernel submits.

The kernel side never blocks on us: when the ring is full it counts the
record as lost (``EventStat.RING_FULL``) and the packet's verdict stands.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import mmap
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nicwarden.agent.host.bpfsys import map_info
from nicwarden.agent.wake import WakePipe
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, DropReason, Verdict

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


@dataclass(frozen=True)
class DropRecord:
    ts_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    iface: int
    direction: Direction
    verdict: Verdict
    reason: DropReason
    family: int  # 0: no IP header could be read
    proto: int
    src: str
    dst: str
    sport: int
    dport: int


def decode(raw: bytes) -> DropRecord:
    e = L.DropEvent.from_buffer_copy(raw[: ct.sizeof(L.DropEvent)])
    n = {4: 4, 6: 16}.get(e.family, 0)
    src = str(ipaddress.ip_address(bytes(e.saddr[:n]))) if n else ""
    dst = str(ipaddress.ip_address(bytes(e.daddr[:n]))) if n else ""
    return DropRecord(
        ts_ns=e.ts_ns,
        iface=e.iface,
        direction=Direction(e.dir),
        verdict=Verdict(e.verdict),
        reason=DropReason(e.reason),
        family=e.family,
        proto=e.proto,
        src=src,
        dst=dst,
        sport=_ntohs(e.sport),
        dport=_ntohs(e.dport),
    )


def _ntohs(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "little"), "big")


class RingReader:
    """Reads one ring buffer map (by fd, which the caller keeps open)."""

    def __init__(self, fd: int) -> None:
        info = map_info(fd)
        if info.type != L.BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map fd {fd} is not a ring buffer (type {info.type})")
        self._size = int(info.max_entries)
        self._mask = self._size - 1
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(
            fd, page + 2 * self._size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data_off = page
        self._ep = select.epoll()
        self._ep.register(fd, select.EPOLLIN)

    def drain(self, handle: Callable[[bytes], None]) -> int:
        """Hand every submitted record to ``handle``; returns how many."""
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        n = 0
        while True:
            prod = struct.unpack_from("<Q", self._prod, 0)[0]
            if cons >= prod:
                break
            off = self._data_off + (cons & self._mask)
            length = struct.unpack_from("<I", self._prod, off)[0]
            if length & _BUSY:
                break  # reserved, not yet submitted: later records wait for it
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                handle(bytes(self._prod[off + _HDR : off + _HDR + size]))
                n += 1
            cons += (size + _HDR + 7) & ~7
            struct.pack_into("<Q", self._cons, 0, cons)
        return n

    def also_wake_on(self, fd: int) -> None:
        """``wait`` returns too when ``fd`` turns readable (a wake pipe)."""
        self._ep.register(fd, select.EPOLLIN)

    def wait(self, timeout_s: float | None = None) -> None:
        """Until records are submitted or ``timeout_s`` passes (None: no limit)."""
        self._ep.poll(-1 if timeout_s is None else timeout_s)

    def close(self) -> None:
        self._ep.close()
        self._cons.close()
        self._prod.close()


class RingThread:
    """A daemon thread draining the ring into ``sink`` until ``stop()``."""

    def __init__(self, fd: int, sink: Callable[[DropRecord], None]) -> None:
        self._reader = RingReader(fd)
        self._sink = sink
        self._stop = threading.Event()
        # The ring's epoll also watches this pipe: stop() wakes the thread,
        # which otherwise sleeps until the kernel submits a record.
        self._wake = WakePipe()
        self._reader.also_wake_on(self._wake.fd)
        self.decode_errors = 0
        self._thread = threading.Thread(target=self._run, name="nw-drop-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _handle(self, raw: bytes) -> None:
        try:
            rec = decode(raw)
        except ValueError:
            self.decode_errors += 1  # a reason/verdict this agent does not know
            return
        self._sink(rec)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._reader.drain(self._handle)
            self._reader.wait()

    def stop(self) -> None:
        self._stop.set()
        # The reader's epoll watches the pipe: both close only once the
        # thread has left it.
        if self._wake.stop_thread(self._thread, timeout=5):
            self._reader.close()
