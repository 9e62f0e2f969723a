"""Binding VFs to vfio-pci (for DPDK pods) and back to their kernel driver.

The kernel's recipe for moving a PCI function between drivers is: set
``driver_override`` (so only the chosen driver may claim it: the old driver
cannot grab it back on probe, and vfio-pci, which has no ID table, can),
unbind it from its driver, ask the bus to probe it, then clear the override
so a later probe is not pinned. Each move is a durable intent first, so a
crash half-way is finished or rolled back by :func:`recover` at start.

:class:`DeviceCtx` bundles the host handles that provisioning needs; it is
shared with :mod:`nicwarden.agent.sriov`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from nicwarden.agent.errors import (
    Busy,
    HostError,
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
    Unsupported,
)
from nicwarden.agent.health import vfio_node
from nicwarden.agent.host.netlink import Address, Route
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import SysfsWriter, link_name, read_attr
from nicwarden.agent.model import PF, VF, VFIO_DRIVER, Inventory
from nicwarden.agent.store import Store

log = logging.getLogger(__name__)

BindTarget = Literal["vfio-pci", "kernel"]
BIND_INTENT = "dpdk.bind"

# The VF driver each PF driver's VFs use, for when nothing recorded it (the
# VF was already on vfio-pci when we first saw it, so no driver link tells).
VF_DRIVER_BY_PF = {
    "ice": "iavf",
    "i40e": "iavf",
    "ixgbe": "ixgbevf",
    "igb": "igbvf",
    "mlx5_core": "mlx5_core",
    "mlx4_core": "mlx4_core",
    "bnxt_en": "bnxt_en",
    "qede": "qede",
    "cxgb4": "cxgb4vf",
}
# A netdev in one of these states carries no traffic, whatever its addresses.
_DOWN_STATES = ("down", "lowerlayerdown", "notpresent")
_CLEARED_OVERRIDE = ("", "(null)")
NOIOMMU_PARAM = Path("module/vfio/parameters/enable_unsafe_noiommu_mode")


# -- the host handles -----------------------------------------------------


class NetdevInspector(Protocol):
    """What tells whether a VF's netdev is in use."""

    def addresses(self, name: str) -> Sequence[Address]: ...

    def routes(self, name: str) -> Sequence[Route]: ...


class NetdevOps(NetdevInspector, Protocol):
    """Inspection plus the link changes provisioning makes (VF MTU, up)."""

    def set_link(self, name: str, *, up: bool | None = None, mtu: int | None = None) -> None: ...


class InventorySource(Protocol):
    def snapshot(self) -> Inventory: ...

    def rescan(self) -> Inventory: ...


@dataclass(frozen=True)
class DeviceCtx:
    paths: HostPaths
    writer: SysfsWriter
    inventory: InventorySource
    store: Store
    netdevs: NetdevOps
    timeout_s: float = 30.0  # per sysfs write, and for waiting on the result
    allow_noiommu: bool = False
    poll_s: float = 0.05


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


# -- who uses a VF -----------------------------------------------------------


def in_use_from_store(store: Store) -> dict[str, str]:
    """VF address -> who holds it ("allocated to pod ns/name ...")."""
    out: dict[str, list[str]] = {}
    for a in store.allocations():
        holder = (
            f"allocated to pod {a.pod_namespace}/{a.pod_name}"
            if a.pod_name
            else "allocated by kubelet to a pod not attached yet"
        )
        out.setdefault(a.device_id, []).append(f"{holder} (resource {a.resource})")
    for att in store.list_attachments():
        if att.device:
            out.setdefault(att.device, []).append(
                f"attached to pod {att.pod_namespace}/{att.pod_name} as {att.ifname}"
            )
    return {address: ", ".join(why) for address, why in out.items()}


