"""With ``--log-format json`` every line the agent writes is a JSON record:
no Python traceback from the CNI endpoint when a client hangs up before its
answer (a shim killed or timed out after sending a DEL), and no raw stderr
chatter from the libraries and child processes the agent runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import SHIM, Running, cleanup_node, start_agent, stop_agent
from tests.support.cni_runtime import invoke, netns_path

pytestmark = [pytest.mark.root, pytest.mark.e2e]

SUBNET = "10.251.78.0/24"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    r = start_agent(tmp_path, "--log-format", "json", "--log-level", "debug", spec="1x4")
    try:
        yield r
    finally:
        stop_agent(r)
        cleanup_node(r.prefix)


def conf(agent: Running, tmp: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "json-net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": "0000:18:01.0",
        "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(tmp / "ipam")},
    }


def hang_up_after_sending(sock_path: Path, config: dict[str, Any], container: str) -> None:
    """A DEL sent by a client that closes before reading the answer."""
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": container,
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/opt/cni/bin",
    }
    body = json.dumps({"env": env, "stdin": json.dumps(config)}).encode()
    head = (
        f"POST /v1/cni HTTP/1.1\r\nHost: nicwarden\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock_path))
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
    # Closed: the agent's answer meets a broken pipe.


def test_every_line_is_json_and_no_traceback(
    agent: Running, tmp_path: Path, netns: Callable[[], str]
) -> None:
    config = conf(agent, tmp_path)
    for i in range(4):
        container = f"json-{i}"
        ns = netns_path(netns())
        added = invoke(SHIM, "ADD", config, container=container, netns=ns, ifname="net1")
        assert added.code == 0, added.stdout
        for _ in range(5):
            hang_up_after_sending(agent.cni_sock, config, container)
        deleted = invoke(SHIM, "DEL", config, container=container, netns=ns, ifname="net1")
        assert deleted.code == 0, deleted.stdout
    for _ in range(20):  # DELs of nothing: the fastest answers, the likeliest pipes
        hang_up_after_sending(agent.cni_sock, config, "json-unknown")
    assert agent.ctl("version").returncode == 0
    text = stop_agent(agent)
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) > 20
    bad = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        assert isinstance(record, dict) and {"ts", "level", "logger", "msg"} <= set(record)
    assert bad == [], "\n".join(bad[:20])
    assert "Traceback" not in text
    assert any("closed before the answer" in json.loads(line)["msg"] for line in lines)
