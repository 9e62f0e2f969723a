from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.pci_address import normalize_pci_address
from nicwarden.agent.vf_ranges import VfRange, parse_vf_ranges
from nicwarden.deviceplugin.config import (
    DeviceRef,
    PoolConfig,
    Selector,
    load_resource_list,
    parse_resource_list,
)

PREFIX = "example.com"


def one(entry: dict[str, Any]) -> PoolConfig:
    parsed = parse_resource_list([entry], PREFIX)
    assert parsed.errors == (), [str(e) for e in parsed.errors]
    return parsed.pools[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", ((0, 0),)),
        ("0-3", ((0, 3),)),
        ("0-3,5", ((0, 3), (5, 5))),
        ("1,3,5-9,23", ((1, 1), (3, 3), (5, 9), (23, 23))),
        (" 2 - 4 ".replace(" ", ""), ((2, 4),)),
    ],
)
def test_vf_ranges(text: str, expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_vf_ranges(text) == tuple(VfRange(a, b) for a, b in expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("3-1", "backwards"),
        ("a", "non-negative integers"),
        ("", "empty"),
        ("1,,2", "non-negative integers"),
        ("-1", "non-negative integers"),
        ("1-", "non-negative integers"),
        ("1-2-3", "non-negative integers"),
    ],
)
def test_bad_vf_ranges(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_vf_ranges(text)


def test_full_pool() -> None:
    pool = one(
        {
            "resourceName": "intel_sriov_netdevice",
            "resourcePrefix": "intel.com",
            "deviceType": "netDevice",
            "excludeTopology": True,
            "selectors": [
                {
                    "vendors": ["8086", "0x15B3"],
                    "devices": ["154C"],
                    "drivers": ["iavf"],
                    "pciAddresses": ["18:02.1", "0000:18:02.2"],
                    "pfNames": ["ens1f0#0-3,5", "ens2f0"],
                    "rootDevices": ["0000:5e:00.0#1", "af:00.1"],
                    "linkTypes": ["Ether"],
                    "needVhostNet": True,
                },
                {"drivers": ["vfio-pci"]},
            ],
        }
    )
    assert pool.resource == "intel.com/intel_sriov_netdevice"
    assert pool.exclude_topology is True
    first, second = pool.selectors
    assert first.vendors == {"8086", "15b3"}
    assert first.devices == {"154c"}
    assert first.pci_addresses == {"0000:18:02.1", "0000:18:02.2"}
    assert first.pf_names == (
        DeviceRef("ens1f0", (VfRange(0, 3), VfRange(5, 5))),
        DeviceRef("ens2f0"),
    )
    assert first.root_devices == (
        DeviceRef("0000:5e:00.0", (VfRange(1, 1),)),
        DeviceRef("0000:af:00.1"),
    )
    assert first.link_types == {"ether"}
    assert first.need_vhost_net is True
    assert second == Selector(drivers=frozenset({"vfio-pci"}))


def test_defaults_and_single_selector_object() -> None:
    pool = one({"resourceName": "a", "selectors": {"drivers": ["iavf"]}})
    assert pool.prefix == PREFIX
    assert pool.device_type == "netDevice"
    assert pool.exclude_topology is False
    assert pool.selectors == (Selector(drivers=frozenset({"iavf"})),)


def test_missing_selectors_select_everything() -> None:
    assert one({"resourceName": "all"}).selectors == (Selector(),)


def test_yaml_integer_ids() -> None:
    assert one({"resourceName": "a", "selectors": {"vendors": [8086]}}).selectors[0].vendors == {
        "8086"
    }


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"resourceName": "has space"}, "resourceName", "letters, digits"),
    ({"resourceName": "dot.ted"}, "resourceName", "letters, digits"),
    ({}, "resourceName", "required"),
    ({"resourceName": "-lead"}, "resourceName", "start and end"),
    ({"resourceName": "x" * 64}, "resourceName", "63"),
    ({"resourceName": "a", "resourcePrefix": "Bad_Prefix"}, "resourcePrefix", "DNS subdomain"),
    ({"resourceName": "a", "resourcePrefix": "kubernetes.io"}, "resourcePrefix", "reserved"),
    ({"resourceName": "a", "deviceType": "accelerator"}, "deviceType", "not supported"),
    ({"resourceName": "a", "deviceType": "gpu"}, "deviceType", "unknown device type"),
    ({"resourceName": "a", "deviceType": ["netDevice"]}, "deviceType", "must be a string"),
    ({"resourceName": "a", "excludeTopology": "yes"}, "excludeTopology", "true or false"),
    ({"resourceName": "a", "isRdma": True}, "isRdma", "not supported on this agent"),
    (
        {"resourceName": "a", "selectors": [{"isRdma": True}]},
        "selectors[0].isRdma",
        "not supported on this agent",
    ),
    (
        {"resourceName": "a", "selectors": [{"ddpProfiles": ["GTP"]}]},
        "selectors[0].ddpProfiles",
        "not supported",
    ),
    (
        {"resourceName": "a", "selectors": [{"vendor": ["8086"]}]},
        "selectors[0].vendor",
        "unknown selector key",
    ),
    ({"resourceName": "a", "selector": {}}, "selector", "unknown key"),
    ({"resourceName": "a", "selectors": []}, "selectors", "selects nothing"),
    ({"resourceName": "a", "selectors": "iavf"}, "selectors", "list of selector objects"),
    (
        {"resourceName": "a", "selectors": [{"pfNames": ["ens1f0#3-1"]}]},
        "selectors[0].pfNames",
        "backwards",
    ),
    (
        {"resourceName": "a", "selectors": [{"pfNames": ["ens1f0#a"]}]},
        "selectors[0].pfNames",
        "integers",
    ),
    (
        {"resourceName": "a", "selectors": [{"pfNames": ["ens1f0#"]}]},
        "selectors[0].pfNames",
        "empty VF range",
    ),
    (
        {"resourceName": "a", "selectors": [{"pfNames": ["#0-3"]}]},
        "selectors[0].pfNames",
        "interface name",
    ),
    ({"resourceName": "a", "selectors": [{"pfNames": [""]}]}, "selectors[0].pfNames", "non-empty"),
    (
        {"resourceName": "a", "selectors": [{"rootDevices": ["ens1f0#1"]}]},
        "selectors[0].rootDevices",
        "PCI address",
    ),
    ({"resourceName": "a", "selectors": [{"vendors": ["intel"]}]}, "selectors[0].vendors", "hex"),
    (
        {"resourceName": "a", "selectors": [{"vendors": "8086"}]},
        "selectors[0].vendors",
        "must be a list",
    ),
    (
        {"resourceName": "a", "selectors": [{"pciAddresses": ["18:02"]}]},
        "selectors[0].pciAddresses",
        "PCI address",
    ),
    (
        {"resourceName": "a", "selectors": [{"needVhostNet": "true"}]},
        "selectors[0].needVhostNet",
        "true or false",
    ),
]


