"""SR-IOV provisioning: the desired VFs per PF (config ``sriov:``), a pure
plan of what differs, and the kernel changes that close the gap.

Config schema (a list; each entry selects PFs and says what they carry)::

    sriov:
      - pfNames: [ens1f0]            # and/or rootDevices: ["0000:18:00.0"],
        numVfs: 8                    #   vendors: ["8086"], devices: ["1592"]
        mtu: 9000                    # optional: MTU of the VF netdevs
        vfDrivers:                   # optional: default is the kernel driver
          - {vfs: "0-3,5", driver: vfio-pci}

Selector keys AND together, values within one key OR. Two entries
selecting the same PF is a config error.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nicwarden.agent import dpdk
from nicwarden.agent.dpdk import DeviceCtx, in_use_from_store, timed_write
from nicwarden.agent.errors import (
    Busy,
    ConfigError,
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unavailable,
)
from nicwarden.agent.host.sysfs import read_attr, read_int
from nicwarden.agent.model import PF, VF, VFIO_DRIVER, Inventory

log = logging.getLogger(__name__)

NUMVFS_INTENT = "sriov.numvfs"
VfDriver = Literal["vfio-pci", "kernel"]
MAX_VFS = 65535  # PCIe SR-IOV TotalVFs is 16 bits
MTU_RANGE = (68, 65535)

# -- config -------------------------------------------------------------------

_KEYS = ("pfNames", "rootDevices", "vendors", "devices", "numVfs", "mtu", "vfDrivers")
_SELECTORS = ("pfNames", "rootDevices", "vendors", "devices")
_PCI = re.compile(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])$")
_PCI_ID = re.compile(r"^(?:0x)?([0-9a-f]{4})$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class VfDriverRule:
    vfs: frozenset[int]
    driver: VfDriver


@dataclass(frozen=True)
class PfPolicy:
    """One ``sriov:`` entry."""

    index: int  # position in the list: errors and reports name it
    num_vfs: int
    pf_names: tuple[str, ...] = ()
    root_devices: tuple[str, ...] = ()
    vendors: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    mtu: int | None = None
    vf_drivers: tuple[VfDriverRule, ...] = ()

    @property
    def key(self) -> str:
        return f"sriov[{self.index}]"

    def selects(self, pf: PF) -> bool:
        return (
            (not self.pf_names or pf.name in self.pf_names)
            and (not self.root_devices or pf.address in self.root_devices)
            and (not self.vendors or pf.fn.vendor in self.vendors)
            and (not self.devices or pf.fn.device in self.devices)
        )

    def driver_for(self, vf_index: int) -> VfDriver:
        for rule in self.vf_drivers:
            if vf_index in rule.vfs:
                return rule.driver
        return "kernel"


def parse_sriov(raw: object, source: str = "config") -> tuple[PfPolicy, ...]:
    """Validate the ``sriov:`` list; every problem is reported, one per line,
    as ``<source>: sriov[<i>].<key>: <reason>``."""
    if raw is None:
        return ()
    problems: list[str] = []
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{source}: sriov: expected a list of mappings, got {_show(raw)}")
    policies = []
    for i, item in enumerate(raw):
        policy = _parse_entry(i, item, problems)
        if policy is not None:
            policies.append(policy)
    _check_overlaps(policies, problems)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return tuple(policies)


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else repr(value)


def _parse_entry(i: int, raw: object, problems: list[str]) -> PfPolicy | None:
    where = f"sriov[{i}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, got {_show(raw)}")
        return None
    for key in raw:
        if key not in _KEYS:
            hint = difflib.get_close_matches(str(key), _KEYS, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else f" (known keys: {', '.join(_KEYS)})"
            problems.append(f"{where}.{key}: unknown key{more}")
    before = len(problems)
    names = _strings(raw, "pfNames", where, problems, lambda s: s)
    roots = _strings(raw, "rootDevices", where, problems, _pci_address)
    vendors = _strings(raw, "vendors", where, problems, _pci_id)
    devices = _strings(raw, "devices", where, problems, _pci_id)
    if not any(k in raw for k in _SELECTORS):
        # No selector would mean every PF on the node: too easy to do by accident.
        problems.append(f"{where}: needs a selector: one of {', '.join(_SELECTORS)}")
    num_vfs = _int(raw, "numVfs", where, problems, 0, MAX_VFS, required=True)
    mtu = _int(raw, "mtu", where, problems, *MTU_RANGE)
    rules = _vf_drivers(raw.get("vfDrivers"), where, num_vfs, problems)
    if len(problems) > before or num_vfs is None:
        return None
    return PfPolicy(i, num_vfs, names, roots, vendors, devices, mtu, rules)


def _pci_address(text: str) -> str:
    m = _PCI.match(text.lower())
    if not m:
        raise ValueError("is not a PCI address such as 0000:18:00.0")
    return f"{m[1] or '0000'}:{m[2]}"


def _pci_id(text: str) -> str:
    m = _PCI_ID.match(text.lower())
    if not m:
        raise ValueError("is not a 4-digit hex PCI ID such as 8086")
    return m[1]


def _strings(
    raw: Mapping[str, Any], key: str, where: str, problems: list[str], norm: Any
) -> tuple[str, ...]:
    if key not in raw:
        return ()
    value = raw[key]
    if not isinstance(value, list | tuple) or not value:
        problems.append(f"{where}.{key}: expected a non-empty list of strings, got {_show(value)}")
        return ()
    out = []
    for j, item in enumerate(value):
        try:
            if not isinstance(item, str) or not item:
                raise ValueError("is not a non-empty string")
            out.append(norm(item))
        except ValueError as e:
            problems.append(f"{where}.{key}[{j}]: {_show(item)} {e}")
    return tuple(out)


def _int(
    raw: Mapping[str, Any],
    key: str,
    where: str,
    problems: list[str],
    low: int,
    high: int,
    required: bool = False,
) -> int | None:
    if key not in raw or raw[key] is None:
        if required:
            problems.append(f"{where}.{key}: required")
        return None
    value = raw[key]
    # bool is an int subclass, but "numVfs: yes" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{where}.{key}: expected an integer {low}-{high}, got {_show(value)}")
        return None
    return value


def parse_vf_ranges(text: object) -> list[int]:
    """``"0-3,5"`` (or a single int) -> sorted VF indices; ValueError says why."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'expected VF indices such as "0-3,5", got {_show(text)}')
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"{part!r} is not an index or a range like 0-3")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if lo > hi:
            raise ValueError(f"range {part!r} runs backwards")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _vf_drivers(
    raw: object, where: str, num_vfs: int | None, problems: list[str]
) -> tuple[VfDriverRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        problems.append(f"{where}.vfDrivers: expected a list of mappings, got {_show(raw)}")
        return ()
    rules: list[VfDriverRule] = []
    owner: dict[int, int] = {}
    for j, item in enumerate(raw):
        at = f"{where}.vfDrivers[{j}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: expected a mapping with vfs and driver, got {_show(item)}")
            continue
        for key in set(item) - {"vfs", "driver"}:
            problems.append(f"{at}.{key}: unknown key (known keys: vfs, driver)")
        driver = item.get("driver")
        if driver not in ("vfio-pci", "kernel"):
            problems.append(f"{at}.driver: expected vfio-pci or kernel, got {_show(driver)}")
        try:
            vfs = parse_vf_ranges(item.get("vfs"))
        except ValueError as e:
            problems.append(f"{at}.vfs: {e}")
            continue
        if num_vfs is not None and vfs[-1] >= num_vfs:
            problems.append(f"{at}.vfs: VF {vfs[-1]} does not exist with numVfs {num_vfs}")
        clash = sorted({owner[v] for v in vfs if v in owner})
        if clash:
            problems.append(f"{at}.vfs: overlaps {where}.vfDrivers[{clash[0]}]")
        owner.update(dict.fromkeys(vfs, j))
        if driver in ("vfio-pci", "kernel"):
            rules.append(VfDriverRule(frozenset(vfs), driver))
    return tuple(rules)


