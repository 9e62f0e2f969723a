"""deploy/: every manifest is one a real cluster would accept, and says what
the code needs.

Built-in kinds are deserialized into the ``kubernetes`` client's models and
serialized back: a field the API does not know (a typo) is dropped on the way
and shows up as a difference, and a missing required field fails outright.
CRDs are checked against the structural-schema rules the API server enforces,
and the example objects are validated against those schemas with a small
OpenAPI v3 subset validator. The config, the CNI configs and the policies go
through the agent's own parsers.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from nicwarden.agent import ctl, daemon
from nicwarden.agent.config import load_config
from nicwarden.agent.devices.spec import parse_sriov
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.policy.mnp import POLICY_FOR, parse_policy
from nicwarden.cni import install as shim_install
from nicwarden.cni.install import PLUGIN_NAME
from nicwarden.cni.request import Command, parse_request
from nicwarden.deviceplugin.config import parse_resource_list

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

NETWORKS = "k8s.v1.cni.cncf.io/networks"
RESOURCE_NAME = "k8s.v1.cni.cncf.io/resourceName"
NAMESPACE = "nicwarden"
CNI_GROUP = "k8s.cni.cncf.io"

# (apiVersion, kind) -> the kubernetes client model it must deserialize into.
BUILTIN_MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
    ("resource.k8s.io/v1", "DeviceClass"): "V1DeviceClass",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "V1ResourceClaimTemplate",
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicy",
    ): "V1ValidatingAdmissionPolicy",
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
    ): "V1ValidatingAdmissionPolicyBinding",
}
CUSTOM_KINDS = {
    (f"{CNI_GROUP}/v1", "NetworkAttachmentDefinition"),
    (f"{CNI_GROUP}/v1beta1", "MultiNetworkPolicy"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


# -- loading ------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name"))

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}[{self.index}] {self.kind}/{self.name}"


def load_docs(root: Path = DEPLOY) -> list[Doc]:
    docs = []
    for path in sorted(root.rglob("*.yaml")):
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body is not None:
                docs.append(Doc(path, index, body))
    return docs


DOCS = load_docs()


def docs_of(kind: str, under: str = "") -> list[Doc]:
    base = DEPLOY / under
    return [d for d in DOCS if d.kind == kind and base in (d.path, *d.path.parents)]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d.body for d in DOCS if d.kind == kind and d.name == name]
    assert len(found) == 1, f"expected one {kind}/{name} under deploy/, found {len(found)}"
    return found[0]


def agent_ds() -> dict[str, Any]:
    return one("DaemonSet", "nicwarden")


def pod_spec(ds: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def agent_container() -> dict[str, Any]:
    containers = pod_spec(agent_ds())["containers"]
    assert [c["name"] for c in containers] == ["agent"], "the agent runs in one container"
    container: dict[str, Any] = containers[0]
    return container


def host_volumes(spec: Mapping[str, Any]) -> dict[str, str]:
    """Volume name -> host path, for hostPath volumes."""
    return {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}


def mounts_by_host_path(spec: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    hosts = host_volumes(spec)
    return {hosts[m["name"]]: m for m in container["volumeMounts"] if m["name"] in hosts}


def config_text() -> str:
    cm = one("ConfigMap", "nicwarden-config")
    text: str = cm["data"]["config.yaml"]
    return text


def load_agent_config() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_text())
        return load_config(path, {})


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match
    return match[1]


# -- the kubernetes client models ----------------------------------------------

_API = ApiClient()


def to_model(body: Mapping[str, Any], model: str) -> Any:
    return _API.deserialize(json.dumps(body), model, "application/json")


def round_trip(body: Mapping[str, Any], model: str) -> Any:
    return _API.sanitize_for_serialization(to_model(body, model))


def _differences(a: object, b: object, path: str = "") -> Iterator[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in b:
                yield f"{path}.{key}: unknown to the API (typo?)"
            elif key not in a:
                yield f"{path}.{key}: added by the model"
            else:
                yield from _differences(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} became {b!r}"
    elif type(a) is not type(b) and not {type(a), type(b)} <= {int, float}:
        yield f"{path}: {a!r} became {b!r} ({type(b).__name__})"  # e.g. true -> 1


def test_every_yaml_file_is_a_known_kind() -> None:
    assert DOCS, "no manifests found"
    for doc in DOCS:
        key = (doc.body.get("apiVersion"), doc.body.get("kind"))
        assert key in BUILTIN_MODELS or key in CUSTOM_KINDS, f"{doc}: unexpected {key}"


@pytest.mark.parametrize(
    "doc",
    [d for d in DOCS if (d.body.get("apiVersion"), d.kind) in BUILTIN_MODELS],
    ids=str,
)
def test_builtin_kinds_deserialize_without_losing_fields(doc: Doc) -> None:
    model = BUILTIN_MODELS[(doc.body["apiVersion"], doc.kind)]
    back = round_trip(doc.body, model)
    assert list(_differences(doc.body, back)) == [], doc


def test_round_trip_catches_a_typo() -> None:
    body = copy.deepcopy(agent_ds())
    pod_spec(body)["hostNetwrok"] = True
    assert list(_differences(body, round_trip(body, "V1DaemonSet")))


def test_namespaced_objects_live_in_the_agent_namespace() -> None:
    for doc in DOCS:
        if doc.kind in ("ServiceAccount", "ConfigMap", "DaemonSet"):
            assert doc.body["metadata"].get("namespace") == NAMESPACE, doc


def test_namespace_allows_privileged_pods() -> None:
    labels = one("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_every_image_is_the_project_version() -> None:
    version = project_version()
    for doc in docs_of("DaemonSet"):
        spec = pod_spec(doc.body)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["image"].endswith(f"/nicwarden:{version}"), (doc, c["name"], c["image"])


# -- the agent DaemonSet ------------------------------------------------------------


def test_daemonset_shape() -> None:
    ds = agent_ds()
    spec = pod_spec(ds)
    assert ds["metadata"]["namespace"] == NAMESPACE
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is False
    assert spec.get("hostIPC", False) is False
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == one("ServiceAccount", "nicwarden")["metadata"]["name"]
    assert spec["nodeSelector"]["nicwarden.io/enabled"] == "true"
    # Tolerates every taint: one toleration with operator Exists and no key/effect.
    assert {"operator": "Exists"} in spec["tolerations"]
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 1
    assert strategy["rollingUpdate"].get("maxSurge", 0) == 0  # one agent per node, ever
    assert spec["terminationGracePeriodSeconds"] >= 30
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_agent_command_reads_the_configmap() -> None:
    c = agent_container()
    argv = [*c["command"], *c.get("args", [])]
    assert argv == ["nicwarden-agent", "--config", "/etc/nicwarden/config.yaml"]
    args = daemon.build_parser().parse_args(argv[1:])
    config_path = PurePosixPath(str(args.config))
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod_spec(agent_ds())["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "nicwarden-config"
    items = {i["key"]: i["path"] for i in volume["configMap"].get("items", [])}
    assert items.get("config.yaml", "config.yaml") == config_path.name
    assert "subPath" not in mount  # a subPath mount would never see ConfigMap updates


EXPECTED_CAPS = {"NET_ADMIN", "SYS_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE"}


def test_agent_security_context() -> None:
    sc = agent_container()["securityContext"]
    assert sc.get("privileged", False) is False
    assert set(sc["capabilities"]["add"]) == EXPECTED_CAPS
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] == 0  # root-only sockets, root-owned sysfs attributes
    # The API server rejects allowPrivilegeEscalation: false with CAP_SYS_ADMIN.
    assert sc.get("allowPrivilegeEscalation", True) is True
    # Writes under /sys are denied by the runtimes' default AppArmor profile.
    assert sc["appArmorProfile"]["type"] == "Unconfined"
    assert sc["seccompProfile"]["type"] in ("RuntimeDefault", "Unconfined")
    if sc.get("readOnlyRootFilesystem"):
        tmp = next(m for m in agent_container()["volumeMounts"] if m["mountPath"] == "/tmp")
        volume = next(v for v in pod_spec(agent_ds())["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume


def test_every_added_capability_is_justified_in_a_comment() -> None:
    lines = (DEPLOY / "daemonset.yaml").read_text().splitlines()
    for cap in EXPECTED_CAPS:
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {cap}"]
        assert lines[index - 1].strip().startswith("#"), f"{cap} has no comment saying why"


def test_no_bidirectional_propagation_without_privileged() -> None:
    # The API server allows Bidirectional only in privileged containers.
    for doc in docs_of("DaemonSet"):
        spec = pod_spec(doc.body)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            privileged = c.get("securityContext", {}).get("privileged", False)
            for m in c.get("volumeMounts", []):
                if m.get("mountPropagation") == "Bidirectional":
                    assert privileged, (doc, c["name"], m["mountPath"])


# host path -> (read-only, mount propagation) the agent container must have it with.
REQUIRED_HOST_MOUNTS: dict[str, tuple[bool, str | None]] = {
    "/sys": (False, None),  # sriov_numvfs, bind/unbind, driver_override
    "/dev": (True, None),  # /dev/vfio/<group>
    "/run/netns": (True, "HostToContainer"),  # new netns appear, unmounts propagate
    "/var/lib/kubelet/device-plugins": (False, None),
    "/var/run/k8s.cni.cncf.io": (False, None),
    "/opt/cni/bin": (True, None),  # IPAM plugins, exec'd from CNI_PATH
    "/var/lib/cni": (False, None),  # host-local leases
    "/sys/fs/bpf": (False, "HostToContainer"),
    "/run/nicwarden": (False, None),
    "/var/lib/nicwarden": (False, None),
    "/lib/modules": (True, None),
    "/usr/src": (True, None),
    # DRA: registration socket, DRA socket, per-claim CDI specs.
    "/var/lib/kubelet/plugins_registry": (False, None),
    "/var/lib/kubelet/plugins": (False, None),
    "/var/run/cdi": (False, None),
}


def test_agent_mounts_every_host_path_it_needs() -> None:
    spec = pod_spec(agent_ds())
    mounts = mounts_by_host_path(spec, agent_container())
    assert set(REQUIRED_HOST_MOUNTS) <= set(mounts), set(REQUIRED_HOST_MOUNTS) - set(mounts)
    for host_path, (read_only, propagation) in REQUIRED_HOST_MOUNTS.items():
        m = mounts[host_path]
        # Host paths cross process boundaries (CNI_NETNS, CNI_PATH, device
        # specs kubelet reads): the container sees each at its host location.
        assert m["mountPath"] == host_path, m
        assert m.get("readOnly", False) is read_only, m
        assert m.get("mountPropagation") == propagation, m


def test_volumes_and_mounts_match() -> None:
    for doc in docs_of("DaemonSet"):
        spec = pod_spec(doc.body)
        names = [v["name"] for v in spec["volumes"]]
        assert len(names) == len(set(names)), doc
        used = {
            m["name"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]
            for m in c.get("volumeMounts", [])
        }
        assert used == set(names), (doc, used ^ set(names))


def test_init_container_installs_the_shim() -> None:
    spec = pod_spec(agent_ds())
    (init,) = spec["initContainers"]
    argv = [*init["command"], *init.get("args", [])]
    assert argv == [
        "nicwardenctl",
        "install-cni",
        "--dir",
        "/host/opt/cni/bin",
    ]
    args = ctl.build_parser().parse_args(argv[1:])
    assert args.command == "install-cni" and args.local is ctl.cmd_install_cni
    mounts = mounts_by_host_path(spec, init)
    assert mounts["/opt/cni/bin"]["mountPath"] == args.dir
    assert not mounts["/opt/cni/bin"].get("readOnly", False)
    # The agent execs IPAM plugins from the same directory the shim goes to.
    assert mounts_by_host_path(spec, agent_container())["/opt/cni/bin"]["mountPath"] == (
        "/opt/cni/bin"
    )


def _probe_args(probe: Mapping[str, Any]) -> Any:
    argv = probe["exec"]["command"]
    assert argv[0] == "nicwardenctl", argv
    return ctl.build_parser().parse_args(argv[1:])


def test_probes_use_nicwardenctl() -> None:
    c = agent_container()
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[name]
        args = _probe_args(probe)
        assert args.command in ("health", "version"), (name, args.command)
        # The CLI gives up before kubelet does, so a hung agent reads as a failure.
        assert args.timeout < probe["timeoutSeconds"], name
        assert args.socket == str(load_agent_config().socket), name
    assert _probe_args(c["readinessProbe"]).command == "health"
    assert _probe_args(c["startupProbe"]).command == "health"


def test_every_container_has_requests_and_limits() -> None:
    for doc in docs_of("DaemonSet"):
        spec = pod_spec(doc.body)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), (doc, c["name"])
            assert {"cpu", "memory"} <= set(res["limits"]), (doc, c["name"])


# -- the config --------------------------------------------------------------------


def test_configmap_validates_with_load_config() -> None:
    cfg = load_agent_config()
    parsed = parse_resource_list(cfg.resource_list, cfg.resource_prefix)
    assert parsed.errors == ()
    assert {p.resource for p in parsed.pools} == {
        "intel.com/sriov_netdevice",
        "intel.com/sriov_dpdk",
    }
    assert parse_sriov(cfg.sriov, "configmap")


def test_config_sockets_are_where_the_shim_and_cli_look() -> None:
    cfg = load_agent_config()
    # The shim on the host does not read the agent's config.
    assert str(cfg.cni_socket) == shim_install.DEFAULT_SOCKET
    assert str(cfg.socket) == ctl.DEFAULT_SOCKET
    assert ipaddress.ip_address(cfg.metrics.address).is_loopback


def test_config_paths_are_inside_the_agent_mounts() -> None:
    cfg = load_agent_config()
    spec = pod_spec(agent_ds())
    hosts = host_volumes(spec)
    mounts = [m for m in agent_container()["volumeMounts"] if m["name"] in hosts]
    writable = {
        "stateDir": cfg.state_dir,
        "socket": cfg.socket.parent,
        "cniSocket": cfg.cni_socket.parent,
        "sysfsRoot": cfg.sysfs_root,
        "kubeletDir": cfg.kubelet_dir,
        "deviceInfoDir": cfg.device_info_dir,
    }
    readable = {"devRoot": cfg.dev_root}
    for key, path in {**writable, **readable}.items():
        covering = [
            m for m in mounts if PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"]))
        ]
        assert covering, f"{key}={path} is outside every hostPath mount"
        m = max(covering, key=lambda m: len(m["mountPath"]))
        # Same place on the host as in the container.
        assert hosts[m["name"]] == m["mountPath"], (key, m)
        if key in writable:
            assert not m.get("readOnly", False), (key, m)


def test_pools_and_provisioning_agree() -> None:
    """Each pool's VF index ranges sit on the driver its selector asks for,
    per the ``sriov`` entry that provisions that PF."""
    cfg = load_agent_config()
    policies = {name: p for p in parse_sriov(cfg.sriov) for name in p.pf_names}
    pools = parse_resource_list(cfg.resource_list, cfg.resource_prefix).pools
    drivers_seen = set()
    for pool in pools:
        for sel in pool.selectors:
            for ref in sel.pf_names:
                policy = policies[ref.key]
                assert ref.vfs is not None
                for r in ref.vfs:
                    for index in range(r.first, r.last + 1):
                        assert index < policy.num_vfs, (pool.name, index)
                        driver = policy.driver_for(index)
                        want = "vfio-pci" if "vfio-pci" in sel.drivers else "kernel"
                        assert driver == want, (pool.name, index, driver)
                        drivers_seen.add(driver)
    assert drivers_seen == {"vfio-pci", "kernel"}


# -- RBAC ----------------------------------------------------------------------------

EXPECTED_RULES = {
    ("", "namespaces", "get"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    (CNI_GROUP, "network-attachment-definitions", "get"),
    (CNI_GROUP, "network-attachment-definitions", "list"),
    (CNI_GROUP, "network-attachment-definitions", "watch"),
    (CNI_GROUP, "multi-networkpolicies", "get"),
    (CNI_GROUP, "multi-networkpolicies", "list"),
    (CNI_GROUP, "multi-networkpolicies", "watch"),
    ("", "events", "create"),
    ("", "events", "patch"),
    *(
        ("resource.k8s.io", "resourceslices", verb)
        for verb in ("get", "list", "watch", "create", "update", "delete")
    ),
    ("resource.k8s.io", "resourceclaims", "get"),
    ("resource.k8s.io", "resourceclaims/status", "get"),
    ("resource.k8s.io", "resourceclaims/status", "patch"),
    ("resource.k8s.io", "resourceclaims/driver", "associated-node:patch"),
    ("resource.k8s.io", "resourceclaims/driver", "associated-node:update"),
}
# The one rule that may name resources: claim status is authorized per DRA
# driver, and the agent's is the configured one.
DRA_DRIVER_RULE = ("resource.k8s.io", "resourceclaims/driver")


def test_cluster_role_is_exactly_least_privilege() -> None:
    role = one("ClusterRole", "nicwarden")
    granted = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        if "resourceNames" in rule:
            assert [(g, r) for g in rule["apiGroups"] for r in rule["resources"]] == [
                DRA_DRIVER_RULE
            ], rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    assert granted == EXPECTED_RULES


def test_cluster_role_covers_what_the_agent_watches() -> None:
    kinds = pytest.importorskip("nicwarden.agent.k8s.kinds")
    role = one("ClusterRole", "nicwarden")
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for resource in kinds.RESOURCES.values():
        for verb in ("list", "watch"):
            assert (resource.group, resource.plural, verb) in granted, (resource, verb)


def test_binding_ties_the_role_to_the_service_account() -> None:
    binding = one("ClusterRoleBinding", "nicwarden")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "nicwarden",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nicwarden", "namespace": NAMESPACE}
    ]


# -- CRDs: structural schemas --------------------------------------------------------

_SCHEMA_KEYS = {
    "description",
    "type",
    "format",
    "properties",
    "required",
    "items",
    "enum",
    "additionalProperties",
    "anyOf",
    "minimum",
    "maximum",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """The apiextensions/v1 structural-schema rules our CRDs rely on."""
    unknown = set(schema) - _SCHEMA_KEYS
    if unknown:
        yield f"{path}: unsupported keywords {sorted(unknown)}"
    if schema.get("x-kubernetes-int-or-string"):
        if "type" in schema:
            yield f"{path}: int-or-string must not set type"
        if schema.get("anyOf", INT_OR_STRING) != INT_OR_STRING:
            yield f"{path}: int-or-string anyOf must be integer|string"
        return
    if "anyOf" in schema:
        yield f"{path}: anyOf only for int-or-string here"
    kind = schema.get("type")
    if kind not in _TYPES and not schema.get("x-kubernetes-preserve-unknown-fields"):
        yield f"{path}: every node needs a type, got {kind!r}"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{path}: properties and additionalProperties are exclusive"
    if ("properties" in schema or "additionalProperties" in schema) and kind != "object":
        yield f"{path}: properties on a {kind}"
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            yield f"{path}: required {name!r} is not a property"
    if kind == "array":
        if not isinstance(schema.get("items"), Mapping):
            yield f"{path}: an array needs one items schema"
        else:
            yield from structural_problems(schema["items"], f"{path}[]")
    for name, sub in schema.get("properties", {}).items():
        yield from structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from structural_problems(schema["additionalProperties"], f"{path}.*")
    for value in schema.get("enum", []):
        if validate(value, {k: v for k, v in schema.items() if k != "enum"}):
            yield f"{path}: enum value {value!r} is not a {kind}"


def crd(plural: str) -> dict[str, Any]:
    return one("CustomResourceDefinition", f"{plural}.{CNI_GROUP}")


def crd_schema(plural: str, version: str) -> dict[str, Any]:
    (v,) = [v for v in crd(plural)["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("plural", "kind", "version"),
    [
        ("network-attachment-definitions", "NetworkAttachmentDefinition", "v1"),
        ("multi-networkpolicies", "MultiNetworkPolicy", "v1beta1"),
    ],
)
def test_crd_identity_and_versions(plural: str, kind: str, version: str) -> None:
    spec = crd(plural)["spec"]
    assert spec["group"] == CNI_GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural and spec["names"]["kind"] == kind
    versions = {v["name"]: v for v in spec["versions"]}
    assert versions[version]["served"] is True and versions[version]["storage"] is True
    assert [v["name"] for v in spec["versions"] if v["storage"]] == [version]
    schema = crd_schema(plural, version)
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert list(structural_problems(schema)) == []


def test_crds_match_what_the_agent_watches() -> None:
    kinds = pytest.importorskip("nicwarden.agent.k8s.kinds")
    for kind in ("NetworkAttachmentDefinition", "MultiNetworkPolicy"):
        r = kinds.RESOURCES[kind]
        spec = crd(r.plural)["spec"]
        assert (spec["group"], spec["names"]["kind"]) == (r.group, kind)
        assert any(v["name"] == r.version and v["served"] for v in spec["versions"])


def test_nad_schema_is_the_npwg_one() -> None:
    spec = crd_schema("network-attachment-definitions", "v1")["properties"]["spec"]
    assert spec["properties"] == {
        "config": spec["properties"]["config"] | {"type": "string"},
    }
    assert "required" not in spec  # an empty spec means "the on-disk config"


def test_mnp_schema_mirrors_network_policy_spec() -> None:
    spec = crd_schema("multi-networkpolicies", "v1beta1")["properties"]["spec"]
    assert spec["required"] == ["podSelector"]
    props = spec["properties"]
    assert set(props) == {"podSelector", "policyTypes", "ingress", "egress"}
    assert set(props["policyTypes"]["items"]["enum"]) == {"Ingress", "Egress"}
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rule = props[direction]["items"]["properties"]
        assert set(rule) == {"ports", peers}
        port = rule["ports"]["items"]["properties"]
        assert set(port) == {"protocol", "port", "endPort"}
        assert port["port"]["x-kubernetes-int-or-string"] is True
        assert port["endPort"]["type"] == "integer" and port["endPort"]["format"] == "int32"
        assert set(port["protocol"]["enum"]) == {"TCP", "UDP", "SCTP"}
        peer = rule[peers]["items"]["properties"]
        assert set(peer) == {"podSelector", "namespaceSelector", "ipBlock"}
        assert peer["ipBlock"]["required"] == ["cidr"]
        assert set(peer["ipBlock"]["properties"]) == {"cidr", "except"}
        for selector in (peer["podSelector"], peer["namespaceSelector"]):
            assert set(selector["properties"]) == {"matchLabels", "matchExpressions"}


# -- a structural OpenAPI v3 subset validator ------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(value: object, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Problems with ``value`` under ``schema``: type, properties (unknown ones
    are errors, as with kubectl's strict field validation), required, items,
    enum, minimum/maximum, int32 and x-kubernetes-int-or-string."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = _is_int(value) or isinstance(value, str)
        return [] if ok else [f"{path}: expected an integer or a string, got {value!r}"]
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, Mapping),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": _is_int,
        "number": lambda v: _is_int(v) or isinstance(v, float),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is None:
        return []
    if not checks[kind](value):
        return [f"{path}: expected {kind}, got {value!r}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if kind in ("integer", "number"):
        assert isinstance(value, int | float)
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} is above {schema['maximum']}")
        if schema.get("format") == "int32" and not -(2**31) <= value < 2**31:
            problems.append(f"{path}: {value} is not an int32")
    if kind == "object":
        assert isinstance(value, Mapping)
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}.{name}: required")
        for name, sub in value.items():
            if path == "" and name == "metadata":
                continue  # ObjectMeta: validated by the API server, not the CRD schema
            if name in props:
                problems += validate(sub, props[name], f"{path}.{name}")
            elif isinstance(extra, Mapping):
                problems += validate(sub, extra, f"{path}.{name}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                problems.append(f"{path}.{name}: unknown field")
    if kind == "array":
        assert isinstance(value, list)
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{path}[{i}]")
    return problems


def test_examples_validate_against_the_crds() -> None:
    checked = 0
    for doc in DOCS:
        if doc.kind == "NetworkAttachmentDefinition":
            schema = crd_schema("network-attachment-definitions", "v1")
        elif doc.kind == "MultiNetworkPolicy":
            schema = crd_schema("multi-networkpolicies", "v1beta1")
        else:
            continue
        assert validate(doc.body, schema) == [], doc
        checked += 1
    assert checked >= 5


MNP_BASE = {
    "apiVersion": f"{CNI_GROUP}/v1beta1",
    "kind": "MultiNetworkPolicy",
    "metadata": {"name": "p", "namespace": "default"},
    "spec": {"podSelector": {}},
}


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({"policyTypes": ["Both"]}, "not one of"),
        ({"ingress": [{"ports": [{"protocol": "tcp"}]}]}, "not one of"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": "90"}]}]}, "expected integer"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]}, "above"),
        ({"ingress": [{"ports": [{"port": 1.5}]}]}, "integer or a string"),
        ({"ingress": [{"from": [{"ipBlock": {"except": ["10.0.0.0/8"]}}]}]}, "cidr: required"),
        ({"ingress": [{"from": [{"podSelecter": {}}]}]}, "unknown field"),
        (
            {"egress": [{"to": [{"podSelector": {"matchExpressions": [{"key": "a"}]}}]}]},
            "operator: required",
        ),
    ],
)
def test_mnp_schema_rejects_bad_objects(patch: dict[str, Any], problem: str) -> None:
    schema = crd_schema("multi-networkpolicies", "v1beta1")
    body = copy.deepcopy(MNP_BASE)
    body["spec"].update(patch)
    problems = validate(body, schema)
    assert any(problem in p for p in problems), problems


def test_mnp_schema_requires_a_pod_selector() -> None:
    body = copy.deepcopy(MNP_BASE)
    del body["spec"]["podSelector"]
    assert validate(body, crd_schema("multi-networkpolicies", "v1beta1")) == [
        ".spec.podSelector: required"
    ]


# -- examples: CNI configs, pods, policies ------------------------------------------------


def nads() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (d.body["metadata"]["namespace"], d.name): d.body
        for d in docs_of("NetworkAttachmentDefinition", "examples")
    }


def plugin_configs(nad: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The config each plugin receives, as libcni derives it from a NAD:
    a single config as is, or each conflist plugin with cniVersion and name."""
    conf = json.loads(nad["spec"]["config"])
    if "plugins" not in conf:
        return [conf]
    return [
        {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
        for plugin in conf["plugins"]
    ]


def add_env(ifname: str = "net1") -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "0123456789abcdef",
        "CNI_NETNS": "/var/run/netns/cni-4e1f2a",
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo;"
        "K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=3f0e9c4a",
    }


