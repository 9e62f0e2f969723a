"""A pool's current devices with their health: what ListAndWatch advertises
and what Allocate checks requests against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from nicwarden.agent.health import HEALTHY, UNHEALTHY, unhealthy_reason
from nicwarden.agent.model import Inventory
from nicwarden.deviceplugin.config import PoolConfig
from nicwarden.deviceplugin.pools import PoolDevice, build_pools

# What kubelet sees of one device: (ID, health, NUMA node or None).
WireDevice = tuple[str, str, int | None]


@dataclass(frozen=True)
class DeviceStatus:
    device: PoolDevice
    problem: str | None  # why it is Unhealthy; None when Healthy

    @property
    def id(self) -> str:
        return self.device.address

    @property
    def healthy(self) -> bool:
        return self.problem is None

    @property
    def health(self) -> str:
        return HEALTHY if self.problem is None else UNHEALTHY


@dataclass(frozen=True)
class PoolState:
    config: PoolConfig
    devices: tuple[DeviceStatus, ...] = ()

    @cached_property
    def by_id(self) -> dict[str, DeviceStatus]:
        return {d.id: d for d in self.devices}

    @cached_property
    def wire(self) -> tuple[WireDevice, ...]:
        """The advertised list; equal tuples mean kubelet needs no update."""
        return tuple((d.id, d.health, self._topology(d)) for d in self.devices)

    @property
    def healthy_count(self) -> int:
        return sum(1 for d in self.devices if d.healthy)

    def _topology(self, status: DeviceStatus) -> int | None:
        # -1 is the kernel's "no NUMA information"; kubelet's topology manager
        # would read a node -1 literally, so no topology is sent instead.
        numa = status.device.numa_node
        return None if self.config.exclude_topology or numa < 0 else numa


def evaluate(
    inventory: Inventory,
    configs: Sequence[PoolConfig],
    blocked: Mapping[str, str] | None = None,
) -> dict[str, PoolState]:
    """Pools and health for one snapshot (which records the dev-root nodes).
    ``blocked``: devices the agent holds back from pods, and why."""
    held = blocked or {}
    by_name = {c.name: c for c in configs}
    out: dict[str, PoolState] = {}
    for name, devices in build_pools(inventory, configs).items():
        statuses = tuple(
            DeviceStatus(
                d,
                held.get(d.address)
                or unhealthy_reason(d.vf, d.pf, d.need_vhost_net, inventory.missing_dev_nodes),
            )
            for d in devices
        )
        out[name] = PoolState(by_name[name], statuses)
    return out
