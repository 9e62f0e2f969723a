"""The one PCI-address normaliser and the one VF-range parser, shared by
the ``sriov:`` spec, the device plugin's ``resourceList`` and the CNI
request."""

from __future__ import annotations

import pytest

from nicwarden.agent.pci_address import normalize_pci_address
from nicwarden.agent.vf_ranges import VfRange, parse_vf_indices, parse_vf_ranges


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0000:18:02.1", "0000:18:02.1"),
        ("18:02.1", "0000:18:02.1"),
        ("0000:AF:1f.7", "0000:af:1f.7"),
        (" 0000:18:02.1", None),
        ("0000:18:02.1\n", None),
        ("10000:e0:00.0", "10000:e0:00.0"),  # Intel VMD domains
        ("0000:18:20.0", None),  # device numbers are 5 bits
        ("0000:18:02.8", None),
        ("18:2.1", None),
        ("000:18:02.1", None),
        ("", None),
        (1802, None),
        (None, None),
    ],
)
def test_normalize(raw: object, expected: str | None) -> None:
    assert normalize_pci_address(raw) == expected


def test_ranges_keep_the_written_order_and_indices_are_sorted() -> None:
    assert parse_vf_ranges("5, 0-3") == (VfRange(5, 5), VfRange(0, 3))
    assert parse_vf_indices("5,0-3,2") == [0, 1, 2, 3, 5]
    assert parse_vf_indices(4) == [4]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty VF range"),
        ("3-1", "VF range '3-1' runs backwards (3 > 1)"),
        ("1,,2", "non-negative integers"),
        ("-1", "non-negative integers"),
        (True, "got bool"),
        (None, "got null"),
    ],
)
def test_bad_ranges(raw: object, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_vf_ranges(raw)
    assert fragment in str(err.value)
