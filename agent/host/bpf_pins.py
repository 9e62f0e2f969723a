"""The pins of one datapath instance in bpffs: opening them with their shapes
checked, pinning the program without a moment unpinned, removing them all.

bcc would reuse a pinned map of another shape without a word, so every open
compares the kernel's (type, key size, value size, max entries) with
``nicwarden.bpf.layout``.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from nicwarden.agent.errors import HostError
from nicwarden.agent.host import errnos
from nicwarden.agent.host.bpfsys import U32, U64, Map, map_info, obj_get, obj_pin
from nicwarden.bpf import layout as L

K = TypeVar("K", bound=ct.Structure)
V = TypeVar("V", bound=ct.Structure)


@dataclass(frozen=True)
class Maps:
    """Every map of ``layout.MAPS``, opened by fd and typed."""

    peers: Map[L.PeerKey, U64]
    ports: Map[L.PortKey, U64]
    cfg: Map[L.CfgKey, L.CfgVal]
    flows: Map[L.FlowKey, L.FlowVal]
    counters: Map[L.CounterKey, L.CounterVal]
    ifaces: Map[U32, L.IfaceInfo]
    meta: Map[U32, L.Meta]
    progs: Map[U32, U32]
    evcfg: Map[U32, L.EventCfg]
    evstats: Map[U32, L.EventStats]
    # A ring buffer has no elements: only its fd is used (bpf_events mmaps it).
    events: Map[U32, U32]

    def close(self) -> None:
        for f in fields(self):
            m: Map[Any, Any] = getattr(self, f.name)
            m.close()


def open_pin(pin_dir: Path, name: str) -> int:
    """An fd of the object pinned at ``pin_dir/name`` (NotFound if none)."""
    try:
        return obj_get(pin_dir / name)
    except OSError as e:
        raise errnos.from_oserror(e, f"open pin {pin_dir / name}") from e


def check_shape(spec: L.MapSpec, fd: int) -> None:
    info = map_info(fd)
    want = (spec.kernel_type, spec.key_size(), spec.value_size(), spec.max_entries)
    have = (info.type, info.key_size, info.value_size, info.max_entries)
    if want != have:
        raise HostError(
            f"pinned map {spec.name} has (type, key, value, max) {have}, "
            f"expected {want}: cleanup() the instance to change layouts"
        )


def check_pinned_shapes(pin_dir: Path) -> None:
    """Refuse an instance whose existing pins have another layout."""
    for spec in L.MAPS:
        if (pin_dir / spec.name).exists():
            fd = open_pin(pin_dir, spec.name)
            try:
                check_shape(spec, fd)
            finally:
                os.close(fd)


def open_maps(pin_dir: Path, ncpu: int) -> Maps:
    """Open every pinned map, checked; all or nothing."""
    opened: list[Map[Any, Any]] = []

    def one(name: str, key_t: type[K], value_t: type[V]) -> Map[K, V]:
        spec = L.MAPS_BY_NAME[name]
        fd = open_pin(pin_dir, name)
        try:
            check_shape(spec, fd)
        except HostError:
            os.close(fd)
            raise
        percpu_types = (L.BPF_MAP_TYPE_PERCPU_HASH, L.BPF_MAP_TYPE_PERCPU_ARRAY)
        percpu = ncpu if spec.kernel_type in percpu_types else 0
        m = Map(spec, fd, key_t, value_t, percpu)
        opened.append(m)
        return m

    try:
        return Maps(
            peers=one("nw_peers", L.PeerKey, U64),
            ports=one("nw_ports", L.PortKey, U64),
            cfg=one("nw_cfg", L.CfgKey, L.CfgVal),
            flows=one("nw_flows", L.FlowKey, L.FlowVal),
            counters=one("nw_counters", L.CounterKey, L.CounterVal),
            ifaces=one("nw_ifaces", U32, L.IfaceInfo),
            meta=one("nw_meta", U32, L.Meta),
            progs=one("nw_progs", U32, U32),
            evcfg=one("nw_evcfg", U32, L.EventCfg),
            evstats=one("nw_evstats", U32, L.EventStats),
            events=one("nw_events", U32, U32),
        )
    except BaseException:
        for m in opened:
            m.close()
        raise


def pin_prog(pin_dir: Path, fd: int) -> None:
    """Pin the program at ``PROG_PIN``, replacing a previous one atomically."""
    final = pin_dir / L.PROG_PIN
    # bpffs refuses any name containing a '.' (EPERM): no dotfile here.
    tmp = pin_dir / f"{L.PROG_PIN}_new"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        obj_pin(fd, tmp)
    except OSError as e:
        raise errnos.from_oserror(e, f"pin the program at {tmp}") from e
    os.replace(tmp, final)  # bpffs supports rename: no moment without a pin


def remove_all(pin_dir: Path) -> None:
    """Unpin everything of the instance, and the parent when it is empty."""
    if pin_dir.exists():
        for entry in pin_dir.iterdir():
            entry.unlink()
        pin_dir.rmdir()
    with contextlib.suppress(OSError):
        pin_dir.parent.rmdir()  # only when empty (no other instance)