def dra_resources() -> set[str]:
    """``<pod claim>/<request>`` of the example pods' ResourceClaims: the form
    Multus takes in a NAD's resourceName to find a DRA-allocated device."""
    templates = {d.name: d.body for d in docs_of("ResourceClaimTemplate", "examples")}
    out = set()
    for doc in docs_of("Pod", "examples"):
        for claim in doc.body["spec"].get("resourceClaims", []):
            template = templates[claim["resourceClaimTemplateName"]]
            for request in template["spec"]["spec"]["devices"]["requests"]:
                out.add(f"{claim['name']}/{request['name']}")
    return out


def test_example_dra_objects_fit_together() -> None:
    classes = {d.name for d in docs_of("DeviceClass", "examples")}
    cfg = load_agent_config()
    for doc in docs_of("ResourceClaimTemplate", "examples"):
        spec = doc.body["spec"]["spec"]["devices"]
        for request in spec["requests"]:
            assert request["exactly"]["deviceClassName"] in classes, doc
        for config in spec.get("config", []):
            assert config["opaque"]["driver"] in classes, doc  # class named after the driver
    for doc in docs_of("Pod", "examples"):
        claims = {c["name"] for c in doc.body["spec"].get("resourceClaims", [])}
        used = {
            c["name"]
            for k in doc.body["spec"]["containers"]
            for c in k["resources"].get("claims", [])
        }
        assert used == claims, doc
    assert cfg.dra.driver is None or cfg.dra.driver in classes


