"""The drop-record fan-out, the Observe filters and the CLI's line format
(no kernel: records are built as the ring reader decodes them)."""

from __future__ import annotations

import argparse
import ctypes as ct
import time

import pytest

from nicwarden.agent.api import flow_record, observe_filter
from nicwarden.agent.ctl import _duration, _pod_ref, observe_line
from nicwarden.agent.drop_events import MAX_SUBSCRIBERS, DropEventHub, IfaceOwner
from nicwarden.agent.errors import Busy, InvalidArgument, NotFound
from nicwarden.agent.host.bpf_events import DropRecord, decode
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, DropReason, Verdict
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb

OWNER = IfaceOwner("prod", "db", "prod/sriov-net", "net1", ("prod/deny-all",))
POLICED = [("prod", "db", "prod/sriov-net", "net1", None, {}, 0.0)]


def rec(sport: int, iface: int = 7) -> DropRecord:
    return DropRecord(
        ts_ns=time.monotonic_ns(),
        iface=iface,
        direction=Direction.INGRESS,
        verdict=Verdict.DROP_POLICY,
        reason=DropReason.PORT,
        family=4,
        proto=6,
        src="10.0.0.2",
        dst="10.0.0.1",
        sport=sport,
        dport=5432,
    )


def test_decode_reads_the_kernel_layout() -> None:
    e = L.DropEvent(ts_ns=5, iface=3, dir=1, verdict=4, reason=2, family=4, proto=17)
    e.sport, e.dport = 0x3930, 0x3500  # network order of 12345 and 53 on a little-endian host
    ct.memmove(ct.addressof(e) + L.DropEvent.saddr.offset, bytes([10, 1, 2, 3]), 4)
    ct.memmove(ct.addressof(e) + L.DropEvent.daddr.offset, bytes([10, 1, 2, 4]), 4)
    r = decode(bytes(e))
    assert (r.iface, r.direction, r.reason, r.proto) == (3, Direction.EGRESS, DropReason.EXCEPT, 17)
    assert (r.src, r.sport, r.dst, r.dport) == ("10.1.2.3", 12345, "10.1.2.4", 53)


def test_slow_subscriber_loses_oldest_and_others_do_not() -> None:
    hub = DropEventHub(lambda iface: OWNER if iface == 7 else None)
    slow, fast = hub.subscribe(size=3), hub.subscribe(size=100)
    for i in range(10):
        hub.publish(rec(1000 + i))
    got = slow.get(timeout=0)
    assert [f.record.sport for f in got] == [1007, 1008, 1009]
    assert slow.dropped == 7 and hub.subscriber_drops == 7
    assert len(fast.get(timeout=0)) == 10 and fast.dropped == 0
    assert got[0].owner == OWNER and got[0].verdict == "dropped"
    slow.close()
    fast.close()
    assert hub.subscribers() == 0


def test_since_replays_history_and_unknown_iface_has_no_owner() -> None:
    hub = DropEventHub(lambda iface: None, history=2)
    for i in range(3):
        hub.publish(rec(i, iface=99))
    sub = hub.subscribe(since=time.time() - 60)
    got = sub.get(timeout=0)
    assert [f.record.sport for f in got] == [1, 2]  # the history keeps the last two
    assert got[0].owner is None
    assert hub.subscribe().get(timeout=0) == []  # live only: nothing replayed


def test_streams_are_limited() -> None:
    hub = DropEventHub(lambda iface: None)
    subs = [hub.subscribe() for _ in range(MAX_SUBSCRIBERS)]
    with pytest.raises(Busy, match="observe streams"):
        hub.subscribe()
    subs[0].close()
    hub.subscribe()  # a closed stream frees its place


def test_observe_filter_refuses_unknown_values() -> None:
    with pytest.raises(InvalidArgument, match="verdict"):
        observe_filter(pb.ObserveRequest(verdict="denied"), POLICED)
    with pytest.raises(NotFound, match="prod/nope"):
        observe_filter(pb.ObserveRequest(pod_namespace="prod", pod_name="nope"), POLICED)
    with pytest.raises(NotFound, match="other/net"):
        observe_filter(pb.ObserveRequest(network="other/net"), POLICED)
    with pytest.raises(InvalidArgument, match="namespace/name"):
        observe_filter(pb.ObserveRequest(pod_name="db"), POLICED)


def test_observe_filter_matches_pod_network_verdict() -> None:
    hub = DropEventHub(lambda iface: OWNER if iface == 7 else None)
    hub.publish(rec(1, iface=7))
    hub.publish(rec(2, iface=8))
    flows = hub.subscribe(since=0).get(timeout=0)
    want = observe_filter(pb.ObserveRequest(pod_namespace="prod", pod_name="db"), POLICED)
    assert [f.record.sport for f in flows if want(f)] == [1]
    allowed = observe_filter(pb.ObserveRequest(verdict="allowed"), POLICED)
    assert not any(allowed(f) for f in flows)


def test_flow_record_and_table_line() -> None:
    hub = DropEventHub(lambda iface: OWNER)
    hub.publish(rec(40000))
    (flow,) = hub.subscribe(since=0).get(timeout=0)
    msg = flow_record(flow, lost=0)
    assert (msg.namespace, msg.pod, msg.network, msg.reason) == (
        "prod",
        "db",
        "prod/sriov-net",
        "port",
    )
    line = observe_line(msg)
    assert "prod/db" in line and "10.0.0.2:40000" in line and "10.0.0.1:5432" in line
    assert line.split()[-1] == "prod/deny-all" and "\n" not in line


def test_cli_argument_types() -> None:
    assert _duration("90") == 90 and _duration("5m") == 300 and _duration("2h") == 7200
    for bad in ("soon", "-1s", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            _duration(bad)
    assert _pod_ref("prod/db") == ("prod", "db")
    for bad in ("db", "/db", "prod/", "a/b/c"):
        with pytest.raises(argparse.ArgumentTypeError):
            _pod_ref(bad)
