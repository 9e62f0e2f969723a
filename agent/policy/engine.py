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

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import InvalidArgument
from .compiler import compile_interface
from .lower import DEFAULT_LIMITS, LoweredInterface, TableLimits, lower_interface
from .objects import (
    KINDS,
    MultiNetworkPolicy,
    Namespace,
    Pod,
    PolicyObject,
    implicit_namespace_labels,
    kind_of,
    network_status_errors,
    parse_object,
)
from .reach import covering, namespace_reaches, pod_reaches
from .sorted_keys import SortedKeys
from .state import ClusterState
from .tables import CompileOptions, InterfaceKey, InterfaceTables, PolicedInterface

log = logging.getLogger(__name__)


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
        self,
        options: CompileOptions | None = None,
        state: ClusterState | None = None,
        limits: TableLimits = DEFAULT_LIMITS,
    ) -> None:
        self.options = options or CompileOptions()
        self.state = state or ClusterState()
        self.limits = limits
        # Objects whose latest version is malformed where enforcement reads
        # it (a pod's network-status), with the problems; and how many times
        # an object became so. Logged on each such transition only.
        self._malformed: dict[tuple[str, str], tuple[str, ...]] = {}
        self.malformed_total: dict[str, int] = {}
        # Interface directions that failed closed because their tables exceed
        # the datapath's limits, blamed on the policies isolating them:
        # policy key -> {(interface, direction): reason}, and the inverse.
        self._over_limit: dict[str, dict[tuple[InterfaceKey, str], str]] = {}
        self._blamed: dict[InterfaceKey, set[str]] = {}
        # Policies whose status changed other than by an event of their own
        # (a pod event grew a table past the limits): see take_policy_changes.
        self._policy_changes: set[str] = set()
        self._targets: dict[InterfaceKey, PolicedInterface] = {}
        self._compiled: dict[InterfaceKey, _Compiled] = {}
        self._by_network: dict[str, set[InterfaceKey]] = {}
        self._by_pod: dict[tuple[str, str], set[InterfaceKey]] = {}
        # Per-object status, refreshed when that object (or a NAD a policy
        # names) changes, never rebuilt for the whole cluster.
        self._status: dict[tuple[str, str], ObjectStatus] = {}
        # Status keys in order, and those with errors or warnings, so that a
        # page of either (what an admin asks for at 100,000 objects) costs
        # O(page + log n), not a sort of the cluster.
        self._keys: SortedKeys[tuple[str, str]] = SortedKeys()
        self._problems: SortedKeys[tuple[str, str]] = SortedKeys()
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
            self._malformed.pop((kind, key), None)
            old = self.state.remove(kind, key)
            self._refresh_status(kind, key)
            return self._recompute(self._affected(old, None))
        try:
            new = parse_object(event.obj, kind)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if isinstance(new, Pod):
            new = self._keep_networks(new)
        old = self.state.put(new)
        self._refresh_status(kind, new.key)
        if (
            isinstance(new, Pod)
            and isinstance(old, Pod)
            and old == dataclasses.replace(new, errors=old.errors)
        ):
            # Only its problems changed (a bad network-status while the last
            # good one is kept, or a resync): nothing compiled reads them.
            return set()
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
            self._blame(key, None, {})
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
        return [self._status_at(k) for k in self._keys]

    def status_page(
        self,
        after: tuple[str, str] | None = None,
        limit: int = 500,
        *,
        kind: str | None = None,
        namespace: str | None = None,
        problems_only: bool = False,
    ) -> list[ObjectStatus]:
        """Up to ``limit`` statuses with (kind, key) after ``after``, sorted;
        only ``kind``'s, only ``namespace``'s (a Namespace object counts as
        its own), only those with errors or warnings, when asked. Every filter
        is a key range, so a page costs O(limit + log n)."""
        if limit < 1:
            raise InvalidArgument("limit must be at least 1")
        if kind is not None and kind not in KINDS:
            raise InvalidArgument(f"unsupported object kind {kind!r}")
        if namespace is not None and (not namespace or "/" in namespace):
            raise InvalidArgument(f"namespace {namespace!r} is not a namespace name")
        index = self._problems if problems_only else self._keys
        out: list[ObjectStatus] = []
        for low, high in _key_ranges(kind, namespace):
            inclusive = True
            if after is not None:
                if high is not None and not after < high:
                    continue
                if low is None or not after < low:
                    low, inclusive = after, False
            for k in index.irange(low, high, low_inclusive=inclusive):
                out.append(self._status_at(k))
                if len(out) == limit:
                    return out
        return out

    def status_counts(self) -> tuple[int, int]:
        """(objects, objects with errors or warnings)."""
        return len(self._keys), len(self._problems)

    def policy_status(self, key: str) -> ObjectStatus | None:
        """One MultiNetworkPolicy's status (``ns/name``), or None when absent."""
        k = ("MultiNetworkPolicy", key)
        return self._status_at(k) if k in self._keys else None

    def malformed(self) -> dict[str, int]:
        """Objects currently malformed, by kind."""
        out: dict[str, int] = {}
        for kind, _key in self._malformed:
            out[kind] = out.get(kind, 0) + 1
        return out

    def take_policy_changes(self) -> set[str]:
        """Keys of policies whose status changed since the last call for a
        reason other than their own event (their tables crossed the
        datapath's limits because peers came or went)."""
        out, self._policy_changes = self._policy_changes, set()
        return out

    def policies_naming(self, network: str) -> list[str]:
        """Keys of the policies whose policy-for names ``network`` (``ns/nad``)."""
        return self.state.policies_for_network(network)

    def _refresh_status(self, kind: str, key: str) -> None:
        obj = self.state.get(kind, key)
        k = (kind, key)
        if obj is None:
            self._status.pop(k, None)
            self._keys.discard(k)
            self._problems.discard(k)
        else:
            self._keys.add(k)
            # Most objects (a cluster's pods) are fine: their status is made
            # when asked for, not kept 100,000 times. Only a policy's status
            # has more to it than the object's own errors.
            status = (
                None if not obj.errors and kind != "MultiNetworkPolicy" else self._status_of(obj)
            )
            if status is None or (status.ok and not status.warnings):
                self._status.pop(k, None)
                self._problems.discard(k)
            else:
                self._status[k] = status
                self._problems.add(k)
        if kind == "NetworkAttachmentDefinition":
            # A NAD appearing or going makes policies naming it (in)effective.
            for policy in self.state.policies_for_network(key):
                self._refresh_status("MultiNetworkPolicy", policy)

    def _status_at(self, k: tuple[str, str]) -> ObjectStatus:
        found = self._status.get(k)
        return found if found is not None else ObjectStatus(k[0], k[1], True)

    def _status_of(self, obj: PolicyObject) -> ObjectStatus:
        warnings: tuple[str, ...] = ()
        errors = tuple(obj.errors)
        if isinstance(obj, MultiNetworkPolicy):
            warnings = obj.warnings + self._dangling(obj)
            errors += self._limit_errors(obj.key)
        return ObjectStatus(kind_of(obj), obj.key, not errors, errors, warnings)

    def _limit_errors(self, policy: str) -> tuple[str, ...]:
        found = self._over_limit.get(policy)
        if not found:
            return ()
        out = []
        for (iface, direction), reason in sorted(found.items()):
            t = self._targets.get(iface)
            where = f"pod {t.namespace}/{t.pod} {t.ifname}" if t else str(iface)
            out.append(
                f"MultiNetworkPolicy {policy}: {direction} table of {where} exceeds the "
                f"datapath's limits ({reason}); that direction fails closed (deny-all)"
            )
        return tuple(out)

    def _keep_networks(self, pod: Pod) -> Pod:
        """A malformed network-status says nothing reliable about the pod's
        addresses: keep those of its last good version (same pod: same UID),
        else none, so a bad write neither drops the pod out of peer sets nor
        adds addresses. Logged when the pod becomes malformed, not on every
        event or resync of it."""
        key = ("Pod", pod.key)
        problems = network_status_errors(pod)
        if not problems:
            if self._malformed.pop(key, None) is not None:
                log.info("pod network-status valid again", extra={"pod": pod.key})
            return pod
        if key not in self._malformed:
            self.malformed_total["Pod"] = self.malformed_total.get("Pod", 0) + 1
            log.warning(
                "malformed pod network-status; keeping the pod's last valid networks",
                extra={"pod": pod.key, "problem": "; ".join(problems)[:1024]},
            )
        self._malformed[key] = problems
        old = self.state.pods.get(pod.key)
        same = old is not None and (not old.uid or not pod.uid or old.uid == pod.uid)
        kept = old.networks if old is not None and same else ()
        return pod if kept == pod.networks else dataclasses.replace(pod, networks=kept)

    def _blame(
        self, iface: InterfaceKey, tables: InterfaceTables | None, failed: Mapping[str, str]
    ) -> None:
        """Record which policies make ``iface``'s failed directions fail
        closed (those selecting it that isolate the direction)."""
        now: dict[str, dict[str, str]] = {}
        if tables is not None and failed:
            for pkey in tables.policies:
                policy = self.state.policies.get(pkey)
                if policy is None:
                    continue
                for direction, reason in failed.items():
                    # Lowering names directions "ingress"; policyTypes "Ingress".
                    if direction.capitalize() in policy.policy_types:
                        now.setdefault(pkey, {})[direction] = reason
        before = self._blamed.get(iface, set())
        for pkey in before | set(now):
            entries = self._over_limit.get(pkey, {})
            old = {d: r for (k, d), r in entries.items() if k == iface}
            if old == now.get(pkey, {}):
                continue
            for d in old:
                del entries[(iface, d)]
            for d, r in now.get(pkey, {}).items():
                entries[(iface, d)] = r
            if entries:
                self._over_limit[pkey] = entries
            else:
                self._over_limit.pop(pkey, None)
            self._policy_changes.add(pkey)
            self._refresh_status("MultiNetworkPolicy", pkey)
        if now:
            self._blamed[iface] = set(now)
        else:
            self._blamed.pop(iface, None)

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
                # A policy shapes only the tables of the pods it selects, so
                # an update that moves its podSelector recomputes those it
                # selected and those it now selects, not its whole namespace.
                for network in obj.networks:
                    keys |= {
                        k
                        for k in self._by_network.get(network, ())
                        if self._targets[k].namespace == obj.namespace
                        and self._may_select(obj, self._targets[k])
                    }
            # NetworkAttachmentDefinitions feed status only: policies name
            # networks by key, and interfaces carry their network themselves.
        return keys

    def _may_select(self, policy: MultiNetworkPolicy, target: PolicedInterface) -> bool:
        """As compile_interface decides: an unknown pod is denied by any
        policy on its network, and a missing podSelector selects every pod."""
        pod = self.state.pods.get(f"{target.namespace}/{target.pod}")
        return pod is None or policy.pod_selector is None or policy.pod_selector.matches(pod.labels)

    def _recompute(self, keys: Iterable[InterfaceKey]) -> set[InterfaceKey]:
        changed: set[InterfaceKey] = set()
        for key in keys:
            tables = compile_interface(self.state, self._targets[key], self.options)
            previous = self._compiled.get(key)
            # From the last lowering, a pod entering or leaving costs O(its
            # addresses), not O(the table).
            lowered = lower_interface(tables, previous.lowered if previous else None, self.limits)
            if previous is None or previous.lowered != lowered:
                changed.add(key)
            self._compiled[key] = _Compiled(tables, lowered, lowered.digest())
            if lowered.failed or key in self._blamed:
                self._blame(key, tables, lowered.failed)
        return changed


def _key_ranges(
    kind: str | None, namespace: str | None
) -> list[tuple[tuple[str, str] | None, tuple[str, str] | None]]:
    """[low, high) ranges of (kind, key) holding what the filters select, in
    key order. Namespaced keys are "ns/name", so a namespace is the prefix
    "ns/": from "ns/" up to "ns0" ("0" follows "/")."""
    if kind is None and namespace is None:
        return [(None, None)]
    kinds = [kind] if kind is not None else sorted(KINDS)
    if namespace is None:
        # Every (k, key) sorts below (k + NUL, ""), and above (k, "").
        return [((k, ""), (k + "\0", "")) for k in kinds]
    return [
        ((k, namespace), (k, namespace + "\0"))
        if k == "Namespace"
        else ((k, namespace + "/"), (k, namespace + "0"))
        for k in kinds
    ]


def _object_key(kind: str, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise InvalidArgument(f"{kind}: metadata.name missing")
    if kind == "Namespace":
        return str(meta["name"])
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"
