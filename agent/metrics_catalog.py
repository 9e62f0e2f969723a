"""Every metric the agent exports: name, type, labels and meaning.

The collectors build their families from these entries and
``deploy/gen_metrics_doc.py`` renders docs/metrics.md from them, so the
reference cannot drift from what is served.

The ``sriov_*`` names are the sriov-network-metrics-exporter's, kept exactly
so its users' dashboards and queries keep working. That exporter serves
them as counters without a ``_total`` suffix; the Python client would add
one to a counter, so they are served untyped under the same names
(``rate()`` works on them as on any counter).
"""

from __future__ import annotations

from dataclasses import dataclass

from nicwarden.agent.host.vfstats import COUNTER_NAMES


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # counter, gauge, histogram, untyped
    help: str
    labels: tuple[str, ...] = ()
    unit_note: str = ""


VF_LABELS = ("pciAddr", "pf", "vf", "numa_node")

_VF_HELP = {
    "rx_packets": "Packets received by the VF.",
    "tx_packets": "Packets sent by the VF.",
    "rx_bytes": "Bytes received by the VF.",
    "tx_bytes": "Bytes sent by the VF.",
    "rx_dropped": "Packets dropped on receipt by the VF.",
    "tx_dropped": "Packets dropped on transmit by the VF.",
    "tx_errors": "Transmit errors of the VF (where the driver reports them).",
    "rx_broadcast": "Broadcast packets received by the VF (PF statistics only).",
    "rx_multicast": "Multicast packets received by the VF.",
}

VF_STATS: tuple[MetricSpec, ...] = tuple(
    MetricSpec(f"sriov_vf_{name}", "untyped", _VF_HELP[name], VF_LABELS) for name in COUNTER_NAMES
)

KUBEPODDEVICE = MetricSpec(
    "sriov_kubepoddevice",
    "gauge",
    "1 for each VF attached to a pod; join on pciAddr to label VF series with the pod."
    " container is the CNI container (sandbox) ID.",
    ("pciAddr", "dev_type", "pod", "namespace", "container"),
)

