"""The CNI side of "a VF that DRA offers belongs to claims": an ADD may take
such a VF only while a prepared ResourceClaim holds it.

The device plugin's VFs are looser (kubelet's Allocate names no pod, so the
ADD ties them afterwards); a DRA VF has a claim on record from Prepare, so an
ADD for one without it is a pod that was never allocated the VF, and is
refused before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nicwarden.agent.model import VF, Inventory
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import dra_matches
from nicwarden.deviceplugin.dra.status import claim_for_device


class Snapshots(Protocol):
    def snapshot(self) -> Inventory: ...


class ClaimGate:
    """``AttachContext.unclaimed``: why an ADD may not take a VF, or None."""

    def __init__(self, config: Callable[[], DraConfig], inventory: Snapshots, store: Store) -> None:
        # A callable: the ``dra:`` selectors change on reload.
        self._config = config
        self._inventory = inventory
        self._store = store

    def __call__(self, address: str) -> str | None:
        cfg = self._config()
        if not cfg.active:
            return None
        inventory = self._inventory.snapshot()
        vf = inventory.find(address)
        if not isinstance(vf, VF):
            return None  # the attach path reports a missing or non-VF deviceID itself
        pf = next((p for p in inventory.pfs if p.address == vf.pf_address), None)
        if pf is None or not dra_matches(cfg, vf, pf):
            return None
        if claim_for_device(self._store, address) is not None:
            return None
        return (
            f"VF {address} is offered through DRA ({cfg.driver_name}) and no prepared"
            " ResourceClaim holds it: the pod must get it through a ResourceClaim that"
            " kubelet prepared on this node"
        )
