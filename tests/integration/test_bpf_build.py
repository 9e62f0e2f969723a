"""The policy program is compiled in a child process (``bpf_build``): the
loading process never maps bcc's compiler stack, and a compile or verifier
failure in the child surfaces as the HostError the loader always gave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nicwarden.agent.errors import HostError
from nicwarden.agent.host import bpf_build, bpf_pins
from nicwarden.agent.host.bpf import BPF_SRC_DIR, POLICY_SOURCE, PolicyDatapath
from nicwarden.agent.host.bpfsys import prog_info
from nicwarden.bpf import layout as L
from tests.support.oracle import run, unique

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
# What bcc maps into a process that compiles: libbcc, libclang-cpp, libLLVM.
COMPILER_LIBS = ("libbcc", "libclang", "libLLVM")

_LOAD_AND_REPORT_MAPS = """
import sys
from nicwarden.agent.host.bpf import PolicyDatapath
dp = PolicyDatapath(sys.argv[1])
try:
    dp.load()
    dp.load()  # the in-place upgrade goes through the same path
    print(dp.prog_id())
    sys.stdout.write(open("/proc/self/maps").read())
finally:
    dp.cleanup()
"""


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    """A pin dir on bpffs of its own; whatever a test leaves there goes."""
    d = Path("/sys/fs/bpf/nicwarden") / unique("b")
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        bpf_pins.remove_all(d)


def compiler_libs(maps: str) -> set[str]:
    return {
        line.split()[-1] for line in maps.splitlines() if any(lib in line for lib in COMPILER_LIBS)
    }


def test_loading_process_never_maps_the_compiler() -> None:
    r = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_REPORT_MAPS, unique("m")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    prog_id, _, maps = r.stdout.partition("\n")
    assert int(prog_id) > 0  # a program really was compiled and loaded
    assert "[heap]" in maps  # really /proc/self/maps
    assert compiler_libs(maps) == set()


def test_the_build_child_does_map_the_compiler(pin_dir: Path) -> None:
    """The oracle above can see the libraries: the child that compiles has them."""
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from nicwarden.agent.host import bpf_build as b; "
            "b._child(*map(b.Path, sys.argv[1:4])); print(open('/proc/self/maps').read())",
            str(pin_dir),
            str(POLICY_SOURCE),
            str(BPF_SRC_DIR),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert {"libbcc", "libLLVM"} <= {
        lib for lib in COMPILER_LIBS for path in compiler_libs(r.stdout) if lib in path
    }


def test_build_hands_over_a_loaded_program_and_leaves_no_staging_pin(pin_dir: Path) -> None:
    fd = bpf_build.build(pin_dir, POLICY_SOURCE, BPF_SRC_DIR)
    try:
        shown = json.loads(run("bpftool", "-j", "prog", "show", "id", str(prog_info(fd).id)).stdout)
        assert (shown["type"], shown["name"]) == ("sched_cls", L.PROG_FUNC[:15])
    finally:
        os.close(fd)
    names = {p.name for p in pin_dir.iterdir()}
    assert bpf_build.BUILD_PIN not in names
    assert {spec.name for spec in L.MAPS} <= names  # the child created the maps


def test_compile_error_is_a_host_error_with_clangs_diagnostics(
    pin_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "broken.c"
    src.write_text('#include "layout.h"\nint nw_policy(struct __sk_buff *skb) { return nope; }\n')
    with pytest.raises(HostError) as e:
        bpf_build.build(pin_dir, src, BPF_SRC_DIR)
    assert e.value.message.startswith(f"compiling {src} failed: ")
    assert "nope" in e.value.details  # clang names the undeclared identifier
    assert list(pin_dir.iterdir()) == []


def test_missing_header_names_the_header(pin_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "nohdr.c"
    src.write_text('#include "nw_no_such_header.h"\n')
    with pytest.raises(HostError, match=f"compiling {src} failed") as e:
        bpf_build.build(pin_dir, src, tmp_path)
    assert "nw_no_such_header.h" in e.value.details
    assert "file not found" in e.value.details


def test_verifier_refusal_is_a_load_error_with_the_log(pin_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "unsafe.c"
    # Reads packet data without a bounds check: compiles, the verifier refuses it.
    src.write_text(
        "int nw_policy(struct __sk_buff *skb) {\n    return *(volatile __u8 *)(long)skb->data;\n}\n"
    )
    with pytest.raises(HostError, match=f"loading {src} failed") as e:
        bpf_build.build(pin_dir, src, tmp_path)
    assert "invalid access to packet" in e.value.details
    assert list(pin_dir.iterdir()) == []


def test_datapath_load_surfaces_a_compile_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "policy.c"
    src.write_text("this is not C\n")
    monkeypatch.setattr("nicwarden.agent.host.bpf.POLICY_SOURCE", src)
    dp = PolicyDatapath(unique("e"))
    try:
        with pytest.raises(HostError, match=f"compiling {src} failed"):
            dp.load()
        assert not dp.loaded
    finally:
        dp.cleanup()
    assert not dp.pin_dir.exists()


def test_a_build_that_outlives_its_timeout_is_killed_and_named(pin_dir: Path) -> None:
    with pytest.raises(HostError, match=f"compiling {POLICY_SOURCE} failed: no result after"):
        bpf_build.build(pin_dir, POLICY_SOURCE, BPF_SRC_DIR, timeout=0.05)
    assert bpf_build.BUILD_PIN not in {p.name for p in pin_dir.iterdir()}
