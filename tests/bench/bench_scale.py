#!/usr/bin/env python3
"""Cluster scale (issue 14): the agent following a generated cluster.

Prints numbers next to the issue's targets; asserts nothing. Run as root:
    .venv/bin/python tests/bench/bench_scale.py [--pods 10000] [--local-pods 200]

The cluster (tests/support/cluster_gen.py) is served by the in-repo API
server in its own process, so its JSON work never shares a GIL with the
measurements. The agent runs as deployed (nicwarden-agent, cluster mode, a
4x64 simulated node); its CPU comes from /proc/PID/stat, its RSS from
/proc/PID/status, and "in the kernel" means an LPM lookup in the pinned
peers map of the interface's active generation, done by this process.
Every wait has a deadline; on timeout the row says so and the run goes on.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support import cluster_gen as cg  # noqa: E402
from tests.support.agent_proc import (  # noqa: E402
    SHIM,
    Running,
    cleanup_node,
    kill_agent,
    start_agent,
    stop_agent,
)
from tests.support.cni_runtime import invoke, netns_path  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
rows: list[tuple[str, str, str]] = []


class Timeout(Exception):
    pass


def row(what: str, value: str, target: str) -> None:
    rows.append((what, value, target))
    print(f"  {what:48s} {value:>22s}   target {target}", flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait(check: Callable[[], bool], timeout: float, what: str, step: float = 0.001) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.perf_counter() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """The agent's CPU time, its finished children's included (the list
    parser, the program build): utime + stime + cutime + cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def settle(pid: int, quiet: float = 1.0, timeout: float = 300) -> float:
    """Wait until the agent's CPU time stops growing (``quiet`` s without a
    tick beyond idle noise); returns its CPU time then."""
    deadline = time.monotonic() + timeout
    last, since = cpu_s(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_s(pid)
        if now - last > 0.02:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise Timeout("the agent kept busy")


# -- the API server, in its own process -------------------------------------------


_ACTIONS = {"add": "ADDED", "update": "MODIFIED", "delete": "DELETED"}


def serve(spec: cg.ClusterSpec, kubeconfig: Path) -> None:
    """Load the cluster, then obey JSON commands on stdin, one per line."""
    from tests.support.k8s_apiserver import FakeApiServer

    with FakeApiServer() as server:
        started = time.monotonic()
        count = cg.load(server, spec)
        server.write_kubeconfig(kubeconfig)
        print(json.dumps({"objects": count, "load_s": time.monotonic() - started}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            if op in _ACTIONS:
                rv, queued = server.commit(_ACTIONS[op], cmd["obj"])
                out: Any = {"rv": rv, "queued": queued}
            elif op == "first_request":
                out = min((r.at for r in server.requests), default=None)
            elif op == "get":
                out = server.get(cmd["kind"], cmd["namespace"], cmd["name"])
            elif op == "relist":
                # Pods no watch hears of, history forgotten, watches cut: the
                # agent's resumed pod watch gets 410 Gone and relists.
                prefix = cmd.get("prefix", "late")
                server.add_many([cg.pod(spec, i, prefix=prefix) for i in range(cmd["pods"])])
                server.compact()
                out = server.drop_watches()
            else:
                out = f"unknown op {op}"
            print(json.dumps({"ok": out}), flush=True)


class Api:
    def __init__(self, spec: cg.ClusterSpec, tmp: Path) -> None:
        self.kubeconfig = tmp / "kubeconfig"
        args = [sys.executable, __file__, "--serve", "--kubeconfig", str(self.kubeconfig)]
        args += ["--pods", str(spec.pods), "--local-pods", str(spec.local_pods)]
        args += ["--nads", str(spec.nads), "--policies", str(spec.policies)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not first:
            raise SystemExit("the API server process died while loading")
        self.info = json.loads(first)

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the API server process died")
        return json.loads(line)["ok"]

    def close(self) -> None:
        with suppress(Exception):
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


# -- the kernel, read directly ----------------------------------------------------


class Kernel:
    """The agent's pinned maps, opened by this process."""

    def __init__(self, prefix: str) -> None:
        from nicwarden.agent.host.bpf_pins import open_maps

        self.maps = open_maps(Path("/sys/fs/bpf/nicwarden") / f"sim-{prefix}", os.cpu_count() or 1)

    def iface_in(self, netns: str, timeout: float = 30) -> int:
        """The agent's number for the interface it registered in ``netns``,
        which it does once a policy selects that interface."""
        want = {netns.encode(), os.path.realpath(netns).encode()}
        found: list[int] = []

        def registered() -> bool:
            for key in list(self.maps.ifaces.iter_keys()):
                info = self.maps.ifaces.lookup(key)
                if info is not None and info.netns in want:
                    found.append(int(key.v))
                    return True
            return False

        wait(registered, timeout, f"an interface registered in {netns}", 0.05)
        return found[0]

    def admits(self, iface: int, ip: str, direction: int = 0) -> bool:
        """Whether ``iface``'s active table in ``direction`` isolates and
        lists ``ip``: two lookups, so that polling it while the agent works
        costs the agent no CPU (scanning every interface did: ~3 ms a poll)."""
        from nicwarden.bpf import layout as L

        cv = self.maps.cfg.lookup(L.CfgKey(iface, direction))
        if cv is None or not cv.isolated:
            return False
        addr = ipaddress.ip_address(ip).packed
        key = L.peer_key(iface, L.Direction(direction), cv.gen, (4, addr, 32))
        return self.maps.peers.lookup(key) is not None

    def isolated(self) -> set[tuple[int, int]]:
        """(interface, direction) pairs whose active table isolates."""
        out = set()
        for ck in list(self.maps.cfg.iter_keys()):
            cv = self.maps.cfg.lookup(ck)
            if cv is not None and cv.isolated:
                out.add((int(ck.iface), int(ck.dir)))
        return out

    def close(self) -> None:
        self.maps.close()


# -- pods on the node -----------------------------------------------------------


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Node:
    def __init__(self, agent: Running, tmp: Path) -> None:
        self.agent, self.tmp = agent, tmp
        self.netns: list[str] = []
        devs = agent.ctl_json("devices", "--role", "vf")["devices"]
        self.vfs = sorted(d["pci_address"] for d in devs)  # type: ignore[union-attr,index]
        self.attached: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.netns_of: dict[str, str] = {}  # local pod name -> its netns path

    def new_netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        return name

    def conf(self, network: str, device: str) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": network,
            "type": "nicwarden",
            "agentSocket": str(self.agent.cni_sock),
            "deviceID": device,
            "ipam": {
                "type": "host-local",
                "subnet": cg.LOCAL_SUBNET,
                "dataDir": str(self.tmp / "ipam"),
            },
        }

    def add(self, lp: cg.LocalPod, device: str, ns: str) -> None:
        conf = self.conf(lp.network, device)
        kw = dict(container=f"c-{lp.name}", netns=netns_path(ns), ifname="net1")
        kw.update(pod=lp.name, namespace=lp.namespace)
        out = invoke(SHIM, "ADD", conf, **kw)
        if out.code:
            raise SystemExit(f"ADD {lp.name}: {out.stdout} {out.stderr}")
        self.attached.append((conf, kw))
        self.netns_of[lp.name] = kw["netns"]

    def cycle(self, device: str, n: int) -> float:
        """ADD+DEL into a new netns, as a runtime would: reusing one would
        keep the host-model rules of every address IPAM handed out in it,
        and each ADD would read more of them than the one before."""
        ns = self.new_netns(f"nwsccyc{n}")
        conf = self.conf("net-0", device)
        kw = dict(container=f"cycle-{n}", netns=netns_path(ns), ifname="net1")
        kw.update(pod=f"cycle-{n}", namespace=cg.ns_name(0))
        started = time.perf_counter()
        for command in ("ADD", "DEL"):
            out = invoke(SHIM, command, conf, **kw)
            if out.code:
                raise SystemExit(f"{command} cycle-{n}: {out.stdout} {out.stderr}")
        took = time.perf_counter() - started
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.netns.remove(ns)
        return took

    def cleanup(self) -> None:
        for conf, kw in reversed(self.attached):
            with suppress(Exception):
                invoke(SHIM, "DEL", conf, **kw)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- measurements -----------------------------------------------------------------


def config(tmp: Path, kubeconfig: Path | None) -> Path:
    cfg: dict[str, Any] = {
        "kubeletDir": str(tmp / "kubelet"),
        "deviceInfoDir": str(tmp / "devinfo"),
    }
    if kubeconfig is not None:
        cfg["kubernetes"] = {"watch": True, "kubeconfig": str(kubeconfig), "events": True}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextmanager
def agent_on(tmp: Path, kubeconfig: Path | None, node: str) -> Iterator[Running]:
    env = dict(os.environ, NODE_NAME=node)
    agent = start_agent(
        tmp,
        "--config",
        str(config(tmp, kubeconfig)),
        "--log-level",
        "warning",
        spec="4x64",
        env=env,
        timeout=300,
    )
    try:
        yield agent
    finally:
        try:
            stop_agent(agent, timeout=60)
        except Exception:
            kill_agent(agent)
        cleanup_node(agent.prefix)


def idle_rss(tmp: Path) -> None:
    (tmp / "idle").mkdir()
    with agent_on(tmp / "idle", None, "idle-node") as agent:
        note = ""
        try:
            settle(agent.proc.pid, quiet=2.0, timeout=60)
        except Timeout:
            # Its periodic rescans of the 256-VF sysfs tree can keep an idle
            # agent above settle()'s noise floor on a loaded machine.
            note = " (not quiet after 60 s)"
        rss = f"{rss_mb(agent.proc.pid):.0f} MB{note}"
        row("idle agent RSS, 4x64 node, no cluster", rss, "< 120 MB")


def policy_synced(agent: Running) -> bool:
    r = agent.ctl("health")
    return r.returncode == 0 and any(
        line.startswith("policy-source") and "synced" in line for line in r.stdout.splitlines()
    )


def scrape(agent: Running) -> list[str]:
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return list(resp.read().decode().splitlines())


def metric(agent: Running, name: str) -> float | None:
    for line in scrape(agent):
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def buckets(agent: Running, name: str, **labels: str) -> dict[float, float]:
    """Cumulative counts by upper bound of one histogram series."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    out = {}
    for line in scrape(agent):
        if not line.startswith(f"{name}_bucket{{"):
            continue
        inside, value = line[len(name) + 8 :].rsplit("} ", 1)
        pairs = set(inside.split(","))
        le = next((p for p in pairs if p.startswith("le=")), None)
        if le is not None and want <= pairs:
            out[float(le[4:-1])] = float(value)
    return out


def bucket_pct(before: dict[float, float], after: dict[float, float], p: float) -> float | None:
    """The upper bound of the bucket holding the p-th percentile of what
    was observed between two scrapes (None: nothing was)."""
    grew = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = grew.get(float("inf"), 0.0)
    if not total:
        return None
    return next(le for le, n in grew.items() if n >= p / 100 * total)


def measure(args: argparse.Namespace, tmp: Path) -> None:
    spec = cg.ClusterSpec(
        pods=args.pods, nads=args.nads, policies=args.policies, local_pods=args.local_pods
    )
    if not args.cni_only:
        print(f"\nidle agent ({time.strftime('%H:%M:%S')})", flush=True)
        idle_rss(tmp)

    started = time.monotonic()
    api = Api(spec, tmp)
    print(
        f"\ncluster: {spec.pods} pods in {spec.namespaces} namespaces, {spec.nads} NADs,"
        f" {spec.policies} MNPs, {spec.local_pods} local pods; {api.info['objects']} objects"
        f" loaded in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    try:
        run_cluster(args, tmp, spec, api)
    finally:
        api.close()


def run_cluster(args: argparse.Namespace, tmp: Path, spec: cg.ClusterSpec, api: Api) -> None:
    (tmp / "cluster").mkdir()
    server_cpu = cpu_s(api.proc.pid)
    t0 = time.monotonic()
    with agent_on(tmp / "cluster", api.kubeconfig, spec.local_node) as agent:
        pid = agent.proc.pid
        node = Node(agent, tmp / "cluster")
        kernel: Kernel | None = None
        try:
            wait(lambda: policy_synced(agent), args.timeout, "policy source synced", 0.1)
            sync = time.monotonic() - t0  # from agent start, not from the first poll
            row("initial sync, agent start to source synced", f"{sync:.1f} s", "< 20 s")
            first = api.call("first_request")
            if first is not None:
                # Without the agent's own start (imports, the simulated
                # node's 256 veths and sysfs tree, the program build).
                # CLOCK_MONOTONIC is one clock for every process here.
                row(
                    "  of which API to kernel (first request to synced)",
                    f"{t0 + sync - first:.1f} s",
                    "< 20 s",
                )
            # The same cores ran the API server: its share is not the agent's.
            row(
                "  CPU in that time: agent (+ its children) / API server",
                f"{cpu_s(pid):.1f} / {cpu_s(api.proc.pid) - server_cpu:.1f} s",
                f"({os.cpu_count()} cores)",
            )
            settle(pid, timeout=args.timeout)
            row("agent RSS after initial sync", f"{rss_mb(pid):.0f} MB", "< 300 MB")
            if args.cni_only:
                for k in range(args.relists):
                    try:
                        cni_during_relist(args, spec, api, agent, node, k)
                    except Timeout as e:
                        row("CNI during relist", f"TIMEOUT: {e}", "")
                    settle(pid, timeout=args.timeout)
                return

            # Local pods get real attachments; then their tables must appear.
            locals_ = cg.local_pods(spec)[: len(node.vfs) - 2]
            t1 = time.monotonic()
            for j, lp in enumerate(locals_):
                node.add(lp, node.vfs[j], node.new_netns(f"nwsc{j}"))
            added = time.monotonic() - t1
            kernel = Kernel(agent.prefix)

            def isolated_in_kernel() -> int:
                maps = kernel.maps  # type: ignore[union-attr]
                return len(
                    {
                        ck.iface
                        for ck in list(maps.cfg.iter_keys())
                        if (cv := maps.cfg.lookup(ck)) is not None and cv.isolated
                    }
                )

            def tables_in_kernel() -> bool:
                # Every local interface is known to the agent, and every one
                # a policy isolates has an isolated table in the kernel.
                r = agent.ctl("-o", "json", "policies")
                if r.returncode != 0:
                    return False
                rows = json.loads(r.stdout).get("interfaces", [])
                want = sum(1 for i in rows if i.get("ingress_isolated") or i.get("egress_isolated"))
                state.update(want=want, listed=len(rows), kernel=isolated_in_kernel())
                return state["listed"] >= len(locals_) and state["kernel"] >= want

            state = {"want": 0, "listed": 0, "kernel": 0}
            try:
                wait(tables_in_kernel, args.timeout, "local tables in the kernel", 0.2)
                took = f"{time.monotonic() - t1:.1f} s"
            except Timeout as e:
                took = f"TIMEOUT {e}"
            row(
                f"{len(locals_)} local ADDs until tables in kernel",
                f"{took} ({state['listed']} listed, {state['want']} isolated,"
                f" {state['kernel']} in kernel)",
                f"(ADDs alone {added:.1f} s)",
            )
            row("agent RSS with local pods", f"{rss_mb(pid):.0f} MB", "< 300 MB")
            settle(pid, timeout=args.timeout)

            for name, fn in (
                ("mnp", mnp_updates),
                ("irrelevant", irrelevant_events),
                ("peer", peer_changes),
                ("cidr", big_policy),
            ):
                try:
                    fn(Phase(args, spec, api, agent, kernel, node))
                except Timeout as e:
                    row(name, f"TIMEOUT: {e}", "")
                settle(pid, timeout=args.timeout)

            try:
                cni_during_relist(args, spec, api, agent, node, 0)
            except Timeout as e:
                row("CNI during relist", f"TIMEOUT: {e}", "")
        finally:
            if kernel is not None:
                kernel.close()
            node.cleanup()


@dataclass
class Phase:
    """What each measured phase works with."""

    args: argparse.Namespace
    spec: cg.ClusterSpec
    api: Api
    agent: Running
    kernel: Kernel
    node: Node


# The threads a policy event runs on: its watch (parse, projection,
# comparison), the feed's worker (engine, datapath, store, status) and the
# Event poster, by the OS names the agent gives them (15 bytes kept).
# Other threads' periodic work is noise to this measurement.
POLICY_THREADS = ("k8s-watch-multi", "policy-feed", "k8s-events")


def policy_threads_cpu(pid: int) -> float:
    """CPU seconds of the agent's policy threads, read from /proc (a
    scrape would cost the agent more CPU than what it measures): schedstat's
    time on a CPU in ns, exact where stat's ticks are sampled."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() not in POLICY_THREADS:
                continue
            total += int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue  # ended meanwhile
    return total / 1e9


def mnp_updates(ph: Phase) -> None:
    """Two kinds of update: policies in namespaces without local pods (the
    engine, status and Events alone), and policies where the local pods
    live, whose new selector isolates some of them (tc filters attached, on
    first isolation the strict host model set) and releases others.

    Each update is measured alone, two ways: the whole agent's CPU from
    before it until the agent is quiet again, minus the same quiet wait with
    no update (idle ticks); and the CPU of the threads that handle policy
    events (``POLICY_THREADS``, by their OS names), which other threads'
    periodic work cannot blur. Also counted: the local
    interfaces whose isolation it flipped, as the kernel's cfg map shows."""
    k = ph.args.updates
    idle = [_quiet_cpu(ph.agent.proc.pid, lambda: None) for _ in range(k)]
    idle_mean = sum(w for w, _ in idle) / k
    idle_policy = sum(p for _, p in idle) / k
    remote = [
        i for i in range(ph.spec.policies) if i % ph.spec.namespaces >= ph.spec.local_namespaces
    ]
    for what, picks in (
        ("no local pod affected", remote),
        ("selecting other local pods", list(range(ph.spec.policies))),
    ):
        if not picks:
            continue
        used, threads, flips = [], [], 0
        for n in range(k):
            obj = cg.policy(ph.spec, picks[n % len(picks)])
            obj["metadata"]["labels"] = {"bench-rev": str(n)}
            obj["spec"]["podSelector"] = {"matchLabels": {"app": f"app-{n % cg.APPS}"}}
            before = ph.kernel.isolated()
            whole, policy = _quiet_cpu(
                ph.agent.proc.pid, lambda obj=obj: ph.api.call("update", obj=obj)
            )
            used.append(whole - idle_mean)
            threads.append(policy)
            flips += len(before ^ ph.kernel.isolated())
        row(
            f"CPU per MNP update, {what} ({k})",
            f"{sum(threads) / k * 1000:.1f} ms",
            f"< 5 ms (policy threads, {idle_policy * 1000:.1f} ms with no update; whole agent"
            f" {sum(used) / k * 1000:.1f} ms net of {idle_mean * 1000:.1f} ms idle ticks;"
            f" {flips} isolation flips in all)",
        )


def _quiet_cpu(pid: int, action: Callable[[], Any]) -> tuple[float, float]:
    """CPU seconds from just before ``action`` until the agent is quiet: the
    whole agent's, and its policy threads'."""
    start = settle(pid, quiet=0.3)
    threads = policy_threads_cpu(pid)
    action()
    end = settle(pid, quiet=0.3)
    return end - start, policy_threads_cpu(pid) - threads


def irrelevant_events(ph: Phase) -> None:
    """Pods on the cluster network only, an annotation nobody reads changed."""
    pid, k = ph.agent.proc.pid, ph.args.updates * 10
    no_nad = [i for i in range(ph.spec.pods) if not ph.spec.nads_in(i % ph.spec.namespaces)]
    pick = no_nad or list(range(ph.spec.pods))
    series = {"kind": "Pod", "outcome": "unchanged"}
    handled = buckets(ph.agent, "nicwarden_source_watch_event_seconds", **series)
    base = settle(pid)
    for n in range(k):
        obj = cg.pod(ph.spec, pick[n % len(pick)])
        obj["metadata"]["annotations"]["bench/touched"] = str(n)
        ph.api.call("update", obj=obj)
    used = settle(pid) - base
    after = buckets(ph.agent, "nicwarden_source_watch_event_seconds", **series)
    kind = "cluster-network-only" if no_nad else "secondary-network"
    row(f"irrelevant pod event, CPU mean ({k} {kind})", f"{used / k * 1000:.2f} ms", "")
    seen = after.get(float("inf"), 0) - handled.get(float("inf"), 0)
    p50, p99 = bucket_pct(handled, after, 50), bucket_pct(handled, after, 99)
    row(
        "irrelevant pod event, handling (agent's histogram)",
        "none seen"
        if p50 is None or p99 is None
        else f"p50 <= {p50 * 1000:g} / p99 <= {p99 * 1000:g} ms ({seen:.0f} events)",
        "p99 < 1 ms",
    )


def _bench_policy(lp: cg.LocalPod, name: str, peers: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": lp.namespace,
            "annotations": {cg.POLICY_FOR: lp.network},
        },
        "spec": {
            "podSelector": {"matchLabels": lp.labels},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers}],
        },
    }


