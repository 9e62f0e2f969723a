"""Hypothesis profiles for the fuzzing harness.

``ci`` (the default) is bounded, derandomised and does not shrink: a few minutes, the same
inputs every run, so CI judges the code and not the dice. ``long`` is random
and much larger, for a person to run by hand:

    NICWARDEN_FUZZ=long .venv/bin/pytest tests/fuzz -x

A failure prints the shrunk input; ``long`` keeps a database of failures in
``.hypothesis/`` so a re-run tries them first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.support.fuzz_node import FuzzNode, fuzz_node

PROFILE = os.environ.get("NICWARDEN_FUZZ", "ci")
_SCALE = {"ci": 1, "long": 25}[PROFILE]
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

# CI does not shrink: against a real node, replaying dozens of shrink
# candidates costs minutes, and the failing steps are printed either way.
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=_SLOW_OK,
)
settings.register_profile("long", deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """``n`` examples in CI, ``25 n`` in the long profile."""
    return n * _SCALE


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with fuzz_node(tmp) as n:
        yield n
