"""A periodic audit racing an admin's release must not publish a stale finding.

The periodic run examines VF A (away from home, unexplained) and is then slow
to finish; meanwhile the admin releases A. Whatever the interleaving, once the
release has returned, A is not reported any more; nor when sysfs shows the
released VF back home only a moment after the move.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from nicwarden.agent import attach as attach_module
from nicwarden.agent import reconcile
from nicwarden.agent.attach import AttachService, KeyedLocks
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
        wait_home=lambda address, timeout: None,
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


class _LaggingSysfs:
    """The netdev is back in the host netns, but sysfs (or the simulator's
    mirror of it) shows it only a moment later."""

    def __init__(self) -> None:
        self.moved_at: float | None = None

    def netdev(self, paths: Any, address: str) -> Any:
        if self.moved_at is None or time.monotonic() - self.moved_at < 0.3:
            return None
        return SimpleNamespace(name="vf18s01f1", ifindex=9)


class _NoHomeStore(_Store):
    def __init__(self) -> None:
        self.home: Any = None

    def vf_home(self, device: str) -> Any:
        return self.home

    def vf_hold(self, device: str) -> None:
        return None

    def set_vf_home(self, device: str, name: str, ifindex: int) -> None:
        self.home = SimpleNamespace(name=name, ifindex=ifindex)


def test_release_waits_for_sysfs_to_show_the_vf_home(monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = _LaggingSysfs()
    vf = SimpleNamespace(address=A, fn=SimpleNamespace(driver="iavf", is_vfio=False))
    inventory = SimpleNamespace(
        rescan=lambda: SimpleNamespace(vfs=lambda: [vf], find=lambda d: vf if d == A else None)
    )
    store = _NoHomeStore()
    attach: Any = SimpleNamespace(
        ctx=SimpleNamespace(inventory=inventory, store=store, paths=None), locks=KeyedLocks()
    )
    attach._host_netdev = lambda address: AttachService._host_netdev(attach, address)
    attach.wait_home = lambda address, timeout: AttachService.wait_home(attach, address, timeout)

    def bring_home(paths: Any, address: str, name: str) -> str:
        sysfs.moved_at = time.monotonic()
        return "moved back from a pod"

    monkeypatch.setattr(reconcile, "bring_home", bring_home)
    monkeypatch.setattr(reconcile, "host_netdev", sysfs.netdev)
    monkeypatch.setattr(attach_module, "host_netdev", sysfs.netdev)
    monkeypatch.setattr(reconcile, "VF", SimpleNamespace)
    audit = VfAudit(attach)
    assert [u.device for u in audit.run()] == [A]

    assert audit.release(A) == f"released {A}: moved back from a pod"
    # Reported clean as soon as the release returns, with its home on record.
    assert audit.unexplained() == [] and audit.blocked() == {}
    assert store.home.name == "vf18s01f1"
