"""Building the pool's ResourceSlices from inventory snapshots (pure parts)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from nicwarden.agent.model import Inventory
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import by_name, device_name, offered
from nicwarden.deviceplugin.dra.slices import (
    MAX_DEVICES,
    MAX_DEVICES_WITH_TAINTS,
    PCI_BUS_ID,
    TAINT_CARRIER_DOWN,
    TAINT_VANISHED,
    PoolTracker,
    build_slices,
)
from tests.support.kubelet_fake import PfSpec, build_inventory, kernel_vfs, vf_address, vfio_vfs

PF0 = "0000:18:00.0"
PF1 = "0000:5e:00.0"
DRIVER = "vf.nicwarden.io"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def cfg(**kw: object) -> DraConfig:
    return DraConfig(enabled=True, driver=DRIVER, **kw)  # type: ignore[arg-type]


def inv(n0: int = 4, n1: int = 0, pf0_state: str = "up") -> Inventory:
    pfs = [PfSpec(PF0, name="ens1f0", numa=1, operstate=pf0_state, vfs=kernel_vfs(n0))]
    if n1:
        pfs.append(PfSpec(PF1, name="ens2f0", vfs=kernel_vfs(n1 - 2) + vfio_vfs(2, n1 - 2)))
    return build_inventory(pfs)


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("0000:3b:02.1", "0000-3b-02-1"),
        ("0000:AF:00.7", "0000-af-00-7"),
        ("abcd:00:1f.0", "abcd-00-1f-0"),
    ],
)
def test_device_name_is_a_dns_label(address: str, name: str) -> None:
    assert device_name(address) == name
    assert _DNS_LABEL.fullmatch(name)


def test_device_name_refuses_what_cannot_be_a_label() -> None:
    with pytest.raises(ValueError, match="DNS label"):
        device_name("0000:3b:02.1/x")


def test_offered_follows_selectors_and_is_off_unless_enabled() -> None:
    snap = inv(4, 4)
    assert offered(snap, DraConfig()) == []
    assert offered(snap, DraConfig(enabled=False, driver=DRIVER)) == []
    every = offered(snap, cfg())
    assert len(every) == 8 and [d.name for d in every] == sorted(d.name for d in every)
    picked = by_name(snap, cfg(selectors=[{"pfNames": ["ens1f0#1-2"]}]))
    assert sorted(picked) == [device_name(vf_address(PF0, 1)), device_name(vf_address(PF0, 2))]


def test_attributes_are_typed_and_qualified() -> None:
    devices = PoolTracker(cfg(), pcie_root=lambda a: "pci0000:17").devices(inv(1, 4))
    first = devices[0]
    attrs = first.attributes
    assert attrs[PCI_BUS_ID] == {"string": vf_address(PF0, 0)}
    assert attrs["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:17"}
    assert attrs["pfName"] == {"string": "ens1f0"}
    assert attrs["vfIndex"] == {"int": 0}
    assert attrs["numaNode"] == {"int": 1}
    assert attrs["driver"] == {"string": "netdev"}
    assert attrs["linkType"] == {"string": "ether"}
    assert attrs["vendor"] == {"string": "8086"} and attrs["device"] == {"string": "1889"}
    vfio = [d for d in devices if d.attributes["driver"] == {"string": "vfio"}]
    assert len(vfio) == 2
    for d in devices:
        assert len(d.attributes) <= 32
        for key, value in d.attributes.items():
            assert re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z_][A-Za-z0-9_]{0,31}", key), key
            assert len(value) == 1
            assert all(len(v) <= 64 for v in value.values() if isinstance(v, str))


def check_pool(slices: list[dict], generation: int) -> list[str]:
    counts = {s["spec"]["pool"]["resourceSliceCount"] for s in slices}
    gens = {s["spec"]["pool"]["generation"] for s in slices}
    assert counts == {len(slices)} and gens == {generation}
    for s in slices:
        assert s["spec"]["nodeName"] == "node-a" and s["spec"]["pool"]["name"] == "node-a"
        assert s["spec"]["driver"] == DRIVER
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert len(names) == len(set(names))
    return names


def test_129_devices_make_two_slices_with_one_generation_and_count() -> None:
    devices = PoolTracker(cfg()).devices(inv(129))
    slices = build_slices(devices, driver=DRIVER, node="node-a", generation=7)
    assert [len(s["spec"]["devices"]) for s in slices] == [MAX_DEVICES, 1]
    assert len(check_pool(slices, 7)) == 129
    assert len({s["metadata"]["name"] for s in slices}) == 2


def test_taints_page_at_64() -> None:
    devices = PoolTracker(cfg()).devices(inv(129, pf0_state="down"))
    assert all(d.taints and d.taints[0].key == TAINT_CARRIER_DOWN for d in devices)
    assert devices[0].taints[0].effect == "NoSchedule"
    slices = build_slices(devices, driver=DRIVER, node="node-a", generation=1)
    assert [len(s["spec"]["devices"]) for s in slices] == [MAX_DEVICES_WITH_TAINTS] * 2 + [1]
    check_pool(slices, 1)


def test_empty_pool_publishes_one_empty_slice() -> None:
    slices = build_slices([], driver=DRIVER, node="node-a", generation=3)
    assert len(slices) == 1 and slices[0]["spec"]["devices"] == []
    check_pool(slices, 3)


def test_taint_time_is_kept_while_the_condition_lasts() -> None:
    tracker = PoolTracker(cfg())
    first = tracker.devices(inv(2, pf0_state="down"))[0].taints[0]
    again = tracker.devices(inv(2, pf0_state="down"))[0].taints[0]
    assert again == first
    assert tracker.devices(inv(2))[0].taints == ()


def test_vanished_vf_is_kept_tainted_until_the_grace_ends() -> None:
    now = [0.0]
    tracker = PoolTracker(cfg(), vanished_grace=60, clock=lambda: now[0])
    full = inv(4)
    tracker.devices(full)
    pf = full.pfs[0]
    # VF 3 disappears while its PF still counts it (numVfs unchanged): vanished.
    gone = replace(full, pfs=(replace(pf, vfs=pf.vfs[:3]),))
    devices = {d.name: d for d in tracker.devices(gone)}
    lost = device_name(vf_address(PF0, 3))
    assert [t.key for t in devices[lost].taints] == [TAINT_VANISHED]
    assert devices[lost].taints[0].effect == "NoExecute"
    now[0] = 59
    assert lost in {d.name for d in tracker.devices(gone)}
    now[0] = 61
    assert lost not in {d.name for d in tracker.devices(gone)}


def test_numvfs_lowered_drops_the_vf_at_once() -> None:
    tracker = PoolTracker(cfg())
    tracker.devices(inv(4))
    after = tracker.devices(inv(2))
    assert [d.name for d in after] == [device_name(vf_address(PF0, i)) for i in range(2)]
    assert all(not d.taints for d in after)
