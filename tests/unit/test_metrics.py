"""Metrics without a kernel: the netlink parsers, monotonic counters across
datapath re-creation, whole-or-nothing scrapes, CNI timing and the doc."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deploy import gen_metrics_doc
from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.errors import Unavailable
from nicwarden.agent.host.bpf_tables import Count
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.rtnl import IFLA_IFALIAS, RTM_NEWLINK, NetlinkMessage, ifinfomsg, nla
from nicwarden.agent.host.vfnetlink import IFLA_VF_INFO, IFLA_VF_MAC, IFLA_VFINFO_LIST
from nicwarden.agent.host.vfstats import (
    IFLA_STATS64,
    IFLA_VF_STATS,
    NetdevVfStatsReader,
    NetlinkVfStatsReader,
    VfRef,
    parse_link_vf_stats,
)
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.metrics_catalog import ALL
from nicwarden.agent.metrics_collect import InventoryReadsCollector, Monotonic, PolicyCollector
from nicwarden.bpf.layout import Direction, IfaceKey, Verdict


def parse(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(metrics.registry).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def vf_info(vf: int, **stats: int) -> bytes:
    index = {"rx_packets": 0, "tx_packets": 1, "rx_bytes": 2, "tx_bytes": 3, "rx_dropped": 7}
    nest = b"".join(nla(index[k], struct.pack("=Q", v)) for k, v in stats.items())
    mac = nla(IFLA_VF_MAC, struct.pack("=I32s", vf, b"\x02" * 6))
    return nla(IFLA_VF_INFO, mac + nla(IFLA_VF_STATS, nest))


def test_parse_vf_stats_from_a_pf_reply() -> None:
    payload = ifinfomsg(7) + nla(
        IFLA_VFINFO_LIST, vf_info(0, rx_packets=5, tx_bytes=1 << 40) + vf_info(3, rx_dropped=2)
    )
    assert parse_link_vf_stats(payload) == {
        0: {"rx_packets": 5, "tx_bytes": 1 << 40},
        3: {"rx_dropped": 2},
    }
    assert parse_link_vf_stats(ifinfomsg(7)) is None  # not a PF


def test_netlink_reader_names_vfs_and_reads_tx_errors_from_sysfs(tmp_path: Any) -> None:
    paths = HostPaths(sys=tmp_path)
    stats = paths.pci_devices / "0000:18:00.0" / "sriov" / "1" / "stats"
    stats.mkdir(parents=True)
    (stats / "tx_errors").write_text("9\n")
    reply = ifinfomsg(7) + nla(
        IFLA_VFINFO_LIST, vf_info(0, tx_packets=4) + vf_info(1, tx_packets=6)
    )
    sent: list[bytes] = []

    def transport(msg: bytes) -> list[NetlinkMessage]:
        sent.append(msg)
        return [NetlinkMessage(RTM_NEWLINK, 0, 1, reply)]

    reader = NetlinkVfStatsReader(paths, transport, index_of=lambda _n: 7)
    got = reader.read("pf0", "0000:18:00.0", [VfRef(0, "a"), VfRef(1, "b"), VfRef(2, "c")])
    assert set(got) == {"a", "b"}
    assert (got["a"].tx_packets, got["a"].tx_errors) == (4, None)
    assert (got["b"].tx_packets, got["b"].tx_errors) == (6, 9)
    assert len(sent) == 1  # one request per PF, whatever its VF count


def link(alias: str, rx: int, tx: int) -> NetlinkMessage:
    stats = struct.pack("=24Q", rx, tx, *([0] * 22))
    payload = ifinfomsg(1) + nla(IFLA_IFALIAS, alias.encode() + b"\0") + nla(IFLA_STATS64, stats)
    return NetlinkMessage(RTM_NEWLINK, 0, 1, payload)


def test_netdev_reader_finds_vfs_by_identity() -> None:
    reader = NetdevVfStatsReader(
        lambda a: f"id:{a}",
        lambda _a: None,
        transport=lambda _m: [link("id:a", 3, 4), link("x", 1, 1)],
    )
    got = reader.read("pf0", "p", [VfRef(0, "a"), VfRef(1, "b")])
    assert set(got) == {"a"}  # b is away and nobody knows where: left out
    assert (got["a"].rx_packets, got["a"].tx_packets, got["a"].rx_broadcast) == (3, 4, None)


def test_monotonic_carries_offsets() -> None:
    m = Monotonic()
    s = ("ns", "pod")
    assert m.update({(s, "k1"): 10}) == {s: 10}
    assert m.update({(s, "k1"): 3}) == {s: 13}  # map re-created: restarted from 0
    assert m.update({(s, "k2"): 1}) == {s: 14}  # re-attached under a new key
    assert m.update({}) == {}  # series gone: its history goes too
    assert m.update({(s, "k2"): 2}) == {s: 2}


@dataclass
class FakeDatapath:
    counts: dict[int, dict[tuple[Direction, Verdict], Count]] = field(default_factory=dict)
    broken: bool = False
    lingered: int = 0

    def counters(self, iface: IfaceKey) -> dict[tuple[Direction, Verdict], Count]:
        if self.broken:
            raise Unavailable("policy datapath is not loaded")
        return self.counts[iface.id]

    def lingering(self) -> int:
        if self.broken:
            raise Unavailable("policy datapath is not loaded")
        return self.lingered


def test_policy_counters_whole_or_nothing_and_never_backwards() -> None:
    dp = FakeDatapath()
    key1, key2 = IfaceKey(1, "/n/a", "net1", 2, 11), IfaceKey(2, "/n/b", "net1", 2, 12)
    drop = (Direction.INGRESS, Verdict.DROP_POLICY)
    dp.counts = {1: {drop: Count(5, 300)}, 2: {drop: Count(1, 60)}}
    dp.lingered = 2
    rows = [
        ("prod", "a", "prod/net", "net1", key1, {"ingress": 3, "egress": 3}, 1000.0),
        ("prod", "b", "prod/net", "net1", key2, {"ingress": 1}, 1001.0),
    ]
    enforcer = SimpleNamespace(datapath=dp, policed=lambda: rows, malformed=lambda: ({}, {}))
    metrics = Metrics()
    metrics.add_collector(PolicyCollector(lambda: cast(PolicyEnforcer, enforcer)))

    def drops(samples: list[tuple[str, dict[str, str], float]], pod: str) -> float:
        (v,) = [
            v
            for n, lab, v in samples
            if n == "nicwarden_policy_packets_total"
            and lab["pod"] == pod
            and lab["direction"] == "ingress"
            and lab["verdict"] == "drop_policy"
        ]
        return v

    first = parse(metrics)
    assert drops(first, "a") == 5 and drops(first, "b") == 1
    assert ("nicwarden_policy_filters_lingering", {}, 2.0) in first
    assert (
        "nicwarden_policy_generation",
        {"namespace": "prod", "pod": "a", "network": "prod/net", "direction": "egress"},
        3.0,
    ) in first

    dp.broken = True  # the datapath is being replaced: no partial answer
    during = parse(metrics)
    assert not [n for n, _l, _v in during if n.startswith("nicwarden_policy_packets")]
    assert not [n for n, _l, _v in during if n == "nicwarden_policy_filters_lingering"]
    assert ("nicwarden_scrape_collector_success", {"collector": "policy_verdicts"}, 0.0) in during

    dp.broken = False  # re-created maps start from zero
    dp.counts = {1: {drop: Count(2, 120)}, 2: {drop: Count(0, 0)}}
    after = parse(metrics)
    assert drops(after, "a") == 7 and drops(after, "b") == 1
    assert ("nicwarden_scrape_collector_success", {"collector": "policy_verdicts"}, 1.0) in after


def test_cni_latency_and_error_kinds() -> None:
    metrics = Metrics()
    answers = {"ADD": (0, b"{}"), "DEL": (1, json.dumps({"code": 11}).encode())}
    timed = metrics.timed_cni(lambda env, _stdin: answers[env["CNI_COMMAND"]])
    for cmd in ("ADD", "ADD", "DEL"):
        timed({"CNI_COMMAND": cmd}, "")
    metrics.rpc("Pools", "not_found")
    metrics.allocate_done("nicwarden.io/net", 0.002, None)
    metrics.allocate_done("nicwarden.io/net", 0.002, "busy")
    got = parse(metrics)
    count = "nicwarden_cni_request_duration_seconds_count"
    assert (count, {"command": "ADD", "result": "success"}, 2.0) in got
    assert (count, {"command": "DEL", "result": "error"}, 1.0) in got
    errors = {(lab["kind"], lab["source"]): v for n, lab, v in got if n == "nicwarden_errors_total"}
    assert errors == {
        ("unavailable", "cni"): 1,
        ("not_found", "grpc"): 1,
        ("busy", "deviceplugin"): 1,
    }
    alloc = "nicwarden_deviceplugin_allocate_duration_seconds_count"
    assert (alloc, {"resource": "nicwarden.io/net", "result": "error"}, 1.0) in got


def test_every_served_family_is_in_the_catalog() -> None:
    metrics = Metrics()
    metrics.rpc("x", "ok")
    text = generate_latest(metrics.registry).decode()
    names = {spec.name for spec in ALL}
    served = {fam.name for fam in text_string_to_metric_families(text)}
    # The parser drops _total from counter family names.
    assert {n if n in names else n + "_total" for n in served} <= names


def test_metrics_doc_is_fresh() -> None:
    assert gen_metrics_doc.main(["--check"]) == 0, "run deploy/gen_metrics_doc.py"


def test_inventory_reads_by_scope() -> None:
    metrics = Metrics()
    counts = [3, 7]
    metrics.add_collector(InventoryReadsCollector(lambda: (counts[0], counts[1])))
    counts[1] += 1  # read at scrape time, not at registration
    reads = {
        s[1]["scope"]: s[2] for s in parse(metrics) if s[0] == "nicwarden_inventory_reads_total"
    }
    assert reads == {"full": 3.0, "vf": 8.0}
