"""The BPF policy datapath's loader; bcc compiles in a child (``bpf_build``).

What lives in the kernel, per instance, under ``<bpffs>/nicwarden/<instance>/``:

* the maps of ``nicwarden.bpf.layout.MAPS`` (policy tries, per-interface
  config, flow table, counters, an interface registry, a meta record), each
  pinned, so enforcement and its state outlive the agent process;
* ``nw_policy``: the one policy program (bcc-compiled once per ``load()``, in
  a short-lived child process so that the agent never maps clang/LLVM),
  pinned and installed in slot 0 of the pinned prog array ``nw_progs``.

Per attached interface, two tc filters (ingress, egress) run two entry
programs shared by every interface (``bpfsys.entry_insns``), the interface's
key in the filter's classid; they tail-call ``nw_progs[0]``. Keys past 16
bits get per-interface trampolines instead (``bpfsys.trampoline_insns``).

``PolicyDatapath`` is the facade the agent uses; its jobs live beside it:
``bpf_pins`` (bpffs pins and their shapes), ``bpf_ifaces`` (the interface
registry and its tc filters, over ``tc``), ``bpf_tables`` (generation
writes, read-back, counters), ``bpfsys`` (raw bpf(2)).

If an entry's tail call finds the prog array empty it drops (fail
closed). The kernel empties a prog array when its last *user* reference (fd
or pin) goes, even while programs still use it; the pin of ``nw_progs`` is
what keeps enforcement alive between agent processes.

Restart: ``adopt()`` opens the pins (no compile, no reload); the filters
in the pods' tc hooks never stopped running. ``load()`` on an existing
instance recompiles, reuses the pinned maps (bcc's ``BPF_TABLE_PINNED``
opens a pin if present) and swaps the program in ``nw_progs[0]`` atomically:
an in-place upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from nicwarden.agent.errors import HostError, InvalidArgument, NotFound, Unavailable
from nicwarden.agent.host import bpf_build, bpf_pins
from nicwarden.agent.host.bpf_ifaces import Registry
from nicwarden.agent.host.bpf_pins import Maps
from nicwarden.agent.host.bpf_tables import Count, Tables
from nicwarden.agent.host.bpfsys import U32, possible_cpus, prog_info
from nicwarden.agent.host.netns import resolve as resolve_netns
from nicwarden.agent.host.paths import HostPaths
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, LoweredLike, Verdict

__all__ = [
    "BPF_SRC_DIR",
    "POLICY_SOURCE",
    "Count",
    "Datapath",
    "PolicyDatapath",
    "counters_by_name",
]

log = logging.getLogger(__name__)

BPF_SRC_DIR = Path(L.__file__).resolve().parent
POLICY_SOURCE = BPF_SRC_DIR / "policy.c"


class Datapath(Protocol):
    """What policy enforcement needs of a datapath: ``PolicyDatapath`` on a
    node, an in-memory fake in tests."""

    def attach(self, netns: str, ifname: str) -> IfaceKey: ...

    def detach(self, iface: IfaceKey) -> None: ...

    def apply(self, iface: IfaceKey, direction: Direction, table: LoweredLike) -> int: ...

    def counters(self, iface: IfaceKey) -> Mapping[tuple[Direction, Verdict], Count]: ...

    def lingering(self) -> int: ...


class _Open:
    """An opened instance: its maps and what is learnt from them."""

    def __init__(self, maps: Maps, instance: str) -> None:
        self.maps = maps
        self.ifaces = Registry(maps, instance)
        self.tables = Tables(maps)
        # Interfaces whose filters outlive their isolation, by interface id:
        # since when no direction has been isolated (see PolicyDatapath.sweep).
        self.lingering: dict[int, float] = {}

    def close(self) -> None:
        self.ifaces.close()
        self.maps.close()

    def recover(self, now: float) -> None:
        """Rebuild the registry from the kernel and forget generations that
        are not active (an interrupted apply() leaves some). Filters found on
        an open interface linger from now on."""
        self.ifaces.recover()
        self.tables.recover()
        self.lingering = {
            k.id: now
            for k in self.ifaces.all()
            if self.ifaces.filtered(k.id) and not self.tables.any_isolated(k.id)
        }


class PolicyDatapath:
    """One instance of the policy datapath (maps + program pinned in bpffs).

    Thread-safe: one lock serializes every control operation.
    """

    def __init__(
        self,
        instance: str = "default",
        paths: HostPaths | None = None,
        keep_established: bool = False,
        filter_linger_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # bpffs refuses names containing '.', so letters, digits, '_', '-' only.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", instance):
            raise InvalidArgument(f"bad datapath instance name {instance!r}")
        self.paths = paths or HostPaths()
        self.instance = instance
        self.pin_dir = self.paths.bpffs / "nicwarden" / instance
        # False: a policy switch revokes established flows the new policy
        # does not allow (checked lazily, on each flow's next packet).
        # True: flows survive policy changes until they expire.
        self.keep_established = keep_established
        # How long an interface keeps its tc filters after its last isolated
        # direction opens (0: removed at once). The program passes such an
        # interface's packets before parsing them, as if unfiltered; a
        # selector flapping within the linger costs map writes only.
        if not 0 <= filter_linger_s <= 86400:
            raise InvalidArgument(f"filter linger {filter_linger_s} s is not within 0..86400")
        self.filter_linger_s = filter_linger_s
        self._clock = clock
        self._lock = threading.RLock()
        self._open: _Open | None = None
        self._prog_fd: int | None = None
        self._ncpu = possible_cpus()

    # -- lifecycle -------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._prog_fd is not None

    def load(self) -> None:
        """Compile policy.c (once), create or reuse the pinned maps, and put
        the program in ``nw_progs[0]`` (atomically replacing a previous one)."""
        with self._lock:
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            bpf_pins.check_pinned_shapes(self.pin_dir)
            # bcc runs in a child (bpf_build): its compiler stack never maps here.
            prog_fd = bpf_build.build(self.pin_dir, POLICY_SOURCE, BPF_SRC_DIR)
            try:
                opened = self._open_maps()
                self._init_meta(opened.maps)
                # One map write: every filter jumps to the new program from
                # its next packet on. Running packets finish in the old one (RCU).
                opened.maps.progs.update(U32(0), U32(prog_fd))
                bpf_pins.pin_prog(self.pin_dir, prog_fd)
            finally:
                os.close(prog_fd)  # the pins keep maps and program alive
            self._set_prog(bpf_pins.open_pin(self.pin_dir, L.PROG_PIN))
            opened.recover(self._clock())
            log.info("policy datapath %s loaded (prog id %d)", self.instance, self.prog_id())

    def adopt(self) -> None:
        """Open an instance left pinned by a previous agent process, without
        compiling or reloading anything: enforcement never paused."""
        with self._lock:
            if not (self.pin_dir / L.PROG_PIN).exists():
                raise NotFound(f"no pinned datapath at {self.pin_dir}")
            opened = self._open_maps()
            meta = opened.maps.meta.lookup(U32(0))
            if meta is None or meta.layout_version != L.LAYOUT_VERSION:
                found = meta.layout_version if meta else "none"
                self.close()
                raise HostError(
                    f"pinned datapath at {self.pin_dir} has layout {found}, "
                    f"this agent speaks {L.LAYOUT_VERSION}: load() or cleanup()"
                )
            self._set_prog(bpf_pins.open_pin(self.pin_dir, L.PROG_PIN))
            opened.recover(self._clock())
            log.info(
                "policy datapath %s adopted (%d interfaces)",
                self.instance,
                len(opened.ifaces.all()),
            )

    def close(self) -> None:
        """Drop our fds; everything pinned keeps running."""
        with self._lock:
            if self._open is not None:
                self._open.close()
                self._open = None
            if self._prog_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._prog_fd)
            self._prog_fd = None

    def cleanup(self, force: bool = False) -> None:
        """Remove every filter we installed and every pin: the instance is gone.
        Works on an unopened object too (it adopts what is pinned first).

        A filter left behind would tail-call an emptied prog array and drop
        everything, so when the registry cannot be read (a pinned layout this
        agent does not speak) or a filter cannot be removed, nothing is
        unpinned unless ``force``.
        """
        with self._lock:
            if not self.loaded and (self.pin_dir / L.PROG_PIN).exists():
                try:
                    self.adopt()
                except HostError as e:
                    if not force:
                        raise HostError(
                            f"cannot read {self.pin_dir} to remove its filters; "
                            "cleanup(force=True) unpins anyway",
                            str(e),
                        ) from e
                    log.warning("cleanup: %s; unpinning anyway", e)
            failed: list[str] = []
            if self._open is not None:
                for iface in self._open.ifaces.all():
                    try:
                        self._open.ifaces.set_filters(iface, False)
                    except NotFound:
                        pass  # the netns or the link is gone: so are the filters
                    except HostError as e:
                        failed.append(f"{iface.netns}:{iface.ifname}: {e}")
            if failed and not force:
                raise HostError("cleanup: filters not removed, pins kept", "; ".join(failed))
            self.close()
            bpf_pins.remove_all(self.pin_dir)

    def prog_id(self) -> int:
        with self._lock:
            return int(prog_info(self._need_prog()).id)

    # -- interfaces ------------------------------------------------------------

    def attach(self, netns: str, ifname: str) -> IfaceKey:
        """Register ``ifname`` inside a netns (a name under the netns dir or a
        path). Idempotent. Filters appear once a direction is isolated."""
        with self._lock:
            path = str(resolve_netns(netns, self.paths.netns_dir))
            return self._need().ifaces.register(path, ifname)

    def detach(self, iface: IfaceKey) -> None:
        """Remove the filters and every map entry of the interface. Succeeds
        when the netns or the link is already gone."""
        with self._lock:
            opened = self._need()
            with contextlib.suppress(NotFound):  # netns or link gone: so are the filters
                opened.ifaces.set_filters(iface, False)
            opened.tables.forget(iface.id)
            opened.ifaces.forget(iface.id)
            opened.lingering.pop(iface.id, None)

    def interfaces(self) -> list[IfaceKey]:
        with self._lock:
            return self._open.ifaces.all() if self._open is not None else []

    # -- policy ---------------------------------------------------------------

    def apply(self, iface: IfaceKey, direction: Direction, table: LoweredLike) -> int:
        """Install ``table`` as the new generation of (iface, direction) and
        switch to it; returns the generation (see ``bpf_tables``). Failure
        before the switch leaves the old policy in force."""
        with self._lock:
            opened = self._need()
            opened.ifaces.known(iface)
            gen = opened.tables.write(iface, Direction(direction), table, self.keep_established)
            self._follow_isolation(opened, iface)
            return gen

    def _follow_isolation(self, opened: _Open, iface: IfaceKey) -> None:
        """tc is touched only when isolation begins without filters, or ends
        with no linger; resync() forces it."""
        filtered = opened.ifaces.filtered(iface.id)
        if opened.tables.any_isolated(iface.id):
            opened.lingering.pop(iface.id, None)
            if not filtered:
                opened.ifaces.set_filters(iface, True)
        elif filtered:
            if self.filter_linger_s > 0:
                opened.lingering.setdefault(iface.id, self._clock())
            else:
                opened.ifaces.set_filters(iface, False)

    def sweep(self) -> int:
        """Remove the filters of interfaces open for at least the linger;
        returns how many went. An interface whose netns or link is gone
        is simply forgotten here (its filters went with it)."""
        with self._lock:
            if self._open is None:
                return 0
            opened = self._open
            now = self._clock()
            due = [
                i for i, since in opened.lingering.items() if now - since >= self.filter_linger_s
            ]
            removed = 0
            for iface_id in due:
                iface = opened.ifaces.get(iface_id)
                if iface is not None and not opened.tables.any_isolated(iface_id):
                    try:
                        opened.ifaces.set_filters(iface, False)
                        removed += 1
                    except NotFound:
                        pass
                    except HostError as e:  # kept lingering: the next sweep retries
                        log.warning("cannot remove filters of %s: %s", iface.ifname, e)
                        continue
                del opened.lingering[iface_id]
            return removed

    def lingering(self) -> int:
        """Interfaces whose filters outlive their isolation right now."""
        with self._lock:
            return len(self._open.lingering) if self._open is not None else 0

    def resync(self, iface: IfaceKey) -> None:
        """Make the tc filters match the tables again (after someone removed
        them, or when the agent doubts the kernel state); ends any linger."""
        with self._lock:
            opened = self._need()
            opened.ifaces.known(iface)
            opened.lingering.pop(iface.id, None)
            opened.ifaces.set_filters(iface, opened.tables.any_isolated(iface.id))

    def generation(self, iface: IfaceKey, direction: Direction) -> int:
        with self._lock:
            return self._need().tables.generation(iface.id, Direction(direction))

    def read_back(self, iface: IfaceKey, direction: Direction) -> LoweredDirection:
        """The active generation, read from the kernel maps (a diagnostic)."""
        with self._lock:
            return self._need().tables.read_back(iface.id, Direction(direction))

    def write_counts(self) -> dict[str, int]:
        """Table writes since load, by how they went: ``switch`` (a new
        generation), ``delta`` (in place), ``unchanged``."""
        with self._lock:
            return dict(self._need().tables.writes)

    def counters(self, iface: IfaceKey) -> dict[tuple[Direction, Verdict], Count]:
        """Packets and bytes per (direction, verdict), summed over CPUs."""
        with self._lock:
            return self._need().tables.counters(iface.id)

    # -- drop events ------------------------------------------------------------

    def set_drop_events(
        self, enabled: bool, per_flow_interval_ms: int, max_per_second: int
    ) -> None:
        """Configure the in-kernel dedup and cap of drop records (takes
        effect on the next dropped packet)."""
        with self._lock:
            cfg = L.EventCfg(
                per_flow_interval_ns=per_flow_interval_ms * 1_000_000,
                enabled=1 if enabled else 0,
                max_per_sec=max_per_second,
            )
            self._need().maps.evcfg.update(U32(0), cfg)

    def drop_event_stats(self) -> dict[L.EventStat, int]:
        """Records emitted and suppressed (by reason), summed over CPUs."""
        with self._lock:
            per_cpu = self._need().maps.evstats.lookup_percpu(U32(0)) or []
            return {s: sum(int(v.n[s]) for v in per_cpu) for s in L.EventStat}

    def events_fd(self) -> int:
        """The ring buffer's fd (owned by the datapath: do not close)."""
        with self._lock:
            return self._need().maps.events.fd

    def flow_count(self, iface: IfaceKey | None = None) -> int:
        with self._lock:
            return self._need().tables.flow_count(None if iface is None else iface.id)

    def filters_installed(self, iface: IfaceKey) -> dict[Direction, bool]:
        with self._lock:
            return self._need().ifaces.filters_installed(iface)

    # -- internals ------------------------------------------------------------

    def _need_prog(self) -> int:
        if self._prog_fd is None:
            raise Unavailable(f"policy datapath {self.instance} is not loaded (load() or adopt())")
        return self._prog_fd

    def _need(self) -> _Open:
        self._need_prog()
        assert self._open is not None  # opened together with the program
        return self._open

    def _open_maps(self) -> _Open:
        if self._open is not None:
            self._open.close()
            self._open = None
        self._open = _Open(bpf_pins.open_maps(self.pin_dir, self._ncpu), self.instance)
        return self._open

    def _set_prog(self, fd: int) -> None:
        if self._prog_fd is not None:  # an upgrade of an open instance
            os.close(self._prog_fd)
        self._prog_fd = fd

    def _init_meta(self, maps: Maps) -> None:
        meta = maps.meta.lookup(U32(0))
        if meta is None or meta.layout_version == 0:
            maps.meta.update(U32(0), L.Meta(layout_version=L.LAYOUT_VERSION, next_iface=1))
        elif meta.layout_version != L.LAYOUT_VERSION:
            raise HostError(
                f"pinned datapath at {self.pin_dir} has layout {meta.layout_version}, "
                f"this agent speaks {L.LAYOUT_VERSION}: cleanup() it first"
            )


def counters_by_name(counts: Mapping[tuple[Direction, Verdict], Count]) -> dict[str, int]:
    """Flatten for metrics: ``{"ingress_drop_policy_packets": n, ...}``."""
    out: dict[str, int] = {}
    for (d, v), c in counts.items():
        base = f"{d.name.lower()}_{v.name.lower()}"
        out[f"{base}_packets"] = c.packets
        out[f"{base}_bytes"] = c.bytes
    return out
