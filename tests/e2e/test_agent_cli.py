"""Drive the installed binaries: nicwarden-agent --simulate and nicwardenctl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import AGENT, CTL, Running, cleanup_node, start_agent, stop_agent
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def links_with(prefix: str) -> list[str]:
    return [ln for ln in run("ip", "-o", "link").stdout.splitlines() if f": {prefix}" in ln]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    r = start_agent(tmp_path)
    try:
        yield r
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
        cleanup_node(r.prefix)


def test_query_and_graceful_stop(agent: Running) -> None:
    devices = json.loads(agent.ctl("-o", "json", "devices").stdout)["devices"]
    assert sum(d["role"] == "DEVICE_ROLE_PF" for d in devices) == 2
    vfs = [d for d in devices if d["role"] == "DEVICE_ROLE_VF"]
    assert len(vfs) == 16 and all(d["healthy"] for d in vfs)
    # Cross-check with the kernel: each VF netdev the agent reports exists with that MAC.
    for d in vfs:
        shown = run("ip", "-br", "link", "show", d["netdev"]["name"]).stdout.split()
        assert shown[2] == d["netdev"]["mac"]

    table = agent.ctl("devices", "--role", "vf", "--pf", f"{agent.prefix}1")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 9

    one = json.loads(agent.ctl("-o", "json", "device", f"{agent.prefix}0v3").stdout)
    assert one["pci_address"] == "0000:18:01.3" and one["pf_name"] == f"{agent.prefix}0"
    assert agent.ctl("device", "18:01.3").returncode == 0

    missing = agent.ctl("device", "0000:99:00.0")
    assert (
        missing.returncode == 1
        and "not_found" in missing.stderr
        and "0000:99:00.0" in missing.stderr
    )

    health = agent.ctl("health")
    assert health.returncode == 0 and "inventory" in health.stdout
    assert "simulated" in agent.ctl("version").stdout

    metrics = subprocess.run(
        [
            "python3",
            "-c",
            f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{agent.metrics_port}/metrics').read().decode())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'nicwarden_devices{role="vf"} 16.0' in metrics

    assert oct(agent.sock.stat().st_mode & 0o777) == "0o600"
    assert oct(agent.sock.parent.stat().st_mode & 0o777) == "0o700"
    log = stop_agent(agent)
    assert agent.proc.returncode == 0, log
    assert not agent.sock.exists()
    assert links_with(agent.prefix) == []
    assert any(
        json.loads(line).get("msg") == "stopped"
        for line in log.splitlines()
        if line.startswith("{")
    )


def test_second_agent_on_a_live_socket_is_refused(agent: Running, tmp_path: Path) -> None:
    other = subprocess.run(
        [
            AGENT,
            "--simulate",
            "1x1",
            "--sim-prefix",
            "x" + agent.prefix[1:],
            "--state-dir",
            str(tmp_path / "state2"),
            "--socket",
            str(agent.sock),
            "--no-metrics",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert other.returncode == 1 and "in use by a running nicwarden agent" in other.stderr
    assert agent.ctl("version").returncode == 0  # the first one is unharmed


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "agent.sock"
    sock.parent.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()  # a socket file nobody listens on: what a killed agent leaves
    r = start_agent(tmp_path)
    try:
        assert r.ctl("health").returncode == 0
    finally:
        stop_agent(r)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--metrics-port", "70000"], "metrics.port"),
        (["--log-level", "loud"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    r = subprocess.run([AGENT, "--state-dir", str(tmp_path), *args], capture_output=True, text=True)
    assert r.returncode == 2 and needle in r.stderr


def test_bad_config_file_exit_2_names_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stateDir: /tmp/x\nmetrcs: {}\n")
    r = subprocess.run([AGENT, "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and str(cfg) in r.stderr and "metrcs" in r.stderr


def test_missing_sysfs_root_fails_cleanly(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "agent.sock"
    r = subprocess.run(
        [
            AGENT,
            "--sysfs-root",
            str(tmp_path / "nosys"),
            "--state-dir",
            str(tmp_path / "s"),
            "--socket",
            str(sock),
            "--no-metrics",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "sysfs root" in r.stderr
    assert not sock.exists()


def test_unwritable_state_dir_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run(
        [
            AGENT,
            "--simulate",
            "1x1",
            "--state-dir",
            str(blocker / "state"),
            "--socket",
            str(tmp_path / "a.sock"),
            "--no-metrics",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and str(blocker) in r.stderr
    assert not (tmp_path / "a.sock").exists()


def test_sigterm_while_clients_query(agent: Running) -> None:
    env = dict(os.environ)
    queries = [
        subprocess.Popen(
            [CTL, "--socket", str(agent.sock), "devices"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(5)
    ]
    stop_agent(agent)
    for q in queries:
        q.wait(timeout=20)
        assert q.returncode in (0, 3)
    assert agent.proc.returncode == 0 and not agent.sock.exists()
    assert links_with(agent.prefix) == []
