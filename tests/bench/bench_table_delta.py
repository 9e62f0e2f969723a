"""One-peer change in a 10,000-CIDR policy: in place vs a generation switch.

Runs as root. Builds a policy with 10,000 ipBlock CIDRs and a pod peer, lets
the real engine compile it, loads it on a veth in a throwaway netns, then
times (p50/p99 over --rounds) the pod peer leaving and coming back, both as
the agent does it now (in place) and forced through a generation switch, in
the same run. Also times the 10,000-CIDR policy from manifest to kernel.

    .venv/bin/python -m tests.bench.bench_table_delta [--rounds 40]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import subprocess
import time
import uuid
from typing import Any

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.policy import Action, Event, PolicedInterface, PolicyEngine
from nicwarden.bpf.layout import Direction
from tests.support.policy_objects import pod, policy


def _policy(cidrs: int) -> dict[str, Any]:
    blocks = [
        {"ipBlock": {"cidr": f"{ipaddress.IPv4Address((11 << 24) + i * 256)}/24"}}
        for i in range(cidrs)
    ]
    return policy(
        "big",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [*blocks, {"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": 5432}],
                }
            ],
        },
    )


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--cidrs", type=int, default=10_000)
    args = ap.parse_args()

    ns = f"nwb-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    dp = PolicyDatapath(f"bench-{uuid.uuid4().hex[:6]}")
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "net1", "type", "veth", "peer", "name", "p1"],
            check=True,
        )
        dp.load()
        iface = dp.attach(f"/var/run/netns/{ns}", "net1")
        target = PolicedInterface(
            "prod", "db", "net1", "prod/net", (ipaddress.ip_address("10.56.0.2"),), "u-db"
        )
        engine = PolicyEngine()
        for obj in (
            {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "prod"}},
            pod("db", {"app": "db"}, "10.56.0.2"),
        ):
            engine.apply(Event(Action.ADD, obj))
        engine.set_targets([target])

        t0 = time.perf_counter()
        engine.apply(Event(Action.ADD, _policy(args.cidrs)))
        lowered = engine.lowered(target.key)
        assert lowered is not None
        dp.apply(iface, Direction.INGRESS, lowered.ingress)
        manifest_s = time.perf_counter() - t0
        print(f"{args.cidrs:,}-CIDR policy, manifest to kernel: {manifest_s * 1000:.0f} ms")
        print(f"  peer entries: {len(lowered.ingress.peers):,}")

        peer = pod("client", {"role": "client"}, "10.57.0.9")
        results: dict[str, dict[str, list[float]]] = {}
        for mode in ("in place", "switch"):
            engine_ms: list[float] = []
            kernel_ms: list[float] = []
            for r in range(args.rounds):
                action = Action.DELETE if r % 2 else Action.ADD
                t0 = time.perf_counter()
                engine.apply(Event(action, peer))
                lowered = engine.lowered(target.key)
                assert lowered is not None
                t1 = time.perf_counter()
                if mode == "switch":
                    dp.apply(iface, Direction.INGRESS, _Copy(lowered.ingress, r))
                else:
                    dp.apply(iface, Direction.INGRESS, lowered.ingress)
                t2 = time.perf_counter()
                engine_ms.append((t1 - t0) * 1000)
                kernel_ms.append((t2 - t1) * 1000)
            results[mode] = {"engine": engine_ms, "kernel": kernel_ms}
        print(f"one-peer change, {args.rounds} rounds (ms)      p50     p99")
        for mode, r in results.items():
            for part, xs in r.items():
                print(f"  {mode:9} {part:7}              {pct(xs, 0.5):7.2f} {pct(xs, 0.99):7.2f}")
            total = [a + b for a, b in zip(r["engine"], r["kernel"], strict=True)]
            print(f"  {mode:9} total                {pct(total, 0.5):7.2f} {pct(total, 0.99):7.2f}")
        ratio = statistics.median(results["switch"]["kernel"]) / max(
            statistics.median(results["in place"]["kernel"]), 1e-6
        )
        print(f"kernel write: switch / in place = {ratio:.0f}x")
        print(f"writes: {dp.write_counts()}")
        dp.detach(iface)
    finally:
        dp.cleanup(force=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


class _Copy:
    """The same table under a different port set every round, so the
    datapath has to switch generations (the pre-delta behaviour)."""

    def __init__(self, table: Any, r: int) -> None:
        self.isolated = table.isolated
        self.peers = table.peers
        self.ports = {**table.ports, (17, 1000 + r, 16): 0}
        self.any_proto_mask = table.any_proto_mask


if __name__ == "__main__":
    main()
