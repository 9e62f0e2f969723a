"""PCI recipes for SR-IOV and vfio: the kernel's ways of changing a PCI
function, as typed operations over sysfs and the dev root.

Reads go straight to sysfs; writes go through a ``SysfsWriter`` (the kernel
on a real node, the simulator on a simulated one) in a worker thread with a
deadline (:func:`timed_write`), because the kernel may sit on a write for
minutes and no request may wait on it forever.

The recipes:

* VF count: the kernel refuses to change a non-zero ``sriov_numvfs``
  directly, so a change goes through 0 (:func:`set_num_vfs`).
* Driver move (:func:`bind_driver`): set ``driver_override`` (so only the
  chosen driver may claim the function: the old driver cannot grab it back on
  probe, and vfio-pci, which has no ID table, can), unbind from the current
  driver, ask the bus to probe, then clear the override so a later probe is
  not pinned.
* vfio: a function bound to vfio-pci is opened through its IOMMU group's node
  ``/dev/vfio/<group>`` (``noiommu-<group>`` when vfio runs without an IOMMU),
  which udev creates shortly after the bind.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from nicwarden.agent.errors import HostError, NicwardenError, NotFound, Unavailable
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import SysfsWriter, link_name, read_attr, read_int
from nicwarden.agent.model import VFIO_DRIVER

NOIOMMU_PARAM = Path("module/vfio/parameters/enable_unsafe_noiommu_mode")
VHOST_NODES = (Path("vhost-net"), Path("net/tun"))
_CLEARED_OVERRIDE = ("", "(null)")


def timed_write(writer: SysfsWriter, path: Path, value: str, timeout_s: float) -> None:
    """One sysfs write in a worker thread, so a write the kernel sits on (an
    i40e ``sriov_numvfs`` write can block for minutes; unbinding vfio-pci
    waits for the device's user to let go) cannot block the caller forever.

    A write that times out keeps running; the thread is a daemon so it does
    not hold the agent's exit, and the caller's intent stays pending.
    """
    done = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            writer.write(path, value)
        except BaseException as e:  # handed to the waiting caller
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=work, name=f"sysfs-write:{path.name}", daemon=True).start()
    if not done.wait(timeout_s):
        raise Unavailable(
            f"writing {value.strip()!r} to {path} has not returned after {timeout_s:g}s;"
            " the kernel is still working on it"
        )
    if failure:
        raise failure[0]


def _step(writer: SysfsWriter, path: Path, value: str, timeout_s: float, step: str) -> None:
    """A timed write whose error names the recipe step it belongs to."""
    try:
        timed_write(writer, path, value, timeout_s)
    except NicwardenError as e:
        raise type(e)(f"{step}: {e.message}", e.details) from e


# -- reads ------------------------------------------------------------------


def device_exists(paths: HostPaths, address: str) -> bool:
    return (paths.pci_devices / address).is_dir()


def bound_driver(paths: HostPaths, address: str) -> str | None:
    return link_name(paths.pci_devices / address / "driver")


def driver_override(paths: HostPaths, address: str) -> str | None:
    """The override in force, or None (none set, or no such device)."""
    value = read_attr(paths.pci_devices / address / "driver_override")
    return None if value is None or value in _CLEARED_OVERRIDE else value


def num_vfs(paths: HostPaths, pf: str) -> int | None:
    return read_int(paths.pci_devices / pf / "sriov_numvfs")


def drivers_autoprobe(paths: HostPaths, pf: str) -> bool:
    """Whether the kernel binds drivers to the PF's new VFs by itself."""
    return read_attr(paths.pci_devices / pf / "sriov_drivers_autoprobe") != "0"


def driver_dir(paths: HostPaths, driver: str) -> Path:
    return paths.pci_drivers / driver


def driver_loaded(paths: HostPaths, driver: str) -> bool:
    return driver_dir(paths, driver).is_dir()


def noiommu_param(paths: HostPaths) -> Path:
    return paths.sys / NOIOMMU_PARAM


def noiommu_enabled(paths: HostPaths) -> bool:
    return read_attr(noiommu_param(paths)) in ("Y", "1")


def iommu_group(paths: HostPaths, address: str) -> str | None:
    """The group's name as sysfs links it ("7"), read now: group numbers can
    change across reboots, so they are never cached."""
    return link_name(paths.pci_devices / address / "iommu_group")


def vfio_container(paths: HostPaths) -> Path:
    return paths.vfio / "vfio"


def vfio_node(paths: HostPaths, group: int) -> Path | None:
    """The group's node under the dev root, or None when absent. In no-IOMMU
    mode the kernel names it ``noiommu-<group>``; the IOMMU name wins when
    both exist."""
    for name in (str(group), f"noiommu-{group}"):
        node = paths.vfio / name
        if node.exists():
            return node
    return None


def vfio_nodes(paths: HostPaths, address: str) -> list[Path]:
    """What a DPDK container opens for the function: the vfio container and
    its group's node (where the node would be, when it is not there yet)."""
    group = iommu_group(paths, address)
    if group is None:
        raise NotFound(f"{address} has no IOMMU group")
    found = vfio_node(paths, int(group)) if group.isdigit() else None
    return [vfio_container(paths), found if found is not None else paths.vfio / group]


def vhost_nodes(paths: HostPaths) -> tuple[Path, Path]:
    """``/dev/vhost-net`` and ``/dev/net/tun`` under the dev root."""
    vhost, tun = (paths.dev / rel for rel in VHOST_NODES)
    return vhost, tun


def missing_vhost_nodes(paths: HostPaths) -> tuple[str, ...]:
    """Which of ``/dev/vhost-net`` and ``/dev/net/tun`` are absent."""
    return tuple(str(node) for node in vhost_nodes(paths) if not node.exists())


# -- writes -----------------------------------------------------------------


def set_num_vfs(
    paths: HostPaths, writer: SysfsWriter, pf: str, n: int, *, current: int, timeout_s: float
) -> None:
    """Write the PF's VF count, through 0 when it has VFs now (which removes
    every VF). Each write has its own deadline; a timeout raises Unavailable
    while the kernel keeps working."""
    attr = paths.pci_devices / pf / "sriov_numvfs"
    if current:
        timed_write(writer, attr, "0", timeout_s)
    if n:
        timed_write(writer, attr, str(n), timeout_s)


def set_driver_override(
    paths: HostPaths, writer: SysfsWriter, address: str, driver: str, timeout_s: float
) -> None:
    attr = paths.pci_devices / address / "driver_override"
    _step(writer, attr, driver, timeout_s, f"set driver_override to {driver}")


def clear_driver_override(
    paths: HostPaths, writer: SysfsWriter, address: str, timeout_s: float
) -> None:
    if driver_override(paths, address) is not None:
        # A newline clears it: the kernel strips it and stores "no override".
        attr = paths.pci_devices / address / "driver_override"
        _step(writer, attr, "\n", timeout_s, "clear driver_override")


def unbind(
    paths: HostPaths, writer: SysfsWriter, address: str, driver: str, timeout_s: float
) -> None:
    _step(writer, driver_dir(paths, driver) / "unbind", address, timeout_s, f"unbind from {driver}")


def drivers_probe(
    paths: HostPaths, writer: SysfsWriter, address: str, driver: str, timeout_s: float
) -> None:
    _step(writer, paths.drivers_probe, address, timeout_s, f"probe for {driver}")


def bind_driver(
    paths: HostPaths,
    writer: SysfsWriter,
    address: str,
    to: str | None,
    *,
    timeout_s: float,
    poll_s: float = 0.05,
) -> None:
    """Move the function to driver ``to`` (None: leave it unbound) and wait
    until it is there (for vfio-pci: until its group node exists too)."""
    now = bound_driver(paths, address)
    if now != to:
        if to is not None:
            set_driver_override(paths, writer, address, to, timeout_s)
        if now is not None:
            unbind(paths, writer, address, now, timeout_s)
        if to is not None:
            drivers_probe(paths, writer, address, to, timeout_s)
    clear_driver_override(paths, writer, address, timeout_s)
    wait_bound(paths, address, to, timeout_s=timeout_s, poll_s=poll_s)


def wait_bound(
    paths: HostPaths, address: str, driver: str | None, *, timeout_s: float, poll_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        now = bound_driver(paths, address)
        ready = now == driver
        if ready and driver == VFIO_DRIVER:
            # udev creates the group node after the bind; DPDK needs it.
            try:
                ready = vfio_nodes(paths, address)[1].exists()
            except NotFound:
                ready = True  # no group: the caller checked no-IOMMU mode
        if ready:
            return
        if time.monotonic() >= deadline:
            raise HostError(
                f"{address} is on {now or 'no driver'}, not {driver or 'no driver'},"
                f" {timeout_s:g}s after the probe"
            )
        time.sleep(poll_s)