CNI_DURATION = MetricSpec(
    "nicwarden_cni_request_duration_seconds",
    "histogram",
    "Time the agent took to answer a CNI request, by command and result (success or error).",
    ("command", "result"),
)
ALLOCATE_DURATION = MetricSpec(
    "nicwarden_deviceplugin_allocate_duration_seconds",
    "histogram",
    "Time a device plugin Allocate call took, by resource and result (success or error).",
    ("resource", "result"),
)
ERRORS = MetricSpec(
    "nicwarden_errors_total",
    "counter",
    "Errors answered to a caller, by kind (the agent's error kinds) and source"
    " (cni, grpc, deviceplugin).",
    ("kind", "source"),
)
RPC = MetricSpec(
    "nicwarden_rpc_total", "counter", "gRPC calls by method and outcome.", ("method", "outcome")
)
DEVICES = MetricSpec("nicwarden_devices", "gauge", "PCI functions by role (pf, vf).", ("role",))
INVENTORY_GENERATION = MetricSpec(
    "nicwarden_inventory_generation", "gauge", "Inventory snapshot generation."
)
INVENTORY_READS = MetricSpec(
    "nicwarden_inventory_reads_total",
    "counter",
    "Times the inventory read sysfs after an event or on its periodic resync, by scope: full"
    " (every PF and VF) or vf (only the VFs whose netdevs the events named).",
    ("scope",),
)
VF_UNEXPLAINED = MetricSpec(
    "nicwarden_vf_unexplained",
    "gauge",
    "VFs out of place (not home, or renamed) that no attachment explains; held back from"
    " pods until an admin adopts or releases them.",
)
POOL_DEVICES = MetricSpec(
    "nicwarden_pool_devices", "gauge", "Devices in a device plugin pool.", ("resource",)
)
POOL_HEALTHY = MetricSpec(
    "nicwarden_pool_healthy_devices",
    "gauge",
    "Devices of a pool advertised Healthy to kubelet.",
    ("resource",),
)
POOL_ALLOCATED = MetricSpec(
    "nicwarden_pool_allocated_devices",
    "gauge",
    "Devices of a pool that kubelet allocated and that are still recorded as allocated.",
    ("resource",),
)
POLICY_LABELS = ("namespace", "pod", "network", "direction", "verdict")
POLICY_PACKETS = MetricSpec(
    "nicwarden_policy_packets_total",
    "counter",
    "Packets seen by the policy datapath on a pod interface, by direction and verdict"
    " (pass_always, pass_unisolated, pass_established, pass_policy, drop_policy).",
    POLICY_LABELS,
)
POLICY_BYTES = MetricSpec(
    "nicwarden_policy_bytes_total",
    "counter",
    "Bytes seen by the policy datapath on a pod interface, by direction and verdict.",
    POLICY_LABELS,
)
POLICY_GENERATION = MetricSpec(
    "nicwarden_policy_generation",
    "gauge",
    "Generation of the policy tables in force for a pod interface and direction.",
    ("namespace", "pod", "network", "direction"),
)
POLICY_APPLIED = MetricSpec(
    "nicwarden_policy_last_apply_timestamp_seconds",
    "gauge",
    "Unix time of the last successful apply of a pod interface's policy tables.",
    ("namespace", "pod", "network"),
)
POLICY_LINGERING = MetricSpec(
    "nicwarden_policy_filters_lingering",
    "gauge",
    "Pod interfaces no policy isolates any more whose tc filters are kept for"
    " policy.filterLingerSeconds (they pass every packet unparsed).",
)
DROP_EVENTS = MetricSpec(
    "nicwarden_policy_drop_events_total",
    "counter",
    "Dropped-flow records the datapath decided on, by outcome: emitted (written to the ring),"
    " flow_suppressed (same flow within policy.dropEvents.perFlowIntervalMs),"
    " cap_suppressed (over policy.dropEvents.maxPerSecond), ring_full (lost: the agent was"
    " behind; the packet's verdict is never affected).",
    ("outcome",),
)
DROP_EVENTS_LOST = MetricSpec(
    "nicwarden_policy_drop_events_subscriber_lost_total",
    "counter",
    "Dropped-flow records an observe stream lost because its client read too slowly.",
    (),
)
SOURCE_LAG = MetricSpec(
    "nicwarden_source_lag_seconds",
    "gauge",
    "Age of the oldest object event (Namespace, Pod, NAD, MultiNetworkPolicy) the policy"
    " enforcer has not applied yet; 0 when none is queued.",
)
SOURCE_WATCH_EVENT = MetricSpec(
    "nicwarden_source_watch_event_seconds",
    "histogram",
    "Time the agent took to handle one watch event, from its line read to the decision:"
    " parsing, projection, the comparison with what it already has and, when something"
    " enforcement reads changed, the hand-over to the policy enforcer's queue (outcome"
    " changed; otherwise unchanged). Queue waits under backpressure count; the enforcer's"
    " own work does not.",
    ("kind", "outcome"),
)
SOURCE_QUEUED = MetricSpec(
    "nicwarden_source_events_queued",
    "gauge",
    "Objects with an event waiting for the policy enforcer (events for one object are"
    " coalesced into one). At the queue's bound the object source waits for room.",
)
SOURCE_APPLIED = MetricSpec(
    "nicwarden_source_events_applied_total",
    "counter",
    "Object events the policy enforcer applied.",
)
SOURCE_COALESCED = MetricSpec(
    "nicwarden_source_events_coalesced_total",
    "counter",
    "Object events merged into an event already queued for the same object (a later state"
    " replaces an earlier one; an ADD then DELETE cancels out).",
)
SOURCE_BLOCKED = MetricSpec(
    "nicwarden_source_blocked_seconds_total",
    "counter",
    "Time the object source spent waiting for room in the full event queue (backpressure).",
)
SOURCE_SYNCED = MetricSpec(
    "nicwarden_source_synced",
    "gauge",
    "1 once the object source's initial state has been applied by the policy enforcer.",
)
SOURCE_MALFORMED = MetricSpec(
    "nicwarden_source_malformed_objects",
    "gauge",
    "Objects whose latest version is malformed where enforcement reads it (a Pod's"
    " network-status annotation), by kind. Enforcement keeps each one's last valid state.",
    ("kind",),
)
SOURCE_MALFORMED_TOTAL = MetricSpec(
    "nicwarden_source_malformed_total",
    "counter",
    "Times an object became malformed (a valid or new object turned bad), by kind; the"
    " agent logs each such change once.",
    ("kind",),
)
THREAD_CPU = MetricSpec(
    "nicwarden_thread_cpu_seconds_total",
    "counter",
    "CPU time (user and system) of the agent's threads by role: the Python thread's name"
    " without its instance number (policy-feed, k8s-watch-pods, inventory, grpc, ...);"
    " threads Python did not start (gRPC's core, native libraries) are other. A thread that"
    " exits keeps what it had used at the last scrape.",
    ("thread",),
)
SCRAPE_SUCCESS = MetricSpec(
    "nicwarden_scrape_collector_success",
    "gauge",
    "1 when a scrape-time collector read everything it serves, 0 when it failed; a failed"
    " collector serves none of its series rather than part of them.",
    ("collector",),
)

ALL: tuple[MetricSpec, ...] = (
    *VF_STATS,
    KUBEPODDEVICE,
    CNI_DURATION,
    ALLOCATE_DURATION,
    ERRORS,
    RPC,
    DEVICES,
    INVENTORY_GENERATION,
    INVENTORY_READS,
    VF_UNEXPLAINED,
    POOL_DEVICES,
    POOL_HEALTHY,
    POOL_ALLOCATED,
    POLICY_PACKETS,
    POLICY_BYTES,
    POLICY_GENERATION,
    POLICY_APPLIED,
    POLICY_LINGERING,
    DROP_EVENTS,
    DROP_EVENTS_LOST,
    SOURCE_LAG,
    SOURCE_WATCH_EVENT,
    SOURCE_QUEUED,
    SOURCE_APPLIED,
    SOURCE_COALESCED,
    SOURCE_BLOCKED,
    SOURCE_SYNCED,
    SOURCE_MALFORMED,
    SOURCE_MALFORMED_TOTAL,
    THREAD_CPU,
    SCRAPE_SUCCESS,
)
