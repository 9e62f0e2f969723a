"""The two narrow seams the device plugin depends on.

Both are structural (``typing.Protocol``): the agent's live inventory and its
sqlite store satisfy them without importing anything from here, and tests drive
them with small in-memory objects.
"""

from __future__ import annotations

from typing import Protocol

# Declared beside the Inventory it describes; re-exported for the plugin's modules.
from nicwarden.agent.model import InventorySource

__all__ = ["AllocationRecorder", "InventorySource"]


class AllocationRecorder(Protocol):
    """Durable record of what kubelet allocated (wired to the agent's store)."""

    def record_allocation(self, resource: str, device_ids: list[str]) -> None: ...
