"""Request parsing, CNI_ARGS, SR-IOV options, errors and dispatch (the pure
agent-side CNI logic: cni/request.py, args.py, options.py, errors.py,
dispatch.py), table-driven over every version and command."""

from __future__ import annotations

import json
from ipaddress import ip_interface
from typing import Any

import pytest

from nicwarden.agent import errors as agent_errors
from nicwarden.cni.args import parse_cni_args
from nicwarden.cni.dispatch import handle, handle_invocation
from nicwarden.cni.errors import CNI_CODES, CniError, from_nicwarden_error
from nicwarden.cni.options import SriovOptions, parse_sriov_options
from nicwarden.cni.request import Attachment, CniRequest, Command, parse_request
from nicwarden.cni.result import Interface, IPConfig, Result
from nicwarden.cni.version import SUPPORTED_VERSIONS

MULTUS_ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p;"
    "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
)


def make_env(command: str = "ADD", **overrides: str | None) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/cni-1",
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": MULTUS_ARGS,
        "PATH": "/usr/bin",  # not a CNI_ variable: must not reach the request's env
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def make_conf(version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "sriov-net", "type": "nicwarden"}
    conf.update(extra)
    return conf


def parse(
    command: str = "ADD", conf: dict[str, Any] | None = None, **env: str | None
) -> CniRequest:
    conf = make_conf() if conf is None else conf
    if command == "GC":
        conf.setdefault("cni.dev/valid-attachments", [])
    return parse_request(make_env(command, **env), json.dumps(conf))


def parse_error(
    command: str = "ADD", conf: Any = None, stdin: str | None = None, **env: str | None
) -> CniError:
    if stdin is None:
        stdin = json.dumps(make_conf() if conf is None else conf)
    with pytest.raises(CniError) as info:
        parse_request(make_env(command, **env), stdin)
    return info.value


# ------------------------------------------------------ versions x commands

# (command, minimum version per SPEC: CHECK 0.4.0, STATUS/GC 1.1.0)
COMMAND_MINIMUM = {
    "ADD": "0.3.1",
    "DEL": "0.3.1",
    "CHECK": "0.4.0",
    "STATUS": "1.1.0",
    "GC": "1.1.0",
}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("command", sorted(COMMAND_MINIMUM))
def test_every_version_and_command(version: str, command: str) -> None:
    allowed = SUPPORTED_VERSIONS.index(version) >= SUPPORTED_VERSIONS.index(
        COMMAND_MINIMUM[command]
    )
    conf = make_conf(version)
    if command == "GC":
        conf["cni.dev/valid-attachments"] = []
    stdin = json.dumps(conf)
    if allowed:
        request = parse_request(make_env(command), stdin)
        assert request.command is Command(command)
        assert request.cni_version == version
        assert request.network_name == "sriov-net"
        assert request.plugin_type == "nicwarden"
        assert request.config == conf
    else:
        with pytest.raises(CniError) as info:
            parse_request(make_env(command), stdin)
        assert info.value.code == 1
        assert command in info.value.msg
        assert COMMAND_MINIMUM[command] in info.value.details


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_command_needs_no_config(version: str) -> None:
    request = parse_request({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}))
    assert request.command is Command.VERSION and request.cni_version == version
    code, out = handle(request, RecordingBackend())
    assert code == 0
    assert json.loads(out) == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("stdin", ["", "{}", '{"cniVersion": "0.1.0"}', "garbage"])
def test_version_command_without_a_usable_version_answers_newest(stdin: str) -> None:
    request = parse_request({"CNI_COMMAND": "VERSION"}, stdin)
    assert request.cni_version == "1.1.0"


@pytest.mark.parametrize("bad", ["0.1.0", "0.2.0", "0.3.0", "1.2.0", "", None, 1, "latest"])
def test_unsupported_config_version_is_error_1(bad: Any) -> None:
    conf = make_conf()
    if bad is None:
        del conf["cniVersion"]
    else:
        conf["cniVersion"] = bad
    err = parse_error(conf=conf)
    assert err.code == 1
    assert err.msg == "incompatible CNI versions"
    assert "plugin supports [0.3.1, 0.4.0, 1.0.0, 1.1.0]" in err.details


