"""A sorted set of keys that reads a range from any point in O(log n + k).

Object status pages by key (keyset paging), and at 100,000 objects neither
sorting every key per page nor a flat sorted list (an insert moves half of
it) is cheap. Keys live in sorted blocks of bounded size with each block's
largest key alongside, so an insert or delete touches one block and a range
read bisects twice and then walks. (The same layout as the widely used
sortedcontainers package, cut down to what status paging needs.)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)

# Blocks split at twice this and merge into a neighbour below a quarter of it:
# a few hundred pointers make both the memmove of an insert and the bisect
# over the blocks' maxima cheap.
_LOAD = 512


class SortedKeys(Generic[K]):
    __slots__ = ("_blocks", "_maxes", "_len")

    def __init__(self) -> None:
        self._blocks: list[list[K]] = []
        self._maxes: list[K] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: K) -> bool:
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            return False
        block = self._blocks[pos]
        i = bisect_left(block, key)
        return i < len(block) and not (key < block[i])

    def __iter__(self) -> Iterator[K]:
        for block in self._blocks:
            yield from block

    def add(self, key: K) -> None:
        if not self._blocks:
            self._blocks.append([key])
            self._maxes.append(key)
            self._len = 1
            return
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            pos -= 1  # past every key: it goes at the end of the last block
        block = self._blocks[pos]
        i = bisect_left(block, key)
        if i < len(block) and not (key < block[i]):
            return
        insort(block, key)
        self._maxes[pos] = block[-1]
        self._len += 1
        if len(block) > 2 * _LOAD:
            self._blocks[pos : pos + 1] = [block[:_LOAD], block[_LOAD:]]
            self._maxes[pos : pos + 1] = [block[_LOAD - 1], block[-1]]

    def discard(self, key: K) -> None:
        pos = bisect_left(self._maxes, key)
        if pos == len(self._maxes):
            return
        block = self._blocks[pos]
        i = bisect_left(block, key)
        if i == len(block) or key < block[i]:
            return
        del block[i]
        self._len -= 1
        if not block:
            del self._blocks[pos]
            del self._maxes[pos]
            return
        self._maxes[pos] = block[-1]
        if len(block) < _LOAD // 4 and len(self._blocks) > 1:
            # Keep blocks from thinning out under churn: fold into a neighbour.
            left = pos - 1 if pos > 0 else pos
            merged = self._blocks[left] + self._blocks[left + 1]
            self._blocks[left : left + 2] = [merged]
            self._maxes[left : left + 2] = [merged[-1]]
            if len(merged) > 2 * _LOAD:
                half = len(merged) // 2
                self._blocks[left : left + 1] = [merged[:half], merged[half:]]
                self._maxes[left : left + 1] = [merged[half - 1], merged[-1]]

    def irange(
        self, low: K | None = None, high: K | None = None, *, low_inclusive: bool = True
    ) -> Iterator[K]:
        """Keys from ``low`` (inclusive unless told; None: the first) up to
        ``high`` (exclusive; None: the last), in order. Do not change the set
        while iterating."""
        if low is None:
            pos, i = 0, 0
        else:
            find = bisect_left if low_inclusive else bisect_right
            pos = find(self._maxes, low)
            if pos == len(self._maxes):
                return
            i = find(self._blocks[pos], low)
        for b in range(pos, len(self._blocks)):
            block = self._blocks[b]
            for j in range(i, len(block)):
                key = block[j]
                if high is not None and not (key < high):
                    return
                yield key
            i = 0