def _netdev_use(netdevs: NetdevInspector, vf: VF) -> str | None:
    nd = vf.fn.netdev
    if nd is None or nd.operstate in _DOWN_STATES:
        return None
    try:
        # Link-local addresses and routes appear on every up interface by
        # themselves; only configured ones mean someone is using the VF.
        addrs = [a.cidr for a in netdevs.addresses(nd.name) if not a.interface.is_link_local]
        routes = [
            r.dst
            for r in netdevs.routes(nd.name)
            if not ipaddress.ip_network(r.dst, strict=False).is_link_local
        ]
    except NotFound:
        return None  # the netdev left the host netns since the scan
    if not addrs and not routes:
        return None
    parts = [f"addresses {', '.join(addrs)}"] if addrs else []
    parts += [f"routes {', '.join(routes)}"] if routes else []
    return f"netdev {nd.name} is up with {' and '.join(parts)}"


def usage(ctx: DeviceCtx, vf: VF) -> list[str]:
    reasons = []
    holder = in_use_from_store(ctx.store).get(vf.address)
    if holder:
        reasons.append(holder)
    netdev = _netdev_use(ctx.netdevs, vf)
    if netdev:
        reasons.append(netdev)
    return reasons


# -- lookups and preconditions -----------------------------------------------


def find_vf(ctx: DeviceCtx, key: str) -> tuple[VF, PF]:
    """The VF (and its PF) at ``key``, from a fresh scan."""
    inv = ctx.inventory.rescan()
    found = inv.find(key)
    if isinstance(found, PF):
        raise InvalidArgument(
            f"{key} is a PF ({found.name or found.address}); only VFs are bound to vfio-pci here"
        )
    if found is None:
        if (ctx.paths.pci_devices / key).exists():
            raise InvalidArgument(f"{key} is not a VF of an SR-IOV network PF")
        raise NotFound(f"no PCI device {key}")
    pf = next(p for p in inv.pfs if p.address == found.pf_address)
    return found, pf


def _kernel_key(address: str) -> str:
    return f"dpdk.kernel_driver.{address}"


def kernel_driver(ctx: DeviceCtx, vf: VF, pf: PF) -> str | None:
    """The VF's default kernel driver: the one bound now, else the one we
    recorded before moving it, else the PF driver's usual VF driver."""
    if vf.fn.driver and vf.fn.driver != VFIO_DRIVER:
        return vf.fn.driver
    remembered = ctx.store.get_meta(_kernel_key(vf.address))
    if remembered:
        return remembered
    return VF_DRIVER_BY_PF.get(pf.fn.driver or "")


def require_driver(paths: HostPaths, driver: str) -> None:
    where = paths.pci_drivers / driver
    if where.is_dir():
        return
    hint = (
        "; load it with `modprobe vfio-pci` (and list it in /etc/modules-load.d/ to keep it)"
        if driver == VFIO_DRIVER
        else f"; load it with `modprobe {driver}`"
    )
    raise Unsupported(f"the {driver} driver is not loaded ({where} is missing){hint}")


def check_iommu(ctx: DeviceCtx, vf: VF) -> None:
    """vfio-pci isolates a device through its IOMMU group; without one it only
    works in the unsafe no-IOMMU mode, which must be asked for explicitly."""
    if vf.fn.iommu_group is not None:
        return
    if not ctx.allow_noiommu:
        raise Unsupported(
            f"{vf.address} has no IOMMU group, so vfio-pci cannot isolate it: enable the"
            " IOMMU on the kernel command line (intel_iommu=on or amd_iommu=on, with"
            " iommu=pt) and reboot, or explicitly allow unsafe no-IOMMU mode (config"
            " allowNoIommu: true and vfio's enable_unsafe_noiommu_mode=1)"
        )
    param = ctx.paths.sys / NOIOMMU_PARAM
    if read_attr(param) not in ("Y", "1"):
        raise Unsupported(
            f"{vf.address} has no IOMMU group and vfio's no-IOMMU mode is off although"
            f" allowNoIommu is set: echo 1 > {param}"
        )


