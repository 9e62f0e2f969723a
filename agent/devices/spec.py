"""The ``sriov:`` desired state: which PFs carry how many VFs, with which
VF drivers and MTU.

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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nicwarden.agent.errors import ConfigError
from nicwarden.agent.model import PF
from nicwarden.agent.pci_address import normalize_pci_address
from nicwarden.agent.schema import (
    Invalid,
    KeyPath,
    Problems,
    Validator,
    describe,
    dotted,
    int_range,
    list_of,
)
from nicwarden.agent.vf_ranges import parse_vf_indices as parse_vf_ranges

VfDriver = Literal["vfio-pci", "kernel"]
MAX_VFS = 65535  # PCIe SR-IOV TotalVFs is 16 bits
MTU_RANGE = (68, 65535)

# -- config -------------------------------------------------------------------

_KEYS = ("pfNames", "rootDevices", "vendors", "devices", "numVfs", "mtu", "vfDrivers")
_SELECTORS = ("pfNames", "rootDevices", "vendors", "devices")
_PCI_ID = re.compile(r"^(?:0x)?([0-9a-f]{4})$")


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
    problems = Problems()
    if not isinstance(raw, list | tuple):
        problems.add("sriov", f"expected a list of mappings, got {describe(raw)}")
    policies = []
    for i, item in enumerate(raw if isinstance(raw, list | tuple) else ()):
        entry = problems.check(_entry_mapping, item, ("sriov", f"[{i}]"))
        policy = None if entry is None else _parse_entry(i, entry, problems)
        if policy is not None:
            policies.append(policy)
    _check_overlaps(policies, problems)
    if problems:
        raise ConfigError("\n".join(problems.render(source)))
    return tuple(policies)


def _entry_mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a mapping, got {describe(value)}")
    return value


def _parse_entry(i: int, raw: Mapping[str, Any], problems: Problems) -> PfPolicy | None:
    where = ("sriov", f"[{i}]")
    problems.unknown_keys(raw, _KEYS, where)
    before = len(problems)  # a stray key still lets the entry join the overlap check
    names = _strings(raw, "pfNames", where, problems, _non_empty)
    roots = _strings(raw, "rootDevices", where, problems, _pci_address)
    vendors = _strings(raw, "vendors", where, problems, _pci_id)
    devices = _strings(raw, "devices", where, problems, _pci_id)
    if not any(k in raw for k in _SELECTORS):
        # No selector would mean every PF on the node: too easy to do by accident.
        problems.add(where, f"needs a selector: one of {', '.join(_SELECTORS)}")
    num_vfs = _int(raw, "numVfs", where, problems, _NUM_VFS, required=True)
    mtu = _int(raw, "mtu", where, problems, _MTU)
    rules = _vf_drivers(raw.get("vfDrivers"), (*where, "vfDrivers"), num_vfs, problems)
    if len(problems) > before or num_vfs is None:
        return None
    return PfPolicy(i, num_vfs, names, roots, vendors, devices, mtu, rules)


# Config files hold numbers; "numVfs: '8'" is a quoting mistake worth naming.
_NUM_VFS = int_range(0, MAX_VFS, strings=False)
_MTU = int_range(*MTU_RANGE, strings=False)


def _non_empty(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{describe(value)} is not a non-empty string")
    return value


def _pci_address(value: object) -> str:
    address = normalize_pci_address(_non_empty(value))
    if address is None:
        raise Invalid(f"{describe(value)} is not a PCI address such as 0000:18:00.0")
    return address


def _pci_id(value: object) -> str:
    m = _PCI_ID.match(_non_empty(value).lower())
    if not m:
        raise Invalid(f"{describe(value)} is not a 4-digit hex PCI ID such as 8086")
    return m[1]


def _strings(
    raw: Mapping[str, Any],
    key: str,
    where: KeyPath,
    problems: Problems,
    item: Validator[str],
) -> tuple[str, ...]:
    if key not in raw:
        return ()
    values = problems.check(list_of(item, "strings", non_empty=True), raw[key], (*where, key))
    return tuple(values or ())


def _int(
    raw: Mapping[str, Any],
    key: str,
    where: KeyPath,
    problems: Problems,
    validate: Validator[int],
    required: bool = False,
) -> int | None:
    if raw.get(key) is None:
        if required:
            problems.add((*where, key), "required")
        return None
    return problems.check(validate, raw[key], (*where, key))


def _vf_drivers(
    raw: object, at: KeyPath, num_vfs: int | None, problems: Problems
) -> tuple[VfDriverRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        problems.add(at, f"expected a list of mappings, got {describe(raw)}")
        return ()
    rules: list[VfDriverRule] = []
    owner: dict[int, int] = {}
    for j, item in enumerate(raw):
        rule = (*at, f"[{j}]")
        if not isinstance(item, Mapping):
            problems.add(rule, f"expected a mapping with vfs and driver, got {describe(item)}")
            continue
        problems.unknown_keys(item, ("vfs", "driver"), rule)
        driver = item.get("driver")
        if driver not in ("vfio-pci", "kernel"):
            problems.add((*rule, "driver"), f"expected vfio-pci or kernel, got {describe(driver)}")
        try:
            vfs = parse_vf_ranges(item.get("vfs"))
        except ValueError as e:
            problems.add((*rule, "vfs"), str(e))
            continue
        if num_vfs is not None and vfs[-1] >= num_vfs:
            problems.add((*rule, "vfs"), f"VF {vfs[-1]} does not exist with numVfs {num_vfs}")
        clash = sorted({owner[v] for v in vfs if v in owner})
        if clash:
            problems.add((*rule, "vfs"), f"overlaps {dotted(at)}[{clash[0]}]")
        owner.update(dict.fromkeys(vfs, j))
        if driver in ("vfio-pci", "kernel"):
            rules.append(VfDriverRule(frozenset(vfs), driver))
    return tuple(rules)


def _check_overlaps(policies: Sequence[PfPolicy], problems: Problems) -> None:
    """Entries naming the same PF outright; selections by vendor/device can
    only be compared against a node, so plan() reports those."""
    for attr, key in (("pf_names", "pfNames"), ("root_devices", "rootDevices")):
        seen: dict[str, PfPolicy] = {}
        for policy in policies:
            for value in getattr(policy, attr):
                first = seen.setdefault(value, policy)
                if first is not policy:
                    problems.add(
                        ("sriov", f"[{policy.index}]", key),
                        f"{value} is already selected by {first.key}",
                    )
