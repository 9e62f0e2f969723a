"""PolicyEnforcer between a fake object source and an in-memory datapath.

The datapath fake implements the ``Datapath`` protocol and records what was
applied per interface and direction; what the tables allow is judged with
the policy package's reference evaluator (``lookup``), the same semantics
the kernel program implements. The store is the real sqlite store.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from test_policy_helpers import TCP, mnp, nad, namespace, pod

from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.k8s.source import Sink, SourceProblem
from nicwarden.agent.policy import Action, Event, LoweredTable, lookup
from nicwarden.agent.store import Attachment, AttachmentKey, Store
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredLike, Verdict

NETNS = "/var/run/netns/pod-server"
SERVER_IP = "10.1.0.10"
CLIENT_IP, OTHER_IP = "10.1.0.20", "10.1.0.21"

ALLOW_CLIENTS = mnp(
    {
        "podSelector": {"matchLabels": {"app": "server"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
    name="allow-clients",
)


class FakeDatapath:
    """Records attach/detach/apply like PolicyDatapath would enact them.

    ``attach`` of an interface already attached returns its key, as the real
    datapath adopts its pinned registry after a restart."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.attached: dict[tuple[str, str], IfaceKey] = {}
        self.tables: dict[tuple[int, Direction], LoweredLike] = {}
        self.generations: dict[tuple[int, Direction], int] = {}
        self.calls: list[str] = []

    def attach(self, netns: str, ifname: str) -> IfaceKey:
        self.calls.append(f"attach {ifname}")
        key = self.attached.get((netns, ifname))
        if key is None:
            n = next(self._ids)
            key = IfaceKey(id=n, netns=netns, ifname=ifname, ifindex=n + 1, netns_cookie=4096 + n)
            self.attached[(netns, ifname)] = key
        return key

    def detach(self, iface: IfaceKey) -> None:
        self.calls.append(f"detach {iface.ifname}")
        self.attached.pop((iface.netns, iface.ifname), None)
        for d in Direction:
            self.tables.pop((iface.id, d), None)

    def apply(self, iface: IfaceKey, direction: Direction, table: LoweredLike) -> int:
        self.calls.append(f"apply {iface.ifname} {direction.name.lower()}")
        slot = (iface.id, direction)
        self.tables[slot] = table
        self.generations[slot] = self.generations.get(slot, 0) + 1
        return self.generations[slot]

    def counters(self, iface: IfaceKey) -> Mapping[tuple[Direction, Verdict], Any]:
        return {}

    def lingering(self) -> int:
        return 0

    # -- what the tests ask ----------------------------------------------------

    def table(self, netns: str, ifname: str, direction: Direction) -> LoweredTable | None:
        key = self.attached.get((netns, ifname))
        table = None if key is None else self.tables.get((key.id, direction))
        assert table is None or isinstance(table, LoweredTable)
        return table

    def allows(self, ifname: str, src: str, port: int = 80, netns: str = NETNS) -> bool:
        table = self.table(netns, ifname, Direction.INGRESS)
        assert table is not None, f"nothing applied to {ifname}"
        return lookup(table, 4, src, TCP, port)


