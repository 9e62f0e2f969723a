"""CNI end to end: the installed shim exec'd exactly as a runtime does, the
agent on a simulated node, real netns, real host-local/static IPAM.
Oracles: `ip` in the pod netns, the IPAM plugin's files, the agent's CLI."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import (
    SHIM,
    Running,
    cleanup_node,
    kill_agent,
    start_agent,
    stop_agent,
)
from tests.support.cni_runtime import invoke, netns_path
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    r = start_agent(tmp_path, spec="2x8")
    try:
        yield r
    finally:
        stop_agent(r)
        cleanup_node(r.prefix)


def vf(agent: Running, pf: int, index: int) -> str:
    return f"0000:{0x18 + pf:02x}:{1 + index // 8:02x}.{index % 8}"


def conf(
    agent: Running, tmp: Path, device: str | None, version: str = "1.0.0", **extra: Any
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "cniVersion": version,
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "ipam": {
            "type": "host-local",
            "subnet": "10.56.217.0/24",
            "gateway": "10.56.217.1",
            "routes": [{"dst": "10.60.0.0/16"}],
            "dataDir": str(tmp / "ipam"),
        },
    }
    if device:
        c["deviceID"] = device
    c.update(extra)
    return c


def home_state(agent: Running, name: str) -> list[str]:
    return run("ip", "-br", "link", "show", name).stdout.split()


def ipam_files(tmp: Path) -> list[str]:
    d = tmp / "ipam" / "sriov-net"
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit())


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_every_version(
    agent: Running, tmp_path: Path, netns: Callable[[], str], version: str
) -> None:
    ns = netns()
    dev = vf(agent, 0, 2)
    vf_name = f"{agent.prefix}0v2"
    before = home_state(agent, vf_name)
    c = conf(agent, tmp_path, dev, version, mtu=1400, vlan=100, spoofchk="on")
    kw = dict(container="c" + version.replace(".", ""), netns=netns_path(ns), ifname="net1")

    out = invoke(SHIM, "ADD", c, **kw)
    assert out.code == 0, out.stdout + out.stderr
    res = out.json
    assert res["cniVersion"] == version
    (iface,) = res["interfaces"]
    assert iface["name"] == "net1" and iface["sandbox"] == netns_path(ns)
    (ip,) = res["ips"]
    assert ip["address"] == "10.56.217.2/24" and ip["interface"] == 0
    assert ("version" in ip) == (version in ("0.3.1", "0.4.0"))
    assert ("mtu" in iface and "pciID" in iface) == (version == "1.1.0")
    if version == "1.1.0":
        assert iface["pciID"] == dev and iface["mtu"] == 1400

    # Oracle: the kernel, through ip(8), inside the pod netns.
    link = run("ip", "-n", ns, "-j", "addr", "show", "net1").stdout
    (info,) = json.loads(link)
    assert info["address"] == iface["mac"] and info["mtu"] == 1400
    assert "UP" in info["flags"]
    assert any(a["local"] == "10.56.217.2" for a in info["addr_info"])
    assert "10.60.0.0/16 via 10.56.217.1" in run("ip", "-n", ns, "route").stdout
    assert vf_name not in run("ip", "-br", "link").stdout.split()
    assert ipam_files(tmp_path) == ["10.56.217.2"]
    atts = agent.ctl_json("attachments")["attachments"]
    assert [(a["device"], a["state"], a["pod_name"]) for a in atts] == [(dev, "ready", "pod")]

    if version != "0.3.1":
        c_check = dict(c, prevResult=res)
        chk = invoke(SHIM, "CHECK", c_check, **kw)
        assert chk.code == 0 and chk.stdout == "", chk.stdout

    for _ in range(2):  # DEL is idempotent
        d = invoke(SHIM, "DEL", c, **kw)
        assert d.code == 0 and d.stdout == "", d.stdout
    assert home_state(agent, vf_name)[:3] == before[:3]  # name, state, MAC restored
    assert ipam_files(tmp_path) == []
    assert agent.ctl_json("attachments").get("attachments", []) == []
    assert run("ip", "-n", ns, "link", "show", "net1", check=False).returncode != 0


def test_multus_style_invocation_with_device_info(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    dev = vf(agent, 1, 0)
    info_file = tmp_path / "devinfo" / "cni" / "default-sriov-net-cid_net1"
    c = conf(agent, tmp_path, None, "1.0.0")
    # What Multus writes into the delegate config.
    c.update(
        {"deviceID": dev, "pciBusID": dev, "runtimeConfig": {"CNIDeviceInfoFile": str(info_file)}}
    )
    kw = dict(container="cid", netns=netns_path(ns), ifname="net1", pod="web", namespace="ns1")
    out = invoke(SHIM, "ADD", c, **kw)
    assert out.code == 0, out.stdout
    info = json.loads(info_file.read_text())
    assert info == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": dev, "pf-pci-address": "0000:19:00.0"},
    }
    assert oct(info_file.stat().st_mode & 0o777) == "0o444"
    att = agent.ctl_json("attachment", "cid")["attachments"][0]
    assert (att["pod_namespace"], att["pod_name"], att["pod_uid"]) == ("ns1", "web", "uid-web")
    assert invoke(SHIM, "DEL", c, **kw).code == 0


def test_static_ipam(agent: Running, tmp_path: Path, netns: Callable[[], str]) -> None:
    ns = netns()
    c = conf(agent, tmp_path, vf(agent, 0, 4))
    c["ipam"] = {
        "type": "static",
        "addresses": [{"address": "192.168.77.5/24"}, {"address": "fd00:77::5/64"}],
    }
    kw = dict(container="st1", netns=netns_path(ns), ifname="net1")
    out = invoke(SHIM, "ADD", c, **kw)
    assert out.code == 0, out.stdout
    addrs = run("ip", "-n", ns, "addr", "show", "net1").stdout
    assert "192.168.77.5/24" in addrs and "fd00:77::5/64" in addrs
    assert invoke(SHIM, "DEL", c, **kw).code == 0


def test_two_pods_talk_over_vfs_of_one_pf(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    a, b = netns(), netns()
    ca, cb = conf(agent, tmp_path, vf(agent, 0, 0)), conf(agent, tmp_path, vf(agent, 0, 1))
    ra = invoke(SHIM, "ADD", ca, container="pa", netns=netns_path(a), ifname="net1")
    rb = invoke(SHIM, "ADD", cb, container="pb", netns=netns_path(b), ifname="net1")
    assert ra.code == 0 and rb.code == 0
    ip_b = rb.json["ips"][0]["address"].split("/")[0]
    ping = run("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "2", ip_b, check=False)
    assert ping.returncode == 0, ping.stdout
    assert invoke(SHIM, "DEL", ca, container="pa", netns=netns_path(a), ifname="net1").code == 0
    assert invoke(SHIM, "DEL", cb, container="pb", netns=netns_path(b), ifname="net1").code == 0


@pytest.mark.parametrize(
    ("mutate", "env", "code", "needle"),
    [
        (lambda c: c.pop("deviceID"), {}, 7, "deviceID"),
        (lambda c: c.update(deviceID="0000:77:01.0"), {}, 7, "not a VF"),
        (lambda c: c.update(deviceID="0000:18:00.0"), {}, 7, "is a PF"),
        (lambda c: c.update(deviceID="zz:zz"), {}, 7, "deviceID"),
        (lambda c: c.update(vlan=5000), {}, 7, "vlan"),
        (lambda c: c.update(cniVersion="9.9.9"), {}, 1, "9.9.9"),
        (lambda c: None, {"CNI_NETNS": "/var/run/netns/does-not-exist"}, 4, "does-not-exist"),
        (lambda c: None, {"CNI_IFNAME": "this-name-is-too-long"}, 4, "CNI_IFNAME"),
        (lambda c: None, {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
    ],
)
def test_bad_input_gives_cni_errors(
    agent: Running,
    tmp_path: Path,
    netns: Callable[[], str],
    mutate: Callable[[dict[str, Any]], object],
    env: dict[str, str],
    code: int,
    needle: str,
) -> None:
    ns = netns()
    c = conf(agent, tmp_path, vf(agent, 0, 5))
    mutate(c)
    out = invoke(
        SHIM, "ADD", c, container="bad1", netns=netns_path(ns), ifname="net1", extra_env=env
    )
    assert out.code != 0
    err = out.json
    assert err["code"] == code and needle in err["msg"] + err.get("details", ""), err
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    # Nothing half-done: no attachment, the VF still home, no IP leaked.
    assert agent.ctl_json("attachments").get("attachments", []) == []
    assert f"{agent.prefix}0v5" in run("ip", "-br", "link").stdout
    assert ipam_files(tmp_path) == []


def test_ifname_taken_and_vf_in_use(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    run("ip", "-n", ns, "link", "add", "net1", "type", "veth", "peer", "name", "x")
    c = conf(agent, tmp_path, vf(agent, 0, 6))
    taken = invoke(SHIM, "ADD", c, container="t1", netns=netns_path(ns), ifname="net1")
    assert taken.code != 0 and "already exists" in taken.json["msg"]
    ok = invoke(SHIM, "ADD", c, container="t1", netns=netns_path(ns), ifname="net2")
    assert ok.code == 0
    ns2 = netns()
    busy = invoke(SHIM, "ADD", c, container="t2", netns=netns_path(ns2), ifname="net1")
    assert busy.code != 0 and "attached to pod" in busy.json["msg"]
    assert invoke(SHIM, "DEL", c, container="t1", netns=netns_path(ns), ifname="net2").code == 0


def test_check_detects_drift(agent: Running, tmp_path: Path, netns: Callable[[], str]) -> None:
    ns = netns()
    c = conf(agent, tmp_path, vf(agent, 1, 3), "1.0.0")
    kw = dict(container="d1", netns=netns_path(ns), ifname="net1")
    res = invoke(SHIM, "ADD", c, **kw).json
    run("ip", "-n", ns, "addr", "flush", "dev", "net1")
    chk = invoke(SHIM, "CHECK", dict(c, prevResult=res), **kw)
    assert chk.code != 0 and "10.56.217.2/24" in chk.json["msg"]
    run("ip", "-n", ns, "link", "del", "net1")  # destroys the VF veth pair entirely
    chk = invoke(SHIM, "CHECK", dict(c, prevResult=res), **kw)
    assert chk.code != 0 and "missing" in chk.json["msg"]


def test_status_and_gc(agent: Running, tmp_path: Path, netns: Callable[[], str]) -> None:
    c = conf(agent, tmp_path, None, "1.1.0")
    st = invoke(SHIM, "STATUS", c)
    assert st.code == 0, st.stdout
    ns1, ns2 = netns(), netns()
    c1, c2 = (
        conf(agent, tmp_path, vf(agent, 0, 0), "1.1.0"),
        conf(agent, tmp_path, vf(agent, 0, 1), "1.1.0"),
    )
    assert invoke(SHIM, "ADD", c1, container="keep", netns=netns_path(ns1), ifname="net1").code == 0
    assert (
        invoke(SHIM, "ADD", c2, container="stale", netns=netns_path(ns2), ifname="net1").code == 0
    )
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "net1"}]})
    out = invoke(SHIM, "GC", gc)
    assert out.code == 0, out.stdout
    atts = agent.ctl_json("attachments")["attachments"]
    assert [a["container_id"] for a in atts] == ["keep"]
    assert f"{agent.prefix}0v1" in run("ip", "-br", "link").stdout
    assert ipam_files(tmp_path) == ["10.56.217.2"]


def test_netns_deleted_before_del(agent: Running, tmp_path: Path, netns: Callable[[], str]) -> None:
    ns = netns()
    c = conf(agent, tmp_path, vf(agent, 1, 7))
    kw = dict(container="gone", netns=netns_path(ns), ifname="net1")
    assert invoke(SHIM, "ADD", c, **kw).code == 0
    run("ip", "netns", "del", ns)
    out = invoke(SHIM, "DEL", c, **kw)
    assert out.code == 0, out.stdout
    assert f"{agent.prefix}1v7" in run("ip", "-br", "link").stdout
    assert ipam_files(tmp_path) == []
    # Empty CNI_NETNS (allowed on DEL) for an attachment that is already gone.
    assert invoke(SHIM, "DEL", c, container="gone", ifname="net1").code == 0


@pytest.mark.parametrize("point", ["attach.after_move", "attach.before_commit"])
def test_crash_mid_add_then_restart_recovers(
    tmp_path: Path, netns: Callable[[], str], point: str
) -> None:
    env = dict(os.environ, NICWARDEN_CRASH_AT=point)
    agent = start_agent(tmp_path, spec="1x4", env=env, persistent=True)
    try:
        ns = netns()
        c = conf(agent, tmp_path, vf(agent, 0, 1))
        kw = dict(container="crash", netns=netns_path(ns), ifname="net1")
        out = invoke(SHIM, "ADD", c, **kw)
        assert out.code != 0  # the agent died mid-request
        agent.proc.wait(timeout=20)
        assert agent.proc.returncode == 137
        # Restarted on the same state and the same (adopted) node: the
        # half-done ADD is rolled back at start and the VF is home.
        agent = start_agent(tmp_path, spec="1x4", prefix=agent.prefix, persistent=True)
        assert agent.ctl_json("attachments").get("attachments", []) == []
        assert ipam_files(tmp_path) == []
        assert f"{agent.prefix}0v1" in run("ip", "-br", "link").stdout
        assert run("ip", "-n", ns, "link", "show", "net1", check=False).returncode != 0
        assert invoke(SHIM, "DEL", c, **kw).code == 0
    finally:
        kill_agent(agent)
        cleanup_node(agent.prefix)


def test_restart_keeps_attachments_and_del_works(tmp_path: Path, netns: Callable[[], str]) -> None:
    agent = start_agent(tmp_path, spec="1x4", persistent=True)
    try:
        ns = netns()
        c = conf(agent, tmp_path, vf(agent, 0, 2))
        kw = dict(container="keep", netns=netns_path(ns), ifname="net1")
        assert invoke(SHIM, "ADD", c, **kw).code == 0
        kill_agent(agent)  # hard stop: no cleanup
        agent = start_agent(tmp_path, spec="1x4", prefix=agent.prefix, persistent=True)
        atts = agent.ctl_json("attachments")["attachments"]
        assert [a["container_id"] for a in atts] == ["keep"]
        assert "10.56.217.2" in run("ip", "-n", ns, "addr", "show", "net1").stdout
        assert invoke(SHIM, "DEL", c, **kw).code == 0
        assert f"{agent.prefix}0v2" in run("ip", "-br", "link").stdout
        assert ipam_files(tmp_path) == []
    finally:
        kill_agent(agent)
        cleanup_node(agent.prefix)


def test_32_concurrent_adds_and_dels_leak_nothing(tmp_path: Path) -> None:
    agent = start_agent(tmp_path, spec="2x16")
    names: list[str] = []
    try:
        for i in range(32):
            name = f"nwc{agent.prefix}{i}"
            run("ip", "netns", "add", name)
            names.append(name)
        results: dict[int, Any] = {}

        def one(i: int, command: str) -> None:
            pf, idx = divmod(i, 16)
            c = conf(agent, tmp_path, vf(agent, pf, idx))
            c["ipam"]["subnet"] = "10.77.0.0/16"
            c["ipam"].pop("gateway"), c["ipam"].pop("routes")
            results[i] = invoke(
                SHIM, command, c, container=f"con{i}", netns=netns_path(names[i]), ifname="net1"
            )

        for command in ("ADD", "DEL"):
            threads = [threading.Thread(target=one, args=(i, command)) for i in range(32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            bad = {i: r.stdout for i, r in results.items() if r.code != 0}
            assert not bad, bad
            if command == "ADD":
                ips = {r.json["ips"][0]["address"] for r in results.values()}
                assert len(ips) == 32  # no address given twice
                assert len(agent.ctl_json("attachments")["attachments"]) == 32
        assert agent.ctl_json("attachments").get("attachments", []) == []
        links = run("ip", "-br", "link").stdout
        assert all(
            f"{agent.prefix}{pf}v{i} " in links or f"{agent.prefix}{pf}v{i}@" in links
            for pf in range(2)
            for i in range(16)
        )
        assert ipam_files(tmp_path) == []
    finally:
        stop_agent(agent)
        for name in names:
            run("ip", "netns", "del", name, check=False)
        shutil.rmtree(tmp_path / "ipam", ignore_errors=True)


def macvlan_conflist(
    agent: Running, tmp: Path, master: str, version: str = "1.0.0"
) -> list[dict[str, Any]]:
    """A conflist as a runtime expands it: each plugin gets name + cniVersion."""
    return [
        {
            "cniVersion": version,
            "name": "mvnet",
            "type": "macvlan",
            "master": master,
            "mode": "bridge",
            "ipam": {
                "type": "host-local",
                "subnet": "10.88.0.0/24",
                "dataDir": str(tmp / "ipam-mv"),
            },
        },
        {
            "cniVersion": version,
            "name": "mvnet",
            "type": "nicwarden",
            "agentSocket": str(agent.cni_sock),
        },
    ]


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_chained_policy_only_mode_after_macvlan(
    agent: Running, tmp_path: Path, netns: Callable[[], str], version: str
) -> None:
    ns = netns()
    macvlan, ours = macvlan_conflist(agent, tmp_path, f"{agent.prefix}1", version)
    kw = dict(container="chain1", netns=netns_path(ns), ifname="net1", pod="m1", namespace="prod")
    first = invoke("/usr/lib/cni/macvlan", "ADD", macvlan, **kw)
    assert first.code == 0, first.stdout
    out = invoke(SHIM, "ADD", dict(ours, prevResult=first.json), **kw)
    assert out.code == 0, out.stdout
    # prevResult passed through: equivalent (SPEC), an empty dns object may be dropped.
    assert out.json == {k: v for k, v in first.json.items() if v != {}}
    atts = agent.ctl_json("attachments")["attachments"]
    assert [(a["kind"], a["pod_name"], a.get("device", "")) for a in atts] == [
        ("chained", "m1", "")
    ]
    if version != "0.3.1":
        chk = invoke(SHIM, "CHECK", dict(ours, prevResult=first.json), **kw)
        assert chk.code == 0, chk.stdout
    # DEL in reverse order; ours leaves the macvlan alone.
    assert invoke(SHIM, "DEL", dict(ours, prevResult=first.json), **kw).code == 0
    assert "net1" in run("ip", "-n", ns, "link").stdout
    assert agent.ctl_json("attachments").get("attachments", []) == []
    assert invoke("/usr/lib/cni/macvlan", "DEL", macvlan, **kw).code == 0
    # Chained without a prevResult naming the interface is a config error.
    bad = invoke(SHIM, "ADD", ours, **kw)
    assert bad.code != 0 and bad.json["code"] == 7


def test_dpdk_vf_add_returns_ipam_without_netns_move(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    assert agent.ctl("bind", "0000:18:01.7", "vfio-pci").returncode == 0
    info_file = tmp_path / "devinfo-dpdk.json"
    c = conf(agent, tmp_path, "0000:18:01.7", "1.1.0", vlan=200)
    c["runtimeConfig"] = {"CNIDeviceInfoFile": str(info_file)}
    c["ipam"] = {"type": "static", "addresses": [{"address": "192.168.90.7/24"}]}
    kw = dict(container="dpdk1", netns=netns_path(ns), ifname="net1")
    out = invoke(SHIM, "ADD", c, **kw)
    assert out.code == 0, out.stdout
    (iface,) = out.json["interfaces"]
    assert iface["pciID"] == "0000:18:01.7" and "mac" not in iface
    assert out.json["ips"][0]["address"] == "192.168.90.7/24"
    # No kernel netdev moved: the pod netns has only lo; the address is for DPDK.
    assert run("ip", "-n", ns, "-br", "link").stdout.split()[0] == "lo"
    assert len(run("ip", "-n", ns, "-br", "link").stdout.strip().splitlines()) == 1
    assert json.loads(info_file.read_text())["pci"]["pci-address"] == "0000:18:01.7"
    att = agent.ctl_json("attachments")["attachments"][0]
    assert att["kind"] == "dpdk"
    assert invoke(SHIM, "DEL", c, **kw).code == 0
    assert agent.ctl("bind", "0000:18:01.7", "kernel").returncode == 0