def vfio_device_nodes(paths: HostPaths, vf: VF | str) -> list[Path]:
    """The device nodes a DPDK container needs: the vfio container plus the
    VF's group, read from its *current* ``iommu_group`` (group numbers can
    change across reboots). No-IOMMU groups are ``noiommu-<N>``."""
    address = vf if isinstance(vf, str) else vf.address
    group = link_name(paths.pci_devices / address / "iommu_group")
    if group is None:
        raise NotFound(f"{address} has no IOMMU group")
    found = vfio_node(paths, int(group)) if group.isdigit() else None
    return [paths.vfio / "vfio", found.host_path if found else paths.vfio / group]


# -- the driver move ---------------------------------------------------------


def _write(ctx: DeviceCtx, path: Path, value: str, step: str) -> None:
    try:
        timed_write(ctx.writer, path, value, ctx.timeout_s)
    except NicwardenError as e:
        raise type(e)(f"{step}: {e.message}", e.details) from e


def _clear_override(ctx: DeviceCtx, address: str) -> None:
    attr = ctx.paths.pci_devices / address / "driver_override"
    if read_attr(attr) not in (None, *_CLEARED_OVERRIDE):
        # A newline clears it: the kernel strips it and stores "no override".
        _write(ctx, attr, "\n", "clear driver_override")


def _wait_bound(ctx: DeviceCtx, address: str, driver: str | None) -> None:
    dev = ctx.paths.pci_devices / address
    deadline = time.monotonic() + ctx.timeout_s
    while True:
        now = link_name(dev / "driver")
        ready = now == driver
        if ready and driver == VFIO_DRIVER:
            # udev creates the group node after the bind; DPDK needs it.
            try:
                ready = vfio_device_nodes(ctx.paths, address)[1].exists()
            except NotFound:
                ready = True  # no group (no-IOMMU mode checked already)
        if ready:
            return
        if time.monotonic() >= deadline:
            raise HostError(
                f"{address} is on {now or 'no driver'}, not {driver or 'no driver'},"
                f" {ctx.timeout_s:g}s after the probe"
            )
        time.sleep(ctx.poll_s)


def move_driver(ctx: DeviceCtx, address: str, to: str | None) -> None:
    """Move the function at ``address`` to driver ``to`` (None: leave it unbound)."""
    dev = ctx.paths.pci_devices / address
    now = link_name(dev / "driver")
    if now != to:
        if to is not None:
            _write(ctx, dev / "driver_override", to, f"set driver_override to {to}")
        if now is not None:
            _write(ctx, ctx.paths.pci_drivers / now / "unbind", address, f"unbind from {now}")
        if to is not None:
            _write(ctx, ctx.paths.drivers_probe, address, f"probe for {to}")
    _clear_override(ctx, address)
    _wait_bound(ctx, address, to)


@dataclass(frozen=True)
class BindResult:
    address: str
    previous: str | None  # the driver before (None: unbound)
    driver: str  # the driver now
    changed: bool
    overridden: tuple[str, ...] = ()  # in-use reasons that force overrode
    devices: tuple[Path, ...] = field(default=())  # vfio nodes when on vfio-pci


