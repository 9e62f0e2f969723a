"""The DRA plugin's pure parts: reading an allocation, merging opaque
configs, CDI names, and the store's claim checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.errors import NotFound, StoreError
from nicwarden.agent.schema import Invalid
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.dra import cdi
from nicwarden.deviceplugin.dra.claims import (
    AllocatedDevice,
    ClaimError,
    ClaimRef,
    OpaqueConfig,
    allocation,
)
from nicwarden.deviceplugin.dra.vfconfig import VfConfig, configs_for

DRIVER = "vf.nicwarden.io"
REF = ClaimRef("ns1", "c1", "uid-1")


def claim(
    results: list[dict[str, Any]], config: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "c1", "namespace": "ns1", "uid": "uid-1"},
        "status": {"allocation": {"devices": {"results": results, "config": config or []}}},
    }


def test_allocation_keeps_only_this_drivers_results_and_configs() -> None:
    got = allocation(
        claim(
            [
                {"request": "nic/fast", "driver": DRIVER, "pool": "n1", "device": "0000-19-00-0"},
                {"request": "gpu", "driver": "gpu.example.com", "pool": "n1", "device": "g0"},
                {"request": "nic2", "driver": DRIVER, "pool": "n1", "device": "0000-19-00-1"},
            ],
            [
                {"source": "FromClass", "opaque": {"driver": "gpu.example.com", "parameters": {}}},
                {
                    "source": "FromClaim",
                    "requests": ["nic/fast"],
                    "opaque": {"driver": DRIVER, "parameters": {"ifName": "a"}},
                },
            ],
        ),
        REF,
        DRIVER,
    )
    # A firstAvailable subrequest is reported under its main request.
    assert got.devices == (
        AllocatedDevice("nic", "n1", "0000-19-00-0"),
        AllocatedDevice("nic2", "n1", "0000-19-00-1"),
    )
    assert got.configs == (OpaqueConfig(1, ("nic",), {"ifName": "a"}),)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"metadata": {"uid": "other"}}, "has uid other, not uid-1: the claim was replaced"),
        ({"metadata": {"uid": "uid-1"}}, "ns1/c1 is not allocated"),
        ({"metadata": {"uid": "uid-1"}, "status": {"allocation": {}}}, "no devices allocated by"),
        (claim([{"driver": DRIVER, "pool": "n1"}]), "results[0] lacks request, pool or device"),
    ],
)
def test_allocation_refusals(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ClaimError, match=message.replace("[", r"\[").replace("]", r"\]")):
        allocation(obj, REF, DRIVER)


def test_configs_merge_in_order_per_request() -> None:
    configs = [
        OpaqueConfig(0, (), {"driver": "netdev", "vhostNet": True}),  # e.g. from the class
        OpaqueConfig(1, ("dpdk",), {"driver": "vfio-pci"}),
        OpaqueConfig(2, ("net",), {"ifName": "net1", "networkName": "prod/a"}),
    ]
    assert configs_for(configs, ["net", "dpdk"]) == {
        "net": VfConfig("netdev", "net1", "prod/a", True),
        "dpdk": VfConfig("vfio-pci", None, None, True),
    }


def test_config_problems_are_all_reported_with_their_paths() -> None:
    with pytest.raises(Invalid) as err:
        configs_for(
            [OpaqueConfig(0, (), {"vhostNet": 1, "drvier": "netdev"}), OpaqueConfig(3, (), 7)],
            ["a"],
        )
    rendered = [p.render("x") for p in err.value.problems]
    assert any("config[0].opaque.parameters.drvier: unknown key" in r for r in rendered), rendered
    assert any(
        "config[0].opaque.parameters.vhostNet: expected true or false" in r for r in rendered
    )
    assert any("config[3].opaque.parameters: expected an object, got 7" in r for r in rendered)


def test_cdi_names() -> None:
    assert cdi.kind(DRIVER) == "vf.nicwarden.io/vf"
    assert cdi.qualified_id(DRIVER, cdi.device_name("u-1", "0000-3b-02-1")) == (
        "vf.nicwarden.io/vf=u-1-0000-3b-02-1"
    )
    assert cdi.spec_path(Path("/var/run/cdi"), DRIVER, "u-1") == Path(
        "/var/run/cdi/vf.nicwarden.io-vf_u-1.json"
    )
    with pytest.raises(ValueError, match="at least one device"):
        cdi.spec_document(DRIVER, [], [])


def test_store_checkpoint_round_trip(tmp_path: Path) -> None:
    now = [100.0]
    with Store.open(tmp_path / "state", clock=lambda: now[0]) as store:
        store.put_dra_claim("u1", "ns", "c", [{"address": "0000:19:00.0"}], [], "preparing")
        now[0] = 105.0
        store.put_dra_claim("u1", "ns", "c", [{"address": "0000:19:00.0"}], ["d/vf=x"], "prepared")
        (rec,) = store.dra_claims()
        assert (rec.uid, rec.state, rec.cdi_ids, rec.prepared, rec.updated) == (
            "u1",
            "prepared",
            ["d/vf=x"],
            100.0,
            105.0,
        )
        store.set_dra_claim_state("u1", "unpreparing")
        assert store.dra_claim("u1").state == "unpreparing"  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            store.set_dra_claim_state("nope", "prepared")
        assert store.delete_dra_claim("u1") and not store.delete_dra_claim("u1")
        with pytest.raises(Exception, match="CHECK constraint"):
            store.put_dra_claim("u2", "ns", "c", [], [], "ready")  # type: ignore[arg-type]
        store._run(  # a damaged row is refused, not misread
            "INSERT INTO dra_claims VALUES ('u3', 'ns', 'c', '{}', '[]', 'prepared', 1, 1)"
        )
        with pytest.raises(StoreError, match="dra_claims.devices holds dict, not a list"):
            store.dra_claim("u3")
