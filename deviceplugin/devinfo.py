"""Device-info files (k8snetworkplumbingwg device-info spec v1.1.0, §4.1).

Multus copies ``<dir>/dp/<resource>-<bdf>-device.json`` into the pod's
network-status, so the file must never be seen half-written: it is written to a
temp file in the same directory and renamed over the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from nicwarden.agent.files import atomic_write
from nicwarden.deviceplugin.naming import device_info_file_name

SPEC_VERSION = "1.1.0"
DEFAULT_DEVICE_INFO_DIR = Path("/var/run/k8s.cni.cncf.io/devinfo")
# Read-only: the file is a statement by the device plugin, not a scratch pad
# for the CNI (which gets its own copy under devinfo/cni/).
FILE_MODE = 0o444
_BDF = r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"


def device_info(address: str, pf_address: str | None, vhost_net: str | None) -> dict[str, object]:
    pci: dict[str, str] = {"pci-address": address}
    if pf_address:
        pci["pf-pci-address"] = pf_address
    if vhost_net:
        pci["vhost-net"] = vhost_net
    return {"type": "pci", "version": SPEC_VERSION, "pci": pci}


def dp_dir(device_info_dir: Path) -> Path:
    return device_info_dir / "dp"


def write_device_info(
    device_info_dir: Path, resource: str, address: str, info: dict[str, object]
) -> Path:
    directory = dp_dir(device_info_dir)
    target = directory / device_info_file_name(resource, address)
    # The spec makes creating the directory our job; atomic_write does.
    atomic_write(target, json.dumps(info, sort_keys=True), FILE_MODE)
    return target


def remove_device_infos(device_info_dir: Path, resource: str) -> list[Path]:
    """Remove every file this resource wrote (spec §4.1.1: ours to delete on stop).

    Matched exactly, not by glob: ``a.com/foo-*`` would also catch ``a.com/foo-bar``'s files.
    """
    directory = dp_dir(device_info_dir)
    pattern = re.compile(rf"^{re.escape(resource.replace('/', '-'))}-{_BDF}-device\.json$")
    removed: list[Path] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if pattern.match(name):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
                removed.append(directory / name)
    return removed
