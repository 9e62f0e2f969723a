"""Install the CNI shim into a CNI bin directory, atomically.

The runtime may exec the plugin at any moment (kubelet retries sandboxes), so
the file is written beside the target and renamed over it: an exec sees the
old complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import os
from pathlib import Path

from nicwarden.agent.files import atomic_write
from nicwarden.cni import shim

PLUGIN_NAME = "nicwarden"


def install_shim(bin_dir: Path, python: str = "/usr/bin/python3", name: str = PLUGIN_NAME) -> Path:
    if not os.path.isabs(python):
        raise ValueError(f"python interpreter must be an absolute path, got {python!r}")
    source = Path(shim.__file__).read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    text = f"#!{python} -IS\n{body}"
    target = bin_dir / name
    atomic_write(target, text, 0o755, fsync=True)
    return target


def uninstall_shim(bin_dir: Path, name: str = PLUGIN_NAME) -> bool:
    target = bin_dir / name
    if not target.exists():
        return False
    target.unlink()
    return True
