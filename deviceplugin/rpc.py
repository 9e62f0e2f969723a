"""The v1beta1 wire plumbing, typed.

Handlers are bound by full method name here (from the kubelet contract)
instead of through the generated ``*_pb2_grpc`` module, which is untyped; the
test kubelet uses the generated stubs, so a name that drifted from the proto
would fail the integration tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc

from nicwarden.proto.deviceplugin.v1beta1 import api_pb2

API_VERSION = "v1beta1"
DEVICE_PLUGIN_SERVICE = "v1beta1.DevicePlugin"
REGISTER_METHOD = "/v1beta1.Registration/Register"
DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET_NAME = "kubelet.sock"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# Channel options for a client that must not inherit another channel's
# connection state (see register()).
LOCAL_SUBCHANNELS = (("grpc.use_local_subchannel_pool", 1),)


class DevicePluginServicer(Protocol):
    def get_device_plugin_options(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions: ...

    def list_and_watch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]: ...

    def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse: ...

    def allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse: ...

    def pre_start_container(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse: ...


def device_plugin_handler(svc: DevicePluginServicer) -> grpc.GenericRpcHandler[Any, Any]:
    unary = grpc.unary_unary_rpc_method_handler
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetDevicePluginOptions": unary(
            svc.get_device_plugin_options,
            request_deserializer=api_pb2.Empty.FromString,
            response_serializer=api_pb2.DevicePluginOptions.SerializeToString,
        ),
        "ListAndWatch": grpc.unary_stream_rpc_method_handler(
            svc.list_and_watch,
            request_deserializer=api_pb2.Empty.FromString,
            response_serializer=api_pb2.ListAndWatchResponse.SerializeToString,
        ),
        "GetPreferredAllocation": unary(
            svc.get_preferred_allocation,
            request_deserializer=api_pb2.PreferredAllocationRequest.FromString,
            response_serializer=api_pb2.PreferredAllocationResponse.SerializeToString,
        ),
        "Allocate": unary(
            svc.allocate,
            request_deserializer=api_pb2.AllocateRequest.FromString,
            response_serializer=api_pb2.AllocateResponse.SerializeToString,
        ),
        "PreStartContainer": unary(
            svc.pre_start_container,
            request_deserializer=api_pb2.PreStartContainerRequest.FromString,
            response_serializer=api_pb2.PreStartContainerResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(DEVICE_PLUGIN_SERVICE, handlers)


def unix_target(path: Path) -> str:
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"unix socket path longer than {MAX_SOCKET_PATH} bytes: {path}")
    return f"unix://{path}"


def register(kubelet_socket: Path, request: api_pb2.RegisterRequest, timeout: float) -> None:
    """One Register call; raises grpc.RpcError when kubelet refuses or is absent."""
    # Its own subchannel: gRPC Python shares them between channels to one
    # target, and one left in backoff by an earlier kubelet would fail this
    # call at once with that kubelet's stale error.
    channel = grpc.insecure_channel(unix_target(kubelet_socket), options=LOCAL_SUBCHANNELS)
    try:
        call = channel.unary_unary(
            REGISTER_METHOD,
            request_serializer=api_pb2.RegisterRequest.SerializeToString,
            response_deserializer=api_pb2.Empty.FromString,
        )
        call(request, timeout=timeout)
    finally:
        channel.close()
