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
