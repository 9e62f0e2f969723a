#!/usr/bin/env python3
"""The README's main job: nicwarden on a simulated SR-IOV node, doing real work.

1. starts nicwarden-agent --simulate 2x4 (fake sysfs, real veth VFs) with a
   manifests directory and a device plugin pool;
2. creates three pods (network namespaces) and attaches a VF to each through
   the installed CNI shim, exactly as Multus would (deviceID injected, K8S_*
   CNI_ARGS, host-local IPAM);
3. writes a MultiNetworkPolicy and shows traffic allowed and denied by the
   eBPF datapath, then `nicwardenctl policies` with its counters;
4. cleans up: DEL for every pod (VFs go home), netns removed, agent stopped
   (it removes its links and BPF pins).

Run as root after scripts/setup (scripts/demo does both). --keep leaves the
agent and pods running for exploration until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
AGENT, CTL = str(VENV_BIN / "nicwarden-agent"), str(VENV_BIN / "nicwardenctl")
PREFIX = "demo"
CNI_PATH = "/usr/lib/cni"
_libc = ctypes.CDLL(None, use_errno=True)

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def show(*cmd: str) -> None:
    print(f"{DIM}$ {' '.join(cmd)}{RESET}", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip(), flush=True)


def ctl(*args: str) -> None:
    print(f"{DIM}$ nicwardenctl {' '.join(args)}{RESET}", flush=True)
    out = subprocess.run([CTL, "--socket", SOCK, *args], capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip(), flush=True)


def in_netns(ns: str, fn: Any) -> Any:
    box: list[Any] = []

    def run() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        _libc.setns(fd, 0x40000000)
        os.close(fd)
        try:
            box.append(fn())
        except OSError as e:
            box.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box[0]


def serve(ns: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        return s

    srv: socket.socket = in_netns(ns, make)

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"hello from db\n")
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv


def pod_manifest(name: str, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"},
        "spec": {
            "nodeName": socket.gethostname(),
            "containers": [
                {"name": "app", "image": "demo", "ports": [{"name": "http", "containerPort": 8080}]}
            ],
        },
    }


def connect(ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    def go() -> bool:
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            return s.recv(64).startswith(b"hello")
        finally:
            s.close()

    result = in_netns(ns, go)
    return result is True


def probe(label: str, ok: bool, expect: bool) -> None:
    verdict = f"{GREEN}ALLOWED{RESET}" if ok else f"{RED}DENIED{RESET}"
    mark = "as expected" if ok == expect else "UNEXPECTED"
    print(f"  {label:44s} {verdict}  ({mark})", flush=True)
    if ok != expect:
        FAILURES.append(label)


def cni(command: str, pod: str, ns_name: str, netns: str, vf: str) -> dict[str, Any] | None:
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": CNI_SOCK,
        "deviceID": vf,
        "pciBusID": vf,
        "vlan": 0,
        "spoofchk": "on",
        "ipam": {"type": "host-local", "subnet": "10.56.0.0/24", "dataDir": f"{WORK}/ipam"},
    }
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"sandbox-{pod}",
        "CNI_NETNS": f"/var/run/netns/{netns}",
        "CNI_IFNAME": "net1",
        "CNI_PATH": CNI_PATH,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns_name};K8S_POD_NAME={pod};"
        f"K8S_POD_INFRA_CONTAINER_ID=sandbox-{pod};K8S_POD_UID=uid-{pod}",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([SHIM], input=json.dumps(conf), env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"CNI {command} for {pod} failed: {out.stdout}{out.stderr}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def manifest(name: str, docs: list[dict[str, Any]]) -> None:
    import yaml

    path = Path(WORK) / "manifests" / f"{name}.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)


def cleanup(
    agent: subprocess.Popen[bytes] | None,
    servers: list[socket.socket],
    pods: list[tuple[str, str, dict[str, str], str]],
    netns: dict[str, str],
) -> list[str]:
    problems = []
    for s in servers:
        s.close()
    for name, ns, _, vf in pods:
        if os.path.exists(f"/var/run/netns/{netns[name]}"):
            try:
                cni("DEL", name, ns, netns[name], vf)
            except SystemExit as e:
                problems.append(str(e))
            sh("ip", "netns", "del", netns[name], check=False)
    if agent is not None and agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    return problems


FAILURES: list[str] = []
WORK = tempfile.mkdtemp(prefix="nicwarden-demo-")
SOCK, CNI_SOCK = f"{WORK}/run/agent.sock", f"{WORK}/run/cni.sock"
SHIM = ""


def main() -> int:
    global SHIM
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="leave everything up until Ctrl-C")
    args = ap.parse_args()
    import yaml

    from nicwarden.cni.install import install_shim

    (Path(WORK) / "manifests").mkdir()
    SHIM = str(install_shim(Path(WORK) / "cni-bin"))  # as `nicwardenctl install-cni` would
    config = {
        "manifestsDir": f"{WORK}/manifests",
        "kubeletDir": f"{WORK}/device-plugins",
        "deviceInfoDir": f"{WORK}/devinfo",
        "resourcePrefix": "intel.com",
        "resourceList": [{"resourceName": "sriov_netdevice", "selectors": [{"drivers": ["iavf"]}]}],
        "logFormat": "text",
    }
    Path(WORK, "config.yaml").write_text(yaml.safe_dump(config))
    pods = [
        ("db", "prod", {"app": "db"}, "0000:18:01.0"),
        ("web", "prod", {"app": "web"}, "0000:18:01.1"),
        ("intruder", "prod", {"app": "other"}, "0000:18:01.2"),
    ]
    netns = {p[0]: f"demo-{p[0]}" for p in pods}
    agent = None
    servers: list[socket.socket] = []
    try:
        say("starting nicwarden-agent on a simulated node (2 PFs x 4 VFs, real veth VFs)")
        log = open(f"{WORK}/agent.log", "w")  # noqa: SIM115
        agent = subprocess.Popen(
            [
                AGENT,
                "--simulate",
                "2x4",
                "--sim-prefix",
                PREFIX,
                "--config",
                f"{WORK}/config.yaml",
                "--state-dir",
                f"{WORK}/state",
                "--socket",
                SOCK,
                "--cni-socket",
                CNI_SOCK,
                "--no-metrics",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(300):
            if (
                os.path.exists(CNI_SOCK)
                and subprocess.run(
                    [CTL, "--socket", SOCK, "health"], capture_output=True
                ).returncode
                == 0
            ):
                break
            if agent.poll() is not None:
                raise SystemExit(Path(f"{WORK}/agent.log").read_text())
            time.sleep(0.1)
        print(f"  logs: {WORK}/agent.log")
        ctl("health")
        ctl("pfs")
        ctl("devices", "--pf", "demo0")
        ctl("pools")
        print(
            "  (no kubelet runs on this machine: the pool waits for kubelet.sock;"
            " tests drive it with a v1beta1 test kubelet)"
        )

        say("kubernetes objects in the watched manifests directory")
        for n, ns, labels, _ in pods:
            manifest(f"pod-{n}", [pod_manifest(n, ns, labels)])
        manifest(
            "base",
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": "prod", "labels": {"env": "prod"}},
                },
                {
                    "apiVersion": "k8s.cni.cncf.io/v1",
                    "kind": "NetworkAttachmentDefinition",
                    "metadata": {
                        "name": "sriov-net",
                        "namespace": "prod",
                        "annotations": {
                            "k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_netdevice"
                        },
                    },
                    "spec": {
                        "config": json.dumps(
                            {"cniVersion": "1.0.0", "name": "sriov-net", "type": "nicwarden"}
                        )
                    },
                },
            ],
        )
        print("  Namespace prod, NAD prod/sriov-net, Pods db, web, intruder")

        say("attaching a VF to each pod through the CNI shim, as Multus would")
        ips = {}
        for name, ns, _, vf in pods:
            sh("ip", "netns", "add", netns[name])
            result = cni("ADD", name, ns, netns[name], vf)
            assert result is not None
            ips[name] = result["ips"][0]["address"].split("/")[0]
            print(
                f"  {ns}/{name:9s} net1 = VF {vf}  {ips[name]}  mac {result['interfaces'][0]['mac']}"
            )
        show("ip", "-n", netns["db"], "-br", "addr", "show", "net1")
        ctl("attachments")

        servers.append(serve(netns["db"], 8080))
        servers.append(serve(netns["db"], 9090))
        say("no policy yet: every pod reaches db")
        probe("web -> db:8080", connect(netns["web"], ips["db"], 8080), True)
        probe("intruder -> db:8080", connect(netns["intruder"], ips["db"], 8080), True)

        say("MultiNetworkPolicy: db accepts only app=web, only on its 'http' port")
        policy = {
            "apiVersion": "k8s.cni.cncf.io/v1beta1",
            "kind": "MultiNetworkPolicy",
            "metadata": {
                "name": "db-ingress",
                "namespace": "prod",
                "annotations": {"k8s.v1.cni.cncf.io/policy-for": "sriov-net"},
            },
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"protocol": "TCP", "port": "http"}],
                    }
                ],
            },
        }
        print(yaml.safe_dump(policy, sort_keys=False).rstrip())
        t0 = time.monotonic()
        manifest("policy", [policy])
        while connect(netns["intruder"], ips["db"], 8080, 0.1) and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        print(
            f"  enforced within {time.monotonic() - t0:.2f}s of writing the manifest"
            " (directory polled every 0.2s; probe timeout 0.1s)"
        )
        probe("web -> db:8080 (http)", connect(netns["web"], ips["db"], 8080), True)
        probe("web -> db:9090 (port not allowed)", connect(netns["web"], ips["db"], 9090), False)
        probe(
            "intruder -> db:8080 (label not allowed)",
            connect(netns["intruder"], ips["db"], 8080),
            False,
        )
        show("tc", "-n", netns["db"], "filter", "show", "dev", "net1", "ingress")
        ctl("policies", "-v")

        say("relabel intruder to app=web: enforcement follows without restarts")
        manifest("pod-intruder", [pod_manifest("intruder", "prod", {"app": "web"})])
        t0 = time.monotonic()
        while not connect(netns["intruder"], ips["db"], 8080, 0.1) and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        print(f"  followed within {time.monotonic() - t0:.2f}s")
        probe(
            "intruder (now app=web) -> db:8080", connect(netns["intruder"], ips["db"], 8080), True
        )

        if args.keep:
            say(f"running; try: {CTL} --socket {SOCK} policies   (Ctrl-C cleans up)")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        # Clean up first and talk after: a closed stdout (`| head`) or Ctrl-C
        # must not leave pods, VFs or the agent behind.
        problems = cleanup(agent, servers, pods, netns)
        left = [ln for ln in sh("ip", "-o", "link").splitlines() if f": {PREFIX}" in ln]
        pins = len(list(Path("/sys/fs/bpf/nicwarden").glob(f"sim-{PREFIX}")))
        shutil.rmtree(WORK, ignore_errors=True)
        with contextlib.suppress(OSError):
            say("cleaned up: CNI DEL for every pod, netns removed, agent stopped")
            for p in problems:
                print(f"  {p}")
            print(f"  links left behind: {len(left)}; BPF pins left: {pins}", flush=True)
    if FAILURES:
        print(f"{RED}unexpected results: {FAILURES}{RESET}")
        return 1
    print(f"\n{GREEN}demo complete{RESET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
