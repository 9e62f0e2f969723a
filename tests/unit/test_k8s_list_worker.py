"""List pages parsed in a child process (``list_worker``): the same pages
as the in-process parser gives, the same errors, a child that fails is an
error of that list (never a hang or a half answer), no child outlives its
list, and the child never loads the Kubernetes client."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from nicwarden.agent.k8s import list_worker
from nicwarden.agent.k8s.kinds import RESOURCES
from nicwarden.agent.k8s.ledger import Ledger
from nicwarden.agent.k8s.list_parse import parse_page
from nicwarden.agent.k8s.list_worker import ListWorker, ListWorkerError, page_parser
from nicwarden.agent.policy import Event

NET_STATUS = "k8s.v1.cni.cncf.io/network-status"


def pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"p{i}",
            "namespace": f"ns-{i % 3}",
            "resourceVersion": str(100 + i),
            "labels": {"app": f"app-{i % 4}", "tier": "web"},
            "annotations": {
                NET_STATUS: json.dumps([{"name": "ns-0/net", "ips": [f"10.1.0.{i}"]}]),
                "kubectl.kubernetes.io/last-applied-configuration": "x" * 500,
                "note": "caf\u00e9 \u2603",
            },
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:x": {}}}],
        },
        "spec": {
            "nodeName": f"node-{i % 2}",
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "status": {"phase": "Running", "podIP": f"10.0.0.{i}", "big": 2**70, "f": 1.5},
    }


def page_bytes(items: list[Any], *, kind: str = "PodList", token: str | None = "tok") -> bytes:
    meta: dict[str, Any] = {"resourceVersion": "42"}
    if token:
        meta["continue"] = token
    return json.dumps({"kind": kind, "apiVersion": "v1", "metadata": meta, "items": items}).encode()


def no_pause() -> None:
    pass


@pytest.fixture
def worker() -> Any:
    with ListWorker(RESOURCES["Pod"]) as w:
        yield w


def test_a_page_from_the_child_equals_the_page_parsed_here(worker: ListWorker) -> None:
    # Junk items (not objects, nameless) are left out by both.
    items: list[Any] = [pod(i) for i in range(40)] + [7, {"metadata": {}}, {"metadata": "x"}]
    data = page_bytes(items)
    here = parse_page(RESOURCES["Pod"], data, no_pause)
    there = worker.parse(data)
    assert there == here
    assert len(there.items) == 40
    (key, known, obj) = there.items[0]
    assert key == ("Pod", "ns-0", "p0")
    assert set(obj["metadata"]["annotations"]) == {NET_STATUS}  # projected in the child
    assert there.continue_token == "tok" and there.resource_version == "42"
    # The child serves page after page.
    last = worker.parse(page_bytes([pod(99)], kind="PartialObjectMetadataList", token=None))
    assert last.list_kind == "PartialObjectMetadataList" and last.continue_token is None
    assert [k for k, _, _ in last.items] == [("Pod", "ns-0", "p99")]


def test_strings_the_engine_shares_arrive_interned(worker: ListWorker) -> None:
    a, b = worker.parse(page_bytes([pod(0), pod(4)])).items
    la, lb = a[2]["metadata"]["labels"], b[2]["metadata"]["labels"]
    assert la == lb and all(x is y for x, y in zip(la.values(), lb.values(), strict=True))
    assert la["app"] is sys.intern("app-0")


@pytest.mark.parametrize("data", [b"{not json", b'{"items": [1, }', b"[1, 2]", b""])
def test_a_page_that_is_not_a_list_fails_as_it_does_here(worker: ListWorker, data: bytes) -> None:
    with pytest.raises(ValueError) as here:
        parse_page(RESOURCES["Pod"], data, no_pause)
    with pytest.raises(ValueError) as there:
        worker.parse(data)
    assert str(there.value) == str(here.value)
    # The child is still there for the retry's pages.
    assert worker.parse(page_bytes([pod(1)])).items


def test_a_child_that_dies_fails_the_page_and_is_gone(worker: ListWorker) -> None:
    os.kill(worker._proc.pid, signal.SIGKILL)
    worker._proc.wait()
    with pytest.raises(ListWorkerError, match="pods list parser"):
        worker.parse(page_bytes([pod(1)]))


def test_a_child_that_hangs_is_killed_at_the_deadline() -> None:
    w = ListWorker(RESOURCES["Pod"], timeout=0.5)
    try:
        os.kill(w._proc.pid, signal.SIGSTOP)
        with pytest.raises(ListWorkerError, match="no answer in 0 s|no answer in 1 s"):
            w.parse(page_bytes([pod(i) for i in range(2000)]))
        assert w._proc.wait(5) == -signal.SIGKILL
    finally:
        w.close()


def test_the_child_exits_when_its_list_is_done(worker: ListWorker) -> None:
    worker.parse(page_bytes([pod(1)]))
    worker.close()
    assert worker._proc.returncode == 0


def test_no_child_no_problem_the_page_is_parsed_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    monkeypatch.setattr(list_worker, "_warned", False)
    pauses: list[int] = []
    with (
        caplog.at_level(logging.WARNING),
        page_parser(RESOURCES["Pod"], lambda: pauses.append(1)) as p,
    ):
        page = p.parse(page_bytes([pod(i) for i in range(3)]))
    assert [k[2] for k, _, _ in page.items] == ["p0", "p1", "p2"]
    assert len(pauses) == 3  # in process, the parse still stands aside between items
    assert "cannot start the list parser process" in caplog.text


def test_the_child_never_loads_the_kubernetes_client() -> None:
    code = (
        "import sys, nicwarden.agent.k8s.list_worker as w;"
        "assert 'kubernetes' not in sys.modules, 'kubernetes imported';"
        "assert 'nicwarden.agent.k8s.api' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_relist_in_pieces_deletes_only_when_finished() -> None:
    ledger = Ledger(keep_objects=False)
    seen: list[tuple[str, str]] = []

    def sink(event: Event) -> None:
        seen.append((str(event.action), event.obj["metadata"]["name"]))

    ledger.attach(sink)
    with ListWorker(RESOURCES["Pod"]) as w:
        first = ledger.relist(("Pod",))
        for key, known, obj in w.parse(page_bytes([pod(0), pod(1), pod(2)])).items:
            first.put(key, obj, known)
        assert first.finish() == 3
        # A relist that fails half-way delivers what it read, deletes nothing.
        broken = ledger.relist(("Pod",))
        changed = pod(1)
        changed["metadata"]["labels"]["app"] = "other"
        for key, known, obj in w.parse(page_bytes([pod(0), changed])).items:
            broken.put(key, obj, known)
        # The restarted list: p2 is gone, p3 is new; p0 and p1 are no events.
        again = ledger.relist(("Pod",))
        for key, known, obj in w.parse(page_bytes([pod(0), changed, pod(3)])).items:
            again.put(key, obj, known)
        assert again.finish() == 2 and again.listed == 3
    assert seen == [
        ("add", "p0"),
        ("add", "p1"),
        ("add", "p2"),
        ("update", "p1"),
        ("add", "p3"),
        ("delete", "p2"),
    ]


def test_a_list_given_up_with_a_page_in_the_child_ends_at_once() -> None:
    w = ListWorker(RESOURCES["Pod"])
    w.send(page_bytes([pod(i) for i in range(3000)]))  # an answer bigger than a pipe holds
    w.close()
    assert w._proc.returncode is not None


def test_the_head_of_a_page_names_the_next_one_before_it_is_parsed() -> None:
    from nicwarden.agent.k8s.list_json import list_head

    head = list_head(page_bytes([pod(i) for i in range(3000)]))
    assert head is not None and head["metadata"] == {"resourceVersion": "42", "continue": "tok"}
    # A server writing items first (or no metadata at all) has to be parsed.
    assert list_head(b'{"items": [], "metadata": {"continue": "x"}}') is None
    assert list_head(b'{"kind": "PodList", "items": []}') is None
    assert list_head(b"not json") is None


def test_every_name_the_k8s_package_offers_resolves() -> None:
    import nicwarden.agent.k8s as k8s

    assert sorted(k8s.__all__) == sorted(k8s._WHERE)
    for name in k8s.__all__:
        assert getattr(k8s, name) is not None
    with pytest.raises(AttributeError):
        _ = k8s.NoSuchThing
