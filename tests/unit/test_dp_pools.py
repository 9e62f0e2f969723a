from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.model import Inventory
from nicwarden.deviceplugin.config import PoolConfig, parse_resource_list
from nicwarden.deviceplugin.pools import build_pools
from nicwarden.deviceplugin.state import evaluate
from tests.support.kubelet_fake import (
    PfSpec,
    VfSpec,
    build_inventory,
    kernel_vfs,
    vf_address,
    vfio_vfs,
)

PF0 = "0000:18:00.0"
PF1 = "0000:5e:00.0"


def inventory() -> Inventory:
    return build_inventory(
        [
            PfSpec(PF0, name="ens1f0", numa=0, vfs=kernel_vfs(4) + vfio_vfs(2, start=4)),
            PfSpec(
                PF1,
                name="ens2f0",
                numa=1,
                vendor="15b3",
                device="101b",
                vfs=[VfSpec(0, "mlx5_core", device="101e")],
            ),
        ]
    )


def configs(*entries: dict[str, Any]) -> tuple[PoolConfig, ...]:
    parsed = parse_resource_list(list(entries), "example.com")
    assert parsed.errors == ()
    return parsed.pools


def members(*entries: dict[str, Any], inv: Inventory | None = None) -> dict[str, list[str]]:
    pools = build_pools(inv or inventory(), configs(*entries))
    return {name: [d.address for d in devices] for name, devices in pools.items()}


def a(pf: str, *indexes: int) -> list[str]:
    return [vf_address(pf, i) for i in indexes]


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        ({}, a(PF0, 0, 1, 2, 3, 4, 5) + a(PF1, 0)),
        ({"vendors": ["8086"]}, a(PF0, 0, 1, 2, 3, 4, 5)),
        ({"devices": ["101e"]}, a(PF1, 0)),
        ({"drivers": ["vfio-pci"]}, a(PF0, 4, 5)),
        ({"drivers": ["iavf", "mlx5_core"]}, a(PF0, 0, 1, 2, 3) + a(PF1, 0)),
        ({"pciAddresses": [vf_address(PF0, 2)[5:]]}, a(PF0, 2)),
        ({"pfNames": ["ens1f0#1-2,5"]}, a(PF0, 1, 2, 5)),
        ({"pfNames": ["ens2f0"]}, a(PF1, 0)),
        ({"rootDevices": [PF0 + "#0,3"]}, a(PF0, 0, 3)),
        ({"rootDevices": ["5e:00.0"]}, a(PF1, 0)),
        ({"linkTypes": ["ether"]}, a(PF0, 0, 1, 2, 3, 4, 5) + a(PF1, 0)),
        ({"linkTypes": ["infiniband"]}, []),
        # fields narrow each other
        ({"vendors": ["8086"], "drivers": ["iavf"], "pfNames": ["ens1f0#3-5"]}, a(PF0, 3)),
        ({"vendors": ["15b3"], "pfNames": ["ens1f0"]}, []),
    ],
)
def test_selector_fields(selectors: dict[str, Any], expected: list[str]) -> None:
    assert members({"resourceName": "p", "selectors": [selectors]}) == {"p": expected}


def test_vfio_vf_inherits_pf_link_type() -> None:
    inv = build_inventory([PfSpec(PF0, vfs=vfio_vfs(1))])
    assert members({"resourceName": "p", "selectors": {"linkTypes": ["ether"]}}, inv=inv) == {
        "p": a(PF0, 0)
    }


def test_any_selector_in_the_list_admits() -> None:
    got = members(
        {"resourceName": "p", "selectors": [{"pfNames": ["ens2f0"]}, {"drivers": ["vfio-pci"]}]}
    )
    assert got == {"p": a(PF0, 4, 5) + a(PF1, 0)}


def test_overlapping_pools_first_in_config_order_wins() -> None:
    got = members(
        {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
        {"resourceName": "first4", "selectors": {"pfNames": ["ens1f0#0-4"]}},
        {"resourceName": "rest"},
    )
    assert got == {"dpdk": a(PF0, 4, 5), "first4": a(PF0, 0, 1, 2, 3), "rest": a(PF1, 0)}
    # The same pools in another order give the overlap to the other pool.
    got = members(
        {"resourceName": "first4", "selectors": {"pfNames": ["ens1f0#0-4"]}},
        {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    )
    assert got == {"first4": a(PF0, 0, 1, 2, 3, 4), "dpdk": a(PF0, 5)}


def test_empty_pool_is_present() -> None:
    assert members({"resourceName": "none", "selectors": {"vendors": ["dead"]}}) == {"none": []}


def test_order_is_by_pci_address_not_inventory_order() -> None:
    inv = build_inventory(
        [PfSpec(PF1, name="ens2f0", vfs=kernel_vfs(2)), PfSpec(PF0, vfs=[VfSpec(9), VfSpec(1)])]
    )
    assert members({"resourceName": "p"}, inv=inv) == {"p": a(PF0, 1, 9) + a(PF1, 0, 1)}


def test_need_vhost_net_comes_from_the_admitting_selector() -> None:
    pools = build_pools(
        inventory(),
        configs(
            {"resourceName": "p", "selectors": [{"drivers": ["vfio-pci"]}, {"needVhostNet": True}]}
        ),
    )
    vhost = {d.address: d.need_vhost_net for d in pools["p"]}
    assert vhost[vf_address(PF0, 4)] is False
    assert vhost[vf_address(PF0, 0)] is True


def test_wire_topology_rules(tmp_path: Path) -> None:
    inv = build_inventory(
        [
            PfSpec(PF0, numa=-1, vfs=kernel_vfs(1)),
            PfSpec(PF1, name="ens2f0", numa=1, vfs=kernel_vfs(1)),
        ]
    )
    plain, flat = configs(
        {"resourceName": "plain"}, {"resourceName": "flat", "excludeTopology": True}
    )
    states = evaluate(inv, [plain])
    assert states["plain"].wire == (
        (vf_address(PF0, 0), "Healthy", None),
        (vf_address(PF1, 0), "Healthy", 1),
    )
    states = evaluate(inv, [flat])
    assert [numa for _, _, numa in states["flat"].wire] == [None, None]
