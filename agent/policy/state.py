"""The cluster objects the compiler reads, indexed for the lookups it repeats
(pods by network, policies by namespace)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from .labelindex import LabelIndex, Term, intersect
from .objects import (
    MultiNetworkPolicy,
    Namespace,
    NetworkAttachmentDefinition,
    Pod,
    PolicyObject,
    implicit_namespace_labels,
    kind_of,
)
from .selectors import LabelSelector


class ClusterState:
    """Mutable store of parsed objects, keyed by ``name`` (namespaces) or
    ``ns/name`` (everything else)."""

    def __init__(self, objects: Iterable[PolicyObject] = ()) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.pods: dict[str, Pod] = {}
        self.nads: dict[str, NetworkAttachmentDefinition] = {}
        self.policies: dict[str, MultiNetworkPolicy] = {}
        # Only pods with a network-status entry can be peers, and only on the
        # networks they name, so compile scans one network's pods, not all.
        self._pods_by_network: dict[str, set[str]] = defaultdict(set)
        self._policies_by_ns: dict[str, set[str]] = defaultdict(set)
        # pods_on() runs once per peer per rule per target: keep its sorted,
        # filtered answer until a pod on that network changes.
        self._peer_cache: dict[str, list[Pod]] = {}
        # Selector lookups intersect these instead of scanning pods.
        self._pods_by_ns: dict[str, set[str]] = defaultdict(set)
        self.pod_labels = LabelIndex()
        self._policies_by_network: dict[str, set[str]] = defaultdict(set)
        for obj in objects:
            self.put(obj)

    def get(self, kind: str, key: str) -> PolicyObject | None:
        if kind == "Namespace":
            return self.namespaces.get(key)
        if kind == "Pod":
            return self.pods.get(key)
        if kind == "NetworkAttachmentDefinition":
            return self.nads.get(key)
        if kind == "MultiNetworkPolicy":
            return self.policies.get(key)
        raise ValueError(f"unsupported kind {kind!r}")

    def put(self, obj: PolicyObject) -> PolicyObject | None:
        """Insert or replace; returns the previous version."""
        old = self.remove(kind_of(obj), obj.key)
        if isinstance(obj, Namespace):
            self.namespaces[obj.key] = obj
        elif isinstance(obj, Pod):
            self.pods[obj.key] = obj
            self._pods_by_ns[obj.namespace].add(obj.key)
            self.pod_labels.add(obj.key, obj.labels)
            for network in obj.network_keys():
                self._pods_by_network[network].add(obj.key)
                self._peer_cache.pop(network, None)
        elif isinstance(obj, NetworkAttachmentDefinition):
            self.nads[obj.key] = obj
        else:
            self.policies[obj.key] = obj
            self._policies_by_ns[obj.namespace].add(obj.key)
            for network in obj.networks:
                self._policies_by_network[network].add(obj.key)
        return old

    def remove(self, kind: str, key: str) -> PolicyObject | None:
        """Delete; returns what was there (``None`` when already gone)."""
        old = self.get(kind, key)
        if isinstance(old, Namespace):
            del self.namespaces[key]
        elif isinstance(old, Pod):
            del self.pods[key]
            _discard(self._pods_by_ns, old.namespace, key)
            self.pod_labels.discard(key, old.labels)
            for network in old.network_keys():
                _discard(self._pods_by_network, network, key)
                self._peer_cache.pop(network, None)
        elif isinstance(old, NetworkAttachmentDefinition):
            del self.nads[key]
        elif isinstance(old, MultiNetworkPolicy):
            del self.policies[key]
            _discard(self._policies_by_ns, old.namespace, key)
            for network in old.networks:
                _discard(self._policies_by_network, network, key)
        return old

    def pods_on(self, network: str) -> list[Pod]:
        """Peer candidates with at least one entry on ``network``, in a stable
        order. The list is shared: callers must not mutate it."""
        cached = self._peer_cache.get(network)
        if cached is None:
            pods = (self.pods[k] for k in sorted(self._pods_by_network.get(network, ())))
            cached = self._peer_cache[network] = [p for p in pods if p.is_peer_candidate]
        return cached

    def peer_candidates(
        self, network: str, namespace: str | None, selector: LabelSelector | None
    ) -> list[Pod]:
        """Peer candidates on ``network`` (in ``namespace`` when given) that
        ``selector`` may match, smallest index first; the caller applies the
        exact selector. Sorted like ``pods_on``."""
        terms: list[Term] = [(self._pods_by_network.get(network, _NONE),)]
        if namespace is not None:
            terms.append((self._pods_by_ns.get(namespace, _NONE),))
        if selector is not None:
            terms.extend(self.pod_labels.terms(selector))
        keys = intersect(terms) or ()
        pods = (self.pods[k] for k in sorted(keys))
        return [p for p in pods if p.is_peer_candidate]

    def policies_for_network(self, network: str) -> list[str]:
        return sorted(self._policies_by_network.get(network, ()))

    def policies_in(self, namespace: str) -> list[MultiNetworkPolicy]:
        return [self.policies[k] for k in sorted(self._policies_by_ns.get(namespace, ()))]

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        ns = self.namespaces.get(namespace)
        # A namespace we have not seen (yet) still has its implicit name label.
        return ns.labels if ns is not None else implicit_namespace_labels(namespace)

    def objects(self) -> Iterable[PolicyObject]:
        yield from self.namespaces.values()
        yield from self.pods.values()
        yield from self.nads.values()
        yield from self.policies.values()


_NONE: frozenset[str] = frozenset()


def _discard(index: dict[str, set[str]], key: str, ident: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(ident)
        if not bucket:
            del index[key]  # bounded memory under churn
