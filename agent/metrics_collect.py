"""Scrape-time collectors: each reads its source when Prometheus scrapes,
and nothing runs when nobody does.

A collector that cannot read all of its source serves none of its series
for that scrape and says so in ``nicwarden_scrape_collector_success``: a
scrape gets a whole snapshot or a clear error, never a part of one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from nicwarden.agent import metrics_catalog as C
from nicwarden.agent.host.vfstats import VfCounters, VfRef, VfStatsReader
from nicwarden.agent.model import Inventory
from nicwarden.agent.store import Allocation, Attachment
from nicwarden.agent.thread_names import thread_role
from nicwarden.bpf.layout import EventStat

if TYPE_CHECKING:
    from nicwarden.agent.drop_events import DropEventHub
    from nicwarden.agent.enforcement import PolicyEnforcer
    from nicwarden.agent.policy_feed import FeedStats
    from nicwarden.deviceplugin.manager import PoolStatus

log = logging.getLogger(__name__)


def success(collector: str, ok: bool) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(C.SCRAPE_SUCCESS.name, C.SCRAPE_SUCCESS.help, labels=["collector"])
    fam.add_metric([collector], 1.0 if ok else 0.0)
    return fam


class Monotonic:
    """Counters that never go backwards across datapath map re-creation or
    an interface re-attached under a new key: when a source's raw value
    falls (or the source goes while its series stays), what it had counted
    is carried as an offset of the series."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[tuple[str, ...], str], int] = {}
        self._offset: dict[tuple[str, ...], int] = {}

    def update(self, raw: Mapping[tuple[tuple[str, ...], str], int]) -> dict[tuple[str, ...], int]:
        """``raw``: (series labels, source) -> current value. Returns the
        monotonic value of each series present."""
        with self._lock:
            present = {labels for labels, _ in raw}
            for key, last in list(self._last.items()):
                labels = key[0]
                now = raw.get(key)
                if now is None:
                    del self._last[key]
                    if labels in present:
                        self._offset[labels] = self._offset.get(labels, 0) + last
                elif now < last:
                    self._offset[labels] = self._offset.get(labels, 0) + last
            for labels in list(self._offset):
                if labels not in present:
                    del self._offset[labels]  # the series is gone: so is its history
            out: dict[tuple[str, ...], int] = {}
            for (labels, _source), value in raw.items():
                self._last[(labels, _source)] = value
                out[labels] = out.get(labels, 0) + value
            for labels in out:
                out[labels] += self._offset.get(labels, 0)
            return out


class VfStatsCollector:
    """``sriov_vf_*`` for every VF of every PF in the inventory."""

    def __init__(self, snapshot: Callable[[], Inventory], reader: VfStatsReader) -> None:
        self._snapshot = snapshot
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        families = {
            spec.name: UnknownMetricFamily(spec.name, spec.help, labels=list(spec.labels))
            for spec in C.VF_STATS
        }
        ok = True
        for pf in self._snapshot().pfs:
            if not pf.vfs or pf.fn.netdev is None:
                continue
            refs = [VfRef(vf.index, vf.fn.address) for vf in pf.vfs]
            try:
                found = self._reader.read(pf.fn.netdev.name, pf.fn.address, refs)
            except Exception as e:
                ok = False
                log.warning(
                    "VF statistics unreadable", extra={"pf": pf.fn.address, "error": str(e)}
                )
                continue
            numa = "" if pf.fn.numa_node < 0 else str(pf.fn.numa_node)
            for vf in pf.vfs:
                counters: VfCounters | None = found.get(vf.fn.address)
                if counters is None:
                    continue
                labels = [vf.fn.address, pf.fn.netdev.name, str(vf.index), numa]
                for name, value in counters.items():
                    families[f"sriov_vf_{name}"].add_metric(labels, float(value))
        yield from (f for f in families.values() if f.samples)
        yield success("vf_stats", ok)


def pod_devices(
    attachments: Iterable[Attachment], allocations: Iterable[Allocation]
) -> list[tuple[str, str, str, str, str]]:
    """(pciAddr, dev_type, pod, namespace, container) of each VF a pod holds:
    ready attachments with a device, typed by the resource that allocated it."""
    resource = {a.device_id: a.resource for a in allocations}
    rows = {}
    for att in attachments:
        if att.state != "ready" or not att.device or not att.pod_name:
            continue
        rows[att.device] = (
            att.device,
            resource.get(att.device, ""),
            att.pod_name,
            att.pod_namespace,
            att.container_id,
        )
    return [rows[k] for k in sorted(rows)]


