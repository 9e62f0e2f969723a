"""Device health, one rule for every consumer (device plugin, API, CLI):
what makes a VF unusable right now. Pure: it reads only the inventory
snapshot, which records the dev-root nodes (see ``agent/host/discovery.py``).

A VF is Unhealthy when
- its PF's netdev is not operationally up (the VF has no path to the wire);
- its own netdev exists in the host netns and is down;
- it is bound to vfio-pci and its group node is missing under the dev root
  (``/dev/vfio/<group>``, or ``noiommu-<group>`` when vfio runs without an
  IOMMU), since the container could not open it;
- its pool needs vhost-net and ``/dev/vhost-net`` or ``/dev/net/tun`` is missing.

Link checks use operstate: "unknown" counts as up because many drivers (and
veths before carrier negotiation) never report anything else.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from nicwarden.agent.model import PF, VF, NetdevState

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
_UP_STATES = frozenset({"up", "unknown"})


@dataclass(frozen=True)
class VfioNode:
    """A vfio group's device node: where it is on the host, where the container sees it."""

    group: int
    host_path: Path
    container_path: str


def link_is_up(netdev: NetdevState) -> bool:
    return netdev.operstate in _UP_STATES


def vfio_mount(vf: VF) -> VfioNode | None:
    """The VF's group node as the snapshot saw it, or None.

    The container always gets it at ``/dev/vfio/<group>``, also in no-IOMMU
    mode where the host node is ``noiommu-<group>`` (sriov-network-device-plugin
    does the same, and DPDK probes both names).
    """
    group = vf.fn.iommu_group
    if vf.vfio_node is None or group is None:
        return None
    return VfioNode(group, Path(vf.vfio_node), f"/dev/vfio/{group}")


def unhealthy_reason(
    vf: VF, pf: PF, need_vhost_net: bool = False, missing_dev_nodes: Collection[str] = ()
) -> str | None:
    """Why ``vf`` cannot be handed out now, or None when it is healthy.
    ``missing_dev_nodes`` is the snapshot's ``Inventory.missing_dev_nodes``."""
    problem = pf_problem(pf)
    if problem is not None:
        return problem
    if vf.fn.netdev is not None and not link_is_up(vf.fn.netdev):
        return f"VF netdev {vf.fn.netdev.name} is {vf.fn.netdev.operstate}"
    if vf.fn.is_vfio:
        if vf.fn.iommu_group is None:
            return "bound to vfio-pci but has no IOMMU group"
        if vf.vfio_node is None:
            return f"the vfio node of IOMMU group {vf.fn.iommu_group} is missing"
    if need_vhost_net:
        for node in missing_dev_nodes:
            return f"{node} is missing (pool needs vhost-net)"
    return None


def pf_problem(pf: PF) -> str | None:
    """Why a PF's VFs have no path to the wire, or None."""
    if pf.fn.netdev is not None and not link_is_up(pf.fn.netdev):
        return f"PF {pf.fn.netdev.name} link is {pf.fn.netdev.operstate}"
    return None
