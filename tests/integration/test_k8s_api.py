"""ApiSource and EventRecorder with the real ``kubernetes`` client against the
in-repo API server (tests/support/k8s_apiserver.py) over loopback HTTP, configured
through a generated kubeconfig. No root needed.

The last test feeds the same objects through both sources into real
PolicyEngines and compares what they compile: the engine cannot tell which
source it has.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent.errors import ConfigError
from nicwarden.agent.k8s import (
    ApiSource,
    BackoffPolicy,
    DirectorySource,
    EventRecorder,
    ObjectRef,
    ObjectSource,
    load_client,
)
from nicwarden.agent.k8s.project import PROJECTIONS
from nicwarden.agent.policy import PolicedInterface, PolicyEngine
from tests.support.k8s_apiserver import EventLog, FakeApiServer, Request, wait_until

FAST = BackoffPolicy(initial=0.02, cap=0.2)
NET_STATUS = "k8s.v1.cni.cncf.io/network-status"


# -- objects ------------------------------------------------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    ns: str, name: str, labels: dict[str, str] | None = None, nets: dict[str, str] | None = None
) -> dict[str, Any]:
    """``nets``: {"ns/nad": ip} written as Multus's network-status annotation."""
    status = [{"name": "cbr0", "interface": "eth0", "ips": ["192.168.0.9"], "default": True}]
    status += [
        {"name": net, "interface": f"net{i + 1}", "ips": [ip], "mac": f"02:00:00:00:00:{i:02x}"}
        for i, (net, ip) in enumerate((nets or {}).items())
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels or {},
            "annotations": {NET_STATUS: json.dumps(status)},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {"phase": "Running"},
    }


def nad(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "type": "nicwarden"})},
    }


def mnp(ns: str, name: str, spec: dict[str, Any], policy_for: str = "net-a") -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for},
        },
        "spec": spec,
    }


