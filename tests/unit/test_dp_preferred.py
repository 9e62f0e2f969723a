from __future__ import annotations

import random

import pytest

from nicwarden.deviceplugin.preferred import Placement, preferred_allocation

# NUMA 0: PF A (4 devices), PF B (2); NUMA 1: PF C (3), PF D (6).
LAYOUT = {"A": (0, 4), "B": (0, 2), "C": (1, 3), "D": (1, 6)}
PLACEMENT = {
    f"{pf}{i}": Placement(numa, f"pf-{pf}") for pf, (numa, n) in LAYOUT.items() for i in range(n)
}
ALL = sorted(PLACEMENT)


def ids(text: str) -> list[str]:
    return text.split() if text else []


CASES = [
    # (available, must_include, size, expected, why)
    (ALL, "", 1, "B0", "best-fit NUMA (0: 6 free) then best-fit PF (B: 2)"),
    (ALL, "", 3, "A0 A1 A2", "NUMA 0 fits; only A fits 3"),
    (ALL, "", 4, "A0 A1 A2 A3", "A exactly"),
    (ALL, "", 5, "A0 A1 A2 A3 B0", "NUMA 0; no PF fits, largest first"),
    (ALL, "", 6, "A0 A1 A2 A3 B0 B1", "all of NUMA 0"),
    (ALL, "", 7, "C0 D0 D1 D2 D3 D4 D5", "NUMA 0 too small; NUMA 1, largest PF first"),
    (ALL, "", 10, "B0 C0 C1 C2 D0 D1 D2 D3 D4 D5", "no NUMA fits: largest first, then best fit"),
    (ALL, "C1", 2, "C0 C1", "stay on the must-include PF"),
    (ALL, "C0 C1 C2", 4, "C0 C1 C2 D0", "stay on the must-include NUMA node"),
    (ALL, "A0 D0", 3, "A0 A1 D0", "anchor tie: best-fit NUMA, then its anchor PF"),
    (ALL, "A0 A1 A2", 2, "A0 A1 A2", "never drop a must-include device"),
    ("A0 B0", "", 3, "A0 B0", "size larger than available: all there is"),
    ("A3 C0 C1 D5", "", 2, "C0 C1", "only the available devices count"),
    ("X9 B0", "", 1, "B0", "unknown placement last"),
    ("X9 B0", "", 2, "B0 X9", "unknown placement used when needed"),
    (ALL, "", 0, "", "nothing asked"),
    (ALL, "B1 B1", 2, "B0 B1", "duplicate must-include counted once"),
]


@pytest.mark.parametrize(
    ("available", "must", "size", "expected", "why"), CASES, ids=[c[4] for c in CASES]
)
def test_preferred(
    available: list[str] | str, must: str, size: int, expected: str, why: str
) -> None:
    avail = available if isinstance(available, list) else ids(available)
    assert preferred_allocation(avail, ids(must), size, PLACEMENT) == ids(expected)


@pytest.mark.parametrize("size", range(1, 16))
def test_deterministic_whatever_the_input_order(size: int) -> None:
    expected = preferred_allocation(ALL, [], size, PLACEMENT)
    rng = random.Random(size)
    for _ in range(20):
        shuffled = ALL[:]
        rng.shuffle(shuffled)
        assert preferred_allocation(shuffled, [], size, PLACEMENT) == expected
    assert len(expected) == min(size, len(ALL))


@pytest.mark.parametrize("size", range(1, 16))
def test_spans_the_fewest_numa_nodes(size: int) -> None:
    got = preferred_allocation(ALL, [], size, PLACEMENT)
    nodes = {PLACEMENT[d].numa for d in got}
    assert len(nodes) == (1 if size <= 9 else 2)


def test_no_numa_information_packs_by_pf() -> None:
    placement = {f"{pf}{i}": Placement(-1, pf) for pf, n in (("p", 3), ("q", 5)) for i in range(n)}
    assert preferred_allocation(sorted(placement), [], 4, placement) == ["q0", "q1", "q2", "q3"]
    assert preferred_allocation(sorted(placement), [], 2, placement) == ["p0", "p1"]
