"""The README's main command must keep working: run the demo end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_clean() -> None:
    env = dict(os.environ, NICWARDEN_SKIP_SETUP="1")
    out = subprocess.run(
        [str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "demo complete" in out.stdout
    assert "UNEXPECTED" not in out.stdout
    assert "links left behind: 0; BPF pins left: 0" in out.stdout
