"""AgentService (the gRPC adapter) driven directly with request messages:
no CLI, no socket. The runtime behind it is a real AgentRuntime on a small
simulated node (policy enforcement off, so no bcc is needed); a fake gRPC
context records the status code, message and trailers of a refusal."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
import pytest

from nicwarden.agent.api import AgentService
from nicwarden.agent.api_status import ERROR_KEY, KIND_KEY
from nicwarden.agent.config import load_config
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import AttachmentKey
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from tests.support.oracle import host_links

pytestmark = pytest.mark.root

VFS = 3  # per PF; the second PF is a different model (other vendor, driver, NUMA node)
SIM = {
    "pfs": [
        {"model": "e810", "totalVfs": 8, "numVfs": VFS, "numa": 0},
        {"model": "cx6dx", "totalVfs": 8, "numVfs": VFS, "numa": 1},
    ]
}


class Aborted(Exception):
    """What grpc's ServicerContext.abort raises to end the handler."""


class FakeContext:
    """Records what the handler ends the call with."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: dict[str, str | bytes] = {}

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.trailers = dict(metadata)

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code, self.details = code, details
        raise Aborted(details)

    def error(self) -> dict[str, Any]:
        raw = self.trailers[ERROR_KEY]
        assert isinstance(raw, bytes)
        body: dict[str, Any] = json.loads(raw)
        return body


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRuntime]:
    tmp = tmp_path_factory.mktemp("agent")
    config = load_config(
        None,
        {
            "stateDir": str(tmp / "state"),
            "socket": str(tmp / "agent.sock"),
            "cniSocket": str(tmp / "cni.sock"),
            "kubeletDir": str(tmp / "kubelet"),
            "deviceInfoDir": str(tmp / "devinfo"),
            "simulate": SIM,
            "policy": {"enabled": False},
            "metrics": {"enabled": False},
            "reconcileInterval": 3600,
        },
    )
    prefix = "t" + uuid.uuid4().hex[:4]
    rt = AgentRuntime(config, sim_prefix=prefix).start()
    try:
        yield rt
    finally:
        rt.stop()
        assert host_links(prefix) == set(), "the runtime left links behind"


@pytest.fixture
def service(runtime: AgentRuntime) -> AgentService:
    return AgentService(runtime)


def refused(call: Any, request: Any) -> FakeContext:
    ctx = FakeContext()
    with pytest.raises(Aborted):
        call(request, ctx)
    assert ctx.code is not None
    return ctx


def addresses(resp: pb.ListDevicesResponse) -> list[str]:
    return [d.pci_address for d in resp.devices]


# ---------------------------------------------------------------- devices


def test_list_devices_unfiltered(service: AgentService, runtime: AgentRuntime) -> None:
    resp = service.ListDevices(pb.ListDevicesRequest(), FakeContext())
    inv = runtime.inventory.snapshot()
    assert resp.generation == inv.generation
    want = [a for pf in inv.pfs for a in (pf.address, *(vf.address for vf in pf.vfs))]
    assert addresses(resp) == want and len(want) == 2 * (1 + VFS)
    roles = [d.role for d in resp.devices]
    assert roles.count(pb.DEVICE_ROLE_PF) == 2 and roles.count(pb.DEVICE_ROLE_VF) == 2 * VFS


def test_list_devices_filters(service: AgentService, runtime: AgentRuntime) -> None:
    sim = runtime.sim
    assert sim is not None
    pf0, pf1 = sim.pf_address(0), sim.pf_address(1)
    vfs0 = [sim.vf_address(0, j) for j in range(VFS)]
    vfs1 = [sim.vf_address(1, j) for j in range(VFS)]

    def listed(**fields: Any) -> list[str]:
        return addresses(service.ListDevices(pb.ListDevicesRequest(**fields), FakeContext()))

    assert listed(role=pb.DEVICE_ROLE_PF) == [pf0, pf1]
    assert listed(role=pb.DEVICE_ROLE_VF) == vfs0 + vfs1
    assert listed(pf=pf1) == [pf1, *vfs1]
    assert listed(pf=sim.pf_name(0), role=pb.DEVICE_ROLE_VF) == vfs0  # by netdev name
    assert listed(driver="iavf") == vfs0  # e810 VFs; cx6dx uses mlx5_core throughout
    assert listed(driver="mlx5_core") == [pf1, *vfs1]
    assert listed(vendor="0x15B3") == [pf1, *vfs1]  # 0x and case are forgiven
    assert listed(vendor="8086", device="1889") == vfs0
    assert listed(numa_node=1, role=pb.DEVICE_ROLE_PF) == [pf1]
    assert listed(numa_node=0) == [pf0, *vfs0]  # explicitly 0, not "unset"
    assert listed(numa_node=5) == []


def test_list_devices_unknown_pf_is_not_found(service: AgentService) -> None:
    ctx = refused(service.ListDevices, pb.ListDevicesRequest(pf="0000:ff:00.0"))
    assert ctx.code == grpc.StatusCode.NOT_FOUND
    assert ctx.trailers[KIND_KEY] == "not_found" and "0000:ff:00.0" in ctx.error()["message"]


def test_get_device(service: AgentService, runtime: AgentRuntime) -> None:
    sim = runtime.sim
    assert sim is not None
    vf = service.GetDevice(pb.GetDeviceRequest(id=sim.vf_address(1, 2)), FakeContext())
    assert vf.role == pb.DEVICE_ROLE_VF and vf.vf_index == 2
    assert vf.pf_address == sim.pf_address(1) and vf.pf_name == sim.pf_name(1)
    assert vf.netdev.name == sim.vf_name(1, 2) and vf.healthy, vf.health_detail
    pf = service.GetDevice(pb.GetDeviceRequest(id=sim.pf_name(0)), FakeContext())
    assert pf.role == pb.DEVICE_ROLE_PF and pf.num_vfs == VFS and pf.total_vfs == 8
    assert list(pf.vfs) == [sim.vf_address(0, j) for j in range(VFS)]


@pytest.mark.parametrize("key", ["0000:ff:1f.7", "nosuchnic0", ""])
def test_get_device_not_found(service: AgentService, key: str) -> None:
    ctx = refused(service.GetDevice, pb.GetDeviceRequest(id=key))
    assert ctx.code == grpc.StatusCode.NOT_FOUND
    assert ctx.trailers[KIND_KEY] == "not_found" and repr(key) in ctx.details


# ---------------------------------------------------------------- attachments, health


def test_list_attachments(service: AgentService, runtime: AgentRuntime) -> None:
    store = runtime.store
    assert store is not None
    assert (
        list(service.ListAttachments(pb.ListAttachmentsRequest(), FakeContext()).attachments) == []
    )
    key = AttachmentKey("c-listed", "net1", "net-a")
    result = {"cniVersion": "1.1.0", "ips": [{"address": "10.9.0.2/24"}]}
    store.put_attachment(
        key,
        netns="/proc/1/ns/net",  # alive, so no reconcile would release it meanwhile
        device=None,
        kind="chained",
        pod_namespace="prod",
        pod_name="web",
        pod_uid="uid-web",
        original={},
        config={},
        state="ready",
        result=result,
    )
    try:
        (att,) = service.ListAttachments(pb.ListAttachmentsRequest(), FakeContext()).attachments
        assert (att.container_id, att.ifname, att.network) == ("c-listed", "net1", "net-a")
        assert (att.kind, att.state, att.pod_namespace, att.pod_name) == (
            "chained",
            "ready",
            "prod",
            "web",
        )
        assert att.device == "" and json.loads(att.result_json) == result
        got = service.GetAttachment(pb.GetAttachmentRequest(container_id="c-listed"), FakeContext())
        assert [a.ifname for a in got.attachments] == ["net1"]
        ctx = refused(service.GetAttachment, pb.GetAttachmentRequest(container_id="c-none"))
        assert ctx.code == grpc.StatusCode.NOT_FOUND
    finally:
        store.delete_attachment(key)


def test_health(service: AgentService) -> None:
    resp = service.Health(pb.HealthRequest(), FakeContext())
    comps = {c.name: c for c in resp.components}
    assert {"inventory", "store", "policy"} <= set(comps)
    assert comps["inventory"].ok and f"{2 * VFS} VFs" in comps["inventory"].detail
    assert comps["policy"].ok and "disabled" in comps["policy"].detail
    assert resp.ok == all(c.ok for c in resp.components)


# ---------------------------------------------------------------- invalid arguments


def test_set_num_vfs_refusals(service: AgentService, runtime: AgentRuntime) -> None:
    sim = runtime.sim
    assert sim is not None
    before = runtime.inventory.snapshot().find(sim.pf_address(0))

    ctx = refused(service.SetNumVfs, pb.SetNumVfsRequest(pf=sim.pf_address(0), num_vfs=9))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctx.trailers[KIND_KEY] == "invalid_argument" and "0-8" in ctx.details

    ctx = refused(service.SetNumVfs, pb.SetNumVfsRequest(pf=sim.vf_address(0, 0), num_vfs=1))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and "not a PF" in ctx.details

    ctx = refused(service.SetNumVfs, pb.SetNumVfsRequest(pf="0000:ff:00.0", num_vfs=1))
    assert ctx.code == grpc.StatusCode.NOT_FOUND

    after = runtime.inventory.rescan().find(sim.pf_address(0))
    assert after == before  # nothing changed on the node


def test_bind_driver_refusals(service: AgentService, runtime: AgentRuntime) -> None:
    sim = runtime.sim
    assert sim is not None
    vf = sim.vf_address(0, 1)

    ctx = refused(service.BindDriver, pb.BindDriverRequest(vf=vf, driver="bogus"))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ctx.trailers[KIND_KEY] == "invalid_argument" and "'bogus'" in ctx.error()["message"]

    ctx = refused(service.BindDriver, pb.BindDriverRequest(vf=sim.pf_address(0), driver="vfio-pci"))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and "not a VF" in ctx.details

    ctx = refused(service.BindDriver, pb.BindDriverRequest(vf="0000:ff:01.0", driver="vfio-pci"))
    assert ctx.code == grpc.StatusCode.NOT_FOUND

    got = service.GetDevice(pb.GetDeviceRequest(id=vf), FakeContext())
    assert got.driver == "iavf"  # still on its kernel driver


def test_calls_are_counted_by_outcome(service: AgentService, runtime: AgentRuntime) -> None:
    registry = runtime.metrics.registry

    def count(outcome: str) -> float:
        labels = {"method": "GetDevice", "outcome": outcome}
        return registry.get_sample_value("nicwarden_rpc_total", labels) or 0.0

    before_ok, before_missing = count("ok"), count("not_found")
    refused(service.GetDevice, pb.GetDeviceRequest(id="0000:ff:1f.6"))
    assert count("not_found") == before_missing + 1 and count("ok") == before_ok


def test_reconcile(service: AgentService, runtime: AgentRuntime) -> None:
    sim = runtime.sim
    assert sim is not None
    vf = sim.vf_address(0, 0)
    ctx = refused(service.Reconcile, pb.ReconcileRequest(adopt=vf, release=vf))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and "not both" in ctx.details

    resp = service.Reconcile(pb.ReconcileRequest(), FakeContext())
    assert list(resp.actions) == [] and list(resp.unexplained) == []  # a quiet node
