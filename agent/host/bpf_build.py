"""Compile and load the policy program in a short-lived child process.

bcc keeps libbcc, libclang-cpp and libLLVM mapped for the life of the
process that imported it: ~90 MB of RSS an agent would hold forever for a
program it compiles once. So the agent never imports bcc: ``build()`` runs
``python -m nicwarden.agent.host.bpf_build``, which compiles ``policy.c``
(read from disk, as it is at this moment), lets bcc create or reuse the
pinned maps (``BPF_TABLE_PINNED``), loads the program and pins it at
``BUILD_PIN`` in the instance's pin dir. The parent opens that pin, removes
it, and owns the program from then on; the child exits and the kernel keeps
what is pinned. A child (not a fork) because the agent is threaded.

The child reports on stdout with one JSON line, ``{"ok": true}`` or
``{"stage": "compile" | "load", "error": "..."}``; clang's diagnostics and the
verifier's log arrive on its stderr and become the error's details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path

from nicwarden.agent.errors import HostError
from nicwarden.agent.host import errnos
from nicwarden.agent.host.bpfsys import obj_get, obj_pin
from nicwarden.bpf import layout as L

__all__ = ["BUILD_PIN", "BUILD_TIMEOUT", "build"]

log = logging.getLogger(__name__)

# Not a map name, not PROG_PIN nor pin_prog's "<PROG_PIN>_new"; bpffs refuses '.'.
BUILD_PIN = f"{L.PROG_PIN}_build"
# A compile takes seconds; on a loaded 2-core node, tens of seconds.
BUILD_TIMEOUT = 300.0
# Enough of clang's or the verifier's output to name the problem.
_DETAILS_MAX = 8192
_ERROR_MAX = 1024


def build(pin_dir: Path, source: Path, include_dir: Path, timeout: float = BUILD_TIMEOUT) -> int:
    """Compile ``source`` and load it in a child, with its maps pinned in
    ``pin_dir``; returns an fd of the loaded program (the caller owns it).
    Failures are ``HostError``: "compiling <source> failed: ..." as bcc
    would have said it in process, with the child's stderr as details."""
    staged = pin_dir / BUILD_PIN
    cmd = [
        sys.executable,
        "-P",  # a root process: never import from the working directory
        "-m",
        __name__,
        "--pin-dir",
        str(pin_dir),
        "--source",
        str(source),
        "--include",
        str(include_dir),
    ]
    try:
        r = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        _unlink(staged)
        raise HostError(f"compiling {source} failed: no result after {timeout:.0f} s") from e
    details = r.stderr[-_DETAILS_MAX:].strip()
    report = _report(r.stdout)
    if r.returncode != 0 or not report.get("ok"):
        _unlink(staged)
        stage, error = report.get("stage"), report.get("error")
        if not isinstance(error, str):
            error = f"the build process exited with status {r.returncode}"
        error = error[:_ERROR_MAX]
        verb = "loading" if stage == "load" else "compiling"
        raise HostError(f"{verb} {source} failed: {error}", details)
    if details:  # warnings from clang or bcc on a build that worked
        log.debug("policy program build output", extra={"output": details})
    try:
        fd = obj_get(staged)
    except OSError as e:
        raise errnos.from_oserror(e, f"open the built program at {staged}") from e
    _unlink(staged)  # our fd holds the program now
    return fd


def _report(stdout: str) -> dict[str, object]:
    lines = stdout.strip().splitlines()
    with contextlib.suppress(ValueError):
        if lines:
            out = json.loads(lines[-1])
            if isinstance(out, dict):
                return out
    return {}


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- the child ---------------------------------------------------------------------


def _child(pin_dir: Path, source: Path, include_dir: Path) -> dict[str, object]:
    try:
        from bcc import BPF
    except ImportError as e:  # the agent runs on without enforcement; health says why
        return {"stage": "compile", "error": f"bcc is not available: {e}"}

    pin_define = f'-DNW_PIN_DIR="{pin_dir}"'
    try:
        b = BPF(src_file=str(source).encode(), cflags=[f"-I{include_dir}", pin_define])
    except Exception as e:  # bcc raises bare Exception on compile errors
        return {"stage": "compile", "error": str(e)}
    try:
        try:
            fn = b.load_func(L.PROG_FUNC.encode(), BPF.SCHED_CLS)
        except Exception as e:  # the verifier's log went to stderr
            return {"stage": "load", "error": str(e)}
        staged = pin_dir / BUILD_PIN
        _unlink(staged)  # left by a build that died before its parent opened it
        try:
            obj_pin(fn.fd, staged)
        except OSError as e:
            return {"stage": "load", "error": f"pin {staged}: {e.strerror}"}
        return {"ok": True}
    finally:
        b.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__)
    ap.add_argument("--pin-dir", type=Path, required=True)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--include", type=Path, required=True)
    args = ap.parse_args(argv)
    out = _child(args.pin_dir, args.source, args.include)
    sys.stderr.flush()
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
