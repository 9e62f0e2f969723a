"""The BPF policy datapath against real traffic between network namespaces.

Topology per test: a server netns and a client netns joined by a veth pair;
the policy is attached to the server's end. Sockets are opened inside a netns
from a throwaway thread that setns()es (a socket stays in the netns it was
created in), so probes cost no process start. ``ping``, ``ip``, ``tc`` and
``bpftool`` are the independent oracles.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.host.bpfsys import U32
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, Verdict
from tests.support.oracle import run, unique
from tests.support.traffic import (
    PROBE_TIMEOUT,
    Servers,
    echo,
    in_netns,
    ping_ok,
    tcp_connect,
    tcp_ok,
    udp_ok,
)

pytestmark = pytest.mark.root

ING, EGR = Direction.INGRESS, Direction.EGRESS
SRV4, CLI4, CLI4_B, CLI4_C = "10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"
SRV6, CLI6, CLI6_B = "fd77::1", "fd77::2", "fd77::3"
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58


# -- netns plumbing ---------------------------------------------------------------


def net(cidr: str) -> L.PeerEntry:
    n = ipaddress.ip_network(cidr)
    return (n.version, n.network_address.packed, n.prefixlen)


@dataclass
class Pair:
    server: str
    client: str
    srv_if: str = "nws0"
    cli_if: str = "nwc0"


def make_pair(make_ns: Callable[[], str], subnet4: str = "10.77.0", subnet6: str = "fd77") -> Pair:
    p = Pair(make_ns(), make_ns())
    run(
        "ip",
        "link",
        "add",
        p.cli_if,
        "netns",
        p.client,
        "type",
        "veth",
        "peer",
        "name",
        p.srv_if,
        "netns",
        p.server,
    )
    run("ip", "-n", p.server, "addr", "add", f"{subnet4}.1/24", "dev", p.srv_if)
    run("ip", "-n", p.server, "addr", "add", f"{subnet6}::1/64", "dev", p.srv_if, "nodad")
    for host in (2, 3, 4):
        run("ip", "-n", p.client, "addr", "add", f"{subnet4}.{host}/24", "dev", p.cli_if)
    for host in (2, 3):
        run("ip", "-n", p.client, "addr", "add", f"{subnet6}::{host}/64", "dev", p.cli_if, "nodad")
    run("ip", "-n", p.server, "link", "set", p.srv_if, "up")
    run("ip", "-n", p.client, "link", "set", p.cli_if, "up")
    return p


def our_filters(ns: str, dev: str) -> list[str]:
    lines: list[str] = []
    for hook in ("ingress", "egress"):
        r = run("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev, hook, check=False)
        lines += [
            ln for ln in r.stdout.splitlines() if f"pref {L.TC_PRIO}" in ln and "handle" in ln
        ]
    return lines


def bpftool_dump(dp: PolicyDatapath, name: str) -> list[dict[str, object]]:
    r = run("bpftool", "-j", "map", "dump", "pinned", str(dp.pin_dir / name))
    out: list[dict[str, object]] = json.loads(r.stdout)
    return out


def bpftool_counter(dp: PolicyDatapath, iface: IfaceKey, d: Direction, v: Verdict) -> int:
    for e in bpftool_dump(dp, "nw_counters"):
        f = e["formatted"]
        assert isinstance(f, dict)
        k = f["key"]
        if (k["iface"], k["dir"], k["verdict"]) == (iface.id, int(d), int(v)):
            return sum(int(c["value"]["packets"]) for c in f["values"])
    return 0


# -- fixtures -------------------------------------------------------------------


@contextmanager
def loaded_datapath(prefix: str, **kw: Any) -> Iterator[PolicyDatapath]:
    """A loaded datapath of its own instance; cleaned up, pins and all."""
    dp = PolicyDatapath(unique(prefix), **kw)
    try:
        dp.load()
        yield dp
    finally:
        dp.cleanup()
        assert not dp.pin_dir.exists()


@pytest.fixture(scope="module")
def datapath() -> Iterator[PolicyDatapath]:
    with loaded_datapath("t") as dp:
        yield dp


@pytest.fixture
def pair(netns: Callable[[], str]) -> Pair:
    return make_pair(netns)


@pytest.fixture
def attached(datapath: PolicyDatapath, pair: Pair) -> Iterator[IfaceKey]:
    key = datapath.attach(pair.server, pair.srv_if)
    try:
        yield key
    finally:
        datapath.keep_established = False
        datapath.detach(key)


@pytest.fixture
def servers(pair: Pair) -> Iterator[Servers]:
    s = Servers(pair.server, tcp=(8080, 8081, 9000, 9007, 9008), udp=(5353, 8080))
    try:
        yield s
    finally:
        s.close()


ALL_V4 = net("0.0.0.0/0")
ALL_V6 = net("::/0")
DENY_ALL = LoweredDirection(True)


# -- tests --------------------------------------------------------------------------


def test_unisolated_interface_has_no_filters(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey
) -> None:
    assert our_filters(pair.server, pair.srv_if) == []
    datapath.apply(attached, ING, LoweredDirection(False))
    assert our_filters(pair.server, pair.srv_if) == []
    datapath.apply(attached, ING, DENY_ALL)
    assert len(our_filters(pair.server, pair.srv_if)) == 2  # both hooks: replies need flows
    datapath.apply(attached, ING, LoweredDirection(False))
    assert our_filters(pair.server, pair.srv_if) == []
    r = run("ip", "netns", "exec", pair.server, "tc", "qdisc", "show", "dev", pair.srv_if)
    assert "clsact" not in r.stdout  # we created it, so we removed it


def _flows_of(dp: PolicyDatapath, iface: IfaceKey) -> int:
    keys = [e["formatted"]["key"] for e in bpftool_dump(dp, "nw_flows")]  # type: ignore[index]
    return sum(1 for k in keys if k["iface"] == iface.id)


def test_filters_linger_after_isolation_ends(pair: Pair, servers: Servers) -> None:
    now = [1000.0]
    with loaded_datapath("l", filter_linger_s=60, clock=lambda: now[0]) as dp:
        key = dp.attach(pair.server, pair.srv_if)
        dp.apply(key, ING, DENY_ALL)
        filters = our_filters(pair.server, pair.srv_if)
        assert len(filters) == 2 and dp.lingering() == 0
        assert not tcp_ok(pair.client, SRV4, 8080)

        dp.apply(key, ING, LoweredDirection(False))
        # The same filters (tc untouched), passing as if absent: counted,
        # never tracked.
        assert our_filters(pair.server, pair.srv_if) == filters
        assert dp.lingering() == 1
        flows = _flows_of(dp, key)
        passed = bpftool_counter(dp, key, ING, Verdict.PASS_UNISOLATED)
        assert tcp_ok(pair.client, SRV4, 8080) and ping_ok(pair.client, SRV4)
        assert bpftool_counter(dp, key, ING, Verdict.PASS_UNISOLATED) > passed
        assert _flows_of(dp, key) == flows

        # Isolated again within the linger: a map write, in force at once.
        dp.apply(key, ING, DENY_ALL)
        assert dp.lingering() == 0 and our_filters(pair.server, pair.srv_if) == filters
        assert not tcp_ok(pair.client, SRV4, 8080)

        dp.apply(key, ING, LoweredDirection(False))
        now[0] += 30
        # A restarted agent finds the open interface's filters and lets
        # them linger from its own start.
        other = PolicyDatapath(dp.instance, filter_linger_s=60, clock=lambda: now[0])
        other.adopt()
        assert other.lingering() == 1
        other.close()
        now[0] += 29.9
        assert dp.sweep() == 0 and len(our_filters(pair.server, pair.srv_if)) == 2
        now[0] += 0.1
        assert dp.sweep() == 1 and dp.lingering() == 0
        assert our_filters(pair.server, pair.srv_if) == []
        r = run("ip", "netns", "exec", pair.server, "tc", "qdisc", "show", "dev", pair.srv_if)
        assert "clsact" not in r.stdout
        assert tcp_ok(pair.client, SRV4, 8080)
        dp.detach(key)


def test_linger_outside_its_range_is_refused() -> None:
    for bad in (-1, 86401):
        with pytest.raises(InvalidArgument, match="linger"):
            PolicyDatapath(unique("r"), filter_linger_s=bad)


def test_peer_cidrs_v4_and_v6(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.apply(
        attached,
        ING,
        LoweredDirection(True, {net(f"{CLI4}/32"): 1, net(f"{CLI6}/128"): 1}, {}, any_proto_mask=1),
    )
    assert tcp_ok(pair.client, SRV4, 8080, src=CLI4)
    assert not tcp_ok(pair.client, SRV4, 8080, src=CLI4_B)
    assert tcp_ok(pair.client, SRV6, 8080, src=CLI6)
    assert not tcp_ok(pair.client, SRV6, 8080, src=CLI6_B)
    assert udp_ok(pair.client, SRV4, 5353, src=CLI4)
    assert not udp_ok(pair.client, SRV4, 5353, src=CLI4_B)


def test_ports_and_port_ranges(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    # class 0: TCP 8080; class 1: TCP 9000-9007 (one aligned /13 block)
    datapath.apply(
        attached,
        ING,
        LoweredDirection(
            True, {ALL_V4: 0b11, ALL_V6: 0b11}, {(TCP, 8080, 16): 0b01, (TCP, 9000, 13): 0b10}
        ),
    )
    assert tcp_ok(pair.client, SRV4, 8080)
    assert not tcp_ok(pair.client, SRV4, 8081)
    assert tcp_ok(pair.client, SRV4, 9000)
    assert tcp_ok(pair.client, SRV6, 9007)
    assert not tcp_ok(pair.client, SRV4, 9008)
    assert not udp_ok(pair.client, SRV4, 8080)  # same number, other protocol
    assert not ping_ok(pair.client, SRV4)  # no port-less entry


def test_protocol_only_and_icmp(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.apply(
        attached,
        ING,
        LoweredDirection(True, {ALL_V4: 1, ALL_V6: 1}, {(UDP, 0, 0): 1, (ICMP, 0, 0): 1}),
    )
    assert udp_ok(pair.client, SRV4, 5353)
    assert udp_ok(pair.client, SRV6, 8080)
    assert not tcp_ok(pair.client, SRV4, 8080)
    assert ping_ok(pair.client, SRV4)
    assert not ping_ok(pair.client, SRV6)  # ICMPv6 echo has no entry


def test_any_proto_mask_and_class_bits(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    # CLI4 is in class 0 (TCP 8080 only), CLI4_B in class 1 (everything).
    datapath.apply(
        attached,
        ING,
        LoweredDirection(
            True,
            {net(f"{CLI4}/32"): 0b01, net(f"{CLI4_B}/32"): 0b10},
            {(TCP, 8080, 16): 0b01},
            any_proto_mask=0b10,
        ),
    )
    assert tcp_ok(pair.client, SRV4, 8080, src=CLI4)
    assert not tcp_ok(pair.client, SRV4, 8081, src=CLI4)
    assert not udp_ok(pair.client, SRV4, 5353, src=CLI4)
    assert tcp_ok(pair.client, SRV4, 8081, src=CLI4_B)
    assert udp_ok(pair.client, SRV4, 5353, src=CLI4_B)


def test_except_is_a_narrower_entry(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    # 10.77.0.0/24 except 10.77.0.3/32, as the compiler lowers it.
    datapath.apply(
        attached,
        ING,
        LoweredDirection(
            True, {net("10.77.0.0/24"): 1, net(f"{CLI4_B}/32"): 0}, {}, any_proto_mask=1
        ),
    )
    assert tcp_ok(pair.client, SRV4, 8080, src=CLI4)
    assert not tcp_ok(pair.client, SRV4, 8080, src=CLI4_B)
    assert tcp_ok(pair.client, SRV4, 8080, src=CLI4_C)


def _neigh_resolved(ns: str, dev: str, addr: str, within: float = 3.0) -> bool:
    """Polls: on a link that just came up, resolution may outlast ping's wait.
    A blocked NS/NA or ARP reply would leave the entry INCOMPLETE, then FAILED."""
    deadline = time.monotonic() + within
    while True:
        r = run("ip", "-n", ns, "neigh", "show", addr, "dev", dev)
        if "lladdr" in r.stdout:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_arp_and_ndp_always_pass(datapath: PolicyDatapath, pair: Pair, attached: IfaceKey) -> None:
    datapath.apply(attached, ING, DENY_ALL)
    datapath.apply(attached, EGR, DENY_ALL)
    for ns in (pair.server, pair.client):
        run("ip", "-n", ns, "neigh", "flush", "all")
    assert not ping_ok(pair.server, CLI4)
    assert not ping_ok(pair.server, CLI6)
    # The echo requests were dropped, but neighbour resolution went through.
    assert _neigh_resolved(pair.server, pair.srv_if, CLI4)
    assert _neigh_resolved(pair.server, pair.srv_if, CLI6)
    assert not ping_ok(pair.client, SRV4)
    assert _neigh_resolved(pair.client, pair.cli_if, SRV4)
    counts = datapath.counters(attached)
    assert counts[(ING, Verdict.PASS_ALWAYS)].packets > 0  # ARP reply, NA
    assert counts[(EGR, Verdict.PASS_ALWAYS)].packets > 0  # ARP request, NS
    # And ping works once allowed.
    datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1, ALL_V6: 1}, {}, 1))
    assert ping_ok(pair.client, SRV4)
    assert ping_ok(pair.client, SRV6)


def test_tcp_replies_pass_egress_deny_all(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.apply(attached, EGR, DENY_ALL)
    datapath.apply(
        attached, ING, LoweredDirection(True, {ALL_V4: 1, ALL_V6: 1}, {(TCP, 8080, 16): 1})
    )
    assert tcp_ok(pair.client, SRV4, 8080)
    assert tcp_ok(pair.client, SRV6, 8080)
    client_side = Servers(pair.client, tcp=(7000,))
    try:
        assert tcp_ok(pair.client, CLI4, 7000)  # the client's listener works locally
        assert not tcp_ok(pair.server, CLI4, 7000)  # the server may not initiate
    finally:
        client_side.close()
    counts = datapath.counters(attached)
    assert counts[(EGR, Verdict.PASS_ESTABLISHED)].packets > 0
    assert counts[(EGR, Verdict.DROP_POLICY)].packets > 0


def test_udp_replies_pass_ingress_deny_all(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.apply(attached, ING, DENY_ALL)
    datapath.apply(
        attached, EGR, LoweredDirection(True, {net(f"{CLI4}/32"): 1}, {(UDP, 6000, 16): 1})
    )
    client_side = Servers(pair.client, udp=(6000, 6001))
    try:
        assert udp_ok(pair.server, CLI4, 6000)  # request out, reply back in
        assert not udp_ok(pair.server, CLI4, 6001)  # egress denies this port
        assert not udp_ok(pair.client, SRV4, 5353)  # ingress denies new flows
    finally:
        client_side.close()


def test_icmp_error_of_a_flow_passes(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey
) -> None:
    datapath.apply(attached, ING, DENY_ALL)
    datapath.apply(attached, EGR, LoweredDirection(True, {ALL_V4: 1}, {(UDP, 6999, 16): 1}))
    s = in_netns(pair.server, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with s:
        s.settimeout(PROBE_TIMEOUT)
        s.connect((CLI4, 6999))  # nothing listens: the client answers port unreachable
        s.send(b"x")
        with pytest.raises(ConnectionRefusedError):  # the ICMP error came through
            s.recv(16)
    assert datapath.counters(attached)[(ING, Verdict.PASS_ESTABLISHED)].packets >= 1


def test_generation_swap(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    allow = LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1})
    g1 = datapath.apply(attached, ING, allow)
    assert tcp_ok(pair.client, SRV4, 8080)
    held = tcp_connect(pair.client, SRV4, 8080)
    assert held is not None and echo(held)
    g2 = datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8081, 16): 1}))
    assert g2 == g1 + 1 == datapath.generation(attached, ING)
    assert not tcp_ok(pair.client, SRV4, 8080)  # new connections: denied
    assert tcp_ok(pair.client, SRV4, 8081)
    assert not echo(held)  # the established one was revalidated and cut
    held.close()
    # Only the active generation is left in the trie (bpftool as the oracle).
    gens = {
        e["formatted"]["key"]["gen"]
        for e in bpftool_dump(datapath, "nw_ports")  # type: ignore[index]
        if e["formatted"]["key"]["iface"] == attached.id
    }  # type: ignore[index]
    assert gens == {g2}


def test_keep_established_mode(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.keep_established = True
    datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1}))
    held = tcp_connect(pair.client, SRV4, 8080)
    assert held is not None and echo(held)
    datapath.apply(attached, ING, DENY_ALL)
    with held:
        assert echo(held)  # kept across the switch
    assert not tcp_ok(pair.client, SRV4, 8080)


def test_counters_match_bpftool(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1}))
    before = datapath.counters(attached)
    assert tcp_ok(pair.client, SRV4, 8080)
    assert not tcp_ok(pair.client, SRV4, 8081)
    after = datapath.counters(attached)
    assert after[(ING, Verdict.PASS_POLICY)].packets > before[(ING, Verdict.PASS_POLICY)].packets
    assert (
        after[(ING, Verdict.DROP_POLICY)].packets >= before[(ING, Verdict.DROP_POLICY)].packets + 1
    )
    assert after[(ING, Verdict.PASS_ESTABLISHED)].bytes > 0
    for key in [
        (ING, Verdict.DROP_POLICY),
        (ING, Verdict.PASS_POLICY),
        (EGR, Verdict.PASS_ESTABLISHED),
    ]:
        assert after[key].packets == bpftool_counter(datapath, attached, *key)


def _random_table(rng: random.Random, n: int) -> LoweredDirection:
    peers: dict[L.PeerEntry, int] = {}
    while len(peers) < n:
        if rng.random() < 0.7:
            plen = rng.randint(8, 32)
            value = rng.getrandbits(32) >> (32 - plen) << (32 - plen)
            peers[(4, value.to_bytes(4, "big"), plen)] = rng.getrandbits(64)
        else:
            plen = rng.randint(16, 128)
            value = rng.getrandbits(128) >> (128 - plen) << (128 - plen)
            peers[(6, value.to_bytes(16, "big"), plen)] = rng.getrandbits(64)
    ports: dict[L.PortEntry, int] = {}
    for _ in range(n // 10):
        plen = rng.randint(0, 16)
        port = rng.getrandbits(16) >> (16 - plen) << (16 - plen) if plen else 0
        ports[(rng.choice((TCP, UDP, 132)), port, plen)] = rng.getrandbits(64)
    return LoweredDirection(True, peers, ports, rng.getrandbits(64))


def test_read_back_equals_applied(datapath: PolicyDatapath, attached: IfaceKey) -> None:
    rng = random.Random(7)
    for direction in Direction:
        table = _random_table(rng, 600)
        gen = datapath.apply(attached, direction, table)
        assert datapath.read_back(attached, direction) == table
        on_kernel = [
            e
            for e in bpftool_dump(datapath, "nw_peers")
            if e["formatted"]["key"]["iface"] == attached.id  # type: ignore[index]
            and e["formatted"]["key"]["dir"] == direction
        ]  # type: ignore[index]
        assert len(on_kernel) == len(table.peers)
        assert {e["formatted"]["key"]["gen"] for e in on_kernel} == {gen}  # type: ignore[index]
    datapath.apply(attached, ING, LoweredDirection(False))
    assert datapath.read_back(attached, ING) == LoweredDirection(False)


def test_invalid_table_keeps_old_policy(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey, servers: Servers
) -> None:
    good = LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1})
    gen = datapath.apply(attached, ING, good)
    with pytest.raises(InvalidArgument):
        datapath.apply(
            attached, ING, LoweredDirection(True, {(4, bytes([10, 77, 0, 1]), 24): 1}, {})
        )
    with pytest.raises(InvalidArgument):
        datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1 << 64}, {}))
    assert datapath.generation(attached, ING) == gen
    assert datapath.read_back(attached, ING) == good
    assert tcp_ok(pair.client, SRV4, 8080)


@pytest.mark.parametrize("keys", ["classid", "trampoline"])
def test_one_program_two_netns_same_ifindex(
    datapath: PolicyDatapath, netns: Callable[[], str], keys: str
) -> None:
    # Two servers whose policed links share an ifindex (each is the first
    # link after lo in a fresh netns): only the interface key tells them
    # apart, carried in the filter's classid or, past 16 bits, in a
    # trampoline of its own.
    with contextlib.ExitStack() as stack:
        dp = datapath
        if keys == "trampoline":
            dp = stack.enter_context(loaded_datapath("k"))
            assert dp._open is not None
            dp._open.maps.meta.update(
                U32(0), L.Meta(layout_version=L.LAYOUT_VERSION, next_iface=L.CLASSID_KEY_MAX + 1)
            )
        a = make_pair(netns, "10.77.0", "fd77")
        b = make_pair(netns, "10.78.0", "fd78")
        ka = dp.attach(a.server, a.srv_if)
        kb = dp.attach(b.server, b.srv_if)
        stack.callback(dp.detach, kb)
        stack.callback(dp.detach, ka)
        stack.callback(Servers(a.server, tcp=(8080, 9090)).close)
        stack.callback(Servers(b.server, tcp=(8080, 9090)).close)
        assert ka.ifindex == kb.ifindex and ka.id != kb.id
        assert (ka.id > L.CLASSID_KEY_MAX) == (keys == "trampoline")
        assert ka.netns_cookie != kb.netns_cookie
        dp.apply(ka, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1}))
        dp.apply(kb, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 9090, 16): 1}))
        # Every filter's program tail-calls through the one nw_progs array,
        # whose slot 0 is the one policy program.
        progs_map = json.loads(
            run("bpftool", "-j", "map", "show", "pinned", str(dp.pin_dir / "nw_progs")).stdout
        )["id"]
        ingress_progs = set()
        for p in (a, b):
            for line in our_filters(p.server, p.srv_if):
                prog_id = line.split(" id ")[1].split()[0]
                info = json.loads(run("bpftool", "-j", "prog", "show", "id", prog_id).stdout)
                assert info["map_ids"] == [progs_map]
            r = run(
                "ip", "netns", "exec", p.server, "tc", "filter", "show", "dev", p.srv_if, "ingress"
            )
            ingress_progs |= {
                ln.split(" id ")[1].split()[0] for ln in r.stdout.splitlines() if " id " in ln
            }
        # One shared entry program, or one trampoline each.
        assert len(ingress_progs) == (1 if keys == "classid" else 2)
        assert tcp_ok(a.client, "10.77.0.1", 8080)
        assert not tcp_ok(a.client, "10.77.0.1", 9090)
        assert tcp_ok(b.client, "10.78.0.1", 9090)
        assert not tcp_ok(b.client, "10.78.0.1", 8080)


def test_entry_filter_without_classid_fails_closed(datapath: PolicyDatapath, pair: Pair) -> None:
    from nicwarden.agent.host.tc import TC_H_INGRESS, Tc

    assert datapath._open is not None
    entry = datapath._open.ifaces._entry(ING)
    with Tc(f"/run/netns/{pair.server}") as tc:
        idx = tc.ifindex(pair.srv_if)
        assert idx is not None
        tc.add_clsact(idx)
        assert ping_ok(pair.client, SRV4)
        tc.add_bpf_filter(idx, TC_H_INGRESS, prio=1, handle=1, prog_fd=entry, name="nokey")
        assert not ping_ok(pair.client, SRV4)  # no key: no interface, nothing passes
        tc.del_clsact(idx)


_AGENT_SCRIPT = """
import sys
from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.bpf.layout import Direction, LoweredDirection
instance, ns, ifname = sys.argv[1:4]
dp = PolicyDatapath(instance)
dp.load()
key = dp.attach(ns, ifname)
dp.apply(key, Direction.INGRESS, LoweredDirection(
    True, {(4, bytes(4), 0): 1}, {(6, 8080, 16): 1}, 0))
