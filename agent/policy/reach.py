"""Which local interfaces a pod or namespace change can reach, decided from
the peer selectors of the policies covering each interface, so an event no
selector can see recomputes nothing (issue 14: no O(cluster) work per event).

Answers err on the side of "affected": a superset is only a wasted compile,
a miss would leave stale tables in the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .mnp import Direction, MultiNetworkPolicy
from .objects import Pod
from .state import ClusterState


def covering(state: ClusterState, namespace: str, network: str) -> list[MultiNetworkPolicy]:
    """Policies of ``namespace`` whose policy-for names ``network``."""
    return [p for p in state.policies_in(namespace) if network in p.networks]


def pod_reaches(state: ClusterState, policies: Iterable[MultiNetworkPolicy], pod: Pod) -> bool:
    """Can ``pod`` be a peer of one of ``policies``' rules?"""
    labels_of = state.namespace_labels
    for policy in policies:
        if not policy.valid:
            continue  # deny-all whatever its peers are
        for direction in policy.policy_types:
            for rule in policy.rules(direction):
                if not rule.peers:
                    # "All peers": addresses are 0/0 already; only egress
                    # named ports look at each pod.
                    named = any(isinstance(p.port, str) for p in rule.ports)
                    if direction is Direction.EGRESS and named:
                        return True
                    continue
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        continue
                    if peer.namespace_selector is None:
                        if pod.namespace != policy.namespace:
                            continue
                    elif not peer.namespace_selector.matches(labels_of(pod.namespace)):
                        continue
                    if peer.pod_selector is None or peer.pod_selector.matches(pod.labels):
                        return True
    return False


def namespace_reaches(
    policies: Iterable[MultiNetworkPolicy], labels: Iterable[Mapping[str, str]]
) -> bool:
    """Can a namespace with any of these label sets (before and after a
    change) enter or leave one of ``policies``' namespaceSelectors?"""
    labels = list(labels)
    for policy in policies:
        if not policy.valid:
            continue
        for direction in policy.policy_types:
            for rule in policy.rules(direction):
                for peer in rule.peers:
                    sel = peer.namespace_selector
                    if sel is not None and any(sel.matches(ls) for ls in labels):
                        return True
    return False
