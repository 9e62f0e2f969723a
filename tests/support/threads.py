"""Oracles for threads that must sleep while idle, read from /proc."""

from __future__ import annotations

import threading
import time
from pathlib import Path


def voluntary_switches(task: Path) -> int:
    status = (task / "status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def assert_sleeps_when_idle(
    thread: threading.Thread | None, what: str, idle_s: float = 1.0
) -> None:
    """``thread`` goes to sleep in poll() and then makes no voluntary context
    switch for ``idle_s``: a loop that polled every 0.1-0.2 s would make
    several."""
    assert thread is not None and thread.native_id is not None
    task = Path(f"/proc/self/task/{thread.native_id}")
    deadline = time.monotonic() + 5
    while "poll" not in (task / "wchan").read_text():
        assert time.monotonic() < deadline, f"{what} never went to sleep"
        time.sleep(0.01)
    before = voluntary_switches(task)
    time.sleep(idle_s)
    assert voluntary_switches(task) == before, f"{what} woke while idle"
