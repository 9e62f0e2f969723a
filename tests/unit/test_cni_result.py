"""Result model: exact JSON shape per CNI version, parsing, round trips."""

from __future__ import annotations

import copy
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import pytest

from nicwarden.cni.result import (
    DNS,
    Interface,
    IPConfig,
    Result,
    ResultFormatError,
    Route,
    parse_result,
)
from nicwarden.cni.version import SUPPORTED_VERSIONS

FULL = Result(
    interfaces=(
        Interface(
            name="net1",
            mac="02:00:00:00:00:01",
            sandbox="/var/run/netns/cni-1",
            mtu=9000,
            pci_id="0000:18:02.5",
        ),
        Interface(name="vhost0", socket_path="/var/run/vhost/sock0"),
    ),
    ips=(
        IPConfig(address=ip_interface("10.1.1.2/24"), gateway=ip_address("10.1.1.1"), interface=0),
        IPConfig(address=ip_interface("2001:db8::2/64"), interface=0),
    ),
    routes=(
        Route(dst=ip_network("0.0.0.0/0"), gw=ip_address("10.1.1.1")),
        Route(
            dst=ip_network("192.168.0.0/16"), mtu=1400, advmss=1360, priority=5, table=100, scope=0
        ),
    ),
    dns=DNS(
        nameservers=("10.1.1.53",),
        domain="example.org",
        search=("example.org",),
        options=("ndots:2",),
    ),
)

DNS_JSON = {
    "nameservers": ["10.1.1.53"],
    "domain": "example.org",
    "search": ["example.org"],
    "options": ["ndots:2"],
}

FULL_0X: dict[str, Any] = {
    "interfaces": [
        {"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/cni-1"},
        {"name": "vhost0"},
    ],
    "ips": [
        {"version": "4", "interface": 0, "address": "10.1.1.2/24", "gateway": "10.1.1.1"},
        {"version": "6", "interface": 0, "address": "2001:db8::2/64"},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.1.1"},
        {"dst": "192.168.0.0/16"},
    ],
    "dns": DNS_JSON,
}

FULL_100: dict[str, Any] = {
    "interfaces": FULL_0X["interfaces"],
    "ips": [
        {"interface": 0, "address": "10.1.1.2/24", "gateway": "10.1.1.1"},
        {"interface": 0, "address": "2001:db8::2/64"},
    ],
    "routes": FULL_0X["routes"],
    "dns": DNS_JSON,
}

FULL_110: dict[str, Any] = {
    "interfaces": [
        {
            "name": "net1",
            "mac": "02:00:00:00:00:01",
            "mtu": 9000,
            "sandbox": "/var/run/netns/cni-1",
            "pciID": "0000:18:02.5",
        },
        {"name": "vhost0", "socketPath": "/var/run/vhost/sock0"},
    ],
    "ips": FULL_100["ips"],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.1.1"},
        {
            "dst": "192.168.0.0/16",
            "mtu": 1400,
            "advmss": 1360,
            "priority": 5,
            "table": 100,
            "scope": 0,
        },
    ],
    "dns": DNS_JSON,
}

EXPECTED = {
    "0.3.1": {"cniVersion": "0.3.1", **FULL_0X},
    "0.4.0": {"cniVersion": "0.4.0", **FULL_0X},
    "1.0.0": {"cniVersion": "1.0.0", **FULL_100},
    "1.1.0": {"cniVersion": "1.1.0", **FULL_110},
}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_render_exact_shape_per_version(version: str) -> None:
    assert FULL.render(version) == EXPECTED[version]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip_of_each_version_shape(version: str) -> None:
    obj = copy.deepcopy(EXPECTED[version])
    assert parse_result(obj, version).render(version) == EXPECTED[version]


def test_1_1_fields_survive_parsing_and_render_from_any_version() -> None:
    # parse is version-lenient: extra 1.1.0 fields in a 1.0.0 result are kept
    parsed = parse_result({**FULL_110, "cniVersion": "1.0.0"}, "1.0.0")
    assert parsed == FULL
    assert parsed.render("1.1.0") == EXPECTED["1.1.0"]