def _check_overlaps(policies: Sequence[PfPolicy], problems: list[str]) -> None:
    """Entries naming the same PF outright; selections by vendor/device can
    only be compared against a node, so plan() reports those."""
    for attr, key in (("pf_names", "pfNames"), ("root_devices", "rootDevices")):
        seen: dict[str, PfPolicy] = {}
        for policy in policies:
            for value in getattr(policy, attr):
                first = seen.setdefault(value, policy)
                if first is not policy:
                    problems.append(
                        f"{policy.key}.{key}: {value} is already selected by {first.key}"
                    )


# -- the plan -----------------------------------------------------------------


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
_STAGES: tuple[type[SetNumVfs] | type[BindVf] | type[SetVfMtu], ...] = (SetNumVfs, BindVf, SetVfMtu)


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


def _label(address: str, name: str | None) -> str:
    return f"{name} ({address})" if name else address


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
    actions.sort(key=lambda a: _STAGES.index(type(a)))
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


# -- numvfs -------------------------------------------------------------------


@dataclass(frozen=True)
class NumVfsResult:
    pf: str
    pf_name: str | None
    previous: int
    current: int
    changed: bool


def _find_pf(inventory: Inventory, key: str) -> PF:
    found = inventory.find(key)
    if found is None:
        raise NotFound(f"no SR-IOV PF {key}")
    if not isinstance(found, PF):
        raise InvalidArgument(f"{key} is a VF, not a PF")
    return found


