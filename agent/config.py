"""The agent's YAML config, validated at start with precise errors.

The schema is declarative: each config class is a frozen dataclass whose
fields are declared with :func:`setting` (validator, default, doc). The YAML
key is the camelCase form of the attribute. A later section is one more
dataclass and one more ``setting(section(ThatConfig), ...)`` line.

Every problem is reported, not just the first, each as
``<source>: <dotted.key>: <reason>``, where the source is the file or
``command line`` for an override.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nicwarden.agent.errors import ConfigError

T = TypeVar("T")
Validator = Callable[[object], T]

OVERRIDE_SOURCE = "command line"
_META = "nicwarden.setting"


# -- problems -------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: tuple[str, ...]  # keys from the root; list items appear as "[3]"
    reason: str

    def render(self, source: str) -> str:
        return f"{source}: {dotted(self.path) or '<top level>'}: {self.reason}"


class Invalid(Exception):
    """Raised by a validator. A plain reason applies to the value itself;
    section validators raise several problems at sub-paths."""

    def __init__(self, reason: str = "", *, problems: Sequence[Problem] = ()) -> None:
        super().__init__(reason)
        self.problems = list(problems) or [Problem((), reason)]

    def under(self, key: str) -> list[Problem]:
        return [Problem((key, *p.path), p.reason) for p in self.problems]


def dotted(path: Sequence[str]) -> str:
    out = ""
    for part in path:
        out += part if part.startswith("[") or not out else f".{part}"
    return out


def describe(value: object) -> str:
    """How a bad value appears in an error: short, and in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- reusable validators ----------------------------------------------------


def _strict_int(value: object) -> int | None:
    # bool is an int subclass, but "port: yes" is a mistake, not port 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # Overrides from flags arrive as strings; accept the canonical form.
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return None


def int_range(low: int, high: int) -> Validator[int]:
    def validate(value: object) -> int:
        number = _strict_int(value)
        if number is None or not low <= number <= high:
            raise Invalid(f"expected an integer {low}-{high}, got {describe(value)}")
        return number

    return validate


port = int_range(1, 65535)


def positive_int(value: object) -> int:
    number = _strict_int(value)
    if number is None or number < 1:
        raise Invalid(f"expected a positive integer, got {describe(value)}")
    return number


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Invalid(f"expected true or false, got {describe(value)}")


def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a non-empty string, got {describe(value)}")
    return value


def path(value: object) -> Path:
    # A relative path in a daemon's config would depend on the cwd it was
    # started from; require the operator to say what they mean.
    text = string(value)
    if "\0" in text or not text.startswith("/"):
        raise Invalid(f"expected an absolute path, got {describe(value)}")
    return Path(text)


def enum(*choices: str) -> Validator[str]:
    def validate(value: object) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {describe(value)}")
        assert isinstance(value, str)
        return value

    return validate


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(value: object) -> float:
    """Seconds, as a number or a string with a unit: ``30``, ``1.5s``, ``500ms``, ``5m``, ``1h``."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds is None or not 0 < seconds < float("inf"):
        raise Invalid(
            f"expected a positive duration (seconds, or e.g. 500ms, 30s, 5m, 1h), got {describe(value)}"
        )
    return seconds


def ip_address(value: object) -> str:
    # Literals only: resolving a name at start would make config validity
    # depend on DNS, and hides what is actually bound.
    try:
        return str(ipaddress.ip_address(string(value)))
    except (Invalid, ValueError):
        raise Invalid(
            f"expected an IP address such as 127.0.0.1 or ::1, got {describe(value)}"
        ) from None


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def dns_subdomain(value: object) -> str:
    text = string(value)
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise Invalid(f"expected a DNS subdomain such as nicwarden.io, got {describe(value)}")
    return text


def mapping(value: object) -> dict[str, Any]:
    """Any mapping with string keys, kept raw for its owner to validate."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a mapping, got {describe(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise Invalid(f"expected string keys, got key {describe(bad[0])}")
    return copy.deepcopy(dict(value))


