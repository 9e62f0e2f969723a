"""Shared fixtures. Kernel-touching tests are marked ``root``; each gets its
own uniquely named network namespaces, removed even when the test fails."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root and the real kernel")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an independent oracle command (ip, tc, bpftool, ping) and capture it."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


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
