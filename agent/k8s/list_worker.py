"""List pages parsed in a child process, one child per list of several pages.

Parsing a 100,000-pod list builds and frees a tree of dicts and strings for
every ~6 KiB pod. The agent keeps a few hundred bytes of each, but CPython's
allocator cannot give back arenas that one long-lived record still pins, so
an agent that parsed the list itself kept ~2.7 KB of RSS per pod for good
(``docs/design.md``, "Following a large cluster"). Here a child does the
parsing, the projection and the digest of each item (``list_parse``) and
sends back only the projections, marshalled; when the list is done, the
child exits and its memory goes with it. The child also runs on another
core while the agent feeds the previous page to the policy engine, which is
where most of a sync's time went.

A child (``python -m``), not a fork: the agent is threaded. The child talks
over its stdin and stdout in frames: an 8-byte big-endian length, then the
page's bytes as the server sent them, or the reply as a ``marshal`` payload
(the agent and the child are the same interpreter, and marshal keeps
interned strings interned). It exits when its stdin closes,
so an agent that dies leaves no child behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import time
from typing import Any

from .kinds import RESOURCES, ResourceType
from .list_json import no_pause
from .list_parse import Page, parse_page

__all__ = ["ListWorker", "ListWorkerError", "PageParser", "page_parser"]

log = logging.getLogger(__name__)

_LEN = struct.Struct(">Q")
# A reply is smaller than the page it answers (projections drop most of each
# object); anything claiming more than this is not a reply.
MAX_FRAME = 1 << 32
# Parsing a 3 MB page takes tens of milliseconds; this only catches a child
# that hangs, on a node loaded to a crawl.
PAGE_TIMEOUT = 120.0
# Linux's F_SETPIPE_SZ, and the size asked for: the default maximum for
# unprivileged processes (/proc/sys/fs/pipe-max-size).
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class ListWorkerError(RuntimeError):
    """The child failed: it died, hung, or broke the protocol."""


class ListWorker:
    def __init__(self, resource: ResourceType, timeout: float = PAGE_TIMEOUT) -> None:
        self.resource = resource
        self._timeout = timeout
        cmd = [
            sys.executable,
            "-P",
            "-m",
            __name__,
            resource.kind,
        ]  # -P: root; never import from cwd
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out = self._proc.stdin.fileno()
        self._in = self._proc.stdout.fileno()
        self._pending = False  # a page was sent and its answer not read
        for fd in (self._out, self._in):
            # A page is megabytes: with the default 64 KiB pipe, the two
            # processes would take turns dozens of times per page.
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
            os.set_blocking(fd, False)

    def parse(self, data: bytes) -> Page:
        """The page, as ``list_parse.parse_page`` would give it;
        ``ValueError`` for a page that is not JSON."""
        self.send(data)
        return self.receive()

    def send(self, data: bytes) -> None:
        """Hand the child a page; it parses while the caller does other work
        (fetches the next page), until ``receive``. One page at a time."""
        deadline = time.monotonic() + self._timeout
        self._pending = True
        self._write(_LEN.pack(len(data)), deadline)
        self._write(data, deadline)

    def receive(self) -> Page:
        """The page last sent, parsed."""
        deadline = time.monotonic() + self._timeout
        (size,) = _LEN.unpack(self._read(_LEN.size, deadline))
        self._pending = False
        if size > MAX_FRAME:
            raise self._broken(f"a reply frame of {size} bytes")
        try:
            reply = marshal.loads(self._read(size, deadline))
        except (EOFError, ValueError, TypeError) as e:
            raise self._broken(f"an unreadable reply ({e})") from e
        if not isinstance(reply, tuple) or not reply:
            raise self._broken("a reply of the wrong shape")
        if reply[0] == "error" and len(reply) == 3:
            if reply[1] == "ValueError":
                raise ValueError(reply[2])
            raise ListWorkerError(f"{reply[1]}: {reply[2]}")
        if reply[0] != "ok" or len(reply) != 5 or not isinstance(reply[4], list):
            raise self._broken("a reply of the wrong shape")
        return Page(reply[1], reply[2], reply[3], reply[4])

    def close(self) -> None:
        proc = self._proc
        if self._pending:
            # A list given up with a page in the child: its answer is not
            # wanted, and the child would block writing it.
            proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            proc.stdout.close()  # type: ignore[union-attr]

    def __enter__(self) -> ListWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pipes ----------------------------------------------------------

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self._out, deadline, write=True)
            try:
                sent = os.write(self._out, view)
            except BlockingIOError:
                continue
            except BrokenPipeError as e:
                raise self._broken("exited") from e
            view = view[sent:]

    def _read(self, n: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        while n:
            self._wait(self._in, deadline, write=False)
            try:
                chunk = os.read(self._in, n)
            except BlockingIOError:
                continue
            if not chunk:
                raise self._broken("exited")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _wait(self, fd: int, deadline: float, *, write: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            self._proc.kill()
            raise ListWorkerError(
                f"the {self.resource.plural} list parser gave no answer in {self._timeout:.0f} s"
            )
        if write:
            select.select([], [fd], [], left)
        else:
            select.select([fd], [], [], left)

    def _broken(self, what: str) -> ListWorkerError:
        self._proc.kill()
        code = self._proc.wait()
        return ListWorkerError(
            f"the {self.resource.plural} list parser sent {what} (status {code})"
        )


class _InProcess:
    """The same parse, here: for a list of one page, or when no child can be
    started."""

    def __init__(self, resource: ResourceType, pause: Any) -> None:
        self.resource = resource
        self._pause = pause
        self._data = b""

    def parse(self, data: bytes) -> Page:
        return parse_page(self.resource, data, self._pause)

    def send(self, data: bytes) -> None:
        self._data = data

    def receive(self) -> Page:
        data, self._data = self._data, b""
        return parse_page(self.resource, data, self._pause)

    def close(self) -> None:
        pass

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


PageParser = ListWorker | _InProcess
_warned = False


def page_parser(resource: ResourceType, pause: Any, *, child: bool = True) -> PageParser:
    """A child for one list; the in-process parser when ``child`` is False
    (a list of one page: a few hundred objects are not worth a process) or
    when no child can be started (logged once: the agent then keeps the
    parse's memory)."""
    global _warned
    if not child:
        return _InProcess(resource, pause)
    try:
        return ListWorker(resource)
    except OSError as e:
        if not _warned:
            _warned = True
            log.warning(
                "cannot start the list parser process; parsing lists in the agent",
                extra={"error": str(e), "executable": sys.executable},
            )
        return _InProcess(resource, pause)


# -- the child ------------------------------------------------------------------------


def _serve(resource: ResourceType) -> int:
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    # Nothing but frames may reach the agent on fd 1.
    os.dup2(2, 1)
    while True:
        head = inp.read(_LEN.size)
        if len(head) < _LEN.size:
            return 0  # the agent closed our stdin: the list is done
        (size,) = _LEN.unpack(head)
        data = inp.read(size)
        if len(data) < size:
            return 0
        try:
            page = parse_page(resource, data, no_pause)
            del data
            reply = marshal.dumps(
                ("ok", page.list_kind, page.resource_version, page.continue_token, page.items)
            )
        except Exception as e:  # reported to the agent, which fails the list
            kind = "ValueError" if isinstance(e, ValueError) else type(e).__name__
            reply = marshal.dumps(("error", kind, str(e)[:1024]))
        out.write(_LEN.pack(len(reply)))
        out.write(reply)
        out.flush()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in RESOURCES:
        sys.exit(f"usage: {sys.argv[0]} KIND  (one of {', '.join(RESOURCES)})")
    sys.exit(_serve(RESOURCES[sys.argv[1]]))
