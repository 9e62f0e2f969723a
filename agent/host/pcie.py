"""Where a PCI function hangs in the PCI hierarchy: its PCIe root complex.

``/sys/bus/pci/devices/<bdf>`` links into ``/sys/devices/pci<domain>:<bus>/...``;
the first component names the root (``pci0000:00``), which DRA publishes as
the standard ``resource.kubernetes.io/pcieRoot`` attribute so a claim can ask
for a NIC under the same root as a GPU.
"""

from __future__ import annotations

import os
import re

from nicwarden.agent.host.paths import HostPaths

_ROOT = re.compile(r"pci[0-9a-f]{4}:[0-9a-f]{2}")


def pcie_root(paths: HostPaths, address: str) -> str | None:
    """``pci<domain>:<bus>`` for ``address``, or None when sysfs does not say
    (a device gone, or a tree that is not laid out as the kernel's)."""
    try:
        target = os.path.realpath(paths.sys / "bus" / "pci" / "devices" / address, strict=True)
    except OSError:
        return None
    for part in target.split(os.sep):
        if _ROOT.fullmatch(part):
            return part
    return None
