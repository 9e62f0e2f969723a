"""Benchmark: policy datapaths between two network namespaces over a veth.

Run as root:  .venv/bin/python tests/bench/bench_policy_datapath.py [--seconds 5]

For each datapath on the server's side, with 10,000 random /24-/32 source
CIDRs plus one rule allowing the client (placed last, the worst case for a
linear list), it measures
  * new connections/s: wrk against nginx with ``Connection: close`` (every
    request is a TCP handshake + teardown, so per-new-flow cost dominates);
  * bulk TCP Gb/s: one iperf3 stream (per-packet cost of established flows).
Datapaths: none; nicwarden BPF (LPM tries + flow table); nicwarden BPF on
an interface no longer isolated whose filters linger; iptables linear
rules with a conntrack ESTABLISHED shortcut first; the same without it (bulk
packets walk the list too); nftables with an interval set (+ ct shortcut).
Each scenario gets fresh namespaces. Prints numbers and ratios to "none";
asserts nothing. The machine is a noisy 2-vCPU VM: compare ratios.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.bpf.layout import Direction, LoweredDirection, Verdict

SRV, CLI = "10.88.0.1", "10.88.0.2"
HTTP_PORT, IPERF_PORT = 8080, 5201
N_CIDRS = 10_000


def sh(*cmd: str, check: bool = True, inp: str | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, input=inp)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def random_cidrs(n: int, seed: int = 1) -> list[ipaddress.IPv4Network]:
    """Random /24-/32 networks outside 10.0.0.0/8 (so none covers the client)."""
    rng = random.Random(seed)
    out: set[ipaddress.IPv4Network] = set()
    while len(out) < n:
        plen = rng.randint(24, 32)
        addr = rng.getrandbits(32)
        if addr >> 24 in (0, 10, 127) or addr >> 28 >= 14:
            continue
        out.add(ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen)))
    return sorted(out)


@dataclass
class Env:
    server: str
    client: str
    srv_if: str = "bsrv0"
    cli_if: str = "bcli0"


@contextmanager
def namespaces() -> Iterator[Env]:
    tag = uuid.uuid4().hex[:6]
    env = Env(f"nwb-s-{tag}", f"nwb-c-{tag}")
    try:
        for ns in (env.server, env.client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            env.cli_if,
            "netns",
            env.client,
            "type",
            "veth",
            "peer",
            "name",
            env.srv_if,
            "netns",
            env.server,
        )
        sh("ip", "-n", env.server, "addr", "add", f"{SRV}/24", "dev", env.srv_if)
        sh("ip", "-n", env.client, "addr", "add", f"{CLI}/24", "dev", env.cli_if)
        for ns, dev in ((env.server, env.srv_if), (env.client, env.cli_if)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # wrk opens ~100k connections per run: widen the client's port range
        # and let it reuse TIME_WAIT ports (per-netns sysctls).
        sh(
            "ip",
            "netns",
            "exec",
            env.client,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        )
        yield env
    finally:
        for ns in (env.server, env.client):
            sh("ip", "netns", "del", ns, check=False)


@contextmanager
def servers(env: Env, workdir: Path) -> Iterator[None]:
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen {SRV}:{HTTP_PORT} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", env.server, "nginx", "-c", str(conf), "-p", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            ["ip", "netns", "exec", env.server, "iperf3", "-s", "-B", SRV, "-p", str(IPERF_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        deadline = time.monotonic() + 5
        while True:  # wait until both listen
            out = sh("ip", "netns", "exec", env.server, "ss", "-Htln")
            if f":{HTTP_PORT}" in out and f":{IPERF_PORT}" in out:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx/iperf3 did not start")
            time.sleep(0.05)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def measure_conns(env: Env, seconds: int) -> float:
    out = sh(
        "ip",
        "netns",
        "exec",
        env.client,
        "wrk",
        "-t2",
        "-c32",
        f"-d{seconds}s",
        "-H",
        "Connection: close",
        f"http://{SRV}:{HTTP_PORT}/",
    )
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"    (wrk socket errors: {errors.group(1)})", file=sys.stderr)
    return float(m.group(1))


def measure_bulk(env: Env, seconds: int) -> float:
    out = sh(
        "ip",
        "netns",
        "exec",
        env.client,
        "iperf3",
        "-c",
        SRV,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-J",
    )
    data = json.loads(out)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


# -- policies ---------------------------------------------------------------------------


def iptables_rules(cidrs: list[ipaddress.IPv4Network], conntrack: bool) -> str:
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
    ]
    if conntrack:
        lines.append("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    for c in cidrs:
        lines.append(f"-A INPUT -s {c} -p tcp -m multiport --dports 80,443 -j ACCEPT")
    lines.append(
        f"-A INPUT -s {CLI}/32 -p tcp -m multiport --dports {HTTP_PORT},{IPERF_PORT} -j ACCEPT"
    )
    lines.append("-A INPUT -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_ruleset(cidrs: list[ipaddress.IPv4Network]) -> str:
    elems = ",\n".join(str(c) for c in cidrs)
    return f"""
