"""What to change so a node matches the ``sriov:`` desired state. Pure: it
reads an inventory snapshot and the VFs' holders, and does no I/O.

The plan is staged: VF counts first (they create or remove the VFs), then
drivers, then MTUs. VF-level actions wait until a PF has its desired count,
because the VFs they name do not exist before; converge re-plans after each
stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nicwarden.agent.devices.context import label as _label
from nicwarden.agent.devices.spec import PfPolicy, VfDriver
from nicwarden.agent.model import PF, VF, VFIO_DRIVER, Inventory


@dataclass(frozen=True)
class SetNumVfs:
    pf: str
    pf_name: str | None
    current: int
    desired: int

    @property
    def subject(self) -> str:
        return self.pf

    def describe(self) -> str:
        return f"{_label(self.pf, self.pf_name)}: numVfs {self.current} -> {self.desired}"


@dataclass(frozen=True)
class BindVf:
    pf: str
    vf: str
    index: int
    current: str | None
    target: VfDriver

    @property
    def subject(self) -> str:
        return self.vf

    def describe(self) -> str:
        return f"VF {self.index} {self.vf}: driver {self.current or 'none'} -> {self.target}"


@dataclass(frozen=True)
class SetVfMtu:
    pf: str
    vf: str
    ifname: str
    current: int
    desired: int

    @property
    def subject(self) -> str:
        return self.vf

    def describe(self) -> str:
        return f"VF {self.vf} ({self.ifname}): mtu {self.current} -> {self.desired}"


Action = SetNumVfs | BindVf | SetVfMtu
STAGES: tuple[type[SetNumVfs] | type[BindVf] | type[SetVfMtu], ...] = (SetNumVfs, BindVf, SetVfMtu)


@dataclass(frozen=True)
class Drift:
    """One way the node differs from the desired state."""

    subject: str  # PF or VF address
    what: str  # "numVfs", "driver" or "mtu"
    desired: str
    actual: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.what} is {self.actual}, desired {self.desired}"


@dataclass(frozen=True)
class Skipped:
    subject: str  # PF/VF address, or the config entry ("sriov[2]")
    reason: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    drift: tuple[Drift, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def driver_kind(driver: str | None) -> str:
    if driver is None:
        return "unbound"
    return "vfio-pci" if driver == VFIO_DRIVER else "kernel"


def busy_message(pf: PF, desired: int, busy: Mapping[str, str]) -> str:
    users = ", ".join(f"{address} ({who})" for address, who in sorted(busy.items()))
    return (
        f"cannot change {_label(pf.address, pf.name)} from {pf.num_vfs} to {desired} VFs:"
        f" the kernel removes every VF first, and these are in use: {users}"
    )


def plan(desired: Sequence[PfPolicy], inventory: Inventory, in_use: Mapping[str, str]) -> Plan:
    """What to change so ``inventory`` matches ``desired``. Pure.

    ``in_use`` maps VF addresses to who holds them (allocations, attachments).
    VF-level changes wait until a PF has its desired VF count: the VFs they
    name do not exist before.
    """
    actions: list[Action] = []
    drift: list[Drift] = []
    skipped: list[Skipped] = []
    owners: dict[str, list[PfPolicy]] = {}
    for policy in desired:
        matched = [pf for pf in inventory.pfs if policy.selects(pf)]
        if not matched:
            skipped.append(Skipped(policy.key, "selects no PF on this node"))
        for pf in matched:
            owners.setdefault(pf.address, []).append(policy)
    for pf in inventory.pfs:
        policies = owners.get(pf.address, [])
        if len(policies) > 1:
            keys = " and ".join(p.key for p in policies)
            skipped.append(Skipped(pf.address, f"config error: selected by both {keys}"))
        elif policies:
            _plan_pf(policies[0], pf, in_use, actions, drift, skipped)
    actions.sort(key=lambda a: STAGES.index(type(a)))
    return Plan(tuple(actions), tuple(drift), tuple(skipped))


def _plan_pf(
    policy: PfPolicy,
    pf: PF,
    in_use: Mapping[str, str],
    actions: list[Action],
    drift: list[Drift],
    skipped: list[Skipped],
) -> None:
    if pf.num_vfs != policy.num_vfs:
        drift.append(Drift(pf.address, "numVfs", str(policy.num_vfs), str(pf.num_vfs)))
        busy = {vf.address: in_use[vf.address] for vf in pf.vfs if vf.address in in_use}
        if policy.num_vfs > pf.total_vfs:
            skipped.append(
                Skipped(
                    pf.address,
                    f"{policy.key}.numVfs {policy.num_vfs} exceeds sriov_totalvfs {pf.total_vfs}",
                )
            )
        elif busy and pf.num_vfs:
            skipped.append(Skipped(pf.address, busy_message(pf, policy.num_vfs, busy)))
        else:
            actions.append(SetNumVfs(pf.address, pf.name, pf.num_vfs, policy.num_vfs))
        return
    for vf in pf.vfs:
        _plan_vf(policy, pf, vf, in_use.get(vf.address), actions, drift, skipped)


def _plan_vf(
    policy: PfPolicy,
    pf: PF,
    vf: VF,
    holder: str | None,
    actions: list[Action],
    drift: list[Drift],
    skipped: list[Skipped],
) -> None:
    want = policy.driver_for(vf.index)
    have = driver_kind(vf.fn.driver)
    if have != want:
        drift.append(Drift(vf.address, "driver", want, vf.fn.driver or "unbound"))
        if holder:
            skipped.append(Skipped(vf.address, f"driver change to {want} deferred: {holder}"))
        else:
            actions.append(BindVf(pf.address, vf.address, vf.index, vf.fn.driver, want))
        return
    nd = vf.fn.netdev
    # Only VFs on a kernel driver in the host netns have a netdev to size;
    # one in a pod has the MTU its network attachment asked for.
    if policy.mtu is None or want != "kernel" or nd is None or nd.mtu == policy.mtu:
        return
    drift.append(Drift(vf.address, "mtu", str(policy.mtu), str(nd.mtu)))
    if holder:
        skipped.append(Skipped(vf.address, f"mtu change deferred: {holder}"))
    else:
        actions.append(SetVfMtu(pf.address, vf.address, nd.name, nd.mtu, policy.mtu))
