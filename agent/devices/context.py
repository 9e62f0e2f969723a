"""The host handles device management works through, bundled once so each
operation (numvfs, driver binding, VF settings, converge, recovery) takes
one argument."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from nicwarden.agent.host.netlink import Address, Route
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import SysfsWriter
from nicwarden.agent.host.vfnetlink import VfConfigurator
from nicwarden.agent.model import InventorySource
from nicwarden.agent.store import Store


class NetdevInspector(Protocol):
    """What tells whether a VF's netdev is in use."""

    def addresses(self, name: str) -> Sequence[Address]: ...

    def routes(self, name: str) -> Sequence[Route]: ...


class NetdevOps(NetdevInspector, Protocol):
    """Inspection plus the link changes provisioning makes (VF MTU, up)."""

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None) -> None: ...


@dataclass(frozen=True)
class DeviceCtx:
    paths: HostPaths
    writer: SysfsWriter
    inventory: InventorySource
    store: Store
    netdevs: NetdevOps
    vfconf: VfConfigurator
    timeout_s: float = 30.0  # per sysfs write, and for waiting on the result
    allow_noiommu: bool = False
    poll_s: float = 0.05


@dataclass(frozen=True)
class Recovered:
    """How one intent a crash left pending was settled at start."""

    intent: int
    target: str
    outcome: Literal["completed", "rolled_back", "failed"]
    detail: str


def label(address: str, name: str | None) -> str:
    return f"{name} ({address})" if name else address
