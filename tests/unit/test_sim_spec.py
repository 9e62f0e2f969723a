from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent.errors import ConfigError
from nicwarden.agent.sim.spec import MAX_VFS, parse_spec


def test_short_form() -> None:
    spec = parse_spec("2x8")
    assert [(p.num_vfs, p.numa, p.model) for p in spec.pfs] == [(8, 0, "e810"), (8, 1, "e810")]
    assert parse_spec(None) == spec


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0x8", "PF count"),
        ("17x1", "PF count"),
        (f"1x{MAX_VFS + 1}", "VFs per PF"),
        ("two", "neither NxM"),
        ({"pfs": []}, "list of 1-16"),
        ({"pfs": [{"model": "nope"}]}, r"pfs\[0\]\.model"),
        ({"pfs": [{"numVfs": 9, "totalVfs": 8}]}, r"pfs\[0\]\.numVfs"),
        ({"pfs": [{"numVfs": True}]}, r"pfs\[0\]\.numVfs"),
        ({"pfs": [{"colour": 1}]}, "unknown key"),
        ({"nodes": []}, "unknown key"),
    ],
)
def test_bad_specs_name_the_problem(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_spec(value)  # type: ignore[arg-type]


def test_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text("pfs:\n  - {model: cx6dx, totalVfs: 16, numVfs: 4, numa: 1}\n")
    (pf,) = parse_spec(str(f)).pfs
    assert (pf.nic.vendor, pf.nic.vf_driver, pf.total_vfs, pf.num_vfs, pf.numa) == (
        "15b3",
        "mlx5_core",
        16,
        4,
        1,
    )
    f.write_text("pfs: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_spec(str(f))
