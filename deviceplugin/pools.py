"""Which VF belongs to which pool: selector matching over an inventory snapshot.

Pure (no filesystem, no clock) so it can be rerun on every snapshot: a VF that
changes driver simply lands in another pool on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nicwarden.agent.model import PF, VF, Inventory
from nicwarden.deviceplugin.config import PoolConfig, Selector


@dataclass(frozen=True)
class PoolDevice:
    vf: VF
    pf: PF
    need_vhost_net: bool  # from the selector that admitted the VF

    @property
    def address(self) -> str:
        return self.vf.address

    @property
    def numa_node(self) -> int:
        return self.vf.fn.numa_node


def link_type(vf: VF, pf: PF) -> str | None:
    """The VF's link type; a VF without a host netdev (vfio-bound, or moved
    into a pod) carries its PF's, as upstream does."""
    netdev = vf.fn.netdev or pf.fn.netdev
    return netdev.link_type.lower() if netdev else None


def selector_matches(sel: Selector, vf: VF, pf: PF) -> bool:
    """Every non-empty field of the selector must match (they narrow)."""
    fn = vf.fn
    if sel.vendors and fn.vendor.lower() not in sel.vendors:
        return False
    if sel.devices and fn.device.lower() not in sel.devices:
        return False
    if sel.drivers and fn.driver not in sel.drivers:
        return False
    if sel.pci_addresses and fn.address not in sel.pci_addresses:
        return False
    if sel.pf_names and not any(r.key == vf.pf_name and r.includes(vf.index) for r in sel.pf_names):
        return False
    if sel.root_devices and not any(
        r.key == vf.pf_address and r.includes(vf.index) for r in sel.root_devices
    ):
        return False
    return not sel.link_types or link_type(vf, pf) in sel.link_types


def admitting_selector(pool: PoolConfig, vf: VF, pf: PF) -> Selector | None:
    """The first of the pool's selectors that matches ``vf``."""
    return next((s for s in pool.selectors if selector_matches(s, vf, pf)), None)


def build_pools(inventory: Inventory, pools: Sequence[PoolConfig]) -> dict[str, list[PoolDevice]]:
    """``{pool name: devices sorted by PCI address}``; every configured pool is
    present (possibly empty). Pools may overlap: a VF goes to the first pool,
    in config order, that has a matching selector."""
    out: dict[str, list[PoolDevice]] = {p.name: [] for p in pools}
    for pf in inventory.pfs:
        for vf in pf.vfs:
            for pool in pools:
                sel = admitting_selector(pool, vf, pf)
                if sel is not None:
                    out[pool.name].append(PoolDevice(vf, pf, sel.need_vhost_net))
                    break
    for devices in out.values():
        devices.sort(key=lambda d: d.address)
    return out
