"""GetPreferredAllocation: which of the available devices kubelet should pick.

Pure and deterministic. The devices kubelet must include come first; the rest
are packed onto as few NUMA nodes, then as few PFs, as possible:
- stay where the must-include devices already are;
- otherwise, among groups that can satisfy the request alone, take the
  smallest (best fit), keeping large groups whole for large requests;
- when no group fits, take the largest first, so the fewest groups are spanned.
Ties break by NUMA node id, PF address, then device PCI address. Devices whose
placement is unknown are used last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Placement:
    numa: int
    pf: str  # the PF's PCI address


def preferred_allocation(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    placement: Mapping[str, Placement],
) -> list[str]:
    """The preferred ``size`` devices, sorted by PCI address.

    Never drops a must-include device; returns fewer than ``size`` only when
    fewer are available.
    """
    chosen = list(dict.fromkeys(must_include))
    need = size - len(chosen)
    if need <= 0:
        return sorted(chosen)
    taken = set(chosen)
    candidates = sorted(d for d in set(available) if d not in taken)
    known = [d for d in candidates if d in placement]
    unknown = [d for d in candidates if d not in placement]
    anchor_numa = Counter(placement[d].numa for d in chosen if d in placement)
    anchor_pf = Counter(placement[d].pf for d in chosen if d in placement)

    def pick_from_numa(devices: list[str], want: int) -> list[str]:
        return _pack(devices, want, lambda d: placement[d].pf, anchor_pf)

    picked = _pack_groups(known, need, lambda d: placement[d].numa, anchor_numa, pick_from_numa)
    picked += unknown[: need - len(picked)]
    return sorted(chosen + picked)


def _pack(devices: list[str], want: int, key: Callable[[str], K], anchors: Counter[K]) -> list[str]:
    return _pack_groups(devices, want, key, anchors, lambda ds, n: ds[:n])


def _pack_groups(
    devices: list[str],
    want: int,
    key: Callable[[str], K],
    anchors: Counter[K],
    take: Callable[[list[str], int], list[str]],
) -> list[str]:
    """Take ``want`` devices group by group in preference order (see module doc)."""
    groups: dict[K, list[str]] = {}
    for d in devices:  # already sorted, so each group is too
        groups.setdefault(key(d), []).append(d)

    def rank(k: K) -> tuple[int, int, int, int, int, str]:
        size = len(groups[k])
        fits = size >= want
        return (
            0 if k in anchors else 1,
            -anchors[k],
            0 if fits else 1,
            size if fits else -size,
            k if isinstance(k, int) else 0,  # NUMA ids in numeric order
            str(k),  # PF addresses in PCI order
        )

    out: list[str] = []
    for k in sorted(groups, key=rank):
        if len(out) >= want:
            break
        out += take(groups[k], want - len(out))
    return out
