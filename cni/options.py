"""Typed SR-IOV attachment options, read from a NAD config with sriov-cni's
field names so existing NetworkAttachmentDefinitions work unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nicwarden.cni.errors import INVALID_CONFIG, CniError

VLAN_PROTOCOLS = ("802.1q", "802.1ad")
LINK_STATES = ("auto", "enable", "disable")
MTU_RANGE = (68, 65535)  # 68 is the IPv4 minimum; the driver may refuse less than 65535

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class SriovOptions:
    """None means "not given": leave the VF's current or default setting."""

    vlan: int | None = None
    vlan_qos: int | None = None
    vlan_proto: str | None = None  # "802.1q" or "802.1ad", lower-case
    mac: str | None = None  # lower-case, colon-separated
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None  # "auto", "enable" or "disable"
    min_tx_rate: int | None = None  # Mbps
    max_tx_rate: int | None = None  # Mbps, 0 = unlimited
    mtu: int | None = None
    ipam: dict[str, Any] | None = None  # the complete ipam section; has a "type"


def _bad(key: str, value: object, why: str) -> CniError:
    return CniError(INVALID_CONFIG, f"{key}: {json_repr(value)} {why}")


def json_repr(value: object) -> str:
    """Show a value as the user wrote it in JSON (``"100"`` vs ``100``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _int(config: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    if key not in config or config[key] is None:
        return None
    value = config[key]
    # bool is an int subclass in Python, but JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, value, "is not an integer")
    if not low <= value <= high:
        raise _bad(key, value, f"is out of range {low}-{high}")
    return value


def _choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
    if key not in config or config[key] is None:
        return None
    value = config[key]
    if not isinstance(value, str) or value.lower() not in choices:
        raise _bad(key, value, f"is not one of {', '.join(repr(c) for c in choices)}")
    return value.lower()


def _on_off(config: Mapping[str, Any], key: str) -> bool | None:
    value = _choice(config, key, ("on", "off"))
    return None if value is None else value == "on"


def normalize_mac(key: str, value: object) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise _bad(key, value, "is not a MAC address (xx:xx:xx:xx:xx:xx)")
    mac = value.lower().replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1:
        raise _bad(key, value, "is a multicast address; a VF needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise _bad(key, value, "is the all-zero address")
    return mac


def _ipam(config: Mapping[str, Any]) -> dict[str, Any] | None:
    value = config.get("ipam")
    # sriov-cni and the reference plugins treat a missing or type-less ipam
    # section ("ipam": {}) as "no IPAM": NADs written for them use that form.
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("ipam", value, "is not an object")
    ipam_type = value.get("type")
    if ipam_type is None or ipam_type == "":
        return None
    if not isinstance(ipam_type, str):
        raise _bad("ipam.type", ipam_type, "is not a string")
    if "/" in ipam_type or ipam_type in (".", ".."):
        raise _bad("ipam.type", ipam_type, "is not a plugin name")
    return dict(value)


def parse_sriov_options(
    config: Mapping[str, Any], runtime_config: Mapping[str, Any] | None = None
) -> SriovOptions:
    """Validate the SR-IOV keys of a plugin config; other keys are ignored,
    because CNI configs carry many (``args``, ``capabilities``, Multus's own).

    A ``runtimeConfig.mac`` (the pod annotation's MAC, which Multus injects
    when the plugin declares the ``mac`` capability) wins over the NAD's
    ``mac``, as in sriov-cni.
    """
    vlan = _int(config, "vlan", 0, 4094)
    vlan_qos = _int(config, "vlanQoS", 0, 7)
    vlan_proto = _choice(config, "vlanProto", VLAN_PROTOCOLS)
    # Same cross-field rules as sriov-cni's LoadConf: QoS bits and an 802.1ad
    # tag only mean something on a tagged VF.
    if vlan_qos and not vlan:
        raise _bad("vlanQoS", vlan_qos, "needs a non-zero vlan")
    if vlan_proto == "802.1ad" and not vlan:
        raise _bad("vlanProto", config["vlanProto"], "needs a non-zero vlan")

    runtime_mac = (runtime_config or {}).get("mac")
    if runtime_mac not in (None, ""):
        mac: str | None = normalize_mac("runtimeConfig.mac", runtime_mac)
    elif config.get("mac") not in (None, ""):
        mac = normalize_mac("mac", config["mac"])
    else:
        mac = None

    min_tx = _int(config, "min_tx_rate", 0, 2**31 - 1)
    max_tx = _int(config, "max_tx_rate", 0, 2**31 - 1)
    if min_tx is not None and max_tx is not None and max_tx > 0 and min_tx > max_tx:
        raise CniError(
            INVALID_CONFIG,
            f"min_tx_rate: {min_tx} is greater than max_tx_rate: {max_tx}",
        )

    return SriovOptions(
        vlan=vlan,
        vlan_qos=vlan_qos,
        vlan_proto=vlan_proto,
        mac=mac,
        spoofchk=_on_off(config, "spoofchk"),
        trust=_on_off(config, "trust"),
        link_state=_choice(config, "link_state", LINK_STATES),
        min_tx_rate=min_tx,
        max_tx_rate=max_tx,
        mtu=_int(config, "mtu", *MTU_RANGE),
        ipam=_ipam(config),
    )
