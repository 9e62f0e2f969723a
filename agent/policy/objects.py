"""Typed models of the Kubernetes objects the policy engine reads, parsed from
plain dicts (YAML manifests or the API's JSON).

Parsing collects every problem into the object's ``errors`` (each message names
the object and the field) instead of raising; only an object without a name
raises, because it cannot be tracked. The MultiNetworkPolicy model lives in
``mnp.py`` and is re-exported here.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._fields import (
    Issues,
    as_list,
    as_mapping,
    dotted_quad,
    metadata,
    network_key,
    string_map,
    type_name,
)
from .mnp import (
    POLICY_FOR,
    Direction,
    IPBlock,
    IPNetwork,
    MultiNetworkPolicy,
    Peer,
    PortSpec,
    Protocol,
    Rule,
    parse_policy,
)

__all__ = [
    "NETWORK_STATUS",
    "POLICY_FOR",
    "ContainerPort",
    "Direction",
    "IPAddress",
    "IPBlock",
    "IPNetwork",
    "MultiNetworkPolicy",
    "Namespace",
    "NetworkAttachmentDefinition",
    "NetworkStatusEntry",
    "Peer",
    "Pod",
    "PolicyObject",
    "PortSpec",
    "Protocol",
    "Rule",
    "parse_namespace",
    "parse_nad",
    "parse_object",
    "parse_pod",
    "kind_of",
    "network_status_errors",
    "parse_policy",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Pods in these phases are gone for good; their IPs may already be reused.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Bounds on a pod's network-status: Multus writes a few hundred bytes per
# network, so these leave room for any real pod while capping what one
# hostile annotation costs every node that follows the cluster.
MAX_NETWORK_STATUS_BYTES = 64 * 1024
MAX_NETWORK_STATUS_ENTRIES = 64
MAX_NETWORK_STATUS_IPS = 64
_STATUS_PATH = f"metadata.annotations[{NETWORK_STATUS}]"
_STATUS_NOT_STRING = f"metadata.annotations.{NETWORK_STATUS}: "  # string_map's path


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.name


def implicit_namespace_labels(name: str) -> dict[str, str]:
    """The label the API server puts on every namespace (immutable since
    Kubernetes 1.22); namespaceSelectors commonly use it, so namespaces from
    manifests, or not seen at all, get it too."""
    return {NAMESPACE_NAME_LABEL: name}


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str  # "" when unnamed
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class NetworkStatusEntry:
    network: str  # normalised "ns/nad" key (Multus writes it that way already)
    interface: str
    ips: tuple[IPAddress, ...]
    mac: str
    default: bool = False


@dataclass(frozen=True, slots=True)
class Pod:
    """A cluster holds up to ~100,000 of these on every node: slots, and one
    ``key`` string shared by every index that names the pod."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_name: str = ""
    phase: str = ""
    host_network: bool = False
    ports: tuple[ContainerPort, ...] = ()
    networks: tuple[NetworkStatusEntry, ...] = ()
    errors: tuple[str, ...] = ()
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")

    @property
    def is_peer_candidate(self) -> bool:
        """Finished pods' IPs may belong to someone else now; hostNetwork pods
        have no secondary interfaces of their own."""
        return self.phase not in TERMINAL_PHASES and not self.host_network

    def network_keys(self) -> frozenset[str]:
        return frozenset(e.network for e in self.networks if not e.default)

    def ips_on(self, network: str) -> tuple[IPAddress, ...]:
        """This pod's IPs on one network (a pod may attach to it twice)."""
        return tuple(
            ip for e in self.networks if e.network == network and not e.default for ip in e.ips
        )

    def resolve_port(self, name: str, protocol: Protocol) -> frozenset[int]:
        """Numbers of the container ports with this name and protocol."""
        return frozenset(p.port for p in self.ports if p.name == name and p.protocol == protocol)


@dataclass(frozen=True)
class NetworkAttachmentDefinition:
    namespace: str
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


PolicyObject = Namespace | Pod | NetworkAttachmentDefinition | MultiNetworkPolicy


def parse_namespace(raw: Mapping[str, Any]) -> Namespace:
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        raise ValueError("Namespace: metadata missing or not an object")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("Namespace: metadata.name missing or not a string")
    issues = Issues(f"Namespace {name}")
    labels = implicit_namespace_labels(name)
    labels.update(string_map(meta.get("labels"), issues, "metadata.labels"))
    return Namespace(name, labels, tuple(issues.messages))


