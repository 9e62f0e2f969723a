"""VF admin attributes on the simulated node.

A veth has no VFs for the PF to configure, so the simulator plays the PF
driver: it validates like one, keeps each PF's per-VF settings in a JSON file
under the sim root, and when a MAC is set on a VF whose netdev is in the host
netns it gives the veth that MAC, as a real VF takes the new MAC on the reset
the PF driver does to apply it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nicwarden.agent.errors import HostError, NotFound
from nicwarden.agent.host.discovery import read_netdev
from nicwarden.agent.host.sysfs import link_name, read_int
from nicwarden.agent.host.vfnetlink import VfSettings, validate
from nicwarden.agent.sim.node import SimulatedNode

# What a freshly created VF reports (ice/i40e/mlx5): spoof checking on,
# untrusted, link following the uplink, untagged, unlimited, no admin MAC.
FRESH_VF = VfSettings(
    mac="00:00:00:00:00:00",
    vlan=0,
    qos=0,
    vlan_proto="802.1q",
    spoofchk=True,
    trust=False,
    link_state="auto",
    min_tx_rate=0,
    max_tx_rate=0,
)
ZERO_MAC = "00:00:00:00:00:00"


class SimVfConfigurator:
    """VfConfigurator for a SimulatedNode."""

    def __init__(self, sim: SimulatedNode) -> None:
        self.sim = sim
        self.state_dir = sim.root / "vfconfig"
        self._lock = threading.Lock()

    # -- VfConfigurator ------------------------------------------------------

    def get(self, pf_ifname: str, vf: int) -> VfSettings:
        with self._lock:
            pf = self._pf_address(pf_ifname)
            return self._settings(pf, vf, self._vf_group(pf, pf_ifname, vf))

    def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None:
        validate(vf, settings)
        with self._lock:
            pf = self._pf_address(pf_ifname)
            group = self._vf_group(pf, pf_ifname, vf)
            current = self._settings(pf, vf, group)
            if settings.vlan is not None:
                # One request carries vlan, qos and protocol: unset parts reset.
                settings = replace(
                    settings,
                    qos=settings.qos or 0,
                    vlan_proto=(settings.vlan_proto or "802.1q").lower(),
                )
            if settings.mac is not None:
                settings = replace(settings, mac=settings.mac.lower())
            merged = replace(current, **{k: getattr(settings, k) for k in settings.given()})
            state = self._load(pf)
            state[str(vf)] = {"group": group, "settings": asdict(merged)}
            self._store(pf, state)
            if settings.mac is not None and settings.mac != ZERO_MAC:
                self._apply_mac(pf, vf, settings.mac)

    # -- the PF and its VFs in the fake tree ---------------------------------

    def _pf_address(self, pf_ifname: str) -> str:
        for i in range(len(self.sim.spec.pfs)):
            address = self.sim.pf_address(i)
            netdev = read_netdev(self.sim.paths.pci_devices / address)
            if (netdev.name if netdev else self.sim.pf_name(i)) == pf_ifname:
                return address
        raise NotFound(f"PF netdev {pf_ifname} not found on the simulated node")

    def _vf_group(self, pf: str, pf_ifname: str, vf: int) -> int:
        """The VF's IOMMU group: the simulator gives every newly created VF a
        new one, so it tells a re-created VF (fresh settings) from the old."""
        numvfs = read_int(self.sim.paths.pci_devices / pf / "sriov_numvfs", 0) or 0
        if not 0 <= vf < numvfs:
            raise NotFound(f"PF {pf_ifname} has no VF {vf} ({numvfs} VFs enabled)")
        address = link_name(self.sim.paths.pci_devices / pf / f"virtfn{vf}")
        group = link_name(self.sim.paths.pci_devices / address / "iommu_group") if address else None
        if group is None or not group.isdigit():
            raise NotFound(f"PF {pf_ifname} VF {vf} is not in the device tree")
        return int(group)

    def _settings(self, pf: str, vf: int, group: int) -> VfSettings:
        entry = self._load(pf).get(str(vf))
        if not isinstance(entry, dict) or entry.get("group") != group:
            return FRESH_VF  # never configured, or the VF was re-created since
        try:
            return VfSettings(**entry["settings"])
        except (TypeError, KeyError) as e:
            raise HostError(f"simulated VF settings {self._path(pf)}: bad entry for VF {vf}") from e

    def _apply_mac(self, pf: str, vf: int, mac: str) -> None:
        address = link_name(self.sim.paths.pci_devices / pf / f"virtfn{vf}")
        netdev = read_netdev(self.sim.paths.pci_devices / address) if address else None
        if netdev is not None:  # in the host netns and on a kernel driver
            self.sim.net.set_link(netdev.name, mac=mac)

    # -- state on disk -------------------------------------------------------

    def _path(self, pf: str) -> Path:
        return self.state_dir / f"{pf}.json"

    def _load(self, pf: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(pf).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise HostError(f"simulated VF settings {self._path(pf)} are unreadable: {e}") from e
        return data if isinstance(data, dict) else {}

    def _store(self, pf: str, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(pf).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True, indent=1))
        os.replace(tmp, self._path(pf))  # readers never see half a file
