"""The PCI recipes of agent/host/pci.py against a sysfs-shaped tree, with a
tiny stand-in for the kernel's side of the writes (no kernel needed); the
same recipes run against the simulated node in
tests/integration/test_sriov_dpdk.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nicwarden.agent.errors import HostError, NotFound, Unavailable
from nicwarden.agent.host import pci
from nicwarden.agent.host.discovery import scan
from nicwarden.agent.host.paths import HostPaths
from tests.support.fake_sysfs import FakeSysfs

PF0, VF0, VF1 = "0000:18:00.0", "0000:18:01.0", "0000:18:01.1"


class Kernel:
    """Acts on writes the way the kernel would, for the attributes the
    recipes touch; logs each write relative to the sysfs root."""

    def __init__(self, paths: HostPaths, probe_works: bool = True) -> None:
        self.paths = paths
        self.log: list[tuple[str, str]] = []
        self.probe_works = probe_works

    def write(self, path: Path, value: str) -> None:
        self.log.append((str(path.relative_to(self.paths.sys)), value))
        if path.name == "driver_override":
            path.write_text((value.strip() or "(null)") + "\n")
        elif path.name == "unbind":
            (self.paths.pci_devices / value / "driver").unlink()
        elif path.name == "drivers_probe" and self.probe_works:
            dev = self.paths.pci_devices / value
            driver = (dev / "driver_override").read_text().strip()
            (dev / "driver").symlink_to(Path("../../drivers") / driver)
            group = pci.iommu_group(self.paths, value)
            if driver == "vfio-pci" and group is not None:
                (self.paths.vfio / group).touch()  # what udev does after the bind
        elif path.name == "sriov_numvfs":
            path.write_text(value + "\n")


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    t = FakeSysfs(tmp_path)
    t.pf(PF0, total=8, num=2, group=1)
    t.vf(PF0, 0, VF0, group=100)
    t.vf(PF0, 1, VF1, group=101)
    for address in (VF0, VF1):
        (t.devices / address / "driver_override").write_text("(null)\n")
    (t.sys / "bus" / "pci" / "drivers" / "vfio-pci").mkdir()
    (t.sys / "bus" / "pci" / "drivers_probe").touch()
    p = HostPaths(sys=t.sys, dev=tmp_path / "dev")
    p.vfio.mkdir(parents=True)
    pci.vfio_container(p).touch()
    return p


@pytest.mark.parametrize(
    ("current", "n", "writes"), [(2, 4, ["0", "4"]), (0, 3, ["3"]), (2, 0, ["0"])]
)
def test_num_vfs_goes_through_zero(
    paths: HostPaths, current: int, n: int, writes: list[str]
) -> None:
    kernel = Kernel(paths)
    pci.set_num_vfs(paths, kernel, PF0, n, current=current, timeout_s=5)
    assert kernel.log == [(f"bus/pci/devices/{PF0}/sriov_numvfs", w) for w in writes]
    assert pci.num_vfs(paths, PF0) == n


def test_bind_driver_follows_the_kernel_recipe(paths: HostPaths) -> None:
    kernel = Kernel(paths)
    assert pci.vfio_node(paths, 101) is None
    pci.bind_driver(paths, kernel, VF1, "vfio-pci", timeout_s=5, poll_s=0.01)
    assert kernel.log == [
        (f"bus/pci/devices/{VF1}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/iavf/unbind", VF1),
        ("bus/pci/drivers_probe", VF1),
        (f"bus/pci/devices/{VF1}/driver_override", "\n"),
    ]
    assert pci.bound_driver(paths, VF1) == "vfio-pci"
    assert pci.driver_override(paths, VF1) is None
    assert pci.vfio_nodes(paths, VF1) == [paths.vfio / "vfio", paths.vfio / "101"]

    kernel.log.clear()  # already there: only a (no-op) override check
    pci.bind_driver(paths, kernel, VF1, "vfio-pci", timeout_s=5, poll_s=0.01)
    assert kernel.log == []


def test_a_probe_that_binds_nothing_times_out_naming_the_state(paths: HostPaths) -> None:
    kernel = Kernel(paths, probe_works=False)
    with pytest.raises(HostError, match=f"{VF0} is on no driver, not vfio-pci"):
        pci.bind_driver(paths, kernel, VF0, "vfio-pci", timeout_s=0.2, poll_s=0.01)


def test_step_errors_name_the_step(paths: HostPaths) -> None:
    class Refusing(Kernel):
        def write(self, path: Path, value: str) -> None:
            if path.name == "unbind":
                raise HostError(f"write {value!r} to {path}: Input/output error")
            super().write(path, value)

    with pytest.raises(HostError, match="^unbind from iavf: write"):
        pci.bind_driver(paths, Refusing(paths), VF0, "vfio-pci", timeout_s=1, poll_s=0.01)


def test_a_hung_write_is_unavailable_and_keeps_running(paths: HostPaths) -> None:
    release, finished = threading.Event(), threading.Event()

    class Hanging:
        def write(self, path: Path, value: str) -> None:
            release.wait(10)
            finished.set()

    with pytest.raises(Unavailable, match="has not returned after 0.1s"):
        pci.set_num_vfs(paths, Hanging(), PF0, 3, current=0, timeout_s=0.1)
    release.set()
    assert finished.wait(5)


def test_vfio_node_names_and_lookups(paths: HostPaths) -> None:
    (paths.vfio / "noiommu-7").touch()
    assert pci.vfio_node(paths, 7) == paths.vfio / "noiommu-7"
    (paths.vfio / "7").touch()
    assert pci.vfio_node(paths, 7) == paths.vfio / "7"
    (paths.pci_devices / VF0 / "iommu_group").unlink()
    with pytest.raises(NotFound, match="no IOMMU group"):
        pci.vfio_nodes(paths, VF0)
    # Where the node will be, before udev made it.
    assert pci.vfio_nodes(paths, VF1)[1] == paths.vfio / "101"


def test_presence_and_driver_reads(paths: HostPaths) -> None:
    assert pci.device_exists(paths, VF0) and not pci.device_exists(paths, "0000:77:00.0")
    assert pci.driver_loaded(paths, "vfio-pci") and not pci.driver_loaded(paths, "uio")
    assert pci.drivers_autoprobe(paths, PF0)  # absent attribute: the kernel default, on
    assert not pci.noiommu_enabled(paths)
    assert pci.missing_vhost_nodes(paths) == (
        str(paths.dev / "vhost-net"),
        str(paths.dev / "net" / "tun"),
    )


def test_scan_records_the_vfio_node_and_dev_nodes(paths: HostPaths) -> None:
    kernel = Kernel(paths)
    assert scan(paths).vfs()[1].vfio_node is None  # on iavf
    pci.bind_driver(paths, kernel, VF1, "vfio-pci", timeout_s=5, poll_s=0.01)
    inv = scan(paths)
    assert inv.vfs()[1].vfio_node == str(paths.vfio / "101")
    assert inv.vfs()[0].vfio_node is None
    (paths.vfio / "101").unlink()  # udev removed it: the next scan says so
    assert scan(paths).vfs()[1].vfio_node is None
    (paths.dev / "vhost-net").touch()
    assert scan(paths).missing_dev_nodes == (str(paths.dev / "net" / "tun"),)
