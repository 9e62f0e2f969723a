"""Issue 14: a relist during CNI traffic, every ADD/DEL succeeds.

The agent follows a generated cluster from the API-server fixture in
cluster mode. The fixture loads thousands more pods without telling the
watches, forgets its history and cuts the watches: the agent's resumed pod
watch gets 410 Gone and relists, and every new pod reaches the policy
engine through the feed. Meanwhile the CNI shim runs ADD/DEL cycles against
the agent exactly as a runtime would. Every one must succeed. The ADD+DEL
latency during the relist against idle is printed, not asserted (wall time
on a shared machine is no oracle).

Also checked: readiness (``nicwardenctl health``) holds back until the
initial state is applied, and the lag and backlog metrics are served.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import SHIM, Running, cleanup_node, start_agent, stop_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.k8s_apiserver import FakeApiServer

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.timeout(900)]

STATUS = "k8s.v1.cni.cncf.io/network-status"
PODS = 20_000
NAMESPACES = PODS // 20
POLICIES = 200
IDLE_SAMPLES = 30
CNI_HIST = "nicwarden_cni_request_duration_seconds"


def namespaces() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}"}}
        for i in range(NAMESPACES)
    ]


def nads() -> list[dict[str, Any]]:
    config = json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "nicwarden"})
    return [
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "net", "namespace": f"ns-{i}"},
            "spec": {"config": config},
        }
        for i in range(NAMESPACES)
    ]


def pods(prefix: str, offset: int) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + PODS):
        ns = f"ns-{i % NAMESPACES}"
        status = [
            {
                "name": f"{ns}/net",
                "interface": "net1",
                "ips": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"],
            }
        ]
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{prefix}-{i:06d}",
                    "namespace": ns,
                    "labels": {"app": f"app-{i % 50}"},
                    "annotations": {STATUS: json.dumps(status)},
                },
                "spec": {"nodeName": f"node-{i % 500}"},
                "status": {"phase": "Running"},
            }
        )
    return out


def policies() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "k8s.cni.cncf.io/v1beta1",
            "kind": "MultiNetworkPolicy",
            "metadata": {
                "name": f"allow-{i}",
                "namespace": f"ns-{i % NAMESPACES}",
                "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net"},
            },
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app-{i % 50}"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app": f"app-{(i + 1) % 50}"}},
                            }
                        ]
                    }
                ],
            },
        }
        for i in range(POLICIES)
    ]


def scrape(agent: Running, prefix: str = "nicwarden_source_") -> dict[str, float]:
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def agent_side(agent: Running) -> tuple[float, float]:
    """Seconds the agent's CNI handler spent, and requests, so far."""
    m = scrape(agent, "nicwarden_cni_request_duration_seconds_")
    total = sum(v for k, v in m.items() if k.startswith(CNI_HIST + "_sum"))
    count = sum(v for k, v in m.items() if k.startswith(CNI_HIST + "_count"))
    return total, count


def mean_ms(before: tuple[float, float], after: tuple[float, float]) -> str:
    requests = after[1] - before[1]
    return f"{2000 * (after[0] - before[0]) / requests:.0f}" if requests else "-"


def p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def slowest(samples: list[float]) -> str:
    return " ".join(f"{s * 1000:.0f}" for s in sorted(samples)[-5:])


@pytest.fixture
def cluster_agent(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Running]]:
    api = FakeApiServer().start()
    agent: Running | None = None
    try:
        api.add_many([*namespaces(), *nads(), *pods("p", 0), *policies()])
        api.compact()
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "kubernetes": {"watch": True, "kubeconfig": str(kubeconfig), "events": False},
                    "kubeletDir": str(tmp_path / "kubelet"),
                    "deviceInfoDir": str(tmp_path / "devinfo"),
                }
            )
        )
        agent = start_agent(tmp_path, "--config", str(cfg), spec="1x8", timeout=120)
        yield api, agent
    finally:
        if agent is not None:
            stop_agent(agent)
            cleanup_node(agent.prefix)
        api.stop()


