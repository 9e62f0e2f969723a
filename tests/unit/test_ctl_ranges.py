"""nicwardenctl checks numbers against what the agent and kernel can hold
before building a protobuf (which would raise ValueError on overflow)."""

from __future__ import annotations

import pytest

from nicwarden.agent.ctl import EXIT_USAGE, CtlError, main, parse_vf_settings


@pytest.mark.parametrize(
    "words",
    [
        ["rate", "99999999999999999999"],
        ["max-rate", str(2**32)],
        ["min-rate", str(2**32)],
        ["vlan", "4096"],
        ["qos", "8"],
    ],
)
def test_vf_values_out_of_range_are_usage_errors(words: list[str]) -> None:
    with pytest.raises(CtlError) as info:
        parse_vf_settings(words)
    assert info.value.code == EXIT_USAGE
    assert "out of range" in str(info.value)


def test_vf_values_at_the_limits_are_accepted() -> None:
    s = parse_vf_settings(["vlan", "4095", "qos", "7", "rate", str(2**32 - 1)])
    assert (s.vlan, s.qos, s.max_tx_rate) == (4095, 7, 2**32 - 1)


@pytest.mark.parametrize("count", ["4294967296", "65536", "-1", "many"])
def test_numvfs_out_of_range_exits_2_before_any_call(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--socket", "/nonexistent/agent.sock", "numvfs", "0000:18:00.0", count])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
