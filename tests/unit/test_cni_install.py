from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nicwarden.cni.install import install_shim, uninstall_shim


def test_install_is_executable_and_answers_version(tmp_path: Path) -> None:
    target = install_shim(tmp_path / "bin")
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert target.read_text().startswith("#!/usr/bin/python3 -IS\n")
    out = subprocess.run(
        [str(target)],
        input='{"cniVersion":"0.4.0"}',
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION"},
        check=True,
    )
    assert '"supportedVersions"' in out.stdout
    assert [p.name for p in target.parent.iterdir()] == ["nicwarden"]  # no temp left


def test_reinstall_replaces_and_custom_python(tmp_path: Path) -> None:
    install_shim(tmp_path)
    target = install_shim(tmp_path, python="/usr/local/bin/python3")
    assert target.read_text().splitlines()[0] == "#!/usr/local/bin/python3 -IS"
    assert uninstall_shim(tmp_path) and not uninstall_shim(tmp_path)
    with pytest.raises(ValueError, match="absolute"):
        install_shim(tmp_path, python="python3")
