"""Compile MultiNetworkPolicies into per-interface semantic tables, with
Kubernetes NetworkPolicy semantics (docs/contracts.md#multinetworkpolicy):

* A policy applies to an interface when its ``policy-for`` names the
  interface's network and its podSelector selects the pod (in the policy's
  namespace). It isolates the directions in its (defaulted) ``policyTypes``.
* Allowed traffic is the OR of all rules of all applying policies. In a rule,
  ``ports`` AND peers; an absent or empty list means "all".
* Peer pods count with their network-status IPs on the *interface's* network
  only; pods without an entry there contribute nothing.
* Named ports resolve against the destination pod: the target on ingress, each
  peer pod on egress. On egress an ipBlock (or "all destinations") peer has no
  pod to resolve against, so a named port matches nothing for it. Unresolved
  names match nothing (fail closed) and are reported as warnings.
* A selecting policy that is invalid, or a target pod we have not seen while a
  policy covers its network, makes the direction deny-all (fail closed).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from .mnp import Direction, IPBlock, MultiNetworkPolicy, Peer, PortSpec, Rule
from .objects import Pod
from .state import ClusterState
from .tables import (
    ALL,
    Block,
    CompileOptions,
    DirectionTable,
    InterfaceKey,
    InterfaceTables,
    PolicedInterface,
    PortRange,
    PortSet,
    TrafficClass,
    outermost,
    port_set_key,
)

_ANYWHERE = (Block(ipaddress.ip_network("0.0.0.0/0")), Block(ipaddress.ip_network("::/0")))


def compile_policies(
    state: ClusterState,
    targets: Iterable[PolicedInterface],
    options: CompileOptions | None = None,
) -> dict[InterfaceKey, InterfaceTables]:
    opts = options or CompileOptions()
    return {t.key: compile_interface(state, t, opts) for t in targets}


@dataclass
class _Direction:
    """Accumulates one direction's grants, keyed by port set so that classes
    with identical ports merge as they are added."""

    isolated: bool = False
    grants: dict[PortSet, set[Block]] = field(default_factory=dict)
    fail_closed: list[str] = field(default_factory=list)

    def grant(self, blocks: Collection[Block], ports: PortSet) -> None:
        if ports is not ALL and not ports:
            return  # e.g. only named ports, none resolved: allows nothing
        if blocks:
            self.grants.setdefault(ports, set()).update(blocks)

    def table(self, options: CompileOptions) -> DirectionTable:
        if not self.isolated:
            return DirectionTable(isolated=False, allow_icmp=options.allow_icmp)
        if self.fail_closed:
            return DirectionTable(True, (), options.allow_icmp, tuple(self.fail_closed))
        classes = sorted(
            (TrafficClass(frozenset(b), p) for p, b in self.grants.items()),
            key=lambda c: port_set_key(c.ports),
        )
        return DirectionTable(True, tuple(classes), options.allow_icmp)


@dataclass
class _Target:
    state: ClusterState
    iface: PolicedInterface
    pod: Pod
    warnings: list[str] = field(default_factory=list)


def compile_interface(
    state: ClusterState, iface: PolicedInterface, options: CompileOptions
) -> InterfaceTables:
    dirs = {d: _Direction() for d in Direction}
    policies = [p for p in state.policies_in(iface.namespace) if iface.network in p.networks]
    pod = state.pods.get(f"{iface.namespace}/{iface.pod}")
    errors: list[str] = []
    if pod is None:
        if policies:
            # Without the pod's labels we cannot tell which policies select it.
            reason = (
                f"pod {iface.namespace}/{iface.pod} is unknown and "
                f"{len(policies)} policies cover network {iface.network}: deny-all"
            )
            errors.append(reason)
            for d in dirs.values():
                d.isolated = True
                d.fail_closed.append(reason)
        return _finish(dirs, (), errors, [], options)

    target = _Target(state, iface, pod)
    selecting: list[str] = []
    for policy in policies:
        # An unparseable podSelector is taken as "every pod": fail closed wide.
        if policy.pod_selector is not None and not policy.pod_selector.matches(pod.labels):
            continue
        selecting.append(policy.key)
        if not policy.valid:
            kinds = "/".join(sorted(policy.policy_types))
            errors.append(f"invalid policy {policy.key} selects this interface: {kinds} deny-all")
            errors.extend(policy.errors)
        for direction in sorted(policy.policy_types):
            acc = dirs[direction]
            acc.isolated = True
            if not policy.valid:
                acc.fail_closed.append(f"invalid policy {policy.key}")
                continue
            for rule in policy.rules(direction):
                _compile_rule(target, policy, direction, rule, acc)
    if options.allow_self:
        own = [_host_block(ip) for ip in iface.ips]
        for d in dirs.values():
            d.grant(own, ALL)
    return _finish(dirs, selecting, errors, target.warnings, options)


def _finish(
    dirs: dict[Direction, _Direction],
    selecting: Iterable[str],
    errors: list[str],
    warnings: list[str],
    options: CompileOptions,
) -> InterfaceTables:
    return InterfaceTables(
        ingress=dirs[Direction.INGRESS].table(options),
        egress=dirs[Direction.EGRESS].table(options),
        policies=tuple(selecting),
        errors=tuple(errors),
        warnings=tuple(dict.fromkeys(warnings)),
    )


def _compile_rule(
    target: _Target, policy: MultiNetworkPolicy, direction: Direction, rule: Rule, acc: _Direction
) -> None:
    named = {p.port for p in rule.ports if isinstance(p.port, str)}
    blocks, pods = _peers(
        target, policy, rule, enumerate_all=direction is Direction.EGRESS and bool(named)
    )
    if direction is Direction.INGRESS:
        # Ingress: the destination is the target pod, for every peer alike.
        ports = resolve_ports(rule.ports, target.pod)
        acc.grant(blocks, ports)
        acc.grant([b for pod in pods for b in _pod_blocks(pod, target)], ports)
        unresolved = named - _resolved_names(rule.ports, [target.pod])
    else:
        # Egress: the destination is the peer; addresses without a pod behind
        # them get only the numeric ports, each pod its own resolution.
        acc.grant(blocks, resolve_ports(rule.ports, None))
        for pod in pods:
            acc.grant(_pod_blocks(pod, target), resolve_ports(rule.ports, pod))
        unresolved = named - _resolved_names(rule.ports, pods)
    for name in sorted(unresolved):
        target.warnings.append(
            f"policy {policy.key}: {direction.value} named port {name!r} resolves on no "
            f"{'target' if direction is Direction.INGRESS else 'peer'} pod; it matches nothing"
        )


def _peers(
    target: _Target, policy: MultiNetworkPolicy, rule: Rule, enumerate_all: bool
) -> tuple[Sequence[Block], list[Pod]]:
    """Address blocks (ipBlocks, "anywhere") and selected pods of a rule."""
    if not rule.peers:
        # All peers. Only egress with named ports needs the pods themselves.
        pods = target.state.pods_on(target.iface.network) if enumerate_all else []
        return list(_ANYWHERE), pods
    blocks, selectors = _rule_parts(rule)
    selected: dict[str, Pod] = {}
    for peer in selectors:
        selected.update((p.key, p) for p in _selected_pods(target, policy, peer))
    return blocks, list(selected.values())


def _rule_parts(rule: Rule) -> tuple[tuple[Block, ...], tuple[Peer, ...]]:
    """A rule's ipBlocks as Blocks, and its selector peers: the same for every
    interface, so worked out once per parsed rule and kept on it (a policy of
    10,000 CIDRs that selects six local pods was compiled six times)."""
    cached: tuple[tuple[Block, ...], tuple[Peer, ...]] | None = rule.__dict__.get("_parts")
    if cached is None:
        blocks: list[Block] = []
        selectors: list[Peer] = []
        for peer in rule.peers:
            ip_block = peer.ip_block
            if ip_block is not None:
                # _ip_block's cache read in line: a rule may hold 10,000 of them.
                block = ip_block.__dict__.get("_block")
                blocks.append(block if block is not None else _ip_block(ip_block))
            else:
                selectors.append(peer)
        cached = rule.__dict__["_parts"] = (tuple(blocks), tuple(selectors))
    return cached


def _selected_pods(target: _Target, policy: MultiNetworkPolicy, peer: Peer) -> list[Pod]:
    state = target.state
    ns_selector = peer.namespace_selector
    # podSelector alone: the policy's own namespace (not all of them, as the
    # iptables enforcer reads it).
    only_ns = policy.namespace if ns_selector is None else None
    candidates = state.peer_candidates(target.iface.network, only_ns, peer.pod_selector)
    ns_match: dict[str, bool] = {}
    out: list[Pod] = []
    for pod in candidates:
        if ns_selector is not None:
            hit = ns_match.get(pod.namespace)
            if hit is None:
                hit = ns_match[pod.namespace] = ns_selector.matches(
                    state.namespace_labels(pod.namespace)
                )
            if not hit:
                continue
        if peer.pod_selector is None or peer.pod_selector.matches(pod.labels):
            out.append(pod)
    return out


def _ip_block(ip_block: IPBlock) -> Block:
    """One Block per parsed ipBlock, kept on it: every recompile of every
    interface then puts the same object in its sets (found by identity)."""
    cached: Block | None = ip_block.__dict__.get("_block")
    if cached is None:
        cached = Block(ip_block.cidr, outermost(ip_block.excepts))
        ip_block.__dict__["_block"] = cached
    return cached


@functools.lru_cache(maxsize=1 << 17)
def _host_block(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Block:
    return Block(ipaddress.ip_network(ip))


def _pod_blocks(pod: Pod, target: _Target) -> list[Block]:
    return [_host_block(ip) for ip in pod.ips_on(target.iface.network)]


def _resolved_names(specs: Iterable[PortSpec], pods: Iterable[Pod]) -> set[str]:
    pods = list(pods)
    return {
        s.port
        for s in specs
        if isinstance(s.port, str) and any(p.resolve_port(s.port, s.protocol) for p in pods)
    }


def resolve_ports(specs: tuple[PortSpec, ...], pod: Pod | None) -> PortSet:
    """The port set of a rule's ``ports`` for one destination pod (``None``:
    no pod, so named ports match nothing)."""
    if not specs:
        return ALL
    ranges: list[PortRange] = []
    for spec in specs:
        proto = int(spec.protocol)
        if spec.port is None:
            ranges.append(PortRange(proto, 0, 65535))
        elif isinstance(spec.port, int):
            ranges.append(PortRange(proto, spec.port, spec.end_port or spec.port))
        elif pod is not None:
            ranges.extend(
                PortRange(proto, n, n) for n in pod.resolve_port(spec.port, spec.protocol)
            )
    return normalise_ranges(ranges)


def normalise_ranges(ranges: Iterable[PortRange]) -> frozenset[PortRange]:
    """Merge overlapping and adjacent ranges per protocol, so equal port sets
    compare equal however the rules spelt them (fewer classes, stable bits)."""
    out: list[PortRange] = []
    for r in sorted(ranges):
        last = out[-1] if out else None
        if last is not None and last.proto == r.proto and r.lo <= last.hi + 1:
            out[-1] = PortRange(r.proto, last.lo, max(last.hi, r.hi))
        else:
            out.append(r)
    return frozenset(out)