print(key.id)
"""


def test_adopt_after_agent_exit(pair: Pair, servers: Servers) -> None:
    instance = unique("a")
    dp = PolicyDatapath(instance)
    try:
        # A whole agent lifetime in another process, which then exits.
        r = subprocess.run(
            [sys.executable, "-c", _AGENT_SCRIPT, instance, pair.server, pair.srv_if],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        key_id = int(r.stdout.strip())
        # Nobody holds an fd now; pins and tc filters keep enforcing.
        assert tcp_ok(pair.client, SRV4, 8080)
        assert not tcp_ok(pair.client, SRV4, 8081)
        prog_pin = dp.pin_dir / L.PROG_PIN
        assert prog_pin.exists()
        started = time.monotonic()
        dp.adopt()
        assert time.monotonic() - started < 0.5  # no compile
        [key] = dp.interfaces()
        assert (key.id, key.ifname) == (key_id, pair.srv_if)
        assert key.netns == f"/run/netns/{pair.server}"
        assert dp.read_back(key, ING) == LoweredDirection(
            True, {ALL_V4: 1}, {(TCP, 8080, 16): 1}, 0
        )
        assert dp.generation(key, ING) == 1
        assert dp.counters(key)[(ING, Verdict.DROP_POLICY)].packets >= 1
        # The adopted instance manages the same kernel objects.
        dp.apply(key, ING, LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8081, 16): 1}))
        assert tcp_ok(pair.client, SRV4, 8081)
        assert not tcp_ok(pair.client, SRV4, 8080)
        # load() over a live instance: an in-place program upgrade, state kept.
        old_prog = dp.prog_id()
        dp.load()
        assert dp.prog_id() != old_prog
        assert dp.read_back(key, ING).ports == {(TCP, 8081, 16): 1}
        assert tcp_ok(pair.client, SRV4, 8081)
        assert not tcp_ok(pair.client, SRV4, 8080)
    finally:
        dp.cleanup()


def test_adopt_without_pins_is_not_found() -> None:
    from nicwarden.agent.errors import NotFound

    with pytest.raises(NotFound):
        PolicyDatapath(unique("n")).adopt()


def test_cleanup_leaves_nothing(pair: Pair, servers: Servers) -> None:
    dp = PolicyDatapath(unique("c"))
    try:
        dp.load()
        key = dp.attach(pair.server, pair.srv_if)
        dp.apply(key, ING, DENY_ALL)
        prog_id = dp.prog_id()
        assert not tcp_ok(pair.client, SRV4, 8080)
        assert len(our_filters(pair.server, pair.srv_if)) == 2
    finally:
        dp.cleanup()
    assert not dp.pin_dir.exists()
    assert our_filters(pair.server, pair.srv_if) == []
    r = run("ip", "netns", "exec", pair.server, "tc", "qdisc", "show", "dev", pair.srv_if)
    assert "clsact" not in r.stdout
    assert tcp_ok(pair.client, SRV4, 8080)
    # The program goes once the last reference is dropped (after an RCU grace period).
    deadline = time.monotonic() + 5
    while run("bpftool", "prog", "show", "id", str(prog_id), check=False).returncode == 0:
        assert time.monotonic() < deadline, f"prog {prog_id} still loaded after cleanup"
        time.sleep(0.1)


def test_detach_when_netns_is_gone(datapath: PolicyDatapath, netns: Callable[[], str]) -> None:
    p = make_pair(netns)
    key = datapath.attach(p.server, p.srv_if)
    datapath.apply(key, ING, DENY_ALL)
    run("ip", "netns", "del", p.server)
    datapath.detach(key)  # already gone is success
    assert key not in datapath.interfaces()


def test_fragmented_packets(datapath: PolicyDatapath, pair: Pair, attached: IfaceKey) -> None:
    """Large pings fragment: IPv4 fragments (frag_off past the IHL-sized
    header) and IPv6 fragment headers. Later fragments carry no ICMP header;
    a protocol-wide entry still judges them."""
    big = ["-s", "3000"]

    def big_ping(dst: str) -> bool:
        fam = "-6" if ":" in dst else "-4"
        r = run(
            "ip",
            "netns",
            "exec",
            pair.client,
            "ping",
            fam,
            *big,
            "-c1",
            "-W",
            str(PROBE_TIMEOUT),
            dst,
            check=False,
        )
        return r.returncode == 0

    datapath.apply(
        attached,
        ING,
        LoweredDirection(True, {ALL_V4: 1, ALL_V6: 1}, {(ICMP, 0, 0): 1, (ICMP6, 0, 0): 1}),
    )
    assert big_ping(SRV4)
    assert big_ping(SRV6)
    datapath.apply(attached, ING, LoweredDirection(True, {ALL_V4: 1, ALL_V6: 1}, {(TCP, 0, 0): 1}))
    assert not big_ping(SRV4)
    assert not big_ping(SRV6)


def _mac(ns: str, dev: str) -> bytes:
    info = json.loads(run("ip", "-j", "-n", ns, "link", "show", dev).stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


def _syn_frame(
    dst_mac: bytes,
    src_mac: bytes,
    tags: list[int],
    src: str,
    dst: str,
    sport: int,
    dport: int,
    ethertype: int = 0x0800,
) -> bytes:
    """An Ethernet frame with in-band tags (TPID list) around a TCP SYN.
    Checksums are left zero: the verdict is taken at tc, before any check."""
    eth = dst_mac + src_mac
    for i, tpid in enumerate(tags):
        eth += struct.pack("!HH", tpid, 100 + i)
    eth += struct.pack("!H", ethertype)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        0,
        0x4000,
        64,
        TCP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return eth + ip + tcp


def test_vlan_tags_and_encapsulations(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey
) -> None:
    """Tagged frames are judged by the policy of the link they cross; frames
    that would carry IP past the parser are dropped on isolated directions."""
    # Silence the link (router solicitations, MLD reports) so that counter
    # deltas come from the crafted frames alone.
    for ns, dev in ((pair.server, pair.srv_if), (pair.client, pair.cli_if)):
        run("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
    allow_8080 = LoweredDirection(True, {ALL_V4: 1}, {(TCP, 8080, 16): 1})
    datapath.apply(attached, ING, allow_8080)
    datapath.apply(attached, EGR, allow_8080)
    srv_mac, cli_mac = _mac(pair.server, pair.srv_if), _mac(pair.client, pair.cli_if)
    q, ad = 0x8100, 0x88A8
    sport = iter(range(40000, 41000))

    def verdict(d: Direction, tags: list[int], dport: int, ethertype: int = 0x0800) -> Verdict:
        # Egress: sent from the server out of the policed link. Ingress: sent
        # by the client; the receive path strips the outer tag into
        # skb->vlan_tci before tc ingress, so one tag more is sent.
        ns, dev, dst_mac, src_mac = (
            (pair.server, pair.srv_if, cli_mac, srv_mac)
            if d is EGR
            else (pair.client, pair.cli_if, srv_mac, cli_mac)
        )
        frame = _syn_frame(
            dst_mac,
            src_mac,
            tags,
            CLI4 if d is ING else SRV4,
            SRV4 if d is ING else CLI4,
            next(sport),
            dport,
            ethertype,
        )
        before = datapath.counters(attached)
        s = in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        with s:
            s.bind((dev, 0))
            try:
                s.send(frame)
            except OSError as e:  # a tc egress drop surfaces as ENOBUFS
                assert e.errno == errno.ENOBUFS and d is EGR
        deadline = time.monotonic() + 2
        while True:
            after = datapath.counters(attached)
            changed = [v for v in Verdict if after[(d, v)].packets > before[(d, v)].packets]
            if changed or time.monotonic() > deadline:
                assert len(changed) == 1, changed
                return changed[0]
            time.sleep(0.01)

    for d, extra in ((EGR, []), (ING, [q])):
        assert verdict(d, extra, 8080) == Verdict.PASS_POLICY
        assert verdict(d, extra, 8081) == Verdict.DROP_POLICY
        assert verdict(d, extra + [q], 8080) == Verdict.PASS_POLICY  # one in-band tag
        assert verdict(d, extra + [q], 8081) == Verdict.DROP_POLICY
        assert verdict(d, extra + [ad, q], 8080) == Verdict.PASS_POLICY  # QinQ
        assert verdict(d, extra + [ad, q], 8081) == Verdict.DROP_POLICY
        assert verdict(d, extra + [ad, q, q], 8080) == Verdict.DROP_POLICY  # past the parser
        assert verdict(d, extra, 8080, ethertype=0x8847) == Verdict.DROP_POLICY  # MPLS
        assert verdict(d, extra, 8080, ethertype=0x88CC) == Verdict.PASS_ALWAYS  # LLDP