class PodDeviceCollector:
    def __init__(
        self,
        attachments: Callable[[], Sequence[Attachment]],
        allocations: Callable[[], Sequence[Allocation]],
    ) -> None:
        self._attachments = attachments
        self._allocations = allocations

    def collect(self) -> Iterator[Metric]:
        spec = C.KUBEPODDEVICE
        fam = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        for row in pod_devices(self._attachments(), self._allocations()):
            fam.add_metric(list(row), 1.0)
        yield fam


class PoolSource(Protocol):
    def pools(self) -> list[PoolStatus]: ...


class PoolCollector:
    def __init__(
        self,
        source: Callable[[], PoolSource | None],
        allocations: Callable[[], Sequence[Allocation]],
    ) -> None:
        self._source = source
        self._allocations = allocations

    def collect(self) -> Iterator[Metric]:
        source = self._source()
        if source is None:
            return
        total, healthy, allocated = (
            GaugeMetricFamily(s.name, s.help, labels=["resource"])
            for s in (C.POOL_DEVICES, C.POOL_HEALTHY, C.POOL_ALLOCATED)
        )
        held: dict[str, set[str]] = {}
        for a in self._allocations():
            held.setdefault(a.resource, set()).add(a.device_id)
        for pool in source.pools():
            ids = {d.id for d in pool.devices}
            total.add_metric([pool.resource], float(pool.device_count))
            healthy.add_metric([pool.resource], float(pool.healthy_count))
            allocated.add_metric([pool.resource], float(len(ids & held.get(pool.resource, set()))))
        yield from (total, healthy, allocated)


class PolicyCollector:
    """Verdict counters from the BPF datapath, labelled with the pod and
    network of each policed interface; tables' generations and apply times."""

    def __init__(self, enforcer: Callable[[], PolicyEnforcer | None]) -> None:
        self._enforcer = enforcer
        self._packets = Monotonic()
        self._bytes = Monotonic()

    def collect(self) -> Iterator[Metric]:
        enforcer = self._enforcer()
        if enforcer is None:
            return
        rows = enforcer.policed()
        gen = GaugeMetricFamily(
            C.POLICY_GENERATION.name,
            C.POLICY_GENERATION.help,
            labels=list(C.POLICY_GENERATION.labels),
        )
        applied = GaugeMetricFamily(
            C.POLICY_APPLIED.name, C.POLICY_APPLIED.help, labels=list(C.POLICY_APPLIED.labels)
        )
        raw_packets: dict[tuple[tuple[str, ...], str], int] = {}
        raw_bytes: dict[tuple[tuple[str, ...], str], int] = {}
        ok = True
        datapath = enforcer.datapath
        for ns, pod, network, ifname, iface, generations, applied_at in rows:
            for direction, g in sorted(generations.items()):
                gen.add_metric([ns, pod, network, direction], float(g))
            if applied_at:
                applied.add_metric([ns, pod, network], applied_at)
            if iface is None or datapath is None:
                continue
            try:
                counts = datapath.counters(iface)
            except Exception as e:
                ok = False
                log.warning(
                    "policy counters unreadable", extra={"pod": f"{ns}/{pod}", "error": str(e)}
                )
                break
            source = f"{ifname}@{iface.netns_cookie}:{iface.id}"
            for (d, v), c in counts.items():
                labels = (ns, pod, network, d.name.lower(), v.name.lower())
                raw_packets[(labels, source)] = int(c.packets)
                raw_bytes[(labels, source)] = int(c.bytes)
        yield gen
        yield applied
        if datapath is not None and ok:
            try:
                lingering = datapath.lingering()
            except Exception as e:
                ok = False
                log.warning("lingering filters unreadable", extra={"error": str(e)})
            else:
                gauge = GaugeMetricFamily(C.POLICY_LINGERING.name, C.POLICY_LINGERING.help)
                gauge.add_metric([], float(lingering))
                yield gauge
        yield from _malformed(enforcer)
        if ok:
            for spec, tracker, raw in (
                (C.POLICY_PACKETS, self._packets, raw_packets),
                (C.POLICY_BYTES, self._bytes, raw_bytes),
            ):
                fam = CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
                for series, value in sorted(tracker.update(raw).items()):
                    fam.add_metric(list(series), float(value))
                yield fam
        yield success("policy_verdicts", ok)


