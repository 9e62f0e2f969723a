"""kubernetes.podMetadataOnly: parsed, validated, off by default, and what
the runtime hands to ApiSource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nicwarden.agent import k8s
from nicwarden.agent.config import load_config
from nicwarden.agent.errors import ConfigError
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Store


def _load(tmp_path: Path, kubernetes: dict[str, Any]) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"kubernetes": kubernetes}))
    return load_config(path, {})


def test_off_by_default(tmp_path: Path) -> None:
    assert load_config(None, {}).kubernetes.pod_metadata_only is False
    assert _load(tmp_path, {"watch": True}).kubernetes.pod_metadata_only is False


def test_parsed(tmp_path: Path) -> None:
    c = _load(tmp_path, {"watch": True, "podMetadataOnly": True})
    assert c.kubernetes.pod_metadata_only is True
    assert c.to_dict()["kubernetes"]["podMetadataOnly"] is True


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_only_a_boolean(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"watch": True, "podMetadataOnly": value})
    assert "kubernetes.podMetadataOnly" in err.value.message


def test_needs_watch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"podMetadataOnly": True})
    assert "kubernetes.podMetadataOnly" in err.value.message
    assert "kubernetes.watch: true" in err.value.message


class _Built(Exception):
    pass


@pytest.mark.parametrize("metadata_only", [True, False])
def test_the_runtime_passes_it_to_the_api_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata_only: bool
) -> None:
    _load(tmp_path, {"watch": True, "events": False, "podMetadataOnly": metadata_only})
    # No datapath: the source is what this test is about.
    config = load_config(tmp_path / "config.yaml", {"policy.enabled": False})
    seen: dict[str, Any] = {}

    def api_source(api: object, node: str, **kwargs: Any) -> None:
        seen.update(kwargs, api=api, node=node)
        raise _Built  # stop here: what follows needs a real API server

    monkeypatch.setattr(k8s, "load_client", lambda kubeconfig: "client")
    monkeypatch.setattr(k8s, "ApiSource", api_source)
    runtime = AgentRuntime(config)
    runtime.store = Store.open(tmp_path / "state")
    runtime.attach = object()  # type: ignore[assignment]
    try:
        with pytest.raises(_Built):
            runtime._start_enforcement()
    finally:
        runtime.store.close()
    assert seen["api"] == "client" and seen["pod_metadata_only"] is metadata_only
