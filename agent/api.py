"""The gRPC ``nicwarden.v1.Agent`` service: a thin translation between protobuf
messages and the agent's objects. Errors from the agent's vocabulary become
gRPC statuses (and trailers nicwardenctl rebuilds them from) through
agent/api_status.py."""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from nicwarden.agent import __version__
from nicwarden.agent.api_status import abort_with
from nicwarden.agent.attach import AttachService
from nicwarden.agent.devices import binding, numvfs, vfsettings
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.drop_events import ObservedFlow, Subscription
from nicwarden.agent.errors import (
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
)
from nicwarden.agent.health import pf_problem, unhealthy_reason
from nicwarden.agent.host.vfnetlink import VfSettings
from nicwarden.agent.model import PF, VF, Inventory
from nicwarden.agent.paging import page
from nicwarden.agent.policy_listing import list_policies
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Attachment as StoredAttachment
from nicwarden.agent.store import DraClaimRecord, Store
from nicwarden.deviceplugin.dra.devices import dra_matches
from nicwarden.deviceplugin.dra.frontends import DRA as DRA_FRONTEND
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
S = TypeVar("S")

F = TypeVar("F", bound=Callable[..., Any])


def rpc(fn: F) -> F:
    """Turn agent errors into gRPC statuses and error trailers; count every call."""

    @functools.wraps(fn)
    def wrapper(self: AgentService, request: Any, context: grpc.ServicerContext) -> Any:
        method = fn.__name__
        try:
            result = fn(self, request, context)
        except NicwardenError as e:
            self.runtime.metrics.rpc(method, e.kind)
            abort_with(context, e)
        except Exception as e:
            log.exception("rpc %s failed", method)
            self.runtime.metrics.rpc(method, "internal")
            abort_with(context, NicwardenError(f"internal error: {type(e).__name__}: {e}"))
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
        offered = self._frontends(inv)
        for pf in inv.pfs:
            if pf_filter and pf.address != pf_filter:
                continue
            if request.role in (pb.DEVICE_ROLE_UNSPECIFIED, pb.DEVICE_ROLE_PF):
                out.append(self._device(pf, inv))
            if request.role in (pb.DEVICE_ROLE_UNSPECIFIED, pb.DEVICE_ROLE_VF):
                out.extend(self._device(vf, inv, offered) for vf in pf.vfs)
        out = [d for d in out if _matches(d, request)]
        devices, token = _page(out, request, _same)
        return pb.ListDevicesResponse(
            devices=devices, generation=inv.generation, next_page_token=token
        )

    @rpc
    def GetDevice(self, request: pb.GetDeviceRequest, context: Any) -> pb.Device:
        inv = self.runtime.inventory.snapshot()
        found = inv.find(request.id) if request.id else None
        if found is None:
            raise NotFound(f"no PF or VF {request.id!r} on this node")
        return self._device(found, inv)

    def _frontends(self, inv: Inventory) -> dict[str, str]:
        """VF address -> the device plugin pool offering it, or "dra"."""
        out: dict[str, str] = {}
        dp = self.runtime.deviceplugin
        if dp is not None:
            for st in dp.pools():
                out.update((d.id, st.name) for d in st.devices)
        dra = self.runtime.config.dra
        for pf in inv.pfs:
            for vf in pf.vfs:
                if dra_matches(dra, vf, pf):
                    out[vf.address] = DRA_FRONTEND
        return out

    def _device(
        self, dev: PF | VF, inv: Inventory, offered: dict[str, str] | None = None
    ) -> pb.Device:
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
            frontends = self._frontends(inv) if offered is None else offered
            msg.frontend = frontends.get(dev.address, "")
            pf = next((p for p in inv.pfs if p.address == dev.pf_address), None)
            held = self.runtime.audit.why_blocked(dev.address) if self.runtime.audit else None
            why = held or ((unhealthy_reason(dev, pf) or "") if pf else "")
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
        first = not request.page_token
        errors = [str(e) for e in dp.config_errors()] if first else []
        shown, token = _page(pools, request, _same)
        return pb.ListPoolsResponse(pools=shown, config_errors=errors, next_page_token=token)

    @rpc
    def ListAllocations(
        self, request: pb.ListAllocationsRequest, context: Any
    ) -> pb.ListAllocationsResponse:
        rows = self._store().allocations(request.resource or None)
        allocations, token = _page(
            rows,
            request,
            lambda a: pb.Allocation(
                resource=a.resource,
                device_id=a.device_id,
                pod_namespace=a.pod_namespace,
                pod_name=a.pod_name,
                pod_uid=a.pod_uid,
                allocated_at=a.allocated_at,
            ),
        )
        return pb.ListAllocationsResponse(allocations=allocations, next_page_token=token)

    @rpc
    def ListClaims(self, request: pb.ListClaimsRequest, context: Any) -> pb.ListClaimsResponse:
        store = self._store()
        claims, token = _page(store.dra_claims(), request, lambda c: _claim(store, c))
        dra = self.runtime.config.dra
        driver = dra.driver_name if dra.active else ""
        return pb.ListClaimsResponse(claims=claims, next_page_token=token, driver=driver)

    @rpc
    def ListAttachments(
        self, request: pb.ListAttachmentsRequest, context: Any
    ) -> pb.ListAttachmentsResponse:
        resp = _attachments(self._store().list_attachments())
        attachments, token = _page(list(resp.attachments), request, _same)
        return pb.ListAttachmentsResponse(attachments=attachments, next_page_token=token)

    @rpc
    def GetAttachment(
        self, request: pb.GetAttachmentRequest, context: Any
    ) -> pb.ListAttachmentsResponse:
        found = self._store().attachments_for_container(request.container_id)
        if not found:
            raise NotFound(f"no attachments for container {request.container_id!r}")
        return _attachments(found)

    @rpc
    def Reconcile(self, request: pb.ReconcileRequest, context: Any) -> pb.ReconcileResponse:
        if request.adopt and request.release:
            raise InvalidArgument("adopt or release, not both")
        audit = self.runtime.audit
        if audit is None:
            raise Unavailable("the VF audit is not running")
        if request.adopt or request.release:
            done = [audit.adopt(request.adopt) if request.adopt else audit.release(request.release)]
        else:
            done = self._attach().reconcile()
            audit.run()
        return pb.ReconcileResponse(actions=done, unexplained=[str(u) for u in audit.unexplained()])

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
        # Read by key from the engine's indexes: a page costs O(page), not
        # O(cluster).
        interfaces, objects, resp.next_page_token = list_policies(enf, request)
        resp.objects_total, resp.objects_with_problems = enf.object_counts()
        resp.interfaces.extend(interfaces)
        resp.objects.extend(objects)
        return resp

    @rpc
    def Observe(self, request: pb.ObserveRequest, context: Any) -> Iterator[pb.FlowRecord]:
        """Validates now (errors become the call's status); streams after."""
        hub = self.runtime.drop_events
        enf = self.runtime.enforcer
        if hub is None or enf is None:
            raise Unavailable("policy enforcement is not running")
        want = observe_filter(request, enf.policed())
        since = time.time() - request.since_seconds if request.since_seconds > 0 else None
        sub = hub.subscribe(since)
        context.add_callback(sub.close)  # the client went away: stop queueing for it
        return _observe_stream(sub, want, context)

    @rpc
    def SetNumVfs(self, request: pb.SetNumVfsRequest, context: Any) -> pb.SetNumVfsResponse:
        r = numvfs.set_num_vfs(self._devices(), request.pf, request.num_vfs)
        return pb.SetNumVfsResponse(
            pf=r.pf,
            pf_name=r.pf_name or "",
            previous=r.previous,
            num_vfs=r.current,
            changed=r.changed,
        )

    @rpc
    def SetVf(self, request: pb.SetVfRequest, context: Any) -> pb.SetVfResponse:
        fields = {
            f.name: getattr(request.settings, f.name)
            for f in pb.VfSettings.DESCRIPTOR.fields
            if request.settings.HasField(f.name)
        }
        r = vfsettings.set_vf(self._devices(), request.vf, VfSettings(**fields))
        return pb.SetVfResponse(vf=r.vf, before=_vf_settings(r.before), after=_vf_settings(r.after))

    @rpc
    def BindDriver(self, request: pb.BindDriverRequest, context: Any) -> pb.BindDriverResponse:
        r = binding.bind(self._devices(), request.vf, request.driver, force=request.force)
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


