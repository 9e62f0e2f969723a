"""Shared fixtures. Kernel-touching tests are marked ``root``; each gets its
own uniquely named network namespaces, removed even when the test fails."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from nicwarden.agent.sim import SimulatedNode, parse_spec
from tests.support.oracle import host_links, run, unique  # noqa: F401  (re-exported for tests)

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root and the real kernel")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def make_sim() -> Iterator[Callable[[str], SimulatedNode]]:
    """Factory of simulated nodes with unique link prefixes; each is torn
    down at the end and must leave no link behind."""
    made: list[SimulatedNode] = []

    def make(spec: str) -> SimulatedNode:
        node = SimulatedNode(parse_spec(spec), prefix="t" + uuid.uuid4().hex[:4]).start()
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
        assert host_links(node.prefix) == set(), "tear-down left links behind"


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """Factory: each call creates a named netns; all are deleted at teardown."""
    made: list[str] = []

    def make() -> str:
        name = unique("nwt-")
        run("ip", "netns", "add", name)
        made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        run("ip", "netns", "del", name, check=False)
