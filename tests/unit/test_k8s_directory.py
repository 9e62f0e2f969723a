"""DirectorySource: manifests in a directory become add/update/delete events
within the 1 s contract, bad input becomes problems naming the file (and
line), and a resync deletes what vanished meanwhile."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent.k8s import DirectorySource, SourceProblem, directory
from nicwarden.agent.policy import Action, Event
from tests.support.k8s_apiserver import EventLog, wait_until

# The documented contract is "within 1 s"; polls run every 0.2 s.
CONTRACT = 1.0
POLICY_AV = "k8s.cni.cncf.io/v1beta1"


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str | None = "prod", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": []}}


def policy(name: str, namespace: str = "prod", net: str = "net-a") -> dict[str, Any]:
    return {
        "apiVersion": POLICY_AV,
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": net},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []},
    }


def nad(name: str, namespace: str = "prod") -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"config": json.dumps({"cniVersion": "1.0.0", "type": "nicwarden"})},
    }


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def summary(events: list[Event]) -> list[tuple[str, str, str]]:
    out = []
    for e in events:
        meta = e.obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        out.append((str(e.action), e.kind or "", key))
    return out


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Path, DirectorySource, EventLog]]:
    """An empty watched directory with a running source."""
    root = tmp_path / "manifests"
    root.mkdir()
    source = DirectorySource(root)
    log = EventLog()
    source.start(log)
    wait_until(source.synced, what="initial scan")
    yield root, source, log
    source.stop()


def wait_events(log: EventLog, start: int, count: int) -> tuple[list[Event], float]:
    """Wait for ``count`` new events after index ``start``; also returns how
    long after the call the last one arrived."""
    t0 = time.monotonic()
    events = log.wait_for(start + count, timeout=5.0)
    elapsed = log.times[start + count - 1] - t0
    return events[start:], elapsed


def quiet(log: EventLog, polls: int = 4) -> None:
    """Assert nothing more is delivered over a few poll intervals."""
    before = len(log)
    time.sleep(0.2 * polls)
    assert log.summary(before) == []


# -- initial state ----------------------------------------------------------


def test_initial_sync_multi_document_list_json_and_defaulting(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", ns("prod", team="a"), pod("web", namespace=None, app="web"))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "list.yml").write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [policy("p1"), nad("net-a")]})
    )
    (tmp_path / "sub" / "pods.json").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "PodList",  # the API's typed list: items carry no kind
                "metadata": {},
                "items": [{"metadata": {"name": "db", "namespace": "prod"}}],
            }
        )
    )
    # A Namespace is cluster-scoped: a stray metadata.namespace is ignored.
    write(tmp_path / "other.yaml", {**ns("dev"), "metadata": {"name": "dev", "namespace": "x"}})
    (tmp_path / "notes.txt").write_text("kind: Pod\n")  # not a manifest suffix

    source = DirectorySource(tmp_path)
    log = EventLog()
    assert not source.synced()
    source.start(log)
    try:
        wait_until(source.synced)
        state = log.state()
    finally:
        source.stop()

    assert sorted(state) == [
        ("MultiNetworkPolicy", "prod", "p1"),
        ("Namespace", "", "dev"),
        ("Namespace", "", "prod"),
        ("NetworkAttachmentDefinition", "prod", "net-a"),
        ("Pod", "default", "web"),
        ("Pod", "prod", "db"),
    ]
    assert all(str(e.action) == "add" for e in log.events)
    # Normalised as the API server stores them: namespace filled in for
    # namespaced kinds (the manifest had none), dropped for Namespaces.
    assert state[("Pod", "default", "web")]["metadata"]["namespace"] == "default"
    assert "namespace" not in state[("Namespace", "", "dev")]["metadata"]
    assert state[("Pod", "prod", "db")]["kind"] == "Pod"
    assert state[("Pod", "prod", "db")]["apiVersion"] == "v1"
    assert {e.kind for e in log.events} == {e.obj["kind"] for e in log.events}
    assert source.problems() == []
    assert log.concurrent == 0


# -- changes and their latency ----------------------------------------------


def test_add_edit_delete_reach_the_sink_within_a_second(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, _source, log = started

    path = write(root / "p.yaml", policy("deny"))
    events, latency = wait_events(log, 0, 1)
    assert summary(events) == [("add", "MultiNetworkPolicy", "prod/deny")]
    assert latency < CONTRACT

    edited = policy("deny")
    edited["spec"]["ingress"] = [{}]
    write(path, edited)
    events, latency = wait_events(log, 1, 1)
    assert summary(events) == [("update", "MultiNetworkPolicy", "prod/deny")]
    assert events[0].obj["spec"]["ingress"] == [{}]
    assert latency < CONTRACT

    path.unlink()
    events, latency = wait_events(log, 2, 1)
    assert summary(events) == [("delete", "MultiNetworkPolicy", "prod/deny")]
    assert events[0].obj["spec"]["ingress"] == [{}]  # the final state
    assert latency < CONTRACT
    quiet(log)


def test_mtime_set_back_is_still_seen(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    """``cp -p`` or ``touch -d`` over a file of the same size: inode, size and
    mtime all match the old file; ctime does not."""
    root, _source, log = started
    path = root / "p.yaml"
    path.write_text(yaml.safe_dump(pod("aaaa")))
    log.wait_for(1)
    stamp = path.stat().st_mtime_ns
    path.write_text(yaml.safe_dump(pod("bbbb")))  # same length
    os.utime(path, ns=(stamp, stamp))
    events, latency = wait_events(log, 1, 2)
    assert sorted(summary(events)) == [("add", "Pod", "prod/bbbb"), ("delete", "Pod", "prod/aaaa")]
    assert latency < CONTRACT


def test_rewrite_within_one_timestamp_tick_is_not_missed(
    started: tuple[Path, DirectorySource, EventLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps come from a coarse clock, so a same-size rewrite right after
    our read can leave the whole signature unchanged. Simulate the worst case
    (timestamps that never move) deterministically: recently changed files
    must still be re-read and compared by content."""
    monkeypatch.setattr(directory, "signature", lambda st: (st.st_dev, st.st_ino, st.st_size))
    root, _source, log = started
    path = root / "p.yaml"
    path.write_text(yaml.safe_dump(pod("aaaa")))
    log.wait_for(1)
    time.sleep(0.25)  # the source has read the first version
    path.write_text(yaml.safe_dump(pod("bbbb")))  # same length, same inode
    events, latency = wait_events(log, 1, 2)
    assert sorted(summary(events)) == [("add", "Pod", "prod/bbbb"), ("delete", "Pod", "prod/aaaa")]
    assert latency < CONTRACT


