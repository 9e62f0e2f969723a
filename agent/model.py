"""Inventory data model: what the agent knows about each PCI network function.

Plain frozen dataclasses so every layer (device plugin, CNI attach, gRPC API)
shares one vocabulary and snapshots can be compared for change detection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

KERNEL_DRIVER = "kernel"
VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class NetdevState:
    name: str
    mac: str
    mtu: int
    operstate: str  # "up", "down", "unknown", "lowerlayerdown", ...
    carrier: bool
    link_type: str  # "ether", "infiniband", ... (from the ARPHRD type)
    ifindex: int


@dataclass(frozen=True)
class PciFunction:
    """One PCI function (a PF or a VF) as seen in sysfs."""

    address: str  # full BDF, "0000:18:00.0"
    vendor: str  # hex without 0x, "8086"
    device: str  # hex without 0x, "1592"
    driver: str | None  # bound driver name or None when unbound
    numa_node: int  # -1 when the platform reports none
    iommu_group: int | None
    netdev: NetdevState | None  # None when bound to vfio-pci or unbound

    @property
    def is_vfio(self) -> bool:
        return self.driver == VFIO_DRIVER


@dataclass(frozen=True)
class VF:
    fn: PciFunction
    pf_address: str
    pf_name: str | None  # the PF's netdev name (selectors use it)
    index: int  # virtfnN
    # The host path of its IOMMU group's vfio node (``/dev/vfio/<group>`` or
    # ``noiommu-<group>``) when bound to vfio-pci and the node exists: health
    # and Allocate read it here instead of looking under /dev themselves.
    vfio_node: str | None = None

    @property
    def address(self) -> str:
        return self.fn.address


@dataclass(frozen=True)
class PF:
    fn: PciFunction
    total_vfs: int
    num_vfs: int
    vfs: tuple[VF, ...] = field(default_factory=tuple)

    @property
    def address(self) -> str:
        return self.fn.address

    @property
    def name(self) -> str | None:
        return self.fn.netdev.name if self.fn.netdev else None


@dataclass(frozen=True)
class Inventory:
    """An immutable snapshot; the live inventory publishes a new one per change."""

    pfs: tuple[PF, ...] = ()
    generation: int = 0
    # Host paths of the vhost-net/tun nodes that are absent (pools that need
    # vhost-net are unhealthy without them).
    missing_dev_nodes: tuple[str, ...] = ()

    def vfs(self) -> list[VF]:
        return [vf for pf in self.pfs for vf in pf.vfs]

    def find(self, key: str) -> PF | VF | None:
        """Look up by PCI address (full or without domain) or netdev name."""
        for pf in self.pfs:
            if _matches(pf.fn, key):
                return pf
            for vf in pf.vfs:
                if _matches(vf.fn, key):
                    return vf
        return None


def _matches(fn: PciFunction, key: str) -> bool:
    if fn.address == key or fn.address == f"0000:{key}":
        return True
    return fn.netdev is not None and fn.netdev.name == key


class InventorySource(Protocol):
    """Publishes immutable inventory snapshots (``agent.inventory.LiveInventory``
    on a node; small in-memory objects in tests). The one declaration: CNI
    attach, device management and the device plugin all consume this."""

    def snapshot(self) -> Inventory:
        """The latest snapshot."""
        ...

    def rescan(self) -> Inventory:
        """Scan now (after a change of our own) and return the fresh snapshot."""
        ...

    def subscribe(self, callback: Callable[[Inventory], None]) -> Callable[[], None]:
        """Call ``callback`` with each new snapshot (VF added/removed, driver
        change, link up/down, device gone); returns the unsubscribe function."""
        ...
