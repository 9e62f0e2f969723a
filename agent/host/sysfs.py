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

from nicwarden.agent.errors import Busy, HostError, InvalidArgument, NotFound, Unsupported
from nicwarden.agent.host.paths import HostPaths


def read_attr(path: Path | str) -> str | None:
    """An attribute's stripped text, or None when it does not exist.

    Plain os calls, not pathlib: inventory scans read thousands of these and
    pathlib's per-call overhead tripled scan time."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO, errno.EINVAL, errno.ENOTDIR):
            return None
        raise HostError(f"cannot read {path}: {e.strerror}") from e
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        # Some attributes exist but refuse reads (ENODEV for gone devices).
        if e.errno in (errno.ENODEV, errno.ENXIO, errno.EINVAL):
            return None
        raise HostError(f"cannot read {path}: {e.strerror}") from e
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
        raise HostError(f"cannot read link {path}: {e.strerror}") from e


def translate_write_error(e: OSError, path: Path, value: str) -> Exception:
    what = f"write {value!r} to {path}: {e.strerror or e}"
    if e.errno in (errno.ENOENT, errno.ENODEV):
        return NotFound(what)
    if e.errno == errno.EBUSY:
        return Busy(what)
    if e.errno in (errno.EINVAL, errno.ERANGE):
        return InvalidArgument(what)
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return Unsupported(what)
    return HostError(what)


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
