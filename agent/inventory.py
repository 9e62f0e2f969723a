"""The live inventory: sysfs scans triggered by udev, rtnetlink and simulator
events, published as immutable snapshots to subscribers.

Events only mark the inventory dirty; one worker rescans after a short
coalescing delay, so a burst (64 VFs appearing) costs one or two scans, and
subscribers hear only about snapshots that actually differ.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from nicwarden.agent.host.discovery import scan
from nicwarden.agent.host.events import HostEvent, LinkMonitor, UdevMonitor
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.model import Inventory

log = logging.getLogger(__name__)

Subscriber = Callable[[Inventory], None]


class LiveInventory:
    COALESCE_S = 0.05

    def __init__(
        self,
        paths: HostPaths,
        *,
        watch_kernel: bool = True,
        resync_interval: float = 10.0,
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
        self.last_change = 0.0

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
        """Mark dirty; any host event may change what sysfs says."""
        self._dirty.set()

    def rescan(self) -> Inventory:
        fresh = scan(self.paths)
        self.scans += 1
        with self._lock:
            old = self._snapshot
            if fresh.pfs == old.pfs and fresh.missing_dev_nodes == old.missing_dev_nodes:
                return old
            new = replace(fresh, generation=old.generation + 1)
            self._snapshot = new
            subs = list(self._subs)
        self.last_change = time.monotonic()
        for cb in subs:
            try:
                cb(new)
            except Exception:
                log.exception("inventory subscriber failed")
        return new

    def _run(self) -> None:
        while not self._stop.is_set():
            triggered = self._dirty.wait(timeout=self._resync)
            if self._stop.is_set():
                return
            if triggered:
                time.sleep(self.COALESCE_S)
                self._dirty.clear()
            try:
                self.rescan()
            except Exception:
                log.exception("inventory rescan failed")