def _malformed(enforcer: PolicyEnforcer) -> Iterator[Metric]:
    now, total = enforcer.malformed()
    gauge = GaugeMetricFamily(
        C.SOURCE_MALFORMED.name, C.SOURCE_MALFORMED.help, labels=list(C.SOURCE_MALFORMED.labels)
    )
    counter = CounterMetricFamily(
        C.SOURCE_MALFORMED_TOTAL.name,
        C.SOURCE_MALFORMED_TOTAL.help,
        labels=list(C.SOURCE_MALFORMED_TOTAL.labels),
    )
    # Pods are the kind checked so far: a zero series, not none, until one is bad.
    for kind in sorted({"Pod", *now, *total}):
        gauge.add_metric([kind], float(now.get(kind, 0)))
        counter.add_metric([kind], float(total.get(kind, 0)))
    yield gauge
    yield counter


class DropStatsSource(Protocol):
    def drop_event_stats(self) -> Mapping[EventStat, int]: ...


class DropEventsCollector:
    """The datapath's drop-record outcomes and the observe streams' losses."""

    def __init__(
        self, parts: Callable[[], tuple[DropStatsSource | None, DropEventHub | None]]
    ) -> None:
        self._parts = parts
        self._outcomes = Monotonic()

    def collect(self) -> Iterator[Metric]:
        datapath, hub = self._parts()
        ok = True
        if datapath is not None:
            try:
                stats = datapath.drop_event_stats()
            except Exception as e:
                ok = False
                log.warning("drop event stats unreadable", extra={"error": str(e)})
            else:
                raw: dict[tuple[tuple[str, ...], str], int] = {
                    ((s.name.lower(),), "datapath"): int(v) for s, v in stats.items()
                }
                fam = CounterMetricFamily(
                    C.DROP_EVENTS.name, C.DROP_EVENTS.help, labels=list(C.DROP_EVENTS.labels)
                )
                for series, value in sorted(self._outcomes.update(raw).items()):
                    fam.add_metric(list(series), float(value))
                yield fam
        if hub is not None:
            lost = CounterMetricFamily(C.DROP_EVENTS_LOST.name, C.DROP_EVENTS_LOST.help)
            lost.add_metric([], float(hub.subscriber_drops))
            yield lost
        yield success("drop_events", ok)


class SourceFeedCollector:
    """The policy feed's backlog: how far enforcement is behind the cluster."""

    def __init__(self, stats: Callable[[], FeedStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        if st is None:
            return
        for spec, value in (
            (C.SOURCE_LAG, st.lag_s),
            (C.SOURCE_QUEUED, float(st.queued)),
            (C.SOURCE_SYNCED, 1.0 if st.synced else 0.0),
        ):
            gauge = GaugeMetricFamily(spec.name, spec.help)
            gauge.add_metric([], value)
            yield gauge
        for spec, value in (
            (C.SOURCE_APPLIED, float(st.applied)),
            (C.SOURCE_COALESCED, float(st.coalesced)),
            (C.SOURCE_BLOCKED, st.blocked_s),
        ):
            counter = CounterMetricFamily(spec.name, spec.help)
            counter.add_metric([], value)
            yield counter


class InventoryReadsCollector:
    """How often the inventory read sysfs, whole or VF by VF."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        full, vf = self._counts()
        counter = CounterMetricFamily(
            C.INVENTORY_READS.name, C.INVENTORY_READS.help, labels=C.INVENTORY_READS.labels
        )
        counter.add_metric(["full"], float(full))
        counter.add_metric(["vf"], float(vf))
        yield counter


_TICKS = os.sysconf("SC_CLK_TCK")


class ThreadCpuCollector:
    """CPU per thread role, read from /proc/self/task at scrape time: which
    part of the agent uses the CPU (policy events, inventory scans, CNI)."""

    def __init__(self, task_dir: str = "/proc/self/task") -> None:
        self._task_dir = task_dir
        self._counted = Monotonic()

    def collect(self) -> Iterator[Metric]:
        roles = {t.native_id: thread_role(t.name) for t in threading.enumerate()}
        raw: dict[tuple[tuple[str, ...], str], int] = {}
        try:
            tids = os.listdir(self._task_dir)
        except OSError as e:
            log.warning("thread CPU: cannot list %s: %s", self._task_dir, e)
            yield success("threads", False)
            return
        for tid in tids:
            try:
                with open(f"{self._task_dir}/{tid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # the thread exited since the listing
            role = roles.get(int(tid), "other")
            raw[((role,), tid)] = int(fields[11]) + int(fields[12])  # utime + stime
        fam = CounterMetricFamily(C.THREAD_CPU.name, C.THREAD_CPU.help, labels=["thread"])
        for (role,), ticks in sorted(self._counted.update(raw).items()):
            fam.add_metric([role], ticks / _TICKS)
        yield fam
        yield success("threads", True)
