from __future__ import annotations

import json
import stat
from pathlib import Path

from nicwarden.deviceplugin.devinfo import device_info, remove_device_infos, write_device_info

A = "0000:18:02.1"
B = "0000:18:02.2"


def test_content() -> None:
    assert device_info(A, "0000:18:00.0", None) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": A, "pf-pci-address": "0000:18:00.0"},
    }
    assert device_info(A, None, "/dev/vhost-net")["pci"] == {
        "pci-address": A,
        "vhost-net": "/dev/vhost-net",
    }


def test_rewrite_replaces_read_only_file(tmp_path: Path) -> None:
    path = write_device_info(tmp_path, "a.com/net", A, device_info(A, None, None))
    assert path == tmp_path / "dp" / f"a.com-net-{A}-device.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    write_device_info(tmp_path, "a.com/net", A, device_info(A, "0000:18:00.0", None))
    assert json.loads(path.read_text())["pci"]["pf-pci-address"] == "0000:18:00.0"
    assert [p.name for p in (tmp_path / "dp").iterdir()] == [path.name]


def test_remove_only_this_resource(tmp_path: Path) -> None:
    for resource in ("a.com/net", "a.com/net-bar", "b.com/net"):
        for addr in (A, B):
            write_device_info(tmp_path, resource, addr, device_info(addr, None, None))
    (tmp_path / "dp" / "a.com-net-notes.txt").write_text("not ours")
    removed = remove_device_infos(tmp_path, "a.com/net")
    assert sorted(p.name for p in removed) == [
        f"a.com-net-{A}-device.json",
        f"a.com-net-{B}-device.json",
    ]
    left = sorted(p.name for p in (tmp_path / "dp").iterdir())
    assert left == sorted(
        ["a.com-net-notes.txt"]
        + [f"{r}-{x}-device.json" for r in ("a.com-net-bar", "b.com-net") for x in (A, B)]
    )


def test_remove_without_directory(tmp_path: Path) -> None:
    assert remove_device_infos(tmp_path / "absent", "a.com/net") == []
