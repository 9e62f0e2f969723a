"""IPAM delegation through the real reference plugins (containernetworking-
plugins 1.1.1 from Debian: host-local and static). host-local with a temp
dataDir touches no kernel state, so no root is needed."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from nicwarden.cni.delegate import (
    find_plugin,
    ipam_add,
    ipam_check,
    ipam_del,
    ipam_gc,
    ipam_status,
    plugin_versions,
    run_plugin,
)
from nicwarden.cni.errors import CniError
from nicwarden.cni.result import DNS, IPConfig, Result, Route

PLUGIN_DIR = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    not (PLUGIN_DIR / "host-local").exists(), reason="containernetworking-plugins not installed"
)
# A missing directory first: the search must walk the whole list.
CNI_PATH = f"/nonexistent/cni:{PLUGIN_DIR}"


def env(container_id: str = "c0ffee", ifname: str = "net1") -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD",  # replaced per call by the delegate runner
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": "/var/run/netns/does-not-matter-to-ipam",
        "CNI_IFNAME": ifname,
        "CNI_PATH": CNI_PATH,
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p",
    }


def host_local_conf(data_dir: Path, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "sriov-net",
        "type": "nicwarden",
        "vlan": 100,  # our own keys travel too: the delegate gets the complete config
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.77.0.0/29", "gateway": "10.77.0.1"}]],
            "routes": [{"dst": "192.168.0.0/16"}],
        },
        **extra,
    }


def allocations(data_dir: Path) -> dict[str, str]:
    net_dir = data_dir / "sriov-net"
    if not net_dir.exists():
        return {}
    return {
        p.name: p.read_text()
        for p in net_dir.iterdir()
        if not p.name.startswith("last_reserved_ip") and p.name != "lock"
    }


# ---------------------------------------------------------------- host-local


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_host_local_add_check_del(tmp_path: Path, version: str) -> None:
    conf = host_local_conf(tmp_path, version)

    result = ipam_add(conf, env())
    assert result == Result(
        ips=(IPConfig(address=ip_interface("10.77.0.2/29"), gateway=ip_address("10.77.0.1")),),
        routes=(Route(dst=ip_network("192.168.0.0/16")),),
    )
    files = allocations(tmp_path)
    assert list(files) == ["10.77.0.2"]
    assert files["10.77.0.2"].split() == ["c0ffee", "net1"]

    if version != "0.3.1":  # CHECK exists from 0.4.0
        ipam_check(conf, env())

    # A second attachment gets the next address, keyed on (container, ifname).
    second = ipam_add(conf, env("beef", "net2"))
    assert second.ips[0].address == ip_interface("10.77.0.3/29")
    assert sorted(allocations(tmp_path)) == ["10.77.0.2", "10.77.0.3"]

    ipam_del(conf, env())
    assert list(allocations(tmp_path)) == ["10.77.0.3"]
    ipam_del(conf, env())  # repeated DEL succeeds
    ipam_del(conf, env("beef", "net2"))
    assert allocations(tmp_path) == {}


def test_host_local_check_reports_a_missing_reservation(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, "1.0.0")
    with pytest.raises(CniError) as info:
        ipam_check(conf, env())
    assert info.value.msg.startswith("host-local: ")
    assert "c0ffee" in info.value.msg


def test_host_local_errors_keep_their_code_and_details(tmp_path: Path) -> None:
    # host-local 1.1.1 speaks up to 1.0.0: a 1.1.0 config is refused with
    # code 1, which reaches our caller unchanged apart from the name prefix.
    with pytest.raises(CniError) as info:
        ipam_add(host_local_conf(tmp_path, "1.1.0"), env())
    assert info.value.code == 1
    assert info.value.msg == "host-local: incompatible CNI versions"
    assert '"1.1.0"' in info.value.details
    assert allocations(tmp_path) == {}


def test_host_local_exhausted_range(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path)
    conf["ipam"]["ranges"] = [[{"subnet": "10.77.0.0/30"}]]  # one usable address
    ipam_add(conf, env("a"))
    with pytest.raises(CniError) as info:
        ipam_add(conf, env("b"))
    assert info.value.msg.startswith("host-local: ")
    assert "no IP addresses available" in info.value.msg


def test_gc_and_status_skip_a_delegate_without_them(tmp_path: Path) -> None:
    """What host-local 1.1.1 does with GC: it has no GC (nor STATUS) and
    answers "unknown CNI_COMMAND" (code 4), or, for a GC environment without
    CNI_CONTAINERID, "missing containerID" (3). ipam_gc/ipam_status ask its
    VERSION first and skip it, returning False."""
    assert "1.1.0" not in plugin_versions("host-local", env(), CNI_PATH)
    conf = host_local_conf(tmp_path, "1.1.0", **{"cni.dev/valid-attachments": []})
    gc_env = {"CNI_COMMAND": "GC", "CNI_PATH": CNI_PATH}

    with pytest.raises(CniError) as info:
        run_plugin("host-local", "GC", env(), conf, CNI_PATH)
    assert (info.value.code, info.value.msg) == (4, "host-local: unknown CNI_COMMAND: GC")
    with pytest.raises(CniError) as info:
        run_plugin("host-local", "GC", gc_env, conf, CNI_PATH)
    assert (info.value.code, info.value.msg) == (3, "host-local: missing containerID")

    assert ipam_gc(conf, gc_env) is False
    assert ipam_status(conf, {"CNI_COMMAND": "STATUS", "CNI_PATH": CNI_PATH}) is False


# -------------------------------------------------------------------- static


def test_static_add_check_del(tmp_path: Path) -> None:
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "ipam": {
            "type": "static",
            "addresses": [
                {"address": "10.10.0.5/24", "gateway": "10.10.0.1"},
                {"address": "fd00:10::5/64"},
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}],
            "dns": {"nameservers": ["10.10.0.53"], "search": ["example.org"]},
        },
    }
    result = ipam_add(conf, env())
    assert result == Result(
        ips=(
            IPConfig(address=ip_interface("10.10.0.5/24"), gateway=ip_address("10.10.0.1")),
            IPConfig(address=ip_interface("fd00:10::5/64")),
        ),
        routes=(Route(dst=ip_network("0.0.0.0/0"), gw=ip_address("10.10.0.1")),),
        dns=DNS(nameservers=("10.10.0.53",), search=("example.org",)),
    )
    # CHECK gets the runtime's prevResult, and static compares its
    # addresses with it.
    ipam_check({**conf, "prevResult": result.render("1.0.0")}, env())
    with pytest.raises(CniError) as info:
        ipam_check(conf, env())
    assert info.value.msg == "static: Required prevResult missing"
    ipam_del(conf, env())


def test_static_rejects_a_bad_address() -> None:
    conf = {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "nicwarden",
        "ipam": {"type": "static", "addresses": [{"address": "10.10.0.5"}]},
    }
    with pytest.raises(CniError) as info:
        ipam_add(conf, env())
    assert info.value.msg.startswith("static: ")


# ------------------------------------------------------------ plugin lookup


def test_missing_plugin_is_error_7_naming_type_and_path() -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "x", "ipam": {"type": "no-such-ipam"}}
    with pytest.raises(CniError) as info:
        ipam_add(conf, env())
    assert info.value.code == 7
    assert info.value.msg == f"failed to find plugin 'no-such-ipam' in CNI_PATH {CNI_PATH!r}"


@pytest.mark.parametrize(
    "plugin_type", ["../host-local", "/usr/lib/cni/host-local", "sub/dir", "..", ""]
)
def test_plugin_type_is_a_name_not_a_path(plugin_type: str) -> None:
    with pytest.raises(CniError) as info:
        find_plugin(plugin_type, CNI_PATH)
    assert info.value.code == 7


def test_empty_cni_path_is_error_4() -> None:
    with pytest.raises(CniError) as info:
        find_plugin("host-local", ":")
    assert info.value.code == 4 and "CNI_PATH" in info.value.msg


def test_non_executable_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "host-local").write_text("not a program")
    path = f"{tmp_path}:{PLUGIN_DIR}"
    assert find_plugin("host-local", path) == str(PLUGIN_DIR / "host-local")


def test_cni_path_argument_overrides_env(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path)
    with pytest.raises(CniError) as info:
        ipam_add(conf, env(), cni_path=str(tmp_path))
    assert info.value.code == 7


# ------------------------------------------- the exec contract, with a probe


def write_plugin(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_delegate_gets_same_env_and_complete_config(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    write_plugin(
        tmp_path,
        "probe",
        f'env > "{dump}.env"\ncat > "{dump}.stdin"\n'
        'echo \'{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.9/24"}]}\'\n',
    )
    conf = {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "nicwarden",
        "deviceID": "0000:18:02.5",
        "ipam": {"type": "probe", "x": [1, 2]},
    }
    the_env = env()
    result = ipam_add(conf, {**the_env, "CNI_COMMAND": "DEL"}, cni_path=str(tmp_path))
    assert result.ips[0].address == ip_interface("10.0.0.9/24")
    assert json.loads((tmp_path / "dump.stdin").read_text()) == conf
    seen = dict(
        line.split("=", 1)
        for line in (tmp_path / "dump.env").read_text().splitlines()
        if "=" in line
    )
    cni_seen = {k: v for k, v in seen.items() if k.startswith("CNI_")}
    assert cni_seen == {**the_env, "CNI_COMMAND": "ADD"}


def test_delegate_stderr_is_passed_through(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    write_plugin(tmp_path, "noisy", 'echo "noisy: reserving" >&2\n')
    run_plugin("noisy", "DEL", env(), {"cniVersion": "1.0.0"}, str(tmp_path))
    assert "noisy: reserving" in capfd.readouterr().err


def test_delegate_timeout_is_error_11(tmp_path: Path) -> None:
    write_plugin(tmp_path, "slow", "exec sleep 30\n")
    with pytest.raises(CniError) as info:
        run_plugin("slow", "ADD", env(), {"cniVersion": "1.0.0"}, str(tmp_path), timeout=0.5)
    assert info.value.code == 11 and info.value.msg == "slow: ADD did not finish within 0.5 s"


@pytest.mark.parametrize(
    ("body", "command", "code", "text"),
    [
        ("echo 'not json'\nexit 1\n", "DEL", 999, "crash: DEL failed with exit code 1"),
        ("echo 'it broke' >&2\nexit 2\n", "DEL", 999, "crash: DEL failed with exit code 2"),
        ("echo 'not json'\n", "ADD", 999, "crash: ADD succeeded but printed no JSON object"),
        ("echo '[1]'\n", "ADD", 999, "crash: ADD succeeded but printed no JSON object"),
        ('echo \'{"code": 0, "msg": "zero"}\'\nexit 1\n', "ADD", 999, "crash: zero"),
        (
            'echo \'{"code": 11, "msg": "busy", "details": "d"}\'\nexit 1\n',
            "ADD",
            11,
            "crash: busy",
        ),
        (
            'echo \'{"ips": [{"address": "bad"}]}\'\n',
            "ADD",
            999,
            "crash: ADD returned an invalid result",
        ),
    ],
)
def test_misbehaving_delegates(
    tmp_path: Path, body: str, command: str, code: int, text: str
) -> None:
    write_plugin(tmp_path, "crash", body)
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "x", "ipam": {"type": "crash"}}
    with pytest.raises(CniError) as info:
        if command == "ADD":
            ipam_add(conf, env(), cni_path=str(tmp_path))
        else:
            ipam_del(conf, env(), cni_path=str(tmp_path))
    assert info.value.code == code
    assert info.value.msg.startswith(text)


def test_silent_failure_quotes_stderr(tmp_path: Path) -> None:
    write_plugin(tmp_path, "crash", "echo 'lock held by pid 7' >&2\nexit 2\n")
    with pytest.raises(CniError) as info:
        run_plugin("crash", "DEL", env(), {}, str(tmp_path))
    assert info.value.details == "lock held by pid 7"


def test_ipam_helpers_need_an_ipam_type() -> None:
    with pytest.raises(CniError) as info:
        ipam_del({"cniVersion": "1.0.0", "name": "n", "type": "x", "ipam": {}}, env())
    assert info.value.code == 7