def _requested_count(n: object, total: int, label: str) -> int:
    if isinstance(n, str) and re.fullmatch(r"\s*[+-]?\d+\s*", n):
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
        raise InvalidArgument(
            f"numVfs for {label} must be an integer 0-{total} (sriov_totalvfs), got {n!r}"
        )
    return n


def set_num_vfs(
    ctx: DeviceCtx, pf: str, n: int | str, *, timeout_s: float | None = None
) -> NumVfsResult:
    """Set a PF's VF count the way the kernel allows and wait for the VFs.

    The kernel refuses to change a non-zero count directly, so a change goes
    through 0, which removes *every* VF: refused while any is allocated or
    attached. Waits until ``n`` VFs exist with drivers bound (unless the PF
    has ``sriov_drivers_autoprobe`` off).
    """
    timeout = ctx.timeout_s if timeout_s is None else timeout_s
    found = _find_pf(ctx.inventory.rescan(), pf)
    label = _label(found.address, found.name)
    want = _requested_count(n, found.total_vfs, label)
    current = found.num_vfs
    if want == current:
        return NumVfsResult(found.address, found.name, current, current, False)
    holders = in_use_from_store(ctx.store)
    busy = {vf.address: holders[vf.address] for vf in found.vfs if vf.address in holders}
    if current and busy:
        raise Busy(busy_message(found, want, busy))
    attr = ctx.paths.pci_devices / found.address / "sriov_numvfs"
    payload = {"from": current, "to": want, "pf_name": found.name}
    intent = ctx.store.begin_intent(NUMVFS_INTENT, found.address, payload)
    try:
        if current:
            timed_write(ctx.writer, attr, "0", timeout)
        if want:
            timed_write(ctx.writer, attr, str(want), timeout)
    except Unavailable as e:
        # The write is still running in the kernel; recover() settles it.
        raise Unavailable(
            f"{label}: {e.message}; intent {intent} stays pending until the agent reconciles"
        ) from e
    except NicwardenError as e:
        ctx.store.roll_back_intent(intent)
        now = read_int(attr, 0)
        raise type(e)(
            f"{label}: setting {want} VFs failed: {e.message}; it now has {now}", e.details
        ) from e
    # The kernel has made the change: record that before waiting on drivers.
    ctx.store.complete_intent(intent)
    _wait_for_vfs(ctx, found.address, want, timeout, label)
    _bring_up(ctx, found.address)
    log.info("%s: numvfs %d -> %d", label, current, want)
    return NumVfsResult(found.address, found.name, current, want, True)


def _bring_up(ctx: DeviceCtx, pf_address: str) -> None:
    """New kernel VFs come up administratively down, which the device plugin
    reports Unhealthy: a VF is provisioned to be handed out, so bring it up."""
    pf = next((p for p in ctx.inventory.rescan().pfs if p.address == pf_address), None)
    for vf in pf.vfs if pf else ():
        nd = vf.fn.netdev
        if nd is not None and nd.operstate == "down":
            try:
                ctx.netdevs.set_link(nd.name, up=True)
            except NicwardenError as e:  # health will say so; provisioning went through
                log.warning("cannot bring VF %s up: %s", nd.name, e)