class FakeSource:
    """An ObjectSource the test feeds: events are delivered when the test says."""

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.is_synced = False
        self.stopped = False

    def start(self, sink: Sink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.stopped = True

    def synced(self) -> bool:
        return self.is_synced

    def problems(self) -> list[SourceProblem]:
        return []

    def deliver(self, action: Action, *objs: dict[str, Any]) -> None:
        assert self.sink is not None, "source not started"
        for obj in objs:
            self.sink(Event(action, copy.deepcopy(obj)))


def cluster() -> list[dict[str, Any]]:
    return [
        namespace("prod", env="prod"),
        nad("prod", "net-a"),
        pod("prod", "server", {"app": "server"}),  # its net-a status comes from our attachment
        pod("prod", "client", {"app": "client"}, [("prod/net-a", [CLIENT_IP])]),
        pod("prod", "other", {"app": "other"}, [("prod/net-a", [OTHER_IP])]),
    ]


def put_ready(store: Store, container: str = "c-server", ifname: str = "net1") -> Attachment:
    return store.put_attachment(
        AttachmentKey(container, ifname, "net-a"),
        netns=NETNS,
        device=None,
        kind="chained",
        pod_namespace="prod",
        pod_name="server",
        pod_uid="uid-prod-server",
        original={},
        config={},
        state="ready",
        result={
            "cniVersion": "1.1.0",
            "interfaces": [{"name": ifname, "mac": "02:00:00:00:01:01", "sandbox": NETNS}],
            "ips": [{"address": f"{SERVER_IP}/24", "interface": 0}],
        },
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def started(store: Store, dp: FakeDatapath, source: FakeSource) -> PolicyEnforcer:
    enforcer = PolicyEnforcer(store, dp, source)
    enforcer.start()
    return enforcer


def primed(enforcer: PolicyEnforcer, source: FakeSource) -> None:
    source.is_synced = True
    wait_for(lambda: enforcer.primed, "the enforcer to prime")


@pytest.fixture
def running(store: Store) -> Iterator[tuple[PolicyEnforcer, FakeDatapath, FakeSource]]:
    """An enforcer primed on the cluster with the server attached and the
    allow-clients policy in force."""
    dp, source = FakeDatapath(), FakeSource()
    enforcer = started(store, dp, source)
    source.deliver(Action.ADD, *cluster(), ALLOW_CLIENTS)
    primed(enforcer, source)
    enforcer.on_attach(put_ready(store))
    yield enforcer, dp, source
    enforcer.stop()


# ---------------------------------------------------------------- priming


def test_nothing_reaches_the_datapath_before_the_source_is_primed(store: Store) -> None:
    dp, source = FakeDatapath(), FakeSource()
    enforcer = started(store, dp, source)
    try:
        source.deliver(Action.ADD, *cluster(), ALLOW_CLIENTS)
        enforcer.on_attach(put_ready(store))
        assert not enforcer.primed
        assert dp.calls == [] and dp.attached == {}

        primed(enforcer, source)
        assert dp.calls == ["attach net1", "apply net1 ingress", "apply net1 egress"]
        assert dp.allows("net1", CLIENT_IP) and not dp.allows("net1", OTHER_IP)
        assert [r["generation"] for r in enforcer.interfaces()] == [1]
    finally:
        enforcer.stop()
    assert source.stopped


def test_without_a_source_the_enforcer_primes_at_once(store: Store) -> None:
    put_ready(store)
    dp = FakeDatapath()
    enforcer = PolicyEnforcer(store, dp, None)
    enforcer.start()
    assert enforcer.primed
    # No policy can select anything: zero overhead, nothing attached.
    assert dp.calls == []


# ---------------------------------------------------------------- attach, detach


def test_attach_applies_and_detach_removes(
    running: tuple[PolicyEnforcer, FakeDatapath, FakeSource], store: Store
) -> None:
    enforcer, dp, _ = running
    assert dp.allows("net1", CLIENT_IP) and not dp.allows("net1", OTHER_IP)
    (row,) = enforcer.interfaces()
    assert row["pod"] == "prod/server" and row["ingress_isolated"] and not row["egress_isolated"]

    (att,) = store.list_attachments()
    enforcer.on_detach(att)
    assert dp.calls[-1] == "detach net1" and dp.attached == {}
    assert enforcer.interfaces() == []


def test_unpoliced_attachment_is_not_attached(store: Store) -> None:
    dp, source = FakeDatapath(), FakeSource()
    enforcer = started(store, dp, source)
    try:
        source.deliver(Action.ADD, *cluster())  # no policy
        primed(enforcer, source)
        enforcer.on_attach(put_ready(store))
        assert dp.calls == []
        (row,) = enforcer.interfaces()
        assert not row["ingress_isolated"] and not row["egress_isolated"]
    finally:
        enforcer.stop()


def test_local_status_comes_from_the_attachment(
    running: tuple[PolicyEnforcer, FakeDatapath, FakeSource], store: Store
) -> None:
    """The client's egress policy names the server by label: its net-a IP is
    known from our attachment, not from a network-status annotation."""
    enforcer, dp, source = running
    client_att = store.put_attachment(
        AttachmentKey("c-client", "net1", "net-a"),
        netns="/var/run/netns/pod-client",
        device=None,
        kind="chained",
        pod_namespace="prod",
        pod_name="client",
        pod_uid="uid-prod-client",
        original={},
        config={},
        state="ready",
        result={"ips": [{"address": f"{CLIENT_IP}/24"}]},
    )
    egress_to_server = mnp(
        {
            "podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}],
        },
        name="client-egress",
    )
    source.deliver(Action.ADD, egress_to_server)
    enforcer.on_attach(client_att)
    table = dp.table("/var/run/netns/pod-client", "net1", Direction.EGRESS)
    assert table is not None
    assert lookup(table, 4, SERVER_IP, TCP, 80)
    assert not lookup(table, 4, OTHER_IP, TCP, 80)


# ---------------------------------------------------------------- changes


def test_relabel_changes_the_tables(
    running: tuple[PolicyEnforcer, FakeDatapath, FakeSource],
) -> None:
    _, dp, source = running
    assert not dp.allows("net1", OTHER_IP)
    before = dict(dp.generations)

    source.deliver(
        Action.UPDATE, pod("prod", "other", {"app": "client"}, [("prod/net-a", [OTHER_IP])])
    )
    assert dp.allows("net1", OTHER_IP)
    assert dp.generations != before  # a new generation, not an edit in place

    source.deliver(
        Action.UPDATE, pod("prod", "client", {"app": "gone"}, [("prod/net-a", [CLIENT_IP])])
    )
    assert not dp.allows("net1", CLIENT_IP) and dp.allows("net1", OTHER_IP)


def test_policy_delete_unisolates(running: tuple[PolicyEnforcer, FakeDatapath, FakeSource]) -> None:
    enforcer, dp, source = running
    source.deliver(Action.DELETE, ALLOW_CLIENTS)
    table = dp.table(NETNS, "net1", Direction.INGRESS)
    assert table is not None and not table.isolated
    assert dp.allows("net1", OTHER_IP) and dp.allows("net1", "192.0.2.1", port=9)
    (row,) = enforcer.interfaces()
    assert not row["ingress_isolated"] and row["policies"] == []


def test_invalid_policy_is_reported_and_fails_closed(store: Store) -> None:
    reports: list[str] = []
    dp, source = FakeDatapath(), FakeSource()
    enforcer = PolicyEnforcer(store, dp, source, on_invalid=lambda obj, msg: reports.append(msg))
    enforcer.start()
    try:
        source.deliver(Action.ADD, *cluster())
        primed(enforcer, source)
        enforcer.on_attach(put_ready(store))
        bad = mnp(
            {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]}],
            },
            name="bad",
        )
        source.deliver(Action.ADD, bad)
        assert len(reports) == 1 and "fails closed" in reports[0]
        assert not dp.allows("net1", CLIENT_IP)
        source.deliver(Action.UPDATE, bad)
        assert len(reports) == 1  # once per distinct error
    finally:
        enforcer.stop()


