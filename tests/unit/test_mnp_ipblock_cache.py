"""Well-formed ipBlocks are parsed once and shared; anything else still gets
its precise error, whether or not a valid twin was parsed before."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_policy_helpers import mnp

from nicwarden.agent.policy._fields import Issues
from nicwarden.agent.policy.mnp import _known, _parse_ip_block_fields, parse_policy


def spec(*peers: Any) -> dict[str, Any]:
    return {"podSelector": {}, "ingress": [{"from": list(peers)}]}


def test_the_same_cidr_in_two_policies_is_one_object() -> None:
    a = parse_policy(mnp(spec({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}})))
    b = parse_policy(
        mnp(spec({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}), name="other")
    )
    pa, pb = a.ingress[0].peers[0], b.ingress[0].peers[0]
    assert pa is pb and pa.ip_block is not None and str(pa.ip_block.cidr) == "10.0.0.0/8"


def test_errors_keep_their_field_paths_after_a_valid_parse() -> None:
    parse_policy(mnp(spec({"ipBlock": {"cidr": "10.0.0.0/8"}})))
    bad = parse_policy(
        mnp(spec({"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "10.0.0.1/8"}}))
    )
    assert not bad.valid
    assert any("ingress[0].from[1].ipBlock.cidr" in e and "host bits" in e for e in bad.errors)
    extra = parse_policy(mnp(spec({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})))
    assert not extra.valid and "cannot be combined" in " ".join(extra.errors)


cidr_text = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"\A(\d{1,3}\.){3}\d{1,3}/\d{1,2}\Z"),
    st.sampled_from(["10.0.0.0/8", "fd00::/8", "10.0.0.0/33", "::/0", "10.1.0.0/16"]),
)


@given(cidr_text, st.one_of(st.none(), st.lists(cidr_text, max_size=3)))
def test_the_shortcut_accepts_exactly_what_the_full_parser_accepts(
    cidr: str, excepts: list[str] | None
) -> None:
    raw: dict[str, Any] = {"cidr": cidr}
    if excepts is not None:
        raw["except"] = excepts
    issues = Issues("x")
    full = _parse_ip_block_fields(raw, issues, "p")
    shortcut = _known(raw)
    if issues.found:
        assert shortcut is None
    else:
        assert shortcut == full and shortcut is not None


def test_bare_cidrs_share_one_peer_and_survive_the_cache_starting_over(
    monkeypatch: Any,
) -> None:
    from nicwarden.agent.policy import mnp as mnp_module

    def peer_of(raw: Any) -> Any:
        return parse_policy(mnp(spec(raw))).ingress[0].peers[0]

    first = peer_of({"ipBlock": {"cidr": "192.0.2.0/24"}})
    assert peer_of({"ipBlock": {"cidr": "192.0.2.0/24"}}) is first
    # A lookalike that is not the bare form takes the full path, same answer.
    with_empty_except = peer_of({"ipBlock": {"cidr": "192.0.2.0/24", "except": []}})
    assert with_empty_except == first
    monkeypatch.setattr(mnp_module, "_BARE_BLOCKS_MAX", 1)
    peer_of({"ipBlock": {"cidr": "198.51.100.0/24"}})  # clears, then holds this one
    again = peer_of({"ipBlock": {"cidr": "192.0.2.0/24"}})
    assert again == first and again.ip_block is not None
    bad = parse_policy(mnp(spec({"ipBlock": {"cidr": "192.0.2.1/24"}})))
    assert not bad.valid and "host bits" in " ".join(bad.errors)


peer_raw = st.one_of(
    st.builds(lambda c: {"ipBlock": {"cidr": c}}, cidr_text),
    st.builds(lambda c: {"ipBlock": {"cidr": c, "except": []}}, cidr_text),
    st.sampled_from(
        [
            {"ipBlock": {"cidr": ["10.0.0.0/8"]}},
            {"ipBlock": {"cidr": None}},
            {"ipBlock": {}},
            {"ipBlock": "10.0.0.0/8"},
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "bogus": 1},  # a peer, and an error
            {"podSelector": {"matchLabels": {"app": "x"}}},
            {},
            None,
            "10.0.0.0/8",
        ]
    ),
)


@given(st.lists(peer_raw, max_size=8))
def test_a_rule_parses_the_same_with_warm_and_cold_caches(peers: list[Any]) -> None:
    from nicwarden.agent.policy import mnp as mnp_module

    raw = mnp(spec(*peers))
    warm = parse_policy(raw)
    again = parse_policy(raw)  # every bare CIDR seen: the rule's inline lookups
    mnp_module._BARE_BLOCKS.clear()
    mnp_module._known_ip_block.cache_clear()
    cold = parse_policy(raw)
    assert again == warm == cold
    # In a valid rule, ipBlocks are one shared object however they were found.
    pairs = zip(again.ingress[0].peers, warm.ingress[0].peers, strict=True)
    assert not warm.valid or all(p is q for p, q in pairs if p.ip_block is not None)


def _big(n: int) -> list[Any]:
    return [{"ipBlock": {"cidr": f"10.{i // 256}.{i % 256}.0/24"}} for i in range(n)]


edit = st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 10**6), peer_raw)


@given(st.lists(edit, min_size=1, max_size=6))
def test_a_large_rule_reparsed_after_edits_equals_a_cold_parse(edits: list[Any]) -> None:
    """The last clean version of a large rule lends its unchanged entries;
    whatever the edits (invalid ones included, errors and their paths too),
    the result is what a parse from nothing gives."""
    from nicwarden.agent.policy import mnp as mnp_module

    peers = _big(mnp_module._BIG_RULE + 4)
    parse_policy(mnp(spec(*peers)))  # the first clean version
    for op, at, entry in edits:
        at %= len(peers) + (op == "insert")
        if op == "set" and at < len(peers):
            peers[at] = entry
        elif op == "insert":
            peers.insert(at, entry)
        elif len(peers) > 1:
            del peers[at]
        raw = mnp(spec(*peers))
        warm = parse_policy(raw)
        kept = dict(mnp_module._BIG_RULES)
        mnp_module._BIG_RULES.clear()
        try:
            cold = parse_policy(raw)
        finally:
            mnp_module._BIG_RULES.clear()
            mnp_module._BIG_RULES.update(kept)
        assert warm == cold


def test_a_large_rule_with_an_error_lends_nothing() -> None:
    from nicwarden.agent.policy import mnp as mnp_module

    peers = _big(mnp_module._BIG_RULE)
    parse_policy(mnp(spec(*peers)))  # a clean version first, then the bad one
    peers[7] = {"ipBlock": {"cidr": "10.0.7.0/24"}, "bogus": 1}  # unknown field: an error
    first = parse_policy(mnp(spec(*peers)))
    assert not first.valid
    assert ("prod", "p", "from", "0") not in mnp_module._BIG_RULES
    again = parse_policy(mnp(spec(*peers)))  # nothing clean to lend: the error stays
    assert again.errors == first.errors and "from[7]" in " ".join(again.errors)


def test_the_lent_rules_are_bounded(monkeypatch: Any) -> None:
    from nicwarden.agent.policy import mnp as mnp_module

    monkeypatch.setattr(mnp_module, "_BIG_RULES_MAX", 2)
    mnp_module._BIG_RULES.clear()
    for n in range(5):
        parse_policy(mnp(spec(*_big(mnp_module._BIG_RULE)), name=f"big{n}"))
    assert len(mnp_module._BIG_RULES) == 2
    assert {k[1] for k in mnp_module._BIG_RULES} == {"big3", "big4"}
