"""Bounds on what one manifest file can cost: problems are kept per file up
to a cap and summarised with a count, a file over the size or document limit
is refused with a problem naming the limit, and a removed file takes its
objects and problem rows with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nicwarden.agent.k8s import DirectorySource, manifests
from nicwarden.agent.k8s.manifests import MAX_DOCUMENTS, MAX_FILE_BYTES, MAX_PROBLEMS, parse_file
from nicwarden.agent.policy import Action
from tests.support.k8s_apiserver import EventLog, wait_until

GADGET = "---\nkind: Gadget\napiVersion: v1\nmetadata: {name: g%d}\n"
NS = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns%d}\n"


def test_problems_are_capped_and_summarised_per_file() -> None:
    data = "".join(GADGET % i for i in range(500)).encode()
    parsed = parse_file(Path("/m/gadgets.yaml"), data)
    assert not parsed.broken and len(parsed.problems) == MAX_PROBLEMS
    assert parsed.dropped == 500 - MAX_PROBLEMS
    shown = manifests.summarise(parsed.problems, "/m/gadgets.yaml", parsed.dropped)
    assert len(shown) == MAX_PROBLEMS + 1
    assert shown[-1].message.startswith(f"and {500 - MAX_PROBLEMS:,} more problems")


def test_a_file_over_the_size_limit_is_refused_naming_the_limit() -> None:
    data = b"#" * (MAX_FILE_BYTES + 1)
    parsed = parse_file(Path("/m/huge.yaml"), data)
    assert parsed.broken and not parsed.objects
    (problem,) = parsed.problems
    assert "4 MiB limit" in problem.message and f"{MAX_FILE_BYTES + 1:,} bytes" in problem.message


def test_a_file_over_the_document_limit_is_refused_naming_the_limit() -> None:
    data = "".join(NS % i for i in range(MAX_DOCUMENTS + 1)).encode()
    parsed = parse_file(Path("/m/many.yaml"), data)
    assert parsed.broken and not parsed.objects
    (problem,) = parsed.problems
    assert f"more than {MAX_DOCUMENTS:,} documents" in problem.message
    # At the limit exactly, every object is used.
    ok = parse_file(Path("/m/many.yaml"), "".join(NS % i for i in range(MAX_DOCUMENTS)).encode())
    assert not ok.broken and len(ok.objects) == MAX_DOCUMENTS


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, DirectorySource, EventLog]]:
    root = tmp_path / "manifests"
    root.mkdir()
    source = DirectorySource(root, poll_interval=0.05)
    log = EventLog()
    source.start(log)
    wait_until(source.synced, what="initial scan")
    yield root, source, log
    source.stop()


def test_directory_rows_are_capped_and_a_removed_file_takes_everything(
    watched: tuple[Path, DirectorySource, EventLog],
) -> None:
    root, source, log = watched
    bad = root / "bad.yaml"
    bad.write_text("".join(GADGET % i for i in range(900)) + NS % 1 + NS % 2)
    wait_until(lambda: len(log) >= 2, what="the two namespaces")
    rows = [p for p in source.problems() if p.file == str(bad)]
    assert len(rows) == MAX_PROBLEMS + 1
    assert "and 880 more problems" in rows[-1].message
    huge = root / "huge.yaml"
    huge.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    wait_until(
        lambda: any(p.file == str(huge) and "MiB limit" in p.message for p in source.problems()),
        what="the size problem",
    )
    before = len(log)
    bad.unlink()
    huge.unlink()
    wait_until(lambda: len(log) >= before + 2, what="the deletes")
    deleted = log.wait_for(before + 2, timeout=5.0)[before:]
    assert {e.action for e in deleted} == {Action.DELETE}
    wait_until(lambda: source.problems() == [], what="the problem rows to go")
    # Nothing of the removed files is kept: no file state, no objects.
    assert source._files == {}
    time.sleep(0.2)
    assert len(log) == before + 2
