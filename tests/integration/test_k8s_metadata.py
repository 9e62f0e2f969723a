"""The API source following pods metadata-only (``PartialObjectMetadata``),
against the in-repo API server: it must compile exactly what full objects
compile, fall back when the server sends full objects, and deliver nothing
for writes to fields the engine does not read. No root needed.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.k8s import ApiSource, BackoffPolicy, load_client
from nicwarden.agent.k8s.reflector import LIST_METADATA, WATCH_METADATA
from nicwarden.agent.policy import PolicedInterface, PolicyEngine
from tests.support.k8s_apiserver import EventLog, FakeApiServer, wait_until

FAST = BackoffPolicy(initial=0.02, cap=0.2)
NET_STATUS = "k8s.v1.cni.cncf.io/network-status"
KINDS = ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy")


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    ns: str,
    name: str,
    labels: dict[str, str],
    nets: dict[str, str],
    *,
    phase: str = "Running",
    host_network: bool = False,
    status_text: str | None = None,
) -> dict[str, Any]:
    entries = [{"name": "cbr0", "interface": "eth0", "ips": ["192.168.0.9"], "default": True}]
    entries += [
        {"name": net, "interface": f"net{i + 1}", "ips": [ip], "mac": f"02:00:00:00:00:{i:02x}"}
        for i, (net, ip) in enumerate(nets.items())
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": {
                NET_STATUS: status_text if status_text is not None else json.dumps(entries),
                "unrelated.example.com/note": "x" * 200,
            },
        },
        "spec": {
            "nodeName": "node-7",
            "hostNetwork": host_network,
            "containers": [{"name": "c", "image": "img:1", "env": [{"name": "A", "value": "1"}]}],
        },
        "status": {"phase": phase, "podIP": "192.168.0.9"},
    }


def nad(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "type": "nicwarden"})},
    }


def mnp(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net-a"},
        },
        "spec": spec,
    }


def cluster() -> list[dict[str, Any]]:
    objs = [namespace("prod", env="prod"), namespace("dev", env="dev"), nad("prod", "net-a")]
    objs.append(pod("prod", "server", {"app": "server"}, {"prod/net-a": "10.1.0.10"}))
    for i in range(12):
        ns = "prod" if i % 2 else "dev"
        objs.append(pod(ns, f"client-{i}", {"app": "client"}, {"prod/net-a": f"10.1.1.{i + 1}"}))
    # Never peers: a finished pod (its IP may be someone else's now) and a
    # hostNetwork pod. Full objects say so in spec/status; metadata-only
    # relies on the server's field selection.
    objs.append(pod("dev", "done", {"app": "client"}, {"prod/net-a": "10.1.2.1"}, phase="Failed"))
    objs.append(
        pod("dev", "hostnet", {"app": "client"}, {"prod/net-a": "10.1.2.2"}, host_network=True)
    )
    objs.append(
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
                        "ports": [{"port": 8080, "protocol": "TCP"}],
                    }
                ],
                "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {}}]}],
            },
        )
    )
    return objs


TARGETS = [
    PolicedInterface("prod", "server", "net1", "prod/net-a"),
    PolicedInterface("dev", "client-0", "net1", "prod/net-a"),
]


@pytest.fixture
def make_source(server: FakeApiServer, tmp_path: Path) -> Iterator[Any]:
    client = load_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    made: list[ApiSource] = []

    def make(**kwargs: Any) -> ApiSource:
        source = ApiSource(client, "node-1", backoff=FAST, watch_timeout=30.0, **kwargs)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()


class Fed:
    """A source feeding a real PolicyEngine, recording what it delivered."""

    def __init__(self, source: ApiSource, server: FakeApiServer) -> None:
        self.source = source
        self.engine = PolicyEngine()
        self.engine.set_targets(TARGETS)
        self.log = EventLog()
        opened = {k: server.watches_opened(k) for k in KINDS}
        source.start(self._sink)
        wait_until(source.synced, what="initial sync")
        for kind, count in opened.items():
            server.wait_for_watches(kind, count + 1)

    def _sink(self, event: Any) -> None:
        self.log(event)
        self.engine.apply(event)

    def view(self) -> dict[str, Any]:
        return {
            "tables": {str(t.key): self.engine.tables(t.key) for t in TARGETS},
            "digests": {str(t.key): self.engine.digest(t.key) for t in TARGETS},
            "status": [s for s in self.engine.status() if s.kind != "Pod"],
        }

    def pod_status(self) -> dict[str, Any]:
        return {s.key: s for s in self.engine.status() if s.kind == "Pod"}

    def pods(self) -> list[dict[str, Any]]:
        return [o for (kind, _, _), o in self.log.state().items() if kind == "Pod"]


def test_metadata_only_compiles_exactly_what_full_objects_compile(
    server: FakeApiServer, make_source: Any
) -> None:
    for obj in cluster():
        server.add(obj)
    full = Fed(make_source(page_size=4), server)
    meta = Fed(make_source(page_size=4, pod_metadata_only=True), server)
    assert meta.source.metadata_only()["Pod"] is True
    assert full.source.metadata_only()["Pod"] is None
    assert all("spec" not in p for p in meta.pods())  # really metadata-only
    assert all("spec" in p for p in full.pods())
    assert full.engine.tables(TARGETS[0].key) is not None  # something real compiled
    assert meta.view() == full.view()
    # Pods that can never be peers are not followed at all metadata-only.
    full_pods, meta_pods = full.pod_status(), meta.pod_status()
    assert set(full_pods) - set(meta_pods) == {"dev/done", "dev/hostnet"}
    assert all(full_pods[k] == v for k, v in meta_pods.items())

    # Watched changes, through both: a relabel, a pod finishing (it leaves
    # the metadata-only selection: DELETED there, an UPDATE with its phase
    # in full), a new peer, a deletion.
    server.update(pod("prod", "client-3", {"app": "other"}, {"prod/net-a": "10.1.1.4"}))
    server.update(
        pod("prod", "client-5", {"app": "client"}, {"prod/net-a": "10.1.1.6"}, phase="Succeeded")
    )
    server.add(pod("dev", "late", {"app": "client"}, {"prod/net-a": "10.1.3.1"}))
    server.delete(pod("prod", "client-7", {}, {}))
    wait_until(
        lambda: (
            "prod/client-5"
            not in {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in meta.pods()}
            and any(p["metadata"]["name"] == "late" for p in meta.pods())
            and any(p["metadata"]["name"] == "late" for p in full.pods())
            and not any(p["metadata"]["name"] == "client-7" for p in full.pods() + meta.pods())
        ),
        what="watched changes on both",
    )
    wait_until(lambda: meta.view() == full.view(), what="same tables after the changes")
    assert meta.view() == full.view()


def test_falls_back_to_full_objects_when_the_server_sends_them(
    server: FakeApiServer, make_source: Any
) -> None:
    server.metadata_only = False  # an old or aggregated server
    for obj in cluster():
        server.add(obj)
    full = Fed(make_source(), server)
    fallback = Fed(make_source(pod_metadata_only=True), server)
    assert fallback.source.metadata_only()["Pod"] is False
    assert all("spec" in p for p in fallback.pods())
    assert fallback.view() == full.view()
    # The decision holds for the watch too: full objects keep coming.
    server.update(pod("dev", "client-2", {"app": "other"}, {"prod/net-a": "10.1.1.3"}))
    wait_until(
        lambda: any(
            p["metadata"]["name"] == "client-2" and p["metadata"]["labels"] == {"app": "other"}
            for p in fallback.pods()
        )
    )
    (changed,) = [p for p in fallback.pods() if p["metadata"]["name"] == "client-2"]
    assert changed["status"] == {"phase": "Running"}
    wait_until(lambda: fallback.view() == full.view())


@pytest.mark.parametrize("metadata_only", [False, True])
def test_a_write_to_fields_nobody_reads_delivers_nothing(
    server: FakeApiServer, make_source: Any, metadata_only: bool
) -> None:
    for obj in cluster():
        server.add(obj)
    fed = Fed(make_source(pod_metadata_only=metadata_only), server)
    before = len(fed.log)
    quiet = pod("prod", "server", {"app": "server"}, {"prod/net-a": "10.1.0.10"})
    quiet["metadata"]["annotations"]["unrelated.example.com/note"] = "changed"
    quiet["spec"]["containers"][0]["image"] = "img:2"
    quiet["status"]["podIP"] = "192.168.0.10"
    server.update(quiet)
    # A marker after it: once the marker arrives, the quiet write was seen.
    server.update(pod("dev", "client-0", {"app": "client", "v": "2"}, {"prod/net-a": "10.1.1.1"}))
    wait_until(lambda: len(fed.log) > before)
    assert fed.log.summary(before) == [("update", "Pod", "dev/client-0")]
    # The source still moved its version past both writes.
    assert fed.source.resource_versions()["Pod"] == str(server.resource_version)


@pytest.mark.parametrize("metadata_only", [False, True])
def test_a_malformed_network_status_never_stops_the_source(
    server: FakeApiServer, make_source: Any, metadata_only: bool
) -> None:
    for obj in cluster():
        server.add(obj)
    fed = Fed(make_source(pod_metadata_only=metadata_only), server)
    good = fed.view()
    before = len(fed.log)
    for text in ("{not json", '{"an": "object"}', '[{"name": 7}]', "[" * 5000):
        server.update(pod("dev", "client-4", {"app": "client"}, {}, status_text=text))
    server.add(pod("dev", "after", {"app": "client"}, {"prod/net-a": "10.1.4.1"}))
    wait_until(lambda: any(p["metadata"]["name"] == "after" for p in fed.pods()))
    assert len(fed.log) == before + 5
    assert fed.source.problems() == []
    # The engine took every one (the bad pod contributes no peer addresses)
    # and still compiles; the new peer is in.
    assert fed.view() != good
    assert fed.engine.tables(TARGETS[0].key) is not None


def test_fixture_serves_the_real_metadata_wire_format(server: FakeApiServer) -> None:
    server.add(pod("prod", "a", {"app": "a"}, {"prod/net-a": "10.1.0.1"}))

    def get(path: str, accept: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            server.url + path, headers={"Accept": accept, "Authorization": "Bearer test-token"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read().splitlines()[0])
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, body = get("/api/v1/pods", LIST_METADATA)
    assert status == 200
    assert (body["kind"], body["apiVersion"]) == ("PartialObjectMetadataList", "meta.k8s.io/v1")
    (item,) = body["items"]
    assert set(item) == {"kind", "apiVersion", "metadata"}
    assert (item["kind"], item["apiVersion"]) == ("PartialObjectMetadata", "meta.k8s.io/v1")
    assert NET_STATUS in item["metadata"]["annotations"]
    # The watch's media type on a list, with no fallback: not acceptable.
    status, body = get("/api/v1/pods", WATCH_METADATA.split(",")[0])
    assert (status, body["kind"]) == (406, "Status")
    status, body = get("/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion=1", WATCH_METADATA)
    assert (status, body["type"], body["object"]["kind"]) == (200, "ADDED", "PartialObjectMetadata")
    server.metadata_only = False
    status, body = get("/api/v1/pods", LIST_METADATA)
    assert (status, body["kind"], "spec" in body["items"][0]) == (200, "PodList", True)
