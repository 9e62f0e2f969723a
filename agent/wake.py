"""A pipe that wakes a thread sleeping in poll().

An idle agent's threads sleep on their fd with no timeout instead of waking
every few hundred milliseconds to look at a stop flag (on a VM each wakeup
costs about a millisecond of CPU). The thread polls this pipe's read end
beside its own fd; ``wake()`` makes it readable.
"""

from __future__ import annotations

import contextlib
import os
import threading


class WakePipe:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    @property
    def fd(self) -> int:
        """The end to poll (-1 once closed)."""
        return self._r

    @property
    def closed(self) -> bool:
        return self._r < 0

    def wake(self) -> None:
        if self._w >= 0:
            with contextlib.suppress(BlockingIOError):  # full: a wakeup is pending anyway
                os.write(self._w, b"x")

    def stop_thread(self, thread: threading.Thread | None, timeout: float) -> bool:
        """Wake ``thread`` (already told to stop), wait for it, then close the
        pipe. False when it was stopped before, or is still running after
        ``timeout``: then its poll() still holds its fds, which stay open."""
        if self.closed:
            return False
        self.wake()
        if thread is not None and thread.is_alive():
            thread.join(timeout=timeout)
            if thread.is_alive():
                return False
        self.close()
        return True

    def close(self) -> None:
        """Idempotent; only once no thread polls it any more."""
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1
