from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.api_status import grpc_code
from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.host.paths import HostPaths
from nicwarden.deviceplugin.allocate import DeviceUnhealthy, allocate
from nicwarden.deviceplugin.config import parse_resource_list
from nicwarden.deviceplugin.state import PoolState, evaluate
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2
from tests.support.kubelet_fake import PfSpec, VfSpec, build_inventory, make_vfio_nodes, vf_address

PF = "0000:18:00.0"
PF2 = "0000:5e:00.0"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def record_allocation(self, resource: str, device_ids: list[str]) -> None:
        self.calls.append((resource, device_ids))


def pool(
    tmp: Path, vfs: list[VfSpec], selectors: dict[str, Any] | None = None, pf_state: str = "up"
) -> PoolState:
    inv = build_inventory([PfSpec(PF, operstate=pf_state, vfs=vfs)], dev=tmp / "dev")
    entry: dict[str, Any] = {"resourceName": "net", "resourcePrefix": "intel.com"}
    if selectors is not None:
        entry["selectors"] = selectors
    configs = parse_resource_list([entry], "x.io").pools
    return evaluate(inv, configs)["net"]


def request(*containers: list[str]) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=c) for c in containers]
    )


def run(
    tmp: Path, state: PoolState, *containers: list[str], recorder: Recorder | None = None
) -> api_pb2.AllocateResponse:
    return allocate(
        state,
        request(*containers),
        paths=HostPaths(dev=tmp / "dev"),
        device_info_dir=tmp / "devinfo",
        recorder=recorder,
    )


def specs(resp: api_pb2.ContainerAllocateResponse) -> list[tuple[str, str, str]]:
    return [(d.host_path, d.container_path, d.permissions) for d in resp.devices]


def test_kernel_vfs(tmp_path: Path) -> None:
    state = pool(tmp_path, [VfSpec(0), VfSpec(1)])
    a0, a1 = vf_address(PF, 0), vf_address(PF, 1)
    rec = Recorder()
    resp = run(tmp_path, state, [a1, a0], recorder=rec).container_responses[0]
    assert resp.envs["PCIDEVICE_INTEL_COM_NET"] == f"{a1},{a0}"  # kubelet's order
    assert json.loads(resp.envs["PCIDEVICE_INTEL_COM_NET_INFO"]) == {
        a1: {"generic": {"deviceID": a1}},
        a0: {"generic": {"deviceID": a0}},
    }
    assert specs(resp) == []
    assert rec.calls == [("intel.com/net", [a1, a0])]
    info = tmp_path / "devinfo" / "dp" / f"intel.com-net-{a0}-device.json"
    assert json.loads(info.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": a0, "pf-pci-address": PF},
    }
    assert stat.S_IMODE(info.stat().st_mode) == 0o444
    assert sorted(p.name for p in info.parent.iterdir()) == sorted(
        f"intel.com-net-{a}-device.json" for a in (a0, a1)
    )  # no temp files left behind


