"""Hostile arguments to the real ``nicwardenctl`` against the real agent.

Every run ends in exit 0, 1 (the agent said no), 2 (usage) or 3 (agent
unreachable), never a traceback; ``-o json`` output parses; the agent keeps
answering and the node is unchanged. Commands that change the node get only
hostile arguments (their valid uses are the end-to-end tests' business)."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.support.agent_proc import CTL
from tests.support.fuzz_node import FuzzNode

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.fuzz]

WORD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=0,
    max_size=30,
)
NUMBER = st.sampled_from(
    ["-1", "0x10", "4294967296", "99999999999999999999", "1e9", "nan", "", " 3"]
)
ADDRESS = st.sampled_from(
    ["0000:18:00.0", "0000:99:00.0", "18:01.1", "zzzz", "", "../../etc", "0000:18:01.9"]
)
READ_ONLY = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                "devices",
                "pools",
                "allocations",
                "attachments",
                "pfs",
                "policies",
                "health",
                "version",
            ]
        )
    ),
    st.tuples(st.just("device"), st.one_of(ADDRESS, WORD)),
    st.tuples(st.just("attachment"), WORD),
    st.tuples(st.just("policies"), st.sampled_from(["-v", "--bogus", "-vvvv"])),
)
HOSTILE_CHANGE = st.one_of(
    st.tuples(st.just("numvfs"), ADDRESS, NUMBER),
    st.tuples(
        st.just("numvfs"), st.sampled_from(["nonexistent0", ""]), st.sampled_from(["1", "2"])
    ),
    st.tuples(
        st.just("vf"),
        ADDRESS,
        st.just("set"),
        st.sampled_from(["vlan", "rate", "mac", "qos", "bogus"]),
        NUMBER,
    ),
    st.tuples(
        st.just("vf"),
        st.just("0000:18:01.0"),
        st.just("set"),
        st.sampled_from(["vlan", "rate", "max_tx_rate"]),
        NUMBER,
    ),
    st.tuples(st.just("bind"), ADDRESS, st.sampled_from(["vfio-pci", "kernel", "nvidia", ""])),
    st.tuples(
        st.just("bind"), st.just("0000:18:01.0"), st.sampled_from(["nvidia", "", "../vfio-pci"])
    ),
    st.tuples(st.sampled_from(["bogus", "", "--", "-h2"]), WORD),
)
GLOBAL = st.lists(
    st.sampled_from(
        [["-o", "json"], ["-o", "yaml"], ["--timeout", "-1"], ["--timeout", "0.5"], []]
    ),
    max_size=2,
)


@pytest.mark.timeout(900)
def test_hostile_cli(node: FuzzNode) -> None:
    @settings(max_examples=examples(40))
    @given(argv=st.one_of(READ_ONLY, HOSTILE_CHANGE), flags=GLOBAL)
    def one(argv: tuple[str, ...], flags: list[list[str]]) -> None:
        opts = [x for f in flags for x in f]
        cmd = [CTL, "--socket", str(node.agent.sock), *opts, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 1, 2, 3), (proc.returncode, proc.stderr)
        if proc.returncode != 0:
            assert proc.stderr.strip(), "a failure must say why"
        if proc.returncode == 0 and "json" in opts and proc.stdout.strip():
            json.loads(proc.stdout)
        node.check()

    one()
