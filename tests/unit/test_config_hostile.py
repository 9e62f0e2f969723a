"""Config files an operator would never write on purpose, found by the
fuzzing harness (tests/fuzz/test_fuzz_config.py): each is a ConfigError
naming the file, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent.config import MAX_CONFIG_BYTES, load_config
from nicwarden.agent.errors import ConfigError


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b"a: " + b"{x: " * 20_000 + b"1" + b"}" * 20_000, "nested too deeply"),
        (b"logLevel: '" + b"A" * (MAX_CONFIG_BYTES + 10) + b"'\n", "larger than"),
        (b"logLevel: debug\n\xff\xfe", "cannot read config file"),
    ],
    ids=["deep-list", "deep-mapping", "huge", "not-utf8"],
)
def test_hostile_config_file_is_a_config_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert str(path) in str(err.value) and reason in str(err.value)