def _claim(store: Store, claim: DraClaimRecord) -> pb.Claim:
    devices = []
    for index, d in enumerate(claim.devices):
        address = str(d.get("address", ""))
        att = store.attachment_for_device(address) if address else None
        devices.append(
            pb.ClaimDevice(
                request=str(d.get("request", "")),
                pool=str(d.get("pool", "")),
                device=str(d.get("device", "")),
                pci_address=address,
                driver=str(d.get("driver") or ""),
                cdi_id=_cdi_id(claim, index, str(d.get("cdiName", ""))),
                attachment=f"{att.container_id}/{att.ifname}" if att else "",
                pod=f"{att.pod_namespace}/{att.pod_name}" if att and att.pod_name else "",
                attachment_state=att.state if att else "",
            )
        )
    return pb.Claim(
        uid=claim.uid,
        namespace=claim.namespace,
        name=claim.name,
        state=claim.state,
        cdi_ids=claim.cdi_ids,
        devices=devices,
        prepared_at=claim.prepared,
        updated_at=claim.updated,
    )


def _cdi_id(claim: DraClaimRecord, index: int, name: str) -> str:
    """The device's fully qualified CDI id (``vendor/class=name``)."""
    if name:
        found = [i for i in claim.cdi_ids if i.endswith(f"={name}")]
        if found:
            return found[0]
    return claim.cdi_ids[index] if index < len(claim.cdi_ids) else ""


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


