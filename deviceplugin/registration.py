"""Registering a pool with kubelet, with retry bookkeeping.

Kubelet may be absent (not started yet), may refuse (it validates the version
and resource name, and rejects a name another live plugin holds), or may
restart and forget us. Each pool keeps its own state so one refused pool does
not hold back the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from nicwarden.agent.backoff import Backoff
from nicwarden.deviceplugin.rpc import API_VERSION, register
from nicwarden.deviceplugin.server import FileIdentity
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2

log = logging.getLogger(__name__)


def register_request(resource: str, endpoint: str) -> api_pb2.RegisterRequest:
    return api_pb2.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource,
        options=api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        ),
    )


@dataclass
class Registration:
    """One pool's standing with kubelet."""

    backoff: Backoff  # this pool's own: one refused pool must not slow the others
    registered: bool = False
    last_error: str | None = None
    next_attempt: float = 0.0  # monotonic time; 0 = now
    kubelet_identity: FileIdentity | None = None  # kubelet.sock at the last attempt

    @property
    def failures(self) -> int:
        return self.backoff.failures

    def due(self, now: float) -> bool:
        return not self.registered and now >= self.next_attempt

    def reset(self) -> None:
        """Kubelet (or our socket) was replaced: register again, right away."""
        self.registered = False
        self.backoff.reset()
        self.next_attempt = 0.0

    def attempt(
        self,
        kubelet_socket: Path,
        request: api_pb2.RegisterRequest,
        *,
        now: float,
        kubelet_identity: FileIdentity | None,
        timeout: float,
    ) -> bool:
        self.kubelet_identity = kubelet_identity
        try:
            register(kubelet_socket, request, timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            detail = (
                f"{code.name}: {err.details()}" if isinstance(err, grpc.Call) and code else str(err)
            )
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._failed(now, f"cannot reach kubelet at {kubelet_socket}: {detail}")
            else:
                self._failed(
                    now, f"kubelet refused registration of {request.resource_name}: {detail}"
                )
            return False
        except OSError as err:
            self._failed(now, f"cannot reach kubelet at {kubelet_socket}: {err}")
            return False
        self.registered = True
        self.last_error = None
        self.backoff.reset()
        log.info(
            "registered %s with kubelet (endpoint %s)", request.resource_name, request.endpoint
        )
        return True

    def _failed(self, now: float, message: str) -> None:
        delay = self.backoff.next_delay()
        self.registered = False
        self.last_error = message
        self.next_attempt = now + delay
        log.warning("%s; retrying in %.1fs", message, delay)
