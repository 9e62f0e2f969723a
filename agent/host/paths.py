"""Where the host's kernel interfaces live. Injected everywhere so a simulated
node (a temp dir) and a real one (``/sys``, ``/dev``) run the same code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostPaths:
    sys: Path = Path("/sys")
    dev: Path = Path("/dev")
    run: Path = Path("/run")
    netns_dir: Path = Path("/run/netns")
    bpffs: Path = Path("/sys/fs/bpf")

    @property
    def pci_devices(self) -> Path:
        return self.sys / "bus" / "pci" / "devices"

    @property
    def pci_drivers(self) -> Path:
        return self.sys / "bus" / "pci" / "drivers"

    @property
    def drivers_probe(self) -> Path:
        return self.sys / "bus" / "pci" / "drivers_probe"

    @property
    def class_net(self) -> Path:
        return self.sys / "class" / "net"

    @property
    def iommu_groups(self) -> Path:
        return self.sys / "kernel" / "iommu_groups"

    @property
    def vfio(self) -> Path:
        return self.dev / "vfio"
