"""nicwardenctl under careless use: out-of-range numbers, a reader that stops
early, a PF where a VF is meant, a user who is not root. The installed CLI
against an agent on a simulated node."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import CTL, Running, cleanup_node, start_agent, stop_agent

pytestmark = [pytest.mark.root, pytest.mark.e2e]

PF = "0000:18:00.0"
VF = "0000:18:01.0"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = start_agent(tmp_path_factory.mktemp("ctl"), spec="1x4")
    try:
        yield r
    finally:
        stop_agent(r)
        cleanup_node(r.prefix)


@pytest.mark.parametrize(
    "argv",
    [
        ["numvfs", PF, "4294967296"],
        ["numvfs", PF, "65536"],
        ["vf", VF, "set", "rate", "99999999999999999999"],
        ["vf", VF, "set", "max-rate", "4294967296"],
        ["vf", VF, "set", "vlan", "4096"],
        ["vf", VF, "set", "qos", "8"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(agent: Running, argv: list[str]) -> None:
    r = agent.ctl(*argv)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "out of range" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # Nothing changed on the node.
    assert agent.ctl_json("device", VF)["pci_address"] == VF


def test_reader_closing_the_pipe_ends_quietly(agent: Running) -> None:
    proc = subprocess.Popen(
        [CTL, "--socket", str(agent.sock), "-o", "json", "devices"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head` that has already seen enough
    err = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert err == "", err
    assert code == 0


def test_shell_pipe_into_head_is_quiet(agent: Running) -> None:
    r = subprocess.run(
        ["bash", "-c", f"{CTL} --socket {agent.sock} -o json devices | head -n 1; exit 0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "{"
    assert r.stderr == "", r.stderr


def test_vf_settings_on_a_pf_say_it_is_a_pf(agent: Running) -> None:
    r = agent.ctl("vf", PF, "set", "vlan", "10")
    assert r.returncode == 1, r.stderr
    assert f"{PF} is a PF" in r.stderr and "not a VF" in r.stderr, r.stderr
    assert "vfio" not in r.stderr and "bound" not in r.stderr, r.stderr


def _closed_to_others(path: Path) -> Path | None:
    """The first directory above ``path`` that other users cannot enter."""
    for d in Path(path).resolve().parents:
        if not d.stat().st_mode & stat.S_IXOTH:
            return d
    return None


def test_non_root_user_is_told_to_run_as_root(agent: Running, tmp_path: Path) -> None:
    closed = _closed_to_others(Path(CTL))
    if closed is not None:
        # A checkout under a private directory (mktemp -d makes them 0700):
        # nobody could not even start the CLI, so there is nothing to test.
        pytest.skip(f"{closed} is closed to other users: the CLI cannot run as nobody here")
    r = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            CTL,
            "--socket",
            str(agent.sock),
            "version",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "permission denied: run as root" in r.stderr, r.stderr
    assert "does not exist" not in r.stderr
