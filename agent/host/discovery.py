"""Builds an Inventory snapshot from a sysfs tree (real or simulated).

A PF is a network-class PCI function with ``sriov_totalvfs``; its VFs are its
``virtfnN`` links. Netdev details are read through the device's ``net/``
directory, which (as in the real kernel, whose sysfs is netns-tagged) lists
only netdevs in the host netns: a VF moved into a pod shows no netdev here.

The snapshot also records the dev-root nodes health depends on (a vfio VF's
group node, vhost-net and tun), so its readers never look under /dev.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from nicwarden.agent.host import pci
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import link_name, read_attr, read_int
from nicwarden.agent.model import PF, VF, Inventory, NetdevState, PciFunction

NET_CLASS_PREFIX = "0x02"  # PCI base class 0x02: network controller
ARPHRD = {1: "ether", 32: "infiniband"}
_VIRTFN = re.compile(r"^virtfn(\d+)$")


def _hex_id(path: str) -> str:
    text = read_attr(path) or ""
    return text.lower().removeprefix("0x")


def read_netdev(dev_dir: Path | str) -> NetdevState | None:
    net = os.path.join(dev_dir, "net")
    try:
        names = sorted(os.listdir(net))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for name in names:
        nd = os.path.join(net, name)
        # A dangling entry is a netdev that left the host netns.
        if not os.path.exists(nd):
            continue
        return NetdevState(
            name=name,
            mac=read_attr(os.path.join(nd, "address")) or "",
            mtu=read_int(os.path.join(nd, "mtu"), 0) or 0,
            operstate=read_attr(os.path.join(nd, "operstate")) or "unknown",
            carrier=read_int(os.path.join(nd, "carrier"), 0) == 1,
            link_type=ARPHRD.get(read_int(os.path.join(nd, "type"), 1) or 1, "other"),
            ifindex=read_int(os.path.join(nd, "ifindex"), 0) or 0,
        )
    return None


# Identity attributes never change for a device at a given address, and are
# most of a scan's reads; cache them per sysfs tree.
_static: dict[str, tuple[str, str, str, int]] = {}


def _identity(dev_dir: str) -> tuple[str, str, str, int]:
    cached = _static.get(dev_dir)
    if cached is None:
        numa = read_int(os.path.join(dev_dir, "numa_node"))
        cached = (
            _hex_id(os.path.join(dev_dir, "vendor")),
            _hex_id(os.path.join(dev_dir, "device")),
            read_attr(os.path.join(dev_dir, "class")) or "",
            -1 if numa is None else numa,
        )
        if cached[0]:  # never cache a half-created device
            _static[dev_dir] = cached
    return cached


def forget(dev_dir: str) -> None:
    _static.pop(dev_dir, None)


def read_function(paths: HostPaths, address: str) -> PciFunction:
    d = os.path.join(paths.pci_devices, address)
    vendor, device, _cls, numa = _identity(d)
    group = link_name(os.path.join(d, "iommu_group"))
    return PciFunction(
        address=address,
        vendor=vendor,
        device=device,
        driver=link_name(os.path.join(d, "driver")),
        numa_node=numa,
        iommu_group=int(group) if group is not None and group.isdigit() else None,
        netdev=read_netdev(d),
    )


def read_function_if_present(paths: HostPaths, address: str) -> PciFunction | None:
    """The function as sysfs shows it now, or None when it is gone."""
    if not pci.device_exists(paths, address):
        forget(os.path.join(paths.pci_devices, address))
        return None
    return read_function(paths, address)


def host_netdev(paths: HostPaths, address: str) -> NetdevState | None:
    """The function's netdev when it is in the host netns."""
    return read_netdev(paths.pci_devices / address)


def with_vfio_node(paths: HostPaths, vf: VF) -> VF:
    """``vf`` with its vfio group node as the dev root has it now."""
    group = vf.fn.iommu_group
    node = pci.vfio_node(paths, group) if vf.fn.is_vfio and group is not None else None
    return replace(vf, vfio_node=str(node) if node is not None else None)


def with_dev_nodes(paths: HostPaths, inventory: Inventory) -> Inventory:
    """The snapshot with the dev-root facts health needs filled in."""
    pfs = tuple(
        replace(pf, vfs=tuple(with_vfio_node(paths, vf) for vf in pf.vfs)) for pf in inventory.pfs
    )
    return replace(inventory, pfs=pfs, missing_dev_nodes=pci.missing_vhost_nodes(paths))


def _virtfns(pf_dir: Path) -> list[tuple[int, str]]:
    out = []
    try:
        entries = os.listdir(pf_dir)
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _VIRTFN.match(entry)
        if m:
            target = link_name(pf_dir / entry)
            if target:
                out.append((int(m.group(1)), target))
    return sorted(out)


def is_sriov_pf(paths: HostPaths, address: str) -> bool:
    d = os.path.join(paths.pci_devices, address)
    cls = _identity(d)[2]
    if not cls.startswith(NET_CLASS_PREFIX):
        return False
    return (read_int(os.path.join(d, "sriov_totalvfs"), 0) or 0) > 0


def scan(paths: HostPaths, generation: int = 0) -> Inventory:
    """Read every SR-IOV PF and its VFs. Functions that vanish mid-scan
    (a numvfs change racing us) are skipped, not errors."""
    try:
        addresses = sorted(os.listdir(paths.pci_devices))
    except FileNotFoundError:
        return Inventory((), generation)
    pfs = []
    for address in addresses:
        if not is_sriov_pf(paths, address):
            continue
        pf_dir = paths.pci_devices / address
        pf_fn = read_function(paths, address)
        pf_name = pf_fn.netdev.name if pf_fn.netdev else None
        vfs = []
        for index, vf_addr in _virtfns(pf_dir):
            if not (paths.pci_devices / vf_addr).exists():
                forget(os.path.join(paths.pci_devices, vf_addr))
                continue
            vfs.append(
                with_vfio_node(paths, VF(read_function(paths, vf_addr), address, pf_name, index))
            )
        pfs.append(
            PF(
                fn=pf_fn,
                total_vfs=read_int(pf_dir / "sriov_totalvfs", 0) or 0,
                num_vfs=read_int(pf_dir / "sriov_numvfs", 0) or 0,
                vfs=tuple(vfs),
            )
        )
    return Inventory(tuple(pfs), generation, pci.missing_vhost_nodes(paths))
