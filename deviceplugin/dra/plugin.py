"""The DRA kubelet plugin: the DRA service on ``<plugins dir>/<driver>/dra.sock``
and the registration service on ``<registry dir>/<driver>-reg.sock``.

The DRA server starts first, so the endpoint GetInfo names already answers
when kubelet dials it. Each socket file is removed before listening (a stale
one from a previous run) and on stop, but only when it is still ours. A
watcher re-creates either socket when it vanishes or is replaced: removing
the registration socket deregisters the plugin, and kubelet's plugin watcher
registers it again as soon as the new socket appears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.model import InventorySource
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.dra.claims import ClaimReader
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.prepare import Preparer
from nicwarden.deviceplugin.dra.registration import RegistrationService, RegistrationState
from nicwarden.deviceplugin.dra.service import DraService
from nicwarden.deviceplugin.rpc import unix_target
from nicwarden.deviceplugin.server import FileIdentity, file_identity

log = logging.getLogger(__name__)

_STOP_GRACE_S = 1.0


class SocketServer:
    """One gRPC server on one unix socket it owns."""

    def __init__(
        self, path: Path, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]], workers: int
    ) -> None:
        self.path = path
        self._handlers = tuple(handlers)
        self._workers = workers
        self._server: grpc.Server | None = None
        self._identity: FileIdentity | None = None

    def start(self) -> None:
        unix_target(self.path)  # ValueError on a path too long for sun_path
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale, from a previous run
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers))
        server.add_generic_rpc_handlers(self._handlers)
        if server.add_insecure_port(f"unix:{self.path}") == 0:
            raise OSError(f"cannot listen on {self.path}")
        server.start()
        try:
            os.chmod(self.path, 0o600)  # kubelet runs as root; nobody else needs it
        except OSError:
            server.stop(0)
            raise
        self._server = server
        self._identity = file_identity(self.path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(_STOP_GRACE_S).wait()
            self._server = None
        # Only our own file: a replacement is someone else's.
        if self._identity is not None and file_identity(self.path) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._identity = None

    def replaced(self) -> bool:
        return self._server is None or file_identity(self.path) != self._identity


class DraPlugin:
    """What the agent starts when ``dra:`` is active."""

    def __init__(
        self,
        cfg: DraConfig,
        store: Store,
        devices_ctx: DeviceCtx,
        inventory: InventorySource,
        claim_reader: ClaimReader,
        node_name: str,
        *,
        poll_interval: float = 0.5,
        workers: int = 4,
    ) -> None:
        self.cfg = cfg
        # One inventory for lookups and for the binds' fresh scans.
        ctx = dataclasses.replace(devices_ctx, inventory=inventory)
        self.preparer = Preparer(cfg, store, ctx, claim_reader, node_name)
        self.registration = RegistrationService(cfg.driver_name, cfg.dra_socket.absolute())
        self._dra = SocketServer(cfg.dra_socket, DraService(self.preparer).handlers(), workers)
        self._reg = SocketServer(cfg.registration_socket, (self.registration.handler(),), 2)
        self._poll = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def set_config(self, cfg: DraConfig) -> None:
        """SIGHUP: new selectors for the next prepares (see Preparer.set_config)."""
        self.preparer.set_config(cfg)

    @property
    def registration_state(self) -> RegistrationState:
        return self.registration.state

    def start(self) -> None:
        restored = self.preparer.restore_specs()
        if restored:
            log.info("re-wrote %d prepared claims' CDI specs", restored)
        with self._lock:
            self._dra.start()
            try:
                self._reg.start()
            except BaseException:
                self._dra.stop()
                raise
            self._stopping.clear()
            self._thread = threading.Thread(target=self._watch, name="dra-sockets", daemon=True)
            self._thread.start()
        log.info(
            "DRA driver %s serving on %s, registering at %s",
            self.cfg.driver_name,
            self.cfg.dra_socket,
            self.cfg.registration_socket,
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            # Registration first: kubelet must stop calling before the endpoint goes.
            self._reg.stop()
            self._dra.stop()

    def check_sockets(self) -> None:
        """Re-create a socket that vanished or was replaced (the watcher
        calls this every poll interval)."""
        with self._lock:
            if self._stopping.is_set():
                return
            if self._dra.replaced():
                log.warning("DRA socket %s vanished; serving it again", self._dra.path)
                self._dra.stop()
                self._dra.start()
                # Make kubelet dial the new endpoint: register afresh.
                self._reg.stop()
            if self._reg.replaced():
                log.warning(
                    "registration socket %s vanished; re-creating it so kubelet registers us again",
                    self._reg.path,
                )
                self.registration.forget()
                self._reg.stop()
                self._reg.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll):
            try:
                self.check_sockets()
            except Exception:
                # Retried next round (e.g. the directory is being re-created).
                log.exception("cannot re-create the DRA plugin sockets")
