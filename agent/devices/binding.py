"""Binding VFs to vfio-pci (for DPDK pods) and back to their kernel driver,
with the checks that keep a bind from pulling a VF out from under its user.

The driver move itself is the kernel's recipe in ``agent/host/pci.py``. Each
move is a durable intent first, so a crash half-way is finished or rolled
back by :func:`recover` at start.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from nicwarden.agent.devices.context import DeviceCtx, NetdevInspector, Recovered
from nicwarden.agent.errors import (
    Busy,
    HostError,
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
    Unsupported,
)
from nicwarden.agent.host import pci
from nicwarden.agent.model import PF, VF, VFIO_DRIVER
from nicwarden.agent.store import Store

log = logging.getLogger(__name__)

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
    # Only "prepared": while a claim is being prepared or unprepared, the
    # DRA plugin itself is the one moving its VFs.
    for claim in store.dra_claims():
        if claim.state == "prepared":
            for d in claim.devices:
                out.setdefault(str(d.get("address")), []).append(
                    f"prepared for DRA claim {claim.namespace}/{claim.name}"
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


def find_vf(
    ctx: DeviceCtx, key: str, only_vfs: str = "only VFs are bound to vfio-pci here"
) -> tuple[VF, PF]:
    """The VF (and its PF) at ``key`` (address or netdev name), from a fresh
    scan; ``only_vfs`` says, for a PF, why the operation needs a VF."""
    inv = ctx.inventory.rescan()
    found = inv.find(key)
    if isinstance(found, PF):
        raise InvalidArgument(
            f"{key} is a PF ({found.name or found.address}), not a VF; {only_vfs}"
        )
    if found is None:
        if pci.device_exists(ctx.paths, key):
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


def require_driver(ctx: DeviceCtx, driver: str) -> None:
    if pci.driver_loaded(ctx.paths, driver):
        return
    hint = (
        "; load it with `modprobe vfio-pci` (and list it in /etc/modules-load.d/ to keep it)"
        if driver == VFIO_DRIVER
        else f"; load it with `modprobe {driver}`"
    )
    where = pci.driver_dir(ctx.paths, driver)
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
    if not pci.noiommu_enabled(ctx.paths):
        raise Unsupported(
            f"{vf.address} has no IOMMU group and vfio's no-IOMMU mode is off although"
            f" allowNoIommu is set: echo 1 > {pci.noiommu_param(ctx.paths)}"
        )


# -- the bind ----------------------------------------------------------------


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
    require_driver(ctx, want)
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


def _move(ctx: DeviceCtx, address: str, to: str | None) -> None:
    pci.bind_driver(ctx.paths, ctx.writer, address, to, timeout_s=ctx.timeout_s, poll_s=ctx.poll_s)


def _nodes(ctx: DeviceCtx, vf: VF, driver: str) -> tuple[Path, ...]:
    if driver != VFIO_DRIVER:
        return ()
    try:
        return tuple(pci.vfio_nodes(ctx.paths, vf.address))
    except NotFound:
        return ()


def _move_or_roll_back(
    ctx: DeviceCtx, intent: int, address: str, previous: str | None, want: str
) -> None:
    what = f"binding {address} to {want}"
    try:
        _move(ctx, address, want)
    except Unavailable as e:
        # A write the kernel is still executing: moving the device back now
        # would race it. recover() settles it at the next start.
        raise Unavailable(
            f"{what}: {e.message}; intent {intent} stays pending until the agent reconciles"
        ) from e
    except NicwardenError as e:
        back = previous or "no driver"
        try:
            _move(ctx, address, previous)
        except NicwardenError as again:
            raise HostError(
                f"{what} failed ({e}); moving it back to {back} also failed ({again});"
                f" intent {intent} stays pending for recovery at agent start"
            ) from e
        ctx.store.roll_back_intent(intent)
        ctx.inventory.rescan()
        raise type(e)(f"{what} failed: {e.message}; rolled back to {back}", e.details) from e


# -- recovery at start -------------------------------------------------------


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
            if not pci.device_exists(ctx.paths, address):
                ctx.store.roll_back_intent(intent.id)
                out.append(Recovered(intent.id, address, "rolled_back", "the VF no longer exists"))
                continue
            if pci.bound_driver(ctx.paths, address) == target:
                pci.clear_driver_override(ctx.paths, ctx.writer, address, ctx.timeout_s)
                ctx.store.complete_intent(intent.id)
                out.append(Recovered(intent.id, address, "completed", f"on {target}"))
                continue
            _move(ctx, address, previous)
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
