"""Fixtures the integration tests of the API source and the DRA plugin share:
the in-repo API server and a real ``kubernetes`` client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s_apiserver import FakeApiServer


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as srv:
        yield srv


@pytest.fixture
def api_client(server: FakeApiServer, tmp_path: Path) -> Any:
    from nicwarden.agent.k8s import load_client

    return load_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
