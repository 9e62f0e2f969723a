"""Root-only unix sockets: claim a path safely (refuse a live owner, replace
a stale file a dead process left behind) and lock it down."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from nicwarden.agent.errors import AlreadyExists, HostError

log = logging.getLogger(__name__)


def claim(path: Path, owner: str) -> None:
    """Prepare ``path`` for bind(): parent created 0700 when missing, no live
    server on it, no stale file a dead process left behind."""
    _make_parent(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyExists(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as err:
        # Only "nobody listens" means stale; anything else is not ours to judge.
        if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise HostError(f"cannot probe socket {path}: {err.strerror}") from err
        log.info("removing stale socket %s left by a dead process", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise AlreadyExists(f"{path} is in use by a running {owner}; refusing to start a second one")


def _make_parent(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        # An existing directory (say /run) is not ours to re-mode.
        return
    except OSError as e:
        raise HostError(f"cannot create socket directory {directory}: {e.strerror}") from e
    # mkdir's mode is filtered through the umask; state it exactly.
    os.chmod(directory, 0o700)


def lock_down(path: Path) -> None:
    os.chmod(path, 0o600)


def release(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
