"""Policy verdicts on the metrics endpoint: the installed agent on a
simulated node, two pods attached through the shim, a deny-all ingress
policy, and SYNs from one pod to the other counted per pod, network and
direction."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_proc import SHIM, Running, cleanup_node, kill_agent, start_agent
from tests.support.cni_runtime import invoke, netns_path
from tests.support.traffic import in_netns

pytestmark = [pytest.mark.root, pytest.mark.e2e]

SYNS = 100


def scrape(agent: Running) -> list[tuple[str, dict[str, str], float]]:
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def write(manifests: Path, name: str, *docs: dict[str, Any]) -> None:
    tmp = manifests / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, manifests / f"{name}.yaml")


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": labels, "uid": f"uid-{name}"},
        "spec": {"nodeName": "sim", "containers": [{"name": "c", "image": "x"}]},
    }


def attach(agent: Running, tmp: Path, name: str, vf: str, ns: str) -> str:
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": str(agent.cni_sock),
        "deviceID": vf,
        "ipam": {"type": "host-local", "subnet": "10.58.0.0/24", "dataDir": str(tmp / "ipam")},
    }
    out = invoke(
        SHIM,
        "ADD",
        conf,
        container=f"c-{name}",
        netns=netns_path(ns),
        ifname="net1",
        pod=name,
        namespace="prod",
    )
    assert out.code == 0, out.stdout
    return str(out.json["ips"][0]["address"].split("/")[0])


def send_syns(ns: str, dst: str, count: int) -> None:
    """Exactly one SYN per connect: a non-blocking connect closed before
    its retransmission timer fires sends nothing more."""

    def run() -> None:
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((dst, 20000 + i))
            assert err == errno.EINPROGRESS, err
            s.close()

    in_netns(ns, run)


def drops(samples: list[tuple[str, dict[str, str], float]]) -> float:
    found = [
        v
        for n, lab, v in samples
        if n == "nicwarden_policy_packets_total"
        and (lab["namespace"], lab["pod"], lab["network"]) == ("prod", "db", "prod/sriov-net")
        and (lab["direction"], lab["verdict"]) == ("ingress", "drop_policy")
    ]
    return found[0] if found else -1.0


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)


def test_deny_all_drops_are_counted_per_pod_network_and_direction(
    tmp_path: Path, netns: Callable[[], str]
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"manifestsDir": str(manifests)}))
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
        before = drops(scrape(agent))
        send_syns(client_ns, db_ip, SYNS)
        wait_for(lambda: drops(scrape(agent)) >= before + SYNS)
        after = scrape(agent)
        assert drops(after) == before + SYNS
        assert (
            "nicwarden_scrape_collector_success",
            {"collector": "policy_verdicts"},
            1.0,
        ) in after
        # The client's own ingress saw no drops of these (they went one way).
        client_in = [
            v
            for n, lab, v in after
            if n == "nicwarden_policy_packets_total"
            and lab["pod"] == "client"
            and lab["verdict"] == "drop_policy"
        ]
        assert all(v == 0 for v in client_in)
        # CPU by thread role (in clock ticks: a light thread may show 0 yet).
        cpu = {lab["thread"]: v for n, lab, v in after if n == "nicwarden_thread_cpu_seconds_total"}
        assert {"MainThread", "policy-feed", "k8s-directory", "inventory"} <= set(cpu), cpu
        assert sum(cpu.values()) > 0 and all(v >= 0 for v in cpu.values())
        assert ("nicwarden_scrape_collector_success", {"collector": "threads"}, 1.0) in after
    finally:
        kill_agent(agent)
        cleanup_node(agent.prefix)
