"""The ``dra:`` config section and the one-front-end-per-VF rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent.config import load_config
from nicwarden.agent.errors import ConfigError
from nicwarden.agent.store import Store
from nicwarden.deviceplugin.config import parse_resource_list
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.frontends import DRA, frontends, overlaps, refused_moves
from tests.support.kubelet_fake import PfSpec, build_inventory, kernel_vfs, vf_address, vfio_vfs

PF0 = "0000:18:00.0"
WATCH = {"kubernetes": {"watch": True}}


def load(tmp_path: Path, dra: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**WATCH, **(extra or {}), "dra": dra}))
    return load_config(path, {})


def error(tmp_path: Path, dra: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, dra, extra)
    return str(info.value)


def test_defaults_leave_dra_off() -> None:
    dra = load_config(None, {}).dra
    assert dra == DraConfig() and not dra.active and dra.driver is None
    assert str(dra.registry_dir) == "/var/lib/kubelet/plugins_registry"
    assert str(dra.plugins_dir) == "/var/lib/kubelet/plugins"
    assert str(dra.cdi_dir) == "/var/run/cdi"


def test_a_full_section(tmp_path: Path) -> None:
    dra = load(
        tmp_path,
        {
            "enabled": True,
            "driver": "vf.nicwarden.io",
            "selectors": [{"pfNames": ["ens1f0#0-3"], "drivers": ["iavf"]}],
            "registryDir": "/k/reg",
            "pluginsDir": "/k/plugins",
            "cdiDir": "/run/cdi",
        },
    ).dra
    assert dra.active
    assert str(dra.dra_socket) == "/k/plugins/vf.nicwarden.io/dra.sock"
    assert str(dra.registration_socket) == "/k/reg/vf.nicwarden.io-reg.sock"
    (sel,) = dra.parsed_selectors
    assert sel.drivers == {"iavf"} and sel.pf_names[0].key == "ens1f0"


@pytest.mark.parametrize(
    ("driver", "reason"),
    [
        ("Vf.Nicwarden.io", "lower-case DNS subdomain"),
        ("vf_nicwarden.io", "lower-case DNS subdomain"),
        ("-vf.nicwarden.io", "lower-case DNS subdomain"),
        ("vf..nicwarden.io", "lower-case DNS subdomain"),
        ("a" * 61 + ".io", "at most 63 characters"),
        (7, "expected a driver name"),
        ("", "expected a driver name"),
    ],
)
def test_bad_driver_names(tmp_path: Path, driver: object, reason: str) -> None:
    text = error(tmp_path, {"enabled": True, "driver": driver})
    assert "dra.driver:" in text and reason in text


def test_driver_of_63_characters_is_accepted(tmp_path: Path) -> None:
    name = "a" * 59 + ".io" + "x"  # 63
    assert len(name) == 63
    assert load(tmp_path, {"enabled": True, "driver": name}).dra.driver == name


def test_enabled_needs_a_driver_and_the_api(tmp_path: Path) -> None:
    assert "dra.driver: required when enabled" in error(tmp_path, {"enabled": True})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dra": {"enabled": True, "driver": "vf.nicwarden.io"}}))
    with pytest.raises(ConfigError, match=r"dra\.enabled: DRA needs the Kubernetes API"):
        load_config(path, {})


def test_selector_problems_are_reported_in_the_resource_list_language(tmp_path: Path) -> None:
    text = error(
        tmp_path,
        {
            "enabled": True,
            "driver": "vf.nicwarden.io",
            "selectors": [{"vendors": ["zz"]}, {"pfNames": ["ens1f0#3-1"]}, {"rdma": 1}],
        },
    )
    assert "dra.selectors[0].vendors: must be a hex PCI vendor ID" in text and "'zz'" in text
    assert "dra.selectors[1].pfNames:" in text
    assert "dra.selectors[2].rdma: unknown selector key" in text
    assert "an empty list selects nothing" in error(
        tmp_path, {"enabled": True, "driver": "vf.nicwarden.io", "selectors": []}
    )


def inventory() -> Any:
    return build_inventory([PfSpec(PF0, name="ens1f0", vfs=kernel_vfs(4) + vfio_vfs(2, start=4))])


def pools(*entries: dict[str, Any]) -> Any:
    parsed = parse_resource_list(list(entries), "example.com")
    assert parsed.errors == ()
    return parsed.pools


def dra(selectors: Any) -> DraConfig:
    return DraConfig(enabled=True, driver="vf.nicwarden.io", selectors=selectors)


def test_overlap_names_the_pool_the_vf_and_the_selector() -> None:
    found = overlaps(
        inventory(),
        pools(
            {"resourceName": "net", "selectors": {"drivers": ["iavf"]}},
            {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
        ),
        dra([{"pfNames": ["ens1f0#5"]}, {"pfNames": ["ens1f0#0"]}]),
    )
    text = [str(o) for o in found]
    assert text == [
        f"VF {vf_address(PF0, 0)} is selected by device plugin pool 'net' (resourceList[0])"
        " and by dra.selectors[1]: a VF may be offered by one front-end only",
        f"VF {vf_address(PF0, 5)} is selected by device plugin pool 'dpdk' (resourceList[1])"
        " and by dra.selectors[0]: a VF may be offered by one front-end only",
    ]


def test_disjoint_front_ends_and_who_offers_what() -> None:
    inv = inventory()
    dp = pools({"resourceName": "net", "selectors": {"drivers": ["iavf"]}})
    cfg = dra({"drivers": ["vfio-pci"]})
    assert overlaps(inv, dp, cfg) == []
    assert overlaps(inv, dp, DraConfig(driver="vf.nicwarden.io")) == []  # not enabled
    offered = frontends(inv, dp, cfg)
    assert [offered[vf_address(PF0, i)] for i in range(6)] == ["net"] * 4 + [DRA] * 2
    assert set(frontends(inv, (), DraConfig()).values()) == {""}


def test_moving_an_in_use_vf_between_front_ends_is_refused(tmp_path: Path) -> None:
    inv = inventory()
    store = Store.open(tmp_path / "state")
    try:
        old = (pools({"resourceName": "net", "selectors": {"drivers": ["iavf"]}}), DraConfig())
        new = (
            pools({"resourceName": "net", "selectors": {"pfNames": ["ens1f0#1-3"]}}),
            dra({"pfNames": ["ens1f0#0"]}),
        )
        assert refused_moves(inv, store, old, new) == []
        store.record_allocation(
            "example.com/net",
            [vf_address(PF0, 0)],
            pod_namespace="ns1",
            pod_name="web-0",
            pod_uid="u1",
        )
        (problem,) = refused_moves(inv, store, old, new)
        assert vf_address(PF0, 0) in problem and "ns1/web-0" in problem
        assert "from net to dra" in problem
        # Back the other way: a VF prepared for a claim.
        store.put_dra_claim(
            "uid-1",
            "ns2",
            "claim-a",
            [{"address": vf_address(PF0, 0), "pool": "n", "device": "d"}],
            [],
            "prepared",
        )
        (problem,) = refused_moves(inv, store, new, old)
        assert "ResourceClaim ns2/claim-a" in problem
    finally:
        store.close()