def test_0x_result_converts_up_and_back() -> None:
    parsed = parse_result(EXPECTED["0.4.0"], "0.4.0")
    assert parsed.render("1.0.0") == EXPECTED["1.0.0"]
    assert parsed.render("0.3.1") == EXPECTED["0.3.1"]


def test_0x_ip_version_is_derived_when_absent() -> None:
    parsed = parse_result({"ips": [{"address": "fd00::5/64"}]}, "0.4.0")
    assert parsed.render("0.4.0") == {
        "cniVersion": "0.4.0",
        "ips": [{"version": "6", "address": "fd00::5/64"}],
    }


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_empty_result_omits_everything(version: str) -> None:
    assert Result().render(version) == {"cniVersion": version}


def test_zero_and_none_omission_rules_in_1_1() -> None:
    result = Result(
        interfaces=(Interface(name="net1", mtu=0),),
        routes=(Route(dst=ip_network("10.0.0.0/8"), mtu=0, priority=0, table=0, scope=None),),
    )
    # plain ints are omitted at 0 (Go omitempty); table/scope are pointers, 0 kept
    assert result.render("1.1.0") == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "net1"}],
        "routes": [{"dst": "10.0.0.0/8", "table": 0}],
    }


def test_ipam_abbreviated_result() -> None:
    # IPAM results have no interfaces and no ips[].interface
    obj = {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.1/24"}], "dns": {}}
    parsed = parse_result(obj, "1.0.0")
    assert parsed == Result(ips=(IPConfig(address=ip_interface("10.10.0.1/24")),))
    assert parsed.render("1.0.0") == {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.1/24"}]}


def test_route_dst_keeps_network_semantics() -> None:
    parsed = parse_result({"routes": [{"dst": "10.1.2.3/8"}]}, "1.0.0")
    assert parsed.routes[0].dst == ip_network("10.0.0.0/8")


def test_render_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="0.2.0"):
        FULL.render("0.2.0")


@pytest.mark.parametrize(
    ("obj", "version", "where"),
    [
        ([], "1.0.0", "result: not a JSON object"),
        ({"interfaces": {}}, "1.0.0", "interfaces: not a list"),
        ({"interfaces": [{"mac": "x"}]}, "1.0.0", "interfaces[0].name: missing"),
        ({"interfaces": [{"name": 5}]}, "1.0.0", "interfaces[0].name: not a string"),
        ({"interfaces": [{"name": "a", "mtu": -1}]}, "1.1.0", "interfaces[0].mtu"),
        ({"interfaces": [{"name": "a", "mtu": True}]}, "1.1.0", "interfaces[0].mtu"),
        ({"ips": [{}]}, "1.0.0", "ips[0].address: missing"),
        ({"ips": [{"address": "10.0.0.1"}]}, "1.0.0", "ips[0].address: '10.0.0.1' has no prefix"),
        ({"ips": [{"address": "10.0.0.300/24"}]}, "1.0.0", "ips[0].address"),
        ({"ips": [{"address": "10.0.0.1/24", "gateway": "nope"}]}, "1.0.0", "ips[0].gateway"),
        (
            {"ips": [{"address": "10.0.0.1/24", "interface": 0}]},
            "1.0.0",
            "ips[0].interface: index 0",
        ),
        (
            {"interfaces": [{"name": "a"}], "ips": [{"address": "10.0.0.1/24", "interface": 1}]},
            "1.0.0",
            "ips[0].interface: index 1 but the result has 1",
        ),
        ({"ips": [{"version": "6", "address": "10.0.0.1/24"}]}, "0.4.0", "ips[0].version"),
        ({"routes": [{"gw": "10.0.0.1"}]}, "1.0.0", "routes[0].dst: missing"),
        ({"routes": [{"dst": "default"}]}, "1.0.0", "routes[0].dst"),
        ({"routes": [{"dst": "0.0.0.0/0", "table": "main"}]}, "1.1.0", "routes[0].table"),
        ({"dns": []}, "1.0.0", "dns: not a JSON object"),
        ({"dns": {"nameservers": "10.0.0.53"}}, "1.0.0", "dns.nameservers"),
        ({}, "0.2.0", "unsupported result version"),
    ],
)
def test_parse_errors_name_the_field(obj: object, version: str, where: str) -> None:
    with pytest.raises(ResultFormatError) as info:
        parse_result(obj, version)
    assert where in str(info.value)
