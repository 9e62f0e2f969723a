"""A periodic audit racing an admin's release must not publish a stale finding.

The periodic run examines VF A (away from home, unexplained) and is then slow
to finish; meanwhile the admin releases A. Whatever the interleaving, once the
release has returned, A is not reported any more.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from nicwarden.agent import reconcile
from nicwarden.agent.attach import KeyedLocks
from nicwarden.agent.reconcile import VfAudit

A = "0000:18:01.1"


class _Vf:
    def __init__(self, address: str) -> None:
        self.address = address


class _Inventory:
    """The periodic run's walk pauses after its last VF, holding no VF lock:
    the window in which a whole release can happen."""

    def __init__(self) -> None:
        self.examined = threading.Event()
        self.let_finish = threading.Event()

    def rescan(self) -> Any:
        vf = _Vf(A)

        def vfs() -> Any:
            yield vf
            if threading.current_thread().name == "periodic":
                self.examined.set()
                self.let_finish.wait(5)

        return SimpleNamespace(vfs=vfs, find=lambda d: vf if d == A else None)


class _Store:
    def attachment_for_device(self, device: str) -> None:
        return None

    def vf_home(self, device: str) -> Any:
        return SimpleNamespace(name="vfa", ifindex=7)

    def release_vf_hold(self, device: str) -> bool:
        return False

    def set_vf_home(self, device: str, name: str, ifindex: int) -> None:
        pass


def test_release_during_a_periodic_run_leaves_nothing_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = {"at_home": False}
    inventory = _Inventory()
    attach = SimpleNamespace(
        ctx=SimpleNamespace(inventory=inventory, store=_Store(), paths=None),
        locks=KeyedLocks(),
    )
    audit = VfAudit(attach)  # type: ignore[arg-type]

    def examine(vf: Any) -> str | None:
        return None if home["at_home"] else "away from home"

    def bring_home(paths: Any, address: str, name: str) -> str:
        home["at_home"] = True
        return "moved back from a pod"

    monkeypatch.setattr(audit, "_examine", examine)
    monkeypatch.setattr(reconcile, "bring_home", bring_home)
    monkeypatch.setattr(reconcile, "host_netdev", lambda paths, a: None)
    monkeypatch.setattr(reconcile, "VF", _Vf)
    outcome: list[object] = []

    def release() -> None:
        try:
            outcome.append(audit.release(A))
        except Exception as e:  # surfaced by the assertion below
            outcome.append(e)

    periodic = threading.Thread(target=audit.run, name="periodic")
    periodic.start()
    assert inventory.examined.wait(5)
    releaser = threading.Thread(target=release)
    releaser.start()
    # Unserialised, the release finishes in this window; serialised, it waits.
    releaser.join(0.5)
    inventory.let_finish.set()
    periodic.join(5)
    releaser.join(5)
    assert not periodic.is_alive() and not releaser.is_alive()
    assert outcome == [f"released {A}: moved back from a pod"]
    assert audit.unexplained() == []
    assert audit.blocked() == {}