class _Paged(Protocol):
    page_size: int
    page_token: str


def _page(items: Sequence[S], request: _Paged, convert: Callable[[S], M]) -> tuple[list[M], str]:
    return page(items, request.page_size, request.page_token, convert)


def _same(msg: M) -> M:
    return msg


def observe_filter(
    req: pb.ObserveRequest, policed: Sequence[tuple[str, str, str, str, Any, Any, Any]]
) -> Callable[[ObservedFlow], bool]:
    """The request's filters as a predicate; unknown values are refused."""
    if req.verdict not in ("", "dropped", "allowed"):
        raise InvalidArgument(f"verdict must be dropped or allowed, not {req.verdict!r}")
    if req.since_seconds < 0:
        raise InvalidArgument("since must not be negative")
    if bool(req.pod_namespace) != bool(req.pod_name):
        raise InvalidArgument("pod is namespace/name")
    if req.pod_name and not any(
        (ns, pod) == (req.pod_namespace, req.pod_name) for ns, pod, *_ in policed
    ):
        raise NotFound(
            f"pod {req.pod_namespace}/{req.pod_name} has no policed interface on this node"
        )
    if req.network and not any(net == req.network for _, _, net, *_ in policed):
        raise NotFound(f"network {req.network!r} has no policed interface on this node")

    def match(f: ObservedFlow) -> bool:
        o = f.owner
        if req.pod_name and (
            o is None or (o.namespace, o.pod) != (req.pod_namespace, req.pod_name)
        ):
            return False
        if req.network and (o is None or o.network != req.network):
            return False
        return not req.verdict or f.verdict == req.verdict

    return match


def _observe_stream(
    sub: Subscription, want: Callable[[ObservedFlow], bool], context: Any
) -> Iterator[pb.FlowRecord]:
    try:
        while context.is_active() and not sub.closed:
            for f in sub.get(timeout=0.5):
                if want(f):
                    yield flow_record(f, sub.dropped)
    finally:
        sub.close()


def flow_record(f: ObservedFlow, lost: int) -> pb.FlowRecord:
    r, o = f.record, f.owner
    return pb.FlowRecord(
        time=f.time,
        namespace=o.namespace if o else "",
        pod=o.pod if o else "",
        network=o.network if o else "",
        ifname=o.ifname if o else "",
        direction=r.direction.name.lower(),
        verdict=f.verdict,
        reason=r.reason.name.lower(),
        protocol=r.proto,
        src=r.src,
        src_port=r.sport,
        dst=r.dst,
        dst_port=r.dport,
        policies=list(o.policies) if o else [],
        iface=r.iface,
        lost=lost,
    )
