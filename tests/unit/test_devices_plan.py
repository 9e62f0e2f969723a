"""``sriov:`` config parsing (agent/devices/spec.py) and the pure provisioning
plan (agent/devices/plan.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.devices.binding import in_use_from_store
from nicwarden.agent.devices.plan import (
    BindVf,
    Drift,
    Plan,
    SetNumVfs,
    SetVfMtu,
    Skipped,
    plan,
)
from nicwarden.agent.devices.spec import PfPolicy, parse_sriov
from nicwarden.agent.errors import ConfigError
from nicwarden.agent.model import PF, VF, Inventory, NetdevState, PciFunction
from nicwarden.agent.store import AttachmentKey, Store
from nicwarden.agent.vf_ranges import parse_vf_indices

# -- config -------------------------------------------------------------------


def test_valid_config_is_normalised() -> None:
    (p,) = parse_sriov(
        [
            {
                "rootDevices": ["18:00.0"],
                "vendors": ["0x8086"],
                "devices": ["1592"],
                "numVfs": 8,
                "mtu": 9000,
                "vfDrivers": [
                    {"vfs": "0-3,5", "driver": "vfio-pci"},
                    {"vfs": 7, "driver": "kernel"},
                ],
            }
        ]
    )
    assert p.root_devices == ("0000:18:00.0",) and p.vendors == ("8086",)
    assert p.num_vfs == 8 and p.mtu == 9000
    assert [p.driver_for(i) for i in range(8)] == ["vfio-pci"] * 4 + [
        "kernel",
        "vfio-pci",
        "kernel",
        "kernel",
    ]


def test_empty_or_missing_is_no_policy() -> None:
    assert parse_sriov(None) == () and parse_sriov([]) == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"pfNames": ["a"]}, "config: sriov: expected a list"),
        (["eth0"], "sriov[0]: expected a mapping, got 'eth0'"),
        ([{"pfNames": ["a"], "numVf": 4}], "sriov[0].numVf: unknown key; did you mean 'numVfs'?"),
        ([{"pfNames": ["a"]}], "sriov[0].numVfs: required"),
        ([{"pfNames": ["a"], "numVfs": True}], "sriov[0].numVfs: expected an integer 0-65535"),
        ([{"pfNames": ["a"], "numVfs": -1}], "sriov[0].numVfs: expected an integer"),
        ([{"numVfs": 4}], "sriov[0]: needs a selector"),
        ([{"pfNames": "ens1f0", "numVfs": 4}], "sriov[0].pfNames: expected a non-empty list"),
        (
            [{"pfNames": ["a"], "numVfs": 1}, {"rootDevices": ["18:00"], "numVfs": 1}],
            "sriov[1].rootDevices[0]: '18:00' is not a PCI address",
        ),
        ([{"vendors": ["intel"], "numVfs": 1}], "sriov[0].vendors[0]: 'intel' is not a 4-digit"),
        ([{"pfNames": ["a"], "numVfs": 4, "mtu": 20}], "sriov[0].mtu: expected an integer 68-"),
        (
            [{"pfNames": ["a"], "numVfs": 4, "vfDrivers": [{"vfs": "2-5", "driver": "vfio-pci"}]}],
            "sriov[0].vfDrivers[0].vfs: VF 5 does not exist with numVfs 4",
        ),
        (
            [{"pfNames": ["a"], "numVfs": 4, "vfDrivers": [{"vfs": "3-1", "driver": "kernel"}]}],
            "sriov[0].vfDrivers[0].vfs: VF range '3-1' runs backwards",
        ),
        (
            [{"pfNames": ["a"], "numVfs": 4, "vfDrivers": [{"vfs": "0", "driver": "dpdk"}]}],
            "sriov[0].vfDrivers[0].driver: expected vfio-pci or kernel, got 'dpdk'",
        ),
        (
            [
                {
                    "pfNames": ["a"],
                    "numVfs": 4,
                    "vfDrivers": [
                        {"vfs": "0-2", "driver": "vfio-pci"},
                        {"vfs": "2,3", "driver": "kernel"},
                    ],
                }
            ],
            "sriov[0].vfDrivers[1].vfs: overlaps sriov[0].vfDrivers[0]",
        ),
        (
            [{"pfNames": ["a", "b"], "numVfs": 1}, {"pfNames": ["b"], "numVfs": 2}],
            "sriov[1].pfNames: b is already selected by sriov[0]",
        ),
        (
            [
                {"rootDevices": ["0000:18:00.0"], "numVfs": 1},
                {"rootDevices": ["18:00.0"], "numVfs": 1},
            ],
            "sriov[1].rootDevices: 0000:18:00.0 is already selected by sriov[0]",
        ),
    ],
)
def test_config_errors_name_index_and_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sriov(raw)
    assert message in str(err.value)


def test_every_problem_is_reported() -> None:
    with pytest.raises(ConfigError) as err:
        parse_sriov([{"pfNames": ["a"]}, {"pfNames": ["b"], "numVfs": 2, "mtu": "big"}, 3])
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert [line.split(": ")[1] for line in lines] == [
        "sriov[0].numVfs",
        "sriov[1].mtu",
        "sriov[2]",
    ]


@pytest.mark.parametrize(
    ("text", "expected"), [("0-3,5", [0, 1, 2, 3, 5]), ("7", [7]), (2, [2]), (" 1 , 0 ", [0, 1])]
)
def test_vf_ranges(text: object, expected: list[int]) -> None:
    assert parse_vf_indices(text) == expected


# -- plan ---------------------------------------------------------------------


def fn(address: str, driver: str | None, mtu: int | None, device: str = "1889") -> PciFunction:
    netdev = None
    if mtu is not None:
        netdev = NetdevState(f"if{address[-4:]}", "02:00:00:00:00:01", mtu, "up", True, "ether", 1)
    return PciFunction(address, "8086", device, driver, 0, 100, netdev)


def make_pf(
    bus: int,
    name: str,
    total: int,
    vfs: Sequence[tuple[str | None, int | None]],
    device: str = "1592",
) -> PF:
    address = f"0000:{bus:02x}:00.0"
    pf_fn = PciFunction(
        address,
        "8086",
        device,
        "ice",
        0,
        None,
        NetdevState(name, "02:00:00:00:01:00", 1500, "up", True, "ether", 2),
    )
    return PF(
        pf_fn,
        total,
        len(vfs),
        tuple(
            VF(fn(f"0000:{bus:02x}:01.{j}", drv, mtu), address, name, j)
            for j, (drv, mtu) in enumerate(vfs)
        ),
    )


def vf_addr(bus: int, j: int) -> str:
    return f"0000:{bus:02x}:01.{j}"


KERNEL4 = [("iavf", 1500)] * 4


def policy(num_vfs: int, names: tuple[str, ...] = ("ens0",), **kw: Any) -> PfPolicy:
    return PfPolicy(index=kw.pop("index", 0), num_vfs=num_vfs, pf_names=names, **kw)


def parsed(*entries: dict[str, Any]) -> tuple[PfPolicy, ...]:
    return parse_sriov(list(entries))


def test_grow() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, []),))
    p = plan([policy(4)], inv, {})
    assert p.actions == (SetNumVfs("0000:18:00.0", "ens0", 0, 4),)
    assert p.drift == (Drift("0000:18:00.0", "numVfs", "4", "0"),)
    assert p.skipped == ()


def test_shrink() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, KERNEL4),))
    p = plan([policy(2)], inv, {})
    assert p.actions == (SetNumVfs("0000:18:00.0", "ens0", 4, 2),)


def test_shrink_blocked_by_allocation_and_attachment_names_pods(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.record_allocation("nicwarden.io/fast", [vf_addr(0x18, 1)], "default", "web-0", "u1")
        store.put_attachment(
            AttachmentKey("c1", "net1", "prod/sriov-net"),
            netns="/proc/1/ns/net",
            device=vf_addr(0x18, 3),
            kind="sriov",
            pod_namespace="prod",
            pod_name="db-1",
            pod_uid="u2",
            original={},
            config={},
        )
        in_use = in_use_from_store(store)
    inv = Inventory((make_pf(0x18, "ens0", 8, KERNEL4),))
    p = plan([policy(2)], inv, in_use)
    assert p.actions == ()
    (skip,) = p.skipped
    assert skip.subject == "0000:18:00.0"
    assert "default/web-0" in skip.reason and "prod/db-1" in skip.reason
    assert vf_addr(0x18, 1) in skip.reason and vf_addr(0x18, 3) in skip.reason
    assert p.drift == (Drift("0000:18:00.0", "numVfs", "2", "4"),)


def test_growing_a_pf_with_vfs_in_use_is_blocked_too() -> None:
    # Growing 4 -> 6 goes through 0, which removes the VF in use.
    inv = Inventory((make_pf(0x18, "ens0", 8, KERNEL4),))
    p = plan([policy(6)], inv, {vf_addr(0x18, 0): "allocated to pod a/b"})
    assert p.actions == () and "a/b" in p.skipped[0].reason


def test_over_total_vfs_is_skipped() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, []),))
    p = plan([policy(9)], inv, {})
    assert p.actions == ()
    assert p.skipped == (Skipped("0000:18:00.0", "sriov[0].numVfs 9 exceeds sriov_totalvfs 8"),)


def test_driver_ranges() -> None:
    vfs: list[tuple[str | None, int | None]] = [
        ("iavf", 1500),
        ("iavf", 1500),
        ("vfio-pci", None),
        ("vfio-pci", None),
        (None, None),
    ]
    inv = Inventory((make_pf(0x18, "ens0", 8, vfs),))
    desired = parsed(
        {"pfNames": ["ens0"], "numVfs": 5, "vfDrivers": [{"vfs": "1-2", "driver": "vfio-pci"}]}
    )
    p = plan(desired, inv, {})
    pf = "0000:18:00.0"
    assert p.actions == (
        BindVf(pf, vf_addr(0x18, 1), 1, "iavf", "vfio-pci"),
        BindVf(pf, vf_addr(0x18, 3), 3, "vfio-pci", "kernel"),
        BindVf(pf, vf_addr(0x18, 4), 4, None, "kernel"),
    )
    assert [(d.subject[-1], d.what, d.desired, d.actual) for d in p.drift] == [
        ("1", "driver", "vfio-pci", "iavf"),
        ("3", "driver", "kernel", "vfio-pci"),
        ("4", "driver", "kernel", "unbound"),
    ]


def test_driver_change_of_a_vf_in_use_is_deferred() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, KERNEL4),))
    desired = parsed(
        {"pfNames": ["ens0"], "numVfs": 4, "vfDrivers": [{"vfs": "0", "driver": "vfio-pci"}]}
    )
    p = plan(desired, inv, {vf_addr(0x18, 0): "attached to pod ns/p as net1"})
    assert p.actions == ()
    assert p.skipped == (
        Skipped(
            vf_addr(0x18, 0), "driver change to vfio-pci deferred: attached to pod ns/p as net1"
        ),
    )


def test_mtu_only_for_kernel_vfs_with_a_host_netdev() -> None:
    vfs: list[tuple[str | None, int | None]] = [
        ("iavf", 1500),
        ("iavf", 9000),
        ("iavf", None),  # in a pod: its netdev is not in the host netns
        ("vfio-pci", None),
    ]
    inv = Inventory((make_pf(0x18, "ens0", 8, vfs),))
    desired = parsed(
        {
            "pfNames": ["ens0"],
            "numVfs": 4,
            "mtu": 9000,
            "vfDrivers": [{"vfs": "3", "driver": "vfio-pci"}],
        }
    )
    p = plan(desired, inv, {})
    assert p.actions == (SetVfMtu("0000:18:00.0", vf_addr(0x18, 0), "if01.0", 1500, 9000),)
    assert p.drift == (Drift(vf_addr(0x18, 0), "mtu", "9000", "1500"),)


def test_no_change_when_converged_then_drift_by_hand() -> None:
    desired = parsed({"pfNames": ["ens0"], "numVfs": 4, "mtu": 1500})
    inv = Inventory((make_pf(0x18, "ens0", 8, KERNEL4),))
    assert plan(desired, inv, {}) == Plan()
    hand = Inventory((make_pf(0x18, "ens0", 8, [*KERNEL4[:3], ("iavf", 1400)]),))
    p = plan(desired, hand, {})
    assert p.drift == (Drift(vf_addr(0x18, 3), "mtu", "1500", "1400"),)
    assert p.actions == (SetVfMtu("0000:18:00.0", vf_addr(0x18, 3), "if01.3", 1400, 1500),)


def test_vf_level_changes_wait_for_the_vf_count() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, [("iavf", 1500)] * 2),))
    desired = parsed(
        {
            "pfNames": ["ens0"],
            "numVfs": 4,
            "mtu": 9000,
            "vfDrivers": [{"vfs": "0", "driver": "vfio-pci"}],
        }
    )
    p = plan(desired, inv, {})
    assert p.actions == (SetNumVfs("0000:18:00.0", "ens0", 2, 4),)


def test_two_entries_selecting_one_pf_and_an_entry_selecting_none() -> None:
    inv = Inventory((make_pf(0x18, "ens0", 8, []), make_pf(0x19, "ens1", 8, [], device="1593")))
    desired = parsed(
        {"vendors": ["8086"], "numVfs": 2},
        {"devices": ["1593"], "numVfs": 3},
        {"pfNames": ["ens9"], "numVfs": 1},
    )
    p = plan(desired, inv, {})
    assert p.actions == (SetNumVfs("0000:18:00.0", "ens0", 0, 2),)
    assert p.skipped == (
        Skipped("sriov[2]", "selects no PF on this node"),
        Skipped("0000:19:00.0", "config error: selected by both sriov[0] and sriov[1]"),
    )


def test_unselected_pfs_are_left_alone_and_stages_are_ordered() -> None:
    inv = Inventory(
        (
            make_pf(0x18, "ens0", 8, KERNEL4),
            make_pf(0x19, "ens1", 8, []),
            make_pf(0x1A, "ens2", 8, KERNEL4),
        )
    )
    desired = parsed(
        {"pfNames": ["ens0"], "numVfs": 4, "mtu": 9000},
        {"pfNames": ["ens1"], "numVfs": 1},
    )
    p = plan(desired, inv, {})
    assert [type(a).__name__ for a in p.actions] == ["SetNumVfs"] + ["SetVfMtu"] * 4
    assert all(not a.pf.startswith("0000:1a") for a in p.actions)
