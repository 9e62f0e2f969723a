"""OS thread names from Python roles, read back from /proc."""

from __future__ import annotations

import threading
from pathlib import Path

from nicwarden.agent.thread_names import ThreadNamer


def comm(tid: int | None) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_threads_are_named_after_their_roles_once() -> None:
    go = threading.Event()
    threads = [
        threading.Thread(target=go.wait, name=name, daemon=True)
        for name in ("k8s-watch-multinetworkpolicies", "grpc_3")
    ]
    for t in threads:
        t.start()
    try:
        process = comm(threading.main_thread().native_id)
        namer = ThreadNamer()
        assert namer.tick() >= 2
        assert comm(threads[0].native_id) == "k8s-watch-multi"  # 15 bytes kept
        assert comm(threads[1].native_id) == "grpc"
        assert namer.tick() == 0  # nothing new
        assert comm(threading.main_thread().native_id) == process
    finally:
        go.set()
        for t in threads:
            t.join()