def test_only_cni_variables_are_kept_for_delegation() -> None:
    request = parse()
    assert "PATH" not in request.env
    assert request.env["CNI_COMMAND"] == "ADD"
    assert request.container_id == "c0ffee"
    assert request.netns == "/var/run/netns/cni-1"
    assert request.ifname == "net1"
    assert request.cni_path == "/opt/cni/bin"
    assert request.attachment_key == ("sriov-net", "c0ffee", "net1")


# ---------------------------------------------------------------- env (4)


@pytest.mark.parametrize(
    ("command", "removed", "named"),
    [
        ("ADD", ["CNI_CONTAINERID"], "CNI_CONTAINERID"),
        ("ADD", ["CNI_NETNS"], "CNI_NETNS"),
        ("ADD", ["CNI_IFNAME"], "CNI_IFNAME"),
        ("ADD", ["CNI_NETNS", "CNI_IFNAME"], "CNI_NETNS, CNI_IFNAME"),
        ("CHECK", ["CNI_NETNS"], "CNI_NETNS"),
        ("DEL", ["CNI_CONTAINERID"], "CNI_CONTAINERID"),
        ("DEL", ["CNI_IFNAME"], "CNI_IFNAME"),
        ("GC", ["CNI_PATH"], "CNI_PATH"),
    ],
)
def test_missing_env_is_error_4_naming_the_variables(
    command: str, removed: list[str], named: str
) -> None:
    conf = make_conf("1.1.0")
    conf["cni.dev/valid-attachments"] = []
    err = parse_error(command, conf=conf, **dict.fromkeys(removed))
    assert err.code == 4
    assert err.msg == f"missing environment variables for {command}: {named}"


def test_empty_env_value_counts_as_missing() -> None:
    err = parse_error("ADD", CNI_NETNS="")
    assert err.code == 4 and "CNI_NETNS" in err.msg


@pytest.mark.parametrize(
    ("command", "removed"),
    [
        ("DEL", ["CNI_NETNS", "CNI_PATH", "CNI_ARGS"]),  # the netns may be gone
        ("ADD", ["CNI_PATH", "CNI_ARGS"]),  # optional per SPEC
        ("STATUS", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]),
        ("GC", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]),
    ],
)
def test_optional_env(command: str, removed: list[str]) -> None:
    request = parse(command, **dict.fromkeys(removed))
    assert request.command is Command(command)


def test_missing_and_unknown_command_are_error_4() -> None:
    assert parse_error("ADD", CNI_COMMAND=None).msg == "missing environment variables: CNI_COMMAND"
    err = parse_error("FROB")
    assert (err.code, err.msg) == (4, "unknown CNI_COMMAND: FROB")


@pytest.mark.parametrize("container_id", ["abc", "0", "a_b.c-d", "f" * 64])
def test_valid_container_ids(container_id: str) -> None:
    assert parse(CNI_CONTAINERID=container_id).container_id == container_id


