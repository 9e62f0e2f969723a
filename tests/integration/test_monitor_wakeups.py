"""The link monitor sleeps until the kernel has something for it or it is
stopped: an idle one never wakes (it used to poll five times a second)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from nicwarden.agent.host import netns as host_netns
from nicwarden.agent.host.events import HostEvent, LinkMonitor
from tests.support.oracle import run
from tests.support.threads import assert_sleeps_when_idle

pytestmark = pytest.mark.root


def test_idle_link_monitor_sleeps_and_stop_wakes_it(netns: Callable[[], str]) -> None:
    ns = netns()
    seen: list[HostEvent] = []
    got = threading.Event()

    def on_event(ev: HostEvent) -> None:
        seen.append(ev)
        # A veth pair's two links may arrive in separate reads.
        if {"nwwa", "nwwb"} <= {e.name for e in seen if e.action == "newlink"}:
            got.set()

    # Its socket is bound where it was made: a fresh netns, where nothing
    # else changes links.
    mon = host_netns.run_in(ns, lambda: LinkMonitor(on_event)).start()
    try:
        assert_sleeps_when_idle(mon._thread, "the monitor")

        run("ip", "-n", ns, "link", "add", "nwwa", "type", "veth", "peer", "name", "nwwb")
        assert got.wait(5)
        assert {"nwwa", "nwwb"} <= {e.name for e in seen if e.action == "newlink"}
    finally:
        mon.stop()
    assert not mon._thread.is_alive()
    assert mon._wake.closed
    mon.stop()  # a second stop is harmless
