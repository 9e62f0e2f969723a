"""``nicwardenctl observe`` against the installed agent on a simulated node:
a deny-all ingress policy, SYNs and a flood from another pod, and the
dropped-flow records streamed as JSON lines, deduplicated and capped in the
kernel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_metrics_flow import attach, drops, pod, scrape, wait_for, write
from tests.support.agent_proc import CTL, Running, cleanup_node, kill_agent, start_agent
from tests.support.traffic import in_netns

pytestmark = [pytest.mark.root, pytest.mark.e2e]

SYNS = 100
CAP = 50  # policy.dropEvents.maxPerSecond for this agent
FLOOD = 200_000  # denied datagrams, each its own flow (distinct ports)


class Observer:
    """``nicwardenctl observe -o json`` in the background, lines collected."""

    def __init__(self, agent: Running, *args: str) -> None:
        self.proc = subprocess.Popen(
            [CTL, "--socket", str(agent.sock), "-o", "json", "observe", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.records.append(json.loads(line))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and stderr."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def outcomes(agent: Running) -> dict[str, float]:
    return {
        lab["outcome"]: v
        for n, lab, v in scrape(agent)
        if n == "nicwarden_policy_drop_events_total"
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the full line (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_syns_one_flow(ns: str, dst: str, count: int, sport: int, dport: int) -> None:
    """``count`` SYNs of one 5-tuple: a non-blocking connect closed at once
    sends one SYN and leaves no TIME_WAIT, so the next bind may reuse it."""

    def run() -> None:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", sport))
            s.setblocking(False)
            s.connect_ex((dst, dport))
            s.close()

    in_netns(ns, run)


def flood(ns: str, dst: str, count: int) -> None:
    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(count):
                s.sendto(b"x", (dst, 1 + i % 65535))

    in_netns(ns, run)


@pytest.fixture
def node(tmp_path: Path, netns: Callable[[], str]) -> Iterator[tuple[Running, str, str]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "manifestsDir": str(manifests),
                "policy": {"dropEvents": {"perFlowIntervalMs": 60_000, "maxPerSecond": CAP}},
            }
        )
    )
    agent = start_agent(tmp_path, "--config", str(cfg), spec="1x4")
    try:
        nad_conf = json.dumps({"cniVersion": "1.0.0", "name": "sriov-net", "type": "nicwarden"})
        write(
            manifests,
            "base",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "sriov-net", "namespace": "prod"},
                "spec": {"config": nad_conf},
            },
            pod("db", {"app": "db"}),
            pod("client", {"app": "client"}),
        )
        db_ns, client_ns = netns(), netns()
        db_ip = attach(agent, tmp_path, "db", "0000:18:01.0", db_ns)
        attach(agent, tmp_path, "client", "0000:18:01.1", client_ns)
        write(
            manifests,
            "policy",
            {
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "deny-all",
                    "namespace": "prod",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "sriov-net"},
                },
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
            },
        )
        wait_for(lambda: drops(scrape(agent)) >= 0)
        yield agent, client_ns, db_ip
    finally:
        kill_agent(agent)
        cleanup_node(agent.prefix)


def test_observe_names_pod_network_and_reason_once_per_flow(
    node: tuple[Running, str, str],
) -> None:
    agent, client_ns, db_ip = node
    obs = Observer(agent, "--verdict", "dropped", "--pod", "prod/db")
    try:
        time.sleep(0.5)  # let the stream subscribe (a late one would need --since)
        before = drops(scrape(agent))
        send_syns_one_flow(client_ns, db_ip, SYNS, sport=33333, dport=5432)
        wait_for(lambda: drops(scrape(agent)) >= before + SYNS)
        assert drops(scrape(agent)) == before + SYNS  # every SYN dropped and counted
        wait_for(lambda: len(obs.snapshot()) >= 1)
        time.sleep(0.5)  # a duplicate, if any, would have arrived by now
    finally:
        code, err = obs.interrupt()
    assert code in (0, 130), err
    assert "Traceback" not in err
    recs = obs.snapshot()
    assert len(recs) == 1, recs  # 100 SYNs of one flow: one record
    r = recs[0]
    assert (r["namespace"], r["pod"], r["network"]) == ("prod", "db", "prod/sriov-net")
    assert (r["direction"], r["verdict"], r["reason"]) == ("ingress", "dropped", "no_rule")
    assert (r["dst"], r["dst_port"], r["src_port"], r["protocol"]) == (db_ip, 5432, 33333, 6)
    assert r["policies"] == ["prod/deny-all"]

    # A late subscriber gets the kept record through --since.
    late = Observer(agent, "--since", "1h", "--network", "prod/sriov-net")
    try:
        wait_for(lambda: len(late.snapshot()) >= 1)
    finally:
        code, err = late.interrupt()
    assert code in (0, 130) and "Traceback" not in err, err
    assert late.snapshot()[0]["src_port"] == 33333


def test_flood_is_capped_and_agent_cpu_bounded(node: tuple[Running, str, str]) -> None:
    agent, client_ns, db_ip = node
    obs = Observer(agent, "--verdict", "dropped")
    try:
        time.sleep(0.5)
        before = drops(scrape(agent))
        out0 = outcomes(agent)
        cpu0, t0 = cpu_seconds(agent.proc.pid), time.monotonic()
        flood(client_ns, db_ip, FLOOD)
        wait_for(lambda: drops(scrape(agent)) >= before + FLOOD, timeout=60)
        time.sleep(0.5)  # the stream catches up
        cpu1, t1 = cpu_seconds(agent.proc.pid), time.monotonic()
    finally:
        code, err = obs.interrupt()
    assert code in (0, 130) and "Traceback" not in err, err
    # The datapath dropped (and counted) every datagram: the ring never held a packet up.
    assert drops(scrape(agent)) == before + FLOOD
    recs = obs.snapshot()
    elapsed = t1 - t0
    print(
        f"flood: {FLOOD} datagrams in {elapsed:.2f}s, {len(recs)} records, "
        f"agent CPU {cpu1 - cpu0:.2f}s"
    )
    # At most CAP per one-second window; each window may overshoot by a racing CPU.
    assert CAP <= len(recs) <= (CAP + os.cpu_count()) * (int(elapsed) + 2), (len(recs), elapsed)
    assert all(r["reason"] == "no_rule" and r["pod"] == "db" for r in recs)
    out1 = outcomes(agent)
    emitted = out1["emitted"] - out0["emitted"]
    lost = out1["ring_full"] - out0["ring_full"]
    assert emitted == len(recs) and lost == 0, (emitted, lost, len(recs))
    suppressed = sum(out1[k] - out0[k] for k in ("cap_suppressed", "flow_suppressed"))
    assert emitted + suppressed == FLOOD  # every denied datagram was either recorded or capped
    # A generous bound: the agent does far less than one core per second.
    assert (cpu1 - cpu0) / elapsed < 1.5, (cpu1 - cpu0, elapsed)


def test_observe_bad_filters_exit_2(node: tuple[Running, str, str]) -> None:
    agent, _, _ = node
    r = agent.ctl("observe", "--verdict", "bogus")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = agent.ctl("observe", "--pod", "prod/nope")
    assert r.returncode == 2 and "prod/nope" in r.stderr, r.stderr
    r = agent.ctl("observe", "--network", "prod/nonet")
    assert r.returncode == 2 and "prod/nonet" in r.stderr, r.stderr
    r = agent.ctl("observe", "--since", "soon")
    assert r.returncode == 2 and "duration" in r.stderr
    r = agent.ctl("observe", "--pod", "justaname")
    assert r.returncode == 2 and "namespace/name" in r.stderr
