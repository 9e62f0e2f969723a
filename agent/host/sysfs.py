"""sysfs reads and writes under an injectable root.

The same code reads ``/sys`` on a real node and a fake tree on a simulated
one. Writes go through ``SysfsWriter`` so a simulated node can act on them the
way the kernel would (a ``sriov_numvfs`` write creates VFs, ``unbind`` drops
the driver link); on a real node the kernel itself acts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

from nicwarden.agent.errors import NicwardenError, NotFound
from nicwarden.agent.host import errnos
from nicwarden.agent.host.paths import HostPaths

# A read failing with these means "no such attribute on this device": gone
# devices answer ENODEV/ENXIO, write-only or driver-less attributes EINVAL.
_ABSENT = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EINVAL, errno.ENOTDIR})


def read_attr(path: Path | str) -> str | None:
    """An attribute's stripped text, or None when it does not exist.

    Plain os calls, not pathlib: inventory scans read thousands of these and
    pathlib's per-call overhead tripled scan time."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _ABSENT:
            return None
        raise errnos.from_oserror(e, f"read {path}") from e
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError as e:
        # Some attributes exist but refuse reads (ENODEV for gone devices).
        if e.errno in _ABSENT:
            return None
        raise errnos.from_oserror(e, f"read {path}") from e
    finally:
        os.close(fd)


def read_int(path: Path | str, default: int | None = None, base: int = 10) -> int | None:
    text = read_attr(path)
    if text is None or text == "":
        return default
    try:
        return int(text, base)
    except ValueError:
        return default


def link_name(path: Path | str) -> str | None:
    """Basename of a symlink's target (``driver``, ``iommu_group``), or None."""
    try:
        return os.path.basename(os.readlink(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:  # not a symlink
            return None
        raise errnos.from_oserror(e, f"read link {path}") from e


def translate_write_error(
    e: OSError, path: Path, value: str, overrides: errnos.Overrides = errnos.SYSFS_WRITE
) -> NicwardenError:
    """A failed attribute write, named: the value is the user's, so the
    kernel's EINVAL/ERANGE is ``InvalidArgument`` (``errnos.SYSFS_WRITE``);
    a recipe whose attribute means more passes its own overrides."""
    return errnos.from_oserror(e, f"write {value!r} to {path}", overrides)


class SysfsWriter(Protocol):
    def write(self, path: Path, value: str) -> None: ...


class KernelSysfsWriter:
    """Plain writes: the real kernel acts on them."""

    def write(self, path: Path, value: str) -> None:
        try:
            # Some attributes (bind/unbind) need the whole value in one write().
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            raise translate_write_error(e, path, value) from e
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise translate_write_error(e, path, value) from e
        finally:
            os.close(fd)


def check_root(paths: HostPaths) -> None:
    """Refuse to start on a sysfs root that has no PCI bus: a typo, not an empty node."""
    if not paths.sys.is_dir():
        raise NotFound(f"sysfs root {paths.sys} does not exist")
    if not paths.pci_devices.is_dir():
        raise NotFound(f"sysfs root {paths.sys} has no bus/pci/devices: not a sysfs tree")