# ---------------------------------------------------------------- restart


def test_restart_adopts_attachments_and_keeps_tables_until_primed(
    running: tuple[PolicyEnforcer, FakeDatapath, FakeSource], store: Store
) -> None:
    first, dp, _ = running
    first.stop()
    pinned = dict(dp.tables)
    dp.calls.clear()

    source = FakeSource()
    second = started(store, dp, source)  # same store, same (pinned) datapath
    try:
        # A partial picture arrives: the client pod is not known yet.
        source.deliver(Action.ADD, *cluster()[:3], ALLOW_CLIENTS)
        assert dp.calls == [] and dp.tables == pinned  # the old decision keeps enforcing
        source.deliver(Action.ADD, *cluster()[3:])
        primed(second, source)

        assert dp.calls[0] == "attach net1" and len(dp.attached) == 1  # adopted, not duplicated
        assert dp.allows("net1", CLIENT_IP) and not dp.allows("net1", OTHER_IP)
        (row,) = second.interfaces()
        assert row["pod"] == "prod/server"
    finally:
        second.stop()


def test_only_pods_attached_here_are_kept_as_objects(
    running: tuple[PolicyEnforcer, FakeDatapath, FakeSource], store: Store
) -> None:
    """Every node follows every pod: keeping each pod's object as well as its
    engine record would double the cluster's memory on every node."""
    enforcer, dp, source = running
    source.deliver(
        Action.ADD,
        *(pod("prod", f"p{i}", {"app": "x"}, [("prod/net-a", [f"10.9.0.{i}"])]) for i in range(50)),
    )
    assert set(enforcer._pods) <= {("prod", "server")}
    # A pod first seen before its attachment is rebuilt from its record and
    # still gets our first-hand status merged.
    late = store.put_attachment(
        AttachmentKey("c-p7", "net1", "net-a"),
        netns="/var/run/netns/pod-p7",
        device=None,
        kind="chained",
        pod_namespace="prod",
        pod_name="p7",
        pod_uid="uid-prod-p7",
        original={},
        config={},
        state="ready",
        result={"ips": [{"address": f"{OTHER_IP}/24"}]},
    )
    source.deliver(
        Action.UPDATE, pod("prod", "p7", {"app": "client"}, [("prod/net-a", ["10.9.0.7"])])
    )
    enforcer.on_attach(late)
    assert ("prod", "p7") in enforcer._pods
    assert dp.allows("net1", OTHER_IP)  # the attachment's address, not the annotation's
