"""In-place peer changes are atomic per packet: whatever subset of a delta's
writes has landed, in whatever order, every address gets its old answer or
its new one, never a third; and all of it lands on exactly the new table."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from nicwarden.agent.host.lpm_delta import nest_free, peer_delta
from nicwarden.bpf.layout import LoweredDirection, PeerEntry

# A small IPv4 universe (10.0.0.0/26 and below, and two wide blocks) where
# nesting is common.
BASE = 10 << 24


def entry(value: int, plen: int) -> PeerEntry:
    value &= ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
    return (4, value.to_bytes(4, "big"), plen)


entries = st.builds(
    lambda off, plen: entry(BASE + off, plen),
    st.integers(0, 63),
    st.sampled_from([8, 26, 28, 30, 31, 32, 32, 32]),
)
tables = st.dictionaries(entries, st.integers(0, 3), max_size=12)
ADDRESSES = [BASE + i for i in range(64)] + [BASE + 200, (11 << 24) + 1]


def answer(peers: Mapping[PeerEntry, int], value: int) -> int | None:
    for plen in range(32, -1, -1):
        hit = peers.get(entry(value, plen))
        if hit is not None:
            return hit
    return None


def nested_pair_exists(es: list[PeerEntry]) -> bool:
    def span(e: PeerEntry) -> tuple[int, int]:
        start = int.from_bytes(e[1], "big")
        return start, start | ((1 << (32 - e[2])) - 1)

    for a, b in itertools.combinations(es, 2):
        (sa, ea), (sb, eb) = span(a), span(b)
        if (sa <= sb and eb <= ea) or (sb <= sa and ea <= eb):
            return True
    return False


@given(st.sets(entries, max_size=10))
def test_nest_free_agrees_with_pairwise_check(es: set[PeerEntry]) -> None:
    assert nest_free(es) is not nested_pair_exists(list(es))


@settings(max_examples=300)
@given(tables, tables, st.randoms(use_true_random=False))
def test_every_partial_delta_gives_old_or_new_answers(
    old_peers: dict[PeerEntry, int], new_peers: dict[PeerEntry, int], rnd: object
) -> None:
    old = LoweredDirection(True, old_peers, {(6, 80, 16): 1}, 2)
    new = LoweredDirection(True, new_peers, {(6, 80, 16): 1}, 2)
    delta = peer_delta(old, new)
    changed = [
        e for e in old_peers.keys() | new_peers.keys() if old_peers.get(e) != new_peers.get(e)
    ]
    if delta is None:
        assert nested_pair_exists(changed)
        return
    assert not nested_pair_exists(changed)
    ops: list[tuple[PeerEntry, int | None]] = [*delta.upserts.items()]
    ops += [(e, None) for e in delta.deletes]
    rnd.shuffle(ops)  # type: ignore[attr-defined]
    live = dict(old_peers)
    for e, mask in ops:
        if mask is None:
            del live[e]
        else:
            live[e] = mask
        for a in ADDRESSES:
            assert answer(live, a) in (answer(old_peers, a), answer(new_peers, a))
    assert live == new_peers


def test_only_peer_changes_go_in_place() -> None:
    peers = {entry(BASE + 1, 32): 1}
    base = LoweredDirection(True, peers, {(6, 80, 16): 1}, 0)
    assert peer_delta(base, LoweredDirection(True, peers, {(6, 81, 16): 1}, 0)) is None
    assert peer_delta(base, LoweredDirection(True, peers, {(6, 80, 16): 1}, 1)) is None
    assert peer_delta(base, LoweredDirection(False)) is None
    assert peer_delta(LoweredDirection(False), base) is None
    same = peer_delta(base, LoweredDirection(True, dict(peers), {(6, 80, 16): 1}, 0))
    assert same is not None and len(same) == 0


def test_a_change_under_an_unchanged_block_goes_in_place_but_nested_changes_do_not() -> None:
    block = entry(BASE, 8)
    old = LoweredDirection(True, {block: 1, entry(BASE + 5, 32): 0})
    # One /32 leaves, another arrives, inside the unchanged /8: in place.
    new = LoweredDirection(True, {block: 1, entry(BASE + 9, 32): 0})
    delta = peer_delta(old, new)
    assert delta is not None
    assert delta.upserts == {entry(BASE + 9, 32): 0} and delta.deletes == [entry(BASE + 5, 32)]
    # The /8 itself changes along with a /32 inside it: a switch.
    assert peer_delta(old, LoweredDirection(True, {block: 3, entry(BASE + 5, 32): 0})) is not None
    assert peer_delta(old, LoweredDirection(True, {block: 3, entry(BASE + 5, 32): 2})) is None
