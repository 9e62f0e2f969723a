#!/usr/bin/env python3
"""Policy update latency: manifest written → new tables switched in the kernel.

The agent's own pieces in one process: DirectorySource (polled as often as the agent polls it),
PolicyEnforcer (engine + lowering), PolicyDatapath (bcc, pinned maps) policing
a veth in a throwaway netns. Timed until the datapath's generation for the
interface moves, i.e. the one nw_cfg write that switches tables happened.

Prints, asserts nothing. Root: .venv/bin/python tests/bench/bench_policy_update.py
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import yaml  # noqa: E402

from nicwarden.agent.enforcement import PolicyEnforcer  # noqa: E402
from nicwarden.agent.host.bpf import PolicyDatapath  # noqa: E402
from nicwarden.agent.k8s.directory import DirectorySource  # noqa: E402
from nicwarden.agent.runtime import MANIFEST_POLL_S  # noqa: E402
from nicwarden.agent.store import AttachmentKey, Store  # noqa: E402
from nicwarden.bpf.layout import Direction  # noqa: E402

NS = "nwbpolicy"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def write(path: Path, docs: list[dict[str, Any]]) -> float:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    t = time.perf_counter()
    os.replace(tmp, path)
    return t


def policy(cidrs: list[str], peer_label: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": "bench",
            "namespace": "prod",
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net"},
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": c}} for c in cidrs]
                    + [{"podSelector": {"matchLabels": {"app": peer_label}}}]
                }
            ],
        },
    }


def pod(name: str, app: str, ip: str) -> dict[str, Any]:
    status = [{"name": "prod/net", "interface": "net1", "ips": [ip], "mac": "02:00:00:00:00:01"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "labels": {"app": app},
            "uid": f"uid-{name}",
            "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)},
        },
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


def base(web_ip: str) -> list[dict[str, Any]]:
    nad = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "net", "namespace": "prod"},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "nicwarden"})},
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
    return [namespace, nad, pod("db", "db", "10.56.0.2"), pod("web", "web", web_ip)]


def random_cidrs(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        plen = rng.choice((24, 28, 32))
        addr = ipaddress.ip_address(rng.randrange(0x0B000000, 0xDF000000))
        out.add(str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))
    return sorted(out)


def wait_generation(dp: PolicyDatapath, iface: Any, before: int, start: float) -> float:
    deadline = start + 30
    while time.perf_counter() < deadline:
        if dp.generation(iface, Direction.INGRESS) != before:
            return time.perf_counter() - start
        time.sleep(0.002)
    raise SystemExit("no new generation within 30 s")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nicwarden-bench-policy-"))
    manifests = work / "manifests"
    manifests.mkdir()
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "add", "net1", "type", "veth", "peer", "name", "peer1")
    dp = PolicyDatapath("bench-update")
    store = Store.open(work / "state")
    try:
        dp.load()
        store.put_attachment(
            AttachmentKey("c-db", "net1", "net"),
            netns=f"/var/run/netns/{NS}",
            device=None,
            kind="chained",
            pod_namespace="prod",
            pod_name="db",
            pod_uid="uid-db",
            original={},
            config={},
            state="ready",
            result={
                "interfaces": [{"name": "net1", "sandbox": f"/var/run/netns/{NS}"}],
                "ips": [{"address": "10.56.0.2/24", "interface": 0}],
            },
        )
        write(manifests / "base.yaml", base("10.56.0.3"))
        enforcer = PolicyEnforcer(store, dp, DirectorySource(manifests, MANIFEST_POLL_S))
        enforcer.start()
        while not enforcer.primed:
            time.sleep(0.01)
        print(
            "manifest written → new generation switched in the kernel (the directory"
            f" source polls every {MANIFEST_POLL_S} s, as the agent's does):"
        )
        iface = None
        for n in (10, 10_000, 10, 10_000):
            cidrs = random_cidrs(n, seed=n + len(str(iface)))
            before = dp.generation(iface, Direction.INGRESS) if iface is not None else 0
            start = write(manifests / "policy.yaml", [policy(cidrs)])
            if iface is None:
                while not dp.interfaces():
                    time.sleep(0.002)
                iface = dp.interfaces()[0]
                took = time.perf_counter() - start
            else:
                took = wait_generation(dp, iface, before, start)
            print(f"  {n:6d} CIDRs: {took * 1e3:8.1f} ms")
        for label, n in (("10,000 CIDRs", 10_000), ("10 CIDRs", 10)):
            before = dp.generation(iface, Direction.INGRESS)
            start = write(manifests / "policy.yaml", [policy(random_cidrs(n, seed=99 + n))])
            wait_generation(dp, iface, before, start)
            samples = []
            for i in range(10):  # one peer changes: web's address moves
                before = dp.generation(iface, Direction.INGRESS)
                start = write(manifests / "base.yaml", base(f"10.56.{n % 200}.{i + 10}"))
                samples.append(wait_generation(dp, iface, before, start))
            print(
                f"  one-peer change, policy with {label}: median"
                f" {statistics.median(samples) * 1e3:.1f} ms, max {max(samples) * 1e3:.1f} ms"
                f" over {len(samples)}"
            )
        enforcer.stop()
    finally:
        dp.cleanup(force=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
