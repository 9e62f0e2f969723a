"""PF-side VF admin attributes (MAC, VLAN, spoof check, trust, link state,
rates) over rtnetlink, built by hand from the kernel uapi.

Layout (``include/uapi/linux/if_link.h``)::

    RTM_SETLINK  ifinfomsg{index = PF}
      IFLA_VFINFO_LIST (22)
        IFLA_VF_INFO (1)
          IFLA_VF_MAC | IFLA_VF_VLAN | IFLA_VF_VLAN_LIST | IFLA_VF_SPOOFCHK | ...

Everything here is pure (message builders and reply parsers); requests go
through ``rtnl.netlink_request``, the framing's one function that talks to
the kernel (a transport the configurator takes, so tests can answer). Netlink
integers are host-endian; only ``vlan_proto`` is big-endian (``__be16``).
"""

from __future__ import annotations

import itertools
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

from nicwarden.agent.errors import (
    HostError,
    InvalidArgument,
    NicwardenError,
    NotFound,
    Unsupported,
)
from nicwarden.agent.host import errnos
from nicwarden.agent.host.rtnl import (
    IFINFOMSG,
    NLM_F_ACK,
    NLM_F_REQUEST,
    RTM_GETLINK,
    RTM_NEWLINK,
    RTM_SETLINK,
    NetlinkFailure,
    NetlinkMessage,
    Transport,
    attrs,
    ifinfomsg,
    netlink_request,
    nla,
    nlmsg,
)

# -- uapi constants -----------------------------------------------------------

IFLA_VFINFO_LIST = 22
IFLA_EXT_MASK = 29
RTEXT_FILTER_VF = 1

IFLA_VF_INFO = 1
IFLA_VF_MAC = 1
IFLA_VF_VLAN = 2
IFLA_VF_SPOOFCHK = 4
IFLA_VF_LINK_STATE = 5
IFLA_VF_RATE = 6
IFLA_VF_TRUST = 9
IFLA_VF_VLAN_LIST = 12
IFLA_VF_VLAN_INFO = 1

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_PROTOS = {"802.1q": ETH_P_8021Q, "802.1ad": ETH_P_8021AD}
LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}

_U32 = struct.Struct("=I")
# The kernel reports "driver did not say" as (u32)-1 for spoofchk and trust.
_UNSET = 0xFFFFFFFF

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# -- the settings -------------------------------------------------------------


