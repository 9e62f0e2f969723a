"""One CNI invocation (environment + stdin config), validated per the rules of
docs/contracts.md#cni-invocation and turned into a typed request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from nicwarden.agent.pci_address import normalize_pci_address
from nicwarden.cni.args import CniArgs, parse_cni_args
from nicwarden.cni.errors import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CniError,
)
from nicwarden.cni.options import SriovOptions, json_repr, parse_sriov_options
from nicwarden.cni.result import Result, ResultFormatError, parse_result
from nicwarden.cni.version import (
    COMMAND_MIN_VERSION,
    CURRENT_VERSION,
    SUPPORTED_VERSIONS,
    at_least,
    is_supported,
)


class Command(StrEnum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    VERSION = "VERSION"
    STATUS = "STATUS"
    GC = "GC"


# SPEC 1.1.0 "Input" of each command (docs/contracts.md#cni-invocation). CNI_PATH is optional for
# ADD/DEL/CHECK in the SPEC even though skel demands it; we need it only to
# delegate IPAM, and the delegate reports it missing when it matters.
REQUIRED_ENV: dict[Command, tuple[str, ...]] = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    Command.GC: ("CNI_PATH",),
    Command.STATUS: (),
    Command.VERSION: (),
}

# libcni utils.go ValidateContainerID / ValidateNetworkName.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_MAX = 15  # IFNAMSIZ - 1, in bytes
# Bytes the kernel's isspace() accepts (lib/ctype.c): ASCII space, \t..\r,
# and 0xA0, which appears inside UTF-8 sequences such as "à" (c3 a0).
_KERNEL_SPACE = frozenset({0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0xA0})

VALID_ATTACHMENTS_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")

T = TypeVar("T")

# Finds the version in a config too broken to decode, to label the error.
_VERSION_RE = re.compile(r'"cniVersion"\s*:\s*"([^"\\]*)"')


@dataclass(frozen=True)
class Attachment:
    """One still-valid attachment named by GC."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class CniRequest:
    command: Command
    cni_version: str
    env: Mapping[str, str]  # every CNI_* variable as received (delegates get the same)
    container_id: str = ""
    netns: str = ""  # "" when the runtime gave none (DEL may)
    ifname: str = ""
    cni_path: str = ""
    args: CniArgs = field(default_factory=CniArgs)
    config: Mapping[str, Any] = field(default_factory=dict)  # the complete stdin config
    network_name: str = ""
    plugin_type: str = ""
    runtime_config: Mapping[str, Any] = field(default_factory=dict)
    device_id: str | None = None  # normalised PCI BDF "0000:18:02.5"
    device_info_file: str | None = None  # Multus CNIDeviceInfoFile
    prev_result: Result | None = None
    prev_result_raw: Mapping[str, Any] | None = None
    options: SriovOptions | None = None  # None only for a DEL whose config is invalid
    valid_attachments: tuple[Attachment, ...] = ()  # GC only
    # Config problems tolerated because the command must still do its job (a
    # DEL of an attachment whose ADD was rejected); the agent logs them.
    warnings: tuple[str, ...] = ()

    @property
    def attachment_key(self) -> tuple[str, str, str]:
        """Plugins that keep state key it on (network, container, ifname)."""
        return (self.network_name, self.container_id, self.ifname)


def input_version(stdin: str) -> str | None:
    """The config's cniVersion when one can be read, for labelling errors
    raised before the config is fully validated (cni#827 leaves this open)."""
    try:
        obj = json.loads(stdin)
    except ValueError:
        match = _VERSION_RE.search(stdin)
        return match.group(1) if match else None
    if isinstance(obj, dict) and isinstance(obj.get("cniVersion"), str):
        return str(obj["cniVersion"])
    return None


def error_version(stdin: str) -> str:
    return input_version(stdin) or CURRENT_VERSION


