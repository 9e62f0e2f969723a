"""The image built from deploy/Dockerfile, run with podman the way
deploy/daemonset.yaml runs it, on a simulated node.

Every container setting comes from the manifests, read here by code: host
network and PID/IPC namespaces, the securityContext (user, capabilities,
read-only root, privilege escalation, AppArmor/SELinux/seccomp), resource
limits, env, command and args, and each volume mount. A setting this file
does not know how to map fails the test, so the manifest and the test cannot
drift apart silently.

The node: kernel interfaces (/sys, /dev, /run/netns, kernel headers) are this
machine's own. Everything else a hostPath names is node state (the CNI bin
dir, the agent's sockets and database, kubelet's device-plugins dir, ...)
and lives under a per-test node root, so the test never touches this
machine's real /opt/cni/bin or /var/lib/nicwarden. bpffs is a bpffs instance
of its own under the node root, so the purge step's `rm -rf
/sys/fs/bpf/nicwarden` removes this node's pins only.

The pod flow is issue 6's: a test kubelet (device plugin registration and
Allocate), an API server fixture reached through a kubeconfig in the config
volume, CNI ADD/DEL through the static shim the init container installed,
and a MultiNetworkPolicy enforced on real traffic. Then docs/uninstall.md is
followed step by step, and the node must be left as that page says.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import cleanup_node, free_port
from tests.support.cni_runtime import CNI_PATH as HOST_CNI_PLUGINS
from tests.support.cni_runtime import CniOutput, invoke, netns_path
from tests.support.k8s_apiserver import FakeApiServer
from tests.support.kubelet_fake import FakeKubelet, short_tmpdir
from tests.support.oracle import run
from tests.support.traffic import Servers, tcp_ok

# A first build on a fresh machine (debootstrap, apt, pip) takes minutes and
# happens in the first test's setup: more than the suite's per-test default.
pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE = os.environ.get("NICWARDEN_IMAGE", "localhost/nicwarden:dev")
NODE_NAME = "node-1"
RESOURCE = "intel.com/sriov_netdevice"

# hostPaths that must be this machine's own: the kernel's interfaces and the
# kernel headers bcc compiles against. Every other hostPath is node state,
# relocated under the test's node root.
KERNEL_PATHS = frozenset({"/sys", "/dev", "/run/netns", "/lib/modules", "/usr/src"})
BPFFS = "/sys/fs/bpf"

# Where the runtime finds CNI plugins on a node (the `cni-bin` hostPath).
NODE_CNI_BIN = "/opt/cni/bin"


def podman() -> list[str]:
    # crun refuses this machine's hybrid cgroup layout; podman's default
    # ulimits exceed its hard limits (and runc was refused an nproc limit
    # equal to the hard one), so explicit limits within them.
    return ["podman", "--runtime", "runc"]


def ulimits() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


# -- the manifests, read ------------------------------------------------------


def daemonset(path: Path) -> dict[str, Any]:
    (body,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = body["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r} in the pod spec")


@dataclass
class Node:
    """One simulated node's host side: where its hostPaths are on this machine."""

    root: Path
    bpffs: Path = field(init=False)
    config_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bpffs = self.root / "bpffs"
        self.config_dir = self.root / "configmap"

    def host_path(self, path: str) -> Path:
        """Where the node's ``path`` is on this machine."""
        if path in KERNEL_PATHS:
            return Path(path)
        if path == BPFFS:
            return self.bpffs
        return self.root / path.lstrip("/")


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    return int(q)


def _cpus(q: str) -> str:
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


_SECURITY = {
    "runAsUser",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "appArmorProfile",
    "seLinuxOptions",
    "seccompProfile",
}
# Pod settings: the ones below the namespaces are for the API server and the
# scheduler (which node, which priority, which account), with no bearing on
# how one container runs on one node; DNS is not used by the agent here.
_POD = {
    "serviceAccountName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "dnsPolicy",
    "priorityClassName",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
    "initContainers",
    "containers",
    "volumes",
    "automountServiceAccountToken",
}
_CONTAINER = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "securityContext",
    "resources",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "volumeMounts",
}