def peer_changes(ph: Phase) -> None:
    lp = cg.local_pods(ph.spec)[0]
    ph.api.call(
        "add",
        obj=_bench_policy(
            lp, "bench-peers", [{"podSelector": {"matchLabels": {"bench-peer": "yes"}}}]
        ),
    )
    iface = ph.kernel.iface_in(ph.node.netns_of[lp.name])
    free = ipaddress.ip_network(cg.FREE_PEER_SUBNET)
    adds, dels = Latency(), Latency()
    for n in range(ph.args.samples):
        ip = str(free[n + 1])
        labels = {"bench-peer": "yes", "app": "peer"}
        obj = cg.pod(ph.spec, n, name=f"bench-peer-{n}", labels=labels, ip=ip)
        obj["metadata"]["namespace"] = lp.namespace
        status = json.loads(obj["metadata"]["annotations"][cg.NET_STATUS])
        status[-1]["name"] = f"{lp.namespace}/{lp.network}"
        obj["metadata"]["annotations"][cg.NET_STATUS] = json.dumps(status)
        adds.time(
            lambda obj=obj: ph.api.call("add", obj=obj),
            lambda ip=ip: ph.kernel.admits(iface, ip),
            f"peer {ip} in the kernel",
        )
        dels.time(
            lambda obj=obj: ph.api.call("delete", obj=obj),
            lambda ip=ip: not ph.kernel.admits(iface, ip),
            f"peer {ip} out of the kernel",
        )
    adds.rows(f"relevant peer add ({ph.args.samples})", "p99 < 50 ms")
    dels.rows("relevant peer delete", "p99 < 50 ms")
    ph.api.call("delete", obj=_bench_policy(lp, "bench-peers", []))


