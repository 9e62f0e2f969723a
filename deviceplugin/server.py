"""One pool's DevicePlugin gRPC server on its own unix socket.

The server owns the socket's lifetime and the ListAndWatch streams; what the
pool contains comes from outside through :meth:`PoolServer.update` (and, for
Allocate, from a ``fresh_state`` hook that re-reads the inventory).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc

from nicwarden.agent.api_status import grpc_code
from nicwarden.agent.errors import NicwardenError
from nicwarden.agent.host.paths import HostPaths
from nicwarden.deviceplugin.allocate import allocate
from nicwarden.deviceplugin.naming import socket_name
from nicwarden.deviceplugin.preferred import Placement, preferred_allocation
from nicwarden.deviceplugin.rpc import device_plugin_handler, unix_target
from nicwarden.deviceplugin.sources import AllocationRecorder
from nicwarden.deviceplugin.state import PoolState, WireDevice
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2

log = logging.getLogger(__name__)

R = TypeVar("R")
FileIdentity = tuple[int, int, int]
# (resource, seconds, error kind or None) after each Allocate: metrics.
AllocateObserver = Callable[[str, float, "str | None"], None]

# A stream wakes at least this often to notice a vanished client even if the
# termination callback was missed.
_STREAM_POLL_S = 1.0
# Shutdown waits this long for open streams to take the empty farewell list.
_FAREWELL_WAIT_S = 2.0
_STOP_GRACE_S = 1.0


def file_identity(path: Path) -> FileIdentity | None:
    """(device, inode, ctime): changes when the file is replaced, even if the
    filesystem hands the new file the old inode number."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def device_message(wire: WireDevice) -> api_pb2.Device:
    device_id, health, numa = wire
    msg = api_pb2.Device(ID=device_id, health=health)
    if numa is not None:
        msg.topology.nodes.add(ID=numa)
    return msg


