"""Structured logs: one JSON object per line (or plain text for humans)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
import types
from typing import TextIO

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        return base + ("" if not extra else " " + " ".join(f"{k}={v}" for k, v in extra.items()))


def setup(level: str, fmt: str) -> None:
    """Route everything the process writes through the root logger, in the
    configured format: records, ``warnings``, uncaught exceptions (main
    thread and others) and, for JSON, raw writes to file descriptor 2 (C
    libraries such as gRPC's core and bcc's compiler, child processes, and
    Python code printing to ``sys.stderr``), one record per line."""
    stream = sys.stderr
    if fmt == "json":
        stream = _capture_stderr()
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
) -> None:
    logging.getLogger("nicwarden").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("nicwarden").error(
        "uncaught exception in a thread",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        extra={"thread_name": name},
    )


def _capture_stderr() -> TextIO:
    """Point fd 2 at a pipe whose lines become log records, and return a
    stream on the original stderr for the handler itself (never the pipe:
    the handler must not feed its own reader)."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    out = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace")
    # sys.stderr keeps writing to fd 2, now the pipe.
    reader = threading.Thread(
        target=_forward_lines, args=(read_end,), name="stderr-to-log", daemon=True
    )
    reader.start()

    def restore() -> None:
        # At exit: fd 2 back to the terminal closes the pipe's last writer,
        # so the reader drains what is left and ends.
        sys.stderr.flush()
        os.dup2(original, 2)
        reader.join(timeout=2.0)

    atexit.register(restore)
    return out


def _forward_lines(fd: int) -> None:
    chatter = logging.getLogger("nicwarden.stderr")
    with os.fdopen(fd, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.strip():
                chatter.warning(line)