@pytest.mark.parametrize("container_id", ["-abc", "_x", ".x", "a b", "a/b", "a:b", "ä", "abc\n"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_invalid_container_id_is_error_4(container_id: str, command: str) -> None:
    err = parse_error(command, CNI_CONTAINERID=container_id)
    assert err.code == 4
    assert "CNI_CONTAINERID" in err.msg and repr(container_id) in err.msg


@pytest.mark.parametrize("ifname", ["net1", "eth0", "x" * 15, "vf-0.100"])
def test_valid_ifnames(ifname: str) -> None:
    assert parse(CNI_IFNAME=ifname).ifname == ifname


@pytest.mark.parametrize("ifname", ["x" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb"])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_invalid_ifname_is_error_4(ifname: str, command: str) -> None:
    err = parse_error(command, CNI_IFNAME=ifname)
    assert err.code == 4
    assert err.msg.startswith(f"CNI_IFNAME {ifname!r}")


# ------------------------------------------------------------- decode (6)


@pytest.mark.parametrize("stdin", ["", "{", "not json", "[1, 2]", '"a string"', "null"])
def test_undecodable_config_is_error_6(stdin: str) -> None:
    assert parse_error(stdin=stdin).code == 6


# ------------------------------------------------------------- config (7)


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("name", None, "name: null is missing"),
        ("name", "", 'name: "" is missing'),
        ("name", 5, "name: 5 is missing or not a string"),
        ("name", "-net", "name: '-net' is invalid"),
        ("name", "ns/net", "name: 'ns/net' is invalid"),
        ("name", "net\n", "name: 'net\\n' is invalid"),
        ("type", None, "type: null is missing"),
        ("type", ["x"], 'type: ["x"] is missing'),
        ("runtimeConfig", [], "runtimeConfig: not a JSON object"),
    ],
)
def test_invalid_well_known_fields_are_error_7(field: str, value: Any, text: str) -> None:
    conf = make_conf()
    if value is None:
        conf.pop(field, None)
    else:
        conf[field] = value
    err = parse_error(conf=conf)
    assert err.code == 7
    assert err.msg.startswith(text)


# ------------------------------------------------------------------ CNI_ARGS


def test_multus_cni_args() -> None:
    args = parse().args
    assert args.ignore_unknown
    assert args.pod_namespace == "ns1"
    assert args.pod_name == "p"
    assert args.pod_infra_container_id == "abc"
    assert args.pod_uid == "u-1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", {}),
        ("A=1", {"A": "1"}),
        ("A=b=c=d", {"A": "b=c=d"}),  # values may contain '='
        ("A=1;A=2", {"A": "2"}),  # thin Multus repeats keys: the last wins
        ("A=1;;B=2;", {"A": "1", "B": "2"}),
        ("A=", {"A": ""}),
        (
            "MAC=02:00:00:00:00:01;IP=10.0.0.2/24,fd00::2/64",
            {"MAC": "02:00:00:00:00:01", "IP": "10.0.0.2/24,fd00::2/64"},
        ),
        ("UNKNOWN=x;Other=y", {"UNKNOWN": "x", "Other": "y"}),  # unknown keys without IgnoreUnknown
    ],
)
def test_cni_args_parsing(raw: str, expected: dict[str, str]) -> None:
    assert parse_cni_args(raw).values == expected


@pytest.mark.parametrize(
    ("raw", "ignore"),
    [
        ("IgnoreUnknown=1", True),
        ("IgnoreUnknown=true", True),
        ("IgnoreUnknown=TRUE", True),
        ("IgnoreUnknown=0", False),
        ("", False),
    ],
)
def test_ignore_unknown_flag(raw: str, ignore: bool) -> None:
    assert parse_cni_args(raw).ignore_unknown is ignore


@pytest.mark.parametrize("raw", ["garbage", "A=1;junk", "=value"])
def test_malformed_cni_args_is_error_4(raw: str) -> None:
    err = parse_error(CNI_ARGS=raw)
    assert err.code == 4
    assert err.msg.startswith("CNI_ARGS: invalid pair")


def test_missing_pod_fields_are_none() -> None:
    args = parse(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=").args
    assert args.pod_name is None and args.pod_namespace is None and args.pod_uid is None


# ----------------------------------------------------------------- deviceID


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, None),
        ({"deviceID": "0000:18:02.5"}, "0000:18:02.5"),
        ({"pciBusID": "0000:18:02.6"}, "0000:18:02.6"),
        ({"runtimeConfig": {"deviceID": "0000:18:02.7"}}, "0000:18:02.7"),
        (
            {
                "deviceID": "0000:18:02.5",
                "pciBusID": "0000:18:02.6",
                "runtimeConfig": {"deviceID": "0000:18:02.7"},
            },
            "0000:18:02.5",
        ),
        (
            {"pciBusID": "0000:18:02.6", "runtimeConfig": {"deviceID": "0000:18:02.7"}},
            "0000:18:02.6",
        ),
        ({"deviceID": "", "pciBusID": "0000:18:02.6"}, "0000:18:02.6"),
        ({"deviceID": "18:02.5"}, "0000:18:02.5"),
        ({"deviceID": "0000:AF:1F.7"}, "0000:af:1f.7"),
        ({"deviceID": "10000:e0:00.0"}, "10000:e0:00.0"),  # Intel VMD domain
    ],
)
def test_device_id_precedence_and_normalisation(
    extra: dict[str, Any], expected: str | None
) -> None:
    assert parse(conf=make_conf(**extra)).device_id == expected


