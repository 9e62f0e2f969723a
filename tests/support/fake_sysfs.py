"""A tiny builder of sysfs-shaped trees for pure parsing tests (no kernel)."""

from __future__ import annotations

from pathlib import Path


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.devices = self.sys / "bus" / "pci" / "devices"
        self.devices.mkdir(parents=True)
        (self.sys / "bus" / "pci" / "drivers").mkdir(parents=True)
        (self.sys / "kernel" / "iommu_groups").mkdir(parents=True)

    def function(
        self,
        address: str,
        *,
        vendor: str = "0x8086",
        device: str = "0x1889",
        cls: str = "0x020000",
        numa: str | None = "0",
        driver: str | None = "iavf",
        group: int | None = None,
    ) -> Path:
        d = self.devices / address
        d.mkdir()
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
        (d / "class").write_text(cls + "\n")
        if numa is not None:
            (d / "numa_node").write_text(numa + "\n")
        if driver:
            drv = self.sys / "bus" / "pci" / "drivers" / driver
            drv.mkdir(exist_ok=True)
            (d / "driver").symlink_to(Path("../../drivers") / driver)
        if group is not None:
            g = self.sys / "kernel" / "iommu_groups" / str(group)
            g.mkdir(exist_ok=True)
            (d / "iommu_group").symlink_to(Path("../../../kernel/iommu_groups") / str(group))
        return d

    def pf(self, address: str, total: int, num: int, **kw: object) -> Path:
        d = self.function(address, device="0x1592", driver="ice", **kw)  # type: ignore[arg-type]
        (d / "sriov_totalvfs").write_text(f"{total}\n")
        (d / "sriov_numvfs").write_text(f"{num}\n")
        return d

    def vf(self, pf: str, index: int, address: str, **kw: object) -> Path:
        d = self.function(address, **kw)  # type: ignore[arg-type]
        (self.devices / pf / f"virtfn{index}").symlink_to(Path("..") / address)
        (d / "physfn").symlink_to(Path("..") / pf)
        return d

    def netdev(
        self,
        address: str,
        name: str,
        *,
        mac: str = "02:00:00:00:00:01",
        mtu: int = 1500,
        operstate: str = "up",
        carrier: str | None = "1",
        arphrd: int = 1,
        ifindex: int = 10,
    ) -> Path:
        nd = self.devices / address / "net" / name
        nd.mkdir(parents=True)
        (nd / "address").write_text(mac + "\n")
        (nd / "mtu").write_text(f"{mtu}\n")
        (nd / "operstate").write_text(operstate + "\n")
        if carrier is not None:
            (nd / "carrier").write_text(carrier + "\n")
        (nd / "type").write_text(f"{arphrd}\n")
        (nd / "ifindex").write_text(f"{ifindex}\n")
        return nd