def bind(ctx: DeviceCtx, vf_address: str, target: str, force: bool = False) -> BindResult:
    """Bind a VF to ``vfio-pci`` or back to its ``kernel`` driver.

    Refuses PFs and non-VFs, a missing driver, vfio without an IOMMU (unless
    allowed), and a VF in use (allocated, attached, or its netdev up with
    addresses or routes) unless ``force``. On failure the VF is moved back to
    its previous driver and the error says so.
    """
    if target not in ("vfio-pci", "kernel"):
        raise InvalidArgument(f"bind target must be vfio-pci or kernel, got {target!r}")
    vf, pf = find_vf(ctx, vf_address)
    kernel = kernel_driver(ctx, vf, pf)
    if target == "kernel" and kernel is None:
        raise Unsupported(
            f"cannot tell which kernel driver {vf.address} uses: nothing recorded it and"
            f" the PF driver {pf.fn.driver or '(none)'} has no known VF driver"
        )
    want = VFIO_DRIVER if target == "vfio-pci" else kernel
    assert want is not None  # checked just above
    previous = vf.fn.driver
    if previous == want:
        return BindResult(vf.address, previous, want, False, devices=_nodes(ctx, vf, want))
    require_driver(ctx.paths, want)
    if want == VFIO_DRIVER:
        check_iommu(ctx, vf)
    reasons = usage(ctx, vf)
    if reasons and not force:
        raise Busy(f"{vf.address} is in use: {'; '.join(reasons)}; force to bind anyway")
    payload = {
        "previous": previous,
        "target": want,
        "kernel_driver": kernel,
        "pf": pf.address,
        "index": vf.index,
    }
    # Remember the kernel driver before unbinding: once on vfio-pci, no driver
    # link says what it was.
    with ctx.store.transaction():
        intent = ctx.store.begin_intent(BIND_INTENT, vf.address, payload)
        if kernel:
            ctx.store.set_meta(_kernel_key(vf.address), kernel)
    _move_or_roll_back(ctx, intent, vf.address, previous, want)
    ctx.store.complete_intent(intent)
    ctx.inventory.rescan()
    log.info("bound %s to %s (was %s)", vf.address, want, previous or "unbound")
    return BindResult(vf.address, previous, want, True, tuple(reasons), _nodes(ctx, vf, want))


def _nodes(ctx: DeviceCtx, vf: VF, driver: str) -> tuple[Path, ...]:
    if driver != VFIO_DRIVER:
        return ()
    try:
        return tuple(vfio_device_nodes(ctx.paths, vf))
    except NotFound:
        return ()


def _move_or_roll_back(
    ctx: DeviceCtx, intent: int, address: str, previous: str | None, want: str
) -> None:
    what = f"binding {address} to {want}"
    try:
        move_driver(ctx, address, want)
    except Unavailable as e:
        # A write the kernel is still executing: moving the device back now
        # would race it. recover() settles it at the next start.
        raise Unavailable(
            f"{what}: {e.message}; intent {intent} stays pending until the agent reconciles"
        ) from e
    except NicwardenError as e:
        back = previous or "no driver"
        try:
            move_driver(ctx, address, previous)
        except NicwardenError as again:
            raise HostError(
                f"{what} failed ({e}); moving it back to {back} also failed ({again});"
                f" intent {intent} stays pending for recovery at agent start"
            ) from e
        ctx.store.roll_back_intent(intent)
        ctx.inventory.rescan()
        raise type(e)(f"{what} failed: {e.message}; rolled back to {back}", e.details) from e


# -- recovery at start -------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    intent: int
    target: str
    outcome: Literal["completed", "rolled_back", "failed"]
    detail: str


def recover(ctx: DeviceCtx) -> list[Recovered]:
    """Settle bind intents a crash left pending: a VF already on the target
    driver is finished; any other is moved back to its previous driver,
    because the caller never heard that the bind succeeded."""
    out = []
    for intent in ctx.store.pending_intents(BIND_INTENT):
        address = intent.target
        previous = intent.payload.get("previous")
        target = intent.payload.get("target")
        try:
            if not (ctx.paths.pci_devices / address).exists():
                ctx.store.roll_back_intent(intent.id)
                out.append(Recovered(intent.id, address, "rolled_back", "the VF no longer exists"))
                continue
            if link_name(ctx.paths.pci_devices / address / "driver") == target:
                _clear_override(ctx, address)
                ctx.store.complete_intent(intent.id)
                out.append(Recovered(intent.id, address, "completed", f"on {target}"))
                continue
            move_driver(ctx, address, previous)
            ctx.store.roll_back_intent(intent.id)
            out.append(
                Recovered(intent.id, address, "rolled_back", f"back on {previous or 'no driver'}")
            )
        except NicwardenError as e:
            log.error("cannot settle bind intent %d for %s: %s", intent.id, address, e)
            out.append(Recovered(intent.id, address, "failed", str(e)))
    if out:
        ctx.inventory.rescan()
    return out