class PoolServer:
    def __init__(
        self,
        state: PoolState,
        *,
        kubelet_dir: Path,
        paths: HostPaths,
        device_info_dir: Path,
        recorder: AllocationRecorder | None = None,
        fresh_state: Callable[[], PoolState] | None = None,
        max_workers: int = 4,
        on_allocate: AllocateObserver | None = None,
    ) -> None:
        self.config = state.config
        self.socket_path = kubelet_dir / socket_name(state.config.name)
        self._paths = paths
        self._device_info_dir = device_info_dir
        self._recorder = recorder
        self._fresh_state = fresh_state
        self._max_workers = max_workers
        self._on_allocate = on_allocate
        self._cond = threading.Condition()
        self._state = state
        self._version = 0
        self._closing = False
        self._farewell = False  # closing streams send an empty list first
        self._sent: dict[int, int] = {}  # open stream id -> last version it sent
        self._stream_ids = itertools.count()
        self._server: grpc.Server | None = None
        self._socket_identity: FileIdentity | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        unix_target(self.socket_path)  # ValueError on a path too long for sun_path
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a previous run
        with self._cond:
            self._closing = self._farewell = False
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        server.add_generic_rpc_handlers((device_plugin_handler(self),))
        if server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise OSError(f"cannot listen on {self.socket_path}")
        server.start()
        try:
            # Root-only like every agent socket. Between bind and chmod the
            # umask decides; the kubelet directory's own mode guards that instant.
            os.chmod(self.socket_path, 0o600)
        except OSError:
            server.stop(0)  # e.g. kubelet wiped the directory just now: retried later
            raise
        self._server = server
        self._socket_identity = file_identity(self.socket_path)
        log.info("device plugin %s serving on %s", self.config.resource, self.socket_path)

    def stop(self, *, farewell: bool) -> None:
        """Stop serving. With ``farewell``, open streams first get an empty
        device list so kubelet stops offering the devices at once (instead
        of after its own grace period)."""
        with self._cond:
            self._closing = True
            self._farewell = farewell
            self._version += 1
            target = self._version
            self._cond.notify_all()
            if farewell:
                self._cond.wait_for(
                    lambda: all(v >= target for v in self._sent.values()), timeout=_FAREWELL_WAIT_S
                )
        if self._server is not None:
            self._server.stop(_STOP_GRACE_S).wait()
            self._server = None
        # Only our own socket: if kubelet already replaced the directory's
        # contents, a file with our name is not ours to delete.
        if (
            self._socket_identity is not None
            and file_identity(self.socket_path) == self._socket_identity
        ):
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._socket_identity = None

    def socket_replaced(self) -> bool:
        """True when our socket file is gone or is no longer the one we made
        (kubelet removes plugin sockets when it restarts)."""
        return self._server is None or file_identity(self.socket_path) != self._socket_identity

    @property
    def serving(self) -> bool:
        return self._server is not None

    # -- state -----------------------------------------------------------

    @property
    def state(self) -> PoolState:
        with self._cond:
            return self._state

    def update(self, state: PoolState) -> bool:
        """Adopt ``state``; wake the streams only when kubelet's view changes."""
        with self._cond:
            changed = state.wire != self._state.wire
            self._state = state
            if changed:
                self._version += 1
                self._cond.notify_all()
            return changed

    def open_streams(self) -> int:
        with self._cond:
            return len(self._sent)

    # -- DevicePlugin service ---------------------------------------------

    def get_device_plugin_options(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def list_and_watch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        stream = next(self._stream_ids)
        context.add_callback(self._wake)
        with self._cond:
            version, wire, closing = self._version, self._wire(), self._closing
            self._sent[stream] = -1
        try:
            while True:
                yield api_pb2.ListAndWatchResponse(devices=[device_message(w) for w in wire])
                # Reaching here means gRPC asked for the next message, so the
                # previous one has been handed to the transport.
                with self._cond:
                    self._sent[stream] = version
                    self._cond.notify_all()
                    if closing:
                        return
                    while self._version == version and not self._closing and context.is_active():
                        self._cond.wait(_STREAM_POLL_S)
                    if not context.is_active() or (self._closing and not self._farewell):
                        return
                    version, wire, closing = self._version, self._wire(), self._closing
        finally:
            with self._cond:
                self._sent.pop(stream, None)
                self._cond.notify_all()

    def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        def run() -> api_pb2.PreferredAllocationResponse:
            state = self._current_state()
            placement = {
                d.id: Placement(d.device.numa_node, d.device.pf.address) for d in state.devices
            }
            response = api_pb2.PreferredAllocationResponse()
            for req in request.container_requests:
                ids = preferred_allocation(
                    list(req.available_deviceIDs),
                    list(req.must_include_deviceIDs),
                    req.allocation_size,
                    placement,
                )
                response.container_responses.add(deviceIDs=ids)
            return response

        return _translate_errors(context, "GetPreferredAllocation", run)

    def allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        def run() -> api_pb2.AllocateResponse:
            return allocate(
                self._current_state(),
                request,
                paths=self._paths,
                device_info_dir=self._device_info_dir,
                recorder=self._recorder,
            )

        if self._on_allocate is None:
            return _translate_errors(context, "Allocate", run)
        failed: list[str] = []

        def observed() -> api_pb2.AllocateResponse:
            try:
                return run()
            except NicwardenError as err:
                failed.append(err.kind)
                raise
            except Exception:
                failed.append("internal")
                raise

        start = time.perf_counter()
        try:
            return _translate_errors(context, "Allocate", observed)
        finally:
            seconds = time.perf_counter() - start
            self._on_allocate(self.config.resource, seconds, failed[0] if failed else None)

    def pre_start_container(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    # -- helpers -----------------------------------------------------------

    def _current_state(self) -> PoolState:
        return self._fresh_state() if self._fresh_state is not None else self.state

    def _wire(self) -> tuple[WireDevice, ...]:
        return () if self._farewell else self._state.wire

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _translate_errors(context: grpc.ServicerContext, method: str, call: Callable[[], R]) -> R:
    """Our exceptions become the gRPC status agent/api_status.py names for their kind."""
    try:
        return call()
    except NicwardenError as err:
        log.warning("%s refused: %s", method, err)
        context.abort(grpc_code(err), str(err))
    except Exception as err:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method}: {err}")
