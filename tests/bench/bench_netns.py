#!/usr/bin/env python3
"""Ways to work inside a network namespace, side by side in one run: the
agent's routine (setns on the calling thread, then back), a throwaway thread
that setns()es and ends, and pyroute2's NetNS helper process.

Also shows why the agent cannot open an IPRoute on a throwaway thread:
pyroute2 0.9 keeps a socket per thread, so the caller ends up with a socket
in its own netns (the link count printed differs).

Prints numbers and ratios; asserts nothing. Run as root:
    .venv/bin/python tests/bench/bench_netns.py [--iterations 300]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2 import IPRoute, NetNS  # noqa: E402

from nicwarden.agent.host import netns  # noqa: E402

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def on_thread(path: str, fn: Callable[[], T]) -> T:
    """The alternative: a thread of its own per entry."""
    out: list[T] = []

    def run() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        out.append(fn())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


def per_call_ms(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=300)
    n = ap.parse_args().iterations
    name = f"nwb-{uuid.uuid4().hex[:8]}"
    path = f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "b0", "type", "veth", "peer", "name", "b1"],
            check=True,
        )
        enter_calling = per_call_ms(n, lambda: netns.run_in(path, lambda: None))
        enter_thread = per_call_ms(n, lambda: on_thread(path, lambda: None))
        open_calling = per_call_ms(n, lambda: netns.run_in(path, IPRoute).close())
        open_thread = per_call_ms(n, lambda: on_thread(path, IPRoute).close())
        m = max(5, n // 20)
        open_netns = per_call_ms(m, lambda: NetNS(path, flags=0).close())
        print(f"enter+leave  calling thread  {enter_calling:8.4f} ms")
        print(
            f"enter        own thread      {enter_thread:8.4f} ms  x{enter_thread / enter_calling:.0f}"
        )
        print(f"open IPRoute calling thread  {open_calling:8.4f} ms")
        print(
            f"open IPRoute own thread      {open_thread:8.4f} ms  x{open_thread / open_calling:.1f}"
        )
        print(
            f"open NetNS (helper process)  {open_netns:8.4f} ms  x{open_netns / open_calling:.1f}"
        )
        ours = netns.run_in(path, IPRoute)
        theirs = on_thread(path, IPRoute)
        try:
            print(
                f"links seen: calling-thread socket {len(ours.get_links())} (the netns has 3),"
                f" throwaway-thread socket {len(theirs.get_links())}"
            )
        finally:
            ours.close()
            theirs.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    main()