class Cycler:
    """ADD then DEL of one VF, again and again, each time into a new pod
    netns as a runtime would: reusing one would keep the host-model rules
    of every address IPAM handed out in it, and each ADD would read more of
    them than the one before, a drift that has nothing to do with a relist."""

    def __init__(self, agent: Running, tmp: Path, netns: Callable[[], str]) -> None:
        self.agent, self.tmp, self.netns = agent, tmp, netns
        self.count = 0
        self.failures: list[str] = []

    def conf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "net",
            "type": "nicwarden",
            "agentSocket": str(self.agent.cni_sock),
            "deviceID": "0000:18:01.0",
            "ipam": {
                "type": "host-local",
                "subnet": "10.99.0.0/24",
                "dataDir": str(self.tmp / "ipam"),
            },
        }

    def cycle(self) -> float:
        self.count += 1
        ns = self.netns()
        kw = dict(
            container=f"relist-{self.count}",
            netns=netns_path(ns),
            ifname="net1",
            pod=f"local-{self.count}",
            namespace="ns-0",
        )
        started = time.perf_counter()
        for command in ("ADD", "DEL"):
            out = invoke(SHIM, command, self.conf(), **kw)
            if out.code != 0:
                self.failures.append(
                    f"{command} #{self.count}: {out.code} {out.stdout} {out.stderr}"
                )
        took = time.perf_counter() - started
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # the pod is gone
        return took


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_relist_during_cni_traffic_every_add_del_succeeds(
    cluster_agent: tuple[FakeApiServer, Running], tmp_path: Path, netns: Callable[[], str]
) -> None:
    api, agent = cluster_agent
    # Readiness follows the policy source: not ready until the initial
    # state is applied, then ready.
    first = agent.ctl("health")
    print(f"\nhealth at start (exit {first.returncode}):\n{first.stdout}")
    wait(lambda: agent.ctl("health").returncode == 0, 180, "the agent to report ready")
    health = agent.ctl("health").stdout
    (row,) = [line for line in health.splitlines() if line.startswith("policy-source")]
    assert "ok" in row.split() and "synced" in row, health
    before = scrape(agent)
    assert before["nicwarden_source_synced"] == 1.0
    assert before["nicwarden_source_events_applied_total"] >= PODS + NAMESPACES + POLICIES

    # The backlog is watched through the metrics endpoint all along, idle
    # included, so both latencies pay for the same scrapes.
    target = float("inf")
    max_lag = max_queued = 0.0
    done = threading.Event()
    stop = threading.Event()

    def watch_backlog() -> None:
        nonlocal max_lag, max_queued
        while not stop.is_set():
            m = scrape(agent)
            max_lag = max(max_lag, m["nicwarden_source_lag_seconds"])
            max_queued = max(max_queued, m["nicwarden_source_events_queued"])
            if m["nicwarden_source_events_applied_total"] >= target:
                done.set()
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_backlog, daemon=True)
    watcher.start()
    cycler = Cycler(agent, tmp_path, netns)
    try:
        served = [agent_side(agent)]
        idle = [cycler.cycle() for _ in range(IDLE_SAMPLES)]
        served.append(agent_side(agent))

        # The relist: thousands of pods the watches never hear of, history
        # forgotten, watches cut. The resumed pod watch gets 410 and relists.
        lists_before = len(api.requests_for("Pod", watch=False))
        target = before["nicwarden_source_events_applied_total"] + PODS
        api.add_many(pods("late", PODS))
        api.compact()
        api.drop_watches()
        during: list[float] = []
        started = time.monotonic()
        while not done.is_set():
            during.append(cycler.cycle())
            assert time.monotonic() - started < 240, "the relist was not applied in time"
        relist_s = time.monotonic() - started
        served.append(agent_side(agent))
        during += [cycler.cycle() for _ in range(3)]  # and right after it
        # Idle again, now with the larger cluster: what the relist's
        # contention costs, apart from what the cluster's size costs.
        wait(lambda: scrape(agent)["nicwarden_source_events_queued"] == 0, 60, "an empty queue")
        served.append(agent_side(agent))
        again = [cycler.cycle() for _ in range(IDLE_SAMPLES)]
        served.append(agent_side(agent))
    finally:
        stop.set()
        watcher.join(10)

    assert cycler.failures == []
    assert len(api.requests_for("Pod", watch=False)) > lists_before, "no relist happened"
    after = scrape(agent)
    assert after["nicwarden_source_events_applied_total"] >= target
    assert agent.ctl("health").returncode == 0
    atts = agent.ctl_json("attachments").get("attachments", [])
    assert atts == [], atts
    print(
        f"relist of {PODS} new pods ({2 * PODS} listed) applied in {relist_s:.1f} s;"
        f" max lag {max_lag:.2f} s, max queued {max_queued:.0f},"
        f" source blocked {after['nicwarden_source_blocked_seconds_total']:.2f} s\n"
        f"CNI ADD+DEL: idle p99 {p99(idle) * 1000:.0f} ms (n={len(idle)}),"
        f" during relist p99 {p99(during) * 1000:.0f} ms (n={len(during)}),"
        f" ratio {p99(during) / p99(idle):.2f}\n"
        f"  p50 idle {p50(idle) * 1000:.0f} ms, during {p50(during) * 1000:.0f} ms;"
        f" slowest idle {slowest(idle)} ms, during {slowest(during)} ms\n"
        f"  idle after the relist: p99 {p99(again) * 1000:.0f} ms, p50 {p50(again) * 1000:.0f} ms\n"
        f"  in the agent (request handler), mean per ADD+DEL: idle {mean_ms(*served[0:2])} ms,"
        f" during {mean_ms(*served[1:3])} ms, idle after {mean_ms(*served[3:5])} ms"
    )