class Latency:
    """Times from an API call to its effect in the kernel, two ways: from
    the call (through the Python API server: decoding the request, storing
    and encoding the object) and from the moment the server had the watch
    event queued, which is the agent's part. Both clocks are CLOCK_MONOTONIC."""

    def __init__(self) -> None:
        self.call: list[float] = []
        self.event: list[float] = []

    def time(self, call: Callable[[], Any], done: Callable[[], bool], what: str) -> None:
        start = time.monotonic()
        queued = call()["queued"]
        wait(done, 30, what)
        end = time.monotonic()
        self.call.append(end - start)
        self.event.append(end - queued)

    def rows(self, what: str, target: str) -> None:
        for label, got in (
            ("watch event to kernel", self.event),
            ("API call to kernel", self.call),
        ):
            row(
                f"{what}, {label}",
                f"p50 {pct(got, 50) * 1e3:.0f} / p99 {pct(got, 99) * 1e3:.0f} ms",
                target,
            )
            target = ""


def big_policy(ph: Phase) -> None:
    lp = cg.local_pods(ph.spec)[1 % max(1, ph.spec.local_pods)]
    # The interface is isolated first by a one-peer policy, so that what is
    # timed is the big table, not its first tc filters and host model (those
    # are the isolation flips that mnp_updates counts).
    hold = _bench_policy(lp, "bench-hold", [{"ipBlock": {"cidr": "192.0.2.1/32"}}])
    ph.api.call("add", obj=hold)
    iface = ph.kernel.iface_in(ph.node.netns_of[lp.name])
    wait(lambda: ph.kernel.admits(iface, "192.0.2.1"), 30, "the one-peer policy in the kernel")
    base = int(ipaddress.ip_address("100.64.0.0"))
    cidrs = [str(ipaddress.ip_address(base + 2 * n)) for n in range(ph.args.cidrs)]
    peers = [{"ipBlock": {"cidr": f"{c}/32"}} for c in cidrs]
    obj = _bench_policy(lp, "bench-cidrs", peers)
    first = Latency()
    first.time(
        lambda: ph.api.call("add", obj=obj),
        lambda: ph.kernel.admits(iface, cidrs[-1]) and ph.kernel.admits(iface, cidrs[0]),
        f"the {ph.args.cidrs}-CIDR policy in the kernel",
    )
    row(
        f"{ph.args.cidrs}-CIDR policy, manifest to kernel",
        f"{first.event[0]:.2f} s from the watch event, {first.call[0]:.2f} s from the API call",
        "< 0.3 s",
    )
    changes = Latency()
    agent_cpu, server_cpu = settle(ph.agent.proc.pid), cpu_s(ph.api.proc.pid)
    for n in range(ph.args.samples):
        new = str(ipaddress.ip_address(base + 2 * (ph.args.cidrs + n)))
        old = cidrs[n]
        peers[n] = {"ipBlock": {"cidr": f"{new}/32"}}
        changes.time(
            lambda: ph.api.call("update", obj=_bench_policy(lp, "bench-cidrs", peers)),
            lambda new=new, old=old: (
                ph.kernel.admits(iface, new) and not ph.kernel.admits(iface, old)
            ),
            "the one-peer change in the kernel",
        )
    changes.rows(f"one-peer change in a {ph.args.cidrs}-CIDR policy ({ph.args.samples})", "< 20 ms")
    # Where that time goes: the agent's CPU per change, and the API server's
    # (decoding the ~400 KB request, storing it, encoding the watch event).
    agent_cpu = settle(ph.agent.proc.pid) - agent_cpu
    server_cpu = cpu_s(ph.api.proc.pid) - server_cpu
    row(
        "  CPU per change: agent / API server",
        f"{agent_cpu / ph.args.samples * 1e3:.0f} / {server_cpu / ph.args.samples * 1e3:.0f} ms",
        "(means)",
    )
    ph.api.call("delete", obj=obj)
    ph.api.call("delete", obj=hold)


