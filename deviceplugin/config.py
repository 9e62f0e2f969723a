"""Pool configuration: sriov-network-device-plugin compatible ``resourceList``.

Each entry becomes a :class:`PoolConfig` or, when invalid, one or more
:class:`ConfigIssue` s naming the pool, the key and the value; an invalid pool
is skipped and the valid ones keep working, because one typo must not take
every resource off the node.

Compatibility notes (upstream = k8snetworkplumbingwg/sriov-network-device-plugin):
- ``selectors`` is a list (a VF joins the pool when any selector matches) or,
  as in older upstream configs, a single object. Omitting it selects every VF.
- Within one selector every non-empty field must match (they narrow).
- ``pfNames`` / ``rootDevices`` entries may carry 0-based VF index ranges:
  ``ens1f0#0-3,5``.
- Selector keys upstream has but this agent cannot honour (RDMA, DDP, vDPA,
  auxiliary devices, ...) are rejected rather than ignored: ignoring a selector
  would silently widen the pool.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nicwarden.agent.pci_address import normalize_pci_address
from nicwarden.agent.schema import NO_VALUE, Problem, Problems, dotted
from nicwarden.agent.vf_ranges import VfRange, parse_vf_ranges

DEFAULT_DEVICE_TYPE = "netDevice"

# Kubelet checks the resource name as a Kubernetes qualified name: the name
# part is at most 63 characters and starts and ends alphanumeric; the brief's
# character set is narrower still (no dots).
_NAME_CHARS = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME_EDGES = re.compile(r"^[a-zA-Z0-9](.*[a-zA-Z0-9])?$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HEX_ID = re.compile(r"^(0x)?[0-9a-f]{1,4}$")
_IFNAME = re.compile(r"^[^/\s#:]{1,15}$")

_POOL_KEYS = {
    "resourceName",
    "resourcePrefix",
    "deviceType",
    "excludeTopology",
    "selectors",
    "isRdma",
}
_UPSTREAM_ONLY_POOL_KEYS = {"additionalInfo", "rootDevices", "sriovMode", "mdevMode"}
_LIST_SELECTOR_KEYS = (
    "vendors",
    "devices",
    "drivers",
    "pciAddresses",
    "pfNames",
    "rootDevices",
    "linkTypes",
)
_UPSTREAM_ONLY_SELECTOR_KEYS = {"ddpProfiles", "pKeys", "vdpaType", "auxTypes", "acpiIndexes"}
_UNSUPPORTED_DEVICE_TYPES = {"accelerator", "auxNetDevice", "vfio"}


@dataclass(frozen=True)
class DeviceRef:
    """A ``pfNames`` or ``rootDevices`` entry: a PF, optionally only some VFs."""

    key: str  # PF netdev name or PF PCI address
    vfs: tuple[VfRange, ...] | None = None  # None: every VF of the PF

    def includes(self, vf_index: int) -> bool:
        if self.vfs is None:
            return True
        return any(r.first <= vf_index <= r.last for r in self.vfs)


@dataclass(frozen=True)
class Selector:
    vendors: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    drivers: frozenset[str] = frozenset()
    pci_addresses: frozenset[str] = frozenset()
    pf_names: tuple[DeviceRef, ...] = ()
    root_devices: tuple[DeviceRef, ...] = ()
    link_types: frozenset[str] = frozenset()
    need_vhost_net: bool = False


@dataclass(frozen=True)
class PoolConfig:
    name: str
    prefix: str
    device_type: str = DEFAULT_DEVICE_TYPE
    exclude_topology: bool = False
    selectors: tuple[Selector, ...] = (Selector(),)

    @property
    def resource(self) -> str:
        return f"{self.prefix}/{self.name}"


@dataclass(frozen=True)
class ConfigIssue:
    """One reason a pool was skipped. ``index`` is the pool's position in
    ``resourceList`` (None for a problem with the list itself)."""

    index: int | None
    pool: str | None
    key: str
    value: object
    message: str

    def __str__(self) -> str:
        where = "resourceList" if self.index is None else f"resourceList[{self.index}]"
        if self.pool:
            where += f" ({self.pool!r})"
        return f"{where}: {self.key}={self.value!r}: {self.message}"


@dataclass(frozen=True)
class ParsedConfig:
    pools: tuple[PoolConfig, ...] = ()
    errors: tuple[ConfigIssue, ...] = ()


def parse_resource_list(raw: object, default_prefix: str) -> ParsedConfig:
    """Parse ``resourceList``; invalid pools are reported in ``errors`` and skipped."""
    prefix_problem = validate_prefix(default_prefix)
    if prefix_problem:
        issue = ConfigIssue(None, None, "resourcePrefix(default)", default_prefix, prefix_problem)
        return ParsedConfig(errors=(issue,))
    if not isinstance(raw, list):
        return ParsedConfig(
            errors=(ConfigIssue(None, None, "resourceList", raw, "must be a list of pool objects"),)
        )
    pools: list[PoolConfig] = []
    errors: list[ConfigIssue] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        # Every problem in one pool is collected, so the user sees them all at once.
        issues = Problems()
        pool = _parse_pool(entry, default_prefix, issues)
        if pool is not None and pool.name in seen:
            issues.add("resourceName", "duplicate: an earlier pool has this name", pool.name)
        if issues or pool is None:
            name = entry.get("resourceName") if isinstance(entry, Mapping) else None
            errors.extend(_issue(index, name, p) for p in issues)
            continue
        seen.add(pool.name)
        pools.append(pool)
    return ParsedConfig(tuple(pools), tuple(errors))


def _issue(index: int, name: object, problem: Problem) -> ConfigIssue:
    value = None if problem.value is NO_VALUE else problem.value
    pool = name if isinstance(name, str) else None
    return ConfigIssue(index, pool, dotted(problem.path), value, problem.reason)


def load_resource_list(path: Path) -> object:
    """Read an upstream-style config file (JSON or YAML) ``{"resourceList": [...]}``."""
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, Mapping) and "resourceList" in doc:
        return doc["resourceList"]
    return doc


def validate_prefix(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a resource domain, or None when it can."""
    if not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
        return "must be a lower-case DNS subdomain such as 'intel.com'"
    # Kubelet refuses device plugins in the reserved kubernetes.io domains.
    if prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"):
        return "the kubernetes.io domain is reserved for Kubernetes resources"
    return None