@dataclass(frozen=True)
class VfSettings:
    """A VF's admin attributes as the PF sees them. ``None``: not known (get)
    or leave unchanged (set). Names and values follow sriov-cni's NAD keys."""

    mac: str | None = None  # lower-case "aa:bb:cc:dd:ee:ff"; all-zero = no admin MAC
    vlan: int | None = None  # 0-4094; 0 = untagged
    qos: int | None = None  # 802.1p priority 0-7
    vlan_proto: str | None = None  # "802.1q" or "802.1ad"
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None  # "auto", "enable" or "disable"
    min_tx_rate: int | None = None  # Mbps, 0 = no guarantee
    max_tx_rate: int | None = None  # Mbps, 0 = unlimited

    def given(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


class VfConfigurator(Protocol):
    def get(self, pf_ifname: str, vf: int) -> VfSettings: ...

    def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None: ...


def validate(vf: int, s: VfSettings) -> None:
    """Reject what every driver would: bad ranges, a multicast MAC, qos or an
    S-tag without a VLAN to carry them."""
    if vf < 0:
        raise InvalidArgument(f"VF index must be >= 0, got {vf}")
    if s.mac is not None:
        mac = s.mac.lower()
        if not _MAC.match(mac):
            raise InvalidArgument(f"mac {s.mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
        # A VF's MAC must be unicast (is_multicast_ether_addr() -> EINVAL in drivers).
        if int(mac[:2], 16) & 1:
            raise InvalidArgument(f"mac {s.mac} is a multicast address; a VF needs a unicast MAC")
    if s.vlan is not None and not 0 <= s.vlan <= 4094:
        raise InvalidArgument(f"vlan {s.vlan} is out of range 0-4094")
    if s.qos is not None and not 0 <= s.qos <= 7:
        raise InvalidArgument(f"qos {s.qos} is out of range 0-7")
    if s.vlan_proto is not None and s.vlan_proto.lower() not in VLAN_PROTOS:
        raise InvalidArgument(f"vlan_proto {s.vlan_proto!r} is not 802.1q or 802.1ad")
    if s.vlan is None and (s.qos is not None or s.vlan_proto is not None):
        # One netlink attribute carries all three: qos alone has no meaning.
        raise InvalidArgument("qos and vlan_proto are set together with vlan")
    if s.link_state is not None and s.link_state not in LINK_STATES:
        raise InvalidArgument(f"link_state {s.link_state!r} is not auto, enable or disable")
    for name in ("min_tx_rate", "max_tx_rate"):
        rate = getattr(s, name)
        if rate is not None and not 0 <= rate <= 0xFFFFFFFF:
            raise InvalidArgument(f"{name} {rate} is out of range 0-{0xFFFFFFFF}")
    lo, hi = s.min_tx_rate, s.max_tx_rate
    if lo is not None and hi is not None and hi and lo > hi:
        raise InvalidArgument(f"min_tx_rate {lo} is greater than max_tx_rate {hi}")


# -- message builders ---------------------------------------------------------


def vf_mac(vf: int, mac: str) -> bytes:
    raw = bytes(int(octet, 16) for octet in mac.split(":"))
    return nla(IFLA_VF_MAC, struct.pack("=I32s", vf, raw))  # struct ifla_vf_mac


def vf_vlan(vf: int, vlan: int, qos: int, proto: str = "802.1q") -> bytes:
    if proto == "802.1q":
        # The original attribute: every SR-IOV driver understands it (802.1Q).
        return nla(IFLA_VF_VLAN, struct.pack("=III", vf, vlan, qos))
    # 802.1ad needs the list form, whose entry carries a big-endian ethertype;
    # the kernel wants sizeof(struct ifla_vf_vlan_info) = 16 (2 bytes of tail padding).
    info = struct.pack("=III", vf, vlan, qos) + struct.pack(">H", VLAN_PROTOS[proto]) + b"\0\0"
    return nla(IFLA_VF_VLAN_LIST, nla(IFLA_VF_VLAN_INFO, info))


def vf_spoofchk(vf: int, on: bool) -> bytes:
    return nla(IFLA_VF_SPOOFCHK, struct.pack("=II", vf, int(on)))


def vf_trust(vf: int, on: bool) -> bytes:
    return nla(IFLA_VF_TRUST, struct.pack("=II", vf, int(on)))


def vf_link_state(vf: int, state: str) -> bytes:
    return nla(IFLA_VF_LINK_STATE, struct.pack("=II", vf, LINK_STATES[state]))


def vf_rate(vf: int, min_tx: int, max_tx: int) -> bytes:
    return nla(IFLA_VF_RATE, struct.pack("=III", vf, min_tx, max_tx))


def setlink_vf(ifindex: int, vf_attr: bytes, seq: int) -> bytes:
    """RTM_SETLINK on the PF carrying one IFLA_VF_* attribute."""
    body = ifinfomsg(ifindex) + nla(IFLA_VFINFO_LIST, nla(IFLA_VF_INFO, vf_attr))
    return nlmsg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def getlink_vfs(ifindex: int, seq: int) -> bytes:
    """RTM_GETLINK asking for the VF list (the kernel omits it without RTEXT_FILTER_VF)."""
    body = ifinfomsg(ifindex) + nla(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_VF))
    return nlmsg(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


@dataclass(frozen=True)
class VfRequest:
    attribute: str  # what a refusal names: "mac", "vlan", "spoofchk", ...
    attr: bytes  # the IFLA_VF_* attribute


def vf_requests(vf: int, s: VfSettings, current: VfSettings | None = None) -> list[VfRequest]:
    """One request per attribute, so a driver refusing one names it.

    MAC goes first: some drivers (iavf under ice/i40e) reset the VF to apply
    it, and a reset must not undo settings applied before it. A rate given
    alone keeps the other bound from ``current``, as ``ip link set vf`` does.
    """
    out: list[VfRequest] = []
    if s.mac is not None:
        out.append(VfRequest("mac", vf_mac(vf, s.mac.lower())))
    if s.vlan is not None:
        proto = (s.vlan_proto or "802.1q").lower()
        out.append(VfRequest("vlan", vf_vlan(vf, s.vlan, s.qos or 0, proto)))
    if s.spoofchk is not None:
        out.append(VfRequest("spoofchk", vf_spoofchk(vf, s.spoofchk)))
    if s.trust is not None:
        out.append(VfRequest("trust", vf_trust(vf, s.trust)))
    if s.link_state is not None:
        out.append(VfRequest("link_state", vf_link_state(vf, s.link_state)))
    if s.min_tx_rate is not None or s.max_tx_rate is not None:
        have = current or VfSettings()
        lo = s.min_tx_rate if s.min_tx_rate is not None else have.min_tx_rate or 0
        hi = s.max_tx_rate if s.max_tx_rate is not None else have.max_tx_rate or 0
        out.append(VfRequest("tx_rate", vf_rate(vf, lo, hi)))
    return out


def needs_current(s: VfSettings) -> bool:
    return (s.min_tx_rate is None) != (s.max_tx_rate is None)


# -- reply parsers ------------------------------------------------------------


def parse_vf_info(data: bytes) -> tuple[int, VfSettings]:
    """One IFLA_VF_INFO nest → (vf index, settings)."""
    vf = -1
    values: dict[str, Any] = {}
    for attr_type, payload in attrs(data):
        if attr_type == IFLA_VF_MAC and len(payload) >= 10:
            vf = _U32.unpack_from(payload)[0]
            values["mac"] = ":".join(f"{b:02x}" for b in payload[4:10])
        elif attr_type == IFLA_VF_VLAN and len(payload) >= 12:
            vf, values["vlan"], values["qos"] = struct.unpack_from("=III", payload)
            values.setdefault("vlan_proto", "802.1q")
        elif attr_type == IFLA_VF_VLAN_LIST:
            for info_type, info in attrs(payload):
                if info_type == IFLA_VF_VLAN_INFO and len(info) >= 14:
                    vf, values["vlan"], values["qos"] = struct.unpack_from("=III", info)
                    proto = struct.unpack_from(">H", info, 12)[0]
                    values["vlan_proto"] = {v: k for k, v in VLAN_PROTOS.items()}.get(proto)
                    break
        elif attr_type == IFLA_VF_RATE and len(payload) >= 12:
            vf, values["min_tx_rate"], values["max_tx_rate"] = struct.unpack_from("=III", payload)
        elif attr_type in (IFLA_VF_SPOOFCHK, IFLA_VF_TRUST) and len(payload) >= 8:
            vf, setting = struct.unpack_from("=II", payload)
            name = "spoofchk" if attr_type == IFLA_VF_SPOOFCHK else "trust"
            values[name] = None if setting == _UNSET else bool(setting)
        elif attr_type == IFLA_VF_LINK_STATE and len(payload) >= 8:
            vf, state = struct.unpack_from("=II", payload)
            values["link_state"] = {v: k for k, v in LINK_STATES.items()}.get(state)
    return vf, VfSettings(**values)


def parse_link_vfs(payload: bytes) -> dict[int, VfSettings] | None:
    """An RTM_NEWLINK payload → settings per VF index; None when the link
    reports no VF list (not a PF, or its driver has no ndo_get_vf_config)."""
    if len(payload) < IFINFOMSG.size:
        raise HostError("short RTM_NEWLINK reply")
    found: dict[int, VfSettings] | None = None
    for attr_type, data in attrs(payload[IFINFOMSG.size :]):
        if attr_type != IFLA_VFINFO_LIST:
            continue
        found = {}
        for info_type, info in attrs(data):
            if info_type == IFLA_VF_INFO:
                vf, settings = parse_vf_info(info)
                if vf >= 0:
                    found[vf] = settings
    return found


def translate(err: NetlinkFailure, what: str) -> NicwardenError:
    """The driver judges VF values, so EINVAL here is the user's (``VF_SET``)."""
    return err.named(what, errnos.VF_SET)


_seq = itertools.count(1)


class NetlinkVfConfigurator:
    """VfConfigurator on a real PF: one RTM_SETLINK per attribute."""

    def __init__(
        self,
        transport: Transport = netlink_request,
        index_of: Callable[[str], int] = socket.if_nametoindex,
    ) -> None:
        self._transport = transport
        self._index_of = index_of

    def _index(self, pf_ifname: str) -> int:
        try:
            return self._index_of(pf_ifname)
        except OSError as e:
            raise NotFound(f"PF netdev {pf_ifname} not found in the host netns") from e

    def _send(self, message: bytes, what: str) -> list[NetlinkMessage]:
        try:
            return self._transport(message)
        except NetlinkFailure as e:
            raise translate(e, what) from e

    def get_all(self, pf_ifname: str) -> dict[int, VfSettings]:
        index = self._index(pf_ifname)
        what = f"read VF settings of {pf_ifname}"
        for msg in self._send(getlink_vfs(index, next(_seq)), what):
            if msg.type == RTM_NEWLINK:
                vfs = parse_link_vfs(msg.payload)
                if vfs is None:
                    raise Unsupported(
                        f"{what}: the device reports no VFs (not an SR-IOV PF, or its"
                        " driver does not expose VF configuration)"
                    )
                return vfs
        raise HostError(f"{what}: the kernel sent no link message")

    def get(self, pf_ifname: str, vf: int) -> VfSettings:
        vfs = self.get_all(pf_ifname)
        if vf not in vfs:
            raise NotFound(f"PF {pf_ifname} has no VF {vf} ({len(vfs)} VFs enabled)")
        return vfs[vf]

    def set(self, pf_ifname: str, vf: int, settings: VfSettings) -> None:
        validate(vf, settings)
        index = self._index(pf_ifname)
        current = self.get(pf_ifname, vf) if needs_current(settings) else None
        for req in vf_requests(vf, settings, current):
            message = setlink_vf(index, req.attr, next(_seq))
            self._send(message, f"{pf_ifname} VF {vf}: set {req.attribute}")