def podman_run_args(pod: dict[str, Any], c: dict[str, Any], node: Node) -> list[str]:
    """``podman run`` options for container ``c`` of ``pod``, as kubelet would
    set it up on ``node`` (image and command not included)."""
    assert set(pod) <= _POD, f"pod settings this test does not map: {set(pod) - _POD}"
    assert set(c) <= _CONTAINER, f"container settings not mapped: {set(c) - _CONTAINER}"
    out: list[str] = [*ulimits()]
    # A pod without the host network needs none here: it reaches nothing.
    out += ["--network", "host" if pod.get("hostNetwork") else "none"]
    if pod.get("hostPID"):
        out += ["--pid", "host"]
    if pod.get("hostIPC"):
        out += ["--ipc", "host"]

    sc = c.get("securityContext", {})
    assert set(sc) <= _SECURITY, f"securityContext keys not mapped: {set(sc) - _SECURITY}"
    if "runAsUser" in sc:
        out += ["--user", str(sc["runAsUser"])]
    if sc.get("privileged"):
        out.append("--privileged")
    if sc.get("readOnlyRootFilesystem"):
        # Kubernetes adds no tmpfs of its own: only the pod's volumes are writable.
        out += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    caps = sc.get("capabilities", {})
    for cap in caps.get("drop", []):
        out += ["--cap-drop", cap.lower()]
    for cap in caps.get("add", []):
        out += ["--cap-add", cap]
    apparmor = sc.get("appArmorProfile", {}).get("type")
    if apparmor is not None:
        assert apparmor in ("Unconfined", "RuntimeDefault"), apparmor
        if apparmor == "Unconfined":
            out += ["--security-opt", "apparmor=unconfined"]
    selinux = sc.get("seLinuxOptions", {})
    assert set(selinux) <= {"type"}, selinux
    if "type" in selinux:
        out += ["--security-opt", f"label=type:{selinux['type']}"]
    seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
    assert seccomp in ("RuntimeDefault", "Unconfined"), seccomp
    if seccomp == "Unconfined":
        out += ["--security-opt", "seccomp=unconfined"]

    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        out += ["--memory", str(_quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        out += ["--cpus", _cpus(str(limits["cpu"]))]

    for var in c.get("env", []):
        if "value" in var:
            out += ["--env", f"{var['name']}={var['value']}"]
        else:
            ref = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert ref == "spec.nodeName", f"env {var['name']}: fieldRef {ref} not mapped"
            out += ["--env", f"{var['name']}={NODE_NAME}"]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        target = mount["mountPath"]
        if "hostPath" in vol:
            kind = vol["hostPath"].get("type", "")
            source = node.host_path(vol["hostPath"]["path"])
            if kind == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            assert kind in ("Directory", "DirectoryOrCreate"), (mount["name"], kind)
            # kubelet refuses to start the pod when a Directory is missing.
            assert source.is_dir(), f"hostPath {source} ({mount['name']}) is not a directory"
        elif "configMap" in vol:
            source = node.config_dir
            keys = {i["key"] for i in vol["configMap"].get("items", [])}
            present = {p.name for p in node.config_dir.iterdir()}
            assert keys <= present, f"config volume lacks {keys - present}"
        elif "emptyDir" in vol:
            size = vol["emptyDir"].get("sizeLimit")
            opts = f"size={_quantity_bytes(size)}" if size else "size=64m"
            out += ["--tmpfs", f"{target}:rw,{opts}"]
            continue
        else:
            raise AssertionError(f"volume {vol['name']} of a kind this test does not map")
        opts = ["ro" if mount.get("readOnly") else "rw"]
        propagation = mount.get("mountPropagation", "None")
        opts.append(
            {"None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}[
                propagation
            ]
        )
        out += ["--volume", f"{source}:{target}:{','.join(opts)}"]
    return out


def podman_argv(
    pod: dict[str, Any], c: dict[str, Any], node: Node, *run_opts: str, extra_args: list[str]
) -> list[str]:
    argv = [*podman(), "run", *run_opts, *podman_run_args(pod, c, node)]
    if "command" in c:
        argv += ["--entrypoint", json.dumps(c["command"])]
    return [*argv, IMAGE, *c.get("args", []), *extra_args]


def run_to_completion(
    pod: dict[str, Any], name: str, node: Node
) -> subprocess.CompletedProcess[str]:
    """Run one (init) container of ``pod`` and wait for it, as kubelet does."""
    argv = podman_argv(pod, container(pod, name), node, "--rm", extra_args=[])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


# -- the image ------------------------------------------------------------------


@pytest.fixture(scope="session")
def image() -> str:
    """The image: built (or brought up to date from podman's layer cache) by
    scripts/build-image, or, with NICWARDEN_IMAGE set, that image as it is."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup installs it)")
    if "NICWARDEN_IMAGE" in os.environ:
        found = subprocess.run([*podman(), "image", "exists", IMAGE], capture_output=True)
        assert found.returncode == 0, f"NICWARDEN_IMAGE={IMAGE} is not a local image"
        return IMAGE
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (scripts/setup installs it)")
    build = subprocess.run(
        [str(REPO / "scripts" / "build-image")],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "NICWARDEN_IMAGE": IMAGE},
    )
    assert build.returncode == 0, f"scripts/build-image failed:\n{build.stdout}\n{build.stderr}"
    return IMAGE


def test_image_holds_no_compiler_and_a_static_shim(image: str) -> None:
    def sh(script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *podman(),
                "run",
                "--rm",
                *ulimits(),
                "--network",
                "none",
                "--entrypoint",
                "/bin/sh",
                image,
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = sh(
        "command -v gcc || command -v cc || command -v clang || command -v musl-gcc || echo none"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "none", f"a compiler in the image: {r.stdout}"
    # The shim needs no loader: an ELF whose program headers hold no PT_INTERP.
    r = sh(
        'python3 -c \'import struct, sys; d = open(sys.argv[1], "rb").read(); '
        'off, size, n = struct.unpack_from("<Q", d, 32)[0], *struct.unpack_from("<HH", d, 54); '
        'types = [struct.unpack_from("<I", d, off + i * size)[0] for i in range(n)]; '
        'print(d[:4] == b"\\x7fELF", 3 in types)\' /opt/nicwarden/bin/nicwarden-cni'
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"], f"not a static ELF: {r.stdout}"


# -- the node and its agent -----------------------------------------------------


def nad_config(node: Node) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        # The node's socket is under the node root, not at the default path.
        "agentSocket": str(node.host_path("/run/nicwarden") / "cni.sock"),
        "ipam": {"type": "host-local", "subnet": "10.67.0.0/24"},
    }


def nad(node: Node) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "sriov-net",
            "namespace": "prod",
            "annotations": {"k8s.v1.cni.cncf.io/resourceName": RESOURCE},
        },
        "spec": {"config": json.dumps(nad_config(node))},
    }


def pod_obj(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"uid-{name}",
            "labels": {"app": app},
            "annotations": {"k8s.v1.cni.cncf.io/networks": "sriov-net"},
        },
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "image": "x"}]},
    }


def agent_config(api: FakeApiServer, node: Node) -> dict[str, Any]:
    """deploy/configmap.yaml's config, with what a simulated node changes:
    the pools select the simulator's VFs (the example's pfNames and E810 IDs
    are hardware the node lacks), no provisioning entries, and the API is
    reached through a kubeconfig in the config volume, not a service account."""
    (cm,) = [d for d in yaml.safe_load_all((DEPLOY / "configmap.yaml").read_text()) if d]
    config: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    config["resourceList"] = [
        {"resourceName": "sriov_netdevice", "selectors": [{"drivers": ["iavf"]}]}
    ]
    config["sriov"] = []
    api.write_kubeconfig(node.config_dir / "kubeconfig")
    config["kubernetes"]["kubeconfig"] = "/etc/nicwarden/kubeconfig"
    return config


@dataclass
class Agent:
    name: str
    prefix: str
    pod: dict[str, Any]

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*podman(), "exec", self.name, *argv], capture_output=True, text=True, timeout=60
        )

    def ctl_json(self, *args: str) -> dict[str, Any]:
        r = self.exec("nicwardenctl", "-o", "json", *args)
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def logs(self) -> str:
        r = subprocess.run([*podman(), "logs", self.name], capture_output=True, text=True)
        return r.stdout + r.stderr

    def state(self) -> str:
        r = subprocess.run(
            [*podman(), "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name],
            capture_output=True,
            text=True,
        )
        return r.stdout.strip()


def wait_started(agent: Agent) -> None:
    """The manifest's startup probe, run as kubelet runs it, until it passes."""
    probe = container(agent.pod, "agent")["startupProbe"]
    # The manifest's budget (periodSeconds x failureThreshold) allows for slow
    # hardware; a simulated node is up in seconds, so a tighter bound here.
    deadline = time.monotonic() + min(probe["periodSeconds"] * probe["failureThreshold"], 90)
    last = ""
    while time.monotonic() < deadline:
        status = agent.state()
        assert status.startswith("running"), f"agent container {status}:\n{agent.logs()}"
        r = agent.exec(*probe["exec"]["command"])
        if r.returncode == 0:
            return
        last = r.stdout + r.stderr
        time.sleep(0.5)
    raise AssertionError(f"startup probe never passed: {last}\n{agent.logs()}")


@dataclass
class Cluster:
    node: Node
    api: FakeApiServer
    kubelet: FakeKubelet
    agent: Agent
    # The node's files before nicwarden was installed (kubelet's socket,
    # bpffs's own entries, the node's CNI plugins, the ConfigMap).
    before: list[str]
    allocated: dict[str, str] = field(default_factory=dict)

    @property
    def shim(self) -> Path:
        return self.node.host_path(NODE_CNI_BIN) / "nicwarden"

    def cni(self, command: str, name: str, netns: str, device: str) -> CniOutput:
        config = {**nad_config(self.node), "deviceID": device, "pciBusID": device}
        # The runtime execs the plugin from the node's CNI bin dir and passes
        # that dir as CNI_PATH; the agent execs IPAM from it, mounted at the
        # same path in its container.
        return invoke(
            str(self.shim),
            command,
            config,
            container=f"c-{name}",
            netns=netns_path(netns),
            ifname="net1",
            pod=name,
            namespace="prod",
            cni_path=NODE_CNI_BIN,
        )

    def admit(self, name: str) -> str:
        conn = self.kubelet.wait_for_registration(RESOURCE, timeout=30)
        devices = conn.wait_for(lambda d: len(d) > 0, timeout=30)
        taken = set(self.allocated.values())
        free = [d.ID for d in devices if d.health == "Healthy" and d.ID not in taken]
        (chosen,) = conn.preferred(free, [], 1)
        conn.allocate([chosen])
        self.allocated[name] = chosen
        return chosen


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node(short_tmpdir("nwi"))
    n.bpffs.mkdir()
    run("mount", "-t", "bpf", "bpf", str(n.bpffs))
    n.config_dir.mkdir()
    try:
        yield n
    finally:
        run("umount", "-l", str(n.bpffs), check=False)
        shutil.rmtree(n.root, ignore_errors=True)


@pytest.fixture
def cluster(image: str, node: Node, tmp_path: Path) -> Iterator[Cluster]:
    pod = daemonset(DEPLOY / "daemonset.yaml")
    api = FakeApiServer().start()
    kubelet = FakeKubelet(node.host_path("/var/lib/kubelet/device-plugins"))
    prefix = "i" + uuid.uuid4().hex[:4]
    agent = Agent(f"nicwarden-test-{prefix}", prefix, pod)
    try:
        kubelet.start()
        for obj in (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
            nad(node),
        ):
            api.add(obj)
        (node.config_dir / "config.yaml").write_text(yaml.safe_dump(agent_config(api, node)))
        # The node's reference plugins (host-local IPAM), as a node has them.
        cni_bin = node.host_path(NODE_CNI_BIN)
        cni_bin.mkdir(parents=True)
        shutil.copy2(Path(HOST_CNI_PLUGINS) / "host-local", cni_bin / "host-local")

        before = node_files(node.root)
        # The init container installs the shim; its log says where.
        init = run_to_completion(pod, "install-cni", node)
        assert init.returncode == 0, f"install-cni failed: {init.stdout}{init.stderr}"
        assert f"installed /host{NODE_CNI_BIN}/nicwarden" in init.stdout + init.stderr

        # The agent: the manifest's container on a simulated node (1 PF, 4
        # VFs). The simulator's tree lives in the state hostPath and outlives
        # the agent as a real node's devices do; metrics on a free port, as
        # other agents on this machine use the default one.
        sim = [
            "--simulate",
            "1x4",
            "--sim-prefix",
            prefix,
            "--sim-root",
            "/var/lib/nicwarden/sim",
            "--sim-keep",
            "--metrics-port",
            str(free_port()),
        ]
        argv = podman_argv(
            pod, container(pod, "agent"), node, "--detach", "--name", agent.name, extra_args=sim
        )
        started = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, f"podman could not start the agent: {started.stderr}"
        wait_started(agent)
        # Once started, the readiness and liveness probes pass as well.
        for probe in ("readinessProbe", "livenessProbe"):
            argv = container(pod, "agent")[probe]["exec"]["command"]
            r = agent.exec(*argv)
            assert r.returncode == 0, f"{probe} {argv} failed: {r.stdout}{r.stderr}"
        yield Cluster(node, api, kubelet, agent, before)
    finally:
        # The container's log stays with the test's temp files, for failures.
        (tmp_path / "agent.log").write_text(agent.logs())
        subprocess.run([*podman(), "rm", "-f", "-t", "5", agent.name], capture_output=True)
        cleanup_node(prefix)
        kubelet.stop()
        api.stop()


def node_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def sockets_in(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(e.name for e in directory.iterdir() if stat.S_ISSOCK(e.lstat().st_mode))


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_daemonset_pod_flow_and_uninstall(cluster: Cluster, netns: Callable[[], str]) -> None:
    c, node, agent = cluster, cluster.node, cluster.agent
    shim = c.shim
    assert shim.stat().st_mode & 0o111 and shim.read_bytes()[:4] == b"\x7fELF"

    # Pods: kubelet allocates a VF, Multus runs the shim, the containerised
    # agent moves the VF into the pod's netns.
    nss: dict[str, str] = {}
    ips: dict[str, str] = {}
    for name, app in (("db", "db"), ("web", "web"), ("other", "other")):
        c.api.add(pod_obj(name, app))
        device = c.admit(name)
        nss[name] = netns()
        out = c.cni("ADD", name, nss[name], device)
        assert out.code == 0, f"{out.stdout}{out.stderr}\n{agent.logs()}"
        ips[name] = out.json["ips"][0]["address"].split("/")[0]
        assert ips[name] in run("ip", "-n", nss[name], "-br", "addr", "show", "net1").stdout
    atts = agent.ctl_json("attachments")["attachments"]
    assert sorted(a["pod_name"] for a in atts) == ["db", "other", "web"]
    # Device-info files for Multus, written at Allocate into the hostPath.
    devinfo = node.host_path("/var/run/k8s.cni.cncf.io")
    assert [p for p in devinfo.rglob("*") if p.is_file()], "no device-info file on the node"
    leases = node.host_path("/var/lib/cni") / "networks" / "sriov-net"
    assert {ips[n] for n in ips} <= {p.name for p in leases.iterdir()}

    # A MultiNetworkPolicy from the API, enforced on real traffic.
    srv = Servers(nss["db"], tcp=(5432,))
    try:
        assert tcp_ok(nss["other"], ips["db"], 5432)
        c.api.add(
            {
                "apiVersion": "k8s.cni.cncf.io/v1beta1",
                "kind": "MultiNetworkPolicy",
                "metadata": {
                    "name": "db",
                    "namespace": "prod",
                    "annotations": {"k8s.v1.cni.cncf.io/policy-for": "sriov-net"},
                },
                "spec": {
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
                },
            }
        )
        eventually(lambda: not tcp_ok(nss["other"], ips["db"], 5432))
        assert tcp_ok(nss["web"], ips["db"], 5432)
    finally:
        srv.close()
    pins = node.bpffs / "nicwarden" / f"sim-{agent.prefix}"
    assert pins.is_dir() and any(pins.iterdir())

    # The purge refuses to run while an agent answers on the node.
    purge_pod = daemonset(DEPLOY / "uninstall" / "purge-node-state.yaml")
    early = run_to_completion(purge_pod, "purge", node)
    assert early.returncode != 0 and "still runs" in early.stderr, early.stdout + early.stderr
    assert pins.is_dir() and any(pins.iterdir())

    # docs/uninstall.md, in its order.
    # 1. Stop new attachments: the NAD goes.
    c.api.delete(c.api.get("NetworkAttachmentDefinition", "prod", "sriov-net") or {})
    # 2. The pods go (Multus DELs from its cache); the agent holds nothing.
    for name in nss:
        out = c.cni("DEL", name, nss[name], c.allocated[name])
        assert out.code == 0, f"{out.stdout}{out.stderr}"
        c.api.delete(c.api.get("Pod", "prod", name) or {})
    assert agent.ctl_json("attachments").get("attachments", []) == []
    for i in range(4):
        assert f"{agent.prefix}0v{i}" in run("ip", "-br", "link").stdout  # VFs home
    assert not {ips[n] for n in ips} & {p.name for p in leases.iterdir()}
    # 3. The shim goes, by the uninstall DaemonSet's init container.
    removed = run_to_completion(
        daemonset(DEPLOY / "uninstall" / "remove-cni-shim.yaml"), "remove-cni-shim", node
    )
    assert removed.returncode == 0, removed.stderr
    assert not shim.exists()
    # 4. The agent goes: a clean stop within the grace period.
    grace = str(agent.pod["terminationGracePeriodSeconds"])
    stop = subprocess.run(
        [*podman(), "stop", "-t", grace, agent.name], capture_output=True, text=True, timeout=120
    )
    assert stop.returncode == 0, stop.stderr
    assert agent.state() == "exited 0", agent.logs()
    run_dir = node.host_path("/run/nicwarden")
    kubelet_dir = node.host_path("/var/lib/kubelet/device-plugins")
    assert sockets_in(run_dir) == [], "the agent's sockets outlived it"
    assert sockets_in(kubelet_dir) == ["kubelet.sock"], "device plugin sockets left"
    # What the page says stays: the pins and the state database.
    assert pins.is_dir() and any(pins.iterdir())
    state = node.host_path("/var/lib/nicwarden")
    assert any(p.name.startswith("state") or p.suffix == ".db" for p in state.iterdir()), list(
        state.iterdir()
    )
    # 5. The purge removes them.
    purged = run_to_completion(purge_pod, "purge", node)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (node.bpffs / "nicwarden").exists()
    assert list(run_dir.iterdir()) == [] and list(state.iterdir()) == []

    # The node is left clean: no shim, socket, pin, state or device-info
    # file; what remains beyond what was there before is host-local's own
    # bookkeeping in /var/lib/cni, which the page keeps.
    bookkeeping = ("last_reserved_ip", "lock")
    stray = [
        f
        for f in node_files(node.root)
        if f not in c.before
        and not (
            f.startswith("var/lib/cni/networks/") and f.rsplit("/", 1)[-1].startswith(bookkeeping)
        )
    ]
    assert stray == [], f"left on the node after uninstall: {stray}"
