"""The gRPC ``nicwarden.v1.Agent`` service: a thin translation between protobuf
messages and the agent's objects. Errors from the agent's vocabulary become
gRPC statuses through the one table in agent/errors.py."""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import grpc

from nicwarden.agent import __version__, dpdk, sriov
from nicwarden.agent.attach import AttachService
from nicwarden.agent.dpdk import DeviceCtx
from nicwarden.agent.errors import (
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
    mapping_for,
)
from nicwarden.agent.health import pf_problem, unhealthy_reason
from nicwarden.agent.host.vfnetlink import VfSettings
from nicwarden.agent.model import PF, VF, Inventory
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Attachment as StoredAttachment
from nicwarden.agent.store import Store
from nicwarden.cni.dispatch import handle_invocation
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
ERROR_KIND_KEY = "nicwarden-error-kind"

F = TypeVar("F", bound=Callable[..., Any])


def rpc(fn: F) -> F:
    """Turn agent errors into gRPC statuses; count every call."""

    @functools.wraps(fn)
    def wrapper(self: AgentService, request: Any, context: grpc.ServicerContext) -> Any:
        method = fn.__name__
        try:
            result = fn(self, request, context)
        except NicwardenError as e:
            self.runtime.metrics.rpc(method, e.kind)
            context.set_trailing_metadata(((ERROR_KIND_KEY, e.kind),))
            context.abort(mapping_for(e).grpc_code, str(e))
        except Exception as e:
            log.exception("rpc %s failed", method)
            self.runtime.metrics.rpc(method, "internal")
            context.set_trailing_metadata(((ERROR_KIND_KEY, "internal"),))
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")
        self.runtime.metrics.rpc(method, "ok")
        return result

    return wrapper  # type: ignore[return-value]


