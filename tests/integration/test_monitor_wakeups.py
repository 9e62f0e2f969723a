"""The link monitor sleeps until the kernel has something for it or it is
stopped: an idle one never wakes (it used to poll five times a second)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nicwarden.agent.host import netns as host_netns
from nicwarden.agent.host.events import HostEvent, LinkMonitor
from tests.support.oracle import run

pytestmark = pytest.mark.root


def _wakeups(tid: int) -> int:
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_idle_link_monitor_sleeps_and_stop_wakes_it(netns: Callable[[], str]) -> None:
    ns = netns()
    seen: list[HostEvent] = []
    got = threading.Event()

    def on_event(ev: HostEvent) -> None:
        seen.append(ev)
        got.set()

    # Its socket is bound where it was made: a fresh netns, where nothing
    # else changes links.
    mon = host_netns.run_in(ns, lambda: LinkMonitor(on_event)).start()
    try:
        assert mon._thread is not None and mon._thread.native_id is not None
        tid = mon._thread.native_id
        deadline = time.monotonic() + 5
        while "poll" not in Path(f"/proc/self/task/{tid}/wchan").read_text():
            assert time.monotonic() < deadline, "the monitor never went to sleep"
            time.sleep(0.01)
        before = _wakeups(tid)
        time.sleep(1.0)  # five polls' worth, had it kept polling
        assert _wakeups(tid) == before

        run("ip", "-n", ns, "link", "add", "nwwa", "type", "veth", "peer", "name", "nwwb")
        assert got.wait(5)
        assert {"nwwa", "nwwb"} <= {e.name for e in seen if e.action == "newlink"}
    finally:
        mon.stop()
    assert not mon._thread.is_alive()
    assert mon._wake.closed
    mon.stop()  # a second stop is harmless
