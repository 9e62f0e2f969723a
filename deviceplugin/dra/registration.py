"""The plugin watcher's side of registration: the ``Registration`` service we
serve on ``<registry dir>/<driver>-reg.sock``.

kubelet finds the socket in its registry directory, asks GetInfo (what we
are and where our DRA socket is), validates, and tells us the outcome with
NotifyRegistrationStatus. Removing the socket deregisters us, so the plugin
re-creates it whenever it disappears (see ``plugin.py``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from nicwarden.deviceplugin.dra.service import SUPPORTED_VERSIONS
from nicwarden.proto.pluginregistration.v1 import api_pb2

log = logging.getLogger(__name__)

REGISTRATION_SERVICE = "pluginregistration.Registration"
PLUGIN_TYPE = "DRAPlugin"


@dataclass(frozen=True)
class RegistrationState:
    registered: bool = False
    error: str = ""
    notifications: int = 0  # how many NotifyRegistrationStatus calls arrived


class RegistrationService:
    def __init__(self, driver: str, endpoint: Path) -> None:
        if not endpoint.is_absolute():
            raise ValueError(f"the DRA endpoint must be an absolute path, got {endpoint}")
        self.driver = driver
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._state = RegistrationState()

    @property
    def state(self) -> RegistrationState:
        with self._lock:
            return self._state

    def get_info(
        self, request: api_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> api_pb2.PluginInfo:
        return api_pb2.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver,
            endpoint=str(self.endpoint),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def notify_registration_status(
        self, request: api_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> api_pb2.RegistrationStatusResponse:
        with self._lock:
            self._state = RegistrationState(
                request.plugin_registered, request.error, self._state.notifications + 1
            )
        if request.plugin_registered:
            log.info("kubelet registered DRA driver %s (endpoint %s)", self.driver, self.endpoint)
        else:
            log.error("kubelet refused DRA driver %s: %s", self.driver, request.error)
        return api_pb2.RegistrationStatusResponse()

    def forget(self) -> None:
        """Our socket was replaced: kubelet no longer knows us until it asks again."""
        with self._lock:
            self._state = RegistrationState(notifications=self._state.notifications)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary = grpc.unary_unary_rpc_method_handler
        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "GetInfo": unary(
                self.get_info,
                request_deserializer=api_pb2.InfoRequest.FromString,
                response_serializer=api_pb2.PluginInfo.SerializeToString,
            ),
            "NotifyRegistrationStatus": unary(
                self.notify_registration_status,
                request_deserializer=api_pb2.RegistrationStatus.FromString,
                response_serializer=api_pb2.RegistrationStatusResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(REGISTRATION_SERVICE, methods)
