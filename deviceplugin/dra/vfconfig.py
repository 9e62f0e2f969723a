"""The opaque per-request config a claim (or its DeviceClass) gives this driver.

```yaml
config:
- requests: [nic]            # optional: which requests it applies to
  opaque:
    driver: vf.nicwarden.io
    parameters:
      apiVersion: nicwarden.io/v1alpha1   # optional
      kind: VfConfig                      # optional
      driver: vfio-pci       # netdev (the VF's kernel driver) or vfio-pci; unset: as it is
      ifName: net1           # the pod-side interface name for the CNI
      networkName: prod/sriov-a   # the NetworkAttachmentDefinition, [namespace/]name
      vhostNet: true         # also give the container /dev/vhost-net and /dev/net/tun
```

Several configs may apply to one request (the class's first, then the
claim's, in the allocation's order): later keys override earlier ones. Every
config addressed to us is validated before anything is changed, and a
problem names its place (``status.allocation.devices.config[1].opaque
.parameters.vhostNet``), so a bad config fails its claim with nothing done.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nicwarden.agent.schema import Invalid, Problems, describe, enum
from nicwarden.deviceplugin.dra.claims import OpaqueConfig

API_VERSION = "nicwarden.io/v1alpha1"
KIND = "VfConfig"
NETDEV = "netdev"
VFIO = "vfio-pci"
# What each config value asks binding.bind() for.
BIND_TARGET = {NETDEV: "kernel", VFIO: "vfio-pci"}

_IFNAME_MAX = 15  # IFNAMSIZ - 1
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL)
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class VfConfig:
    driver: str | None = None  # NETDEV, VFIO, or None: leave the VF's driver alone
    if_name: str | None = None
    network_name: str | None = None
    vhost_net: bool = False


def _exact(expected: str) -> Any:
    def validate(value: object) -> str:
        if value != expected:
            raise Invalid(f"expected {expected}, got {describe(value)}")
        return expected

    return validate


def _strict_bool(value: object) -> bool:
    # The parameters are JSON: a string "true" is a wrong type, not a boolean.
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def _if_name(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= _IFNAME_MAX
        or value in (".", "..")
        or any(c in value for c in "/:")
        or any(c.isspace() for c in value)
    ):
        raise Invalid(
            f"expected an interface name of 1-{_IFNAME_MAX} characters without '/', ':'"
            f" or spaces, got {describe(value)}"
        )
    return value


def _network_name(value: object) -> str:
    ok = isinstance(value, str) and len(value) <= 253 + 64
    if ok:
        assert isinstance(value, str)
        namespace, slash, name = value.rpartition("/")
        ok = bool(_NAME.fullmatch(name)) and len(name) <= 253
        if slash:
            ok = ok and bool(_NAMESPACE.fullmatch(namespace)) and len(namespace) <= 63
    if not ok:
        raise Invalid(
            f"expected a NetworkAttachmentDefinition name, [namespace/]name, got {describe(value)}"
        )
    assert isinstance(value, str)
    return value


_FIELDS: dict[str, Any] = {
    "apiVersion": _exact(API_VERSION),
    "kind": _exact(KIND),
    "driver": enum(NETDEV, VFIO),
    "ifName": _if_name,
    "networkName": _network_name,
    "vhostNet": _strict_bool,
}
_ATTRS = {
    "driver": "driver",
    "ifName": "if_name",
    "networkName": "network_name",
    "vhostNet": "vhost_net",
}


def config_path(index: int) -> str:
    return f"status.allocation.devices.config[{index}].opaque.parameters"


def parse_parameters(parameters: object, problems: Problems, where: str) -> dict[str, Any]:
    """The keys one config sets (attribute name -> value); problems are
    recorded under ``where``."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        problems.add(where, f"expected an object, got {describe(parameters)}")
        return {}
    problems.unknown_keys(parameters, list(_FIELDS), where)
    out: dict[str, Any] = {}
    for key, validate in _FIELDS.items():
        if key not in parameters:
            continue
        try:
            value = validate(parameters[key])
        except Invalid as err:
            problems.extend(err.problems, f"{where}.{key}")
            continue
        if key in _ATTRS:
            out[_ATTRS[key]] = value
    return out


def configs_for(configs: Sequence[OpaqueConfig], requests: Sequence[str]) -> dict[str, VfConfig]:
    """Each request's merged config; raises :class:`Invalid` listing every
    problem in every config addressed to us."""
    problems = Problems()
    parsed = [(c, parse_parameters(c.parameters, problems, config_path(c.index))) for c in configs]
    problems.raise_if_any()
    out: dict[str, VfConfig] = {}
    for request in requests:
        merged: dict[str, Any] = {}
        for config, values in parsed:
            if config.applies_to(request):
                merged.update(values)
        out[request] = VfConfig(**merged)
    return out