def test_example_nads_name_their_networks_and_our_plugin() -> None:
    assert len(nads()) == 4
    for (_, name), nad in nads().items():
        conf = json.loads(nad["spec"]["config"])
        assert conf["name"] == name  # the network name Multus and the agent key on
        types = [p["type"] for p in plugin_configs(nad)]
        assert PLUGIN_NAME in types, name
        assert types.index(PLUGIN_NAME) in (0, len(types) - 1), name


def test_example_nads_parse_as_an_add_from_multus() -> None:
    pools = {
        p.resource
        for p in parse_resource_list(
            load_agent_config().resource_list, load_agent_config().resource_prefix
        ).pools
    }
    for (_, name), nad in nads().items():
        resource = nad["metadata"].get("annotations", {}).get(RESOURCE_NAME)
        configs = plugin_configs(nad)
        ours = next(c for c in configs if c["type"] == PLUGIN_NAME)
        stdin = dict(ours)
        if resource is not None:
            assert resource in pools | dra_resources(), (name, resource)
            # Multus injects the allocated VF as top-level deviceID and pciBusID.
            stdin |= {"deviceID": "0000:18:01.2", "pciBusID": "0000:18:01.2"}
        if configs.index(ours) > 0:
            # Chained: the previous plugin's result arrives as prevResult.
            stdin["prevResult"] = {
                "cniVersion": ours["cniVersion"],
                "interfaces": [
                    {"name": "net1", "mac": "0a:58:c0:a8:32:0a", "sandbox": add_env()["CNI_NETNS"]}
                ],
                "ips": [{"address": "192.168.50.10/24", "interface": 0}],
            }
        req = parse_request(add_env(), json.dumps(stdin))
        assert req.command is Command.ADD and req.plugin_type == PLUGIN_NAME
        assert req.network_name == name and req.warnings == ()
        assert req.options is not None
        if resource is not None:
            assert req.device_id == "0000:18:01.2"
            assert req.options.vlan == ours.get("vlan")
        else:
            assert req.device_id is None and req.prev_result is not None


