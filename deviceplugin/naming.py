"""Names other software reads: container env vars, the ``_INFO`` JSON, socket
and device-info file names. Formats follow sriov-network-device-plugin so pods
and CNIs written for it work unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

ENV_PREFIX = "PCIDEVICE_"
VFIO_CONTAINER_MOUNT = "/dev/vfio/vfio"
VHOST_NET = "/dev/vhost-net"
TUN = "/dev/net/tun"

_ENV_UNSAFE = re.compile(r"[./-]")


def env_var_name(resource: str) -> str:
    """``intel.com/intel_sriov_netdevice`` -> ``PCIDEVICE_INTEL_COM_INTEL_SRIOV_NETDEVICE``."""
    return ENV_PREFIX + _ENV_UNSAFE.sub("_", resource).upper()


def info_env_var_name(resource: str) -> str:
    return env_var_name(resource) + "_INFO"


def socket_name(pool_name: str) -> str:
    """Our socket's file name in the kubelet device-plugins dir (the ``endpoint``)."""
    return f"nicwarden-{pool_name}.sock"


def device_info_file_name(resource: str, device_id: str) -> str:
    """device-info spec §4.1: ``<resourceName>-<deviceID>-device.json`` with
    every ``/`` of the resource name replaced by ``-``."""
    return f"{resource.replace('/', '-')}-{device_id}-device.json"


@dataclass(frozen=True)
class InfoEntry:
    """What the ``_INFO`` variable says about one allocated device."""

    address: str
    vfio_dev_mount: str | None = None  # container path of the group node
    vhost_net: bool = False


def info_env_value(entries: Iterable[InfoEntry]) -> str:
    """``{"<bdf>": {"generic": {"deviceID": ...}, "vfio": {...}, "vhost": {...}}}``.

    Upstream marshals Go maps, which sorts keys and writes no spaces; doing the
    same keeps the value byte-identical for parsers that compare strings.
    """
    doc: dict[str, dict[str, dict[str, str]]] = {}
    for entry in entries:
        info: dict[str, dict[str, str]] = {"generic": {"deviceID": entry.address}}
        if entry.vfio_dev_mount is not None:
            info["vfio"] = {"dev-mount": entry.vfio_dev_mount, "mount": VFIO_CONTAINER_MOUNT}
        if entry.vhost_net:
            info["vhost"] = {"net-mount": VHOST_NET, "tun-mount": TUN}
        doc[entry.address] = info
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