def test_rename_moves_objects_without_churn_and_away_deletes(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, _source, log = started
    write(root / "a.yaml", pod("web"), pod("db"))
    log.wait_for(2)

    (root / "a.yaml").rename(root / "sub-b.yaml")
    quiet(log)  # same objects, another file: nothing to tell the consumer

    (root / "sub-b.yaml").rename(root / "sub-b.yaml.bak")  # no longer a manifest
    events, latency = wait_events(log, 2, 2)
    assert sorted(summary(events)) == [("delete", "Pod", "prod/db"), ("delete", "Pod", "prod/web")]
    assert latency < CONTRACT


def test_atomic_replace_by_rename_is_seen(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, _source, log = started
    target = write(root / "p.yaml", pod("web", app="v1"))
    log.wait_for(1)
    staged = write(root / ".p.yaml.tmp", pod("web", app="v2"))  # hidden while staged
    os.replace(staged, target)
    events, latency = wait_events(log, 1, 1)
    assert summary(events) == [("update", "Pod", "prod/web")]
    assert events[0].obj["metadata"]["labels"] == {"app": "v2"}
    assert latency < CONTRACT
    quiet(log)


def test_unchanged_rewrite_delivers_nothing(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, _source, log = started
    path = write(root / "p.yaml", pod("web"))
    log.wait_for(1)
    write(path, pod("web"))  # new mtime, same content
    path.touch()
    quiet(log)


# -- bad input ----------------------------------------------------------------


def test_malformed_yaml_names_file_and_line_and_keeps_last_good(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, source, log = started
    path = write(root / "p.yaml", policy("deny"), pod("web"))
    log.wait_for(2)

    # A half-saved edit: line 4 breaks the mapping.
    path.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n  namespace: prod\n")
    wait_until(lambda: source.problems() != [], what="problem reported")
    (problem,) = source.problems()
    assert problem.file == str(path)
    assert problem.line in (4, 5, 6)  # where the parser noticed the unclosed flow
    assert "malformed YAML" in problem.message
    assert "keeping its last good objects" in problem.message
    assert str(path) in str(problem)
    # Kept: deleting the policy would open traffic because of a typo.
    quiet(log)
    assert set(log.state()) == {("MultiNetworkPolicy", "prod", "deny"), ("Pod", "prod", "web")}

    # Other files keep flowing meanwhile.
    write(root / "q.yaml", pod("db"))
    events, _ = wait_events(log, 2, 1)
    assert summary(events) == [("add", "Pod", "prod/db")]

    # Fixed, without the policy this time: now it goes, and the problem too.
    write(path, pod("web"))
    events, latency = wait_events(log, 3, 1)
    assert summary(events) == [("delete", "MultiNetworkPolicy", "prod/deny")]
    assert latency < CONTRACT
    wait_until(lambda: source.problems() == [])


def test_malformed_file_never_read_contributes_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: Pod\nmetadata: {name: x\n")
    (tmp_path / "bad.json").write_text('{"kind": "Pod",\n "metadata": }\n')
    write(tmp_path / "good.yaml", pod("web"))
    source = DirectorySource(tmp_path)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        problems = sorted(source.problems(), key=lambda p: p.file)
    finally:
        source.stop()
    assert summary(log.events) == [("add", "Pod", "prod/web")]
    assert [(Path(p.file).name, p.line) for p in problems] == [("bad.json", 2), ("bad.yaml", 3)]
    assert "malformed JSON" in problems[0].message
    assert all("none of its objects are used" in p.message for p in problems)


def test_per_object_problems_skip_only_that_object(tmp_path: Path) -> None:
    docs = [
        pod("ok"),  # line 1
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
        {
            "apiVersion": "k8s.cni.cncf.io/v1beta2",
            **{k: v for k, v in policy("v2").items() if k != "apiVersion"},
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "n", "namespace": 7}},
        ["not", "an", "object"],
    ]
    text = "\n".join("---\n" + yaml.safe_dump(d) for d in docs)
    (tmp_path / "mixed.yaml").write_text(text)
    doc_lines = [i + 2 for i, line in enumerate(text.splitlines()) if line == "---"]

    source = DirectorySource(tmp_path)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        problems = source.problems()
    finally:
        source.stop()

    assert summary(log.events) == [("add", "Pod", "prod/ok")]
    file = str(tmp_path / "mixed.yaml")
    assert [(p.file, p.line) for p in problems] == [(file, line) for line in doc_lines[1:]]
    by_line = {p.line: p for p in problems}
    assert "unsupported kind 'Deployment'" in by_line[doc_lines[1]].message
    assert by_line[doc_lines[2]].object == "MultiNetworkPolicy prod/v2"
    assert "'k8s.cni.cncf.io/v1beta2' is not served" in by_line[doc_lines[2]].message
    assert "metadata.name missing" in by_line[doc_lines[3]].message
    assert "metadata.namespace" in by_line[doc_lines[4]].message
    assert "not an object" in by_line[doc_lines[5]].message


def test_list_items_are_reported_at_their_own_line(tmp_path: Path) -> None:
    (tmp_path / "l.yaml").write_text(
        "apiVersion: v1\n"
        "kind: List\n"
        "items:\n"
        "- apiVersion: v1\n"
        "  kind: Pod\n"
        "  metadata: {name: a, namespace: prod}\n"
        "- apiVersion: v1\n"
        "  kind: Secret\n"
        "  metadata: {name: s}\n"
    )
    source = DirectorySource(tmp_path)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        problems = source.problems()
    finally:
        source.stop()
    assert summary(log.events) == [("add", "Pod", "prod/a")]
    assert [(p.line, p.object) for p in problems] == [(7, "document 1 items[1]")]


def test_duplicate_object_first_path_wins_and_later_takes_over(
    started: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, source, log = started
    write(root / "b.yaml", pod("web", app="from-b"))
    log.wait_for(1)
    a = write(root / "a.yaml", ns("prod"), pod("web", app="from-a"))
    pod_line = a.read_text().splitlines().index("---") + 2
    # a.yaml sorts first, so its definition wins regardless of arrival order.
    events, _ = wait_events(log, 1, 2)
    assert sorted(summary(events)) == [("add", "Namespace", "prod"), ("update", "Pod", "prod/web")]
    assert log.state()[("Pod", "prod", "web")]["metadata"]["labels"] == {"app": "from-a"}
    (problem,) = source.problems()
    assert problem == SourceProblem(
        str(root / "b.yaml"),
        "Pod prod/web",
        f"duplicate: already defined in {a}:{pod_line}, which wins",
        1,
    )

    (root / "a.yaml").unlink()
    events, _ = wait_events(log, 3, 2)
    assert sorted(summary(events)) == [
        ("delete", "Namespace", "prod"),
        ("update", "Pod", "prod/web"),
    ]
    assert log.state()[("Pod", "prod", "web")]["metadata"]["labels"] == {"app": "from-b"}
    wait_until(lambda: source.problems() == [])


def test_duplicate_inside_one_file(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", pod("web", app="first"), pod("web", app="second"))
    source = DirectorySource(tmp_path)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        (problem,) = source.problems()
    finally:
        source.stop()
    assert log.state()[("Pod", "prod", "web")]["metadata"]["labels"] == {"app": "first"}
    assert problem.message.startswith(f"duplicate: already defined in {tmp_path / 'x.yaml'}:1")


# -- layout -------------------------------------------------------------------


def test_hidden_entries_skipped_symlinked_files_followed(tmp_path: Path) -> None:
    """The layout of a mounted ConfigMap: files are symlinks through ..data."""
    root = tmp_path / "cm"
    real = root / "..2024_01_01_00_00_00.000"
    write(real / "policy.yaml", policy("deny"))
    (root / "..data").symlink_to(real.name)
    (root / "policy.yaml").symlink_to("..data/policy.yaml")
    write(root / ".hidden.yaml", pod("ghost"))
    (root / "dangling.yaml").symlink_to("nowhere.yaml")

    source = DirectorySource(root)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        assert summary(log.events) == [("add", "MultiNetworkPolicy", "prod/deny")]
        assert source.problems() == []  # not reported as duplicates of each other

        # A ConfigMap update: new timestamped dir, ..data swapped atomically.
        newer = root / "..2024_01_01_00_00_01.000"
        edited = policy("deny")
        edited["spec"]["ingress"] = [{}]
        write(newer / "policy.yaml", edited)
        (root / "..data_tmp").symlink_to(newer.name)
        os.replace(root / "..data_tmp", root / "..data")
        events, latency = wait_events(log, 1, 1)
    finally:
        source.stop()
    assert summary(events) == [("update", "MultiNetworkPolicy", "prod/deny")]
    assert latency < CONTRACT


def test_missing_directory_is_a_problem_and_keeps_objects(tmp_path: Path) -> None:
    root = tmp_path / "later"
    source = DirectorySource(root)
    log = EventLog()
    source.start(log)
    try:
        wait_until(source.synced)
        assert [p.message for p in source.problems()] == [
            "cannot list directory: No such file or directory"
        ]
        write(root / "p.yaml", pod("web"))
        log.wait_for(1)
        wait_until(lambda: source.problems() == [])

        # The directory vanishing (an unmount) is not "delete everything".
        (root / "p.yaml").rename(tmp_path / "p.yaml")
        root.rmdir()
        wait_until(lambda: source.problems() != [])
        quiet(log)
        assert set(log.state()) == {("Pod", "prod", "web")}
    finally:
        source.stop()


# -- resync -------------------------------------------------------------------


def test_restart_delivers_only_the_difference(tmp_path: Path) -> None:
    write(tmp_path / "keep.yaml", pod("keep"))
    write(tmp_path / "gone.yaml", pod("gone"), policy("gone"))
    write(tmp_path / "edit.yaml", pod("edit", v="1"))
    source = DirectorySource(tmp_path)
    log = EventLog()
    source.start(log)
    wait_until(source.synced)
    source.stop()
    assert len(log.events) == 4

    (tmp_path / "gone.yaml").unlink()
    write(tmp_path / "edit.yaml", pod("edit", v="2"))
    write(tmp_path / "new.yaml", ns("new"))
    source.start(log)
    try:
        wait_until(source.synced)
    finally:
        source.stop()
    assert sorted(log.summary(4)) == [
        ("add", "Namespace", "new"),
        ("delete", "MultiNetworkPolicy", "prod/gone"),
        ("delete", "Pod", "prod/gone"),
        ("update", "Pod", "prod/edit"),
    ]
    # Upserts first: a replaced policy is never absent in between.
    actions = [e.action for e in log.events[4:]]
    assert actions == sorted(actions, key=lambda a: a is Action.DELETE)


def test_sink_exception_does_not_stop_the_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def sink(event: Event) -> None:
        seen.append(event.obj["metadata"]["name"])
        if event.obj["metadata"]["name"] == "boom":
            raise RuntimeError("consumer bug")

    write(tmp_path / "a.yaml", pod("boom"))
    source = DirectorySource(tmp_path)
    source.start(sink)
    try:
        wait_until(source.synced)
        write(tmp_path / "b.yaml", pod("fine"))
        wait_until(lambda: "fine" in seen)
    finally:
        source.stop()
    assert "object sink failed" in caplog.text


def test_start_twice_is_refused(started: tuple[Path, DirectorySource, EventLog]) -> None:
    _root, source, log = started
    with pytest.raises(RuntimeError, match="already started"):
        source.start(log)
