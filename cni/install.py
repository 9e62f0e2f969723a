"""Install the CNI shim into a CNI bin directory, atomically.

The runtime may exec the plugin at any moment (kubelet retries sandboxes), so
the file is written beside the target and renamed over it: an exec sees the
old complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from nicwarden.cni import shim

PLUGIN_NAME = "nicwarden"


def install_shim(bin_dir: Path, python: str = "/usr/bin/python3", name: str = PLUGIN_NAME) -> Path:
    if not os.path.isabs(python):
        raise ValueError(f"python interpreter must be an absolute path, got {python!r}")
    source = Path(shim.__file__).read_text()
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    text = f"#!{python} -IS\n{body}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o755)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def uninstall_shim(bin_dir: Path, name: str = PLUGIN_NAME) -> bool:
    target = bin_dir / name
    if not target.exists():
        return False
    target.unlink()
    return True
