"""The API source stands aside for CNI requests (issue 14, backpressure):
its reflectors wait, between the items of a list and of a relist's diff,
while a request holds the agent's ``Priority``; and a steady stream of
requests slows a relist down but never stops it (the starvation bound).

Real ``kubernetes`` client against the in-repo API server over loopback
HTTP, as tests/integration/test_k8s_api.py. No root needed.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from nicwarden.agent.k8s import ApiSource, BackoffPolicy
from nicwarden.agent.k8s.ledger import Ledger
from nicwarden.agent.k8s.project import PROJECTIONS
from nicwarden.agent.policy_feed import Priority
from tests.support.k8s_apiserver import EventLog, FakeApiServer, wait_until

FAST = BackoffPolicy(initial=0.02, cap=0.2)
KINDS = ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy")


def pod(ns: str, name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "node-2"},
        "status": {"phase": "Running"},
    }


def load(server: FakeApiServer, pods: int, prefix: str = "p") -> None:
    server.add_many(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}"}}
            for i in range(3)
        ]
        if prefix == "p"
        else []
    )
    server.add_many([pod(f"ns-{i % 3}", f"{prefix}-{i:04d}", f"app-{i % 7}") for i in range(pods)])


def server_state(server: FakeApiServer) -> dict[tuple[str, str, str], Any]:
    out = {}
    for kind in KINDS:
        for obj in server._objects[kind].values():
            meta = obj["metadata"]
            out[(kind, meta.get("namespace", ""), meta["name"])] = PROJECTIONS[kind](
                copy.deepcopy(obj)
            )
    return out


def same(log: EventLog, server: FakeApiServer) -> bool:
    try:
        return log.state() == server_state(server)
    except AssertionError:
        return False


def test_lists_wait_while_a_cni_request_runs(server: FakeApiServer, api_client: Any) -> None:
    load(server, 60)
    priority = Priority(max_wait_s=60)  # longer than the test: only the release frees them
    source = ApiSource(
        api_client, "node-1", backoff=FAST, watch_timeout=30, page_size=10, pause=priority.wait_idle
    )
    log = EventLog()
    try:
        with priority.running():
            source.start(log)
            # Every kind's reflector has read its first page and stands aside
            # before parsing it: nothing is delivered while the request runs.
            wait_until(lambda: priority.waits >= len(KINDS), what="every reflector waiting")
            assert len(log) == 0
            assert not source.synced()
        wait_until(source.synced, timeout=30, what="sync after the request ended")
        assert log.state() == server_state(server)
        assert priority.passes == 0  # nobody had to give up waiting
    finally:
        source.stop()


def test_a_steady_stream_of_cni_requests_slows_a_relist_but_never_stops_it(
    server: FakeApiServer, api_client: Any
) -> None:
    load(server, 400)
    # One request held for the whole test: the reflectors wait 20 ms at a
    # time, then go ahead for 10 ms; a third of the time is all they get.
    priority = Priority(max_wait_s=0.02, pass_s=0.01)
    source = ApiSource(
        api_client, "node-1", backoff=FAST, watch_timeout=30, page_size=25, pause=priority.wait_idle
    )
    log = EventLog()
    held = threading.Event()
    release = threading.Event()

    def requests() -> None:
        with priority.running():
            held.set()
            release.wait(120)

    cni = threading.Thread(target=requests, daemon=True)
    cni.start()
    try:
        assert held.wait(5)
        source.start(log)
        wait_until(source.synced, timeout=60, what="initial sync under CNI load")
        wait_until(lambda: same(log, server), timeout=60, what="initial state delivered")
        initial_passes = priority.passes
        assert initial_passes >= 1  # it did wait, and the wait gave way

        # A relist of the whole pod list under the same load: gone pods, new
        # pods (added last and unannounced, so the watch cannot have seen the
        # newest version), history forgotten, watches cut: the resumed watch
        # gets 410.
        lists = len(server.requests_for("Pod", watch=False))
        for i in range(0, 400, 4):
            server.delete(pod(f"ns-{i % 3}", f"p-{i:04d}", ""))
        load(server, 300, prefix="late")
        server.compact()
        server.drop_watches()
        wait_until(lambda: same(log, server), timeout=60, what="relist delivered under CNI load")
        assert len(server.requests_for("Pod", watch=False)) > lists, "no relist happened"
        assert priority.passes > initial_passes
        assert log.concurrent == 0
    finally:
        release.set()
        cni.join(5)
        source.stop()


def test_ledger_replace_pauses_before_each_object() -> None:
    trace: list[str] = []
    ledger = Ledger(keep_objects=False, pause=lambda: trace.append("pause"))
    ledger.attach(lambda event: trace.append(f"{event.action} {event.obj['metadata']['name']}"))

    def objects(*names: str) -> dict[tuple[str, str, str], Any]:
        return {("Pod", "ns", n): pod("ns", n, n) for n in names}

    ledger.replace(("Pod",), objects("a", "b"))
    trace.clear()
    ledger.replace(("Pod",), objects("b", "c"))
    # Unchanged objects pause too (a relist is mostly those), and so do the
    # check that the keys are in order and the scan for what is gone.
    assert trace == ["pause", "pause", "pause", "add c", "pause", "pause", "delete a"]


def test_ledger_replace_delivers_in_kind_then_key_order_whatever_it_is_given() -> None:
    seen: list[tuple[str, str]] = []
    ledger = Ledger(keep_objects=False, pause=lambda: None)
    ledger.attach(lambda event: seen.append((event.kind or "", event.obj["metadata"]["name"])))
    given = {
        ("Pod", "ns", "z"): pod("ns", "z", "a"),
        ("Pod", "ns", "a"): pod("ns", "a", "a"),
        ("Namespace", "", "ns"): {"kind": "Namespace", "metadata": {"name": "ns"}},
    }
    ledger.replace(("Pod", "Namespace"), given)
    assert seen == [("Namespace", "ns"), ("Pod", "a"), ("Pod", "z")]
