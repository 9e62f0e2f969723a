"""Initial sync of a generated cluster through ApiSource (a script: prints,
asserts nothing).

    .venv/bin/python tests/bench/bench_k8s_sync.py [--pods 10000,100000]
        [--compare-with /path/to/another/checkout]

The cluster: N pods of about 6 KiB (Multus network-status included, and the
managedFields, env, volumes and conditions a real pod carries) in N/20
namespaces, N/100 NADs and N/50 MultiNetworkPolicies, served by the in-repo
API server in its own process. Each variant runs in a fresh process: an
ApiSource feeding a PolicyEngine (no local targets) and a dict of the
delivered pods' names (PolicyEnforcer keeps objects only of pods attached on its
node, none here; the "no engine" variants leave
the engine out, to show the source's own share). Printed per variant: wall time
to synced, the agent's CPU time, its RSS after sync and the RSS the sync
added. ``--compare-with`` also runs the full-object path of another checkout
(e.g. ``git archive`` of an older commit) against the same server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NET_STATUS = "k8s.v1.cni.cncf.io/network-status"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    """This process's CPU time and that of its finished children (the list
    parser runs in one)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- the cluster ----------------------------------------------------------------


def _pod(i: int, namespaces: int, shared: dict[str, Any]) -> dict[str, Any]:
    ns = f"ns-{i % namespaces}"
    app = f"app-{i % 50}"
    status = [
        {
            "name": "cbr0",
            "interface": "eth0",
            "ips": [f"10.244.{i // 65536 % 256}.{i // 256 % 256}"],
            "mac": "0a:58:0a:f4:00:01",
            "default": True,
            "dns": {},
        },
        {
            "name": f"{ns}/net-{i % 3}",
            "interface": "net1",
            "ips": [f"10.{100 + i // 65536 % 100}.{i // 256 % 256}.{i % 256}"],
            "mac": f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "dns": {},
            "device-info": {
                "type": "pci",
                "version": "1.1.0",
                "pci": {"pci-address": "0000:3b:02.1"},
            },
        },
    ]
    # The big, identical parts are shared between pods: the server never
    # changes a stored object in place, and this keeps its own memory small.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{app}-{i:07d}-x7k2p",
            "generateName": f"{app}-{i:07d}-",
            "namespace": ns,
            "labels": {
                "app": app,
                "pod-template-hash": f"{i % 50:08x}",
                "tier": ("front", "back", "db")[i % 3],
                "team": f"team-{i % 7}",
            },
            "annotations": {
                NET_STATUS: json.dumps(status),
                "k8s.v1.cni.cncf.io/networks": f"net-{i % 3}",
                "kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z",
            },
            "ownerReferences": shared["owner"],
            "managedFields": shared["managed"],
        },
        "spec": shared["spec"] | {"nodeName": f"node-{i % 500}"},
        "status": shared["status"],
    }


def _shared() -> dict[str, Any]:
    env = [{"name": f"SETTING_{k}", "value": f"value-{k}-" + "v" * 20} for k in range(12)]
    container = {
        "name": "main",
        "image": "registry.example/app/main:1.2.3",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "1"}},
        "volumeMounts": [{"name": f"vol-{k}", "mountPath": f"/mnt/{k}"} for k in range(6)],
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
    }
    return {
        "owner": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u" * 36}],
        "managed": [
            {
                "manager": m,
                "operation": "Update",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {f"f:{k}": {} for k in range(15)},
            }
            for m in ("kube-controller-manager", "kubelet", "multus")
        ],
        "spec": {
            "containers": [container, container | {"name": "sidecar", "ports": []}],
            "volumes": [{"name": f"vol-{k}", "emptyDir": {}} for k in range(6)],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-01T10:00:00Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": n,
                    "ready": True,
                    "restartCount": 0,
                    "image": "registry.example/app/main:1.2.3",
                    "imageID": "sha256:" + "a" * 64,
                    "containerID": "containerd://" + "b" * 64,
                    "state": {"running": {"startedAt": "2026-11-01T10:00:00Z"}},
                }
                for n in ("main", "sidecar")
            ],
            "hostIP": "192.168.1.10",
            "podIP": "10.244.0.1",
            "qosClass": "Burstable",
        },
    }


def cluster(pods: int) -> list[dict[str, Any]]:
    namespaces = max(1, pods // 20)
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": f"ns-{n}", "labels": {"team": f"team-{n % 7}"}},
        }
        for n in range(namespaces)
    ]
    for n in range(max(1, pods // 100)):
        out.append(
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": f"net-{n % 3}", "namespace": f"ns-{n // 3}"},
                "spec": {"config": json.dumps({"cniVersion": "1.0.0", "type": "nicwarden"})},
            }
        )
    for n in range(max(1, pods // 50)):
        out.append(
            {
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": f"mnp-{n}",
                    "namespace": f"ns-{n % namespaces}",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": f"net-{n % 3}"},
                },
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"app-{n % 50}"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "front"}}}]}],
                },
            }
        )
    shared = _shared()
    out.extend(_pod(i, namespaces, shared) for i in range(pods))
    return out