def parse_request(env: Mapping[str, str], stdin: str) -> CniRequest:
    """Validate one invocation; raises CniError with the SPEC's code."""
    cni_env = {k: v for k, v in env.items() if k.startswith("CNI_")}
    command = _command(cni_env)
    _require_env(command, cni_env)
    container_id = cni_env.get("CNI_CONTAINERID", "")
    ifname = cni_env.get("CNI_IFNAME", "")
    if container_id:
        _check_container_id(container_id)
    if command in (Command.ADD, Command.CHECK, Command.DEL):
        _check_ifname(ifname)
    args = parse_cni_args(cni_env.get("CNI_ARGS", ""))

    if command is Command.VERSION:
        # VERSION needs no config; stdin may hold only {"cniVersion": ...} or nothing.
        version = input_version(stdin)
        return CniRequest(
            command=command,
            cni_version=version if version and is_supported(version) else CURRENT_VERSION,
            env=cni_env,
            args=args,
        )

    config = _decode(stdin)
    version = _version(config, command)
    name = _network_name(config)
    plugin_type = _plugin_type(config)
    runtime_config = _runtime_config(config)

    # A DEL must clean up even for a config that ADD would reject (the runtime
    # DELs after every failed ADD), so content errors only warn there.
    checks = _Checks(lenient=command is Command.DEL)
    device_id = checks.run(lambda: _device_id(config, runtime_config), None)
    device_info_file = checks.run(lambda: _device_info_file(config, runtime_config), None)
    no_prev: tuple[Result | None, Mapping[str, Any] | None] = (None, None)
    prev = checks.run(lambda: _prev_result(config, version), no_prev)
    options = checks.run(lambda: parse_sriov_options(config, runtime_config), None)
    valid = _valid_attachments(config) if command is Command.GC else ()

    return CniRequest(
        command=command,
        cni_version=version,
        env=cni_env,
        container_id=container_id,
        netns=cni_env.get("CNI_NETNS", ""),
        ifname=ifname,
        cni_path=cni_env.get("CNI_PATH", ""),
        args=args,
        config=config,
        network_name=name,
        plugin_type=plugin_type,
        runtime_config=runtime_config,
        device_id=device_id,
        device_info_file=device_info_file,
        prev_result=prev[0],
        prev_result_raw=prev[1],
        options=options,
        valid_attachments=valid,
        warnings=tuple(checks.warnings),
    )