@pytest.mark.parametrize(
    ("extra", "label", "shown"),
    [
        ({"deviceID": "0000:18:02.8"}, "deviceID", '"0000:18:02.8"'),  # function > 7
        ({"deviceID": "0000:18:20.0"}, "deviceID", '"0000:18:20.0"'),  # device > 0x1f
        ({"deviceID": "0000:18:02"}, "deviceID", '"0000:18:02"'),
        ({"deviceID": "0000:18:02.5\n"}, "deviceID", '"0000:18:02.5\\n"'),
        ({"deviceID": "eth0"}, "deviceID", '"eth0"'),
        ({"deviceID": 5}, "deviceID", "5"),
        ({"pciBusID": "00:18:02.5:1"}, "pciBusID", '"00:18:02.5:1"'),
        ({"runtimeConfig": {"deviceID": "x"}}, "runtimeConfig.deviceID", '"x"'),
    ],
)
def test_invalid_device_id_is_error_7_naming_the_value(
    extra: dict[str, Any], label: str, shown: str
) -> None:
    err = parse_error(conf=make_conf(**extra))
    assert err.code == 7
    assert err.msg == f"{label}: {shown} is not a PCI address (DDDD:BB:DD.F)"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, None),
        (
            {"CNIDeviceInfoFile": "/var/run/k8s.cni.cncf.io/devinfo/cni/a"},
            "/var/run/k8s.cni.cncf.io/devinfo/cni/a",
        ),
        ({"runtimeConfig": {"CNIDeviceInfoFile": "/run/b"}}, "/run/b"),
        (
            {"CNIDeviceInfoFile": "/run/a", "runtimeConfig": {"CNIDeviceInfoFile": "/run/b"}},
            "/run/a",
        ),
    ],
)
def test_device_info_file(extra: dict[str, Any], expected: str | None) -> None:
    assert parse(conf=make_conf(**extra)).device_info_file == expected


def test_relative_device_info_file_is_error_7() -> None:
    err = parse_error(conf=make_conf(runtimeConfig={"CNIDeviceInfoFile": "rel/path"}))
    assert (err.code, err.msg) == (
        7,
        'runtimeConfig.CNIDeviceInfoFile: "rel/path" is not an absolute path',
    )


# ---------------------------------------------------------------- prevResult


def test_prev_result_is_read_in_the_config_version() -> None:
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    request = parse("CHECK", conf=make_conf("0.4.0", prevResult=prev))
    assert request.prev_result == Result(ips=(IPConfig(address=ip_interface("10.0.0.2/24")),))
    assert request.prev_result_raw == prev


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_bad_prev_result_is_error_7(command: str) -> None:
    conf = make_conf(prevResult={"ips": [{"address": "nope"}]})
    err = parse_error(command, conf=conf)
    assert err.code == 7 and err.msg.startswith("prevResult: ips[0].address")


def test_del_tolerates_a_config_that_add_would_reject() -> None:
    # The runtime DELs after a failed ADD (docs/contracts.md#cni-commands); DEL must still clean up.
    conf = make_conf(vlan=5000, deviceID="nope", prevResult=[])
    request = parse("DEL", conf=conf)
    assert request.options is None and request.device_id is None and request.prev_result is None
    assert request.warnings == (
        'deviceID: "nope" is not a PCI address (DDDD:BB:DD.F)',
        "prevResult: result: not a JSON object",
        "vlan: 5000 is out of range 0-4094",
    )
    assert parse_error("ADD", conf=conf).code == 7


# ----------------------------------------------------------------------- GC


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_valid_attachments_under_either_key(key: str) -> None:
    conf = make_conf()
    conf[key] = [{"containerID": "c1", "ifname": "net1"}, {"containerID": "c2", "ifname": "net2"}]
    request = parse_request(make_env("GC"), json.dumps(conf))
    assert request.valid_attachments == (Attachment("c1", "net1"), Attachment("c2", "net2"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "GC needs cni.dev/valid-attachments"),
        ({}, "cni.dev/valid-attachments: not a list"),
        ([{"containerID": "c1"}], "cni.dev/valid-attachments[0]:"),
        (["c1"], "cni.dev/valid-attachments[0]:"),
    ],
)
def test_gc_bad_attachment_list_is_error_7(value: Any, text: str) -> None:
    conf = make_conf()
    if value is not None:
        conf["cni.dev/valid-attachments"] = value
    err = parse_error("GC", stdin=json.dumps(conf))
    assert err.code == 7 and err.msg.startswith(text)


