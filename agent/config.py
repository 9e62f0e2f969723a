"""The agent's YAML config, validated at start with precise errors.

The schema is declarative (the engine is ``agent/schema.py``): each config
class is a frozen dataclass whose fields are declared with ``setting``
(validator, default, doc). The YAML key is the camelCase form of the
attribute. A later section is one more dataclass and one more
``setting(section(ThatConfig), ...)`` line.

Every problem is reported, not just the first, each as
``<source>: <dotted.key>: <reason>``, where the source is the file or
``command line`` for an override.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nicwarden.agent.errors import ConfigError
from nicwarden.agent.schema import (
    Invalid,
    Problem,
    Problems,
    boolean,
    describe,
    dns_subdomain,
    dotted,
    duration,
    enum,
    int_range,
    ip_address,
    list_of_mappings,
    mapping,
    optional,
    parse_section,
    path,
    port,
    section,
    setting,
    string,
    to_plain_dict,
)
from nicwarden.agent.schema import SettingDoc as SettingDoc
from nicwarden.agent.schema import settings_reference as settings_reference
from nicwarden.deviceplugin.dra.config import DraConfig

OVERRIDE_SOURCE = "command line"


# -- the agent's config -----------------------------------------------------


@dataclass(frozen=True)
class SimShape:
    """``simulate: 2x8``: a simulated node with 2 PFs of 8 VFs each."""

    pfs: int
    vfs: int

    def __str__(self) -> str:
        return f"{self.pfs}x{self.vfs}"


_SIM_PFS = (1, 16)
_SIM_VFS = (0, 256)


def simulate_spec(value: object) -> SimShape | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return mapping(value)  # the simulator validates its own detailed spec
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", value) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f"expected <pfs>x<vfs> (e.g. 2x8) or a mapping, got {describe(value)}")
    shape = SimShape(int(match[1]), int(match[2]))
    if not _SIM_PFS[0] <= shape.pfs <= _SIM_PFS[1]:
        raise Invalid(f"expected {_SIM_PFS[0]}-{_SIM_PFS[1]} PFs, got {shape.pfs}")
    if not _SIM_VFS[0] <= shape.vfs <= _SIM_VFS[1]:
        raise Invalid(f"expected {_SIM_VFS[0]}-{_SIM_VFS[1]} VFs per PF, got {shape.vfs}")
    return shape


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = setting(boolean, True, "Serve Prometheus metrics over HTTP.")
    address: str = setting(ip_address, "127.0.0.1", "Address the metrics endpoint binds.")
    port: int = setting(port, 9464, "TCP port of the metrics endpoint.")
    allow_remote: bool = setting(
        boolean, False, "Allow binding a non-loopback address (exposes metrics off-node)."
    )

    def check(self) -> None:
        # The agent never exposes itself off-node unless explicitly told to.
        if self.enabled and not self.allow_remote and not _is_loopback(self.address):
            raise Invalid(
                problems=[
                    Problem(
                        ("address",),
                        f"{self.address} is not a loopback address;"
                        " set metrics.allowRemote: true to expose metrics off-node",
                    )
                ]
            )


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


@dataclass(frozen=True)
class DropEventsConfig:
    enabled: bool = setting(
        boolean, True, "Emit dropped-flow records from the datapath (nicwardenctl observe)."
    )
    per_flow_interval_ms: int = setting(
        int_range(1, 3_600_000),
        1000,
        "At most one record per directed flow (5-tuple, interface, direction) this often.",
    )
    max_per_second: int = setting(
        int_range(1, 1_000_000),
        1000,
        "Global cap on dropped-flow records per second, enforced in the kernel.",
    )


@dataclass(frozen=True)
class PolicyConfig:
    enabled: bool = setting(boolean, True, "Enforce MultiNetworkPolicy with the eBPF datapath.")
    allow_icmp: bool = setting(
        boolean, False, "Let ICMP/ICMPv6 through isolated interfaces whatever the ports say."
    )
    keep_established: bool = setting(
        boolean,
        False,
        "Keep flows a policy change no longer allows until they expire (default: cut them).",
    )
    bpf_instance: str = setting(
        string, "default", "Name of the pinned datapath under /sys/fs/bpf/nicwarden/."
    )
    filter_linger_seconds: int = setting(
        int_range(0, 3600),
        60,
        "Seconds an interface keeps its tc filters (passing everything, untracked) after"
        " its last isolated direction opens, so a flapping selector costs no tc changes;"
        " 0 removes them at once.",
    )
    drop_events: DropEventsConfig = setting(
        section(DropEventsConfig), DropEventsConfig(), "Dropped-flow records (ring buffer)."
    )

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.bpf_instance):
            raise Invalid(
                problems=[Problem(("bpfInstance",), "expected 1-64 letters, digits, '_' or '-'")]
            )


@dataclass(frozen=True)
class KubernetesConfig:
    watch: bool = setting(
        boolean,
        False,
        "Watch the Kubernetes API for Pods, Namespaces, NADs and MultiNetworkPolicies.",
    )
    kubeconfig: Path | None = setting(
        optional(path),
        None,
        "kubeconfig to use; unset: the in-cluster service account, else $KUBECONFIG.",
    )
    events: bool = setting(
        boolean, True, "Post Events for invalid policies and failed attachments (needs watch)."
    )
    # Off by default because the engine reads three things from a pod's spec
    # and status. Metadata only, two become a field selector on the watch
    # (finished and hostNetwork pods are never peers), but named container
    # ports are lost: a rule naming a port then matches it on no pod (it only
    # ever allows less). Worth it when no policy names ports and the cluster
    # is large: a pod's metadata is a fraction of its wire size and memory.
    pod_metadata_only: bool = setting(
        boolean,
        False,
        "Follow pods as metadata only (labels, annotations, identity): far less memory and"
        " CPU at scale, but rules naming container ports by name match no pod (needs watch).",
    )

    def check(self) -> None:
        if self.pod_metadata_only and not self.watch:
            raise Invalid(
                problems=[
                    Problem(
                        ("podMetadataOnly",),
                        "only applies to pods watched from the API: set kubernetes.watch: true",
                    )
                ]
            )


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path = setting(path, Path("/var/lib/nicwarden"), "Where the state database lives.")
    socket: Path = setting(
        path, Path("/run/nicwarden/agent.sock"), "Unix socket of the gRPC admin API."
    )
    cni_socket: Path = setting(
        path, Path("/run/nicwarden/cni.sock"), "Unix socket the CNI shim talks HTTP to."
    )
    sysfs_root: Path = setting(path, Path("/sys"), "Root of sysfs (a temp dir when simulated).")
    dev_root: Path = setting(path, Path("/dev"), "Root of /dev (vfio device nodes).")
    log_level: str = setting(enum("debug", "info", "warning", "error"), "info", "Log verbosity.")
    log_format: str = setting(enum("json", "text"), "json", "Log line format.")
    metrics: MetricsConfig = setting(
        section(MetricsConfig), MetricsConfig(), "Prometheus metrics endpoint."
    )
    simulate: SimShape | dict[str, Any] | None = setting(
        simulate_spec, None, "Run against a simulated node: <pfs>x<vfs> (e.g. 2x8) or a mapping."
    )
    kubelet_dir: Path = setting(
        path, Path("/var/lib/kubelet/device-plugins"), "Kubelet's device plugin directory."
    )
    device_info_dir: Path = setting(
        path, Path("/var/run/k8s.cni.cncf.io/devinfo"), "Root of device-info files."
    )
    manifests_dir: Path | None = setting(
        optional(path), None, "Read Kubernetes objects from this directory instead of the API."
    )
    kubernetes: KubernetesConfig = setting(
        section(KubernetesConfig), KubernetesConfig(), "Kubernetes API access."
    )
    reconcile_interval: float = setting(
        duration, 30.0, "Seconds between full reconciles against the kernel."
    )
    # Owned by later work: only the container type is checked here.
    resource_list: list[dict[str, Any]] = setting(
        list_of_mappings, [], "Device plugin resource pools."
    )
    sriov: list[dict[str, Any]] = setting(list_of_mappings, [], "SR-IOV PF provisioning.")
    allow_no_iommu: bool = setting(
        boolean,
        False,
        "Allow binding VFs to vfio-pci without an IOMMU (unsafe noiommu mode; DPDK only).",
    )
    device_timeout: float = setting(
        duration, 30.0, "Seconds a sysfs write (sriov_numvfs, driver bind) may take."
    )
    resource_prefix: str = setting(
        dns_subdomain, "nicwarden.io", "Prefix of extended resource names."
    )
    policy: PolicyConfig = setting(
        section(PolicyConfig), PolicyConfig(), "MultiNetworkPolicy enforcement."
    )
    dra: DraConfig = setting(
        section(DraConfig), DraConfig(), "Dynamic Resource Allocation front-end (ResourceSlices)."
    )

    def check(self) -> None:
        if self.socket == self.cni_socket:
            raise Invalid(problems=[Problem(("cniSocket",), "must differ from socket")])
        if self.kubernetes.watch and self.manifests_dir is not None:
            raise Invalid(
                problems=[
                    Problem(
                        ("manifestsDir",),
                        "set either manifestsDir (standalone) or kubernetes.watch, not both",
                    )
                ]
            )
        if self.dra.enabled and not self.kubernetes.watch:
            # ResourceSlices and claims live in the API: DRA cannot work from
            # a manifests directory or without a cluster.
            raise Invalid(
                problems=[
                    Problem(
                        ("dra", "enabled"),
                        "DRA needs the Kubernetes API: set kubernetes.watch: true"
                        " (and kubernetes.kubeconfig outside a cluster)",
                    )
                ]
            )

    def to_dict(self) -> dict[str, object]:
        """The effective config, YAML-shaped, for logging at start."""
        return to_plain_dict(self)


# -- loading ----------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which YAML silently resolves
    to the last one: an operator editing the first would see no effect."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue  # non-string keys are reported by validation, unhashable ones by YAML
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | None, overrides: Mapping[str, object]) -> AgentConfig:
    """Load ``path`` (None: defaults only), apply dotted-key ``overrides``, validate."""
    source = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(path) if path is not None else {}
    origins = _apply_overrides(raw, overrides, source)
    try:
        return parse_section(AgentConfig, raw)
    except Invalid as e:
        raise ConfigError(_render(e.problems, origins, source)) from None


# A real config is a few KiB; the cap keeps a wrong path (a log, an image)
# from being read whole before it is refused.
MAX_CONFIG_BYTES = 1 << 20


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            blob = f.read(MAX_CONFIG_BYTES + 1)
        if len(blob) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file is larger than {MAX_CONFIG_BYTES} bytes")
        text = blob.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_error(e)}") from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level.
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:  # an empty file means all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {describe(data)}")
    return data


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"


def _apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, object], file_source: str
) -> dict[tuple[str, ...], str]:
    """Merge overrides into ``raw`` in place; returns which paths they set."""
    origins: dict[tuple[str, ...], str] = {}
    problems = Problems()
    for dotted_key, value in overrides.items():
        keys = tuple(dotted_key.split("."))
        if not all(keys):
            problems.add((dotted_key,), "malformed key")
            continue
        parent = raw
        for depth, key in enumerate(keys[:-1]):
            if key not in parent:
                origins[keys[: depth + 1]] = OVERRIDE_SOURCE
            child = parent.setdefault(key, {})
            if not isinstance(child, dict):
                reason = f"cannot set {dotted_key}: {dotted(keys[: depth + 1])} is not a mapping"
                problems.add(keys, reason)
                break
            parent = child
        else:
            parent[keys[-1]] = copy.deepcopy(value)
            origins[keys] = OVERRIDE_SOURCE
    if problems:
        raise ConfigError(
            _render(problems.found, {p.path: OVERRIDE_SOURCE for p in problems}, file_source)
        )
    return origins


def _render(
    problems: Sequence[Problem], origins: Mapping[tuple[str, ...], str], default: str
) -> str:
    """One line per problem, each naming where the bad value came from."""
    return "\n".join(p.render(_origin(p.path, origins, default)) for p in problems)


def _origin(path: tuple[str, ...], origins: Mapping[tuple[str, ...], str], default: str) -> str:
    for length in range(len(path), 0, -1):
        if path[:length] in origins:
            return origins[path[:length]]
    return default
