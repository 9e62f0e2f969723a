"""`nicwardenctl install-cni`: the static shim binary copied into a CNI bin
dir atomically (temp file beside the target, then rename), mode 0755."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from nicwarden.agent import ctl
from nicwarden.cni.install import install_shim, shim_binary, uninstall_shim
from tests.support.cni_runtime import SHIM, ensure_shim_built


@pytest.fixture(scope="module", autouse=True)
def built_shim() -> None:
    ensure_shim_built()


def version_of(binary: Path) -> str:
    out = subprocess.run(
        [str(binary)],
        input='{"cniVersion":"0.4.0"}',
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION"},  # no PATH, no python: the node may have neither
        check=True,
    )
    return out.stdout


def test_the_installed_binary_is_the_build_output() -> None:
    assert shim_binary() == SHIM


def test_install_is_executable_and_answers_version(tmp_path: Path) -> None:
    target = install_shim(tmp_path / "bin")
    assert target == tmp_path / "bin" / "nicwarden"
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert target.read_bytes() == SHIM.read_bytes()
    assert '"supportedVersions"' in version_of(target)
    assert [p.name for p in target.parent.iterdir()] == ["nicwarden"]  # no temp left


def test_reinstall_replaces_atomically(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.write_bytes(b"\x7fELF old build")
    target = install_shim(tmp_path / "bin", source=old)
    inode = target.stat().st_ino
    held = target.open("rb")  # a runtime that has the old file open keeps it whole
    try:
        install_shim(tmp_path / "bin")
        assert held.read() == b"\x7fELF old build"
    finally:
        held.close()
    assert target.stat().st_ino != inode  # renamed over, not rewritten in place
    assert target.read_bytes() == SHIM.read_bytes()
    assert uninstall_shim(tmp_path / "bin") and not uninstall_shim(tmp_path / "bin")


def test_concurrent_execs_never_see_a_partial_file(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    target = install_shim(bin_dir)
    stop = threading.Event()
    failures: list[str] = []

    def exec_loop() -> None:
        while not stop.is_set():
            try:
                if '"supportedVersions"' not in version_of(target):
                    failures.append("bad output")
            except (subprocess.CalledProcessError, OSError) as e:
                failures.append(repr(e))

    runner = threading.Thread(target=exec_loop)
    runner.start()
    try:
        for _ in range(30):
            install_shim(bin_dir)
    finally:
        stop.set()
        runner.join()
    assert failures == []
    assert sorted(p.name for p in bin_dir.iterdir()) == ["nicwarden"]


def test_missing_or_foreign_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scripts/build-shim"):
        install_shim(tmp_path / "bin", source=tmp_path / "absent")
    script = tmp_path / "shim.py"
    script.write_text("#!/usr/bin/python3 -IS\n")
    with pytest.raises(ValueError, match="not the compiled CNI shim"):
        install_shim(tmp_path / "bin", source=script)
    assert not (tmp_path / "bin" / "nicwarden").exists()


def test_cli_installs_and_takes_no_interpreter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ctl.build_parser().parse_args(["install-cni", "--dir", str(tmp_path / "cni")])
    assert args.local(args) == 0
    assert capsys.readouterr().out == f"installed {tmp_path / 'cni' / 'nicwarden'}\n"
    assert os.access(tmp_path / "cni" / "nicwarden", os.X_OK)
    with pytest.raises(SystemExit):
        ctl.build_parser().parse_args(["install-cni", "--python", "/usr/bin/python3"])


def test_cli_reports_an_unwritable_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ctl.build_parser().parse_args(["install-cni", "--dir", str(blocker / "cni")])
    assert args.local(args) != 0
    assert "cannot install the CNI shim into" in capsys.readouterr().err