def parse_pod(raw: Mapping[str, Any]) -> Pod:
    namespace, name, meta = metadata(raw, "Pod")
    issues = Issues(f"Pod {namespace}/{name}")
    labels = string_map(meta.get("labels"), issues, "metadata.labels")
    annotations = string_map(meta.get("annotations"), issues, "metadata.annotations")
    spec = as_mapping(raw.get("spec"), issues, "spec") or {}
    status = as_mapping(raw.get("status"), issues, "status") or {}
    uid = meta.get("uid")
    node = spec.get("nodeName")
    phase = status.get("phase")
    return Pod(
        namespace=namespace,
        name=name,
        uid=uid if isinstance(uid, str) else "",
        labels=shared_labels(labels),
        node_name=node if isinstance(node, str) else "",
        phase=phase if isinstance(phase, str) else "",
        host_network=spec.get("hostNetwork") is True,
        ports=_container_ports(spec, issues),
        networks=_network_status(annotations.get(NETWORK_STATUS), namespace, issues),
        errors=tuple(issues.messages),
    )


_LABEL_SETS: dict[frozenset[tuple[str, str]], Mapping[str, str]] = {}
_LABEL_SETS_MAX = 1 << 16
_NO_LABELS: Mapping[str, str] = MappingProxyType({})


def shared_labels(labels: dict[str, str]) -> Mapping[str, str]:
    """Pods of one workload carry the same labels: one read-only mapping for
    all of them. A cache, not a registry: when full it starts over, and pods
    keep the mappings they have."""
    if not labels:
        return _NO_LABELS
    key = frozenset(labels.items())
    found = _LABEL_SETS.get(key)
    if found is None:
        if len(_LABEL_SETS) >= _LABEL_SETS_MAX:
            _LABEL_SETS.clear()
        found = _LABEL_SETS[key] = MappingProxyType(labels)
    return found


def _container_ports(spec: Mapping[str, Any], issues: Issues) -> tuple[ContainerPort, ...]:
    out: list[ContainerPort] = []
    for ci, container in enumerate(
        as_list(spec.get("containers"), issues, "spec.containers") or []
    ):
        if isinstance(container, Mapping):
            ports = container.get("ports")
            if ports is None:
                continue
            if isinstance(ports, list):
                for pi, port in enumerate(ports):
                    found = _known_port(port) if isinstance(port, Mapping) else None
                    if found is not None:
                        out.append(found)
                    else:
                        _check_port(port, issues, f"spec.containers[{ci}].ports[{pi}]", out)
                continue
        # The rare odd shape: the general path, which names what is wrong.
        cpath = f"spec.containers[{ci}]"
        cmap = as_mapping(container, issues, cpath) or {}
        for pi, port in enumerate(as_list(cmap.get("ports"), issues, f"{cpath}.ports") or []):
            _check_port(port, issues, f"{cpath}.ports[{pi}]", out)
    return tuple(out)


# Pods of one workload declare the same ports: one record per distinct port,
# and a port seen before needs no second check.
_PORTS: dict[tuple[Any, ...], ContainerPort] = {}
_PORTS_MAX = 1 << 14


def _known_port(port: Mapping[str, Any]) -> ContainerPort | None:
    number = port.get("containerPort")
    # The type too: True == 1 and 80.0 == 80, and neither is a port number.
    key = (type(number), number, port.get("protocol", "TCP"), port.get("name", ""))
    try:
        return _PORTS.get(key)
    except TypeError:  # an unhashable value: not a valid port anyway
        return None


def _check_port(port: object, issues: Issues, ppath: str, out: list[ContainerPort]) -> None:
    pmap = as_mapping(port, issues, ppath) or {}
    number = pmap.get("containerPort")
    proto_raw = pmap.get("protocol", "TCP")
    name = pmap.get("name", "")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        issues.add(f"{ppath}.containerPort", f"{number!r} is not a port number")
    elif not isinstance(proto_raw, str) or proto_raw not in Protocol.__members__:
        issues.add(f"{ppath}.protocol", f"unknown protocol {proto_raw!r}")
    elif not isinstance(name, str):
        issues.add(f"{ppath}.name", f"must be a string, got {type_name(name)}")
    else:
        made = ContainerPort(name, number, Protocol[proto_raw])
        if len(_PORTS) >= _PORTS_MAX:
            _PORTS.clear()
        _PORTS[(int, number, proto_raw, name)] = made
        out.append(made)