@pytest.mark.parametrize(("entry", "key", "fragment"), BAD)
def test_invalid_pool_is_reported_and_skipped(
    entry: dict[str, Any], key: str, fragment: str
) -> None:
    good = {"resourceName": "good"}
    parsed = parse_resource_list([good, entry], PREFIX)
    assert [p.name for p in parsed.pools] == ["good"]
    matching = [e for e in parsed.errors if e.key == key]
    assert matching, [str(e) for e in parsed.errors]
    issue = matching[0]
    assert issue.index == 1
    assert fragment in issue.message
    text = str(issue)
    assert "resourceList[1]" in text and key in text


def test_issue_names_pool_key_and_value() -> None:
    parsed = parse_resource_list(
        [
            {
                "resourceName": "dpdk",
                "selectors": [{"drivers": ["vfio-pci"]}, {"pfNames": ["ens1f0#3-1"]}],
            }
        ],
        PREFIX,
    )
    assert str(parsed.errors[0]) == (
        "resourceList[0] ('dpdk'): selectors[1].pfNames='ens1f0#3-1': VF range '3-1' runs backwards (3 > 1)"
    )


def test_all_problems_of_a_pool_are_reported() -> None:
    parsed = parse_resource_list(
        [{"resourceName": "a", "excludeTopology": 1, "deviceType": "x"}], PREFIX
    )
    assert {e.key for e in parsed.errors} == {"excludeTopology", "deviceType"}


def test_duplicate_names_keep_the_first() -> None:
    parsed = parse_resource_list(
        [
            {"resourceName": "a", "selectors": {"drivers": ["iavf"]}},
            {"resourceName": "a", "resourcePrefix": "other.com"},
        ],
        PREFIX,
    )
    assert [(p.name, p.prefix) for p in parsed.pools] == [("a", PREFIX)]
    assert parsed.errors[0].index == 1 and "duplicate" in parsed.errors[0].message


@pytest.mark.parametrize("raw", [None, {"resourceName": "a"}, "x"])
def test_resource_list_must_be_a_list(raw: object) -> None:
    parsed = parse_resource_list(raw, PREFIX)
    assert parsed.pools == () and parsed.errors[0].index is None


def test_non_object_entry() -> None:
    parsed = parse_resource_list(["a", {"resourceName": "b"}], PREFIX)
    assert [p.name for p in parsed.pools] == ["b"]
    assert parsed.errors[0].index == 0


def test_bad_default_prefix() -> None:
    parsed = parse_resource_list([{"resourceName": "a"}], "Not A Domain")
    assert parsed.pools == () and "resourcePrefix" in parsed.errors[0].key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0000:18:02.1", "0000:18:02.1"),
        ("18:02.1", "0000:18:02.1"),
        ("0000:AF:00.7", "0000:af:00.7"),
        ("0000:18:02.8", None),
        ("18:2.1", None),
        (1802, None),
    ],
)
def test_normalize_pci_address(raw: object, expected: str | None) -> None:
    assert normalize_pci_address(raw) == expected


def test_load_upstream_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"resourceList": [{"resourceName": "a", "selectors": {"drivers": ["iavf"]}}]}')
    assert load_resource_list(path) == [{"resourceName": "a", "selectors": {"drivers": ["iavf"]}}]
    yml = tmp_path / "config.yaml"
    yml.write_text("resourceList:\n  - resourceName: b\n")
    assert load_resource_list(yml) == [{"resourceName": "b"}]
