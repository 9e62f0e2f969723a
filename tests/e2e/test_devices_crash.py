"""A crash in the middle of a CLI VF change, end to end: the installed agent
dies at a crash point (agent/faults.py) while `nicwardenctl vf ... set` is
being applied, and the next agent, on the same simulated node, puts the VF's
PF-side attributes back before taking requests.

Oracles independent of the agent: the simulated PF's attribute file (what
the "hardware" holds) and the store's intents table, read with sqlite3."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.devices.vfsettings import CRASH_APPLIED, CRASH_PARTIAL
from nicwarden.agent.host.vfnetlink import VfSettings
from nicwarden.agent.sim.vfconfig import FRESH_VF
from tests.support.agent_proc import cleanup_node, kill_agent, start_agent

pytestmark = [pytest.mark.root, pytest.mark.e2e]

SPEC = "1x4"


def pf_side(tmp: Path, pf: str, index: int) -> VfSettings:
    """The VF's attributes as the simulated PF holds them."""
    path = tmp / "sim" / "vfconfig" / f"{pf}.json"
    if not path.exists():
        return FRESH_VF
    entry = json.loads(path.read_text()).get(str(index))
    return FRESH_VF if entry is None else VfSettings(**entry["settings"])


def intents(tmp: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(f"file:{tmp / 'state' / 'nicwarden.db'}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT kind, target, state FROM intents ORDER BY id"))
    finally:
        db.close()


@pytest.mark.parametrize("point", [CRASH_PARTIAL, CRASH_APPLIED])
def test_crash_mid_vf_change_is_rolled_back_at_restart(tmp_path: Path, point: str) -> None:
    env = dict(os.environ, NICWARDEN_CRASH_AT=point)
    agent = start_agent(tmp_path, spec=SPEC, env=env, persistent=True)
    try:
        vfs: list[Any] = agent.ctl_json("devices", "--role", "vf")["devices"]  # type: ignore[assignment]
        vf = next(d for d in vfs if d["vf_index"] == 1)
        address, pf = vf["pci_address"], vf["pf_address"]
        assert pf_side(tmp_path, pf, 1) == FRESH_VF

        # Two requests to the PF: the VLAN (with its priority), then spoof check.
        out = agent.ctl("vf", address, "set", "vlan", "100", "qos", "3", "spoofchk", "off")
        assert out.returncode != 0, out.stdout  # the agent died mid-request
        agent.proc.wait(timeout=20)
        assert agent.proc.returncode == 137

        # What the crash left on the PF: half the change, or all of it, and
        # the original on record as a pending intent.
        left = pf_side(tmp_path, pf, 1)
        assert (left.vlan, left.qos) == (100, 3)
        assert left.spoofchk is (point != CRASH_APPLIED)  # still the original on
        assert intents(tmp_path) == [("vf-settings", address, "pending")]

        agent = start_agent(tmp_path, spec=SPEC, prefix=agent.prefix, persistent=True)
        # Settled before the agent answered: fully rolled back, intent closed.
        assert pf_side(tmp_path, pf, 1) == FRESH_VF
        assert intents(tmp_path) == [("vf-settings", address, "rolled_back")]
        # The CLI works on the restored VF; its "before" is the original.
        r: Any = agent.ctl_json("vf", address, "set", "trust", "on")
        assert (r["before"]["vlan"], r["before"]["spoofchk"], r["after"]["trust"]) == (
            0,
            True,
            True,
        )
        assert pf_side(tmp_path, pf, 1).trust is True
        assert [s for _, _, s in intents(tmp_path)] == ["rolled_back", "done"]
    finally:
        kill_agent(agent)
        cleanup_node(agent.prefix)
