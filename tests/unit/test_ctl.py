from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent import ctl


def test_unreachable_agent_exits_3_naming_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "nope.sock"
    assert ctl.main(["--socket", str(sock), "devices"]) == ctl.EXIT_UNREACHABLE
    assert str(sock) in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        ctl.main(["frobnicate"])
    assert e.value.code == ctl.EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        ctl.main(["device"])
    assert e.value.code == ctl.EXIT_USAGE


def test_table_alignment() -> None:
    out = ctl.table(["A", "LONGER"], [["xxxx", 1], ["y", 22]])
    assert out.splitlines() == ["A     LONGER", "xxxx  1", "y     22"]
