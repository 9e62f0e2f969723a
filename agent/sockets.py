"""Root-only unix sockets: claim a path safely (refuse a live owner, replace
a stale file a dead process left behind) and lock it down."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from nicwarden.agent.errors import AlreadyExists, HostError


def is_live(path: Path, timeout: float = 0.5) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def claim(path: Path, owner: str) -> None:
    """Prepare ``path`` for bind(): parent 0700, no live server, no stale file."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    except OSError as e:
        raise HostError(f"cannot create socket directory {path.parent}: {e.strerror}") from e
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyExists(f"{path} exists and is not a socket; refusing to replace it")
    if is_live(path):
        raise AlreadyExists(
            f"{path} is in use by a running {owner}; refusing to start a second one"
        )
    try:
        path.unlink()
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise HostError(f"cannot remove stale socket {path}: {e.strerror}") from e


def lock_down(path: Path) -> None:
    os.chmod(path, 0o600)


def release(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
