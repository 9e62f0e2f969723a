"""VF index ranges as configs write them: ``"0-3,5"``. Pure.

One parser for every config that names VFs by index (the ``sriov:``
``vfDrivers`` rules, the device plugin's ``pfNames``/``rootDevices``
``#ranges``), so they accept and reject the same texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PART = re.compile(r"(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class VfRange:
    """An inclusive range of VF indexes (``virtfnN``)."""

    first: int
    last: int


def parse_vf_ranges(text: object) -> tuple[VfRange, ...]:
    """``"0-3,5"`` (blanks ignored; a bare int is one index) -> ranges in the
    order written. ValueError says what is wrong."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        got = "null" if text is None else type(text).__name__
        raise ValueError(f'expected VF indices such as "0-3,5", got {got}')
    compact = "".join(text.split())
    if not compact:
        raise ValueError('empty VF range: expected VF indices such as "0-3,5"')
    out: list[VfRange] = []
    for part in compact.split(","):
        m = _PART.fullmatch(part)
        if m is None:
            raise ValueError(f"VF range {part!r} must be N or N-M with non-negative integers")
        first, last = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if first > last:
            raise ValueError(f"VF range {part!r} runs backwards ({first} > {last})")
        out.append(VfRange(first, last))
    return tuple(out)


def vf_indices(ranges: Iterable[VfRange]) -> list[int]:
    """Every index the ranges cover, sorted, each once."""
    return sorted({i for r in ranges for i in range(r.first, r.last + 1)})


def parse_vf_indices(text: object) -> list[int]:
    """``"0-3,5"`` -> ``[0, 1, 2, 3, 5]``; ValueError says what is wrong."""
    return vf_indices(parse_vf_ranges(text))