class AgentService(pb_grpc.AgentServicer):  # type: ignore[misc]
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    @rpc
    def GetVersion(self, request: pb.GetVersionRequest, context: Any) -> pb.VersionInfo:
        return pb.VersionInfo(
            version=__version__,
            api_version="v1",
            python=platform.python_version(),
            kernel=os.uname().release,
            simulated=self.runtime.simulated,
            node_name=self.runtime.node_name,
            started_at=self.runtime.started_at,
        )

    @rpc
    def Health(self, request: pb.HealthRequest, context: Any) -> pb.HealthResponse:
        comps = [pb.ComponentHealth(name=n, ok=ok, detail=d) for n, ok, d in self.runtime.health()]
        return pb.HealthResponse(ok=all(c.ok for c in comps), components=comps)

    @rpc
    def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:
        inv = self.runtime.inventory.snapshot()
        pf_filter = None
        if request.pf:
            found = inv.find(request.pf)
            if not isinstance(found, PF):
                raise NotFound(f"no SR-IOV PF {request.pf!r} on this node")
            pf_filter = found.address
        out = []
        for pf in inv.pfs:
            if pf_filter and pf.address != pf_filter:
                continue
            if request.role in (pb.DEVICE_ROLE_UNSPECIFIED, pb.DEVICE_ROLE_PF):
                out.append(self._device(pf, inv))
            if request.role in (pb.DEVICE_ROLE_UNSPECIFIED, pb.DEVICE_ROLE_VF):
                out.extend(self._device(vf, inv) for vf in pf.vfs)
        out = [d for d in out if _matches(d, request)]
        return pb.ListDevicesResponse(devices=out, generation=inv.generation)

    @rpc
    def GetDevice(self, request: pb.GetDeviceRequest, context: Any) -> pb.Device:
        inv = self.runtime.inventory.snapshot()
        found = inv.find(request.id) if request.id else None
        if found is None:
            raise NotFound(f"no PF or VF {request.id!r} on this node")
        return self._device(found, inv)

    def _device(self, dev: PF | VF, inv: Inventory) -> pb.Device:
        fn = dev.fn
        msg = pb.Device(
            pci_address=fn.address,
            vendor=fn.vendor,
            device=fn.device,
            driver=fn.driver or "",
            numa_node=fn.numa_node,
            iommu_group=-1 if fn.iommu_group is None else fn.iommu_group,
        )
        if fn.netdev is not None:
            nd = fn.netdev
            msg.netdev.CopyFrom(
                pb.Netdev(
                    name=nd.name,
                    mac=nd.mac,
                    mtu=nd.mtu,
                    operstate=nd.operstate,
                    carrier=nd.carrier,
                    link_type=nd.link_type,
                    ifindex=nd.ifindex,
                )
            )
        if isinstance(dev, PF):
            msg.role = pb.DEVICE_ROLE_PF
            msg.total_vfs, msg.num_vfs = dev.total_vfs, dev.num_vfs
            msg.vfs.extend(vf.address for vf in dev.vfs)
            why = pf_problem(dev) or ""
        else:
            msg.role = pb.DEVICE_ROLE_VF
            msg.pf_address, msg.pf_name, msg.vf_index = dev.pf_address, dev.pf_name or "", dev.index
            pf = next((p for p in inv.pfs if p.address == dev.pf_address), None)
            why = (
                (unhealthy_reason(dev, pf, self.runtime.paths, need_vhost_net=False) or "")
                if pf
                else ""
            )
        msg.healthy, msg.health_detail = not why, why
        return msg

    @rpc
    def ListPools(self, request: pb.ListPoolsRequest, context: Any) -> pb.ListPoolsResponse:
        dp = self.runtime.deviceplugin
        if dp is None:
            raise Unavailable("the device plugin is not running")
        pools = []
        for st in dp.pools():
            devices = [
                pb.PoolDevice(
                    id=d.id,
                    health=d.health,
                    problem=d.problem or "",
                    numa_node=d.numa_node,
                    pf_address=d.pf_address,
                    pf_name=d.pf_name or "",
                    driver=d.driver or "",
                    iommu_group=-1 if d.iommu_group is None else d.iommu_group,
                )
                for d in st.devices
            ]
            pools.append(
                pb.Pool(
                    name=st.name,
                    resource=st.resource,
                    socket=str(st.socket),
                    device_count=st.device_count,
                    healthy_count=st.healthy_count,
                    registered=st.registered,
                    last_error=st.last_error or "",
                    devices=devices,
                )
            )
        errors = [str(e) for e in dp.config_errors()]
        return pb.ListPoolsResponse(pools=pools, config_errors=errors)

    @rpc
    def ListAllocations(
        self, request: pb.ListAllocationsRequest, context: Any
    ) -> pb.ListAllocationsResponse:
        rows = self._store().allocations(request.resource or None)
        return pb.ListAllocationsResponse(
            allocations=[
                pb.Allocation(
                    resource=a.resource,
                    device_id=a.device_id,
                    pod_namespace=a.pod_namespace,
                    pod_name=a.pod_name,
                    pod_uid=a.pod_uid,
                    allocated_at=a.allocated_at,
                )
                for a in rows
            ]
        )

    @rpc
    def ListAttachments(
        self, request: pb.ListAttachmentsRequest, context: Any
    ) -> pb.ListAttachmentsResponse:
        return _attachments(self._store().list_attachments())

    @rpc
    def GetAttachment(
        self, request: pb.GetAttachmentRequest, context: Any
    ) -> pb.ListAttachmentsResponse:
        found = self._store().attachments_for_container(request.container_id)
        if not found:
            raise NotFound(f"no attachments for container {request.container_id!r}")
        return _attachments(found)

    @rpc
    def Attach(self, request: pb.CniInvocation, context: Any) -> pb.CniReply:
        return self._cni(request, "ADD")

    @rpc
    def Detach(self, request: pb.CniInvocation, context: Any) -> pb.CniReply:
        return self._cni(request, "DEL")

    def _cni(self, request: pb.CniInvocation, command: str) -> pb.CniReply:
        env = dict(request.cni_env)
        if env.get("CNI_COMMAND", command) != command:
            raise InvalidArgument(f"CNI_COMMAND must be {command} (or unset) for this call")
        env["CNI_COMMAND"] = command
        code, out = handle_invocation(env, request.cni_config, self._attach())
        return pb.CniReply(exit_code=code, output=out.decode())

    @rpc
    def Reconcile(self, request: pb.ReconcileRequest, context: Any) -> pb.ReconcileResponse:
        return pb.ReconcileResponse(actions=self._attach().reconcile())

    @rpc
    def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: Any
    ) -> pb.ListPoliciesResponse:
        enf = self.runtime.enforcer
        if enf is None:
            raise Unavailable("policy enforcement is not running")
        resp = pb.ListPoliciesResponse(
            datapath_ok=enf.datapath is not None,
            datapath_error=enf.datapath_error,
            source_synced=enf.source is None or enf.source.synced(),
        )
        for row in enf.interfaces():
            resp.interfaces.append(pb.PolicedInterfaceStatus(**row))
        for obj in enf.objects():
            resp.objects.append(pb.PolicyObjectStatus(**obj))
        return resp

    @rpc
    def SetNumVfs(self, request: pb.SetNumVfsRequest, context: Any) -> pb.SetNumVfsResponse:
        r = sriov.set_num_vfs(self._devices(), request.pf, request.num_vfs)
        return pb.SetNumVfsResponse(
            pf=r.pf,
            pf_name=r.pf_name or "",
            previous=r.previous,
            num_vfs=r.current,
            changed=r.changed,
        )

    @rpc
    def SetVf(self, request: pb.SetVfRequest, context: Any) -> pb.SetVfResponse:
        ctx = self._devices()
        vf, pf = dpdk.find_vf(ctx, request.vf)
        if pf.name is None:
            raise Unavailable(f"PF {pf.address} has no netdev: VF attributes are set through it")
        fields = {
            f.name: getattr(request.settings, f.name)
            for f in pb.VfSettings.DESCRIPTOR.fields
            if request.settings.HasField(f.name)
        }
        if not fields:
            raise InvalidArgument("nothing to set: give at least one VF attribute")
        store = self._store()
        before = self.runtime.vfconf.get(pf.name, vf.index)
        # The original goes on record first, so a crash mid-change can be undone.
        intent = store.begin_intent("vf-settings", vf.address, {"before": asdict(before)})
        try:
            self.runtime.vfconf.set(pf.name, vf.index, VfSettings(**fields))
        except BaseException:
            store.roll_back_intent(intent)
            raise
        store.complete_intent(intent)
        after = self.runtime.vfconf.get(pf.name, vf.index)
        return pb.SetVfResponse(
            vf=vf.address, before=_vf_settings(before), after=_vf_settings(after)
        )

    @rpc
    def BindDriver(self, request: pb.BindDriverRequest, context: Any) -> pb.BindDriverResponse:
        r = dpdk.bind(self._devices(), request.vf, request.driver, force=request.force)
        return pb.BindDriverResponse(
            vf=r.address,
            previous=r.previous or "",
            driver=r.driver,
            changed=r.changed,
            overridden=list(r.overridden),
            devices=[str(d) for d in r.devices],
        )

    @rpc
    def Converge(self, request: pb.ConvergeRequest, context: Any) -> pb.ConvergeResponse:
        report = self.runtime.converge(dry_run=request.dry_run)
        return pb.ConvergeResponse(
            applied=report.applied,
            skipped=[str(x) for x in report.skipped],
            drift=[str(d) for d in report.drift],
            remaining=[str(d) for d in report.remaining],
            converged=report.converged,
        )

    def _devices(self) -> DeviceCtx:
        if self.runtime.devices is None:
            raise Unavailable("device management is not running")
        return self.runtime.devices

    def _attach(self) -> AttachService:
        if self.runtime.attach is None:
            raise Unavailable("the attach service is not running")
        return self.runtime.attach

    def _store(self) -> Store:
        if self.runtime.store is None:
            raise Unavailable("the state store is not open")
        return self.runtime.store


def _vf_settings(settings: VfSettings) -> pb.VfSettings:
    return pb.VfSettings(**{k: v for k, v in asdict(settings).items() if v is not None})


def _attachments(rows: list[StoredAttachment]) -> pb.ListAttachmentsResponse:
    return pb.ListAttachmentsResponse(
        attachments=[
            pb.Attachment(
                container_id=a.container_id,
                ifname=a.ifname,
                network=a.network,
                netns=a.netns,
                device=a.device or "",
                kind=a.kind,
                state=a.state,
                pod_namespace=a.pod_namespace,
                pod_name=a.pod_name,
                pod_uid=a.pod_uid,
                result_json=json.dumps(a.result) if a.result else "",
                created=a.created,
            )
            for a in rows
        ]
    )


def _matches(d: pb.Device, req: pb.ListDevicesRequest) -> bool:
    if req.driver and d.driver != req.driver:
        return False
    if req.vendor and d.vendor != req.vendor.lower().removeprefix("0x"):
        return False
    if req.device and d.device != req.device.lower().removeprefix("0x"):
        return False
    return not (req.HasField("numa_node") and d.numa_node != req.numa_node)
