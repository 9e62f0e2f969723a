"""Benchmark: the cost of dropped-flow records to allowed traffic.

Run as root:  .venv/bin/python tests/bench/bench_drop_events.py [--seconds 5] [--rounds 2]

The nicwarden BPF datapath with the 10,000-CIDR ingress policy of
``bench_policy_datapath.py`` (same namespaces, nginx, wrk). While wrk measures
new connections/s from the allowed client address, a second client address
(not allowed) floods the server with UDP datagrams to ever-changing ports:
every one is a new denied flow. Runs alternate between drop events off and
on (on: the kernel's per-flow dedup and global cap as the agent configures
them by default, and a ring reader draining records, as the agent does).
Prints conn/s per run, the medians and the ratio on/off (target >= 0.95).
Asserts nothing: the machine is a noisy shared VM; compare ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.host.bpf_events import DropRecord, RingThread
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, EventStat
from tests.bench.bench_policy_datapath import (
    N_CIDRS,
    SRV,
    Env,
    bpf_table,
    measure_conns,
    namespaces,
    random_cidrs,
    servers,
    sh,
)

FLOODER = "10.88.0.9"  # a second client address, outside every allowed CIDR

_FLOOD = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{FLOODER}", 0))
end = time.monotonic() + float(__import__("sys").argv[1])
n = 0
while time.monotonic() < end:
    for _ in range(1000):
        n += 1
        s.sendto(b"x", ("{SRV}", 1 + n % 65535))
print(n)
"""


def run_once(env: Env, seconds: int) -> tuple[float, int]:
    """wrk's conn/s while the flood runs; and how many datagrams it sent."""
    flood = subprocess.Popen(
        ["ip", "netns", "exec", env.client, sys.executable, "-c", _FLOOD, str(seconds + 2)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # the flood is running before wrk starts
        conns = measure_conns(env, seconds)
    finally:
        out, _ = flood.communicate(timeout=seconds + 30)
    return conns, int(out.strip() or 0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=5, help="length of each measurement")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/setup installs it)")

    dp = PolicyDatapath(f"bench-ev-{os.getpid()}")
    dp.load()
    received = 0

    def sink(rec: DropRecord) -> None:
        nonlocal received
        received += 1

    ring = RingThread(dp.events_fd(), sink)
    ring.start()
    results: dict[bool, list[float]] = {False: [], True: []}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="nwbench-") as tmp,
            namespaces() as env,
            servers(env, Path(tmp)),
        ):
            sh("ip", "-n", env.client, "addr", "add", f"{FLOODER}/24", "dev", env.cli_if)
            key = dp.attach(env.server, env.srv_if)
            try:
                dp.apply(key, Direction.INGRESS, bpf_table(random_cidrs(N_CIDRS)))
                for rnd in range(args.rounds):
                    for on in (False, True):
                        dp.set_drop_events(on, L.EVENT_FLOW_INTERVAL_MS, L.EVENT_MAX_PER_SECOND)
                        before = dp.drop_event_stats()
                        got0 = received
                        conns, sent = run_once(env, args.seconds)
                        after = dp.drop_event_stats()
                        results[on].append(conns)
                        emitted = after[EventStat.EMITTED] - before[EventStat.EMITTED]
                        capped = after[EventStat.CAP_SUPPRESSED] - before[EventStat.CAP_SUPPRESSED]
                        full = after[EventStat.RING_FULL] - before[EventStat.RING_FULL]
                        print(
                            f"round {rnd + 1} events {'on ' if on else 'off'}: "
                            f"{conns:8.0f} conn/s; flood {sent} datagrams "
                            f"({sent / (args.seconds + 2):.0f}/s); records emitted {emitted}, "
                            f"capped {capped}, ring full {full}, read {received - got0}",
                            flush=True,
                        )
            finally:
                dp.detach(key)
    finally:
        ring.stop()
        dp.cleanup()

    off, on = statistics.median(results[False]), statistics.median(results[True])
    print()
    print(f"{N_CIDRS} source CIDRs, {args.seconds} s per run, {args.rounds} rounds")
    print(f"median conn/s  events off {off:8.0f}   events on {on:8.0f}")
    print(f"ratio on/off: {on / off:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