class _Checks:
    """Runs config checks, either raising their CniError or, when lenient,
    recording it as a warning and substituting a default."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.warnings: list[str] = []

    def run(self, read: Callable[[], T], default: T) -> T:
        try:
            return read()
        except CniError as err:
            if not self.lenient:
                raise
            self.warnings.append(err.msg)
            return default


# ----------------------------------------------------------- environment


def _command(env: Mapping[str, str]) -> Command:
    raw = env.get("CNI_COMMAND", "")
    if not raw:
        raise CniError(INVALID_ENVIRONMENT, "missing environment variables: CNI_COMMAND")
    try:
        return Command(raw)
    except ValueError:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {raw}") from None


def _require_env(command: Command, env: Mapping[str, str]) -> None:
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"missing environment variables for {command}: {', '.join(missing)}",
        )


def _check_container_id(container_id: str) -> None:
    if not _ID_RE.fullmatch(container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_CONTAINERID {container_id!r} is invalid: it must match {_ID_RE.pattern}",
        )


def ifname_problem(ifname: str) -> str | None:
    """Why the kernel would refuse or rewrite ``ifname`` (its
    ``dev_valid_name`` rules plus the ``%d`` template expansion), or None.

    The limit is bytes, not characters: a 16-byte UTF-8 name fails in the
    kernel with ERANGE after we have already moved the VF. A ``%`` makes the
    kernel pick a free name from a template (``net%d`` arrives as ``net0``),
    so nothing would find the VF under the name we asked for."""
    raw = ifname.encode("utf-8", "surrogateescape")
    if not raw:
        return "is empty"
    if len(raw) > IFNAME_MAX:
        return (
            f"is {len(raw)} bytes long; the kernel's limit is {IFNAME_MAX} bytes"
            " (UTF-8 characters may take several)"
        )
    if ifname in (".", ".."):
        return "is not a valid interface name"
    if "%" in ifname:
        return "contains '%', which the kernel would expand as a name template"
    if any(b in _KERNEL_SPACE or b in (0x2F, 0x3A) for b in raw):
        return "contains '/', ':' or whitespace"
    return None


def _check_ifname(ifname: str) -> None:
    problem = ifname_problem(ifname)
    if problem:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} {problem}")


# ----------------------------------------------------------------- config


def _decode(stdin: str) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except ValueError as err:
        raise CniError(DECODE_FAILURE, f"decoding the network config from stdin: {err}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "the network config on stdin is not a JSON object")
    return config


def _version(config: Mapping[str, Any], command: Command) -> str:
    version = config.get("cniVersion")
    supported = ", ".join(SUPPORTED_VERSIONS)
    if not is_supported(version):
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {json_repr(version)}, plugin supports [{supported}]",
        )
    minimum = COMMAND_MIN_VERSION.get(command)
    if minimum and not at_least(version, minimum):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {minimum} or later; config is {version!r}",
        )
    return version


def _network_name(config: Mapping[str, Any]) -> str:
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, f"name: {json_repr(name)} is missing or not a string")
    if not _ID_RE.fullmatch(name):
        raise CniError(INVALID_CONFIG, f"name: {name!r} is invalid: it must match {_ID_RE.pattern}")
    return name


def _plugin_type(config: Mapping[str, Any]) -> str:
    plugin_type = config.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniError(INVALID_CONFIG, f"type: {json_repr(plugin_type)} is missing or not a string")
    return plugin_type


def _runtime_config(config: Mapping[str, Any]) -> dict[str, Any]:
    value = config.get("runtimeConfig")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig: not a JSON object")
    return value


def _pci_address(key: str, value: object) -> str:
    """``DDDD:BB:DD.F`` in lower case; a bare ``BB:DD.F`` gets domain 0000."""
    address = normalize_pci_address(value)
    if address is None:
        raise CniError(
            INVALID_CONFIG,
            f"{key}: {json_repr(value)} is not a PCI address (DDDD:BB:DD.F)",
        )
    return address


def _device_id(config: Mapping[str, Any], runtime_config: Mapping[str, Any]) -> str | None:
    # Multus writes top-level deviceID and pciBusID (the same value)
    # and, only for plugins declaring the capability, runtimeConfig.deviceID
    # (docs/contracts.md#multus).
    for label, source, key in (
        ("deviceID", config, "deviceID"),
        ("pciBusID", config, "pciBusID"),
        ("runtimeConfig.deviceID", runtime_config, "deviceID"),
    ):
        value = source.get(key)
        if value not in (None, ""):
            return _pci_address(label, value)
    return None


def _device_info_file(config: Mapping[str, Any], runtime_config: Mapping[str, Any]) -> str | None:
    for label, source in (
        ("CNIDeviceInfoFile", config),
        ("runtimeConfig.CNIDeviceInfoFile", runtime_config),
    ):
        value = source.get("CNIDeviceInfoFile")
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not value.startswith("/"):
            raise CniError(INVALID_CONFIG, f"{label}: {json_repr(value)} is not an absolute path")
        return value
    return None


def _prev_result(
    config: Mapping[str, Any], version: str
) -> tuple[Result | None, Mapping[str, Any] | None]:
    raw = config.get("prevResult")
    if raw is None:
        return (None, None)
    try:
        # prevResult is in the config's cniVersion format.
        return (parse_result(raw, version), raw)
    except ResultFormatError as err:
        raise CniError(INVALID_CONFIG, f"prevResult: {err}") from None


def _valid_attachments(config: Mapping[str, Any]) -> tuple[Attachment, ...]:
    # libcni sends both spellings (docs/contracts.md#cni-commands); the SPEC's text names the second.
    key = next((k for k in VALID_ATTACHMENTS_KEYS if k in config), None)
    if key is None:
        # Without the list every attachment would look stale; refusing is the
        # only safe reading of a GC that names nothing to keep.
        raise CniError(INVALID_CONFIG, f"GC needs {VALID_ATTACHMENTS_KEYS[0]} in the config")
    items = config[key]
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, f"{key}: not a list")
    out = []
    for n, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("containerID"), str)
            or not isinstance(item.get("ifname"), str)
        ):
            raise CniError(
                INVALID_CONFIG,
                f"{key}[{n}]: {json_repr(item)} is not {{containerID, ifname}}",
            )
        out.append(Attachment(item["containerID"], item["ifname"]))
    return tuple(out)
