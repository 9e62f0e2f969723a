"""Bringing the node to the ``sriov:`` desired state: the pure plan
(``plan.py``) applied stage by stage through the operations that record
their intents (numvfs, driver binding)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nicwarden.agent.devices import binding, numvfs
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.devices.plan import (
    STAGES,
    Action,
    BindVf,
    Drift,
    SetNumVfs,
    Skipped,
    plan,
)
from nicwarden.agent.devices.spec import PfPolicy
from nicwarden.agent.errors import NicwardenError

log = logging.getLogger(__name__)


@dataclass
class ConvergeReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)  # what differed before
    remaining: list[Drift] = field(default_factory=list)  # what still differs

    @property
    def converged(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": list(self.applied),
            "skipped": [{"subject": s.subject, "reason": s.reason} for s in self.skipped],
            "drift": [str(d) for d in self.drift],
            "remaining": [str(d) for d in self.remaining],
        }


def drift(ctx: DeviceCtx, desired: Sequence[PfPolicy]) -> ConvergeReport:
    """What converge would find, changing nothing (a dry run)."""
    found = plan(desired, ctx.inventory.rescan(), binding.in_use_from_store(ctx.store))
    return ConvergeReport(
        skipped=list(found.skipped), drift=list(found.drift), remaining=list(found.drift)
    )


def _apply(ctx: DeviceCtx, action: Action) -> None:
    if isinstance(action, SetNumVfs):
        numvfs.set_num_vfs(ctx, action.pf, action.desired)
    elif isinstance(action, BindVf):
        binding.bind(ctx, action.vf, action.target)
    else:
        # No intent: an MTU is idempotent and the next converge re-applies it.
        ctx.netdevs.set_link(action.ifname, mtu=action.desired)


def converge(ctx: DeviceCtx, desired: Sequence[PfPolicy]) -> ConvergeReport:
    """Apply the plan stage by stage (VF counts, then drivers, then MTUs),
    re-planning after each stage because it creates or rebinds the VFs the
    next one acts on. A failing PF is reported and skipped; others go on."""
    in_use = binding.in_use_from_store(ctx.store)
    current = plan(desired, ctx.inventory.rescan(), in_use)
    report = ConvergeReport(skipped=list(current.skipped), drift=list(current.drift))
    failed: set[str] = set()
    for stage in STAGES:
        for action in current.actions:
            if not isinstance(action, stage):
                continue
            if action.pf in failed:
                reason = f"{action.describe()}: not attempted, an earlier step on this PF failed"
                report.skipped.append(Skipped(action.subject, reason))
                continue
            try:
                _apply(ctx, action)
            except NicwardenError as e:
                failed.add(action.pf)
                report.skipped.append(Skipped(action.subject, f"{action.describe()}: {e}"))
                log.warning("sriov converge: %s failed: %s", action.describe(), e)
                continue
            report.applied.append(action.describe())
        current = plan(desired, ctx.inventory.rescan(), in_use)
        for s in current.skipped:
            if s not in report.skipped:
                report.skipped.append(s)
    report.remaining = list(current.drift)
    return report
