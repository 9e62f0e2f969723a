"""Changing a PF's VF count, and settling a change a crash interrupted.

A change goes through 0, which removes *every* VF, so it is refused while
any VF is allocated or attached. The change is a durable intent before the
first write; the writes run off the request path with a deadline
(``agent/host/pci.py``), and a write that outlives it leaves the intent
pending for :func:`recover`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from nicwarden.agent.devices.binding import in_use_from_store
from nicwarden.agent.devices.context import DeviceCtx, Recovered, label
from nicwarden.agent.devices.plan import busy_message
from nicwarden.agent.errors import Busy, InvalidArgument, NicwardenError, NotFound, Unavailable
from nicwarden.agent.host import pci
from nicwarden.agent.model import PF, Inventory

log = logging.getLogger(__name__)

NUMVFS_INTENT = "sriov.numvfs"


@dataclass(frozen=True)
class NumVfsResult:
    pf: str
    pf_name: str | None
    previous: int
    current: int
    changed: bool


def _find_pf(inventory: Inventory, key: str) -> PF:
    found = inventory.find(key)
    if found is None:
        raise NotFound(f"no SR-IOV PF {key}")
    if not isinstance(found, PF):
        raise InvalidArgument(f"{key} is a VF, not a PF")
    return found


def _requested_count(n: object, total: int, where: str) -> int:
    if isinstance(n, str) and re.fullmatch(r"\s*[+-]?\d+\s*", n):
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
        raise InvalidArgument(
            f"numVfs for {where} must be an integer 0-{total} (sriov_totalvfs), got {n!r}"
        )
    return n


def set_num_vfs(
    ctx: DeviceCtx, pf: str, n: int | str, *, timeout_s: float | None = None
) -> NumVfsResult:
    """Set a PF's VF count the way the kernel allows and wait for the VFs.

    Waits until ``n`` VFs exist with drivers bound (unless the PF has
    ``sriov_drivers_autoprobe`` off), then brings their netdevs up.
    """
    timeout = ctx.timeout_s if timeout_s is None else timeout_s
    found = _find_pf(ctx.inventory.rescan(), pf)
    where = label(found.address, found.name)
    want = _requested_count(n, found.total_vfs, where)
    current = found.num_vfs
    if want == current:
        return NumVfsResult(found.address, found.name, current, current, False)
    holders = in_use_from_store(ctx.store)
    busy = {vf.address: holders[vf.address] for vf in found.vfs if vf.address in holders}
    if current and busy:
        raise Busy(busy_message(found, want, busy))
    payload = {"from": current, "to": want, "pf_name": found.name}
    intent = ctx.store.begin_intent(NUMVFS_INTENT, found.address, payload)
    try:
        pci.set_num_vfs(
            ctx.paths, ctx.writer, found.address, want, current=current, timeout_s=timeout
        )
    except Unavailable as e:
        # The write is still running in the kernel; recover() settles it.
        raise Unavailable(
            f"{where}: {e.message}; intent {intent} stays pending until the agent reconciles"
        ) from e
    except NicwardenError as e:
        ctx.store.roll_back_intent(intent)
        now = pci.num_vfs(ctx.paths, found.address) or 0
        raise type(e)(
            f"{where}: setting {want} VFs failed: {e.message}; it now has {now}", e.details
        ) from e
    # The kernel has made the change: record that before waiting on drivers.
    ctx.store.complete_intent(intent)
    _wait_for_vfs(ctx, found.address, want, timeout, where)
    _bring_up(ctx, found.address)
    log.info("%s: numvfs %d -> %d", where, current, want)
    return NumVfsResult(found.address, found.name, current, want, True)


def _bring_up(ctx: DeviceCtx, pf_address: str) -> None:
    """New kernel VFs come up administratively down, which the device plugin
    reports Unhealthy: a VF is provisioned to be handed out, so bring it up."""
    pf = next((p for p in ctx.inventory.rescan().pfs if p.address == pf_address), None)
    for vf in pf.vfs if pf else ():
        nd = vf.fn.netdev
        if nd is not None and nd.operstate == "down":
            try:
                ctx.netdevs.set_link(nd.name, up=True)
            except NicwardenError as e:  # health will say so; provisioning went through
                log.warning("cannot bring VF %s up: %s", nd.name, e)


def _wait_for_vfs(ctx: DeviceCtx, address: str, n: int, timeout: float, where: str) -> None:
    # With autoprobe off the kernel creates VFs without binding any driver.
    autoprobe = pci.drivers_autoprobe(ctx.paths, address)
    deadline = time.monotonic() + timeout
    while True:
        pf = next((p for p in ctx.inventory.rescan().pfs if p.address == address), None)
        vfs = pf.vfs if pf else ()
        bound = sum(1 for vf in vfs if vf.fn.driver)
        # The count attribute and the virtfn links change at different
        # moments: the next change reads the count, so wait for both.
        count = pf.num_vfs if pf else -1
        if count == n and len(vfs) == n and (not autoprobe or bound == n):
            return
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"{where}: sriov_numvfs reads {count}; {len(vfs)} of {n} VFs present,"
                f" {bound} with a driver, {timeout:g}s after the change"
            )
        time.sleep(ctx.poll_s)


def recover(ctx: DeviceCtx) -> list[Recovered]:
    """Settle numvfs intents a crash (or a write that outlived its timeout)
    left pending: done if the PF has the count it was going to, otherwise
    rolled back and logged, for converge to retry."""
    out = []
    for intent in ctx.store.pending_intents(NUMVFS_INTENT):
        now = pci.num_vfs(ctx.paths, intent.target)
        want = intent.payload.get("to")
        if now == want:
            ctx.store.complete_intent(intent.id)
            out.append(Recovered(intent.id, intent.target, "completed", f"{now} VFs"))
            continue
        ctx.store.roll_back_intent(intent.id)
        detail = f"interrupted: {now} VFs, wanted {want}"
        log.warning("numvfs change on %s was %s", intent.target, detail)
        out.append(Recovered(intent.id, intent.target, "rolled_back", detail))
    return out
