"""Incremental policy recompute: feed object events and the node's policed
interfaces in; get back the interfaces whose lowered tables changed, so the
datapath reloads only those.

Each event recomputes only the interfaces it can affect (a pod: interfaces on
the networks it is or was on, and its own; a policy: interfaces of its
namespace on the networks it names or named; a namespace: all, since its
labels feed namespaceSelectors everywhere). Whether an interface *changed* is
decided by the digest of its lowered tables, so a relabel that moves no
address or port reloads nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import InvalidArgument
from .compiler import compile_interface
from .lower import LoweredInterface, lower_interface
from .objects import KINDS, MultiNetworkPolicy, Namespace, Pod, PolicyObject, kind_of, parse_object
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


@dataclass(frozen=True)
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

    # -- inputs -----------------------------------------------------------

    def apply(self, event: Event) -> set[InterfaceKey]:
        """Apply one add/update/delete; returns the interfaces whose lowered
        tables changed. Raises ``InvalidArgument`` for an object that cannot
        be identified (no kind, no name)."""
        kind = event.kind or event.obj.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise InvalidArgument(f"unsupported object kind {kind!r}")
        if event.action is Action.DELETE:
            old = self.state.remove(kind, _object_key(kind, event.obj))
            return self._recompute(self._affected(old, None))
        try:
            new = parse_object(event.obj, kind)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        old = self.state.put(new)
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
        out = [self._status_of(obj) for obj in self.state.objects()]
        return sorted(out, key=lambda s: (s.kind, s.key))

    def policy_status(self, key: str) -> ObjectStatus | None:
        """One MultiNetworkPolicy's status (``ns/name``), or None when absent."""
        policy = self.state.policies.get(key)
        return self._status_of(policy) if policy is not None else None

    def policies_naming(self, network: str) -> list[str]:
        """Keys of the policies whose policy-for names ``network`` (``ns/nad``)."""
        return sorted(k for k, p in self.state.policies.items() if network in p.networks)

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
        for obj in objs:
            if isinstance(obj, Namespace):
                return set(self._targets)
            if isinstance(obj, Pod):
                networks = obj.network_keys()
                keys |= {
                    k
                    for k, t in self._targets.items()
                    if t.network in networks or (t.namespace, t.pod) == (obj.namespace, obj.name)
                }
            elif isinstance(obj, MultiNetworkPolicy):
                keys |= {
                    k
                    for k, t in self._targets.items()
                    if t.namespace == obj.namespace and t.network in obj.networks
                }
            # NetworkAttachmentDefinitions feed status only: policies name
            # networks by key, and interfaces carry their network themselves.
        return keys

    def _recompute(self, keys: Iterable[InterfaceKey]) -> set[InterfaceKey]:
        changed: set[InterfaceKey] = set()
        for key in keys:
            tables = compile_interface(self.state, self._targets[key], self.options)
            lowered = lower_interface(tables)
            digest = lowered.digest()
            previous = self._compiled.get(key)
            if previous is None or previous.digest != digest:
                changed.add(key)
            self._compiled[key] = _Compiled(tables, lowered, digest)
        return changed


def _object_key(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise InvalidArgument(f"{kind}: metadata.name missing")
    if kind == "Namespace":
        return str(meta["name"])
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"
