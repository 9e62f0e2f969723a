"""The live inventory: sysfs scans triggered by udev, rtnetlink and simulator
events, published as immutable snapshots to subscribers.

Events only mark the inventory dirty; one worker rescans after a short
coalescing delay, so a burst (64 VFs appearing) costs one or two scans, and
subscribers hear only about snapshots that actually differ. An event about
the netdev of a VF the snapshot knows re-reads only that VF: a pod's ADD and
DEL move its VF out of the host and back, and a full scan of 256 VFs costs
25 ms or more of CPU under the interpreter lock the CNI path needs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nicwarden.agent.host.discovery import read_function_if_present, scan, with_vfio_node
from nicwarden.agent.host.events import HostEvent, LinkMonitor, UdevMonitor
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.model import PF, VF, Inventory, PciFunction

log = logging.getLogger(__name__)

Subscriber = Callable[[Inventory], None]


class LiveInventory:
    COALESCE_S = 0.05

    def __init__(
        self,
        paths: HostPaths,
        *,
        watch_kernel: bool = True,
        resync_interval: float = 60.0,
    ) -> None:
        self.paths = paths
        self._watch_kernel = watch_kernel
        self._resync = resync_interval
        self._snapshot = Inventory()
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitors: list[UdevMonitor | LinkMonitor] = []
        self.ready = threading.Event()
        self.scans = 0
        self.refreshes = 0  # partial: only the VFs events named
        self.ignored_events = 0
        self.last_change = 0.0
        # Netdevs of PFs and VFs: current names, and every index ever seen
        # (a VF in a pod keeps its index and may come back under it), with
        # the VF it belonged to (None for a PF).
        self._names: frozenset[str] = frozenset()
        self._vf_addresses: frozenset[str] = frozenset()
        self._indexes: dict[int, str | None] = {}
        # What the next pass must read, under _lock: everything, or these VFs.
        self._full = False
        self._vfs_due: set[str] = set()

    # -- InventorySource -----------------------------------------------------

    def snapshot(self) -> Inventory:
        return self._snapshot

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subs.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subs:
                    self._subs.remove(callback)

        return unsubscribe

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> LiveInventory:
        if self._watch_kernel:
            self._monitors = [UdevMonitor(self.notify).start(), LinkMonitor(self.notify).start()]
        self.rescan()
        self.ready.set()
        self._thread = threading.Thread(target=self._run, name="inventory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        for m in self._monitors:
            m.stop()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def notify(self, event: HostEvent | None = None) -> None:
        """Mark dirty when the event may change what sysfs says of a PF or VF."""
        if event is not None and not self._concerns(event):
            self.ignored_events += 1
            return
        vf = self._vf_of(event)
        with self._lock:
            if vf is None:
                self._full = True
            else:
                self._vfs_due.add(vf)
        self._dirty.set()

    def _vf_of(self, ev: HostEvent | None) -> str | None:
        """The VF whose netdev alone the event is about, if it is one we know
        by index. An index is never reused while the host netns lives, so it
        names one VF for good; a name can pass to another netdev, and an
        unknown index is a netdev we have not seen: both need a full scan."""
        if ev is None:
            return None
        if ev.source == "sim":
            # The simulator's own word that one VF's netdev entry changed.
            known = ev.action in ("change", "move") and ev.name in self._vf_addresses
            return ev.name if known else None
        if ev.subsystem != "net" or ev.action == "overrun" or not ev.index:
            return None
        return self._indexes.get(ev.index)

    def _concerns(self, ev: HostEvent) -> bool:
        """On a busy node other netdevs (pods' veths, bridges, tunnels) come
        and go all the time, and a full scan costs tens of ms: only events
        about a netdev we know (by index or name) or one backed by a device
        (a VF's netdev appearing or coming home) count. PCI, vfio and
        simulator events always do."""
        if ev.subsystem != "net" or ev.action == "overrun":
            return True
        if ev.name in self._names or ev.index in self._indexes:
            return True
        return ev.action in ("add", "newlink", "move") and _device_backed(
            self.paths.class_net, ev.name
        )

    def rescan(self) -> Inventory:
        fresh = scan(self.paths)
        self.scans += 1
        with self._lock:
            old = self._snapshot
            if fresh.pfs == old.pfs and fresh.missing_dev_nodes == old.missing_dev_nodes:
                return old
            new, subs = self._install(old, fresh)
        return self._tell(new, subs)

    def refresh(self, addresses: set[str]) -> Inventory:
        """Re-read only these VFs, in place in the snapshot. A VF that is
        gone, or that the snapshot does not hold, needs a full rescan."""
        fns: dict[str, PciFunction] = {}
        for address in sorted(addresses):
            fn = read_function_if_present(self.paths, address)
            if fn is None:
                return self.rescan()
            fns[address] = fn
        self.refreshes += 1
        with self._lock:
            old = self._snapshot
            if not fns.keys() <= self._vf_addresses:  # learnt from this snapshot
                new = None
            else:
                fresh = replace(
                    old, pfs=tuple(_with_functions(self.paths, pf, fns) for pf in old.pfs)
                )
                if fresh.pfs == old.pfs:
                    return old
                new, subs = self._install(old, fresh)
        return self.rescan() if new is None else self._tell(new, subs)

    def _install(self, old: Inventory, fresh: Inventory) -> tuple[Inventory, list[Subscriber]]:
        """Make ``fresh`` the snapshot; called under _lock."""
        new = replace(fresh, generation=old.generation + 1)
        self._snapshot = new
        self._learn_netdevs(new)
        return new, list(self._subs)

    def _tell(self, new: Inventory, subs: list[Subscriber]) -> Inventory:
        self.last_change = time.monotonic()
        for cb in subs:
            try:
                cb(new)
            except Exception:
                log.exception("inventory subscriber failed")
        return new

    def _learn_netdevs(self, inv: Inventory) -> None:
        names: set[str] = set()
        vfs: set[str] = set()
        for pf in inv.pfs:
            vfs.update(v.address for v in pf.vfs)
            for fn, vf in [(pf.fn, None), *((v.fn, v.address) for v in pf.vfs)]:
                if fn.netdev is not None:
                    names.add(fn.netdev.name)
                    if fn.netdev.ifindex:
                        self._indexes[fn.netdev.ifindex] = vf
        self._names = frozenset(names)
        self._vf_addresses = frozenset(vfs)

    def _run(self) -> None:
        # Events drive the scans; the periodic one is a safety net for an
        # event lost without an overrun. At 256 VFs a scan holds the
        # interpreter for 25-80 ms, which every 10 s showed up in the policy
        # path's p99 and as the largest share of an idle agent's CPU.
        while not self._stop.is_set():
            triggered = self._dirty.wait(timeout=self._resync)
            if self._stop.is_set():
                return
            if triggered:
                time.sleep(self.COALESCE_S)
                self._dirty.clear()
            with self._lock:
                full, vfs = self._full or not triggered, self._vfs_due
                self._full, self._vfs_due = False, set()
            try:
                if full:
                    self.rescan()
                elif vfs:
                    self.refresh(vfs)
            except Exception:
                log.exception("inventory rescan failed")


def _device_backed(class_net: Path, name: str) -> bool:
    if not name or "/" in name or name in (".", ".."):
        return False
    return os.path.exists(os.path.join(class_net, name, "device"))


def _with_functions(paths: HostPaths, pf: PF, fns: dict[str, PciFunction]) -> PF:
    if not any(vf.address in fns for vf in pf.vfs):
        return pf
    vfs = tuple(
        vf if vf.address not in fns else _with_function(paths, vf, fns[vf.address]) for vf in pf.vfs
    )
    return replace(pf, vfs=vfs)


def _with_function(paths: HostPaths, vf: VF, fn: PciFunction) -> VF:
    return vf if fn == vf.fn else with_vfio_node(paths, replace(vf, fn=fn))
