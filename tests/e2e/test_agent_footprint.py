"""The installed agent, once its policy datapath is up, holds none of bcc's
compiler stack: the program was compiled in a child that has exited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import Running, cleanup_node, start_agent, stop_agent
from tests.support.oracle import run

pytestmark = [pytest.mark.root, pytest.mark.e2e]

COMPILER_LIBS = ("libbcc", "libclang", "libLLVM")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Running]:
    r = start_agent(tmp_path)
    try:
        yield r
    finally:
        try:
            stop_agent(r)
        finally:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
            cleanup_node(r.prefix)


def test_agent_with_a_loaded_datapath_maps_no_compiler(agent: Running) -> None:
    pid = agent.proc.pid
    pins = Path("/sys/fs/bpf/nicwarden") / f"sim-{agent.prefix}"
    # The datapath really was compiled and loaded by this agent.
    prog = run("bpftool", "-j", "prog", "show", "pinned", str(pins / "nw_policy"))
    assert '"sched_cls"' in prog.stdout
    health = agent.ctl("health")
    assert any(
        ln.split()[:2] == ["policy", "ok"] and "eBPF datapath loaded" in ln
        for ln in health.stdout.splitlines()
    ), health.stdout
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "[heap]" in maps
    mapped = {ln.split()[-1] for ln in maps.splitlines() if any(x in ln for x in COMPILER_LIBS)}
    assert mapped == set(), f"the agent maps the compiler: {sorted(mapped)}"
    # The build child is gone.
    children = " ".join(
        Path(t, "children").read_text() for t in Path(f"/proc/{pid}/task").iterdir()
    ).split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        assert b"bpf_build" not in cmdline
