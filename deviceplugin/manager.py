"""The device plugin as a whole: one gRPC server per pool, kept in step with
the inventory, the pool config and kubelet's restarts.

Threads and locks:
- inventory callbacks (the agent's thread) and Allocate calls (gRPC threads)
  only take ``_lock``, which guards the snapshot, the configs and the pool
  states; pushing a state to a server is cheap and never blocks on I/O;
- a watch thread, ``apply_config`` and ``stop`` take ``_life`` to start,
  restart and register servers. Registration talks to kubelet, which calls
  back into our servers, so it never runs under ``_lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from nicwarden.agent.backoff import Backoff, BackoffPolicy
from nicwarden.agent.errors import NotFound
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.model import PF, VF, Inventory
from nicwarden.deviceplugin.config import ConfigIssue, PoolConfig, parse_resource_list
from nicwarden.deviceplugin.devinfo import DEFAULT_DEVICE_INFO_DIR, remove_device_infos
from nicwarden.deviceplugin.naming import socket_name
from nicwarden.deviceplugin.registration import Registration, register_request
from nicwarden.deviceplugin.rpc import DEFAULT_KUBELET_DIR, KUBELET_SOCKET_NAME
from nicwarden.deviceplugin.server import (
    AllocateObserver,
    FileIdentity,
    PoolServer,
    file_identity,
)
from nicwarden.deviceplugin.sources import AllocationRecorder, InventorySource
from nicwarden.deviceplugin.state import PoolState, evaluate

log = logging.getLogger(__name__)

DEFAULT_RESOURCE_PREFIX = "nicwarden.io"


@dataclass(frozen=True)
class DeviceView:
    id: str
    health: str
    problem: str | None
    numa_node: int
    pf_address: str
    pf_name: str | None
    driver: str | None
    iommu_group: int | None


@dataclass(frozen=True)
class PoolStatus:
    """What ``nicwardenctl pools`` shows for one pool."""

    name: str
    resource: str
    socket: Path
    device_count: int
    healthy_count: int
    devices: tuple[DeviceView, ...]
    registered: bool
    last_error: str | None


@dataclass
class _Pool:
    server: PoolServer
    registration: Registration


class DevicePluginManager:
    def __init__(
        self,
        source: InventorySource,
        resource_list: object,
        *,
        resource_prefix: str = DEFAULT_RESOURCE_PREFIX,
        paths: HostPaths | None = None,
        kubelet_dir: Path = DEFAULT_KUBELET_DIR,
        device_info_dir: Path = DEFAULT_DEVICE_INFO_DIR,
        recorder: AllocationRecorder | None = None,
        poll_interval: float = 0.5,
        register_timeout: float = 3.0,
        backoff: BackoffPolicy | None = None,
        blocked: Callable[[], Mapping[str, str]] | None = None,
        exclude: Callable[[VF, PF], bool] | None = None,
        on_allocate: AllocateObserver | None = None,
    ) -> None:
        self._source = source
        self._prefix = resource_prefix
        self._paths = paths or HostPaths()
        self._kubelet_dir = kubelet_dir
        self._kubelet_socket = kubelet_dir / KUBELET_SOCKET_NAME
        self._device_info_dir = device_info_dir
        self._recorder = recorder
        self._poll_interval = poll_interval
        self._register_timeout = register_timeout
        self._backoff = backoff or BackoffPolicy()
        # Devices the agent holds back from pods (out of place, unexplained).
        self._blocked = blocked
        # VFs another front-end (DRA) offers: never in a pool, so each VF
        # is offered by exactly one of them.
        self._exclude = exclude
        self._on_allocate = on_allocate  # Allocate latency, for metrics
        self._lock = threading.RLock()
        self._life = threading.RLock()
        self._pools: dict[str, _Pool] = {}
        parsed = parse_resource_list(resource_list, resource_prefix)
        self._configs: tuple[PoolConfig, ...] = parsed.pools
        self._errors: tuple[ConfigIssue, ...] = parsed.errors
        self._inventory: Inventory | None = None
        self._states: dict[str, PoolState] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        for issue in self._errors:
            log.error("device plugin pool skipped: %s", issue)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        with self._life:
            if self._watcher is not None:
                raise RuntimeError("device plugin manager already started")
            self._kubelet_dir.mkdir(parents=True, exist_ok=True)
            # Subscribe before the first snapshot so no change falls between them.
            self._unsubscribe = self._source.subscribe(self._on_inventory)
            with self._lock:
                self._inventory = self._source.snapshot()
                self._states = self._evaluate()
            for config in self._configs:
                self._add_pool(config)
            self._stopping.clear()
            self._watcher = threading.Thread(
                target=self._watch, name="deviceplugin-watch", daemon=True
            )
            self._watcher.start()

    def stop(self) -> None:
        """Empty list to open streams, stop servers, remove sockets and device-info files."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._life:
            self._watcher = None
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            for name in list(self._pools):
                self._remove_pool(name)

    def __enter__(self) -> DevicePluginManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def apply_config(self, resource_list: object) -> tuple[ConfigIssue, ...]:
        """Adopt a re-read ``resourceList``: unchanged pools keep serving
        untouched; changed ones are restarted, removed ones stopped."""
        parsed = parse_resource_list(resource_list, self._prefix)
        for issue in parsed.errors:
            log.error("device plugin pool skipped: %s", issue)
        with self._life:
            old = {c.name: c for c in self._configs}
            new = {c.name: c for c in parsed.pools}
            with self._lock:
                self._configs = parsed.pools
                self._errors = parsed.errors
                self._states = self._evaluate()
            if self._watcher is None:  # not started: nothing is serving yet
                return parsed.errors
            for name, config in old.items():
                if new.get(name) != config:
                    self._remove_pool(name)
            for name, config in new.items():
                if name not in self._pools:
                    self._add_pool(config)
            self._push()
        return parsed.errors

    # -- queries -----------------------------------------------------------

    def config_errors(self) -> tuple[ConfigIssue, ...]:
        with self._lock:
            return self._errors

    def pools(self) -> list[PoolStatus]:
        with self._lock:
            configs = self._configs
            states = dict(self._states)
            pools = dict(self._pools)
        out: list[PoolStatus] = []
        for config in configs:
            state = states.get(config.name, PoolState(config))
            pool = pools.get(config.name)
            out.append(
                PoolStatus(
                    name=config.name,
                    resource=config.resource,
                    socket=self._kubelet_dir / socket_name(config.name),
                    device_count=len(state.devices),
                    healthy_count=state.healthy_count,
                    devices=tuple(
                        DeviceView(
                            id=d.id,
                            health=d.health,
                            problem=d.problem,
                            numa_node=d.device.numa_node,
                            pf_address=d.device.pf.address,
                            pf_name=d.device.pf.name,
                            driver=d.device.vf.fn.driver,
                            iommu_group=d.device.vf.fn.iommu_group,
                        )
                        for d in state.devices
                    ),
                    registered=pool is not None and pool.registration.registered,
                    last_error=None if pool is None else pool.registration.last_error,
                )
            )
        return out

    # -- inventory ---------------------------------------------------------

    def _on_inventory(self, inventory: Inventory) -> None:
        with self._lock:
            self._inventory = inventory
            self._states = self._evaluate()
            self._push()

    def _state_for(self, name: str) -> PoolState:
        """The pool as of the source's latest snapshot (Allocate must see the
        VF's current driver and IOMMU group, not the last pushed ones)."""
        inventory = self._source.snapshot()
        with self._lock:
            # Usually the very object already evaluated; equality is the
            # fallback for sources that build a new snapshot per call.
            if inventory is not self._inventory and inventory != self._inventory:
                self._inventory = inventory
                self._states = self._evaluate()
                self._push()
            config = next((c for c in self._configs if c.name == name), None)
            if config is None:  # removed while the call was in flight
                raise NotFound(f"pool {name} is no longer configured")
            return self._states.get(name, PoolState(config))

    def _evaluate(self) -> dict[str, PoolState]:
        if self._inventory is None:
            return {c.name: PoolState(c) for c in self._configs}
        blocked = self._blocked() if self._blocked is not None else None
        return evaluate(self._offerable(self._inventory), self._configs, blocked)

    def _offerable(self, inventory: Inventory) -> Inventory:
        exclude = self._exclude
        if exclude is None:
            return inventory
        pfs = tuple(
            replace(pf, vfs=tuple(vf for vf in pf.vfs if not exclude(vf, pf)))
            for pf in inventory.pfs
        )
        return replace(inventory, pfs=pfs)

    def refresh(self) -> None:
        """Re-evaluate health now (the held-back set changed) and tell kubelet."""
        with self._lock:
            self._states = self._evaluate()
            self._push()

    def _push(self) -> None:
        with self._lock:
            for name, pool in self._pools.items():
                state = self._states.get(name)
                if state is not None and state.config == pool.server.config:
                    pool.server.update(state)

    # -- pools ---------------------------------------------------------------

    def _add_pool(self, config: PoolConfig) -> None:
        with self._lock:
            state = self._states.get(config.name, PoolState(config))
        server = PoolServer(
            state,
            kubelet_dir=self._kubelet_dir,
            paths=self._paths,
            device_info_dir=self._device_info_dir,
            recorder=self._recorder,
            fresh_state=lambda: self._state_for(config.name),
            on_allocate=self._on_allocate,
        )
        pool = _Pool(server, Registration(Backoff(self._backoff)))
        try:
            server.start()
        except (OSError, RuntimeError, ValueError) as err:
            # Kept in the table so the watch loop retries and status shows why.
            pool.registration.last_error = f"cannot serve {server.socket_path}: {err}"
            log.error("%s", pool.registration.last_error)
        with self._lock:
            self._pools[config.name] = pool

    def _remove_pool(self, name: str) -> None:
        with self._lock:
            pool = self._pools.pop(name, None)
        if pool is None:
            return
        pool.server.stop(farewell=True)
        remove_device_infos(self._device_info_dir, pool.server.config.resource)
        log.info("device plugin %s stopped", pool.server.config.resource)

    # -- kubelet watch ---------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._life:
                    if self._stopping.is_set():
                        return
                    self._watch_once()
            except Exception:  # the loop must outlive any one bad iteration
                log.exception("device plugin watch iteration failed")
            self._stopping.wait(self._poll_interval)

    def _watch_once(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        kubelet = file_identity(self._kubelet_socket)
        for pool in pools:
            if self._stopping.is_set():
                return
            self._tend(pool, kubelet)

    def _tend(self, pool: _Pool, kubelet: FileIdentity | None) -> None:
        """Restart after a kubelet restart; register when due."""
        reg, server = pool.registration, pool.server
        # kubelet.sock replaced (kubelet restarted or went away) since we last
        # talked to it, or our own socket deleted (kubelet wipes the directory).
        kubelet_changed = reg.kubelet_identity is not None and kubelet != reg.kubelet_identity
        if kubelet_changed or server.socket_replaced():
            log.warning(
                "kubelet restarted or %s vanished: restarting %s",
                server.socket_path,
                server.config.resource,
            )
            server.stop(farewell=False)
            reg.reset()
            reg.kubelet_identity = kubelet
            try:
                server.start()
            except (OSError, RuntimeError, ValueError) as err:
                reg.last_error = f"cannot serve {server.socket_path}: {err}"
                log.error("%s", reg.last_error)
                return
        if kubelet is None:
            if not reg.registered:
                reg.last_error = f"waiting for kubelet at {self._kubelet_socket}"
            return
        now = time.monotonic()
        if reg.due(now):
            request = register_request(server.config.resource, server.socket_path.name)
            reg.attempt(
                self._kubelet_socket,
                request,
                now=now,
                kubelet_identity=kubelet,
                timeout=self._register_timeout,
            )