# ------------------------------------------------------------ SR-IOV options


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, SriovOptions()),
        ({"vlan": 0}, SriovOptions(vlan=0)),
        (
            {"vlan": 4094, "vlanQoS": 7, "vlanProto": "802.1AD"},
            SriovOptions(vlan=4094, vlan_qos=7, vlan_proto="802.1ad"),
        ),
        ({"vlan": 100, "vlanProto": "802.1q"}, SriovOptions(vlan=100, vlan_proto="802.1q")),
        ({"vlan": 0, "vlanQoS": 0}, SriovOptions(vlan=0, vlan_qos=0)),
        ({"mac": "02:AA:bb:cc:dd:ee"}, SriovOptions(mac="02:aa:bb:cc:dd:ee")),
        ({"mac": "02-aa-bb-cc-dd-ee"}, SriovOptions(mac="02:aa:bb:cc:dd:ee")),
        ({"mac": ""}, SriovOptions()),
        ({"spoofchk": "on", "trust": "off"}, SriovOptions(spoofchk=True, trust=False)),
        ({"spoofchk": "OFF", "trust": "On"}, SriovOptions(spoofchk=False, trust=True)),
        ({"link_state": "Enable"}, SriovOptions(link_state="enable")),
        (
            {"min_tx_rate": 100, "max_tx_rate": 1000},
            SriovOptions(min_tx_rate=100, max_tx_rate=1000),
        ),
        ({"min_tx_rate": 100, "max_tx_rate": 0}, SriovOptions(min_tx_rate=100, max_tx_rate=0)),
        ({"mtu": 68}, SriovOptions(mtu=68)),
        ({"mtu": 9000}, SriovOptions(mtu=9000)),
        ({"ipam": {}}, SriovOptions()),
        ({"ipam": {"type": ""}}, SriovOptions()),
        (
            {"ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}},
            SriovOptions(ipam={"type": "host-local", "subnet": "10.0.0.0/24"}),
        ),
        (
            {"someVendorKey": {"x": 1}, "capabilities": {"deviceID": True}, "args": {"cni": {}}},
            SriovOptions(),
        ),
    ],
)
def test_sriov_options(extra: dict[str, Any], expected: SriovOptions) -> None:
    assert parse(conf=make_conf(**extra)).options == expected


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        ({"vlan": 5000}, "vlan: 5000 is out of range 0-4094"),
        ({"vlan": -1}, "vlan: -1 is out of range 0-4094"),
        ({"vlan": "100"}, 'vlan: "100" is not an integer'),
        ({"vlan": 1.5}, "vlan: 1.5 is not an integer"),
        ({"vlan": True}, "vlan: true is not an integer"),
        ({"vlan": 10, "vlanQoS": 8}, "vlanQoS: 8 is out of range 0-7"),
        ({"vlanQoS": 3}, "vlanQoS: 3 needs a non-zero vlan"),
        ({"vlan": 0, "vlanQoS": 3}, "vlanQoS: 3 needs a non-zero vlan"),
        (
            {"vlan": 10, "vlanProto": "802.1x"},
            "vlanProto: \"802.1x\" is not one of '802.1q', '802.1ad'",
        ),
        ({"vlanProto": "802.1ad"}, 'vlanProto: "802.1ad" needs a non-zero vlan'),
        (
            {"mac": "01:00:5e:00:00:01"},
            'mac: "01:00:5e:00:00:01" is a multicast address; a VF needs a unicast MAC',
        ),
        ({"mac": "00:00:00:00:00:00"}, 'mac: "00:00:00:00:00:00" is the all-zero address'),
        (
            {"mac": "02:00:00:00:00"},
            'mac: "02:00:00:00:00" is not a MAC address (xx:xx:xx:xx:xx:xx)',
        ),
        (
            {"mac": "02:00-00:00:00:01"},
            'mac: "02:00-00:00:00:01" is not a MAC address (xx:xx:xx:xx:xx:xx)',
        ),
        (
            {"mac": "02:00:00:00:00:01\n"},
            'mac: "02:00:00:00:00:01\\n" is not a MAC address (xx:xx:xx:xx:xx:xx)',
        ),
        (
            {"runtimeConfig": {"mac": "zz"}},
            'runtimeConfig.mac: "zz" is not a MAC address (xx:xx:xx:xx:xx:xx)',
        ),
        ({"spoofchk": True}, "spoofchk: true is not one of 'on', 'off'"),
        ({"trust": "yes"}, "trust: \"yes\" is not one of 'on', 'off'"),
        ({"link_state": "up"}, "link_state: \"up\" is not one of 'auto', 'enable', 'disable'"),
        ({"min_tx_rate": -1}, "min_tx_rate: -1 is out of range 0-2147483647"),
        (
            {"min_tx_rate": 200, "max_tx_rate": 100},
            "min_tx_rate: 200 is greater than max_tx_rate: 100",
        ),
        ({"mtu": 67}, "mtu: 67 is out of range 68-65535"),
        ({"mtu": 65536}, "mtu: 65536 is out of range 68-65535"),
        ({"ipam": "host-local"}, 'ipam: "host-local" is not an object'),
        ({"ipam": {"type": 3}}, "ipam.type: 3 is not a string"),
        ({"ipam": {"type": "../bin/evil"}}, 'ipam.type: "../bin/evil" is not a plugin name'),
    ],
)
def test_bad_sriov_options_are_error_7_with_key_and_value(extra: dict[str, Any], msg: str) -> None:
    err = parse_error(conf=make_conf(**extra))
    assert (err.code, err.msg) == (7, msg)


