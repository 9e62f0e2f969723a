"""Allocate: turn kubelet's chosen device IDs into what the container needs.

Per container request: the ``PCIDEVICE_<RESOURCE>`` env var (comma-joined
addresses, in kubelet's order) and its ``_INFO`` companion; vfio device nodes
for vfio-bound VFs; vhost-net/tun for pools that ask for them; and one
device-info file per device for Multus. Every request is validated before
anything is written, so a refused call leaves no files behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nicwarden.agent.errors import Busy, InvalidArgument
from nicwarden.agent.health import VfioNode, vfio_mount
from nicwarden.agent.host import pci
from nicwarden.agent.host.paths import HostPaths
from nicwarden.deviceplugin.devinfo import device_info, write_device_info
from nicwarden.deviceplugin.naming import (
    TUN,
    VFIO_CONTAINER_MOUNT,
    VHOST_NET,
    InfoEntry,
    env_var_name,
    info_env_value,
    info_env_var_name,
)
from nicwarden.deviceplugin.sources import AllocationRecorder
from nicwarden.deviceplugin.state import PoolState
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2


class DeviceUnhealthy(Busy):
    """Kubelet asked for a device we advertise as Unhealthy (it raced an
    update). It is a ``busy`` kind so the error table maps it to
    FAILED_PRECONDITION: retrying with another device can succeed."""


@dataclass(frozen=True)
class ResolvedDevice:
    address: str
    pf_address: str
    vfio: VfioNode | None
    vhost_net: bool


def resolve(state: PoolState, ids: Sequence[str]) -> list[ResolvedDevice]:
    """Check ``ids`` against the pool now; raise naming every bad ID."""
    resource = state.config.resource
    if not ids:
        raise InvalidArgument(f"{resource}: container request names no devices")
    unique = list(dict.fromkeys(ids))
    unknown = [i for i in unique if i not in state.by_id]
    if unknown:
        raise InvalidArgument(f"{resource}: unknown device IDs: {', '.join(unknown)}")
    out: list[ResolvedDevice] = []
    problems: list[str] = []
    for device_id in unique:
        # The state is the pool as of the latest snapshot (the caller
        # re-evaluates when the inventory moved since ListAndWatch), so its
        # health is current: the snapshot records the dev-root nodes too.
        status = state.by_id[device_id]
        if status.problem is not None:
            problems.append(f"{device_id} ({status.problem})")
            continue
        dev = status.device
        out.append(
            ResolvedDevice(device_id, dev.pf.address, vfio_mount(dev.vf), dev.need_vhost_net)
        )
    if problems:
        raise DeviceUnhealthy(f"{resource}: unhealthy device IDs: {', '.join(problems)}")
    return out


def container_response(
    resource: str, devices: Sequence[ResolvedDevice], paths: HostPaths
) -> api_pb2.ContainerAllocateResponse:
    resp = api_pb2.ContainerAllocateResponse()
    resp.envs[env_var_name(resource)] = ",".join(d.address for d in devices)
    resp.envs[info_env_var_name(resource)] = info_env_value(
        InfoEntry(d.address, d.vfio.container_path if d.vfio else None, d.vhost_net)
        for d in devices
    )
    specs: dict[str, api_pb2.DeviceSpec] = {}  # keyed by host path: VFs can share a group

    def add(host: Path, container: str) -> None:
        specs.setdefault(
            str(host),
            api_pb2.DeviceSpec(container_path=container, host_path=str(host), permissions="rw"),
        )

    for d in devices:
        if d.vfio is not None:
            add(pci.vfio_container(paths), VFIO_CONTAINER_MOUNT)
            add(d.vfio.host_path, d.vfio.container_path)
        if d.vhost_net:
            vhost, tun = pci.vhost_nodes(paths)
            add(vhost, VHOST_NET)
            add(tun, TUN)
    resp.devices.extend(specs.values())
    return resp


def allocate(
    state: PoolState,
    request: api_pb2.AllocateRequest,
    *,
    paths: HostPaths,
    device_info_dir: Path,
    recorder: AllocationRecorder | None = None,
) -> api_pb2.AllocateResponse:
    resource = state.config.resource
    plans = [resolve(state, list(c.devices_ids)) for c in request.container_requests]
    response = api_pb2.AllocateResponse()
    for devices in plans:
        for d in devices:
            info = device_info(d.address, d.pf_address, VHOST_NET if d.vhost_net else None)
            write_device_info(device_info_dir, resource, d.address, info)
        if recorder is not None:
            recorder.record_allocation(resource, [d.address for d in devices])
        response.container_responses.append(container_response(resource, devices, paths))
    return response
