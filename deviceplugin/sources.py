"""The two narrow seams the device plugin depends on.

Both are structural (``typing.Protocol``): the agent's live inventory and its
sqlite store satisfy them without importing anything from here, and tests drive
them with small in-memory objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nicwarden.agent.model import Inventory


class InventorySource(Protocol):
    """Publishes immutable inventory snapshots."""

    def snapshot(self) -> Inventory:
        """The latest snapshot."""
        ...

    def subscribe(self, callback: Callable[[Inventory], None]) -> Callable[[], None]:
        """Call ``callback`` with each new snapshot (VF added/removed, driver
        change, link up/down, device gone); returns the unsubscribe function."""
        ...


class AllocationRecorder(Protocol):
    """Durable record of what kubelet allocated (wired to the agent's store)."""

    def record_allocation(self, resource: str, device_ids: list[str]) -> None: ...
