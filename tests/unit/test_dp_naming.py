from __future__ import annotations

import json

import pytest

from nicwarden.deviceplugin.naming import (
    InfoEntry,
    device_info_file_name,
    env_var_name,
    info_env_value,
    info_env_var_name,
    socket_name,
)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("intel.com/intel_sriov_netdevice", "PCIDEVICE_INTEL_COM_INTEL_SRIOV_NETDEVICE"),
        ("intel.com/sriov", "PCIDEVICE_INTEL_COM_SRIOV"),
        ("my-vendor.example.com/dpdk-pool", "PCIDEVICE_MY_VENDOR_EXAMPLE_COM_DPDK_POOL"),
        ("nicwarden.io/Mixed_Case", "PCIDEVICE_NICWARDEN_IO_MIXED_CASE"),
    ],
)
def test_env_var_name(resource: str, expected: str) -> None:
    assert env_var_name(resource) == expected
    assert info_env_var_name(resource) == expected + "_INFO"


def test_info_kernel_device_byte_exact() -> None:
    # sriov-network-device-plugin's format (Go map marshalling: sorted, compact).
    assert (
        info_env_value([InfoEntry("0000:03:02.1")])
        == '{"0000:03:02.1":{"generic":{"deviceID":"0000:03:02.1"}}}'
    )


def test_info_vfio_device_byte_exact() -> None:
    got = info_env_value(
        [InfoEntry("0000:8b:01.5", "/dev/vfio/178"), InfoEntry("0000:8b:01.7", "/dev/vfio/180")]
    )
    assert got == (
        '{"0000:8b:01.5":{"generic":{"deviceID":"0000:8b:01.5"},'
        '"vfio":{"dev-mount":"/dev/vfio/178","mount":"/dev/vfio/vfio"}},'
        '"0000:8b:01.7":{"generic":{"deviceID":"0000:8b:01.7"},'
        '"vfio":{"dev-mount":"/dev/vfio/180","mount":"/dev/vfio/vfio"}}}'
    )


def test_info_vhost() -> None:
    doc = json.loads(info_env_value([InfoEntry("0000:03:02.1", vhost_net=True)]))
    assert doc["0000:03:02.1"]["vhost"] == {
        "net-mount": "/dev/vhost-net",
        "tun-mount": "/dev/net/tun",
    }


def test_socket_and_device_info_names() -> None:
    assert socket_name("intel_sriov_netdevice") == "nicwarden-intel_sriov_netdevice.sock"
    assert (
        device_info_file_name("intel.com/intel_sriov_netdevice", "0000:18:02.5")
        == "intel.com-intel_sriov_netdevice-0000:18:02.5-device.json"
    )
