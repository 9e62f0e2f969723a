from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent.errors import NotFound
from nicwarden.agent.host.discovery import scan
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import check_root
from nicwarden.agent.model import PF, VF
from tests.support.fake_sysfs import FakeSysfs

PF0, VF0, VF1 = "0000:18:00.0", "0000:18:01.0", "0000:18:01.1"


@pytest.fixture
def tree(tmp_path: Path) -> FakeSysfs:
    t = FakeSysfs(tmp_path)
    t.pf(PF0, total=8, num=2, group=1)
    t.netdev(PF0, "ens1f0", mac="b4:96:91:00:00:01", ifindex=2)
    t.vf(PF0, 0, VF0, group=100)
    t.netdev(VF0, "ens1f0v0", mac="02:00:00:00:00:10", mtu=9000, ifindex=20)
    t.vf(PF0, 1, VF1, driver="vfio-pci", group=101, numa="-1")
    return t


def paths(t: FakeSysfs) -> HostPaths:
    return HostPaths(sys=t.sys, dev=t.sys.parent / "dev")


def test_pf_and_vfs_parsed(tree: FakeSysfs) -> None:
    inv = scan(paths(tree))
    assert len(inv.pfs) == 1
    pf = inv.pfs[0]
    assert (pf.address, pf.name, pf.total_vfs, pf.num_vfs) == (PF0, "ens1f0", 8, 2)
    assert (pf.fn.vendor, pf.fn.device, pf.fn.driver) == ("8086", "1592", "ice")
    vf0, vf1 = pf.vfs
    assert (vf0.address, vf0.index, vf0.pf_name, vf0.pf_address) == (VF0, 0, "ens1f0", PF0)
    assert vf0.fn.netdev is not None
    assert (vf0.fn.netdev.name, vf0.fn.netdev.mac, vf0.fn.netdev.mtu) == (
        "ens1f0v0",
        "02:00:00:00:00:10",
        9000,
    )
    assert vf0.fn.netdev.carrier and vf0.fn.netdev.link_type == "ether"
    assert vf0.fn.iommu_group == 100 and vf0.fn.numa_node == 0
    assert vf1.fn.is_vfio and vf1.fn.netdev is None and vf1.fn.numa_node == -1


def test_find_by_address_short_address_and_netdev(tree: FakeSysfs) -> None:
    inv = scan(paths(tree))
    assert isinstance(inv.find(PF0), PF)
    assert isinstance(inv.find("18:01.0"), VF)
    found = inv.find("ens1f0v0")
    assert isinstance(found, VF) and found.address == VF0
    assert inv.find("0000:99:00.0") is None


def test_dangling_netdev_link_means_not_in_host_netns(tree: FakeSysfs, tmp_path: Path) -> None:
    net = tree.devices / VF1 / "net"
    net.mkdir()
    (net / "net1").symlink_to(tmp_path / "gone")
    vf1 = scan(paths(tree)).pfs[0].vfs[1]
    assert vf1.fn.netdev is None


def test_unbound_and_missing_attributes(tree: FakeSysfs) -> None:
    tree.vf(PF0, 2, "0000:18:01.2", driver=None, numa=None)
    vf2 = scan(paths(tree)).pfs[0].vfs[2]
    assert vf2.fn.driver is None and vf2.fn.numa_node == -1 and vf2.fn.iommu_group is None


def test_carrier_unreadable_when_down(tree: FakeSysfs) -> None:
    tree.vf(PF0, 2, "0000:18:01.2")
    tree.netdev("0000:18:01.2", "ens1f0v2", operstate="down", carrier=None, arphrd=32)
    nd = scan(paths(tree)).pfs[0].vfs[2].fn.netdev
    assert nd is not None and not nd.carrier and nd.operstate == "down"
    assert nd.link_type == "infiniband"


def test_non_network_and_non_sriov_functions_skipped(tree: FakeSysfs) -> None:
    tree.function("0000:00:1f.2", cls="0x010601", driver="ahci")  # SATA controller
    tree.function("0000:3b:00.0", device="0x1592", driver="ice")  # NIC without SR-IOV
    assert [pf.address for pf in scan(paths(tree)).pfs] == [PF0]


def test_vf_vanishing_mid_scan_is_skipped(tree: FakeSysfs) -> None:
    (tree.devices / PF0 / "virtfn5").symlink_to(Path("..") / "0000:18:01.5")
    assert [vf.index for vf in scan(paths(tree)).pfs[0].vfs] == [0, 1]


def test_virtfn_order_is_numeric(tree: FakeSysfs) -> None:
    for i in range(2, 12):
        tree.vf(PF0, i, f"0000:18:{1 + i // 8:02x}.{i % 8}")
    assert [vf.index for vf in scan(paths(tree)).pfs[0].vfs] == list(range(12))


def test_check_root_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        check_root(HostPaths(sys=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="not a sysfs tree"):
        check_root(HostPaths(sys=tmp_path / "empty"))
