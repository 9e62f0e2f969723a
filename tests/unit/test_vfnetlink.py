"""VF netlink messages: exact bytes against hand-computed uapi layouts, and
parsing of hand-built kernel replies. Netlink is host-endian; the expected
bytes below are little-endian (x86, arm64)."""

from __future__ import annotations

import errno
import struct
import sys

import pytest

from nicwarden.agent.errors import InvalidArgument, NotFound, Unsupported
from nicwarden.agent.host import vfnetlink as vn
from nicwarden.agent.host.rtnl import NetlinkFailure, NetlinkMessage
from nicwarden.agent.host.vfnetlink import VfSettings

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are LE")


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


# -- attributes ------------------------------------------------------------


def test_mac_attribute_is_struct_ifla_vf_mac() -> None:
    # len 40 = 4 (nla) + 4 (vf) + 32 (mac[MAX_ADDR_LEN]); type IFLA_VF_MAC = 1
    expected = hx("28 00 01 00  00 00 00 00  52 54 00 12 34 56") + bytes(26)
    assert vn.vf_mac(0, "52:54:00:12:34:56") == expected


def test_vlan_8021q_uses_ifla_vf_vlan() -> None:
    # IFLA_VF_VLAN = 2: {vf=2, vlan=100, qos=3}
    expected = hx("10 00 02 00  02 00 00 00  64 00 00 00  03 00 00 00")
    assert vn.vf_vlan(2, 100, 3) == expected


def test_vlan_8021ad_uses_the_vlan_list_with_a_big_endian_proto_padded_to_16() -> None:
    info = hx("02 00 00 00  64 00 00 00  03 00 00 00  88 a8  00 00")  # be16 0x88a8 + 2 pad
    expected = hx("18 00 0c 00") + hx("14 00 01 00") + info  # VLAN_LIST(12) > VLAN_INFO(1)
    assert vn.vf_vlan(2, 100, 3, "802.1ad") == expected


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (vn.vf_spoofchk(3, True), "0c 00 04 00  03 00 00 00  01 00 00 00"),
        (vn.vf_spoofchk(3, False), "0c 00 04 00  03 00 00 00  00 00 00 00"),
        (vn.vf_trust(1, True), "0c 00 09 00  01 00 00 00  01 00 00 00"),
        (vn.vf_link_state(1, "auto"), "0c 00 05 00  01 00 00 00  00 00 00 00"),
        (vn.vf_link_state(1, "enable"), "0c 00 05 00  01 00 00 00  01 00 00 00"),
        (vn.vf_link_state(1, "disable"), "0c 00 05 00  01 00 00 00  02 00 00 00"),
        (vn.vf_rate(1, 100, 1000), "10 00 06 00  01 00 00 00  64 00 00 00  e8 03 00 00"),
    ],
)
def test_small_attributes(built: bytes, expected: str) -> None:
    assert built == hx(expected)


# -- whole messages --------------------------------------------------------


def test_setlink_wraps_one_vf_attribute_in_vfinfo_list_and_vf_info() -> None:
    msg = vn.setlink_vf(7, vn.vf_spoofchk(3, True), seq=1)
    expected = (
        # nlmsghdr: len 52, RTM_SETLINK 19, NLM_F_REQUEST|NLM_F_ACK, seq 1, pid 0
        hx("34 00 00 00  13 00  05 00  01 00 00 00  00 00 00 00")
        # ifinfomsg: AF_UNSPEC, pad, type 0, index 7, flags 0, change 0
        + hx("00 00 00 00  07 00 00 00  00 00 00 00  00 00 00 00")
        + hx("14 00 16 00")  # IFLA_VFINFO_LIST (22), len 20
        + hx("10 00 01 00")  # IFLA_VF_INFO (1), len 16
        + hx("0c 00 04 00  03 00 00 00  01 00 00 00")  # IFLA_VF_SPOOFCHK
    )
    assert msg == expected


def test_getlink_asks_for_vf_info_with_ext_mask() -> None:
    expected = (
        hx("28 00 00 00  12 00  05 00  09 00 00 00  00 00 00 00")  # RTM_GETLINK 18, seq 9
        + hx("00 00 00 00  07 00 00 00  00 00 00 00  00 00 00 00")
        + hx("08 00 1d 00  01 00 00 00")  # IFLA_EXT_MASK (29) = RTEXT_FILTER_VF
    )
    assert vn.getlink_vfs(7, seq=9) == expected


