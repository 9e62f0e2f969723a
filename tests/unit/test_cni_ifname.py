"""Interface names as the kernel judges them (``dev_valid_name`` plus the
``%d`` template): everything it would refuse or rewrite is refused up front,
with code 4 naming CNI_IFNAME."""

from __future__ import annotations

import pytest

from nicwarden.cni.errors import INVALID_ENVIRONMENT, CniError
from nicwarden.cni.request import ifname_problem, parse_request

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_PATH": "/opt/cni/bin",
}
CONF = '{"cniVersion": "1.0.0", "name": "n", "type": "nicwarden"}'


@pytest.mark.parametrize(
    "name", ["net1", "eth0", "x" * 15, "vf-0.100", "é" * 7, "a_b-c.d", "ñ" * 7 + "x"]
)
def test_names_the_kernel_keeps(name: str) -> None:
    assert ifname_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "is empty"),
        ("x" * 16, "16 bytes long; the kernel's limit is 15 bytes"),
        ("é" * 8, "16 bytes long; the kernel's limit is 15 bytes"),  # 8 characters
        ("日本語日本語", "18 bytes long"),
        (".", "not a valid interface name"),
        ("..", "not a valid interface name"),
        ("net%d", "'%'"),
        ("%s", "'%'"),
        ("a%", "'%'"),
        ("a/b", "'/', ':' or whitespace"),
        ("a:b", "'/', ':' or whitespace"),
        ("a b", "'/', ':' or whitespace"),
        ("a\tb", "'/', ':' or whitespace"),
        ("eth0\n", "'/', ':' or whitespace"),
        ("a\x0bb", "'/', ':' or whitespace"),
        # U+00E0 is c3 a0 in UTF-8, and the kernel's isspace() counts 0xa0.
        ("voilà", "'/', ':' or whitespace"),
    ],
)
def test_names_the_kernel_would_refuse_or_rewrite(name: str, why: str) -> None:
    problem = ifname_problem(name)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("name", ["net%d", "é" * 8])
def test_request_with_such_a_name_is_code_4_naming_the_variable(command: str, name: str) -> None:
    with pytest.raises(CniError) as info:
        parse_request({**ENV, "CNI_COMMAND": command, "CNI_IFNAME": name}, CONF)
    assert info.value.code == INVALID_ENVIRONMENT
    assert info.value.msg.startswith(f"CNI_IFNAME {name!r}")