def _wait_for_vfs(ctx: DeviceCtx, address: str, n: int, timeout: float, label: str) -> None:
    # With autoprobe off the kernel creates VFs without binding any driver.
    autoprobe = read_attr(ctx.paths.pci_devices / address / "sriov_drivers_autoprobe") != "0"
    deadline = time.monotonic() + timeout
    while True:
        pf = next((p for p in ctx.inventory.rescan().pfs if p.address == address), None)
        vfs = pf.vfs if pf else ()
        bound = sum(1 for vf in vfs if vf.fn.driver)
        # The count attribute and the virtfn links change at different
        # moments: the next change reads the count, so wait for both.
        count = pf.num_vfs if pf else -1
        if count == n and len(vfs) == n and (not autoprobe or bound == n):
            return
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"{label}: sriov_numvfs reads {count}; {len(vfs)} of {n} VFs present,"
                f" {bound} with a driver, {timeout:g}s after the change"
            )
        time.sleep(ctx.poll_s)


# -- converge -----------------------------------------------------------------


@dataclass
class ConvergeReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)  # what differed before
    remaining: list[Drift] = field(default_factory=list)  # what still differs

    @property
    def converged(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": list(self.applied),
            "skipped": [{"subject": s.subject, "reason": s.reason} for s in self.skipped],
            "drift": [str(d) for d in self.drift],
            "remaining": [str(d) for d in self.remaining],
        }


def _apply(ctx: DeviceCtx, action: Action) -> None:
    if isinstance(action, SetNumVfs):
        set_num_vfs(ctx, action.pf, action.desired)
    elif isinstance(action, BindVf):
        dpdk.bind(ctx, action.vf, action.target)
    else:
        # No intent: an MTU is idempotent and the next converge re-applies it.
        ctx.netdevs.set_link(action.ifname, mtu=action.desired)


def converge(ctx: DeviceCtx, desired: Sequence[PfPolicy]) -> ConvergeReport:
    """Apply the plan stage by stage (VF counts, then drivers, then MTUs),
    re-planning after each stage because it creates or rebinds the VFs the
    next one acts on. A failing PF is reported and skipped; others go on."""
    in_use = in_use_from_store(ctx.store)
    current = plan(desired, ctx.inventory.rescan(), in_use)
    report = ConvergeReport(skipped=list(current.skipped), drift=list(current.drift))
    failed: set[str] = set()
    for stage in _STAGES:
        for action in current.actions:
            if not isinstance(action, stage):
                continue
            if action.pf in failed:
                reason = f"{action.describe()}: not attempted, an earlier step on this PF failed"
                report.skipped.append(Skipped(action.subject, reason))
                continue
            try:
                _apply(ctx, action)
            except NicwardenError as e:
                failed.add(action.pf)
                report.skipped.append(Skipped(action.subject, f"{action.describe()}: {e}"))
                log.warning("sriov converge: %s failed: %s", action.describe(), e)
                continue
            report.applied.append(action.describe())
        current = plan(desired, ctx.inventory.rescan(), in_use)
        for s in current.skipped:
            if s not in report.skipped:
                report.skipped.append(s)
    report.remaining = list(current.drift)
    return report


# -- recovery at start --------------------------------------------------------


def recover(ctx: DeviceCtx) -> list[dpdk.Recovered]:
    """Settle numvfs intents a crash (or a write that outlived its timeout)
    left pending: done if the PF has the count it was going to, otherwise
    rolled back and logged, for converge to retry."""
    out = []
    for intent in ctx.store.pending_intents(NUMVFS_INTENT):
        attr = ctx.paths.pci_devices / intent.target / "sriov_numvfs"
        now = read_int(attr)
        want = intent.payload.get("to")
        if now == want:
            ctx.store.complete_intent(intent.id)
            out.append(dpdk.Recovered(intent.id, intent.target, "completed", f"{now} VFs"))
            continue
        ctx.store.roll_back_intent(intent.id)
        detail = f"interrupted: {now} VFs, wanted {want}"
        log.warning("numvfs change on %s was %s", intent.target, detail)
        out.append(dpdk.Recovered(intent.id, intent.target, "rolled_back", detail))
    return out