def test_runtime_config_mac_wins_over_nad_mac() -> None:
    options = parse_sriov_options({"mac": "02:00:00:00:00:01"}, {"mac": "02:00:00:00:00:02"})
    assert options.mac == "02:00:00:00:00:02"


# ----------------------------------------------------------------- errors


def test_cni_error_json() -> None:
    assert json.loads(CniError(7, "bad", "why").to_json("0.4.0")) == {
        "cniVersion": "0.4.0",
        "code": 7,
        "msg": "bad",
        "details": "why",
    }
    # details is omitempty in libcni
    assert CniError(11, "later").to_dict("1.1.0") == {
        "cniVersion": "1.1.0",
        "code": 11,
        "msg": "later",
    }


@pytest.mark.parametrize("kind", agent_errors.KINDS)
def test_every_agent_error_kind_maps_through_the_table(kind: str) -> None:
    err = agent_errors.rebuild(kind, f"{kind} happened", "detail")
    cni = from_nicwarden_error(err)
    assert (cni.code, cni.msg, cni.details) == (CNI_CODES[kind], f"{kind} happened", "detail")


# ---------------------------------------------------------------- dispatch


class RecordingBackend:
    """Scripted backend: records calls, returns or raises what it is told."""

    def __init__(
        self,
        result: Result | None = None,
        raises: BaseException | None = None,
        status: CniError | None = None,
    ) -> None:
        self.result = result or Result()
        self.raises = raises
        self.status_answer = status
        self.calls: list[tuple[str, CniRequest]] = []

    def _call(self, name: str, request: CniRequest) -> None:
        self.calls.append((name, request))
        if self.raises is not None:
            raise self.raises

    def add(self, request: CniRequest) -> Result:
        self._call("add", request)
        return self.result

    def delete(self, request: CniRequest) -> None:
        self._call("delete", request)

    def check(self, request: CniRequest) -> None:
        self._call("check", request)

    def status(self, request: CniRequest) -> CniError | None:
        self._call("status", request)
        return self.status_answer

    def gc(self, request: CniRequest) -> None:
        self._call("gc", request)


ADD_RESULT = Result(
    interfaces=(
        Interface(
            name="net1",
            mac="02:00:00:00:00:01",
            sandbox="/var/run/netns/cni-1",
            mtu=1500,
            pci_id="0000:18:02.5",
        ),
    ),
    ips=(IPConfig(address=ip_interface("10.0.0.2/24"), interface=0),),
)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_renders_the_result_in_the_request_version(version: str) -> None:
    backend = RecordingBackend(result=ADD_RESULT)
    code, out = handle(parse("ADD", conf=make_conf(version)), backend)
    assert code == 0
    assert json.loads(out) == ADD_RESULT.render(version)
    assert json.loads(out)["cniVersion"] == version
    assert [name for name, _ in backend.calls] == ["add"]


