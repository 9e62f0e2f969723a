"""VFs out of place with nothing on record to explain it.

The store says which VFs are in pods (attachments). A VF whose netdev is not
in the host netns, or that was renamed there, with no attachment for it, was
moved by someone else, or by us before the state that recorded it was lost.
Handing it to a pod would take it from wherever it is now, so it is held
back (reported in health, a metric, a Kubernetes Event; refused to CNI ADD
and Unhealthy to kubelet) until an admin decides:

* ``adopt``: accept it as it is. A VF away from home is recorded as held by
  the admin (still not offered, no longer reported); one renamed at home
  keeps its new name as its home name and is offered again.
* ``release``: bring it home: from whichever network namespace holds it back
  to the host's, under its recorded name.

Each VF is examined under the attach service's lock for that VF, so an ADD
or DEL in flight is never mistaken for a stray.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nicwarden.agent.attach import RETURN_WAIT_S, AttachService
from nicwarden.agent.errors import InvalidArgument, NotFound, Unavailable
from nicwarden.agent.host.discovery import host_netdev
from nicwarden.agent.host.vf_locate import bring_home
from nicwarden.agent.model import VF

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unexplained:
    device: str
    problem: str

    def __str__(self) -> str:
        return f"{self.device}: {self.problem}"


HOLD_PROBLEM = "held by an admin (nicwardenctl reconcile --adopt); release it to offer it again"


class VfAudit:
    """Keeps the set of VFs that must not be offered to pods, and why."""

    def __init__(self, attach: AttachService) -> None:
        self.attach = attach
        self._lock = threading.Lock()
        # One audit or admin decision at a time: a periodic run that examined a
        # VF before a release moved it home must not publish its stale finding
        # after the release's own run.
        self._serial = threading.RLock()
        self._unexplained: dict[str, Unexplained] = {}
        self._held: dict[str, str] = {}
        # Called with the VFs newly found unexplained (Events, logs).
        self.on_found: list[Callable[[list[Unexplained]], None]] = []
        # Called when the blocked set changes (the device plugin re-advertises).
        self.on_change: list[Callable[[], None]] = []

    # -- queries ---------------------------------------------------------------

    def unexplained(self) -> list[Unexplained]:
        with self._lock:
            return sorted(self._unexplained.values(), key=lambda u: u.device)

    def blocked(self) -> dict[str, str]:
        """Device → why it is not offered to pods."""
        with self._lock:
            out = {d: HOLD_PROBLEM for d in self._held}
            out.update({d: f"{u.problem}; {_ADVICE}" for d, u in self._unexplained.items()})
            return out

    def why_blocked(self, device: str) -> str | None:
        return self.blocked().get(device)

    # -- the audit ---------------------------------------------------------------

    def run(self) -> list[Unexplained]:
        """Examine every VF now; returns the unexplained ones."""
        with self._serial:
            return self._run()

    def _run(self) -> list[Unexplained]:
        ctx = self.attach.ctx
        inv = ctx.inventory.rescan()
        found: dict[str, Unexplained] = {}
        held: dict[str, str] = {}
        for vf in inv.vfs():
            with self.attach.locks.hold(f"vf:{vf.address}"):
                problem = self._examine(vf)
            if problem == HOLD_PROBLEM:
                held[vf.address] = problem
            elif problem is not None:
                found[vf.address] = Unexplained(vf.address, problem)
        with self._lock:
            new = [u for d, u in found.items() if d not in self._unexplained]
            changed = found.keys() != self._unexplained.keys() or held.keys() != self._held.keys()
            self._unexplained, self._held = found, held
        for u in new:
            log.warning(
                "VF out of place with no attachment", extra={"vf": u.device, "problem": u.problem}
            )
        if new:
            for cb in self.on_found:
                _safely(cb, new)
        if changed:
            for hook in self.on_change:
                _safely(hook)
        return sorted(found.values(), key=lambda u: u.device)

    def _examine(self, vf: VF) -> str | None:
        store = self.attach.ctx.store
        if store.attachment_for_device(vf.address) is not None:
            return None  # in a pod, or on its way: explained
        if vf.fn.driver is None or vf.fn.is_vfio:
            return None  # no kernel netdev to be anywhere
        nd = host_netdev(self.attach.ctx.paths, vf.address)
        if nd is None:
            if store.vf_hold(vf.address) is not None:
                return HOLD_PROBLEM
            return "its netdev is not in the host network namespace and no attachment explains it"
        if store.vf_hold(vf.address) is not None:
            # The admin's VF came back: it is ours to offer again.
            store.release_vf_hold(vf.address)
        home = store.vf_home(vf.address)
        if home is None or home.ifindex != nd.ifindex:
            # First sight, or a new netdev (driver reload, VFs recreated).
            store.set_vf_home(vf.address, nd.name, nd.ifindex)
            return None
        if home.name != nd.name:
            return f"renamed from {home.name} to {nd.name} with no attachment to explain it"
        return None

    # -- admin decisions ---------------------------------------------------------

    def adopt(self, device: str) -> str:
        with self._serial:
            return self._adopt(device)

    def release(self, device: str) -> str:
        with self._serial:
            return self._release(device)

    def _adopt(self, device: str) -> str:
        vf = self._vf(device)
        store = self.attach.ctx.store
        with self.attach.locks.hold(f"vf:{vf.address}"):
            if store.attachment_for_device(vf.address) is not None:
                raise InvalidArgument(f"VF {vf.address} is attached to a pod: nothing to adopt")
            nd = host_netdev(self.attach.ctx.paths, vf.address)
            if nd is None:
                store.hold_vf(vf.address, "adopted where it is")
                line = f"adopted {vf.address}: held where it is, not offered to pods"
            else:
                store.release_vf_hold(vf.address)
                store.set_vf_home(vf.address, nd.name, nd.ifindex)
                line = f"adopted {vf.address}: {nd.name} is its home name now"
        log.info("reconcile", extra={"action": line})
        self.run()
        return line

    def _release(self, device: str) -> str:
        vf = self._vf(device)
        store = self.attach.ctx.store
        with self.attach.locks.hold(f"vf:{vf.address}"):
            if store.attachment_for_device(vf.address) is not None:
                raise InvalidArgument(
                    f"VF {vf.address} is attached to a pod: DEL the attachment instead"
                )
            home = store.vf_home(vf.address)
            # With no home name on record (the state that had it is lost),
            # one derived from the address: the pod-side name ("eth0",
            # "net1") could collide with a host link.
            name = home.name if home is not None else fallback_name(vf.address)
            where = bring_home(self.attach.ctx.paths, vf.address, name)
            if where is None:
                raise Unavailable(
                    f"VF {vf.address} is in no network namespace the agent can reach;"
                    " adopt it instead, or move it back by hand"
                )
            store.release_vf_hold(vf.address)
            # sysfs (and the simulator's mirror of it) shows the netdev a
            # moment after the move; the audit below reads sysfs, so wait
            # for it rather than report the VF still away.
            self.attach.wait_home(vf.address, RETURN_WAIT_S)
            nd = host_netdev(self.attach.ctx.paths, vf.address)
            if nd is not None and (home is None or home.ifindex != nd.ifindex):
                store.set_vf_home(vf.address, nd.name, nd.ifindex)
            line = f"released {vf.address}: {where}"
        log.info("reconcile", extra={"action": line})
        self.run()
        return line

    def _vf(self, device: str) -> VF:
        found = self.attach.ctx.inventory.rescan().find(device)
        if found is None:
            raise NotFound(f"no VF {device!r} on this node")
        if not isinstance(found, VF):
            raise InvalidArgument(f"{device} is a PF, not a VF")
        return found


def fallback_name(address: str) -> str:
    """``0000:18:01.2`` → ``vf18s01f2`` (``vf1_18s01f2`` outside domain 0)."""
    domain, bus, rest = address.split(":")
    slot, fn = rest.split(".")
    prefix = "vf" if int(domain, 16) == 0 else f"vf{int(domain, 16):x}_"
    return f"{prefix}{bus}s{slot}f{fn}"[:15]


_ADVICE = "run nicwardenctl reconcile --adopt or --release for it"


def _safely(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("VF audit hook failed")
