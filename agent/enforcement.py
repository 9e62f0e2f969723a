"""MultiNetworkPolicy enforcement: objects + attachments → engine → BPF.

Three inputs meet here: Kubernetes objects from an ObjectSource (directory or
API), the node's attachments (SR-IOV VFs and chained interfaces, from the
store and the CNI hooks), and the compiled tables the datapath loads. Local
pods' network-status comes from our own attachments (we know their IPs before
Multus writes the annotation); peers elsewhere from their annotations.

One lock serializes engine and datapath work: events arrive from the source
(through ``policy_feed.PolicyFeed``'s worker, a small batch per hold of the
lock) and from CNI request threads. A CNI call waiting for the lock goes
before the feed's next batch, so a burst of events delays it by one batch at
most.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nicwarden.agent.drop_events import IfaceOwner
from nicwarden.agent.policy import (
    Action,
    CompileOptions,
    Event,
    InterfaceKey,
    LoweredInterface,
    ObjectStatus,
    PolicedInterface,
    PolicyEngine,
)
from nicwarden.agent.policy.pod_record import pod_object
from nicwarden.agent.policy_feed import PolicyFeed, Priority
from nicwarden.agent.store import Attachment, AttachmentKey, Store
from nicwarden.bpf.layout import IfaceKey

if TYPE_CHECKING:
    # Types only: importing them would pull in pyroute2 and the Kubernetes
    # client, which policy-only users of this module never need.
    from nicwarden.agent.host.bpf import Datapath
    from nicwarden.agent.k8s.source import ObjectSource

log = logging.getLogger(__name__)

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


@dataclass
class _Local:
    """One policed interface on this node."""

    target: PolicedInterface
    netns: str
    ips: tuple[IPAddress, ...] = ()
    hardened: bool = False  # the strict host model is set on it
    iface: IfaceKey | None = None  # the datapath's key once attached
    generation: dict[str, int] = field(default_factory=dict)
    digest: str = ""
    applied_at: float = 0.0
    error: str = ""


def network_key(att: Attachment, nads: Mapping[tuple[str, str], str] | None = None) -> str:
    """The NAD (``ns/name``) an attachment belongs to.

    A delegate only learns the CNI network ``name`` (Multus passes no NAD
    namespace), which is the NAD's config name, usually the NAD's own name.
    Prefer a NAD of that name in the pod's namespace (Multus's default), else
    the only NAD anywhere whose name or config name matches (a pod may use
    ``other-ns/nad``), else assume the pod's namespace.
    """
    if "/" in att.network:
        return att.network
    if nads:
        if (att.pod_namespace, att.network) in nads:
            return f"{att.pod_namespace}/{att.network}"
        matches = sorted(
            f"{ns}/{name}" for (ns, name), conf in nads.items() if att.network in (name, conf)
        )
        if len(matches) == 1:
            return matches[0]
    return f"{att.pod_namespace}/{att.network}"


def _object_ident(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def nad_config_name(obj: Mapping[str, Any]) -> str:
    try:
        conf = json.loads(str(obj.get("spec", {}).get("config") or "{}"))
    except json.JSONDecodeError:
        return ""
    return str(conf.get("name", "")) if isinstance(conf, dict) else ""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def attachment_ips(att: Attachment) -> tuple[IPAddress, ...]:
    result = att.result or {}
    out = []
    for ip in result.get("ips", []):
        try:
            out.append(ipaddress.ip_interface(ip["address"]).ip)
        except (KeyError, ValueError):
            continue
    return tuple(out)


def attachment_mac(att: Attachment) -> str:
    for iface in (att.result or {}).get("interfaces", []):
        if iface.get("name") == att.ifname:
            return str(iface.get("mac", ""))
    return ""


class PolicyEnforcer:
    def __init__(
        self,
        store: Store,
        datapath: Datapath | None,
        source: ObjectSource | None,
        options: CompileOptions | None = None,
        datapath_error: str = "",
        on_invalid: Callable[[Mapping[str, Any], str], None] | None = None,
        strict_host_model: Callable[[str, str, tuple[IPAddress, ...]], None] | None = None,
    ) -> None:
        self.store = store
        self.datapath = datapath
        self.datapath_error = datapath_error
        self.source = source
        self.on_invalid = on_invalid
        # (netns, ifname, addresses) -> None: the strict host model on a pod
        # interface (agent/host/hostmodel.py), so that traffic for a policed
        # address can neither be drawn to nor enter through another network.
        self.strict_host_model = strict_host_model
        self._reported: dict[str, tuple[str, ...]] = {}
        self._logged: dict[str, set[str]] = {}  # policy key -> problems logged
        # Enough of each policy to name it in an Event that a pod event
        # causes (its tables crossing the datapath's limits).
        self._policy_refs: dict[str, dict[str, Any]] = {}
        self.engine = PolicyEngine(options)
        self._lock = threading.RLock()
        # CNI calls waiting for (or holding) the lock: the feed's worker lets
        # them go first. Python's locks are not fair, and a worker that takes
        # the lock again straight after releasing it would starve them.
        self._cni = Priority(max_wait_s=None)
        self._locals: dict[InterfaceKey, _Local] = {}
        # Pods with attachments here, as the source gave them (merged again
        # when an attachment comes or goes); any other pod is rebuilt from
        # the engine's record when it gets one, so the cluster's pods are
        # not kept twice.
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._nads: dict[tuple[str, str], str] = {}  # (ns, name) -> config name
        # Our ready attachments by pod: every pod event consults them, so they
        # are kept here rather than read back from the store each time.
        self._attached: dict[tuple[str, str], dict[AttachmentKey, Attachment]] = {}
        self.last_sync = 0.0
        self.syncs = 0
        # Until the source has delivered its initial state, tables computed
        # from a partial picture must not reach the kernel: after a restart
        # the pinned tables keep enforcing what was decided with full knowledge.
        self._primed = threading.Event()
        self._pending: set[InterfaceKey] = set()
        self._waiter: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for att in self.store.list_attachments():
                if att.state == "ready":
                    self._remember(att)
            self._retarget()
        if self.source is None:
            self._prime()
            return
        if isinstance(self.source, PolicyFeed):
            self.source.start_batched(self.on_events)
        else:
            self.source.start(self.on_event)
        self._waiter = threading.Thread(target=self._wait_synced, name="policy-prime", daemon=True)
        self._waiter.start()

    def _wait_synced(self) -> None:
        assert self.source is not None
        while not self._primed.is_set():
            if self.source.synced():
                self._prime()
                return
            time.sleep(0.05)

    def _prime(self) -> None:
        with self._lock:
            self._primed.set()
            keys = self._pending | {t.key for t in self.engine.targets()}
            self._pending.clear()
            self._sync(keys)
        log.info("policy enforcement primed", extra={"interfaces": len(self._locals)})

    @property
    def primed(self) -> bool:
        return self._primed.is_set()

    def stop(self) -> None:
        self._primed.set()  # ends the waiter
        if self.source is not None:
            self.source.stop()

    # -- inputs ----------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        kind = event.kind or str(event.obj.get("kind", ""))
        with self._lock:
            if kind == "Pod":
                event = self._merge_pod(event)
            try:
                changed = self.engine.apply(event)
            except Exception:
                log.exception("policy engine rejected an event", extra={"kind": kind})
                return
            self._sync(changed)
            if kind == "NetworkAttachmentDefinition":
                if self._track_nad(event):
                    self._rekey()
                # A NAD appearing or going makes policies naming it (in)effective.
                for key in self.engine.policies_naming(_object_ident(event.obj)):
                    self._log_problems(key)
            if kind == "MultiNetworkPolicy":
                self._report(event)
                self._log_problems(_object_ident(event.obj))
            self._policy_status_changed()

    def on_events(self, events: Sequence[Event]) -> None:
        """A batch from the policy feed, under one hold of the lock, after
        any CNI call that is waiting for it."""
        self._cni.wait_idle()
        with self._lock:
            for event in events:
                self.on_event(event)

    @contextmanager
    def _cni_turn(self) -> Iterator[None]:
        with self._cni.running(), self._lock:
            yield

    def on_attach(self, att: Attachment) -> None:
        with self._cni_turn():
            self._remember(att)
            self._refresh_pod(att.pod_namespace, att.pod_name)
            self._retarget()

    def on_detach(self, att: Attachment) -> None:
        with self._cni_turn():
            key = self._key_of(att)
            local = self._locals.pop(key, None)
            if local is not None and local.iface is not None and self.datapath is not None:
                try:
                    self.datapath.detach(local.iface)
                except Exception as e:  # the netns may already be gone
                    log.warning(
                        "datapath detach failed", extra={"iface": str(key), "error": str(e)}
                    )
            ident = (att.pod_namespace, att.pod_name)
            self._attached.get(ident, {}).pop(att.key, None)
            if not self._attached.get(ident):
                self._attached.pop(ident, None)
            self._refresh_pod(*ident)
            self._retarget()

    # -- internals ---------------------------------------------------------------

    def _report(self, event: Event) -> None:
        """An Event per policy that fails validation (once per distinct error)."""
        meta = event.obj.get("metadata", {})
        key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        if event.action == Action.DELETE:
            self._policy_refs.pop(key, None)
            self._reported.pop(key, None)
            return
        self._policy_refs[key] = _policy_ref(event.obj)
        self._report_status(key, event.obj)

    def _policy_status_changed(self) -> None:
        """Report policies whose status changed without an event of their own:
        a pod or interface change pushed their tables past the datapath's
        limits (or back under)."""
        for key in sorted(self.engine.take_policy_changes()):
            ref = self._policy_refs.get(key)
            if ref is not None:
                self._report_status(key, ref)
            self._log_problems(key)

    def _report_status(self, key: str, obj: Mapping[str, Any]) -> None:
        if self.on_invalid is None:
            return
        status = self.engine.policy_status(key)
        errors = tuple(status.errors) if status is not None and not status.ok else ()
        if errors and self._reported.get(key) != errors:
            self.on_invalid(obj, "; ".join(errors) + " (fails closed for the pods it selects)")
        self._reported[key] = errors

    def _log_problems(self, key: str) -> None:
        """Log each of a policy's problems once when it appears and once when
        it clears, not on every resync or unrelated update."""
        status = self.engine.policy_status(key)
        now = set(status.errors + status.warnings) if status is not None else set()
        before = self._logged.get(key, set())
        for problem in sorted(now - before):
            log.warning("policy problem", extra={"policy": key, "problem": problem})
        for problem in sorted(before - now):
            log.info("policy problem cleared", extra={"policy": key, "problem": problem})
        if now:
            self._logged[key] = now
        else:
            self._logged.pop(key, None)

    def _track_nad(self, event: Event) -> bool:
        """Remember NAD names; True when the set changed (targets may rekey)."""
        meta = event.obj.get("metadata", {})
        ident = (str(meta.get("namespace", "default")), str(meta.get("name", "")))
        before = dict(self._nads)
        if event.action == Action.DELETE:
            self._nads.pop(ident, None)
        else:
            self._nads[ident] = nad_config_name(event.obj)
        return before != self._nads

    def _rekey(self) -> None:
        """NADs changed: an attachment's network may now resolve elsewhere."""
        for (ns, name), atts in self._attached.items():
            for att in atts.values():
                target = self._target_of(att)
                local = self._locals.get(target.key)
                if local is not None:
                    local.target = target
            # Our pods' network-status entries are named by network too.
            self._refresh_pod(ns, name)
        self._retarget()

    def _key_of(self, att: Attachment) -> InterfaceKey:
        return self._target_of(att).key

    def _target_of(self, att: Attachment) -> PolicedInterface:
        return PolicedInterface(
            namespace=att.pod_namespace,
            pod=att.pod_name,
            ifname=att.ifname,
            network=network_key(att, self._nads),
            ips=attachment_ips(att),
            pod_uid=att.pod_uid,
        )

    def _remember(self, att: Attachment) -> None:
        self._attached.setdefault((att.pod_namespace, att.pod_name), {})[att.key] = att
        self._add_local(att)

    def _add_local(self, att: Attachment) -> None:
        if not att.pod_name or att.kind == "dpdk":
            return  # no pod identity to select on, or no kernel interface to police
        target = self._target_of(att)
        local = _Local(target=target, netns=att.netns, ips=attachment_ips(att))
        self._locals[target.key] = local
        # A pod that already has a policed interface gets the strict host
        # model on its new one too, so neither answers for the other.
        if any(o.hardened and o.netns == att.netns for o in self._locals.values()):
            self._harden(local)

    def _harden_netns(self, netns: str) -> None:
        """The strict host model on every interface of a pod whose interface
        a policy has just isolated. Only then does the weak host model open a
        bypass; setting it on every ADD cost ~15-25 ms per pod for nothing."""
        for local in self._locals.values():
            if local.netns == netns and not local.hardened:
                self._harden(local)

    def _harden(self, local: _Local) -> None:
        if self.strict_host_model is None:
            return
        try:
            self.strict_host_model(local.netns, local.target.ifname, local.ips)
            local.hardened = True
        except Exception as e:  # the pod's netns may be gone already
            log.warning(
                "cannot set the strict host model",
                extra={"iface": str(local.target.key), "error": str(e)},
            )

    def _retarget(self) -> None:
        changed = self.engine.set_targets([loc.target for loc in self._locals.values()])
        self._sync(changed)
        self._policy_status_changed()

    def _merge_pod(self, event: Event) -> Event:
        meta = event.obj.get("metadata", {})
        ident = (str(meta.get("namespace", "default")), str(meta.get("name", "")))
        if event.action == Action.DELETE:
            self._pods.pop(ident, None)
            return event
        if ident in self._attached:
            self._pods[ident] = dict(event.obj)
        else:
            self._pods.pop(ident, None)
        return Event(event.action, self._with_local_status(event.obj, ident), event.kind)

    def _refresh_pod(self, ns: str, name: str) -> None:
        obj = self._pods.get((ns, name))
        if obj is None:
            record = self.engine.state.pods.get(f"{ns}/{name}")
            if record is None:
                return  # not seen yet: its event will be merged
            obj = self._pods[(ns, name)] = pod_object(record)
        changed = self.engine.apply(
            Event(Action.UPDATE, self._with_local_status(obj, (ns, name)), "Pod")
        )
        self._sync(changed)
        self._policy_status_changed()

    def _with_local_status(self, obj: Mapping[str, Any], ident: tuple[str, str]) -> dict[str, Any]:
        """The pod with its network-status entries for our attachments
        replaced by what we know first-hand."""
        mine = list(self._attached.get(ident, {}).values())
        if not mine:
            return dict(obj)
        meta = dict(obj.get("metadata", {}))
        annotations = dict(meta.get("annotations") or {})
        try:
            entries = json.loads(annotations.get(NETWORK_STATUS, "[]"))
            if not isinstance(entries, list):
                entries = []
        except json.JSONDecodeError:
            entries = []
        ours = {network_key(a, self._nads) for a in mine}
        entries = [e for e in entries if isinstance(e, dict) and e.get("name") not in ours]
        for a in mine:
            entries.append(
                {
                    "name": network_key(a, self._nads),
                    "interface": a.ifname,
                    "ips": [str(ip) for ip in attachment_ips(a)],
                    "mac": attachment_mac(a),
                    "dns": {},
                }
            )
        annotations[NETWORK_STATUS] = json.dumps(entries)
        meta["annotations"] = annotations
        return {**obj, "metadata": meta}

    def _sync(self, changed: set[InterfaceKey]) -> None:
        if not changed:
            return
        if not self._primed.is_set():
            self._pending |= changed
            return
        self.syncs += 1
        self.last_sync = time.time()
        for key in sorted(changed):
            local = self._locals.get(key)
            lowered = self.engine.lowered(key)
            if local is not None and lowered is not None:
                self._load(key, local, lowered)

    def _load(self, key: InterfaceKey, local: _Local, lowered: LoweredInterface) -> None:
        """Put the interface's tables in the kernel; a failure is recorded in
        ``local.error`` (and logged), never raised."""
        local.digest = lowered.digest()
        if self.datapath is None:
            local.error = f"no datapath: {self.datapath_error}"
            return
        isolated = lowered.ingress.isolated or lowered.egress.isolated
        if local.iface is None and not isolated:
            return  # nothing attached until a policy first isolates it
        from nicwarden.bpf.layout import Direction

        try:
            if isolated and not local.hardened:  # also after a restart's adoption
                self._harden_netns(local.netns)
            if local.iface is None:
                local.iface = self.datapath.attach(local.netns, local.target.ifname)
            for name, direction, table in (
                ("ingress", Direction.INGRESS, lowered.ingress),
                ("egress", Direction.EGRESS, lowered.egress),
            ):
                local.generation[name] = self.datapath.apply(local.iface, direction, table)
            local.applied_at = time.time()
            local.error = "; ".join(lowered.errors)
        except Exception as e:
            local.error = f"datapath: {e}"
            log.error("policy load failed", extra={"iface": str(key), "error": str(e)})

    # -- reporting -----------------------------------------------------------------

    def interfaces(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._interface_row(k, loc) for k, loc in sorted(self._locals.items())]

    def interfaces_page(
        self, after: str | None, limit: int, namespace: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` (row key, row) after row key ``after``, in row key
        order, only ``namespace``'s pods when given: counters are read for
        the page's interfaces only. (This node's interfaces are few.)"""
        with self._lock:
            keys = sorted(
                (str(k), k)
                for k, loc in self._locals.items()
                if namespace is None or loc.target.namespace == namespace
            )
            keys = [(s, k) for s, k in keys if after is None or s > after][:limit]
            return [(s, self._interface_row(k, self._locals[k])) for s, k in keys]

    def _interface_row(self, key: InterfaceKey, local: _Local) -> dict[str, Any]:
        tables = self.engine.tables(key)
        lowered = self.engine.lowered(key)
        counters: dict[str, int] = {}
        if local.iface is not None and self.datapath is not None:
            try:
                for (d, v), c in self.datapath.counters(local.iface).items():
                    counters[f"{d.name.lower()}_{v.name.lower()}"] = int(c.packets)
            except Exception as e:
                local.error = f"counters: {e}"
        return {
            "key": str(key),
            "pod": f"{local.target.namespace}/{local.target.pod}",
            "ifname": local.target.ifname,
            "network": local.target.network,
            "ingress_isolated": bool(lowered and lowered.ingress.isolated),
            "egress_isolated": bool(lowered and lowered.egress.isolated),
            "ingress_entries": len(lowered.ingress.peers) if lowered else 0,
            "egress_entries": len(lowered.egress.peers) if lowered else 0,
            "policies": list(tables.policies) if tables else [],
            "errors": [
                *(tables.errors if tables else ()),
                *([local.error] if local.error else []),
            ],
            "generation": max(local.generation.values(), default=0),
            "digest": local.digest[:12],
            "counters": counters,
        }

    def policed(self) -> list[tuple[str, str, str, str, IfaceKey | None, dict[str, int], float]]:
        """(namespace, pod, network, ifname, datapath key, generation by
        direction, last successful apply) of each policed interface: what
        the metrics label the datapath's counters with."""
        with self._lock:
            return [
                (
                    loc.target.namespace,
                    loc.target.pod,
                    loc.target.network,
                    loc.target.ifname,
                    loc.iface,
                    dict(loc.generation),
                    loc.applied_at,
                )
                for _key, loc in sorted(self._locals.items())
            ]

    def owner_of(self, iface_id: int) -> IfaceOwner | None:
        """Who a datapath interface key stands for (drop records name it)."""
        with self._lock:
            for key, loc in self._locals.items():
                if loc.iface is not None and loc.iface.id == iface_id:
                    tables = self.engine.tables(key)
                    return IfaceOwner(
                        loc.target.namespace,
                        loc.target.pod,
                        loc.target.network,
                        loc.target.ifname,
                        tuple(tables.policies) if tables else (),
                    )
        return None

    def objects(self) -> list[dict[str, Any]]:
        """Every object's status row, then the source's problems: O(cluster),
        for tests and small clusters; the API pages with ``objects_page``."""
        with self._lock:
            rows = [_status_row(s) for s in self.engine.status()]
        return rows + [row for _, row in self.source_rows()]

    def objects_page(
        self,
        after: tuple[str, str] | None,
        limit: int,
        *,
        kind: str | None = None,
        namespace: str | None = None,
        problems_only: bool = False,
    ) -> list[ObjectStatus]:
        """Up to ``limit`` statuses after (kind, key) ``after`` in key order,
        filtered as ``PolicyEngine.status_page``: O(limit + log n). (Statuses
        are immutable: no copy, and the lock is held for the read only.)"""
        with self._lock:
            return self.engine.status_page(
                after, limit, kind=kind, namespace=namespace, problems_only=problems_only
            )

    def malformed(self) -> tuple[dict[str, int], dict[str, int]]:
        """(objects malformed now, times an object became malformed), by kind."""
        with self._lock:
            return self.engine.malformed(), dict(self.engine.malformed_total)

    def object_counts(self) -> tuple[int, int]:
        """(objects followed, those with errors or warnings), unfiltered."""
        with self._lock:
            return self.engine.status_counts()

    def source_rows(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        """The source's problems (files or objects it could not read) as
        ((key, message), row), sorted: few, and always problems."""
        if self.source is None:
            return []
        rows = []
        for p in self.source.problems():
            key, message = str(getattr(p, "file", "") or getattr(p, "object", "")), str(p)
            row = {"kind": "Source", "key": key, "ok": False, "errors": [message], "warnings": []}
            rows.append(((key, message), row))
        rows.sort(key=lambda r: r[0])
        return rows


def _policy_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    kept = ("name", "namespace", "uid", "resourceVersion")
    return {
        "apiVersion": obj.get("apiVersion", ""),
        "kind": "MultiNetworkPolicy",
        "metadata": {k: meta[k] for k in kept if k in meta},
    }


def _status_row(s: ObjectStatus) -> dict[str, Any]:
    return {
        "kind": s.kind,
        "key": s.key,
        "ok": s.ok,
        "errors": list(s.errors),
        "warnings": list(s.warnings),
    }
