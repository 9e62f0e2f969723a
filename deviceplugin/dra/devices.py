"""Which VFs DRA offers, and the device names they carry in ResourceSlices.

Pure (no filesystem, no clock): rerun on every inventory snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from nicwarden.agent.model import PF, VF, Inventory
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.pools import selector_matches


def device_name(pci_address: str) -> str:
    """The ResourceSlice device name of a VF: its BDF with ':' and '.' turned
    into '-' ("0000:3b:02.1" -> "0000-3b-02-1"), a DNS label, as the SR-IOV
    operator's DRA driver names its devices."""
    name = pci_address.lower().replace(":", "-").replace(".", "-")
    if not name or len(name) > 63 or not all(c.isalnum() or c == "-" for c in name):
        raise ValueError(f"{pci_address!r} does not make a DNS label")
    return name


@dataclass(frozen=True)
class DraDevice:
    name: str
    vf: VF
    pf: PF

    @property
    def address(self) -> str:
        return self.vf.address


def dra_matches(cfg: DraConfig, vf: VF, pf: PF) -> bool:
    """True when ``dra:`` is active and one of its selectors admits ``vf``."""
    return cfg.active and any(selector_matches(s, vf, pf) for s in cfg.effective_selectors)


def offered(inventory: Inventory, cfg: DraConfig) -> list[DraDevice]:
    """The VFs DRA offers on this snapshot, sorted by device name."""
    out = [
        DraDevice(device_name(vf.address), vf, pf)
        for pf in inventory.pfs
        for vf in pf.vfs
        if dra_matches(cfg, vf, pf)
    ]
    out.sort(key=lambda d: d.name)
    return out


def by_name(inventory: Inventory, cfg: DraConfig) -> dict[str, DraDevice]:
    return {d.name: d for d in offered(inventory, cfg)}
