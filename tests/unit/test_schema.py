"""The validation engine shared by the agent config, the sriov: spec, the
device plugin's resourceList and the policy parsers (agent/schema.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from nicwarden.agent import schema
from nicwarden.agent.schema import Invalid, Problem, Problems


def test_validators_are_reusable() -> None:
    assert schema.port(443) == 443
    assert schema.positive_int("3") == 3
    assert schema.enum("a", "b")("b") == "b"
    assert schema.boolean("false") is False
    assert schema.path("/x") == Path("/x")
    assert schema.optional(schema.port)(None) is None
    with pytest.raises(Invalid, match="positive integer"):
        schema.positive_int(0)
    with pytest.raises(Invalid, match="integer 2-4"):
        schema.int_range(2, 4)(5)


def test_int_range_can_refuse_strings() -> None:
    # Config files hold numbers; only command-line overrides arrive as text.
    assert schema.int_range(0, 9)("8") == 8
    with pytest.raises(Invalid, match="expected an integer 0-9, got '8'"):
        schema.int_range(0, 9, strings=False)("8")
    with pytest.raises(Invalid, match="got true"):
        schema.int_range(0, 9, strings=False)(True)


def test_sections_declared_elsewhere_plug_in() -> None:
    """A later module adds a section with setting()/section() and gets the same errors."""

    @dataclass(frozen=True)
    class Pool:
        max_devices: int = schema.setting(schema.positive_int, 8, "Most devices per pool.")

    @dataclass(frozen=True)
    class Root:
        pool: Pool = schema.setting(schema.section(Pool), Pool(), "A pool.")

    assert schema.parse_section(Root, {"pool": {"maxDevices": 3}}) == Root(Pool(3))
    with pytest.raises(Invalid) as info:
        schema.parse_section(Root, {"pool": {"maxDevices": -1, "maxDevice": 1}})
    assert {schema.dotted(p.path) for p in info.value.problems} == {
        "pool.maxDevices",
        "pool.maxDevice",
    }


@pytest.mark.parametrize(
    "text", ["", "a", "spec.ingress[0].from", "[3].b", "labels.app.kubernetes.io/name", "a[0][1]"]
)
def test_key_path_round_trips_through_dotted(text: str) -> None:
    assert schema.dotted(schema.key_path(text)) == text


def test_key_path_splits_keys_and_indexes() -> None:
    assert schema.key_path("spec.ingress[0].from") == ("spec", "ingress", "[0]", "from")
    assert schema.key_path(("a", "[1]")) == ("a", "[1]")


def test_list_of_reports_every_bad_item_at_its_index() -> None:
    validate = schema.list_of(schema.port, "ports", non_empty=True)
    assert validate([1, "2"]) == [1, 2]
    with pytest.raises(Invalid) as info:
        validate([0, 80, "x"])
    assert [(schema.dotted(p.path), p.reason) for p in info.value.problems] == [
        ("[0]", "expected an integer 1-65535, got 0"),
        ("[2]", "expected an integer 1-65535, got 'x'"),
    ]
    with pytest.raises(Invalid, match="expected a non-empty list of ports, got a list"):
        validate([])
    with pytest.raises(Invalid, match="got a mapping"):
        validate({"a": 1})


def test_problems_collect_check_and_render() -> None:
    problems = Problems()
    assert not problems
    assert problems.check(schema.port, 80, "metrics.port") == 80
    assert problems.check(schema.port, 0, "metrics.port") is None
    problems.add("sriov[1].numVfs", "required")
    problems.unknown_keys({"numVf": 1, "mtu": 2}, ["numVfs", "mtu"], ("sriov", "[1]"))
    problems.add((), "expected a mapping")
    assert len(problems) == 4
    assert problems.render("/etc/nicwarden.yaml") == [
        "/etc/nicwarden.yaml: metrics.port: expected an integer 1-65535, got 0",
        "/etc/nicwarden.yaml: sriov[1].numVfs: required",
        "/etc/nicwarden.yaml: sriov[1].numVf: unknown key; did you mean 'numVfs'?",
        "/etc/nicwarden.yaml: <top level>: expected a mapping",
    ]
    with pytest.raises(Invalid) as info:
        problems.raise_if_any()
    assert info.value.problems == problems.found


def test_problem_keeps_the_offending_value_apart() -> None:
    problems = Problems()
    problems.add("selectors[0].vendors", "must be a hex PCI vendor ID", "intel")
    (found,) = problems
    assert found == Problem(("selectors", "[0]", "vendors"), "must be a hex PCI vendor ID", "intel")
    assert found.under("resourceList", "[2]").path[:2] == ("resourceList", "[2]")


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    problem = schema.unknown_key("zzz", ["numVfs", "mtu"])
    assert problem.reason == "unknown key (known keys: numVfs, mtu)"


def test_plain_dict_renders_paths_and_value_types_as_text() -> None:
    @dataclass(frozen=True)
    class Shape:
        n: int

        def __str__(self) -> str:
            return f"{self.n}x"

    @dataclass(frozen=True)
    class Root:
        where: Path = schema.setting(schema.path, Path("/var/x"), "A path.")
        shape: Shape = schema.setting(lambda v: Shape(1), Shape(2), "A value type.")
        items: list[int] = schema.setting(schema.list_of(schema.port, "ports"), [1], "Ports.")

    assert schema.to_plain_dict(Root()) == {"where": "/var/x", "shape": "2x", "items": [1]}
