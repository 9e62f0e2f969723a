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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DEVICE_TYPE = "netDevice"

# Kubelet checks the resource name as a Kubernetes qualified name: the name
# part is at most 63 characters and starts and ends alphanumeric; the brief's
# character set is narrower still (no dots).
_NAME_CHARS = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME_EDGES = re.compile(r"^[a-zA-Z0-9](.*[a-zA-Z0-9])?$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HEX_ID = re.compile(r"^(0x)?[0-9a-f]{1,4}$")
_PCI_FULL = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_PCI_SHORT = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
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
class VfRange:
    """An inclusive range of VF indexes (``virtfnN``)."""

    first: int
    last: int


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


@dataclass
class _Issues:
    """Collects every problem in one pool so the user sees them all at once."""

    index: int
    pool: str | None = None
    found: list[ConfigIssue] = field(default_factory=list)

    def add(self, key: str, value: object, message: str) -> None:
        self.found.append(ConfigIssue(self.index, self.pool, key, value, message))


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
        issues = _Issues(index)
        pool = _parse_pool(entry, default_prefix, issues)
        if pool is not None and pool.name in seen:
            issues.add("resourceName", pool.name, "duplicate: an earlier pool has this name")
        if issues.found or pool is None:
            errors.extend(issues.found)
            continue
        seen.add(pool.name)
        pools.append(pool)
    return ParsedConfig(tuple(pools), tuple(errors))


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


def _parse_pool(entry: object, default_prefix: str, issues: _Issues) -> PoolConfig | None:
    if not isinstance(entry, Mapping):
        issues.add("(pool)", entry, "must be an object")
        return None
    name = entry.get("resourceName")
    if isinstance(name, str):
        issues.pool = name
    if not isinstance(name, str) or not _NAME_CHARS.match(name):
        issues.add("resourceName", name, "required; letters, digits, '_' and '-' only")
    elif len(name) > 63 or not _NAME_EDGES.match(name):
        issues.add(
            "resourceName",
            name,
            "must be at most 63 characters and start and end with a letter or digit",
        )
    for key in entry:
        if key in _UPSTREAM_ONLY_POOL_KEYS:
            issues.add(str(key), entry[key], "not supported on this agent")
        elif key not in _POOL_KEYS:
            issues.add(str(key), entry[key], "unknown key")
    prefix = entry.get("resourcePrefix", default_prefix)
    if not isinstance(prefix, str):
        issues.add("resourcePrefix", prefix, "must be a string")
    elif problem := validate_prefix(prefix):
        issues.add("resourcePrefix", prefix, problem)
    device_type = entry.get("deviceType", DEFAULT_DEVICE_TYPE)
    if not isinstance(device_type, str):
        issues.add("deviceType", device_type, "must be a string")
    elif device_type in _UNSUPPORTED_DEVICE_TYPES:
        issues.add("deviceType", device_type, "not supported on this agent (only 'netDevice')")
    elif device_type != DEFAULT_DEVICE_TYPE:
        issues.add("deviceType", device_type, "unknown device type (only 'netDevice')")
    exclude = entry.get("excludeTopology", False)
    if not isinstance(exclude, bool):
        issues.add("excludeTopology", exclude, "must be true or false")
    _reject_rdma(entry, issues)
    selectors = _parse_selectors(entry, issues)
    if issues.found:
        return None
    assert isinstance(name, str) and isinstance(prefix, str) and isinstance(exclude, bool)
    return PoolConfig(name, prefix, DEFAULT_DEVICE_TYPE, exclude, selectors)


def _reject_rdma(obj: Mapping[Any, Any], issues: _Issues, where: str = "") -> None:
    if "isRdma" not in obj:
        return
    value, key = obj["isRdma"], f"{where}.isRdma" if where else "isRdma"
    if not isinstance(value, bool):
        issues.add(key, value, "must be true or false")
    elif value:
        issues.add(key, value, "RDMA devices are not supported on this agent")


def _parse_selectors(entry: Mapping[Any, Any], issues: _Issues) -> tuple[Selector, ...]:
    if "selectors" not in entry:
        return (Selector(),)
    raw = entry["selectors"]
    if isinstance(raw, Mapping):
        return (_parse_selector(raw, "selectors", issues),)
    if not isinstance(raw, list):
        issues.add("selectors", raw, "must be a list of selector objects (or one object)")
        return ()
    if not raw:
        issues.add(
            "selectors", raw, "an empty list selects nothing; omit the key to select every VF"
        )
        return ()
    out: list[Selector] = []
    for i, item in enumerate(raw):
        key = f"selectors[{i}]"
        if not isinstance(item, Mapping):
            issues.add(key, item, "must be an object")
            continue
        out.append(_parse_selector(item, key, issues))
    return tuple(out)


def _parse_selector(raw: Mapping[Any, Any], where: str, issues: _Issues) -> Selector:
    for key in raw:
        if key in _UPSTREAM_ONLY_SELECTOR_KEYS:
            issues.add(f"{where}.{key}", raw[key], "not supported on this agent")
        elif key not in _LIST_SELECTOR_KEYS and key not in ("needVhostNet", "isRdma"):
            issues.add(f"{where}.{key}", raw[key], "unknown selector key")
    _reject_rdma(raw, issues, where)
    vhost = raw.get("needVhostNet", False)
    if not isinstance(vhost, bool):
        issues.add(f"{where}.needVhostNet", vhost, "must be true or false")
        vhost = False

    def items(key: str, parse: Callable[[object], str | None], what: str) -> list[str]:
        values = raw.get(key, [])
        if not isinstance(values, list):
            issues.add(f"{where}.{key}", values, "must be a list")
            return []
        out: list[str] = []
        for value in values:
            parsed = parse(value)
            if parsed is None:
                issues.add(f"{where}.{key}", value, what)
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
                issues.add(f"{where}.{key}", text, problem)
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
    ranges, problem = parse_vf_ranges(range_text)
    if ranges is None:
        return None, problem
    return DeviceRef(key, ranges), ""


def parse_vf_ranges(text: str) -> tuple[tuple[VfRange, ...] | None, str]:
    """Parse ``0-3,5`` (0-based, inclusive); returns (ranges, "") or (None, reason)."""
    if not text.strip():
        return None, "empty VF range after '#'"
    out: list[VfRange] = []
    for part in text.split(","):
        first_text, dash, last_text = part.strip().partition("-")
        if not first_text.isdigit() or (dash and not last_text.isdigit()):
            return None, f"VF range {part!r} must be N or N-M with non-negative integers"
        first = int(first_text)
        last = int(last_text) if dash else first
        if first > last:
            return None, f"VF range {part!r} runs backwards ({first} > {last})"
        out.append(VfRange(first, last))
    return tuple(out), ""


def normalize_pci_address(value: object) -> str | None:
    """Full lower-case BDF (``0000:18:02.1``), accepting the short form."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if _PCI_SHORT.match(text):
        text = "0000:" + text
    return text if _PCI_FULL.match(text) else None


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
