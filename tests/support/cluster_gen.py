"""A generated cluster for scale tests and benchmarks (issue 14).

Deterministic for a given ``ClusterSpec`` (seeded): N pods in N/20
namespaces, NADs, valid MultiNetworkPolicies of several shapes (podSelector,
namespaceSelector, matchExpressions, ipBlock with except, ports and port
ranges), and realistic pods of about 6 KiB (labels, ownerReferences,
managedFields, containers, conditions and Multus network-status) on
``remote_nodes`` other nodes, plus ``local_pods`` pods on the local node that
a test attaches for real with CNI ADD.

Address plan, so tests can pick addresses no generated object covers:
remote pods' secondary IPs are in 10.128.0.0/9, the cluster network in
10.0.0.0/12, ipBlocks in 172.16.0.0/12; ``LOCAL_SUBNET`` and
``FREE_PEER_SUBNET`` are left alone.

The big, identical parts of a pod (container specs, managedFields, status)
are shared between pods: the fixture never changes a stored object in
place, and sharing keeps generation fast and the server's memory small
while every pod still serializes to its full size on the wire.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NET_STATUS = "k8s.v1.cni.cncf.io/network-status"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"
LOCAL_SUBNET = "10.250.0.0/16"
FREE_PEER_SUBNET = "10.251.0.0/16"
APPS = 50
TEAMS = 7
TIERS = ("front", "back", "db")


@dataclass(frozen=True)
class ClusterSpec:
    pods: int = 10_000
    nads: int = 1_000
    policies: int = 2_000
    remote_nodes: int = 500
    local_pods: int = 200
    local_node: str = "bench-node"
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("pods", "nads", "policies", "remote_nodes", "local_pods"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.remote_nodes < 1 or self.nads < 1:
            raise ValueError("need at least one remote node and one NAD")
        if self.pods >= 1 << 23:
            raise ValueError("pods must fit the 10.128.0.0/9 address plan")

    @property
    def namespaces(self) -> int:
        return max(1, self.pods // 20)

    def nads_in(self, ns: int) -> int:
        """How many NADs (``net-0`` …) namespace ``ns`` holds: NADs go round
        the namespaces, so with more namespaces than NADs the later ones
        have none and their pods are on the cluster network only."""
        n = self.namespaces
        return self.nads // n + (1 if ns < self.nads % n else 0)

    @property
    def local_namespaces(self) -> int:
        """Local pods live in the first namespaces, which all hold a NAD."""
        return max(1, min(20, self.namespaces, self.nads))


def ns_name(i: int) -> str:
    return f"ns-{i}"


def remote_ip(i: int) -> str:
    return f"10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def namespace(spec: ClusterSpec, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns_name(i),
            "labels": {"team": f"team-{i % TEAMS}", "env": ("prod", "staging")[i % 2]},
        },
    }


def nad(spec: ClusterSpec, i: int) -> dict[str, Any]:
    ns, k = i % spec.namespaces, i // spec.namespaces
    name = f"net-{k}"
    config = {
        "cniVersion": "1.0.0",
        "name": name,
        "type": "nicwarden",
        "vlan": 100 + i % 3000,
        "ipam": {"type": "host-local", "subnet": f"10.{128 + (i >> 8) % 100}.{i & 255}.0/24"},
    }
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": name,
            "namespace": ns_name(ns),
            "annotations": {"k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_netdevice"},
        },
        "spec": {"config": json.dumps(config)},
    }


def _policy_for(spec: ClusterSpec, ns: int, rnd: random.Random) -> str:
    have = spec.nads_in(ns)
    if have:
        return f"net-{rnd.randrange(have)}"
    return f"{ns_name(0)}/net-0"  # a namespace without NADs polices a shared one


def _ports(rnd: random.Random) -> list[dict[str, Any]]:
    shape = rnd.randrange(3)
    if shape == 0:
        return [{"protocol": "TCP", "port": rnd.choice((80, 443, 8080, 5432))}]
    if shape == 1:
        start = rnd.randrange(1024, 60000)
        return [{"protocol": "UDP", "port": start, "endPort": start + rnd.randrange(1, 500)}]
    return [{"protocol": "TCP", "port": "http"}, {"protocol": "SCTP", "port": 38412}]


def _ip_block(rnd: random.Random) -> dict[str, Any]:
    a, b = rnd.randrange(16, 32), rnd.randrange(256)
    return {"ipBlock": {"cidr": f"172.{a}.{b}.0/24", "except": [f"172.{a}.{b}.128/25"]}}


def policy(spec: ClusterSpec, i: int) -> dict[str, Any]:
    rnd = random.Random(spec.seed * 1_000_003 + i)
    ns = i % spec.namespaces
    app = f"app-{rnd.randrange(APPS)}"
    peer_app = f"app-{rnd.randrange(APPS)}"
    shape = i % 4
    body: dict[str, Any]
    if shape == 0:  # podSelector peers, ingress, ports
        body = {
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"tier": rnd.choice(TIERS)}}}],
                    "ports": _ports(rnd),
                }
            ],
        }
    elif shape == 1:  # namespaceSelector + podSelector peers, egress
        body = {
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": [app]}]
            },
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"team": f"team-{rnd.randrange(TEAMS)}"}
                            },
                            "podSelector": {"matchLabels": {"app": peer_app}},
                        }
                    ]
                }
            ],
        }
    elif shape == 2:  # ipBlocks with except, both directions
        body = {
            "podSelector": {"matchLabels": {"tier": rnd.choice(TIERS)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [_ip_block(rnd), _ip_block(rnd)], "ports": _ports(rnd)}],
            "egress": [{"to": [_ip_block(rnd)]}],
        }
    else:  # a mix, with a namespace-wide selector
        body = {
            "podSelector": {},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": peer_app}}},
                        {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
                        _ip_block(rnd),
                    ]
                }
            ],
        }
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": f"mnp-{i}",
            "namespace": ns_name(ns),
            "annotations": {POLICY_FOR: _policy_for(spec, ns, rnd)},
        },
        "spec": body,
    }


def _shared() -> dict[str, Any]:
    env = [{"name": f"SETTING_{k}", "value": f"value-{k}-" + "v" * 20} for k in range(12)]
    container = {
        "name": "main",
        "image": "registry.example/app/main:1.2.3",
        "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {
            "limits": {"cpu": "2", "memory": "2Gi", "intel.com/sriov_netdevice": "1"},
            "requests": {"cpu": "1", "intel.com/sriov_netdevice": "1"},
        },
        "volumeMounts": [{"name": f"vol-{k}", "mountPath": f"/mnt/{k}"} for k in range(6)],
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
    }
    return {
        "managed": [
            {
                "manager": m,
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-11-01T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {f"f:{k}": {} for k in range(15)},
            }
            for m in ("kube-controller-manager", "kubelet", "multus")
        ],
        "containers": [container, container | {"name": "sidecar", "ports": []}],
        "volumes": [{"name": f"vol-{k}", "emptyDir": {}} for k in range(6)],
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}
        ],
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": "2026-11-01T10:00:00Z"}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "container_status": [
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
    }


_SHARED = _shared()


def _mac(i: int) -> str:
    return f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def pod(
    spec: ClusterSpec,
    i: int,
    *,
    name: str | None = None,
    node: str | None = None,
    labels: dict[str, str] | None = None,
    ip: str | None = None,
    prefix: str = "p",
) -> dict[str, Any]:
    """Remote pod ``i``: on a NAD of its namespace if it has any, else on the
    cluster network only (a pod no MultiNetworkPolicy can reach)."""
    ns = i % spec.namespaces
    app = f"app-{i % APPS}"
    ns_key = ns_name(ns)
    name = name or f"{app}-{prefix}{i:07d}-x7k2p"
    cluster_ip = f"10.{i >> 16 & 15}.{i >> 8 & 255}.{i & 255}"
    status: list[dict[str, Any]] = [
        {
            "name": "cbr0",
            "interface": "eth0",
            "ips": [cluster_ip],
            "mac": "0a:58:0a:f4:00:01",
            "default": True,
            "dns": {},
        }
    ]
    networks = ""
    have = spec.nads_in(ns)
    if have:
        net = f"net-{i % have}"
        networks = net
        status.append(
            {
                "name": f"{ns_key}/{net}",
                "interface": "net1",
                "ips": [ip or remote_ip(i)],
                "mac": _mac(i),
                "dns": {},
                "device-info": {
                    "type": "pci",
                    "version": "1.1.0",
                    "pci": {"pci-address": f"0000:3b:{2 + i % 8:02x}.{i % 8}"},
                },
            }
        )
    annotations = {
        NET_STATUS: json.dumps(status),
        "kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z",
    }
    if networks:
        annotations[NETWORKS] = networks
    s = _SHARED
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": name[:-5],
            "namespace": ns_key,
            "labels": labels
            or {
                "app": app,
                "pod-template-hash": f"{i % APPS:08x}",
                "tier": TIERS[i % 3],
                "team": f"team-{i % TEAMS}",
            },
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{app}-{i % APPS:08x}",
                    "uid": f"{i % APPS:08x}-0000-4000-8000-000000000000",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": s["managed"],
        },
        "spec": {
            "containers": s["containers"],
            "volumes": s["volumes"],
            "tolerations": s["tolerations"],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "nodeName": node or f"node-{i % spec.remote_nodes}",
        },
        "status": {
            "phase": "Running",
            "conditions": s["conditions"],
            "containerStatuses": s["container_status"],
            "hostIP": f"192.168.{i % spec.remote_nodes >> 8}.{i % spec.remote_nodes & 255}",
            "podIP": cluster_ip,
            "podIPs": [{"ip": cluster_ip}],
            "qosClass": "Burstable",
            "startTime": "2026-11-01T10:00:00Z",
        },
    }


@dataclass(frozen=True)
class LocalPod:
    """A pod on the local node; the test gives it a real attachment."""

    namespace: str
    name: str
    network: str  # the NAD name in ``namespace``, also the CNI network name
    labels: dict[str, str]

    def obj(self, spec: ClusterSpec, index: int) -> dict[str, Any]:
        o = pod(spec, index, name=self.name, node=spec.local_node, labels=self.labels)
        meta = o["metadata"]
        meta["namespace"] = self.namespace
        # Multus writes network-status after ADD; until then only networks.
        meta["annotations"] = {NETWORKS: self.network}
        return o


def local_pods(spec: ClusterSpec) -> list[LocalPod]:
    out = []
    for j in range(spec.local_pods):
        ns = j % spec.local_namespaces
        out.append(
            LocalPod(
                namespace=ns_name(ns),
                name=f"local-{j:04d}",
                network=f"net-{j % spec.nads_in(ns)}",
                labels={"app": f"app-{j % APPS}", "tier": TIERS[j % 3], "team": f"team-{j % 7}"},
            )
        )
    return out


def objects(spec: ClusterSpec) -> Iterator[dict[str, Any]]:
    """Every object, in an order a fixture can load (namespaces first)."""
    for i in range(spec.namespaces):
        yield namespace(spec, i)
    for i in range(spec.nads):
        yield nad(spec, i)
    for i in range(spec.policies):
        yield policy(spec, i)
    for j, lp in enumerate(local_pods(spec)):
        yield lp.obj(spec, spec.pods + j)
    for i in range(spec.pods):
        yield pod(spec, i)


def load(server: Any, spec: ClusterSpec) -> int:
    """Load the cluster into a FakeApiServer (before anyone watches) and
    compact its history, as an API server that has run for a while would
    have. Returns the number of objects."""
    objs = list(objects(spec))
    server.add_many(objs)
    server.compact()
    return len(objs)