def _parse_pool(entry: object, default_prefix: str, issues: Problems) -> PoolConfig | None:
    if not isinstance(entry, Mapping):
        issues.add("(pool)", "must be an object", entry)
        return None
    name = entry.get("resourceName")
    if not isinstance(name, str) or not _NAME_CHARS.match(name):
        issues.add("resourceName", "required; letters, digits, '_' and '-' only", name)
    elif len(name) > 63 or not _NAME_EDGES.match(name):
        issues.add(
            "resourceName",
            "must be at most 63 characters and start and end with a letter or digit",
            name,
        )
    for key in entry:
        if key in _UPSTREAM_ONLY_POOL_KEYS:
            issues.add(str(key), "not supported on this agent", entry[key])
        elif key not in _POOL_KEYS:
            issues.add(str(key), "unknown key", entry[key])
    prefix = entry.get("resourcePrefix", default_prefix)
    if not isinstance(prefix, str):
        issues.add("resourcePrefix", "must be a string", prefix)
    elif problem := validate_prefix(prefix):
        issues.add("resourcePrefix", problem, prefix)
    device_type = entry.get("deviceType", DEFAULT_DEVICE_TYPE)
    if not isinstance(device_type, str):
        issues.add("deviceType", "must be a string", device_type)
    elif device_type in _UNSUPPORTED_DEVICE_TYPES:
        issues.add("deviceType", "not supported on this agent (only 'netDevice')", device_type)
    elif device_type != DEFAULT_DEVICE_TYPE:
        issues.add("deviceType", "unknown device type (only 'netDevice')", device_type)
    exclude = entry.get("excludeTopology", False)
    if not isinstance(exclude, bool):
        issues.add("excludeTopology", "must be true or false", exclude)
    _reject_rdma(entry, issues)
    selectors = _parse_selectors(entry, issues)
    if issues:
        return None
    assert isinstance(name, str) and isinstance(prefix, str) and isinstance(exclude, bool)
    return PoolConfig(name, prefix, DEFAULT_DEVICE_TYPE, exclude, selectors)


def _reject_rdma(obj: Mapping[Any, Any], issues: Problems, where: str = "") -> None:
    if "isRdma" not in obj:
        return
    value, key = obj["isRdma"], f"{where}.isRdma" if where else "isRdma"
    if not isinstance(value, bool):
        issues.add(key, "must be true or false", value)
    elif value:
        issues.add(key, "RDMA devices are not supported on this agent", value)