@pytest.mark.parametrize(
    ("command", "method"),
    [("DEL", "delete"), ("CHECK", "check"), ("GC", "gc"), ("STATUS", "status")],
)
def test_commands_without_output(command: str, method: str) -> None:
    backend = RecordingBackend()
    assert handle(parse(command), backend) == (0, b"")
    assert [name for name, _ in backend.calls] == [method]


@pytest.mark.parametrize(
    ("raised", "code", "msg"),
    [
        (CniError(3, "no such container"), 3, "no such container"),
        (agent_errors.NotFound("vf gone"), 7, "vf gone"),
        (agent_errors.Unsupported("no vfio-pci module"), 102, "no vfio-pci module"),
        (
            agent_errors.UnsupportedField("mac: '02:..' on a vfio VF"),
            2,
            "mac: '02:..' on a vfio VF",
        ),
        (agent_errors.ConfigError("vlan clash"), 7, "vlan clash"),
        (agent_errors.Unavailable("inventory loading"), 11, "inventory loading"),
        (agent_errors.AlreadyExists("net1 exists in the netns"), 100, "net1 exists in the netns"),
        (agent_errors.HostError("EBUSY"), 5, "EBUSY"),
    ],
)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC"])
def test_backend_errors_become_cni_errors(
    command: str, raised: BaseException, code: int, msg: str
) -> None:
    code_out, out = handle(parse(command, conf=make_conf("1.1.0")), RecordingBackend(raises=raised))
    assert code_out == 1
    body = json.loads(out)
    assert (body["code"], body["msg"], body["cniVersion"]) == (code, msg, "1.1.0")


def test_unexpected_exception_is_999_without_traceback() -> None:
    code, out = handle(
        parse("ADD", conf=make_conf("0.4.0")), RecordingBackend(raises=KeyError("ifindex"))
    )
    body = json.loads(out)
    assert code == 1
    assert body["code"] == 999 and body["cniVersion"] == "0.4.0"
    assert "KeyError" in body["msg"] and "ifindex" in body["msg"]
    assert b"Traceback" not in out


@pytest.mark.parametrize(
    ("backend", "code", "details"),
    [
        (RecordingBackend(status=CniError(50, "no VFs left in pool")), 50, ""),
        (RecordingBackend(status=CniError(51, "PF link down")), 51, ""),
        (RecordingBackend(raises=CniError(50, "not ready")), 50, ""),
        (RecordingBackend(raises=agent_errors.Unavailable("store locked")), 50, "code 11"),
        (RecordingBackend(raises=RuntimeError("boom")), 50, "code 999"),
    ],
)
def test_status_failures_are_50_or_51(backend: RecordingBackend, code: int, details: str) -> None:
    exit_code, out = handle(parse("STATUS"), backend)
    body = json.loads(out)
    assert exit_code == 1 and body["code"] == code
    assert body.get("details", "") == details


def test_handle_invocation_reports_parse_errors_in_the_input_version() -> None:
    backend = RecordingBackend()
    code, out = handle_invocation(make_env("CHECK"), json.dumps(make_conf("0.3.1")), backend)
    assert code == 1
    assert json.loads(out)["cniVersion"] == "0.3.1" and json.loads(out)["code"] == 1
    code, out = handle_invocation(make_env("ADD"), "{oops", backend)
    assert json.loads(out) == {"cniVersion": "1.1.0", "code": 6, "msg": json.loads(out)["msg"]}
    assert backend.calls == []


def test_handle_invocation_runs_the_backend() -> None:
    backend = RecordingBackend(result=ADD_RESULT)
    code, out = handle_invocation(
        make_env("ADD"), json.dumps(make_conf("1.0.0", deviceID="18:02.5")), backend
    )
    assert code == 0
    assert json.loads(out) == ADD_RESULT.render("1.0.0")
    ((_, request),) = backend.calls
    assert request.device_id == "0000:18:02.5"
