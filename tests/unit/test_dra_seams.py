"""Where DRA meets the rest of the agent (pure parts): held-back VFs are
tainted in the slices, the CNI gate for DRA VFs, and Prepare's wording of
binding's in-use refusal."""

from __future__ import annotations

from pathlib import Path

from nicwarden.agent.errors import Busy
from nicwarden.agent.model import Inventory
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import device_name
from nicwarden.deviceplugin.dra.gate import ClaimGate
from nicwarden.deviceplugin.dra.prepare import _in_use
from nicwarden.deviceplugin.dra.slices import TAINT_HELD_BACK, PoolTracker
from tests.support.kubelet_fake import (
    MemoryInventory,
    PfSpec,
    build_inventory,
    kernel_vfs,
    vf_address,
)

PF0 = "0000:18:00.0"
DRIVER = "vf.nicwarden.io"


def inv() -> Inventory:
    return build_inventory([PfSpec(PF0, name="ens1f0", vfs=kernel_vfs(4))])


def test_held_back_vfs_are_tainted_noschedule_and_the_taint_lifts() -> None:
    snap = inv()
    held = vf_address(PF0, 1)
    blocked = {held: "out of place with no attachment"}
    tracker = PoolTracker(DraConfig(enabled=True, driver=DRIVER), held_back=lambda: blocked)
    devices = {d.name: d for d in tracker.devices(snap)}
    assert len(devices) == 4  # kept listed, not dropped
    (taint,) = devices[device_name(held)].taints
    assert (taint.key, taint.effect) == (TAINT_HELD_BACK, "NoSchedule")
    assert all(not d.taints for n, d in devices.items() if n != device_name(held))
    blocked.clear()
    assert all(not d.taints for d in tracker.devices(snap))


def test_gate_refuses_a_dra_vf_no_prepared_claim_holds(tmp_path: Path) -> None:
    snap = inv()
    dra_vf, dp_vf = vf_address(PF0, 2), vf_address(PF0, 0)
    cfg = DraConfig(enabled=True, driver=DRIVER, selectors={"pciAddresses": [dra_vf]})
    store = Store.open(tmp_path / "state")
    try:
        gate = ClaimGate(lambda: cfg, MemoryInventory(snap), store)
        why = gate(dra_vf)
        assert why is not None and dra_vf in why and "no prepared ResourceClaim holds it" in why
        assert gate(dp_vf) is None  # the device plugin's: not DRA's business
        assert gate("0000:99:00.1") is None  # not a VF: the attach path says so itself
        device = {"request": "vf", "pool": "n", "device": device_name(dra_vf), "address": dra_vf}
        store.put_dra_claim("u1", "ns", "c", [device], [], "preparing")
        assert gate(dra_vf) is not None  # not prepared yet
        store.set_dra_claim_state("u1", "prepared")
        assert gate(dra_vf) is None
        # DRA off: no gate at all.
        assert ClaimGate(lambda: DraConfig(), MemoryInventory(snap), store)(dra_vf) is None
    finally:
        store.close()


def test_prepare_words_an_in_use_refusal_without_the_cli_force_advice() -> None:
    err = Busy(
        "0000:18:01.3 is in use: netdev x is up with addresses 192.0.2.1/32; force to bind anyway"
    )
    text = _in_use("0000:18:01.3", "vfio-pci", err)
    assert "force" not in text
    assert "0000:18:01.3" in text and "192.0.2.1/32" in text and "in use" in text