def list_of_mappings(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple):
        raise Invalid(f"expected a list of mappings, got {describe(value)}")
    items: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for index, item in enumerate(value):
        try:
            items.append(mapping(item))
        except Invalid as e:
            problems += e.under(f"[{index}]")
    if problems:
        raise Invalid(problems=problems)
    return items


def optional(validate: Validator[T]) -> Validator[T | None]:
    def validate_optional(value: object) -> T | None:
        return None if value is None else validate(value)

    return validate_optional


# -- the schema mechanism ---------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    validate: Validator[Any]
    doc: str
    key: str | None  # YAML key when not the camelCase of the attribute


def setting(validate: Validator[T], default: T, doc: str, *, key: str | None = None) -> T:
    """Declare a config field: how to validate it, its default and what it is for."""
    metadata = {_META: _Spec(validate, doc, key)}
    if isinstance(default, list | dict):
        # Each config gets its own copy, so no caller can mutate the default.
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _settings(cls: type[Any]) -> dict[str, tuple[dataclasses.Field[Any], _Spec]]:
    """YAML key -> (dataclass field, spec) for every declared setting."""
    out: dict[str, tuple[dataclasses.Field[Any], _Spec]] = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if isinstance(spec, _Spec):
            out[spec.key or _camel(f.name)] = (f, spec)
    return out


def _unknown_key(key: object, known: Sequence[str]) -> Problem:
    name = key if isinstance(key, str) else describe(key)
    hint = difflib.get_close_matches(str(name), known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known keys: {', '.join(known)})"
    return Problem((str(name),), f"unknown key{suggestion}")


def parse_section(cls: type[T], raw: object) -> T:
    """Build config class ``cls`` from a raw mapping, or raise every problem found."""
    if not isinstance(raw, Mapping):
        raise Invalid(f"expected a mapping, got {describe(raw)}")
    specs = _settings(cls)
    problems = [_unknown_key(k, list(specs)) for k in raw if k not in specs]
    values: dict[str, Any] = {}
    for key, (f, spec) in specs.items():
        if key not in raw:
            continue
        try:
            values[f.name] = spec.validate(raw[key])
        except Invalid as e:
            problems += e.under(key)
    if problems:
        raise Invalid(problems=problems)
    built = cls(**values)
    check: Callable[[], None] | None = getattr(built, "check", None)
    if check is not None:
        check()  # cross-field rules, run only once every field is valid
    return built


def section(cls: type[T]) -> Validator[T]:
    """Validator for a nested config section."""

    def validate(value: object) -> T:
        return parse_section(cls, value)

    return validate


def _plain(value: object) -> object:
    if isinstance(value, Path | SimShape):
        return str(value)
    if _is_section(value):
        return to_plain_dict(value)
    return copy.deepcopy(value)


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and bool(_settings(type(value)))


def to_plain_dict(config: object) -> dict[str, object]:
    """A config object as the YAML-shaped mapping that would produce it."""
    assert dataclasses.is_dataclass(config) and not isinstance(config, type)
    return {key: _plain(getattr(config, f.name)) for key, (f, _) in _settings(type(config)).items()}


@dataclass(frozen=True)
class SettingDoc:
    key: str  # dotted YAML path
    default: object
    doc: str


def settings_reference(cls: type[Any], prefix: str = "") -> list[SettingDoc]:
    """Every setting with its default, nested sections flattened, for docs."""
    defaults = cls()
    rows: list[SettingDoc] = []
    for key, (f, spec) in _settings(cls).items():
        default = getattr(defaults, f.name)
        if _is_section(default):
            rows += settings_reference(type(default), f"{prefix}{key}.")
        else:
            rows.append(SettingDoc(f"{prefix}{key}", _plain(default), spec.doc))
    return rows


# -- the agent's config -----------------------------------------------------


@dataclass(frozen=True)
class SimShape:
    """``simulate: 2x8``: a simulated node with 2 PFs of 8 VFs each."""

    pfs: int
    vfs: int

    def __str__(self) -> str:
        return f"{self.pfs}x{self.vfs}"


_SIM_PFS = (1, 16)
_SIM_VFS = (0, 256)