def _network_names(pod: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(namespace, name) of each network in the pod's networks annotation,
    in either of Multus's formats."""
    meta = pod["metadata"]
    raw = meta["annotations"][NETWORKS]
    namespace = meta.get("namespace", "default")
    if raw.lstrip().startswith("["):
        return [(e.get("namespace", namespace), e["name"]) for e in json.loads(raw)]
    out = []
    for item in raw.split(","):
        ref = item.strip().split("@")[0]
        ns, _, name = ref.rpartition("/")
        out.append((ns or namespace, name))
    return out


def test_example_pods_use_defined_networks_and_their_resources() -> None:
    pods = docs_of("Pod", "examples")
    assert len(pods) >= 3
    defined = nads()
    for doc in pods:
        wanted: dict[str, int] = {}
        for key in _network_names(doc.body):
            assert key in defined, (doc, key)
            resource = defined[key]["metadata"].get("annotations", {}).get(RESOURCE_NAME)
            claims = {c["name"] for c in doc.body["spec"].get("resourceClaims", [])}
            if resource and resource.split("/")[0] in claims:
                continue  # a DRA claim of this pod, not a device plugin resource
            if resource:
                wanted[resource] = wanted.get(resource, 0) + 1
        limits = {
            k: int(v)
            for c in doc.body["spec"]["containers"]
            for k, v in c.get("resources", {}).get("limits", {}).items()
            if k.startswith("intel.com/")
        }
        assert limits == wanted, doc


def test_example_policies_parse_and_target_example_networks() -> None:
    policies = docs_of("MultiNetworkPolicy", "examples")
    assert len(policies) >= 2
    defined = {f"{ns}/{name}" for ns, name in nads()}
    for doc in policies:
        policy = parse_policy(doc.body)
        assert policy.errors == () and policy.warnings == (), (doc, policy.errors)
        assert doc.body["metadata"]["annotations"][POLICY_FOR]
        assert policy.networks and policy.networks <= defined, (doc, policy.networks)


def test_named_ports_in_policies_exist_on_the_selected_pods() -> None:
    pods = [d.body for d in docs_of("Pod", "examples")]
    for doc in docs_of("MultiNetworkPolicy", "examples"):
        match = doc.body["spec"]["podSelector"].get("matchLabels", {})
        selected = [p for p in pods if match.items() <= p["metadata"].get("labels", {}).items()]
        named = {
            port["port"]
            for rule in doc.body["spec"].get("ingress", [])
            for port in rule.get("ports", [])
            if isinstance(port.get("port"), str)
        }
        for name in named:
            assert selected, doc
            for pod in selected:
                ports = {
                    p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])
                }
                assert name in ports, (doc, pod["metadata"]["name"], name)


