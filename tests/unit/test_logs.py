"""With the JSON format, everything a process writes to stderr is a JSON
record: log records, warnings, uncaught exceptions in the main thread and in
other threads, raw writes to fd 2 (as C libraries and child processes make)
and prints to sys.stderr."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import os, subprocess, sys, threading, warnings, logging
from nicwarden.agent import logs
logs.setup("info", "json")
logging.getLogger("nicwarden.test").info("hello")
warnings.warn("a deprecation")
t = threading.Thread(target=lambda: 1 / 0, name="doomed")
t.start(); t.join()
os.write(2, b"raw C-library chatter\nsecond line\n")
print("a print to sys.stderr", file=sys.stderr)
subprocess.run(["sh", "-c", "echo child process noise >&2"])
raise ValueError("uncaught in main")
"""


def test_every_stderr_line_is_a_json_record() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    records = []
    for line in r.stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}\n{r.stderr}") from None
    messages = [rec["msg"] for rec in records]
    for expected in (
        "hello",
        "raw C-library chatter",
        "second line",
        "a print to sys.stderr",
        "child process noise",
        "uncaught exception in a thread",
        "uncaught exception",
    ):
        assert expected in messages, (expected, messages)
    assert any("a deprecation" in m for m in messages)
    thread = next(rec for rec in records if rec["msg"] == "uncaught exception in a thread")
    assert "ZeroDivisionError" in thread["exc"] and thread["thread_name"] == "doomed"
    main = next(rec for rec in records if rec["msg"] == "uncaught exception")
    assert "uncaught in main" in main["exc"]