# -- parsing replies -------------------------------------------------------


def attr(t: int, payload: bytes) -> bytes:
    """Independent of the module's nla(): header, payload, zero pad."""
    n = 4 + len(payload)
    return struct.pack("<HH", n, t) + payload + bytes((4 - n % 4) % 4)


def vf_info_0() -> bytes:
    # As the kernel's rtnl_fill_vfinfo emits them, including the ones we skip.
    return attr(
        1,
        hx("28 00 01 00  00 00 00 00  02 11 22 33 44 55")
        + bytes(26)  # IFLA_VF_MAC
        + hx("10 00 02 00  00 00 00 00  64 00 00 00  03 00 00 00")  # VLAN 100 qos 3
        + hx("10 00 06 00  00 00 00 00  0a 00 00 00  e8 03 00 00")  # RATE 10/1000
        + hx("0c 00 03 00  00 00 00 00  e8 03 00 00")  # TX_RATE (legacy, ignored)
        + hx("0c 00 04 00  00 00 00 00  00 00 00 00")  # SPOOFCHK off
        + hx("0c 00 05 00  00 00 00 00  02 00 00 00")  # LINK_STATE disable
        + hx("0c 00 07 00  00 00 00 00  ff ff ff ff")  # RSS_QUERY_EN unknown
        + hx("0c 00 09 00  00 00 00 00  01 00 00 00")  # TRUST on
        + attr(12, attr(1, hx("00 00 00 00  64 00 00 00  03 00 00 00  88 a8 00 00")))
        + attr(8, attr(0, struct.pack("<Q", 5))),  # IFLA_VF_STATS nest
    )


def vf_info_1() -> bytes:
    return attr(
        1,
        attr(1, struct.pack("<I", 1) + bytes(32))
        + attr(2, struct.pack("<III", 1, 0, 0))
        + attr(6, struct.pack("<III", 1, 0, 0))
        + attr(4, struct.pack("<II", 1, 0xFFFFFFFF))  # driver did not report
        + attr(5, struct.pack("<II", 1, 0))
        + attr(9, struct.pack("<II", 1, 0xFFFFFFFF)),
    )


def newlink_payload(with_vfs: bool = True) -> bytes:
    body = struct.pack("<BxHiII", 0, 1, 7, 0x1043, 0)
    body += attr(3, b"ens1f0\0") + attr(21, struct.pack("<I", 2))
    if with_vfs:
        body += attr(22, vf_info_0() + vf_info_1())
    return body


def test_parse_vf_list_from_newlink() -> None:
    vfs = vn.parse_link_vfs(newlink_payload())
    assert vfs == {
        0: VfSettings(
            mac="02:11:22:33:44:55",
            vlan=100,
            qos=3,
            vlan_proto="802.1ad",
            spoofchk=False,
            trust=True,
            link_state="disable",
            min_tx_rate=10,
            max_tx_rate=1000,
        ),
        1: VfSettings(
            mac="00:00:00:00:00:00",
            vlan=0,
            qos=0,
            vlan_proto="802.1q",
            spoofchk=None,
            trust=None,
            link_state="auto",
            min_tx_rate=0,
            max_tx_rate=0,
        ),
    }


def test_no_vfinfo_list_means_none() -> None:
    assert vn.parse_link_vfs(newlink_payload(with_vfs=False)) is None


def test_nested_flag_on_the_list_is_ignored() -> None:
    nested = struct.pack("<BxHiII", 0, 1, 7, 0, 0) + attr(22 | 0x8000, vf_info_1())
    parsed = vn.parse_link_vfs(nested)
    assert parsed is not None and list(parsed) == [1]


# -- the configurator over a fake transport --------------------------------


class FakeKernel:
    """Stands in for netlink_request: records requests, answers GETLINK with
    newlink_payload(), refuses attribute types listed in ``refuse``."""

    def __init__(self, refuse: dict[int, int] | None = None) -> None:
        self.sent: list[bytes] = []
        self.refuse = refuse or {}

    def __call__(self, message: bytes) -> list[NetlinkMessage]:
        self.sent.append(message)
        msg_type = struct.unpack_from("<H", message, 4)[0]
        if msg_type == vn.RTM_GETLINK:
            return [NetlinkMessage(vn.RTM_NEWLINK, 0, 0, newlink_payload())]
        vf_attr_type = struct.unpack_from("<H", message, 16 + 16 + 8 + 2)[0]
        if vf_attr_type in self.refuse:
            raise NetlinkFailure(self.refuse[vf_attr_type], "not today")
        return []

    def vf_attrs(self) -> list[bytes]:
        # Strip nlmsghdr, ifinfomsg, VFINFO_LIST and VF_INFO headers.
        return [m[16 + 16 + 8 :] for m in self.sent if struct.unpack_from("<H", m, 4)[0] == 19]


