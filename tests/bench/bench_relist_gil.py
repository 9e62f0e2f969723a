#!/usr/bin/env python3
"""Issue 14 backpressure, the mechanism alone: how much a relist running in
the agent's process delays a CNI-like request, with and without the policy
source standing aside for it (``policy_feed.Priority``).

One process holds what the agent holds: an ApiSource following a generated
cluster (served by bench_scale.py --serve in its own process, so the
server's JSON work never shares this interpreter lock), a PolicyFeed
applying the events to a real PolicyEngine, and a request thread. A
request has the shape of the CNI path: blocking calls (each releases the
interpreter lock and has to get it back) between bits of Python work, all
under ``priority.running()``. Requests are timed idle, then during a relist
of the pod list (N new pods, history forgotten, watches cut), in each mode:

  none   no Priority at all
  feed   the feed's worker stands aside, the reflectors do not (before)
  all    the reflectors stand aside too, between items (now)

Each mode gets a fresh server and source. Prints p50/p99 idle and during
and the p99 ratio; asserts nothing. No root needed:
    .venv/bin/python tests/bench/bench_relist_gil.py [--pods 20000] [--modes none,feed,all]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nicwarden.agent.k8s import ApiSource, load_client  # noqa: E402
from nicwarden.agent.policy import Event, PolicyEngine  # noqa: E402
from nicwarden.agent.policy_feed import (  # noqa: E402
    DEFAULT_BATCH_BUDGET_S,
    PolicyFeed,
    Priority,
)
from tests.bench.bench_scale import Api, pct  # noqa: E402
from tests.support import cluster_gen as cg  # noqa: E402

STEPS = 30  # blocking calls per request, about what an ADD makes
WORK_S = 0.0002  # Python work between them
GAP_S = 0.02  # between requests: the runtime's own work (exec, IPAM)


def request(priority: Priority | None) -> float:
    started = time.perf_counter()
    if priority is None:
        _steps()
    else:
        with priority.running():
            _steps()
    return time.perf_counter() - started


def _steps() -> None:
    for _ in range(STEPS):
        time.sleep(0.0001)  # a syscall: the lock is released and wanted back
        until = time.perf_counter() + WORK_S
        while time.perf_counter() < until:
            pass


def run_mode(mode: str, args: argparse.Namespace, tmp: Path) -> tuple[list[float], list[float]]:
    spec = cg.ClusterSpec(pods=args.pods, nads=args.nads, policies=args.policies, local_pods=0)
    api = Api(spec, tmp)
    source: Any = None
    feed: PolicyFeed | None = None
    try:
        priority = None if mode == "none" else Priority()
        engine = PolicyEngine()

        def apply(events: Sequence[Event]) -> None:
            for event in events:
                # A bad object is the engine's to log; the load is what counts here.
                with suppress(Exception):
                    engine.apply(event)

        source = ApiSource(
            load_client(api.kubeconfig),
            "bench-node",
            pause=priority.wait_idle if mode == "all" and priority is not None else None,
        )
        feed = PolicyFeed(source, priority=priority, batch_budget_s=args.batch_budget_ms / 1e3)
        feed.start_batched(apply)
        deadline = time.monotonic() + args.timeout
        while not feed.synced():
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: no initial sync in {args.timeout:.0f} s")
            time.sleep(0.1)
        idle = []
        for _ in range(args.samples):
            idle.append(request(priority))
            time.sleep(GAP_S)
        target = feed.stats().applied + spec.pods
        started = time.monotonic()
        api.call("relist", pods=spec.pods, prefix="late")
        during = []
        while feed.stats().applied < target:
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"{mode}: relist not applied in {args.timeout:.0f} s")
            during.append(request(priority))
            time.sleep(GAP_S)
        took = time.monotonic() - started
        print(
            f"  {mode:5s} idle p50 {pct(idle, 50) * 1e3:5.1f} p99 {pct(idle, 99) * 1e3:6.1f} ms"
            f" | during relist p50 {pct(during, 50) * 1e3:5.1f} p99 {pct(during, 99) * 1e3:6.1f} ms"
            f" | p99 ratio {pct(during, 99) / pct(idle, 99):5.2f}, p50 ratio"
            f" {pct(during, 50) / pct(idle, 50):5.2f} | relist {took:5.1f} s, n={len(during)}"
            + (
                f", source waited {priority.waited_s:.1f} s ({priority.passes} passes)"
                if priority is not None
                else ""
            ),
            flush=True,
        )
        return idle, during
    finally:
        if feed is not None:
            feed.stop()
        elif source is not None:
            source.stop()
        api.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=20_000)
    ap.add_argument("--nads", type=int, default=200)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200, help="idle requests")
    ap.add_argument("--modes", default="none,feed,all")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch-budget-ms", type=float, default=DEFAULT_BATCH_BUDGET_S * 1e3)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - {"none", "feed", "all"}:
        raise SystemExit(f"unknown modes {sorted(unknown)}")
    print(
        f"relist of {args.pods} new pods ({2 * args.pods} listed); a request: {STEPS} blocking"
        f" calls with {WORK_S * 1e3:.1f} ms of Python between; switch interval"
        f" {sys.getswitchinterval() * 1e3:.0f} ms",
        flush=True,
    )
    for _ in range(args.rounds):
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix="nicwarden-gil-") as tmp:
                run_mode(mode, args, Path(tmp))


if __name__ == "__main__":
    main()
