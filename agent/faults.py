"""Named crash points for recovery tests.

``NICWARDEN_CRASH_AT=<point>`` in the agent's environment makes it die at
once (as SIGKILL would: no cleanup, no store commit) when it reaches that
point, so tests can prove a crash anywhere strands nothing. Unset, each point
costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

ENV = "NICWARDEN_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        sys.stderr.write(f"nicwarden: crash point {name} reached, dying\n")
        sys.stderr.flush()
        os._exit(137)