def _network_status(
    value: str | None, namespace: str, issues: Issues
) -> tuple[NetworkStatusEntry, ...]:
    """Parse Multus's network-status annotation (docs/contracts.md#multus).

    Problems are recorded and bad entries skipped; the engine then trusts
    none of the annotation and keeps the pod's last valid networks (or none),
    see ``PolicyEngine._keep_networks``. Oversized input is rejected before
    it is parsed.
    """
    if value is None:
        return ()
    path = _STATUS_PATH
    if len(value) > MAX_NETWORK_STATUS_BYTES:
        issues.add(path, f"longer than {MAX_NETWORK_STATUS_BYTES} characters")
        return ()
    try:
        entries = json.loads(value)
    except ValueError as exc:
        issues.add(path, f"not valid JSON: {exc}")
        return ()
    if not isinstance(entries, list):
        issues.add(path, f"must be a JSON list, got {type_name(entries)}")
        return ()
    if len(entries) > MAX_NETWORK_STATUS_ENTRIES:
        issues.add(path, f"{len(entries)} entries, more than {MAX_NETWORK_STATUS_ENTRIES}")
        return ()
    out: list[NetworkStatusEntry] = []
    for i, raw in enumerate(entries):
        entry = _status_entry(raw, namespace, issues, f"{path}[{i}]")
        # The cluster network's entry is checked but not kept: policies
        # police secondary networks only, and every pod has one.
        if entry is not None and not entry.default:
            out.append(entry)
    return tuple(out)


def network_status_errors(pod: Pod) -> tuple[str, ...]:
    """The pod's problems that are in its network-status annotation (the
    engine keeps the pod's last good networks while there are any)."""
    if not pod.errors:
        return ()
    return tuple(e for e in pod.errors if _STATUS_PATH in e or _STATUS_NOT_STRING in e)


def _status_entry(
    raw: object, namespace: str, issues: Issues, path: str
) -> NetworkStatusEntry | None:
    entry = as_mapping(raw, issues, path)
    if entry is None:
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        issues.add(f"{path}.name", "required string")
        return None
    default = entry.get("default") is True
    try:
        key = network_key(name, namespace)
    except ValueError as exc:
        if not default:
            issues.add(f"{path}.name", str(exc))
            return None
        key = name  # the cluster network's conf name need not be a NAD name
    ips: list[IPAddress] = []
    raw_ips = as_list(entry.get("ips"), issues, f"{path}.ips") or []
    if len(raw_ips) > MAX_NETWORK_STATUS_IPS:
        issues.add(f"{path}.ips", f"{len(raw_ips)} addresses, more than {MAX_NETWORK_STATUS_IPS}")
        raw_ips = []
    for j, ip in enumerate(raw_ips):
        addr = _parse_ip(ip)
        if addr is None:
            issues.add(f"{path}.ips[{j}]", f"{ip!r} is not an IP address")
        else:
            ips.append(addr)
    interface = entry.get("interface")
    mac = entry.get("mac")
    return NetworkStatusEntry(
        # Few distinct values across a cluster's pods: one string each.
        network=sys.intern(key),
        interface=sys.intern(interface) if isinstance(interface, str) else "",
        ips=tuple(ips),
        mac=mac if isinstance(mac, str) else "",
        default=default,
    )


def _parse_ip(raw: object) -> IPAddress | None:
    if not isinstance(raw, str):
        return None
    quad = dotted_quad(raw)
    if quad is not None:
        return ipaddress.IPv4Address(quad)
    try:
        # Multus writes bare addresses; accept "addr/len" from other writers.
        return ipaddress.ip_interface(raw).ip
    except ValueError:
        return None


def parse_nad(raw: Mapping[str, Any]) -> NetworkAttachmentDefinition:
    namespace, name, _meta = metadata(raw, "NetworkAttachmentDefinition")
    issues = Issues(f"NetworkAttachmentDefinition {namespace}/{name}")
    spec = as_mapping(raw.get("spec"), issues, "spec") or {}
    config: Mapping[str, Any] = {}
    text = spec.get("config")
    if text is None:
        pass  # a config-less NAD names a CNI config file on the node
    elif not isinstance(text, str):
        issues.add("spec.config", f"must be a JSON string, got {type_name(text)}")
    else:
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            issues.add("spec.config", f"not valid JSON: {exc}")
        else:
            if isinstance(parsed, Mapping):
                config = parsed
            else:
                issues.add("spec.config", f"must be a JSON object, got {type_name(parsed)}")
    return NetworkAttachmentDefinition(namespace, name, config, tuple(issues.messages))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], PolicyObject]] = {
    "Namespace": parse_namespace,
    "Pod": parse_pod,
    "NetworkAttachmentDefinition": parse_nad,
    "MultiNetworkPolicy": parse_policy,
}

KINDS = frozenset(_PARSERS)


def kind_of(obj: PolicyObject) -> str:
    """The Kubernetes kind of a parsed object (the class names match)."""
    return type(obj).__name__


def parse_object(raw: Mapping[str, Any], kind: str | None = None) -> PolicyObject:
    """Dispatch on ``kind`` (or ``raw["kind"]``); ``ValueError`` for an
    unknown kind or a nameless object."""
    kind = kind or raw.get("kind")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ValueError(f"unsupported kind {kind!r} (want one of {', '.join(sorted(KINDS))})")
    return parser(raw)
