"""The generated v1beta1 module against the kubelet contract's wire table.

Written out independently of the .proto so a renumbered field fails here."""

from __future__ import annotations

import pytest

from nicwarden.proto.deviceplugin.v1beta1 import api_pb2

CONTRACT: dict[str, dict[str, int]] = {
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "Empty": {},
    "ListAndWatchResponse": {"devices": 1},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "PreStartContainerRequest": {"devices_ids": 1},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    },
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "CDIDevice": {"name": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {
        "envs": 1,
        "mounts": 2,
        "devices": 3,
        "annotations": 4,
        "cdi_devices": 5,
    },
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
}

METHODS = {
    "Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": (
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            False,
        ),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}


def test_package_is_v1beta1() -> None:
    assert api_pb2.DESCRIPTOR.package == "v1beta1"


@pytest.mark.parametrize("message", sorted(CONTRACT))
def test_message_fields_match_contract(message: str) -> None:
    desc = api_pb2.DESCRIPTOR.message_types_by_name[message]
    assert {f.name: f.number for f in desc.fields} == CONTRACT[message]


def test_no_extra_messages() -> None:
    assert set(api_pb2.DESCRIPTOR.message_types_by_name) == set(CONTRACT)


def test_field_types() -> None:
    fd = api_pb2.DESCRIPTOR.message_types_by_name
    assert (
        fd["NUMANode"].fields_by_name["ID"].type == fd["NUMANode"].fields_by_name["ID"].TYPE_INT64
    )
    size = fd["ContainerPreferredAllocationRequest"].fields_by_name["allocation_size"]
    assert size.type == size.TYPE_INT32
    envs = fd["ContainerAllocateResponse"].fields_by_name["envs"]
    assert envs.message_type.GetOptions().map_entry


@pytest.mark.parametrize("service", sorted(METHODS))
def test_services(service: str) -> None:
    desc = api_pb2.DESCRIPTOR.services_by_name[service]
    got = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in desc.methods
    }
    assert got == METHODS[service]
    assert desc.full_name == f"v1beta1.{service}"