def configurator(kernel: FakeKernel) -> vn.NetlinkVfConfigurator:
    return vn.NetlinkVfConfigurator(
        kernel, index_of=lambda name: 7 if name == "ens1f0" else _nodev()
    )


def _nodev() -> int:
    raise OSError(errno.ENODEV, "No such device")


def test_set_sends_one_request_per_attribute_mac_first() -> None:
    kernel = FakeKernel()
    settings = VfSettings(spoofchk=False, mac="02:AA:BB:CC:DD:EE", vlan=10, trust=True)
    configurator(kernel).set("ens1f0", 3, settings)
    assert kernel.vf_attrs() == [
        vn.vf_mac(3, "02:aa:bb:cc:dd:ee"),
        vn.vf_vlan(3, 10, 0),
        vn.vf_spoofchk(3, False),
        vn.vf_trust(3, True),
    ]
    assert all(struct.unpack_from("<i", m, 20)[0] == 7 for m in kernel.sent)  # PF ifindex


def test_a_lone_rate_keeps_the_other_bound_from_the_kernel() -> None:
    kernel = FakeKernel()
    configurator(kernel).set("ens1f0", 0, VfSettings(max_tx_rate=500))
    assert struct.unpack_from("<H", kernel.sent[0], 4)[0] == vn.RTM_GETLINK
    assert kernel.vf_attrs() == [vn.vf_rate(0, 10, 500)]  # min 10 read back


def test_refused_attribute_is_named() -> None:
    kernel = FakeKernel(refuse={vn.IFLA_VF_TRUST: errno.EOPNOTSUPP})
    with pytest.raises(Unsupported, match="ens1f0 VF 2: set trust: the PF driver does not support"):
        configurator(kernel).set("ens1f0", 2, VfSettings(spoofchk=True, trust=True))
    assert len(kernel.sent) == 2  # spoofchk went through before trust was refused


@pytest.mark.parametrize(
    ("code", "kind"),
    [(errno.ENODEV, NotFound), (errno.EINVAL, InvalidArgument), (errno.EOPNOTSUPP, Unsupported)],
)
def test_errno_translation(code: int, kind: type[Exception]) -> None:
    kernel = FakeKernel(refuse={vn.IFLA_VF_SPOOFCHK: code})
    with pytest.raises(kind):
        configurator(kernel).set("ens1f0", 0, VfSettings(spoofchk=True))


def test_8021ad_refusal_names_the_vlan_protocol() -> None:
    kernel = FakeKernel(refuse={vn.IFLA_VF_VLAN_LIST: errno.EPROTONOSUPPORT})
    with pytest.raises(Unsupported, match="set vlan: the PF driver does not support this VLAN"):
        configurator(kernel).set("ens1f0", 1, VfSettings(vlan=7, vlan_proto="802.1ad"))


def test_get_and_unknown_vf_or_pf() -> None:
    cfg = configurator(FakeKernel())
    assert cfg.get("ens1f0", 0).vlan_proto == "802.1ad"
    with pytest.raises(NotFound, match="has no VF 5"):
        cfg.get("ens1f0", 5)
    with pytest.raises(NotFound, match="eth9"):
        cfg.get("eth9", 0)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (VfSettings(vlan=4095), "vlan 4095"),
        (VfSettings(vlan=1, qos=8), "qos 8"),
        (VfSettings(qos=1), "together with vlan"),
        (VfSettings(vlan=1, vlan_proto="802.1x"), "vlan_proto"),
        (VfSettings(mac="01:00:5e:00:00:01"), "multicast"),
        (VfSettings(mac="02:00:00:00:00"), "not a MAC"),
        (VfSettings(link_state="up"), "link_state"),
        (VfSettings(min_tx_rate=200, max_tx_rate=100), "greater than"),
    ],
)
def test_validation_before_sending(settings: VfSettings, match: str) -> None:
    kernel = FakeKernel()
    with pytest.raises(InvalidArgument, match=match):
        configurator(kernel).set("ens1f0", 0, settings)
    assert kernel.sent == []
