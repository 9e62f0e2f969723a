"""When a policy table can change in place, and what to write.

The datapath answers a packet with one lookup in the peer trie (the longest
prefix holding the peer's address) and one in the port trie. A generation
switch (bpf_tables.py) makes any change atomic, at the price of writing the
whole table twice (new entries, then deleting the old). Most changes are a
pod or two entering or leaving a peer set: one /32 or /128 each. Those can be
written in place, entry by entry, and still be atomic for every packet, when:

* only peer entries change (ports, the any-protocol mask and isolation stay):
  a packet's port lookup then gives the same answer before, during and after;
* no two changed prefixes nest. CIDR blocks are either disjoint or nested, so
  then every address lies inside at most one changed prefix. The prefixes
  around it that hold the address are unchanged, so whatever has been
  written so far, the longest match for the address is either that one
  prefix as it was, or as it is now: the old answer or the new one, never a
  third. Each single trie update or delete is atomic in the kernel.

A change that fails either test goes through a generation switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nicwarden.bpf.layout import LoweredLike, PeerEntry


@dataclass(frozen=True)
class PeerDelta:
    upserts: dict[PeerEntry, int]  # new or changed entries, with their masks
    deletes: list[PeerEntry]

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


def peer_delta(old: LoweredLike, new: LoweredLike) -> PeerDelta | None:
    """The in-place change turning ``old`` into ``new``, or None when only a
    generation switch can make it atomic."""
    if not (old.isolated and new.isolated):
        return None
    if old.any_proto_mask != new.any_proto_mask or (
        old.ports is not new.ports and old.ports != new.ports
    ):
        return None
    if old.peers is new.peers:
        return PeerDelta({}, [])
    before, after = old.peers, new.peers
    upserts = {e: m for e, m in after.items() if before.get(e) != m}
    deletes = [e for e in before if e not in after]
    if not nest_free([*upserts, *deletes]):
        return None
    return PeerDelta(upserts, deletes)


def nest_free(entries: Iterable[PeerEntry]) -> bool:
    """True when no prefix among ``entries`` holds another (entries are
    distinct and canonical: no host bits past the prefix length)."""
    spans = []
    for family, addr, plen in entries:
        bits = len(addr) * 8
        start = int.from_bytes(addr, "big")
        spans.append((family, start, start | ((1 << (bits - plen)) - 1)))
    # Sorted by start, wider first at a tie: a nested prefix then starts
    # before the end of the one just seen.
    spans.sort(key=lambda s: (s[0], s[1], -s[2]))
    last: tuple[int, int] | None = None
    for family, start, end in spans:
        if last is not None and last[0] == family and start <= last[1]:
            return False
        last = (family, end)
    return True
