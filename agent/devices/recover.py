"""Settling, at agent start, the device changes a crash interrupted: each
kind of change (driver binding, VF count, VF attributes) recorded an intent
before touching the kernel, and its own ``recover()`` finishes or undoes it.
Runs before the agent takes requests, so nothing races it."""

from __future__ import annotations

import logging

from nicwarden.agent.devices import binding, numvfs, vfsettings
from nicwarden.agent.devices.context import DeviceCtx, Recovered

log = logging.getLogger(__name__)


def recover(ctx: DeviceCtx) -> list[Recovered]:
    """Driver moves first: a VF count or attribute change acts on the VFs as
    they end up."""
    done = [*binding.recover(ctx), *numvfs.recover(ctx), *vfsettings.recover(ctx)]
    for r in done:
        log.info(
            "recovered interrupted device change",
            extra={
                "intent": r.intent,
                "target": r.target,
                "outcome": r.outcome,
                "detail": r.detail,
            },
        )
    return done