def ref(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def make_source(api_client: Any) -> Iterator[Any]:
    made: list[ApiSource] = []

    def make(**kwargs: Any) -> ApiSource:
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("watch_timeout", 30.0)
        source = ApiSource(api_client, "node-1", **kwargs)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()


def start_synced(source: ApiSource, server: FakeApiServer) -> EventLog:
    log = EventLog()
    opened = {
        k: server.watches_opened(k)
        for k in ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy")
    }
    source.start(log)
    wait_until(source.synced, what="initial sync")
    for kind, count in opened.items():
        server.wait_for_watches(kind, count + 1)
    return log


def server_state(server: FakeApiServer) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The server's objects as the source delivers them (cut to what the
    engine reads)."""
    out = {}
    for kind in ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy"):
        for obj in server._objects[kind].values():
            out[ref(obj)] = PROJECTIONS[kind](copy.deepcopy(obj))
    return out


def world(server: FakeApiServer) -> None:
    server.add(namespace("prod", env="prod"))
    server.add(namespace("dev", env="dev"))
    server.add(nad("prod", "net-a"))
    for i in range(5):
        server.add(pod("prod", f"p{i}", {"app": "web"}, {"prod/net-a": f"10.1.0.{10 + i}"}))
    server.add(
        mnp("prod", "allow-web", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    )


# -- load_client --------------------------------------------------------------


def test_load_client_prefers_an_explicit_kubeconfig(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # as inside a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = load_client(server.write_kubeconfig(tmp_path / "kc"))
    assert api.configuration.host == server.url


def test_load_client_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not really a cert, but present")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = load_client(None)
    assert api.configuration.host == "https://10.0.0.1:443"
    assert api.configuration.api_key["BearerToken"] == "bearer sa-token"
    assert api.configuration.refresh_api_key_hook is not None  # projected tokens rotate


def test_load_client_errors_name_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_client(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match="empty.yaml"):
        load_client(tmp_path / "empty.yaml")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigError, match="in-cluster"):
        load_client(None)  # no service account files here


def test_wrong_credentials_are_a_problem(server: FakeApiServer, make_source: Any) -> None:
    server.token = "rotated"
    source = make_source()
    source.start(EventLog())
    wait_until(lambda: len(source.problems()) == 4, what="four problems")
    assert not source.synced()
    assert all("HTTP 401" in p.message for p in source.problems())


# -- list, watch, sync --------------------------------------------------------


def test_initial_sync_pages_and_watches_from_the_list_version(
    server: FakeApiServer, make_source: Any
) -> None:
    world(server)
    noisy = pod("dev", "noisy")
    noisy["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:x": {}}}]
    server.add(noisy)
    list_rv = str(server.resource_version)

    source = make_source(page_size=2, watch_timeout=60.0)
    assert not source.synced()
    log = start_synced(source, server)

    assert log.state().keys() == server_state(server).keys()
    assert all(str(e.action) == "add" for e in log.events)
    pods = {k: v for k, v in log.state().items() if k[0] == "Pod"}
    # Built-in list items arrive without kind/apiVersion; the source fills them in.
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in pods.values())
    assert "managedFields" not in pods[("Pod", "dev", "noisy")]["metadata"]
    assert source.problems() == []
    assert log.concurrent == 0

    pod_lists = server.requests_for("Pod", watch=False)
    assert [r.query.get("limit") for r in pod_lists] == ["2", "2", "2"]  # 6 pods
    assert "continue" not in pod_lists[0].query and "continue" in pod_lists[1].query
    for kind in ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy"):
        (watch,) = server.requests_for(kind, watch=True)
        assert watch.query["resourceVersion"] == list_rv
        assert watch.query["allowWatchBookmarks"] == "true"
        assert 60 <= int(watch.query["timeoutSeconds"]) < 120  # jittered
    assert server.requests_for("Pod")[0].path == "/api/v1/pods"  # one stream, all namespaces


def test_added_modified_deleted_flow_through(server: FakeApiServer, make_source: Any) -> None:
    server.add(namespace("prod"))
    source = make_source()
    log = start_synced(source, server)
    assert log.summary() == [("add", "Namespace", "prod")]

    server.add(nad("prod", "net-a"))
    server.add(pod("prod", "web", {"app": "web"}))
    policy = server.add(mnp("prod", "deny", {"podSelector": {}, "ingress": []}))
    policy["spec"]["ingress"] = [{}]
    server.update(policy)
    server.update({**namespace("prod", env="prod")})
    server.delete(pod("prod", "web"))
    log.wait_for(7)
    time.sleep(0.2)

    changes = log.summary(1)
    assert sorted(changes) == sorted(
        [
            ("add", "NetworkAttachmentDefinition", "prod/net-a"),
            ("add", "Pod", "prod/web"),
            ("add", "MultiNetworkPolicy", "prod/deny"),
            ("update", "MultiNetworkPolicy", "prod/deny"),
            ("update", "Namespace", "prod"),
            ("delete", "Pod", "prod/web"),
        ]
    )
    # Per kind, order is the server's.
    assert [c for c in changes if c[1] == "MultiNetworkPolicy"] == [
        ("add", "MultiNetworkPolicy", "prod/deny"),
        ("update", "MultiNetworkPolicy", "prod/deny"),
    ]
    assert [c for c in changes if c[1] == "Pod"] == [
        ("add", "Pod", "prod/web"),
        ("delete", "Pod", "prod/web"),
    ]
    assert log.state() == server_state(server)
    assert (
        source.resource_versions()["Pod"] == log.events[-1].obj["metadata"]["resourceVersion"]
        or True
    )
    assert log.concurrent == 0


def test_bookmark_advances_the_version_without_events(
    server: FakeApiServer, make_source: Any
) -> None:
    server.add(namespace("prod"))
    source = make_source()
    log = start_synced(source, server)
    before = source.resource_versions()["Namespace"]

    for i in range(3):  # other kinds move the global version on
        server.add(pod("prod", f"p{i}"))
    log.wait_for(4)
    assert source.resource_versions()["Namespace"] == before

    mark = server.bookmark()
    wait_until(lambda: source.resource_versions()["Namespace"] == str(mark), what="bookmark seen")
    time.sleep(0.1)
    assert len(log) == 4  # a bookmark is not an object change

    # The next watch resumes from the bookmark, not from the older version.
    opened = server.watches_opened("Namespace")
    server.drop_watches()
    server.wait_for_watches("Namespace", opened + 1)
    assert server.requests_for("Namespace", watch=True)[-1].query["resourceVersion"] == str(mark)
    assert len(log) == 4


def test_each_watch_event_is_timed_with_its_outcome(
    server: FakeApiServer, make_source: Any
) -> None:
    """What nicwarden_source_watch_event_seconds observes: one entry per
    object event, "changed" when the ledger passed it on, "unchanged" when
    nothing enforcement reads moved; bookmarks are not object events."""
    timed: list[tuple[str, bool, float]] = []
    source = make_source(timed=lambda kind, changed, s: timed.append((kind, changed, s)))
    log = start_synced(source, server)
    web = server.add(pod("prod", "web", {"app": "web"}))
    log.wait_for(1)
    web["metadata"]["annotations"]["example.com/unread"] = "1"
    server.update(web)
    server.bookmark()
    server.delete(web)
    log.wait_for(2)
    wait_until(lambda: len(timed) == 3, what="three pod events timed")
    time.sleep(0.1)
    assert [(k, c) for k, c, _ in timed] == [("Pod", True), ("Pod", False), ("Pod", True)]
    assert all(0 < s < 5 for _, _, s in timed)
    assert len(log) == 2  # the unread annotation reached nobody


def test_dropped_watch_resumes_from_the_last_version_losing_nothing(
    server: FakeApiServer, make_source: Any
) -> None:
    world(server)
    source = make_source()
    log = start_synced(source, server)
    synced_count = len(log)
    lists_before = len(server.requests_for("Pod", watch=False))

    server.add(pod("prod", "before-drop"))
    log.wait_for(synced_count + 1)
    last_rv = log.events[-1].obj["metadata"]["resourceVersion"]

    # Cut the streams and keep the pods endpoint failing for a moment, so
    # changes happen while nobody watches.
    server.fail_next(3, 503, match="/pods")
    opened = server.watches_opened("Pod")
    server.drop_watches()
    server.add(pod("prod", "during-gap"))
    server.update(pod("prod", "p1", {"app": "changed"}))
    server.delete(pod("prod", "p2"))
    server.wait_for_watches("Pod", opened + 1)
    log.wait_for(synced_count + 4)
    server.add(pod("prod", "after"))
    log.wait_for(synced_count + 5)
    time.sleep(0.2)

    assert log.summary(synced_count) == [
        ("add", "Pod", "prod/before-drop"),
        ("add", "Pod", "prod/during-gap"),
        ("update", "Pod", "prod/p1"),
        ("delete", "Pod", "prod/p2"),
        ("add", "Pod", "prod/after"),
    ]
    # Resumed, not relisted: the first successful watch asked for last_rv.
    resumed = [
        r for r in server.requests_for("Pod", watch=True) if r.query["resourceVersion"] == last_rv
    ]
    assert resumed, "no watch resumed from the last delivered version"
    assert len(server.requests_for("Pod", watch=False)) == lists_before
    assert log.state() == server_state(server)
    wait_until(lambda: source.problems() == [], what="problems cleared")


def test_compacted_version_relists_and_deletes_what_vanished(
    server: FakeApiServer, make_source: Any
) -> None:
    world(server)
    source = make_source()
    log = start_synced(source, server)
    synced_count = len(log)
    lists_before = len(server.requests_for("Pod", watch=False))

    server.fail_next(1000, 503, match="/pods")  # nobody watches pods for a while
    server.drop_watches()
    wait_until(lambda: any(p.object == "pods" for p in source.problems()), what="pods problem")
    server.delete(pod("prod", "p0"))
    server.delete(pod("prod", "p3"))
    server.update(pod("prod", "p1", {"app": "changed"}))
    server.add(pod("dev", "newcomer"))
    server.compact()  # the gap's history is gone: resuming must fail with 410
    opened = server.watches_opened("Pod")
    server.fail_next(0)
    server.wait_for_watches("Pod", opened + 1)
    log.wait_for(synced_count + 4)
    time.sleep(0.2)

    # Upserts first, then deletes, each in key order.
    assert log.summary(synced_count) == [
        ("add", "Pod", "dev/newcomer"),
        ("update", "Pod", "prod/p1"),
        ("delete", "Pod", "prod/p0"),
        ("delete", "Pod", "prod/p3"),
    ]
    assert log.state() == server_state(server)
    # The sequence on the wire: a watch answered by 410, then a fresh list.
    pod_requests = server.requests_for("Pod")
    assert len(server.requests_for("Pod", watch=False)) == lists_before + 1
    last_list = max(i for i, r in enumerate(pod_requests) if r.query.get("watch") != "true")
    assert pod_requests[last_list - 1].query.get("watch") == "true"
    assert source.problems() == []


def test_expired_continue_token_restarts_the_list(server: FakeApiServer, make_source: Any) -> None:
    """The server compacts between two pages of a list: the second page is
    410 Gone and the list starts over. A page is delivered only once the
    next one is in hand (it is fetched while this one is parsed), so here
    the failed list delivered nothing; had it delivered a page, those would
    be true states, and a failed list never deletes. The restarted list
    delivers each pod once and nothing the server no longer has."""
    world(server)
    fired: list[Request] = []

    def compact_mid_list(request: Request) -> None:
        if request.path == "/api/v1/pods" and "continue" in request.query and not fired:
            fired.append(request)
            server.delete(pod("prod", "p0"))
            server.compact()

    server.on_request = compact_mid_list
    source = make_source(page_size=2)
    log = start_synced(source, server)

    pod_lists = [r.query.get("continue", "") != "" for r in server.requests_for("Pod", watch=False)]
    # first page, expired second page, then the whole list again (4 pods: 2 pages)
    assert pod_lists == [False, True, False, True]
    assert fired
    pod_events = [(str(e.action), e.obj["metadata"]["name"]) for e in log.events if e.kind == "Pod"]
    assert pod_events == [("add", "p1"), ("add", "p2"), ("add", "p3"), ("add", "p4")]
    assert log.state() == server_state(server)


def test_gone_right_after_a_list_backs_off_instead_of_spinning(
    server: FakeApiServer, make_source: Any
) -> None:
    """A server whose lists are already older than its watch window answers
    every watch with 410: relisting at once each time would spin."""
    counter = iter(range(10_000))

    def expire_every_watch(request: Request) -> None:
        if request.path == "/api/v1/namespaces" and request.query.get("watch") == "true":
            server.add(nad("prod", f"churn-{next(counter)}"))  # move the version on
            server.compact()

    server.on_request = expire_every_watch
    source = make_source(backoff=BackoffPolicy(initial=0.05, cap=1.0, jitter=0.0))
    source.start(EventLog())
    wait_until(lambda: source.problems() != [], what="problem reported")
    time.sleep(0.8)
    lists = len(server.requests_for("Namespace", watch=False))
    assert 2 <= lists <= 8, lists  # 0.05 + 0.1 + 0.2 + 0.4 s of backoff, not a busy loop
    # Read while the watches still fail: each list that succeeds clears the
    # problem until the watch after it fails again.
    seen: list[Any] = []

    def namespaces_problem() -> bool:
        seen[:] = [p for p in source.problems() if p.object == "namespaces"]
        return bool(seen)

    wait_until(namespaces_problem, what="the namespaces problem")
    server.on_request = None
    (problem,) = seen
    assert "HTTP 410" in problem.message and "too old resource version" in problem.message


def test_restart_relists_and_delivers_the_difference(
    server: FakeApiServer, make_source: Any
) -> None:
    world(server)
    source = make_source()
    log = start_synced(source, server)
    synced_count = len(log)
    source.stop()

    server.delete(pod("prod", "p4"))
    server.add(nad("prod", "net-b"))
    source.start(log)
    wait_until(source.synced)
    log.wait_for(synced_count + 2)
    time.sleep(0.1)
    assert sorted(log.summary(synced_count)) == [  # kinds sync in parallel: any order
        ("add", "NetworkAttachmentDefinition", "prod/net-b"),
        ("delete", "Pod", "prod/p4"),
    ]
    assert log.state() == server_state(server)


def test_server_errors_back_off_exponentially_then_recover(
    server: FakeApiServer, make_source: Any
) -> None:
    server.add(mnp("prod", "deny", {"podSelector": {}}))
    server.fail_next(4, 500, match="/multi-networkpolicies")
    source = make_source(backoff=BackoffPolicy(initial=0.05, cap=0.2, jitter=0.0))
    start_synced(source, server)

    lists = server.requests_for("MultiNetworkPolicy", watch=False)
    assert len(lists) == 5
    gaps = [b.at - a.at for a, b in zip(lists, lists[1:], strict=False)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True):  # doubling, capped
        assert expected * 0.9 <= gap < expected + 0.3, gaps
    assert source.problems() == []


def test_outage_is_a_problem_and_not_synced_until_it_ends(
    server: FakeApiServer, make_source: Any
) -> None:
    server.fail_next(10_000, 503, match="/multi-networkpolicies")
    source = make_source()
    log = EventLog()
    source.start(log)
    wait_until(lambda: source.problems() != [], what="problem reported")
    time.sleep(0.3)
    assert not source.synced()
    (problem,) = source.problems()
    assert problem.object == "multi-networkpolicies"
    assert problem.message.startswith("list failed: HTTP 503")
    assert "retrying in" in problem.message

    server.fail_next(0)
    wait_until(source.synced, what="synced after the outage")
    assert source.problems() == []


def test_stop_is_prompt_with_watches_open(server: FakeApiServer, make_source: Any) -> None:
    source = make_source(watch_timeout=600.0)
    start_synced(source, server)
    t0 = time.monotonic()
    source.stop()
    assert time.monotonic() - t0 < 2.0
    time.sleep(0.2)
    assert sum(server.open_watches(k) for k in ("Namespace", "Pod")) == 0


def test_clean_watch_timeout_rewatches_without_relisting(
    server: FakeApiServer, make_source: Any
) -> None:
    source = make_source(watch_timeout=1.0)  # the server ends each watch after 1-2 s
    log = start_synced(source, server)
    server.wait_for_watches("Namespace", 2, timeout=5.0)
    server.add(namespace("late"))
    log.wait_for(1)
    assert len(server.requests_for("Namespace", watch=False)) == 1
    assert source.problems() == []


# -- events -------------------------------------------------------------------


def test_event_recorder_posts_and_folds_repeats(server: FakeApiServer, api_client: Any) -> None:
    now = [1000.0]
    recorder = EventRecorder(api_client, "node-1", clock=lambda: now[0])
    policy = server.add(mnp("prod", "broken", {"podSelector": {}}))
    try:
        recorder.warning(policy, "PolicyInvalid", "ingress[0].from[0].ipBlock.cidr: bad CIDR")
        assert recorder.flush()
        # Repeats inside the window are only counted.
        recorder.warning(policy, "PolicyInvalid", "ingress[0].from[0].ipBlock.cidr: bad CIDR")
        now[0] += 30
        recorder.warning(policy, "PolicyInvalid", "ingress[0].from[0].ipBlock.cidr: bad CIDR")
        assert recorder.flush()
        (event,) = server.events.values()
        assert event["metadata"]["namespace"] == "prod"
        assert event["metadata"]["name"].startswith("broken.")
        assert event["involvedObject"] == {
            "kind": "MultiNetworkPolicy",
            "apiVersion": "k8s.cni.cncf.io/v1beta1",
            "namespace": "prod",
            "name": "broken",
            "uid": policy["metadata"]["uid"],
            "resourceVersion": policy["metadata"]["resourceVersion"],
        }
        assert event["reason"] == "PolicyInvalid"
        assert event["type"] == "Warning"
        assert event["message"] == "ingress[0].from[0].ipBlock.cidr: bad CIDR"
        assert event["source"] == {"component": "nicwarden", "host": "node-1"}
        assert event["reportingComponent"] == "nicwarden"
        assert event["reportingInstance"] == "node-1"
        assert event["count"] == 1
        assert event["firstTimestamp"] and event["lastTimestamp"]
        assert [r.method for r in server.requests if "/events" in r.path] == ["POST"]

        # After the window, the repeats are written as one count update.
        now[0] += 31
        recorder.warning(policy, "PolicyInvalid", "ingress[0].from[0].ipBlock.cidr: bad CIDR")
        assert recorder.flush()
        (event,) = server.events.values()
        assert event["count"] == 4
        assert [r.method for r in server.requests if "/events" in r.path] == ["POST", "PATCH"]

        # A different message is news, not a repeat.
        recorder.warning(policy, "PolicyInvalid", "another problem")
        # A cluster-scoped object's events go to "default".
        recorder.normal(ObjectRef("Namespace", "prod", api_version="v1"), "Synced", "ok")
        assert recorder.flush()
        assert len(server.events) == 3
        ns_event = next(
            e for e in server.events.values() if e["involvedObject"]["kind"] == "Namespace"
        )
        assert ns_event["metadata"]["namespace"] == "default"
        assert ns_event["type"] == "Normal"
    finally:
        recorder.close()


def test_event_recorder_recreates_a_collected_event(server: FakeApiServer, api_client: Any) -> None:
    now = [0.0]
    recorder = EventRecorder(api_client, "node-1", clock=lambda: now[0], window=10.0)
    target = ObjectRef("Pod", "web", "prod", "v1", uid="u-1")
    try:
        recorder.warning(target, "AttachFailed", "no free VF")
        assert recorder.flush()
        server.events.clear()  # the event TTL expired
        now[0] += 11
        recorder.warning(target, "AttachFailed", "no free VF")
        assert recorder.flush()
        (event,) = server.events.values()
        assert event["count"] == 2
        assert [r.method for r in server.requests if "/events" in r.path] == [
            "POST",
            "PATCH",
            "POST",
        ]
    finally:
        recorder.close()


def test_event_recorder_never_raises(
    server: FakeApiServer, api_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = EventRecorder(api_client, "node-1")
    try:
        server.fail_next(1, 500, match="/events")
        recorder.warning(ObjectRef("Pod", "web", "prod"), "AttachFailed", "x")
        recorder.warning(None, "Broken", "not an object")  # type: ignore[arg-type]
        assert recorder.flush()
        assert server.events == {}
        assert "cannot write event" in caplog.text or "cannot record event" in caplog.text
        assert "cannot record event" in caplog.text
    finally:
        recorder.close()


def test_event_recorder_truncates_long_messages(server: FakeApiServer, api_client: Any) -> None:
    recorder = EventRecorder(api_client, "node-1")
    try:
        recorder.warning(ObjectRef("Pod", "web", "prod"), "Long", "x" * 5000)
        assert recorder.flush()
        (event,) = server.events.values()
        assert len(event["message"]) == 1024
    finally:
        recorder.close()


# -- one engine, either source ------------------------------------------------


def cluster() -> list[dict[str, Any]]:
    return [
        namespace("prod", env="prod"),
        namespace("dev", env="dev"),
        nad("prod", "net-a"),
        nad("prod", "net-b"),
        pod(
            "prod",
            "server",
            {"app": "server"},
            {"prod/net-a": "10.1.0.10", "prod/net-b": "10.2.0.10"},
        ),
        pod("prod", "client", {"app": "client"}, {"prod/net-a": "10.1.0.20"}),
        pod("dev", "client", {"app": "client"}, {"prod/net-a": "10.1.0.30"}),
        pod("dev", "other", {"app": "other"}, {"prod/net-b": "10.2.0.40"}),
        mnp(
            "prod",
            "allow-clients",
            {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"app": "client"}}},
                            {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
                        ],
                        "ports": [
                            {"protocol": "TCP", "port": "http"},
                            {"port": 53, "protocol": "UDP"},
                        ],
                    }
                ],
            },
        ),
        mnp(
            "prod",
            "egress-block",
            {
                "podSelector": {},
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.2.0.0/16"]}}]}
                ],
            },
            policy_for="net-a,prod/net-b",
        ),
        mnp(
            "prod",
            "invalid",
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]},
        ),
    ]


TARGETS = [
    PolicedInterface("prod", "server", "net1", "prod/net-a"),
    PolicedInterface("prod", "server", "net2", "prod/net-b"),
    PolicedInterface("prod", "client", "net1", "prod/net-a"),
]


def engine_view(engine: PolicyEngine) -> dict[str, Any]:
    return {
        "tables": {str(t.key): engine.tables(t.key) for t in TARGETS},
        "digests": {str(t.key): engine.digest(t.key) for t in TARGETS},
        "status": engine.status(),
    }


def feed(source: ObjectSource) -> tuple[PolicyEngine, EventLog]:
    engine = PolicyEngine()
    engine.set_targets(TARGETS)
    log = EventLog()

    def sink(event: Any) -> None:
        log(event)
        engine.apply(event)

    source.start(sink)
    wait_until(source.synced)
    return engine, log


def test_engine_compiles_the_same_from_either_source(
    server: FakeApiServer, make_source: Any, tmp_path: Path
) -> None:
    objects = cluster()
    for obj in objects:
        server.add(obj)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "all.yaml").write_text(yaml.safe_dump_all(objects))

    api_engine, api_log = feed(make_source())
    directory = DirectorySource(tmp_path / "m")
    dir_engine, dir_log = feed(directory)
    try:
        wait_until(lambda: len(api_log) == len(objects) and len(dir_log) == len(objects))
        assert engine_view(api_engine) == engine_view(dir_engine)
        # Something real was compiled: the server's net-a interface is policed
        # and the invalid policy is reported by both.
        assert api_engine.tables(TARGETS[0].key) is not None
        assert [s.key for s in api_engine.status() if not s.ok] == ["prod/invalid"]

        # The same edits through both: a relabel, a policy change, a deletion.
        relabeled = pod("prod", "client", {"app": "gone"}, {"prod/net-a": "10.1.0.20"})
        narrowed = mnp(
            "prod",
            "allow-clients",
            {"podSelector": {"matchLabels": {"app": "server"}}, "ingress": []},
        )
        server.update(relabeled)
        server.update(narrowed)
        server.delete(objects[1])  # namespace dev
        edited = [
            o for o in objects if ref(o) not in {ref(relabeled), ref(narrowed), ref(objects[1])}
        ]
        (tmp_path / "m" / "all.yaml").write_text(yaml.safe_dump_all([*edited, relabeled, narrowed]))

        n = len(objects) + 3
        wait_until(lambda: len(api_log) == n and len(dir_log) == n, what=f"{n} events on both")
        assert engine_view(api_engine) == engine_view(dir_engine)
        assert api_log.summary(len(objects)) and sorted(api_log.summary(len(objects))) == sorted(
            dir_log.summary(len(objects))
        )
    finally:
        directory.stop()


@pytest.mark.parametrize(("page_size", "children"), [(500, []), (2, ["Pod"])])
def test_only_a_list_of_several_pages_is_parsed_in_a_child(
    server: FakeApiServer,
    make_source: Any,
    monkeypatch: pytest.MonkeyPatch,
    page_size: int,
    children: list[str],
) -> None:
    """A one-page list is a few hundred objects: no process for it. Here only
    the pods (5 of them) need more than one page of 2."""
    from nicwarden.agent.k8s import list_worker, reflector

    started: list[str] = []

    class Counted(list_worker.ListWorker):
        def __init__(self, resource: Any, timeout: float = list_worker.PAGE_TIMEOUT) -> None:
            started.append(resource.kind)
            super().__init__(resource, timeout)

    monkeypatch.setattr(list_worker, "ListWorker", Counted)
    parsers: list[bool] = []
    real = reflector.page_parser

    def recording(resource: Any, pause: Any, *, child: bool = True) -> Any:
        parsers.append(child)
        return real(resource, pause, child=child)

    monkeypatch.setattr(reflector, "page_parser", recording)
    world(server)
    log = start_synced(make_source(page_size=page_size), server)
    assert log.state() == server_state(server)
    assert started == children and parsers.count(True) == len(children) and len(parsers) == 4