def cni_during_relist(
    args: argparse.Namespace,
    spec: cg.ClusterSpec,
    api: Api,
    agent: Running,
    node: Node,
    round_: int,
) -> None:
    device = node.vfs[-1]
    base = round_ * 100_000
    idle = [node.cycle(device, base + n) for n in range(args.samples)]
    applied = metric(agent, "nicwarden_source_events_applied_total")
    started = time.monotonic()
    # Each round adds pods under new names, so each relist delivers spec.pods new ones.
    api.call("relist", pods=spec.pods, prefix=f"late{round_}")
    during: list[float] = []
    n = base + len(idle)
    target = None if applied is None else applied + spec.pods
    while True:
        during.append(node.cycle(device, n))
        n += 1
        if time.monotonic() - started > args.timeout:
            raise Timeout("the relist was not applied in time")
        if target is not None:
            now = metric(agent, "nicwarden_source_events_applied_total")
            if now is not None and now >= target:
                break
        elif time.monotonic() - started > 30:
            break  # no applied-events metric: cycle for 30 s
    took = time.monotonic() - started
    ratio = pct(during, 99) / pct(idle, 99)
    row(
        f"CNI ADD+DEL p99 idle / during {spec.pods}-pod relist",
        f"{pct(idle, 99) * 1e3:.0f} / {pct(during, 99) * 1e3:.0f} ms",
        f"ratio {ratio:.2f} <= 1.5 (relist {took:.1f} s, n={len(idle)}/{len(during)},"
        f" p50 {pct(idle, 50) * 1e3:.0f} / {pct(during, 50) * 1e3:.0f} ms)",
    )
    for name, values in (("idle", idle), ("during", during)):
        top = " ".join(f"{v * 1e3:.0f}" for v in sorted(values)[-5:])
        print(f"    {name}: p90 {pct(values, 90) * 1e3:.0f} ms, slowest {top} ms", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--nads", type=int, default=1_000)
    ap.add_argument("--policies", type=int, default=2_000)
    ap.add_argument("--local-pods", type=int, default=200)
    ap.add_argument("--updates", type=int, default=20, help="MNP updates (x10 pod events)")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--cidrs", type=int, default=10_000)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per wait")
    ap.add_argument(
        "--cni-only",
        action="store_true",
        help="only CNI ADD+DEL latency idle vs during relists (no local pods, no other rows)",
    )
    ap.add_argument("--relists", type=int, default=1, help="relists measured with --cni-only")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    spec = cg.ClusterSpec(
        pods=args.pods, nads=args.nads, policies=args.policies, local_pods=args.local_pods
    )
    if args.serve:
        serve(spec, args.kubeconfig)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the agent needs a simulated node and bpffs")
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="nicwarden-scale-") as tmp:
        try:
            measure(args, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; cleaned up", file=sys.stderr)
    print("\nsummary")
    for what, value, target in rows:
        print(f"  {what:48s} {value:>22s}   target {target}")


if __name__ == "__main__":
    main()
