"""VF attribute changes (agent/devices/vfsettings.py) in process: the
request split, undo on failure, and recovery of a pending intent, with an
in-memory PF standing in for the kernel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.devices import vfsettings
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.errors import HostError, InvalidArgument, Unsupported
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.vfnetlink import VfSettings
from nicwarden.agent.model import Inventory
from nicwarden.agent.sim.vfconfig import FRESH_VF
from nicwarden.agent.store import Store
from tests.support.kubelet_fake import PfSpec, VfSpec, build_inventory, vf_address

PF = "0000:18:00.0"
VF1 = vf_address(PF, 1)


class FakePf:
    """A PF's VF attribute table; ``refuse`` makes a request touching that
    attribute fail as a driver without the feature would."""

    def __init__(self) -> None:
        self.vfs = {0: FRESH_VF, 1: FRESH_VF}
        self.requests: list[list[str]] = []
        self.refuse: set[str] = set()

    def get(self, pf_ifname: str, vf: int) -> VfSettings:
        return self.vfs[vf]

    def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None:
        given = settings.given()
        self.requests.append(given)
        if self.refuse & set(given):
            raise Unsupported(f"{pf_ifname} VF {vf}: set {given[0]}: not supported")
        self.vfs[vf] = replace(self.vfs[vf], **{k: getattr(settings, k) for k in given})


class Inv:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def snapshot(self) -> Inventory:
        return self.inventory

    def rescan(self) -> Inventory:
        return self.inventory

    def subscribe(self, callback: Callable[[Inventory], None]) -> Callable[[], None]:
        return lambda: None


class Unused:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"not expected: {name}")


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[DeviceCtx]:
    inv = build_inventory([PfSpec(PF, name="ens1f0", vfs=[VfSpec(0), VfSpec(1)])])
    with Store.open(tmp_path / "state") as store:
        yield DeviceCtx(
            paths=HostPaths(sys=tmp_path / "sys"),
            writer=Unused(),
            inventory=Inv(inv),
            store=store,
            netdevs=Unused(),
            vfconf=FakePf(),
        )


def pf(ctx: DeviceCtx) -> FakePf:
    assert isinstance(ctx.vfconf, FakePf)
    return ctx.vfconf


def test_requests_follow_the_kernel_groups() -> None:
    s = VfSettings(trust=True, vlan=5, qos=1, max_tx_rate=10, mac="02:00:00:00:00:01")
    assert [x.given() for x in vfsettings.steps(s)] == [
        ["mac"],
        ["vlan", "qos"],
        ["trust"],
        ["max_tx_rate"],
    ]


def test_restoring_takes_whole_groups_and_drops_qos_without_vlan() -> None:
    assert vfsettings.restoring(FRESH_VF, ["qos"]).given() == ["vlan", "qos", "vlan_proto"]
    assert vfsettings.restoring(FRESH_VF, ["max_tx_rate"]).given() == [
        "min_tx_rate",
        "max_tx_rate",
    ]
    unknown_vlan = replace(FRESH_VF, vlan=None)
    assert vfsettings.restoring(unknown_vlan, ["vlan", "trust"]).given() == ["trust"]


def test_set_records_then_applies(ctx: DeviceCtx) -> None:
    change = vfsettings.set_vf(ctx, VF1, VfSettings(vlan=100, qos=3, spoofchk=False))
    assert change.before == FRESH_VF
    assert (change.after.vlan, change.after.qos, change.after.spoofchk) == (100, 3, False)
    assert pf(ctx).requests == [["vlan", "qos"], ["spoofchk"]]
    (intent,) = [ctx.store.intent(1)]
    assert intent is not None and intent.state == "done"
    assert intent.payload["before"]["spoofchk"] is True
    assert intent.payload["fields"] == ["qos", "spoofchk", "vlan"]


def test_a_failing_request_puts_the_earlier_ones_back(ctx: DeviceCtx) -> None:
    pf(ctx).refuse = {"trust"}
    with pytest.raises(Unsupported, match="its attributes were put back"):
        vfsettings.set_vf(ctx, VF1, VfSettings(vlan=100, trust=True))
    assert pf(ctx).vfs[1] == FRESH_VF
    assert pf(ctx).requests[-1] == ["vlan", "qos", "vlan_proto"]  # the undo: what went in
    intent = ctx.store.intent(1)
    assert intent is not None and intent.state == "rolled_back"


def test_a_failing_undo_leaves_the_intent_for_recovery(ctx: DeviceCtx) -> None:
    class Flaky(FakePf):
        """Takes the VLAN, then fails everything: the undo too."""

        def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None:
            if self.requests:
                self.requests.append(settings.given())
                raise HostError(f"{pf_ifname} VF {vf}: Input/output error")
            super().set(pf_ifname, vf, settings)

    flaky = Flaky()
    with pytest.raises(HostError, match="stays pending for recovery"):
        vfsettings.set_vf(replace(ctx, vfconf=flaky), VF1, VfSettings(vlan=7, trust=True))
    assert flaky.vfs[1].vlan == 7  # half applied, and the original on record
    assert [i.target for i in ctx.store.pending_intents()] == [VF1]

    flaky.requests.clear()  # the PF works again at the next start
    flaky.set = FakePf.set.__get__(flaky)  # type: ignore[method-assign]
    (done,) = vfsettings.recover(replace(ctx, vfconf=flaky))
    assert (done.outcome, done.target) == ("rolled_back", VF1)
    assert flaky.vfs[1] == FRESH_VF and ctx.store.pending_intents() == []


def test_recovery_skips_what_the_driver_does_not_support(ctx: DeviceCtx) -> None:
    before = {"vlan": 0, "qos": 0, "vlan_proto": "802.1q", "trust": False}
    payload = {"before": before, "fields": ["vlan", "trust"]}
    ctx.store.begin_intent(vfsettings.VF_SETTINGS_INTENT, VF1, payload)
    pf(ctx).vfs[1] = replace(FRESH_VF, vlan=9)
    pf(ctx).refuse = {"trust"}
    (done,) = vfsettings.recover(ctx)
    assert done.outcome == "rolled_back" and pf(ctx).vfs[1] == FRESH_VF


@pytest.mark.parametrize(
    ("settings", "message"),
    [(VfSettings(), "nothing to set"), (VfSettings(vlan=5000), "vlan 5000")],
)
def test_bad_input_records_nothing(ctx: DeviceCtx, settings: VfSettings, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        vfsettings.set_vf(ctx, VF1, settings)
    assert pf(ctx).requests == [] and ctx.store.intent(1) is None


def test_recover_settles_an_intent_whose_vf_is_gone(ctx: DeviceCtx) -> None:
    ctx.store.begin_intent(vfsettings.VF_SETTINGS_INTENT, "0000:18:07.0", {"before": {}})
    (done,) = vfsettings.recover(ctx)
    assert (done.outcome, done.detail) == ("rolled_back", "the VF is gone")
    assert ctx.store.pending_intents() == []
