"""Drop records from the datapath's ring buffer: reasons, per-flow dedup and
the global cap, all decided in the kernel. Real packets between two netns;
the records are read back through the agent's ring reader."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.host.bpf_events import DropRecord, RingReader, decode
from nicwarden.bpf.layout import DropReason, EventStat, IfaceKey, LoweredDirection
from tests.integration.test_bpf_datapath import (
    ALL_V4,
    CLI4,
    DENY_ALL,
    ING,
    SRV4,
    TCP,
    Pair,
    loaded_datapath,
    make_pair,
    net,
)
from tests.support.threads import assert_sleeps_when_idle
from tests.support.traffic import in_netns

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def datapath() -> Iterator[PolicyDatapath]:
    with loaded_datapath("ev") as dp:
        yield dp


@pytest.fixture
def attached(datapath: PolicyDatapath, netns: Callable[[], str]) -> Iterator[tuple[Pair, IfaceKey]]:
    pair = make_pair(netns)
    key = datapath.attach(pair.server, pair.srv_if)
    try:
        yield pair, key
    finally:
        datapath.set_drop_events(False, 1000, 1000)
        datapath.detach(key)


@pytest.fixture
def reader(datapath: PolicyDatapath) -> Iterator[RingReader]:
    r = RingReader(datapath.events_fd())
    r.drain(lambda raw: None)  # records of earlier tests
    try:
        yield r
    finally:
        r.close()


def records(r: RingReader) -> list[DropRecord]:
    out: list[DropRecord] = []
    r.drain(lambda raw: out.append(decode(raw)))
    return out


def send_udp(ns: str, n: int, dport: int, sport: int | None, src: str = CLI4) -> None:
    """n datagrams to SRV4:dport; all from one source port unless sport is None."""

    def go() -> None:
        socks = []
        try:
            for i in range(n):
                if sport is None or i == 0:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((src, sport or 0))
                    socks.append(s)
                socks[-1].sendto(b"x", (SRV4, dport))
        finally:
            for s in socks:
                s.close()

    in_netns(ns, go)


def stats_delta(dp: PolicyDatapath, before: dict[EventStat, int]) -> dict[EventStat, int]:
    after = dp.drop_event_stats()
    return {k: after[k] - before[k] for k in EventStat}


def test_one_record_per_flow_with_reason(
    datapath: PolicyDatapath, attached: tuple[Pair, IfaceKey], reader: RingReader
) -> None:
    pair, key = attached
    datapath.set_drop_events(True, 60_000, 1000)
    datapath.apply(key, ING, DENY_ALL)
    before = datapath.drop_event_stats()
    send_udp(pair.client, 20, 5353, sport=40001)
    got = [r for r in records(reader) if r.iface == key.id]
    assert len(got) == 1, got
    rec = got[0]
    assert rec.reason == DropReason.NO_RULE
    assert (rec.src, rec.sport, rec.dst, rec.dport, rec.proto) == (CLI4, 40001, SRV4, 5353, 17)
    assert rec.direction == ING
    d = stats_delta(datapath, before)
    assert d[EventStat.EMITTED] == 1
    assert d[EventStat.FLOW_SUPPRESSED] == 19


def test_port_and_except_reasons(
    datapath: PolicyDatapath, attached: tuple[Pair, IfaceKey], reader: RingReader
) -> None:
    pair, key = attached
    datapath.set_drop_events(True, 60_000, 1000)
    # Any IPv4 peer, TCP 8080 only: UDP 5353 is a port drop.
    datapath.apply(key, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1}))
    send_udp(pair.client, 1, 5353, sport=40002)
    # Any IPv4 peer except the client's /32 (the lowering's except entry: mask 0).
    datapath.apply(key, ING, LoweredDirection(True, {ALL_V4: 1, net(f"{CLI4}/32"): 0}, {}, 1))
    send_udp(pair.client, 1, 5353, sport=40003)
    got = {r.sport: r.reason for r in records(reader) if r.iface == key.id}
    assert got == {40002: DropReason.PORT, 40003: DropReason.EXCEPT}


def test_global_cap_and_disable(
    datapath: PolicyDatapath, attached: tuple[Pair, IfaceKey], reader: RingReader
) -> None:
    pair, key = attached
    cap = 5
    datapath.set_drop_events(True, 60_000, cap)
    datapath.apply(key, ING, DENY_ALL)
    time.sleep(1.1)  # a fresh one-second window for the cap (not a timing assertion)
    before = datapath.drop_event_stats()
    send_udp(pair.client, 200, 5353, sport=None)  # 200 distinct flows
    got = [r for r in records(reader) if r.iface == key.id]
    d = stats_delta(datapath, before)
    assert d[EventStat.EMITTED] == len(got)
    # One window, or two if the burst straddles a second boundary.
    assert cap <= len(got) <= 2 * cap
    assert d[EventStat.CAP_SUPPRESSED] == 200 - len(got)
    assert d[EventStat.RING_FULL] == 0

    datapath.set_drop_events(False, 60_000, cap)
    send_udp(pair.client, 10, 5354, sport=None)
    assert [r for r in records(reader) if r.iface == key.id] == []


def test_ring_thread_sleeps_until_a_record_or_stop(
    datapath: PolicyDatapath, attached: tuple[Pair, IfaceKey]
) -> None:
    from nicwarden.agent.host.bpf_events import RingThread

    pair, key = attached
    earlier = RingReader(datapath.events_fd())
    earlier.drain(lambda raw: None)  # records of earlier tests
    earlier.close()
    got: list[DropRecord] = []
    arrived = threading.Event()

    def sink(rec: DropRecord) -> None:
        got.append(rec)
        arrived.set()

    ring = RingThread(datapath.events_fd(), sink)
    ring.start()
    try:
        assert_sleeps_when_idle(ring._thread, "the ring thread")
        datapath.set_drop_events(True, 60_000, 1000)
        datapath.apply(key, ING, DENY_ALL)
        send_udp(pair.client, 1, 5353, sport=40002)
        assert arrived.wait(5)
        assert got[0].iface == key.id
    finally:
        ring.stop()
    assert not ring._thread.is_alive()
    ring.stop()  # a second stop is harmless