# -- processes ------------------------------------------------------------------


def serve(pods: int, ready: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.k8s_apiserver import FakeApiServer

    objs = cluster(pods)
    sample = json.dumps(objs[-1])
    with FakeApiServer() as server:
        server.add_many(objs)
        server.compact()
        server.write_kubeconfig(ready.with_suffix(".kubeconfig"))
        ready.write_text(json.dumps({"pod_bytes": len(sample)}))
        while True:
            time.sleep(3600)


def agent(kubeconfig: str, metadata_only: bool, freeze: bool, engine_on: bool) -> None:
    from nicwarden.agent.k8s import ApiSource, load_client
    from nicwarden.agent.policy import Event, PolicyEngine

    if not freeze:
        import nicwarden.agent.k8s.reflector as reflector

        reflector.gc.freeze = lambda: None  # type: ignore[attr-defined]

    base = _rss_mb()
    client = load_client(Path(kubeconfig))
    kwargs: dict[str, Any] = {"pod_metadata_only": True} if metadata_only else {}
    source = ApiSource(client, "bench", **kwargs)
    engine = PolicyEngine()
    pods: set[tuple[str, str]] = set()

    def sink(event: Event) -> None:
        if event.kind == "Pod":
            meta = event.obj["metadata"]
            ident = (meta.get("namespace", ""), meta["name"])
            if str(event.action) == "delete":
                pods.discard(ident)
            else:
                pods.add(ident)
        if engine_on:
            engine.apply(event)

    before = _rss_mb()
    wall, cpu = time.monotonic(), _cpu_s()
    source.start(sink)
    while not source.synced():
        time.sleep(0.02)
    wall, cpu = time.monotonic() - wall, _cpu_s() - cpu
    after = _rss_mb()
    source.stop()
    print(
        json.dumps(
            {
                "pods": len(pods),
                "sync_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "rss_mb": round(after),
                "added_mb": round(after - before),
                "base_mb": round(base),
            }
        )
    )


def _run_agent(python_path: Path, kubeconfig: Path, *flags: str) -> dict[str, Any]:
    env = dict(os.environ)
    # The other checkout's package must win over this one's editable install.
    env["PYTHONPATH"] = str(python_path)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--agent", str(kubeconfig), *flags],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _package_root(checkout: Path, tmp: Path) -> Path:
    """A directory holding ``nicwarden`` -> checkout (the repo root is the package)."""
    root = tmp / f"pkg-{abs(hash(str(checkout)))}"
    root.mkdir(exist_ok=True)
    link = root / "nicwarden"
    if not link.exists():
        link.symlink_to(checkout.resolve())
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", default="10000,100000")
    parser.add_argument("--compare-with", type=Path)
    parser.add_argument("--serve", type=int)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--agent")
    parser.add_argument("--metadata-only", action="store_true")
    parser.add_argument("--no-freeze", action="store_true")
    parser.add_argument("--no-engine", action="store_true")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.ready)
        return
    if args.agent is not None:
        agent(args.agent, args.metadata_only, not args.no_freeze, not args.no_engine)
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        here = _package_root(ROOT, tmp)
        variants: list[tuple[str, Path, tuple[str, ...]]] = []
        if args.compare_with is not None:
            variants.append(("other checkout", _package_root(args.compare_with, tmp), ()))
        variants += [
            ("full objects", here, ()),
            ("full objects, no gc.freeze", here, ("--no-freeze",)),
            ("metadata-only", here, ("--metadata-only",)),
            # The source's own share: the same, without the PolicyEngine.
            ("full objects, no engine", here, ("--no-engine",)),
            ("metadata-only, no engine", here, ("--metadata-only", "--no-engine")),
        ]
        for n in (int(x) for x in args.pods.split(",")):
            ready = tmp / f"ready-{n}"
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve",
                    str(n),
                    "--ready",
                    str(ready),
                ]
            )
            try:
                started = time.monotonic()
                while not ready.exists():
                    if server.poll() is not None:
                        raise SystemExit("the API server process died")
                    time.sleep(0.2)
                info = json.loads(ready.read_text())
                print(
                    f"\n{n} pods ({info['pod_bytes']} bytes each as JSON), "
                    f"server ready in {time.monotonic() - started:.1f} s"
                )
                for name, path, flags in variants:
                    r = _run_agent(path, ready.with_suffix(".kubeconfig"), *flags)
                    print(
                        f"  {name:28s} sync {r['sync_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  "
                        f"rss {r['rss_mb']:5d} MB (+{r['added_mb']} MB over {r['base_mb']} MB)  "
                        f"{r['pods']} pods"
                    )
            finally:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
