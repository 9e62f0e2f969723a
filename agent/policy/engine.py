"""Incremental policy recompute: feed object events and the node's policed
interfaces in; get back the interfaces whose lowered tables changed, so the
datapath reloads only those.

Each event recomputes only the interfaces it can affect (a pod: its own, and
those on the networks it is or was on whose covering policies have a peer
selector that selects its old or new version; a policy: interfaces of its
namespace on the networks it names or named; a namespace: its own pods'
interfaces and those whose policies' namespaceSelectors match its old or new
labels; see reach.py). Whether an interface *changed* is
decided by the digest of its lowered tables, so a relabel that moves no
address or port reloads nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import InvalidArgument
from .compiler import compile_interface
from .lower import LoweredInterface, lower_interface
from .objects import (
    KINDS,
    MultiNetworkPolicy,
    Namespace,
    Pod,
    PolicyObject,
    implicit_namespace_labels,
    kind_of,
    parse_object,
)
from .reach import covering, namespace_reaches, pod_reaches
from .state import ClusterState
from .tables import CompileOptions, InterfaceKey, InterfaceTables, PolicedInterface


class Action(StrEnum):
    ADD = "add"
    UPDATE = "update"
    DELETE = "delete"


# Kubernetes watch event types, for callers that pass them straight through.
_WATCH_TYPES = {"ADDED": Action.ADD, "MODIFIED": Action.UPDATE, "DELETED": Action.DELETE}


@dataclass(frozen=True)
class Event:
    action: Action
    obj: Mapping[str, Any]
    kind: str | None = None  # default: obj["kind"]

    @classmethod
    def from_watch(cls, watch_type: str, obj: Mapping[str, Any], kind: str | None = None) -> Event:
        try:
            return cls(_WATCH_TYPES[watch_type], obj, kind)
        except KeyError:
            raise InvalidArgument(f"unknown watch event type {watch_type!r}") from None


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    kind: str
    key: str  # "name" for namespaces, "ns/name" otherwise
    ok: bool
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Compiled:
    tables: InterfaceTables
    lowered: LoweredInterface
    digest: str


class PolicyEngine:
    def __init__(
        self, options: CompileOptions | None = None, state: ClusterState | None = None
    ) -> None:
        self.options = options or CompileOptions()
        self.state = state or ClusterState()
        self._targets: dict[InterfaceKey, PolicedInterface] = {}
        self._compiled: dict[InterfaceKey, _Compiled] = {}
        self._by_network: dict[str, set[InterfaceKey]] = {}
        self._by_pod: dict[tuple[str, str], set[InterfaceKey]] = {}
        # Per-object status, refreshed when that object (or a NAD a policy
        # names) changes, never rebuilt for the whole cluster.
        self._status: dict[tuple[str, str], ObjectStatus] = {}
        for obj in self.state.objects():
            self._refresh_status(kind_of(obj), obj.key)

    # -- inputs -----------------------------------------------------------

    def apply(self, event: Event) -> set[InterfaceKey]:
        """Apply one add/update/delete; returns the interfaces whose lowered
        tables changed. Raises ``InvalidArgument`` for an object that cannot
        be identified (no kind, no name)."""
        kind = event.kind or event.obj.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise InvalidArgument(f"unsupported object kind {kind!r}")
        if event.action is Action.DELETE:
            key = _object_key(kind, event.obj)
            old = self.state.remove(kind, key)
            self._refresh_status(kind, key)
            return self._recompute(self._affected(old, None))
        try:
            new = parse_object(event.obj, kind)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        old = self.state.put(new)
        self._refresh_status(kind, new.key)
        return self._recompute(self._affected(old, new))

    def apply_all(self, events: Iterable[Event]) -> set[InterfaceKey]:
        changed: set[InterfaceKey] = set()
        for event in events:
            changed |= self.apply(event)
        return changed

    def set_targets(self, targets: Iterable[PolicedInterface]) -> set[InterfaceKey]:
        """Replace the node's policed interfaces. Returns the changed keys,
        removed interfaces included (their tables are gone: unload them)."""
        new: dict[InterfaceKey, PolicedInterface] = {}
        for target in targets:
            if target.key in new:
                raise InvalidArgument(f"interface {target.key} is listed twice")
            new[target.key] = target
        removed = set(self._targets) - set(new)
        for key in removed:
            self._compiled.pop(key, None)
        stale = {k for k, t in new.items() if self._targets.get(k) != t}
        self._targets = new
        self._by_network = {}
        self._by_pod = {}
        for k, t in new.items():
            self._by_network.setdefault(t.network, set()).add(k)
            self._by_pod.setdefault((t.namespace, t.pod), set()).add(k)
        return removed | self._recompute(stale)

    # -- outputs ----------------------------------------------------------

    def targets(self) -> list[PolicedInterface]:
        return [self._targets[k] for k in sorted(self._targets)]

    def tables(self, key: InterfaceKey) -> InterfaceTables | None:
        compiled = self._compiled.get(key)
        return compiled.tables if compiled else None

    def lowered(self, key: InterfaceKey) -> LoweredInterface | None:
        compiled = self._compiled.get(key)
        return compiled.lowered if compiled else None

    def digest(self, key: InterfaceKey) -> str | None:
        compiled = self._compiled.get(key)
        return compiled.digest if compiled else None

    def status(self) -> list[ObjectStatus]:
        """Validation status of every object, sorted by (kind, key)."""
        return [self._status[k] for k in sorted(self._status)]

    def status_page(
        self, after: tuple[str, str] | None = None, limit: int = 500
    ) -> list[ObjectStatus]:
        """Up to ``limit`` statuses with (kind, key) after ``after``, sorted."""
        if limit < 1:
            raise InvalidArgument("limit must be at least 1")
        keys = (k for k in self._status if after is None or k > after)
        return [self._status[k] for k in heapq.nsmallest(limit, keys)]

    def policy_status(self, key: str) -> ObjectStatus | None:
        """One MultiNetworkPolicy's status (``ns/name``), or None when absent."""
        return self._status.get(("MultiNetworkPolicy", key))

    def policies_naming(self, network: str) -> list[str]:
        """Keys of the policies whose policy-for names ``network`` (``ns/nad``)."""
        return self.state.policies_for_network(network)

    def _refresh_status(self, kind: str, key: str) -> None:
        obj = self.state.get(kind, key)
        if obj is None:
            self._status.pop((kind, key), None)
        else:
            self._status[(kind, key)] = self._status_of(obj)
        if kind == "NetworkAttachmentDefinition":
            # A NAD appearing or going makes policies naming it (in)effective.
            for policy in self.state.policies_for_network(key):
                self._refresh_status("MultiNetworkPolicy", policy)

    def _status_of(self, obj: PolicyObject) -> ObjectStatus:
        warnings: tuple[str, ...] = ()
        if isinstance(obj, MultiNetworkPolicy):
            warnings = obj.warnings + self._dangling(obj)
        return ObjectStatus(kind_of(obj), obj.key, not obj.errors, tuple(obj.errors), warnings)

    def _dangling(self, policy: MultiNetworkPolicy) -> tuple[str, ...]:
        # A policy-for naming no NAD is a silent no-op: no interface can be on
        # that network, so the policy isolates nothing there (a typo, or a
        # network in another namespace written without its namespace).
        return tuple(
            f"MultiNetworkPolicy {policy.key}: policy-for names {net}, but no "
            f"NetworkAttachmentDefinition {net} exists; the policy has no effect on it"
            for net in sorted(policy.networks)
            if net not in self.state.nads
        )

    # -- internals --------------------------------------------------------

    def _affected(self, old: PolicyObject | None, new: PolicyObject | None) -> set[InterfaceKey]:
        objs = [o for o in (old, new) if o is not None]
        keys: set[InterfaceKey] = set()
        if not objs:
            return keys
        first = objs[0]
        if isinstance(first, Namespace):
            labels = [
                o.labels if isinstance(o, Namespace) else implicit_namespace_labels(first.key)
                for o in (old, new)
            ]
            return {
                k
                for k, t in self._targets.items()
                if t.namespace == first.key
                or namespace_reaches(covering(self.state, t.namespace, t.network), labels)
            }
        for obj in objs:
            if isinstance(obj, Pod):
                keys |= self._by_pod.get((obj.namespace, obj.name), set())
                for network in obj.network_keys():
                    for k in self._by_network.get(network, ()):
                        if k in keys:
                            continue
                        t = self._targets[k]
                        if pod_reaches(self.state, covering(self.state, t.namespace, network), obj):
                            keys.add(k)
            elif isinstance(obj, MultiNetworkPolicy):
                for network in obj.networks:
                    keys |= {
                        k
                        for k in self._by_network.get(network, ())
                        if self._targets[k].namespace == obj.namespace
                    }
            # NetworkAttachmentDefinitions feed status only: policies name
            # networks by key, and interfaces carry their network themselves.
        return keys

    def _recompute(self, keys: Iterable[InterfaceKey]) -> set[InterfaceKey]:
        changed: set[InterfaceKey] = set()
        for key in keys:
            tables = compile_interface(self.state, self._targets[key], self.options)
            previous = self._compiled.get(key)
            # From the last lowering, a pod entering or leaving costs O(its
            # addresses), not O(the table).
            lowered = lower_interface(tables, previous.lowered if previous else None)
            if previous is None or previous.lowered != lowered:
                changed.add(key)
            self._compiled[key] = _Compiled(tables, lowered, lowered.digest())
        return changed


def _object_key(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise InvalidArgument(f"{kind}: metadata.name missing")
    if kind == "Namespace":
        return str(meta["name"])
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"