# -- uninstall helpers and kustomization ------------------------------------------------


def _same_nodes(ds: Mapping[str, Any]) -> None:
    agent = pod_spec(agent_ds())
    spec = pod_spec(ds)
    assert spec["nodeSelector"] == agent["nodeSelector"]
    assert spec["tolerations"] == agent["tolerations"]


def test_remove_shim_helper_removes_exactly_the_installed_shim() -> None:
    ds = one("DaemonSet", "nicwarden-remove-cni-shim")
    _same_nodes(ds)
    spec = pod_spec(ds)
    (init,) = spec["initContainers"]
    mount = mounts_by_host_path(spec, init)["/opt/cni/bin"]
    target = init["command"][-1]
    assert init["command"][0] == "rm"
    assert target == f"{mount['mountPath']}/{PLUGIN_NAME}"


def test_purge_helper_removes_the_agent_pins_and_state() -> None:
    ds = one("DaemonSet", "nicwarden-purge-node-state")
    _same_nodes(ds)
    spec = pod_spec(ds)
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    mounts = mounts_by_host_path(spec, init)
    pins = HostPaths().bpffs / "nicwarden"
    bpffs_mount = mounts[str(HostPaths().bpffs)]["mountPath"]
    assert f"rm -rfv {bpffs_mount}/{pins.name}" in script
    cfg = load_agent_config()
    for host_path in (str(cfg.state_dir), str(cfg.socket.parent)):
        assert mounts[host_path]["mountPath"] in script


def test_kustomization_lists_the_install_manifests() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    for entry in resources:
        assert (DEPLOY / entry).is_file(), entry
    assert set(resources) == {
        "namespace.yaml",
        "crds/network-attachment-definitions.yaml",
        "crds/multi-networkpolicies.yaml",
        "rbac.yaml",
        "dra-admission.yaml",
        "configmap.yaml",
        "daemonset.yaml",
    }
