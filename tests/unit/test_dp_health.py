from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent.health import unhealthy_reason, vfio_mount
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.pci import vfio_node
from tests.support.kubelet_fake import PfSpec, VfSpec, build_inventory, make_vfio_nodes

PF = "0000:18:00.0"


def reason(pf: PfSpec, dev: Path, need_vhost: bool = False) -> str | None:
    inv = build_inventory([pf], dev=dev)
    p = inv.pfs[0]
    return unhealthy_reason(p.vfs[0], p, need_vhost, inv.missing_dev_nodes)


@pytest.mark.parametrize(
    ("pf_state", "vf_state", "healthy"),
    [
        ("up", "up", True),
        ("unknown", "unknown", True),
        ("down", "up", False),
        ("lowerlayerdown", "up", False),
        ("up", "down", False),
        ("up", None, True),  # no host netdev (e.g. moved into a pod)
        ("dormant", None, False),
    ],
)
def test_link_rules(tmp_path: Path, pf_state: str, vf_state: str | None, healthy: bool) -> None:
    got = reason(PfSpec(PF, operstate=pf_state, vfs=[VfSpec(0, netdev_state=vf_state)]), tmp_path)
    assert (got is None) is healthy, got


def test_pf_without_netdev_does_not_condemn_vfs(tmp_path: Path) -> None:
    assert reason(PfSpec(PF, name=None, vfs=[VfSpec(0)]), tmp_path) is None


@pytest.mark.parametrize(
    ("nodes", "noiommu", "healthy"),
    [([7], False, True), ([7], True, True), ([8], False, False), ([], False, False)],
)
def test_vfio_group_node(tmp_path: Path, nodes: list[int], noiommu: bool, healthy: bool) -> None:
    make_vfio_nodes(tmp_path, nodes, noiommu=noiommu)
    got = reason(
        PfSpec(PF, vfs=[VfSpec(0, "vfio-pci", iommu_group=7, netdev_state=None)]), tmp_path
    )
    assert (got is None) is healthy, got
    if not healthy:
        assert "vfio node of IOMMU group 7 is missing" in (got or "")


def test_vfio_without_group(tmp_path: Path) -> None:
    pf = PfSpec(PF, vfs=[VfSpec(0, "vfio-pci", netdev_state=None)])
    inv = build_inventory([pf], dev=tmp_path)
    p = inv.pfs[0]
    from dataclasses import replace

    vf = replace(p.vfs[0], fn=replace(p.vfs[0].fn, iommu_group=None))
    assert "no IOMMU group" in (unhealthy_reason(vf, p) or "")


def test_kernel_vf_ignores_vfio_nodes(tmp_path: Path) -> None:
    assert reason(PfSpec(PF, vfs=[VfSpec(0)]), tmp_path) is None


def test_vhost_needs_both_nodes(tmp_path: Path) -> None:
    pf = PfSpec(PF, vfs=[VfSpec(0)])
    assert "vhost-net" in (reason(pf, tmp_path, need_vhost=True) or "")
    (tmp_path / "vhost-net").touch()
    assert "tun" in (reason(pf, tmp_path, need_vhost=True) or "")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tun").touch()
    assert reason(pf, tmp_path, need_vhost=True) is None


def test_vfio_node_paths(tmp_path: Path) -> None:
    make_vfio_nodes(tmp_path, [12], noiommu=True)
    assert vfio_node(HostPaths(dev=tmp_path), 12) == tmp_path / "vfio" / "noiommu-12"
    inv = build_inventory(
        [PfSpec(PF, vfs=[VfSpec(0, "vfio-pci", iommu_group=12, netdev_state=None)])], dev=tmp_path
    )
    mount = vfio_mount(inv.vfs()[0])
    assert mount is not None
    assert mount.host_path == tmp_path / "vfio" / "noiommu-12"
    assert mount.container_path == "/dev/vfio/12"
    make_vfio_nodes(tmp_path, [12])  # both present: the IOMMU one wins
    assert vfio_node(HostPaths(dev=tmp_path), 12) == tmp_path / "vfio" / "12"
    assert vfio_node(HostPaths(dev=tmp_path), 13) is None


def test_health_reads_only_the_snapshot(tmp_path: Path) -> None:
    """The dev root is read when the snapshot is taken, never by health."""
    make_vfio_nodes(tmp_path, [7])
    (tmp_path / "vhost-net").touch()
    inv = build_inventory(
        [PfSpec(PF, vfs=[VfSpec(0, "vfio-pci", iommu_group=7, netdev_state=None)])], dev=tmp_path
    )
    assert inv.missing_dev_nodes == (str(tmp_path / "net" / "tun"),)
    (tmp_path / "vfio" / "7").unlink()
    p = inv.pfs[0]
    assert unhealthy_reason(p.vfs[0], p) is None
    assert "net/tun is missing" in (
        unhealthy_reason(p.vfs[0], p, True, inv.missing_dev_nodes) or ""
    )
