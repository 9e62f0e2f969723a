"""The ``k8s.cni.cncf.io/v1beta1`` MultiNetworkPolicy model and its parser.

A CRD gets no defaulting or validation webhook, so everything the API server
would do for a built-in NetworkPolicy happens here: ``policyTypes`` defaulting
(``defaults.go``) and the ``ValidateNetworkPolicySpec`` checks (ipBlock CIDRs,
except ⊂ cidr, endPort rules, protocols). Invalid policies are kept, with their
errors and whatever podSelector could be parsed, so the compiler can fail
closed for the pods they select.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, TypeGuard, cast

from ._fields import (
    Issues,
    as_list,
    as_mapping,
    check_keys,
    dotted_quad,
    metadata,
    network_key,
    string_map,
    type_name,
)
from .selectors import LabelSelector, parse_selector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"
API_VERSIONS = frozenset({"k8s.cni.cncf.io/v1beta1", "k8s.cni.cncf.io/v1beta2"})

# IANA_SVC_NAME (apimachinery IsValidPortName): ≤15 chars, lowercase letters,
# digits and single inner hyphens, at least one letter.
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")


class Direction(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


class Protocol(IntEnum):
    """The API's protocols, valued as IP protocol numbers (the datapath's key)."""

    TCP = 6
    UDP = 17
    SCTP = 132


@dataclass(frozen=True)
class PortSpec:
    protocol: Protocol
    port: int | str | None  # None = every port of the protocol; str = named port
    end_port: int | None = None


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    # Validated: same family as cidr and strictly inside it.
    excepts: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: either selectors or an ipBlock, never both."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()  # empty: from/to absent or [] = every peer
    ports: tuple[PortSpec, ...] = ()  # empty: ports absent or [] = every port/protocol


@dataclass(frozen=True)
class MultiNetworkPolicy:
    namespace: str
    name: str
    # ``ns/nad`` keys from policy-for. Empty when the annotation is missing:
    # such a policy applies to no interface (as in the reference enforcers).
    networks: frozenset[str]
    # None when the podSelector could not be parsed; the compiler then treats
    # the policy as selecting every pod of its namespace, to fail closed.
    pod_selector: LabelSelector | None
    policy_types: frozenset[Direction]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def valid(self) -> bool:
        return not self.errors

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})
_IPBLOCK_KEYS = frozenset({"cidr", "except"})
_PORT_KEYS = frozenset({"protocol", "port", "endPort"})


def parse_policy(raw: Mapping[str, Any]) -> MultiNetworkPolicy:
    """Parse one MultiNetworkPolicy; raises ``ValueError`` only when it has no name."""
    namespace, name, meta = metadata(raw, "MultiNetworkPolicy")
    issues = Issues(f"MultiNetworkPolicy {namespace}/{name}")
    warnings: list[str] = []
    api_version = raw.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        issues.add("apiVersion", f"{api_version!r} is not k8s.cni.cncf.io/v1beta1")
    kind = raw.get("kind")
    if kind is not None and kind != "MultiNetworkPolicy":
        issues.add("kind", f"{kind!r} is not MultiNetworkPolicy")

    annotations = string_map(meta.get("annotations"), issues, "metadata.annotations")
    networks = _parse_policy_for(annotations.get(POLICY_FOR), namespace, issues)
    if POLICY_FOR not in annotations:
        warnings.append(
            f"{issues.subject}: no {POLICY_FOR} annotation; the policy applies to no network"
        )

    spec = as_mapping(raw.get("spec"), issues, "spec")
    if spec is None:
        issues.add("spec", "required")
        spec = {}
    check_keys(spec, _SPEC_KEYS, issues, "spec")

    if spec.get("podSelector") is None:
        issues.add("spec.podSelector", "required (use {} to select every pod)")
        pod_selector = None
    else:
        pod_selector = parse_selector(spec["podSelector"], issues, "spec.podSelector")

    ingress_raw = as_list(spec.get("ingress"), issues, "spec.ingress") or []
    egress_raw = as_list(spec.get("egress"), issues, "spec.egress") or []
    policy_types = _parse_policy_types(spec.get("policyTypes"), bool(egress_raw), issues)
    for direction, rules in ((Direction.INGRESS, ingress_raw), (Direction.EGRESS, egress_raw)):
        if rules and direction not in policy_types:
            # Kubernetes ignores them too; say so rather than let them look enforced.
            warnings.append(
                f"{issues.subject}: spec.{direction.value.lower()} has rules but spec.policyTypes "
                f"does not include {direction.value}; they have no effect"
            )
    ingress = tuple(
        _parse_rule(r, "from", issues, f"spec.ingress[{i}]", (namespace, name, "from", str(i)))
        for i, r in enumerate(ingress_raw)
    )
    egress = tuple(
        _parse_rule(r, "to", issues, f"spec.egress[{i}]", (namespace, name, "to", str(i)))
        for i, r in enumerate(egress_raw)
    )
    return MultiNetworkPolicy(
        namespace=namespace,
        name=name,
        networks=networks,
        pod_selector=pod_selector,
        policy_types=policy_types,
        ingress=ingress,
        egress=egress,
        errors=tuple(issues.messages),
        warnings=tuple(warnings),
    )


def _parse_policy_for(value: str | None, namespace: str, issues: Issues) -> frozenset[str]:
    """``"nad[,ns/nad...]"``. Whitespace is ignored, as the iptables enforcer
    strips it; bad items are reported and the good ones kept, so the policy
    still fails closed on the networks it names correctly."""
    if value is None:
        return frozenset()
    path = f"metadata.annotations[{POLICY_FOR}]"
    items = [item for item in re.sub(r"\s+", "", value).split(",") if item]
    if not items:
        issues.add(path, "names no network")
    keys: set[str] = set()
    for item in items:
        try:
            keys.add(network_key(item, namespace))
        except ValueError as exc:
            issues.add(path, f"malformed network reference: {exc}")
    return frozenset(keys)


def _parse_policy_types(raw: object, has_egress: bool, issues: Issues) -> frozenset[Direction]:
    both = frozenset(Direction)
    types = as_list(raw, issues, "spec.policyTypes")
    if types is None and raw is not None:
        return both  # unreadable: assume both directions so we fail closed on both
    if not types:
        # The API server's defaulting: Ingress always, Egress only with rules.
        return both if has_egress else frozenset({Direction.INGRESS})
    out: set[Direction] = set()
    for i, value in enumerate(types):
        try:
            out.add(Direction(value))
        except ValueError:
            issues.add(f"spec.policyTypes[{i}]", f"{value!r} is not Ingress or Egress")
            return both
    return frozenset(out)


def _parse_rule(
    raw: object, peer_field: str, issues: Issues, path: str, memo_key: tuple[str, ...] = ()
) -> Rule:
    rule = as_mapping(raw, issues, path)
    if rule is None:
        if raw is None:
            issues.add(path, "must be an object, got null")
        return Rule()
    check_keys(rule, frozenset({peer_field, "ports"}), issues, path)
    peers_raw = as_list(rule.get(peer_field), issues, f"{path}.{peer_field}") or []
    ports_raw = as_list(rule.get("ports"), issues, f"{path}.ports") or []
    where = f"{path}.{peer_field}"
    before = len(issues.messages)
    big = bool(memo_key) and len(peers_raw) >= _BIG_RULE
    last = _BIG_RULES.get(memo_key) if big else None
    peers: list[Peer | None]
    if last is not None and len(last[0]) == len(peers_raw):
        # The rule's last version parsed cleanly: entries equal to their
        # predecessors (compared in C) keep their peers; the others are parsed.
        peers = list(last[1])
        for i, same in enumerate(map(operator.eq, peers_raw, last[0])):
            if not same:
                peers[i] = _rule_peer(peers_raw[i], issues, where, i)
    else:
        peers = _rule_peers(peers_raw, issues, where)
    # all(): no None among the peers, tested in C; "None in peers" would call
    # the dataclass __eq__ of every peer.
    clean = all(peers)
    if big:
        if len(issues.messages) == before and clean:
            if len(_BIG_RULES) >= _BIG_RULES_MAX and memo_key not in _BIG_RULES:
                del _BIG_RULES[next(iter(_BIG_RULES))]  # the oldest
            _BIG_RULES[memo_key] = (peers_raw, tuple(cast(list[Peer], peers)))
        else:
            _BIG_RULES.pop(memo_key, None)
    ports = [_parse_port(p, issues, f"{path}.ports[{i}]") for i, p in enumerate(ports_raw)]
    # A dropped (invalid) entry must not turn a non-empty list into an empty
    # one, which would mean "all"; the policy is invalid anyway and compiles
    # to deny-all, so returning a Rule with the survivors is only informative.
    return Rule(
        tuple(cast(list[Peer], peers)) if clean else tuple(p for p in peers if p is not None),
        tuple(p for p in ports if p is not None),
    )


def _rule_peers(peers_raw: list[Any], issues: Issues, where: str) -> list[Peer | None]:
    peers: list[Peer | None] = []
    bare = _BARE_BLOCKS
    for i, p in enumerate(peers_raw):
        # {"ipBlock": {"cidr": "..."}} seen before: its block by the CIDR
        # string and the peer kept on it, no calls. A new policy of 10,000
        # CIDRs, or one whose rule could not be matched to its last version,
        # is parsed whole.
        if type(p) is dict and len(p) == 1:
            fields = p.get("ipBlock")
            if type(fields) is dict and len(fields) == 1:
                cidr = fields.get("cidr")
                if type(cidr) is str:
                    block = bare.get(cidr)
                    if block is not None:
                        found = block.__dict__.get("_peer")
                        if found is not None:
                            peers.append(found)
                            continue
        peers.append(_rule_peer(p, issues, where, i))
    return peers


def _rule_peer(raw: object, issues: Issues, where: str, i: int) -> Peer | None:
    return _known_peer(raw) or _parse_peer(raw, issues, f"{where}[{i}]")


# Rules of at least _BIG_RULE peers, by (namespace, name, direction, index):
# the raw peers of their last clean parse and the peers it gave. Only the
# content is trusted (each entry is compared), so a stale or foreign entry
# costs a comparison, never a wrong answer. Bounded: a few large policies.
_BIG_RULE = 256
_BIG_RULES_MAX = 32
_BIG_RULES: dict[tuple[str, ...], tuple[list[Any], tuple[Peer, ...]]] = {}


def _parse_peer(raw: object, issues: Issues, path: str) -> Peer | None:
    peer = as_mapping(raw, issues, path)
    if peer is None:
        if raw is None:
            issues.add(path, "must be an object, got null")
        return None
    check_keys(peer, _PEER_KEYS, issues, path)
    present = {k for k in _PEER_KEYS if peer.get(k) is not None}
    if not present:
        issues.add(path, "must set podSelector, namespaceSelector or ipBlock")
        return None
    if "ipBlock" in present and len(present) > 1:
        issues.add(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        return None
    if "ipBlock" in present:
        block = _parse_ip_block(peer["ipBlock"], issues, f"{path}.ipBlock")
        return Peer(ip_block=block) if block is not None else None
    before = len(issues.messages)
    pod_sel = parse_selector(peer.get("podSelector"), issues, f"{path}.podSelector")
    ns_sel = parse_selector(peer.get("namespaceSelector"), issues, f"{path}.namespaceSelector")
    if len(issues.messages) != before:
        return None
    return Peer(pod_selector=pod_sel, namespace_selector=ns_sel)


def _parse_network(raw: object, issues: Issues, path: str) -> IPNetwork | None:
    if not isinstance(raw, str):
        issues.add(path, f"must be a CIDR string, got {type_name(raw)}")
        return None
    fast = _ipv4_network(raw)
    if fast is not None:
        return fast
    try:
        return ipaddress.ip_network(raw, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(raw, strict=False)
            issues.add(path, f"{raw!r} has host bits set (did you mean {net}?)")
        else:
            issues.add(path, f"{raw!r} is not a valid CIDR")
        return None


def _ipv4_network(raw: str) -> IPNetwork | None:
    """``ip_network(raw, strict=True)`` for the common "a.b.c.d/len" and
    "a.b.c.d", in a third of its time (policies carry thousands); None for
    anything else, including every error, which the general path names.
    The length is read as ipaddress reads it (ASCII digits)."""
    addr, slash, length = raw.partition("/")
    if slash:
        if not (length.isascii() and length.isdigit()) or len(length) > 2:
            return None
        bits = int(length)
        if bits > 32:
            return None
    else:
        bits = 32
    quad = dotted_quad(addr)
    if quad is None:
        return None
    try:
        return ipaddress.IPv4Network((quad, bits))
    except ValueError:  # host bits set
        return None


def _known_peer(raw: object) -> Peer | None:
    """The common peer ``{"ipBlock": {...}}`` when it is well formed, without
    building field paths for errors it does not have (large CIDR lists)."""
    if type(raw) is not dict or len(raw) != 1:
        return None
    block = _known(raw.get("ipBlock"))
    if block is None:
        return None
    peer: Peer | None = block.__dict__.get("_peer")
    if peer is None:
        peer = block.__dict__["_peer"] = Peer(ip_block=block)
    return peer


# {"cidr": ...} with no except, by its CIDR string: most blocks of a large
# policy, looked up without building an argument tuple or an ABC check (and
# by _rule_peers, for the peer kept on each).
_BARE_BLOCKS: dict[str, IPBlock] = {}
_BARE_BLOCKS_MAX = 1 << 16


def _known(raw: object) -> IPBlock | None:
    if type(raw) is dict and len(raw) == 1:
        cidr = raw.get("cidr")
        if type(cidr) is str:
            found = _BARE_BLOCKS.get(cidr)
            if found is None and len(cidr) <= 64:
                # An IPv4 CIDR the fast parser takes is exactly what the full
                # one accepts (property-tested); no except list to check. A
                # new 10,000-CIDR policy took 113 ms to parse without this.
                net = _ipv4_network(cidr)
                found = IPBlock(net) if net is not None else _known_ip_block(cidr, ())
                if found is not None:
                    if len(_BARE_BLOCKS) >= _BARE_BLOCKS_MAX:
                        _BARE_BLOCKS.clear()
                    _BARE_BLOCKS[cidr] = found
            return found
    if not isinstance(raw, Mapping) or not raw.keys() <= _IPBLOCK_KEYS:
        return None
    cidr, excepts = raw.get("cidr"), raw.get("except")
    if excepts is None:
        excepts = []
    if (
        isinstance(cidr, str)
        and len(cidr) <= 64
        and isinstance(excepts, list)
        and len(excepts) <= 64
        and all(isinstance(e, str) and len(e) <= 64 for e in excepts)
    ):
        return _known_ip_block(cidr, tuple(excepts))
    return None


def _parse_ip_block(raw: object, issues: Issues, path: str) -> IPBlock | None:
    return _known(raw) or _parse_ip_block_fields(raw, issues, path)


@functools.lru_cache(maxsize=1 << 16)
def _known_ip_block(cidr: str, excepts: tuple[str, ...]) -> IPBlock | None:
    """A well-formed ipBlock, parsed once. Policies repeat the same CIDRs on
    every update (a 10,000-CIDR policy re-parsed per change cost ~200 ms),
    and the same objects let the compiler find its blocks by identity."""
    issues = Issues("ipBlock")
    block = _parse_ip_block_fields({"cidr": cidr, "except": list(excepts)}, issues, "")
    return None if issues.found else block


def _parse_ip_block_fields(raw: object, issues: Issues, path: str) -> IPBlock | None:
    block = as_mapping(raw, issues, path)
    if block is None:
        return None
    check_keys(block, _IPBLOCK_KEYS, issues, path)
    before = len(issues.messages)
    if block.get("cidr") is None:
        issues.add(f"{path}.cidr", "required")
        return None
    cidr = _parse_network(block["cidr"], issues, f"{path}.cidr")
    excepts: list[IPNetwork] = []
    for i, item in enumerate(as_list(block.get("except"), issues, f"{path}.except") or []):
        where = f"{path}.except[{i}]"
        net = _parse_network(item, issues, where)
        if net is None or cidr is None:
            continue
        if net.version != cidr.version:
            issues.add(where, f"{net} is IPv{net.version} but cidr {cidr} is IPv{cidr.version}")
        elif not _strictly_inside(net, cidr):
            issues.add(where, f"{net} is not strictly inside cidr {cidr}")
        else:
            excepts.append(net)
    if cidr is None or len(issues.messages) != before:
        return None
    return IPBlock(cidr, tuple(excepts))


def _parse_port(raw: object, issues: Issues, path: str) -> PortSpec | None:
    spec = as_mapping(raw, issues, path)
    if spec is None:
        if raw is None:
            issues.add(path, "must be an object, got null")
        return None
    check_keys(spec, _PORT_KEYS, issues, path)
    before = len(issues.messages)
    proto_raw = spec.get("protocol")
    protocol = Protocol.TCP
    if proto_raw is not None:
        if isinstance(proto_raw, str) and proto_raw in Protocol.__members__:
            protocol = Protocol[proto_raw]
        else:
            issues.add(
                f"{path}.protocol", f"unknown protocol {proto_raw!r} (want TCP, UDP or SCTP)"
            )
    port = spec.get("port")
    end_port = spec.get("endPort")
    if port is not None:
        _check_port_value(port, issues, f"{path}.port")
    if end_port is not None:
        _check_end_port(port, end_port, issues, path)
    if len(issues.messages) != before:
        return None
    return PortSpec(protocol, port, end_port)


def _strictly_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    shift = outer.max_prefixlen - outer.prefixlen
    return inner.prefixlen > outer.prefixlen and (
        int(inner.network_address) >> shift == int(outer.network_address) >> shift
    )


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; YAML `port: true` must not read as port 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_port_value(port: object, issues: Issues, path: str) -> None:
    if _is_int(port):
        if not 1 <= port <= 65535:
            issues.add(path, f"{port} is not in 1..65535")
    elif isinstance(port, str):
        if not (len(port) <= 15 and _PORT_NAME.match(port) and re.search("[a-z]", port)):
            issues.add(path, f"{port!r} is neither a number nor a valid port name (IANA_SVC_NAME)")
    else:
        issues.add(path, f"must be a number or a port name, got {type_name(port)}")


def _check_end_port(port: object, end_port: object, issues: Issues, path: str) -> None:
    where = f"{path}.endPort"
    if not _is_int(end_port):
        issues.add(where, f"must be a number, got {type_name(end_port)}")
    elif port is None:
        issues.add(where, "requires port")
    elif isinstance(port, str):
        issues.add(where, f"cannot be used with the named port {port!r}")
    elif _is_int(port) and end_port < port:
        issues.add(where, f"{end_port} is less than port {port}")
    elif not 1 <= end_port <= 65535:
        issues.add(where, f"{end_port} is not in 1..65535")
