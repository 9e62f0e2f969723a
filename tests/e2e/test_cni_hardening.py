"""CNI input a careless or hostile runtime could send: interface names the
kernel would rewrite or refuse, and the host's own netns as the pod's.
The installed shim against an agent on a simulated node; oracles: ip(8) and
the agent's CLI."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import SHIM, Running, cleanup_node, start_agent, stop_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

# Host-side tests put addresses on the host if the agent lets them through:
# a subnet no other test uses, so a failure here cannot disturb the others.
SUBNET, GATEWAY, ROUTE = "10.251.77.0/24", "10.251.77.1", "10.251.96.0/20"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    r = start_agent(tmp_path, spec="1x4")
    try:
        yield r
    finally:
        stop_agent(r)
        cleanup_node(r.prefix)


def conf(agent: Running, tmp: Path, device: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "hard-net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": device,
        "ipam": {
            "type": "host-local",
            "subnet": SUBNET,
            "gateway": GATEWAY,
            "routes": [{"dst": ROUTE}],
            "dataDir": str(tmp / "ipam"),
        },
    }


def vf_addr(index: int) -> str:
    return f"0000:18:01.{index}"


def vf_name(agent: Running, index: int) -> str:
    return f"{agent.prefix}0v{index}"


def host_has(text: str) -> bool:
    return text in run("ip", "addr").stdout or text in run("ip", "route").stdout


def attachments(agent: Running) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = agent.ctl_json("attachments").get("attachments", [])  # type: ignore[assignment]
    return out


def is_home(agent: Running, index: int) -> bool:
    r = run("ip", "-br", "link", "show", vf_name(agent, index), check=False)
    return r.returncode == 0


def host_cleanup(ifname: str) -> None:
    """What a wrongly accepted host-netns ADD leaves: undo it on the host."""
    run("ip", "addr", "flush", "to", SUBNET, check=False)
    run("ip", "route", "del", ROUTE, check=False)
    del_link = run("ip", "link", "show", ifname, check=False)
    if del_link.returncode == 0:
        run("ip", "link", "del", ifname, check=False)


# -- defect: templated and over-long interface names --------------------------


def test_templated_ifname_is_refused_and_strands_nothing(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    c = conf(agent, tmp_path, vf_addr(1))
    kw: dict[str, Any] = dict(container="ctpl", netns=netns_path(ns), ifname="net%d")
    out = invoke(SHIM, "ADD", c, **kw)
    assert out.code != 0 and out.json["code"] == 4, out.stdout + out.stderr
    assert "CNI_IFNAME" in out.json["msg"] and "%" in out.json["msg"]
    # Nothing moved: the VF is home, nothing in the pod, no row, no lease.
    assert is_home(agent, 1)
    assert run("ip", "-n", ns, "-br", "link").stdout.split()[0] == "lo"
    assert len(run("ip", "-n", ns, "-br", "link").stdout.splitlines()) == 1
    assert attachments(agent) == []
    # The same VF is still free for a well-named interface.
    ok = invoke(SHIM, "ADD", c, container="ctpl2", netns=netns_path(ns), ifname="net1")
    assert ok.code == 0, ok.stdout + ok.stderr
    assert invoke(SHIM, "DEL", c, container="ctpl2", netns=netns_path(ns), ifname="net1").code == 0
    assert is_home(agent, 1)


def test_sixteen_byte_utf8_ifname_names_the_byte_limit(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    ns = netns()
    name = "é" * 8  # 8 characters, 16 bytes
    out = invoke(
        SHIM,
        "ADD",
        conf(agent, tmp_path, vf_addr(2)),
        container="cutf",
        netns=netns_path(ns),
        ifname=name,
    )
    assert out.code != 0 and out.json["code"] == 4, out.stdout + out.stderr
    msg = out.json["msg"]
    assert "CNI_IFNAME" in msg and "16 bytes" in msg and "15 bytes" in msg, msg
    assert is_home(agent, 2) and attachments(agent) == []


def test_del_finds_a_vf_renamed_inside_the_pod(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    """DEL (and ADD's rollback, which shares the lookup) find the VF by its
    PCI address, whatever the pod renamed it to."""
    ns = netns()
    c = conf(agent, tmp_path, vf_addr(3))
    kw: dict[str, Any] = dict(container="cren", netns=netns_path(ns), ifname="net1")
    assert invoke(SHIM, "ADD", c, **kw).code == 0
    run("ip", "-n", ns, "link", "set", "net1", "down")
    run("ip", "-n", ns, "link", "set", "net1", "name", "renamed0")
    out = invoke(SHIM, "DEL", c, **kw)
    assert out.code == 0, out.stdout + out.stderr
    assert is_home(agent, 3)
    assert "renamed0" not in run("ip", "-n", ns, "-br", "link").stdout
    assert attachments(agent) == []


# -- defect: the host's own netns as CNI_NETNS ------------------------------


@pytest.mark.parametrize("which", ["agent-pid", "self"])
def test_host_netns_is_refused(agent: Running, tmp_path: Path, which: str) -> None:
    path = f"/proc/{agent.proc.pid}/ns/net" if which == "agent-pid" else "/proc/self/ns/net"
    ifname = f"h{agent.prefix}"
    c = conf(agent, tmp_path, vf_addr(0))
    kw: dict[str, Any] = dict(container="chost", netns=path, ifname=ifname)
    try:
        out = invoke(SHIM, "ADD", c, **kw)
        assert out.code != 0 and out.json["code"] == 4, out.stdout + out.stderr
        assert "CNI_NETNS" in out.json["msg"] and "host" in out.json["msg"]
        assert is_home(agent, 0)
        assert not host_has("10.251.77.")
        assert ROUTE not in run("ip", "route").stdout
        assert run("ip", "link", "show", ifname, check=False).returncode != 0
        assert attachments(agent) == []
    finally:
        invoke(SHIM, "DEL", c, **kw)
        host_cleanup(ifname)


def test_del_of_a_host_netns_attachment_restores_the_vf(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    """An attachment recorded before host netns were refused: the VF sits on
    the host under the pod's name with the pod's address and route. DEL puts
    it back exactly as it was."""
    ns = netns()
    ifname = f"h{agent.prefix}"
    c = conf(agent, tmp_path, vf_addr(1))
    home = vf_name(agent, 1)
    before = run("ip", "-br", "link", "show", home).stdout.split()
    kw: dict[str, Any] = dict(container="cold", netns=netns_path(ns), ifname=ifname)
    try:
        res = invoke(SHIM, "ADD", c, **kw)
        assert res.code == 0, res.stdout + res.stderr
        address = res.json["ips"][0]["address"]
        # Recreate what the old agent did: the VF on the host, addressed and routed.
        run("ip", "-n", ns, "link", "set", ifname, "netns", f"/proc/{os.getpid()}/ns/net")
        run("ip", "addr", "add", address, "dev", ifname)
        run("ip", "link", "set", ifname, "up")
        run("ip", "route", "add", ROUTE, "via", GATEWAY, "dev", ifname)
        db = tmp_path / "state" / "nicwarden.db"
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(
                "UPDATE attachments SET netns = ? WHERE container_id = 'cold'",
                ("/proc/self/ns/net",),
            )
        kw["netns"] = "/proc/self/ns/net"
        out = invoke(SHIM, "DEL", c, **kw)
        assert out.code == 0, out.stdout + out.stderr
        after = run("ip", "-br", "link", "show", home).stdout.split()
        assert after[:3] == before[:3], (before, after)  # name, state, MAC
        assert run("ip", "link", "show", ifname, check=False).returncode != 0
        assert not host_has("10.251.77."), run("ip", "addr").stdout
        assert ROUTE not in run("ip", "route").stdout
        assert attachments(agent) == []
    finally:
        host_cleanup(ifname)


def test_host_netns_check_compares_namespaces_not_paths(netns: Callable[[], str]) -> None:
    from nicwarden.agent.host.nsid import is_host_netns

    assert is_host_netns(f"/proc/{os.getpid()}/ns/net")
    assert is_host_netns("/proc/thread-self/ns/net")
    assert not is_host_netns(netns_path(netns()))
    assert not is_host_netns("/nonexistent/ns")