def simulate_spec(value: object) -> SimShape | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return mapping(value)  # the simulator validates its own detailed spec
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", value) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f"expected <pfs>x<vfs> (e.g. 2x8) or a mapping, got {describe(value)}")
    shape = SimShape(int(match[1]), int(match[2]))
    if not _SIM_PFS[0] <= shape.pfs <= _SIM_PFS[1]:
        raise Invalid(f"expected {_SIM_PFS[0]}-{_SIM_PFS[1]} PFs, got {shape.pfs}")
    if not _SIM_VFS[0] <= shape.vfs <= _SIM_VFS[1]:
        raise Invalid(f"expected {_SIM_VFS[0]}-{_SIM_VFS[1]} VFs per PF, got {shape.vfs}")
    return shape


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = setting(boolean, True, "Serve Prometheus metrics over HTTP.")
    address: str = setting(ip_address, "127.0.0.1", "Address the metrics endpoint binds.")
    port: int = setting(port, 9464, "TCP port of the metrics endpoint.")
    allow_remote: bool = setting(
        boolean, False, "Allow binding a non-loopback address (exposes metrics off-node)."
    )

    def check(self) -> None:
        # The agent never exposes itself off-node unless explicitly told to.
        if self.enabled and not self.allow_remote and not _is_loopback(self.address):
            raise Invalid(
                problems=[
                    Problem(
                        ("address",),
                        f"{self.address} is not a loopback address;"
                        " set metrics.allowRemote: true to expose metrics off-node",
                    )
                ]
            )


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


@dataclass(frozen=True)
class PolicyConfig:
    enabled: bool = setting(boolean, True, "Enforce MultiNetworkPolicy with the eBPF datapath.")
    allow_icmp: bool = setting(
        boolean, False, "Let ICMP/ICMPv6 through isolated interfaces whatever the ports say."
    )
    keep_established: bool = setting(
        boolean,
        False,
        "Keep flows a policy change no longer allows until they expire (default: cut them).",
    )
    bpf_instance: str = setting(
        string, "default", "Name of the pinned datapath under /sys/fs/bpf/nicwarden/."
    )

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.bpf_instance):
            raise Invalid(
                problems=[Problem(("bpfInstance",), "expected 1-64 letters, digits, '_' or '-'")]
            )


@dataclass(frozen=True)
class KubernetesConfig:
    watch: bool = setting(
        boolean,
        False,
        "Watch the Kubernetes API for Pods, Namespaces, NADs and MultiNetworkPolicies.",
    )
    kubeconfig: Path | None = setting(
        optional(path),
        None,
        "kubeconfig to use; unset: the in-cluster service account, else $KUBECONFIG.",
    )
    events: bool = setting(
        boolean, True, "Post Events for invalid policies and failed attachments (needs watch)."
    )


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path = setting(path, Path("/var/lib/nicwarden"), "Where the state database lives.")
    socket: Path = setting(
        path, Path("/run/nicwarden/agent.sock"), "Unix socket of the gRPC admin API."
    )
    cni_socket: Path = setting(
        path, Path("/run/nicwarden/cni.sock"), "Unix socket the CNI shim talks HTTP to."
    )
    sysfs_root: Path = setting(path, Path("/sys"), "Root of sysfs (a temp dir when simulated).")
    dev_root: Path = setting(path, Path("/dev"), "Root of /dev (vfio device nodes).")
    log_level: str = setting(enum("debug", "info", "warning", "error"), "info", "Log verbosity.")
    log_format: str = setting(enum("json", "text"), "json", "Log line format.")
    metrics: MetricsConfig = setting(
        section(MetricsConfig), MetricsConfig(), "Prometheus metrics endpoint."
    )
    simulate: SimShape | dict[str, Any] | None = setting(
        simulate_spec, None, "Run against a simulated node: <pfs>x<vfs> (e.g. 2x8) or a mapping."
    )
    kubelet_dir: Path = setting(
        path, Path("/var/lib/kubelet/device-plugins"), "Kubelet's device plugin directory."
    )
    device_info_dir: Path = setting(
        path, Path("/var/run/k8s.cni.cncf.io/devinfo"), "Root of device-info files."
    )
    manifests_dir: Path | None = setting(
        optional(path), None, "Read Kubernetes objects from this directory instead of the API."
    )
    kubernetes: KubernetesConfig = setting(
        section(KubernetesConfig), KubernetesConfig(), "Kubernetes API access."
    )
    reconcile_interval: float = setting(
        duration, 30.0, "Seconds between full reconciles against the kernel."
    )
    # Owned by later work: only the container type is checked here.
    resource_list: list[dict[str, Any]] = setting(
        list_of_mappings, [], "Device plugin resource pools."
    )
    sriov: list[dict[str, Any]] = setting(list_of_mappings, [], "SR-IOV PF provisioning.")
    allow_no_iommu: bool = setting(
        boolean,
        False,
        "Allow binding VFs to vfio-pci without an IOMMU (unsafe noiommu mode; DPDK only).",
    )
    device_timeout: float = setting(
        duration, 30.0, "Seconds a sysfs write (sriov_numvfs, driver bind) may take."
    )
    resource_prefix: str = setting(
        dns_subdomain, "nicwarden.io", "Prefix of extended resource names."
    )
    policy: PolicyConfig = setting(
        section(PolicyConfig), PolicyConfig(), "MultiNetworkPolicy enforcement."
    )

    def check(self) -> None:
        if self.socket == self.cni_socket:
            raise Invalid(problems=[Problem(("cniSocket",), "must differ from socket")])
        if self.kubernetes.watch and self.manifests_dir is not None:
            raise Invalid(
                problems=[
                    Problem(
                        ("manifestsDir",),
                        "set either manifestsDir (standalone) or kubernetes.watch, not both",
                    )
                ]
            )

    def to_dict(self) -> dict[str, object]:
        """The effective config, YAML-shaped, for logging at start."""
        return to_plain_dict(self)