def test_vfio_vfs(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    make_vfio_nodes(dev, [41, 42])
    state = pool(tmp_path, [VfSpec(0, "vfio-pci", 41, None), VfSpec(1, "vfio-pci", 42, None)])
    a0, a1 = vf_address(PF, 0), vf_address(PF, 1)
    resp = run(tmp_path, state, [a0, a1]).container_responses[0]
    assert specs(resp) == [
        (str(dev / "vfio" / "vfio"), "/dev/vfio/vfio", "rw"),
        (str(dev / "vfio" / "41"), "/dev/vfio/41", "rw"),
        (str(dev / "vfio" / "42"), "/dev/vfio/42", "rw"),
    ]
    info = json.loads(resp.envs["PCIDEVICE_INTEL_COM_NET_INFO"])
    assert info[a1]["vfio"] == {"dev-mount": "/dev/vfio/42", "mount": "/dev/vfio/vfio"}


def test_vfio_noiommu(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    make_vfio_nodes(dev, [5], noiommu=True)
    state = pool(tmp_path, [VfSpec(0, "vfio-pci", 5, None)])
    resp = run(tmp_path, state, [vf_address(PF, 0)]).container_responses[0]
    assert (str(dev / "vfio" / "noiommu-5"), "/dev/vfio/5", "rw") in specs(resp)


def test_vfs_sharing_a_group_get_one_spec(tmp_path: Path) -> None:
    make_vfio_nodes(tmp_path / "dev", [9])
    state = pool(tmp_path, [VfSpec(0, "vfio-pci", 9, None), VfSpec(1, "vfio-pci", 9, None)])
    resp = run(tmp_path, state, [vf_address(PF, 0), vf_address(PF, 1)]).container_responses[0]
    assert [c for _, c, _ in specs(resp)] == ["/dev/vfio/vfio", "/dev/vfio/9"]


def test_vhost_net(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "net").mkdir(parents=True)
    (dev / "vhost-net").touch()
    (dev / "net" / "tun").touch()
    state = pool(tmp_path, [VfSpec(0)], selectors={"needVhostNet": True})
    a0 = vf_address(PF, 0)
    resp = run(tmp_path, state, [a0]).container_responses[0]
    assert specs(resp) == [
        (str(dev / "vhost-net"), "/dev/vhost-net", "rw"),
        (str(dev / "net" / "tun"), "/dev/net/tun", "rw"),
    ]
    info = json.loads((tmp_path / "devinfo" / "dp" / f"intel.com-net-{a0}-device.json").read_text())
    assert info["pci"]["vhost-net"] == "/dev/vhost-net"


def test_each_container_gets_its_own_devices(tmp_path: Path) -> None:
    state = pool(tmp_path, [VfSpec(0), VfSpec(1)])
    a0, a1 = vf_address(PF, 0), vf_address(PF, 1)
    rec = Recorder()
    resp = run(tmp_path, state, [a0], [a1], recorder=rec)
    assert [r.envs["PCIDEVICE_INTEL_COM_NET"] for r in resp.container_responses] == [a0, a1]
    assert rec.calls == [("intel.com/net", [a0]), ("intel.com/net", [a1])]


def test_unknown_ids_are_invalid_argument_and_write_nothing(tmp_path: Path) -> None:
    state = pool(tmp_path, [VfSpec(0)])
    rec = Recorder()
    with pytest.raises(InvalidArgument) as err:
        run(tmp_path, state, [vf_address(PF, 0)], ["0000:99:00.1", "bogus"], recorder=rec)
    assert "0000:99:00.1" in str(err.value) and "bogus" in str(err.value)
    assert grpc_code(err.value).name == "INVALID_ARGUMENT"
    assert not (tmp_path / "devinfo").exists()
    assert rec.calls == []


def test_unhealthy_ids_are_failed_precondition(tmp_path: Path) -> None:
    state = pool(tmp_path, [VfSpec(0), VfSpec(1, netdev_state="down")])
    with pytest.raises(DeviceUnhealthy) as err:
        run(tmp_path, state, [vf_address(PF, 0), vf_address(PF, 1)])
    assert vf_address(PF, 1) in str(err.value) and "down" in str(err.value)
    assert vf_address(PF, 0) not in str(err.value)
    assert grpc_code(err.value).name == "FAILED_PRECONDITION"


def test_a_snapshot_without_the_vfio_node_refuses_allocation(tmp_path: Path) -> None:
    """The vfio node vanished (udev's event rescanned the inventory): refused."""
    dev = tmp_path / "dev"
    make_vfio_nodes(dev, [3])
    assert pool(tmp_path, [VfSpec(0, "vfio-pci", 3, None)]).devices[0].healthy
    (dev / "vfio" / "3").unlink()
    state = pool(tmp_path, [VfSpec(0, "vfio-pci", 3, None)])
    with pytest.raises(DeviceUnhealthy, match="vfio node of IOMMU group 3 is missing"):
        run(tmp_path, state, [vf_address(PF, 0)])


def test_empty_container_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        run(tmp_path, pool(tmp_path, [VfSpec(0)]), [])
