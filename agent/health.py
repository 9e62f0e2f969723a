"""Device health, one rule for every consumer (API, device plugin, metrics)."""

from __future__ import annotations

from pathlib import Path

from nicwarden.agent.model import PF, VF

_LINK_OK = ("up", "unknown")


def pf_health(pf: PF) -> tuple[bool, str]:
    if pf.fn.netdev is None:
        return False, "PF has no netdev in the host netns"
    if pf.fn.netdev.operstate not in _LINK_OK:
        return False, f"PF {pf.fn.netdev.name} link is {pf.fn.netdev.operstate}"
    return True, ""


def vf_health(vf: VF, pf: PF | None, vfio_root: Path) -> tuple[bool, str]:
    """Unhealthy when its PF link is down, its own netdev (if in the host
    netns) is down, or, bound to vfio-pci, its /dev/vfio group node is gone."""
    if pf is not None:
        ok, why = pf_health(pf)
        if not ok:
            return False, why
    nd = vf.fn.netdev
    if nd is not None and nd.operstate not in _LINK_OK:
        return False, f"VF {nd.name} link is {nd.operstate}"
    if vf.fn.is_vfio:
        group = vf.fn.iommu_group
        if group is None:
            return False, "bound to vfio-pci without an IOMMU group"
        if not (vfio_root / str(group)).exists() and not (vfio_root / f"noiommu-{group}").exists():
            return False, f"/dev/vfio/{group} is missing"
    return True, ""
