"""Objects from a directory of manifests (standalone mode and tests).

The directory is polled: every ``poll_interval`` each file's signature
(device, inode, size, mtime_ns, ctime_ns) is compared with the last poll, so
edits, new/deleted/renamed files and atomic replacement by rename (a new
inode) are seen within one interval, with no inotify dependency. ctime is in
the signature because mtime can be set back (``cp -p``, ``touch -d``) while
ctime cannot.

Decisions (also in this package's README.md):
* A file that becomes malformed (or unreadable) keeps its **last good
  objects**, and the problem is reported. Deleting them would be stricter but
  dropping a MultiNetworkPolicy opens traffic, and a half-saved file in an
  editor is the common case; fail closed means keep enforcing. A malformed
  file never read successfully contributes nothing. Per-object problems
  (unknown kind or apiVersion, no name) drop only that object.
* An object defined twice: the first definition in (path, document) order
  wins and the later one is reported, so the result depends only on the
  directory's contents, never on the order files appeared in.
* Names starting with "." are skipped (editor temp files, and the ``..data``
  and ``..<timestamp>`` entries of a mounted ConfigMap, which would otherwise
  duplicate every object).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import KINDS, ObjectKey, describe
from .ledger import Ledger
from .manifests import MAX_FILE_BYTES, SUFFIXES, Manifest, parse_file, summarise, too_large
from .source import Sink, SourceProblem

log = logging.getLogger(__name__)

# Filesystems stamp times from a coarse clock (jiffies; whole seconds on
# some), so a write landing in the same tick as our read leaves the signature
# unchanged. Like git's "racily clean" index entries, a file changed this
# recently is re-read (and compared by digest) on every poll until it is older.
_RACY_NS = 3_000_000_000

Signature = tuple[int, ...]


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class _File:
    signature: Signature
    digest: bytes
    settled: bool
    objects: list[Manifest] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    dropped: int = 0  # problems beyond the per-file cap, only counted


class DirectorySource:
    def __init__(self, path: Path | str, poll_interval: float = 0.2) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._ledger = Ledger()
        self._files: dict[Path, _File] = {}
        self._problems: list[SourceProblem] = []
        self._dir_problems: list[SourceProblem] = []
        self._lock = threading.Lock()  # guards _files/_problems against problems() readers
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    # -- ObjectSource -----------------------------------------------------

    def start(self, sink: Sink) -> None:
        if self._thread is not None:
            raise RuntimeError("DirectorySource already started")
        self._ledger.attach(sink)
        self._stop.clear()
        self._synced.clear()
        self._thread = threading.Thread(target=self._run, name="k8s-directory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._ledger.attach(None)

    def synced(self) -> bool:
        return self._synced.is_set()

    def problems(self) -> list[SourceProblem]:
        with self._lock:
            return list(self._problems)

    # -- internals --------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._poll()
            except Exception:
                log.exception("manifest directory poll failed", extra={"path": str(self.path)})
            else:
                self._synced.set()
            if self._stop.wait(self.poll_interval):
                return

    def _poll(self) -> None:
        now = time.time_ns()
        listed, failed_dirs = _list(self.path)
        files = dict(self._files)
        changed = False
        for path in list(files):
            # Files under a directory we could not list are kept as they were:
            # a transient EACCES must not read as "every policy deleted".
            if path not in listed and not any(d in path.parents for d in failed_dirs):
                del files[path]  # deleted or renamed away
                changed = True
        for path, st in listed.items():
            changed |= self._refresh(files, path, st, now)
        dir_problems = [
            SourceProblem(str(d), "", f"cannot list directory: {err}")
            for d, err in sorted(failed_dirs.items())
        ]
        if not changed and dir_problems == self._dir_problems:
            return
        merged, problems = _merge(files)
        previous = self._problems
        with self._lock:
            self._files = files
            self._dir_problems = dir_problems
            self._problems = dir_problems + problems
        _log_changes(previous, self._problems)
        self._ledger.replace(KINDS, merged)

    def _refresh(self, files: dict[Path, _File], path: Path, st: os.stat_result, now: int) -> bool:
        """Re-read ``path`` if it may have changed; True if its contents did."""
        sig = signature(st)
        settled = now - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS
        old = files.get(path)
        if old is not None and old.signature == sig and old.settled:
            return False
        if st.st_size > MAX_FILE_BYTES:
            # Refused before reading: a huge file must not cost its size in memory.
            new = self._broken(old, sig, [too_large(str(path), st.st_size)])
            if old is not None and (old.objects, old.problems) == (new.objects, new.problems):
                return False
            files[path] = new
            return True
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)  # it may have grown since stat
        except FileNotFoundError:
            return False  # removed since listed: the next poll drops it
        except OSError as exc:
            problem = SourceProblem(str(path), "", f"cannot read: {exc.strerror or exc}")
            new = self._broken(old, sig, [problem])
            if old is not None and (old.objects, old.problems) == (new.objects, new.problems):
                return False  # still unreadable: nothing new to merge
            files[path] = new
            return True
        digest = hashlib.sha256(data).digest()
        if old is not None and old.digest == digest:
            old.signature, old.settled = sig, settled
            return False
        parsed = parse_file(path, data)
        if parsed.broken:
            files[path] = self._broken(old, sig, parsed.problems)
            files[path].digest = digest
        else:
            files[path] = _File(
                sig, digest, settled, parsed.objects, parsed.problems, parsed.dropped
            )
        return True

    @staticmethod
    def _broken(old: _File | None, sig: Signature, problems: list[SourceProblem]) -> _File:
        kept = old.objects if old is not None else []
        note = "; keeping its last good objects" if kept else "; none of its objects are used"
        # Not settled: an unreadable or half-written file is retried every poll.
        return _File(sig, b"", False, kept, [_with_note(p, note) for p in problems])


def _log_changes(before: list[SourceProblem], after: list[SourceProblem]) -> None:
    """Each problem is logged once when it appears and once when it clears:
    polls that find the same problems log nothing."""
    old, new = set(before), set(after)
    for p in after:
        if p not in old:
            log.warning("manifest problem", extra={"problem": str(p)})
    for p in before:
        if p not in new:
            log.info("manifest problem cleared", extra={"problem": str(p)})


def _with_note(problem: SourceProblem, note: str) -> SourceProblem:
    return SourceProblem(problem.file, problem.object, problem.message + note, problem.line)


def _list(root: Path) -> tuple[dict[Path, os.stat_result], dict[Path, str]]:
    """Manifest files under ``root`` (symlinks to files followed, dot-names
    skipped) and the directories that could not be listed."""
    files: dict[Path, os.stat_result] = {}
    failed: dict[Path, str] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            failed[directory] = exc.strerror or str(exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                if path.suffix not in SUFFIXES:
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # vanished, or a dangling symlink: not a manifest now
            if stat.S_ISREG(st.st_mode):
                files[path] = st
    return files, failed


def _merge(files: dict[Path, _File]) -> tuple[dict[ObjectKey, Any], list[SourceProblem]]:
    merged: dict[ObjectKey, Any] = {}
    origin: dict[ObjectKey, tuple[Path, int | None]] = {}
    problems: list[SourceProblem] = []
    for path in sorted(files):
        state = files[path]
        own = list(state.problems)
        for manifest in state.objects:
            first = origin.get(manifest.key)
            if first is not None:
                where = f"{first[0]}:{first[1]}" if first[1] else str(first[0])
                own.append(
                    SourceProblem(
                        str(path),
                        describe(manifest.key),
                        f"duplicate: already defined in {where}, which wins",
                        manifest.line,
                    )
                )
                continue
            merged[manifest.key] = manifest.obj
            origin[manifest.key] = (path, manifest.line)
        problems.extend(summarise(own, str(path), state.dropped))
    return merged, problems
