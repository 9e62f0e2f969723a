"""The agent's OS threads carry their Python roles as names.

``top -H``, ``ps -L``, ``perf`` and ``/proc/<pid>/task/*/comm`` otherwise
show every thread as ``nicwarden-agent``, so nobody outside the process can
tell the policy worker from an inventory scan. Linux keeps 15 bytes of a
thread's name; the role (``thread_role``) is what is kept, and
``nicwarden_thread_cpu_seconds_total`` counts CPU by the same roles.
The main thread keeps the process's name: ``ps``, ``pgrep`` and
``pkill nicwarden-agent`` go by it.
"""

from __future__ import annotations

import logging
import re
import threading

log = logging.getLogger(__name__)

COMM_MAX = 15  # TASK_COMM_LEN - 1

# "grpc_3", "Thread-7 (serve_forever)", "sysfs-write:sriov_numvfs",
# "cni-http /run/nicwarden/cni.sock": one role each, whatever the instance.
_INSTANCE = re.compile(r"^Thread-\d+ \((?P<target>[^)]*)\)$|([_:-]\d+)+$|:.*$| .*$")


def thread_role(name: str) -> str:
    """A thread's name without what differs between instances of its role."""
    m = _INSTANCE.search(name)
    if m is None:
        return name
    if m.group("target") is not None:
        return m.group("target")
    return name[: m.start()] or name


class ThreadNamer:
    """Names threads once each; call :meth:`tick` from a loop that runs
    anyway (new threads are named within one tick of starting)."""

    def __init__(self, task_dir: str = "/proc/self/task") -> None:
        self._task_dir = task_dir
        self._named: set[int] = set()

    def tick(self) -> int:
        """Name the threads not named yet; returns how many were."""
        alive: set[int] = set()
        count = 0
        main = threading.main_thread()
        for t in threading.enumerate():
            tid = t.native_id
            if tid is None or t is main:
                continue
            alive.add(tid)
            if tid in self._named:
                continue
            self._named.add(tid)
            try:
                with open(f"{self._task_dir}/{tid}/comm", "w") as f:
                    f.write(thread_role(t.name)[:COMM_MAX])
                count += 1
            except OSError as e:  # the thread just ended, or /proc is read-only
                log.debug("cannot name thread %s: %s", tid, e)
        self._named &= alive  # a reused tid is a new thread
        return count
