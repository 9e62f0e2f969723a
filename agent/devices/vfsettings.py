"""Setting a VF's PF-side attributes (MAC, VLAN, spoof check, trust, link
state, rates) from the CLI, all or nothing.

The kernel takes these one netlink request per attribute group, so a change
can stop half-way. The VF's original attributes go on record (an intent)
before the first request; a failure puts them back, and a crash leaves the
intent for :func:`recover`, which puts them back at start: the caller never
heard that the change succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

from nicwarden.agent.devices.binding import find_vf
from nicwarden.agent.devices.context import DeviceCtx, Recovered
from nicwarden.agent.errors import (
    HostError,
    InvalidArgument,
    NicwardenError,
    Unavailable,
    Unsupported,
)
from nicwarden.agent.faults import crash_point
from nicwarden.agent.host.vfnetlink import VfSettings, validate
from nicwarden.agent.model import VF

log = logging.getLogger(__name__)

VF_SETTINGS_INTENT = "vf-settings"
# Crash points (agent/faults.py): after the first of several attribute
# groups, and after all of them but before the intent is closed.
CRASH_PARTIAL = "vf-settings-partial"
CRASH_APPLIED = "vf-settings-applied"

# Attributes the kernel takes in one request: the VLAN carries its priority
# and protocol, and rates are set as a pair.
_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"mac"}),
    frozenset({"vlan", "qos", "vlan_proto"}),
    frozenset({"spoofchk"}),
    frozenset({"trust"}),
    frozenset({"link_state"}),
    frozenset({"min_tx_rate", "max_tx_rate"}),
)
_ALL = frozenset(f.name for f in fields(VfSettings))


@dataclass(frozen=True)
class VfChange:
    vf: str
    before: VfSettings
    after: VfSettings


def steps(settings: VfSettings) -> list[VfSettings]:
    """``settings`` split into the requests the kernel takes, in a fixed order."""
    given = set(settings.given())
    out = []
    for group in _GROUPS:
        part = {name: getattr(settings, name) for name in sorted(group & given)}
        if part:
            out.append(VfSettings(**part))
    return out


def restoring(before: VfSettings, touched: Iterable[str]) -> VfSettings:
    """The original values of what a change touched (whole groups: restoring
    a VLAN restores its priority and protocol too)."""
    names: set[str] = set()
    for group in _GROUPS:
        if group & set(touched):
            names |= group
    values = {n: getattr(before, n) for n in sorted(names) if getattr(before, n) is not None}
    if "vlan" not in values:  # qos and protocol travel only with a VLAN
        values.pop("qos", None)
        values.pop("vlan_proto", None)
    return VfSettings(**values)


def _pf_name(vf: VF) -> str:
    if vf.pf_name is None:
        raise Unavailable(f"PF {vf.pf_address} has no netdev: VF attributes are set through it")
    return vf.pf_name


def set_vf(ctx: DeviceCtx, key: str, settings: VfSettings) -> VfChange:
    """Apply ``settings`` (None fields stay as they are) to the VF at ``key``."""
    vf, _pf = find_vf(
        ctx,
        key,
        "VF attributes are set per VF: name one of its VFs (nicwardenctl devices --pf PF)",
    )
    pf_name = _pf_name(vf)
    given = settings.given()
    if not given:
        raise InvalidArgument("nothing to set: give at least one VF attribute")
    validate(vf.index, settings)  # bad input is refused before anything is recorded
    before = ctx.vfconf.get(pf_name, vf.index)
    payload = {
        "pf": vf.pf_address,
        "index": vf.index,
        "before": asdict(before),
        "fields": sorted(given),
    }
    intent = ctx.store.begin_intent(VF_SETTINGS_INTENT, vf.address, payload)
    requests = steps(settings)
    applied: list[str] = []
    try:
        for n, request in enumerate(requests):
            ctx.vfconf.set(pf_name, vf.index, request)
            applied += request.given()
            if n + 1 < len(requests):
                crash_point(CRASH_PARTIAL)
        crash_point(CRASH_APPLIED)
    except NicwardenError as e:
        # A refused request changed nothing: only the ones before it go back.
        _undo(ctx, intent, vf, pf_name, restoring(before, applied), e)
        raise type(e)(
            f"VF {vf.address}: {e.message}; its attributes were put back", e.details
        ) from e
    ctx.store.complete_intent(intent)
    after = ctx.vfconf.get(pf_name, vf.index)
    log.info("VF %s attributes set: %s", vf.address, ", ".join(given))
    return VfChange(vf.address, before, after)


def _put_back(ctx: DeviceCtx, pf_name: str, index: int, original: VfSettings) -> None:
    """Restore ``original`` one request at a time. A request the driver does
    not support is skipped: it cannot have changed that attribute either."""
    for request in steps(original):
        try:
            ctx.vfconf.set(pf_name, index, request)
        except Unsupported as e:
            log.warning("VF %d of %s: not restoring %s: %s", index, pf_name, request.given(), e)


def _undo(
    ctx: DeviceCtx,
    intent: int,
    vf: VF,
    pf_name: str,
    original: VfSettings,
    cause: NicwardenError,
) -> None:
    try:
        _put_back(ctx, pf_name, vf.index, original)
    except NicwardenError as again:
        raise HostError(
            f"VF {vf.address}: {cause}; putting its attributes back also failed ({again});"
            f" intent {intent} stays pending for recovery at agent start"
        ) from cause
    ctx.store.roll_back_intent(intent)


def recover(ctx: DeviceCtx) -> list[Recovered]:
    """Put back the attributes of VF changes a crash interrupted."""
    out = []
    inventory = ctx.inventory.rescan()
    for intent in ctx.store.pending_intents(VF_SETTINGS_INTENT):
        found = inventory.find(intent.target)
        if not isinstance(found, VF):
            # Gone with a VF count change: the kernel resets a re-created VF.
            ctx.store.roll_back_intent(intent.id)
            out.append(Recovered(intent.id, intent.target, "rolled_back", "the VF is gone"))
            continue
        raw = intent.payload.get("before") or {}
        before = VfSettings(**{k: v for k, v in raw.items() if k in _ALL})
        touched = intent.payload.get("fields") or before.given()
        original = restoring(before, touched)
        try:
            _put_back(ctx, _pf_name(found), found.index, original)
        except NicwardenError as e:
            log.error("cannot settle VF settings intent %d for %s: %s", intent.id, found.address, e)
            out.append(Recovered(intent.id, found.address, "failed", str(e)))
            continue
        ctx.store.roll_back_intent(intent.id)
        detail = f"put back {', '.join(original.given()) or 'nothing'}"
        log.warning("VF %s attribute change was interrupted: %s", found.address, detail)
        out.append(Recovered(intent.id, found.address, "rolled_back", detail))
    return out