# -- loading ----------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which YAML silently resolves
    to the last one: an operator editing the first would see no effect."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue  # non-string keys are reported by validation, unhashable ones by YAML
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | None, overrides: Mapping[str, object]) -> AgentConfig:
    """Load ``path`` (None: defaults only), apply dotted-key ``overrides``, validate."""
    source = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(path) if path is not None else {}
    origins = _apply_overrides(raw, overrides, source)
    try:
        return parse_section(AgentConfig, raw)
    except Invalid as e:
        raise ConfigError(_render(e.problems, origins, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_error(e)}") from None
    if data is None:  # an empty file means all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {describe(data)}")
    return data


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"


def _apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, object], file_source: str
) -> dict[tuple[str, ...], str]:
    """Merge overrides into ``raw`` in place; returns which paths they set."""
    origins: dict[tuple[str, ...], str] = {}
    problems: list[Problem] = []
    for dotted_key, value in overrides.items():
        keys = tuple(dotted_key.split("."))
        if not all(keys):
            problems.append(Problem((dotted_key,), "malformed key"))
            continue
        parent = raw
        for depth, key in enumerate(keys[:-1]):
            if key not in parent:
                origins[keys[: depth + 1]] = OVERRIDE_SOURCE
            child = parent.setdefault(key, {})
            if not isinstance(child, dict):
                reason = f"cannot set {dotted_key}: {dotted(keys[: depth + 1])} is not a mapping"
                problems.append(Problem(keys, reason))
                break
            parent = child
        else:
            parent[keys[-1]] = copy.deepcopy(value)
            origins[keys] = OVERRIDE_SOURCE
    if problems:
        raise ConfigError(
            _render(problems, {p.path: OVERRIDE_SOURCE for p in problems}, file_source)
        )
    return origins


def _render(
    problems: Sequence[Problem], origins: Mapping[tuple[str, ...], str], default: str
) -> str:
    """One line per problem, each naming where the bad value came from."""
    return "\n".join(p.render(_origin(p.path, origins, default)) for p in problems)


def _origin(path: tuple[str, ...], origins: Mapping[tuple[str, ...], str], default: str) -> str:
    for length in range(len(path), 0, -1):
        if path[:length] in origins:
            return origins[path[:length]]
    return default
