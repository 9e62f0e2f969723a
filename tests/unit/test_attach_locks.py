from __future__ import annotations

import threading
import time

from nicwarden.agent.attach import KeyedLocks


def test_same_key_serializes_and_table_shrinks() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    def worker(name: str) -> None:
        with locks.hold("vf:a", f"att:{name}"):
            order.append(f"{name}-in")
            time.sleep(0.05)
            order.append(f"{name}-out")

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # No interleaving inside the critical section.
    assert order in (["x-in", "x-out", "y-in", "y-out"], ["y-in", "y-out", "x-in", "x-out"])
    assert len(locks) == 0  # nothing kept for keys no one holds


def test_opposite_order_requests_do_not_deadlock() -> None:
    locks = KeyedLocks()
    done = []

    def a() -> None:
        for _ in range(200):
            with locks.hold("k1", "k2"):
                pass
        done.append("a")

    def b() -> None:
        for _ in range(200):
            with locks.hold("k2", "k1"):
                pass
        done.append("b")

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    assert sorted(done) == ["a", "b"] and len(locks) == 0