table ip nwbench {{
    set other {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {elems} }} }}
    set clients {{ type ipv4_addr; flags interval; elements = {{ {CLI}/32 }} }}
    chain input {{
        type filter hook input priority 0; policy drop;
        iif lo accept
        ct state established,related accept
        ip saddr @other tcp dport {{ 80, 443 }} accept
        ip saddr @clients tcp dport {{ {HTTP_PORT}, {IPERF_PORT} }} accept
    }}
}}
"""


def bpf_table(cidrs: list[ipaddress.IPv4Network]) -> LoweredDirection:
    # class 0: the random CIDRs on 80/443; class 1: the client on the bench ports
    peers = {(4, c.network_address.packed, c.prefixlen): 0b01 for c in cidrs}
    peers[(4, ipaddress.IPv4Address(CLI).packed, 32)] = 0b10
    ports = {
        (6, 80, 16): 0b01,
        (6, 443, 16): 0b01,
        (6, HTTP_PORT, 16): 0b10,
        (6, IPERF_PORT, 16): 0b10,
    }
    return LoweredDirection(True, peers, ports, 0)


Setup = Callable[[Env], Callable[[], None]]  # install a policy, return its teardown


def setup_none(env: Env) -> Callable[[], None]:
    return lambda: None


def setup_iptables(conntrack: bool, cidrs: list[ipaddress.IPv4Network]) -> Setup:
    def setup(env: Env) -> Callable[[], None]:
        sh(
            "ip",
            "netns",
            "exec",
            env.server,
            "iptables-restore",
            inp=iptables_rules(cidrs, conntrack),
        )

        def teardown() -> None:
            sh("ip", "netns", "exec", env.server, "iptables", "-F", check=False)

        return teardown

    return setup


def setup_nft(cidrs: list[ipaddress.IPv4Network]) -> Setup:
    def setup(env: Env) -> Callable[[], None]:
        sh("ip", "netns", "exec", env.server, "nft", "-f", "-", inp=nft_ruleset(cidrs))

        def teardown() -> None:
            sh("ip", "netns", "exec", env.server, "nft", "flush", "ruleset", check=False)

        return teardown

    return setup


def setup_bpf(dp: PolicyDatapath, cidrs: list[ipaddress.IPv4Network]) -> Setup:
    def setup(env: Env) -> Callable[[], None]:
        key = dp.attach(env.server, env.srv_if)
        t0 = time.monotonic()
        dp.apply(key, Direction.INGRESS, bpf_table(cidrs))
        print(f"    (bpf: {len(cidrs) + 1} peer entries applied in {time.monotonic() - t0:.2f} s)")

        def teardown() -> None:
            c = dp.counters(key)
            allowed = c[(Direction.INGRESS, Verdict.PASS_POLICY)]
            print(
                f"    (bpf: ingress new flows allowed {allowed.packets}, flows in table "
                f"{dp.flow_count(key)})"
            )
            dp.detach(key)

        return teardown

    return setup


def setup_lingering(dp: PolicyDatapath, cidrs: list[ipaddress.IPv4Network]) -> Setup:
    """Isolated, then open again: the filters linger and the program passes
    every packet after its two config lookups."""

    def setup(env: Env) -> Callable[[], None]:
        key = dp.attach(env.server, env.srv_if)
        dp.apply(key, Direction.INGRESS, bpf_table(cidrs))
        dp.apply(key, Direction.INGRESS, LoweredDirection(False))
        assert dp.lingering() == 1

        def teardown() -> None:
            c = dp.counters(key)[(Direction.INGRESS, Verdict.PASS_UNISOLATED)]
            print(f"    (bpf lingering: ingress packets passed unparsed {c.packets})")
            dp.detach(key)

        return teardown

    return setup


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=5, help="length of each measurement")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    for tool in ("wrk", "iperf3", "nginx", "iptables-restore", "nft"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/setup installs it)")

    cidrs = random_cidrs(N_CIDRS)
    started = time.monotonic()
    dp = PolicyDatapath(f"bench-{os.getpid()}", filter_linger_s=3600)
    t0 = time.monotonic()
    dp.load()
    print(
        f"bcc compile + load: {time.monotonic() - t0:.2f} s; iptables: {sh('iptables', '-V').strip()}"
    )
    scenarios: list[tuple[str, Setup]] = [
        ("none", setup_none),
        ("nicwarden bpf (LPM + flows)", setup_bpf(dp, cidrs)),
        ("nicwarden bpf, open, filters lingering", setup_lingering(dp, cidrs)),
        ("iptables linear + ct ESTABLISHED", setup_iptables(True, cidrs)),
        ("iptables linear, no ct shortcut", setup_iptables(False, cidrs)),
        ("nftables interval set + ct", setup_nft(cidrs)),
    ]
    results: list[tuple[str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nwbench-") as tmp:
            for name, setup in scenarios:
                print(f"{name} ...", flush=True)
                with namespaces() as env, servers(env, Path(tmp)):
                    teardown = setup(env)
                    try:
                        conns = measure_conns(env, args.seconds)
                        bulk = measure_bulk(env, args.seconds)
                    finally:
                        teardown()
                results.append((name, conns, bulk))
                print(f"    {conns:10.0f} conn/s   {bulk:6.2f} Gb/s", flush=True)
    finally:
        dp.cleanup()

    base_c, base_b = results[0][1], results[0][2]
    print()
    print(
        f"{N_CIDRS} source CIDRs, {args.seconds} s per measurement, total {time.monotonic() - started:.0f} s"
    )
    print(f"{'datapath':40} {'conn/s':>9} {'ratio':>6} {'Gb/s':>7} {'ratio':>6}")
    for name, c, b in results:
        print(f"{name:40} {c:9.0f} {c / base_c:6.2f} {b:7.2f} {b / base_b:6.2f}")


if __name__ == "__main__":
    main()
