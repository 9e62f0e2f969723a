"""The DRAPlugin gRPC service, served as v1 and v1beta1 on one socket.

Both versions carry the same messages (v1 adds ``share_id``, which we never
set), so one :class:`Preparer` answers both and each version only converts.
Handlers are bound by full method name, as the device plugin's are (the
generated ``*_pb2_grpc`` modules are untyped); the test kubelet uses the
generated stubs, so a name that drifted from the proto fails the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from nicwarden.deviceplugin.dra.claims import ClaimRef
from nicwarden.deviceplugin.dra.prepare import Outcome
from nicwarden.proto.dra.v1 import api_pb2 as v1
from nicwarden.proto.dra.v1beta1 import api_pb2 as v1beta1

log = logging.getLogger(__name__)

V1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
V1BETA1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
# What GetInfo lists: kubelet takes the first it supports.
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _ClaimsResponse(Protocol):
    """Either version's response: a map of claim UID to its answer."""

    @property
    def claims(self) -> Any: ...


AnyResp = TypeVar("AnyResp", bound=_ClaimsResponse)


class ClaimPreparer(Protocol):
    def prepare(self, refs: list[ClaimRef]) -> dict[str, Outcome]: ...

    def unprepare(self, refs: list[ClaimRef]) -> dict[str, str]: ...


def _refs(claims: Any) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.name, c.uid) for c in claims]


def _guard(method: str, call: Callable[[Req], Resp]) -> Callable[[Req, grpc.ServicerContext], Resp]:
    """Per-claim failures travel in the response; anything else means a bug,
    and a gRPC error makes kubelet ignore the whole answer and retry."""

    def handle(request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return call(request)
        except Exception as err:
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"{method}: {err}")

    return handle


class DraService:
    def __init__(self, preparer: ClaimPreparer) -> None:
        self._preparer = preparer

    # Both versions' messages have the same fields, so one body fills either;
    # each version's method only names its own message types.

    def _prepare(self, request: Any, response: AnyResp) -> AnyResp:
        claims = response.claims
        for uid, outcome in self._preparer.prepare(_refs(request.claims)).items():
            entry = claims[uid]
            if outcome.error:
                entry.error = outcome.error
                continue
            for d in outcome.devices:
                entry.devices.add(
                    request_names=[d.request],
                    pool_name=d.pool,
                    device_name=d.device,
                    cdi_device_ids=list(d.cdi_ids),
                )
        return response

    def _unprepare(self, request: Any, response: AnyResp) -> AnyResp:
        claims = response.claims
        for uid, error in self._preparer.unprepare(_refs(request.claims)).items():
            claims[uid].error = error
        return response

    def prepare_v1(
        self, request: v1.NodePrepareResourcesRequest
    ) -> v1.NodePrepareResourcesResponse:
        return self._prepare(request, v1.NodePrepareResourcesResponse())

    def unprepare_v1(
        self, request: v1.NodeUnprepareResourcesRequest
    ) -> v1.NodeUnprepareResourcesResponse:
        return self._unprepare(request, v1.NodeUnprepareResourcesResponse())

    def prepare_v1beta1(
        self, request: v1beta1.NodePrepareResourcesRequest
    ) -> v1beta1.NodePrepareResourcesResponse:
        return self._prepare(request, v1beta1.NodePrepareResourcesResponse())

    def unprepare_v1beta1(
        self, request: v1beta1.NodeUnprepareResourcesRequest
    ) -> v1beta1.NodeUnprepareResourcesResponse:
        return self._unprepare(request, v1beta1.NodeUnprepareResourcesResponse())

    # wiring -----------------------------------------------------------------

    def handlers(self) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
        unary = grpc.unary_unary_rpc_method_handler
        out = []
        for service, pb, prepare, unprepare in (
            (V1_SERVICE, v1, self.prepare_v1, self.unprepare_v1),
            (V1BETA1_SERVICE, v1beta1, self.prepare_v1beta1, self.unprepare_v1beta1),
        ):
            methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
                "NodePrepareResources": unary(
                    _guard("NodePrepareResources", prepare),
                    request_deserializer=pb.NodePrepareResourcesRequest.FromString,
                    response_serializer=pb.NodePrepareResourcesResponse.SerializeToString,
                ),
                "NodeUnprepareResources": unary(
                    _guard("NodeUnprepareResources", unprepare),
                    request_deserializer=pb.NodeUnprepareResourcesRequest.FromString,
                    response_serializer=pb.NodeUnprepareResourcesResponse.SerializeToString,
                ),
            }
            out.append(grpc.method_handlers_generic_handler(service, methods))
        return tuple(out)
