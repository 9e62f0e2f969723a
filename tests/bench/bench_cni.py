#!/usr/bin/env python3
"""CNI ADD+DEL latency: nicwarden (installed shim → agent, simulated VF) side
by side with the reference host-device plugin moving an identical veth, both
with the same host-local IPAM, in one run. Then 32 pods' ADD+DEL in parallel.

Prints numbers and ratios; asserts nothing. Run as root:
    .venv/bin/python tests/bench/bench_cni.py [--iterations 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nicwarden.cni.install import install_shim  # noqa: E402
from tests.support.agent_proc import start_agent, stop_agent  # noqa: E402
from tests.support.cni_runtime import CNI_PATH, invoke, netns_path  # noqa: E402


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ipam(tmp: Path, subnet: str) -> dict[str, Any]:
    return {"type": "host-local", "subnet": subnet, "dataDir": str(tmp / "ipam")}


def cycle(plugin: str, conf: dict[str, Any], ns: str, cid: str) -> tuple[float, float]:
    """(ADD seconds, DEL seconds)."""
    kw = dict(container=cid, netns=netns_path(ns), ifname="net1")
    t0 = time.perf_counter()
    add = invoke(plugin, "ADD", conf, **kw)
    t1 = time.perf_counter()
    dele = invoke(plugin, "DEL", conf, **kw)
    t2 = time.perf_counter()
    if add.code or dele.code:
        raise SystemExit(f"{plugin} failed: {add.stdout} {dele.stdout}")
    return t1 - t0, t2 - t1


def cycle_version(plugin: str) -> float:
    t0 = time.perf_counter()
    invoke(plugin, "VERSION", {"cniVersion": "1.0.0"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nicwarden-bench-"))
    # The shim as deployed: copied into a CNI bin dir, run by the host python.
    deployed = str(install_shim(tmp / "cni-bin"))
    agent = start_agent(tmp, "--no-metrics", "--log-level", "warning", spec="2x16")
    ns = "nwbench"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "nwbhd0", "type", "veth", "peer", "name", "nwbhd0p")
    sh("ip", "link", "set", "nwbhd0p", "up")
    try:
        ours = {
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "nicwarden",
            "agentSocket": str(agent.cni_sock),
            "deviceID": "0000:18:01.0",
            "ipam": ipam(tmp, "10.91.0.0/16"),
        }
        ref = {
            "cniVersion": "1.0.0",
            "name": "benchref",
            "type": "host-device",
            "device": "nwbhd0",
            "ipam": ipam(tmp, "10.92.0.0/16"),
        }
        host_device = f"{CNI_PATH}/host-device"
        for _ in range(3):  # warm caches on both sides
            cycle(deployed, ours, ns, "warm")
            cycle(host_device, ref, ns, "warm")
        c_ours, c_ref = [], []
        for i in range(args.iterations):  # interleaved so drift hits both alike
            c_ours.append(cycle(deployed, ours, ns, f"o{i}"))
            # Identical devices: simulated VFs are up (in service) when ADD
            # takes them, and moving an up device costs the kernel a close.
            sh("ip", "link", "set", "nwbhd0", "up")
            c_ref.append(cycle(host_device, ref, ns, f"r{i}"))
        t_ours, t_ref = [a + d for a, d in c_ours], [a + d for a, d in c_ref]
        print(f"ADD+DEL latency over {args.iterations} cycles (ms):")
        for name, cyc in (("nicwarden (shim→agent)", c_ours), ("host-device (reference)", c_ref)):
            vals = [a + d for a, d in cyc]
            print(
                f"  {name:26s} p50 {pct(vals, 50) * 1e3:7.1f}  p99 {pct(vals, 99) * 1e3:7.1f}"
                f"  mean {statistics.mean(vals) * 1e3:7.1f}"
                f"  (ADD p50 {pct([a for a, _ in cyc], 50) * 1e3:.1f},"
                f" DEL p50 {pct([d for _, d in cyc], 50) * 1e3:.1f})"
            )
        shim_start = [cycle_version(deployed) for _ in range(20)]
        ref_start = [cycle_version(host_device) for _ in range(20)]
        print(
            f"  process start (VERSION) p50: shim {pct(shim_start, 50) * 1e3:.1f} ms,"
            f" host-device {pct(ref_start, 50) * 1e3:.1f} ms (x2 per ADD+DEL)"
        )
        print(
            f"  ratio nicwarden/host-device  p50 {pct(t_ours, 50) / pct(t_ref, 50):.2f}"
            f"  p99 {pct(t_ours, 99) / pct(t_ref, 99):.2f}  (target <= 1.5)"
        )

        pods = [f"nwbp{i}" for i in range(32)]
        for p in pods:
            sh("ip", "netns", "add", p)
        confs = [
            dict(ours, deviceID=f"0000:{0x18 + i // 16:02x}:{1 + (i % 16) // 8:02x}.{i % 8}")
            for i in range(32)
        ]
        errors: list[str] = []

        def run_all(command: str) -> float:
            def one(i: int) -> None:
                r = invoke(
                    deployed,
                    command,
                    confs[i],
                    container=f"p{i}",
                    netns=netns_path(pods[i]),
                    ifname="net1",
                )
                if r.code:
                    errors.append(r.stdout)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - t0

        t_add, t_del = run_all("ADD"), run_all("DEL")
        print(
            f"32 concurrent pods: ADD all {t_add:.2f} s, DEL all {t_del:.2f} s,"
            f" {32 / (t_add + t_del):.1f} pod ADD+DEL per second, errors {len(errors)}"
        )
        for p in pods:
            sh("ip", "netns", "del", p)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", "nwbhd0"], capture_output=True)
        stop_agent(agent)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