def parse_selectors(raw: object, issues: Problems) -> tuple[Selector, ...]:
    """A ``selectors`` value (list, single object) in the ``resourceList``
    language, for the other front-ends that choose VFs the same way (DRA).
    Problems are recorded under ``selectors``; omitted (None) selects every VF."""
    return _parse_selectors({} if raw is None else {"selectors": raw}, issues)


def _parse_selectors(entry: Mapping[Any, Any], issues: Problems) -> tuple[Selector, ...]:
    if "selectors" not in entry:
        return (Selector(),)
    raw = entry["selectors"]
    if isinstance(raw, Mapping):
        return (_parse_selector(raw, "selectors", issues),)
    if not isinstance(raw, list):
        issues.add("selectors", "must be a list of selector objects (or one object)", raw)
        return ()
    if not raw:
        issues.add(
            "selectors", "an empty list selects nothing; omit the key to select every VF", raw
        )
        return ()
    out: list[Selector] = []
    for i, item in enumerate(raw):
        key = f"selectors[{i}]"
        if not isinstance(item, Mapping):
            issues.add(key, "must be an object", item)
            continue
        out.append(_parse_selector(item, key, issues))
    return tuple(out)


def _parse_selector(raw: Mapping[Any, Any], where: str, issues: Problems) -> Selector:
    for key in raw:
        if key in _UPSTREAM_ONLY_SELECTOR_KEYS:
            issues.add(f"{where}.{key}", "not supported on this agent", raw[key])
        elif key not in _LIST_SELECTOR_KEYS and key not in ("needVhostNet", "isRdma"):
            issues.add(f"{where}.{key}", "unknown selector key", raw[key])
    _reject_rdma(raw, issues, where)
    vhost = raw.get("needVhostNet", False)
    if not isinstance(vhost, bool):
        issues.add(f"{where}.needVhostNet", "must be true or false", vhost)
        vhost = False

    def items(key: str, parse: Callable[[object], str | None], what: str) -> list[str]:
        values = raw.get(key, [])
        if not isinstance(values, list):
            issues.add(f"{where}.{key}", "must be a list", values)
            return []
        out: list[str] = []
        for value in values:
            parsed = parse(value)
            if parsed is None:
                issues.add(f"{where}.{key}", what, value)
            else:
                out.append(parsed)
        return out

    def refs(
        key: str, parse_key: Callable[[object], str | None], what: str
    ) -> tuple[DeviceRef, ...]:
        out: list[DeviceRef] = []
        for text in items(key, _as_text, "must be a non-empty string"):
            ref, problem = parse_device_ref(text, parse_key, what)
            if ref is None:
                issues.add(f"{where}.{key}", problem, text)
            else:
                out.append(ref)
        return tuple(out)

    return Selector(
        vendors=frozenset(items("vendors", _hex_id, "must be a hex PCI vendor ID such as '8086'")),
        devices=frozenset(items("devices", _hex_id, "must be a hex PCI device ID such as '154c'")),
        drivers=frozenset(items("drivers", _as_text, "must be a non-empty driver name")),
        pci_addresses=frozenset(
            items(
                "pciAddresses",
                normalize_pci_address,
                "must be a PCI address such as '0000:18:02.1'",
            )
        ),
        pf_names=refs("pfNames", _ifname, "PF name must be an interface name"),
        root_devices=refs("rootDevices", normalize_pci_address, "PF must be a PCI address"),
        link_types=frozenset(
            t.lower() for t in items("linkTypes", _as_text, "must be a link type such as 'ether'")
        ),
        need_vhost_net=vhost,
    )


def parse_device_ref(
    text: str, parse_key: Callable[[object], str | None], what: str
) -> tuple[DeviceRef | None, str]:
    """Parse ``<pf>[#<ranges>]``; returns (ref, "") or (None, reason)."""
    key_text, hashed, range_text = text.partition("#")
    key = parse_key(key_text)
    if key is None:
        return None, what
    if not hashed:
        return DeviceRef(key), ""
    try:
        ranges = parse_vf_ranges(range_text)
    except ValueError as e:
        return None, str(e)
    return DeviceRef(key, ranges), ""


def _hex_id(value: object) -> str | None:
    # YAML reads an unquoted 8086 as an integer; its decimal digits are what
    # the user typed, so they are taken as the hex digits.
    text = (
        str(value).strip().lower()
        if isinstance(value, str | int) and not isinstance(value, bool)
        else ""
    )
    if not _HEX_ID.match(text):
        return None
    return text.removeprefix("0x").zfill(4)


def _as_text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _ifname(value: object) -> str | None:
    return value if isinstance(value, str) and _IFNAME.match(value) else None
