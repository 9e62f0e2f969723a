#!/usr/bin/env python3
"""`nicwardenctl policies` at cluster scale (issue 14 item 4): prints the
time of one ListPolicies page and of whole listings with a generated
cluster (100,000 pods by default) in the policy engine; asserts nothing.

    .venv/bin/python tests/bench/bench_policy_listing.py [--pods 100000]

The cluster (tests/support/cluster_gen.py) goes through a PolicyEnforcer
exactly as a source's events would, plus a few invalid policies so that
"only problems" has something to find. The agent's gRPC service runs in this
process on a unix socket; nicwardenctl is called in-process (ctl.main) with
its output thrown away. Times are wall clock on a shared machine: compare
the rows with each other, and one checkout with another (the first line
says which nicwarden was imported), not with a target.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nicwarden.agent import ctl, paging  # noqa: E402
from nicwarden.agent.api import AgentService  # noqa: E402
from nicwarden.agent.enforcement import PolicyEnforcer  # noqa: E402
from nicwarden.agent.metrics import Metrics  # noqa: E402
from nicwarden.agent.policy import Action, Event  # noqa: E402
from nicwarden.agent.runtime import AgentRuntime  # noqa: E402
from nicwarden.agent.store import Store  # noqa: E402
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb  # noqa: E402
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc  # noqa: E402
from tests.support import cluster_gen as cg  # noqa: E402

INVALID_POLICIES = 50


class _Source:
    """An object source that hands the bench's events straight through."""

    def __init__(self) -> None:
        self.sink: Callable[[Event], None] | None = None

    def start(self, sink: Callable[[Event], None]) -> None:
        self.sink = sink

    def stop(self) -> None:
        pass

    def synced(self) -> bool:
        return True

    def problems(self) -> list[Any]:
        return []


def _invalid_policy(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": f"broken-{i:03d}",
            "namespace": cg.ns_name(i),
            "annotations": {cg.POLICY_FOR: "net-0"},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Bogus"]},
    }


@contextlib.contextmanager
def _served(spec: cg.ClusterSpec) -> Iterator[tuple[str, PolicyEnforcer]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "state")
        source = _Source()
        enforcer = PolicyEnforcer(store, None, source)
        enforcer.start()
        assert source.sink is not None
        t0 = time.monotonic()
        n = 0
        for obj in cg.objects(spec):
            source.sink(Event(Action.ADD, obj))
            n += 1
        for i in range(INVALID_POLICIES):
            source.sink(Event(Action.ADD, _invalid_policy(i)))
        print(f"loaded {n + INVALID_POLICIES:,} objects in {time.monotonic() - t0:.1f} s")
        runtime = cast(AgentRuntime, SimpleNamespace(metrics=Metrics(), enforcer=enforcer))
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_AgentServicer_to_server(AgentService(runtime), server)
        sock = str(Path(tmp) / "agent.sock")
        server.add_insecure_port(f"unix:{sock}")
        server.start()
        try:
            yield sock, enforcer
        finally:
            server.stop(None)
            enforcer.stop()
            store.close()


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, max) seconds over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def _ctl(sock: str, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        code = ctl.main(["--socket", sock, "--timeout", "600", *args])
    if code != 0:
        raise SystemExit(f"nicwardenctl {' '.join(args)} exited {code}")


def _every_page(stub: pb_grpc.AgentStub) -> int:
    rows, token = 0, ""
    while True:
        resp = stub.ListPolicies(
            pb.ListPoliciesRequest(page_size=paging.MAX_PAGE_SIZE, page_token=token), timeout=600
        )
        rows += len(resp.objects) + len(resp.interfaces)
        token = resp.next_page_token
        if not token:
            return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5, help="timings per row (median, max)")
    args = ap.parse_args()
    # The invalid policies are logged once each: not part of the numbers.
    logging.disable(logging.WARNING)
    spec = cg.ClusterSpec(pods=args.pods, local_pods=0)
    filters = "problems_only" in pb.ListPoliciesRequest.DESCRIPTOR.fields_by_name
    print(f"nicwarden from {Path(ctl.__file__).parents[1]} (filters: {filters})")
    with _served(spec) as (sock, _), grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = pb_grpc.AgentStub(channel)

        def page(size: int, token: str = "") -> Any:
            return stub.ListPolicies(
                pb.ListPoliciesRequest(page_size=size, page_token=token), timeout=600
            )

        # A token for a page deep in the list, whatever kind of token it is.
        token = ""
        for _ in range(20):
            token = page(500, token).next_page_token
        rows: list[tuple[str, tuple[float, float]]] = [
            ("ListPolicies, first page of 500", _timed(lambda: page(500), args.repeat)),
            ("ListPolicies, 21st page of 500", _timed(lambda: page(500, token), args.repeat)),
            ("ListPolicies, first default page", _timed(lambda: page(0), args.repeat)),
            (
                "ListPolicies, every page (largest pages, no rendering)",
                _timed(lambda: _every_page(stub), max(1, args.repeat // 2)),
            ),
            (
                "nicwardenctl -o json policies (every row)",
                _timed(lambda: _ctl(sock, "-o", "json", "policies"), max(1, args.repeat // 2)),
            ),
            ("nicwardenctl policies (table)", _timed(lambda: _ctl(sock, "policies"), args.repeat)),
        ]
        if filters:
            rows += [
                (
                    "nicwardenctl -o json policies --problems",
                    _timed(lambda: _ctl(sock, "-o", "json", "policies", "--problems"), args.repeat),
                ),
                (
                    "nicwardenctl -o json policies --kind MultiNetworkPolicy",
                    _timed(
                        lambda: _ctl(
                            sock, "-o", "json", "policies", "--kind", "MultiNetworkPolicy"
                        ),
                        args.repeat,
                    ),
                ),
                (
                    f"nicwardenctl -o json policies -n {cg.ns_name(7)}",
                    _timed(
                        lambda: _ctl(sock, "-o", "json", "policies", "-n", cg.ns_name(7)),
                        args.repeat,
                    ),
                ),
            ]
        width = max(len(name) for name, _ in rows)
        print(f"{'what':<{width}}  {'median':>10}  {'max':>10}")
        for name, (med, worst) in rows:
            print(f"{name:<{width}}  {med * 1000:>8.1f}ms  {worst * 1000:>8.1f}ms")


if __name__ == "__main__":
    main()
