"""Peer changes written in place (agent/host/lpm_delta.py) against the kernel.

* After hundreds of random peer changes compiled by the real policy engine,
  the kernel maps hold exactly what a fresh compile of the final objects
  holds, entry for entry.
* While peers churn (in place and by generation switches), a probe that must
  stay allowed is never dropped and one that must stay denied never arrives.
* A flow admitted before an in-place removal of its peer is re-checked.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nicwarden.agent.host.bpf import PolicyDatapath
from nicwarden.agent.policy import Action, Event, PolicedInterface, PolicyEngine
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, PeerEntry
from tests.integration.test_bpf_datapath import Pair, make_pair
from tests.support.oracle import run
from tests.support.policy_objects import pod, policy
from tests.support.traffic import Servers, echo, in_netns, tcp_connect, tcp_ok

pytestmark = pytest.mark.root

ING = Direction.INGRESS
SRV4, ALLOWED, OTHER, DENIED = "10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"
TCP, UDP = 6, 17


def host(ip: str) -> PeerEntry:
    return (4, ipaddress.ip_address(ip).packed, 32)


def block(cidr: str) -> PeerEntry:
    n = ipaddress.ip_network(cidr)
    return (4, n.network_address.packed, n.prefixlen)


@pytest.fixture
def datapath() -> Iterator[PolicyDatapath]:
    dp = PolicyDatapath(f"delta-{uuid.uuid4().hex[:8]}")
    dp.load()
    try:
        yield dp
    finally:
        dp.cleanup(force=True)


@pytest.fixture
def pair(netns: Callable[[], str]) -> Pair:
    return make_pair(netns)


@pytest.fixture
def attached(datapath: PolicyDatapath, pair: Pair) -> Iterator[IfaceKey]:
    key = datapath.attach(pair.server, pair.srv_if)
    try:
        yield key
    finally:
        datapath.detach(key)


# -- a flow admitted before an in-place change ----------------------------------------


def test_in_place_removal_cuts_the_removed_peers_flow_only(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey
) -> None:
    servers = Servers(pair.server, tcp=(8080,))
    try:
        ports = {(TCP, 8080, 16): 1}
        gen = datapath.apply(
            attached, ING, LoweredDirection(True, {host(ALLOWED): 1, host(OTHER): 1}, ports)
        )
        held = tcp_connect(pair.client, SRV4, 8080, src=ALLOWED)
        kept = tcp_connect(pair.client, SRV4, 8080, src=OTHER)
        assert held is not None and kept is not None and echo(held) and echo(kept)
        before = datapath.write_counts()
        assert datapath.apply(attached, ING, LoweredDirection(True, {host(OTHER): 1}, ports)) == gen
        after = datapath.write_counts()
        assert after["delta"] == before["delta"] + 1 and after["switch"] == before["switch"]
        with held, kept:
            assert not echo(held)  # its peer left: re-checked and cut
            assert echo(kept)
        assert not tcp_ok(pair.client, SRV4, 8080, src=ALLOWED)
        assert tcp_ok(pair.client, SRV4, 8080, src=OTHER)
    finally:
        servers.close()


# -- hundreds of engine-compiled changes equal a fresh compile ------------------------


def _policy(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return policy(
        "clients",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"role": "client"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
                    ],
                    "ports": ports,
                }
            ],
        },
    )


def _engine(objects: list[dict[str, Any]], target: PolicedInterface) -> PolicyEngine:
    engine = PolicyEngine()
    for obj in objects:
        engine.apply(Event(Action.ADD, obj))
    engine.set_targets([target])
    return engine


def test_random_peer_changes_leave_the_maps_equal_to_a_fresh_compile(
    datapath: PolicyDatapath, netns: Callable[[], str]
) -> None:
    rnd = random.Random(1414)
    ns_a, ns_b = netns(), netns()
    for ns in (ns_a, ns_b):
        run("ip", "-n", ns, "link", "add", "net1", "type", "veth", "peer", "name", "p1")
    target = PolicedInterface(
        "prod", "db", "net1", "prod/net", (ipaddress.ip_address("10.56.0.2"),), "u-db"
    )
    fixed = [
        {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "prod"}},
        pod("db", {"app": "db"}, "10.56.0.2"),
    ]
    ports: list[dict[str, Any]] = [{"protocol": "TCP", "port": 80}]
    engine = _engine([*fixed, _policy(ports)], target)
    iface = datapath.attach(f"/var/run/netns/{ns_a}", "net1")
    fresh_iface = datapath.attach(f"/var/run/netns/{ns_b}", "net1")
    pods: dict[str, dict[str, Any]] = {}

    def random_ip() -> str:
        # Some inside the except block, some outside the ipBlock, some v6.
        return rnd.choice(
            [
                f"10.9.{rnd.randrange(4)}.{rnd.randrange(1, 255)}",
                f"10.{rnd.randrange(1, 20)}.0.{rnd.randrange(1, 255)}",
                f"192.168.{rnd.randrange(4)}.{rnd.randrange(1, 255)}",
                f"fd00::{rnd.randrange(1, 0xFFFF):x}",
            ]
        )

    before = datapath.write_counts()
    for step in range(500):
        roll = rnd.random()
        name = f"p{rnd.randrange(60)}"
        if roll < 0.04:
            ports = [{"protocol": rnd.choice(["TCP", "UDP"]), "port": rnd.randrange(1, 9000)}]
            obj, action = _policy(ports), Action.UPDATE
        elif name in pods and roll < 0.35:
            obj, action = pods.pop(name), Action.DELETE
        else:
            role = "client" if rnd.random() < 0.7 else "other"
            obj = pods[name] = pod(name, {"role": role}, random_ip())
            action = Action.UPDATE
        engine.apply(Event(action, obj))
        lowered = engine.lowered(target.key)
        assert lowered is not None
        datapath.apply(iface, ING, lowered.ingress)
        if step % 100 == 99:
            assert datapath.read_back(iface, ING) == LoweredDirection.of(lowered.ingress)
    counts = datapath.write_counts()
    assert counts["delta"] - before["delta"] > 250, counts

    final = _engine([*fixed, _policy(ports), *pods.values()], target).lowered(target.key)
    assert final is not None
    datapath.apply(fresh_iface, ING, final.ingress)
    incremental = datapath.read_back(iface, ING)
    assert incremental == LoweredDirection.of(final.ingress)
    assert incremental == datapath.read_back(fresh_iface, ING)
    datapath.detach(iface)
    datapath.detach(fresh_iface)


# -- atomicity under traffic ----------------------------------------------------------


class _CountingEcho:
    """A UDP echo server that remembers every source that reached it."""

    def __init__(self, ns: str, port: int) -> None:
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((SRV4, port))
        self.sock.settimeout(0.1)
        self.seen: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            self.seen[peer[0]] = self.seen.get(peer[0], 0) + 1
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _probe_loop(stop: threading.Event, result: dict[str, int]) -> None:
    """Runs inside the client netns: each probe is a new socket, so a new
    flow that the tables judge afresh."""
    while not stop.is_set():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((DENIED, 0))
            s.sendto(b"x", (SRV4, 7000))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.bind((ALLOWED, 0))
            s.sendto(b"y", (SRV4, 7000))
            try:
                ok = s.recvfrom(64)[0] == b"y"
            except OSError:
                ok = False
            result["sent"] += 1
            if not ok:
                result["lost"] += 1


def test_churn_never_drops_an_allowed_probe_nor_passes_a_denied_one(
    datapath: PolicyDatapath, pair: Pair, attached: IfaceKey
) -> None:
    rnd = random.Random(77)
    server = _CountingEcho(pair.server, 7000)
    udp = {(UDP, 7000, 16): 1}
    try:
        datapath.apply(attached, ING, LoweredDirection(True, {host(ALLOWED): 1}, udp))
        warm: dict[str, int] = {"sent": 0, "lost": 0}
        in_netns(pair.client, lambda: _probe_loop_once(warm))
        assert warm == {"sent": 1, "lost": 0}

        stop = threading.Event()
        result = {"sent": 0, "lost": 0}
        prober = threading.Thread(
            target=lambda: in_netns(pair.client, lambda: _probe_loop(stop, result))
        )
        prober.start()
        before = datapath.write_counts()
        try:
            extra: set[str] = set()
            for i in range(600):
                # Other /32s come and go around both probes' addresses.
                ip = f"10.77.{rnd.randrange(2)}.{rnd.randrange(5, 255)}"
                extra.symmetric_difference_update({ip})
                peers = {host(ALLOWED): 1, **{host(x): 1 for x in extra}}
                if i % 50 == 25:
                    # A covering block and its except, and another port: a switch.
                    peers[block("10.77.0.0/28")] = 1
                    peers[host(DENIED)] = 0
                ports = dict(udp)
                if i % 40 == 39:
                    ports[(TCP, 80 + i, 16)] = 1
                datapath.apply(attached, ING, LoweredDirection(True, peers, ports))
        finally:
            stop.set()
            prober.join()
        counts = datapath.write_counts()
    finally:
        server.close()
    assert counts["delta"] - before["delta"] > 400 and counts["switch"] > before["switch"]
    assert result["sent"] > 50, result
    assert result["lost"] == 0, result
    assert server.seen.get(DENIED, 0) == 0, server.seen
    assert server.seen.get(ALLOWED, 0) == result["sent"] + 1


def _probe_loop_once(result: dict[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.bind((ALLOWED, 0))
        s.sendto(b"y", (SRV4, 7000))
        ok = s.recvfrom(64)[0] == b"y"
    result["sent"] += 1
    result["lost"] += 0 if ok else 1
