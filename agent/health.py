"""Device health, one rule for every consumer (device plugin, API, CLI):
what makes a VF unusable right now.

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

from dataclasses import dataclass
from pathlib import Path

from nicwarden.agent.host.paths import HostPaths
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


def vfio_node(paths: HostPaths, group: int) -> VfioNode | None:
    """The group's node under the dev root, or None when absent.

    In no-IOMMU mode the kernel names the node ``noiommu-<group>``; the
    container still gets it at ``/dev/vfio/<group>`` (sriov-network-device-plugin
    does the same, and DPDK probes both names).
    """
    container_path = f"/dev/vfio/{group}"
    for name in (str(group), f"noiommu-{group}"):
        host_path = paths.vfio / name
        if host_path.exists():
            return VfioNode(group, host_path, container_path)
    return None


def unhealthy_reason(vf: VF, pf: PF, paths: HostPaths, need_vhost_net: bool) -> str | None:
    """Why ``vf`` cannot be handed out now, or None when it is healthy."""
    problem = pf_problem(pf)
    if problem is not None:
        return problem
    if vf.fn.netdev is not None and not link_is_up(vf.fn.netdev):
        return f"VF netdev {vf.fn.netdev.name} is {vf.fn.netdev.operstate}"
    if vf.fn.is_vfio:
        if vf.fn.iommu_group is None:
            return "bound to vfio-pci but has no IOMMU group"
        if vfio_node(paths, vf.fn.iommu_group) is None:
            return f"{paths.vfio / str(vf.fn.iommu_group)} is missing"
    if need_vhost_net:
        for node in (paths.dev / "vhost-net", paths.dev / "net" / "tun"):
            if not node.exists():
                return f"{node} is missing (pool needs vhost-net)"
    return None


def pf_problem(pf: PF) -> str | None:
    """Why a PF's VFs have no path to the wire, or None."""
    if pf.fn.netdev is not None and not link_is_up(pf.fn.netdev):
        return f"PF {pf.fn.netdev.name} link is {pf.fn.netdev.operstate}"
    return None
