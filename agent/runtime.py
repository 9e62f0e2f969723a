"""The agent's parts wired together, in start order, and torn down in reverse.

Kept apart from the daemon's process concerns (signals, logging, flags) so
tests can run a whole agent in-process."""

from __future__ import annotations

import logging
import socket as pysocket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicwarden.agent.config import AgentConfig, SimShape
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import KernelSysfsWriter, SysfsWriter, check_root
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.sim import SimulatedNode, parse_spec
from nicwarden.agent.store import Store

log = logging.getLogger(__name__)


class AgentRuntime:
    def __init__(self, config: AgentConfig, *, sim_prefix: str = "nws") -> None:
        self.config = config
        self.sim_prefix = sim_prefix
        self.node_name = pysocket.gethostname()
        self.started_at = time.time()
        self.metrics = Metrics()
        self.sim: SimulatedNode | None = None
        self.paths = HostPaths(sys=config.sysfs_root, dev=config.dev_root)
        self.writer: SysfsWriter = KernelSysfsWriter()
        self.store: Store | None = None
        self.inventory = LiveInventory(self.paths)
        self._stops: list[Callable[[], None]] = []

    @property
    def simulated(self) -> bool:
        return self.sim is not None

    def start(self) -> AgentRuntime:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        self.store = Store.open(cfg.state_dir)
        self._stops.append(self.store.close)
        if cfg.simulate is not None:
            spec = parse_spec(
                str(cfg.simulate) if isinstance(cfg.simulate, SimShape) else cfg.simulate
            )
            self.sim = SimulatedNode(spec, prefix=self.sim_prefix).start()
            self._stops.append(self.sim.stop)
            self.paths, self.writer = self.sim.paths, self.sim
            log.info("simulated node up", extra={"root": str(self.sim.root), "pfs": len(spec.pfs)})
        else:
            check_root(self.paths)
        self.inventory = LiveInventory(self.paths)
        self.inventory.subscribe(self.metrics.inventory)
        self.inventory.start()
        self._stops.append(self.inventory.stop)
        if self.sim is not None:
            self.sim.subscribe(self.inventory.notify)
        self.metrics.inventory(self.inventory.snapshot())
        inv = self.inventory.snapshot()
        log.info("inventory ready", extra={"pfs": len(inv.pfs), "vfs": len(inv.vfs())})

    def stop(self) -> None:
        while self._stops:
            fn = self._stops.pop()
            try:
                fn()
            except Exception:
                log.exception("shutdown step failed")

    def health(self) -> list[tuple[str, bool, str]]:
        inv = self.inventory.snapshot()
        out = [
            (
                "inventory",
                self.inventory.ready.is_set(),
                f"{len(inv.pfs)} PFs, {len(inv.vfs())} VFs, generation {inv.generation}",
            ),
            ("store", self.store is not None, str(self.config.state_dir)),
        ]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "simulated": self.simulated,
            "sysfs": str(self.paths.sys),
            "dev": str(self.paths.dev),
        }


def state_lock_path(state_dir: Path) -> Path:
    return state_dir / "agent.lock"
