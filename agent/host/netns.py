"""Entering network namespaces: the one place the agent calls setns(2).

Everything that must happen inside a pod's netns (opening a netlink socket,
reading the netns cookie) goes through :func:`run_in`; a socket stays bound
to the netns it was created in, so a caller enters only to open one.

Why the calling thread, with a guaranteed return, rather than a thread of
its own per call (measured by ``tests/bench/bench_netns.py``):

* pyroute2 0.9's ``IPRoute`` keeps one socket *per thread*: an ``IPRoute``
  created on a throwaway thread inside a netns silently opens a fresh socket
  in the caller's netns the first time another thread uses it (observed:
  the host's links listed instead of the pod's). Only the thread that will
  use the socket can create it in the right netns.
* It is cheaper (one run of the bench on a loaded 2-core machine): entering
  and leaving costs ~0.03 ms against ~0.6 ms for a thread per entry (x22);
  opening an ``IPRoute`` ~0.7 ms against ~2.1 ms (x3), and against ~12 ms
  for pyroute2's ``NetNS``, which forks a helper process (x17).

setns(2) moves only the calling thread, so concurrent callers on other
threads never see each other's namespace. The return uses an fd of the
thread's own netns opened before leaving; if even that fails the thread
would go on acting in a pod's netns while believing it is home, so the
process exits instead (the DaemonSet restarts it, and every kernel change is
recorded before it is made).
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nicwarden.agent.errors import NotFound
from nicwarden.agent.host import errnos

log = logging.getLogger(__name__)

T = TypeVar("T")

# Named network namespaces live here (``ip netns add``; /var/run is a link to /run).
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h

_libc = ct.CDLL(None, use_errno=True)

Target = str | Path


def resolve(target: Target, netns_dir: Path = NETNS_DIR) -> Path:
    """A path (``/proc/<pid>/ns/net``, ``/run/netns/x``) as given; a bare
    name (``x``) under ``netns_dir``."""
    text = str(target)
    if not text:
        raise NotFound("empty network namespace name")
    return Path(text) if "/" in text else netns_dir / text


def exists(target: Target, netns_dir: Path = NETNS_DIR) -> bool:
    return resolve(target, netns_dir).exists()


def open_fd(target: Target | None, netns_dir: Path = NETNS_DIR) -> int:
    """An fd of the netns (the caller closes it); ``None``: the agent's own
    netns, the host's (the agent runs with hostNetwork)."""
    path = Path("/proc/self/ns/net") if target is None else resolve(target, netns_dir)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise errnos.from_oserror(e, f"open network namespace {path}") from e


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ct.get_errno()
        raise errnos.named(code, f"enter network namespace {what}", errnos.SETNS)


def _return_home(home: int) -> None:
    if _libc.setns(home, CLONE_NEWNET) == 0:
        return
    code = ct.get_errno()
    log.critical(
        "cannot return thread %s to its network namespace: %s; exiting",
        threading.current_thread().name,
        os.strerror(code),
    )
    # Not an exception: a handler up the stack could catch it and let the
    # thread carry on in the wrong netns.
    os._exit(70)


def run_in(target: Target, fn: Callable[[], T], netns_dir: Path = NETNS_DIR) -> T:
    """Run ``fn`` on this thread inside ``target``'s netns and come back,
    whatever ``fn`` does. Keep ``fn`` short: open what is needed and leave.

    A missing netns raises NotFound before anything changes."""
    path = resolve(target, netns_dir)
    fd = open_fd(path)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd, str(path))  # on failure we never left
            try:
                return fn()
            finally:
                _return_home(home)
        finally:
            os.close(home)
    finally:
        os.close(fd)


def _own_cookie() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def cookie(target: Target | None = None, netns_dir: Path = NETNS_DIR) -> int:
    """The netns cookie (``SO_NETNS_COOKIE``): unlike an inode number, never
    reused while the agent runs. ``None``: this thread's netns."""
    if target is None:
        return _own_cookie()
    return run_in(target, _own_cookie, netns_dir)
