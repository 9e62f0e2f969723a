"""The list parser that stands aside between items: same result as
json.loads, same errors, and a pause after every item of ``items``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nicwarden.agent.k8s.list_json import load_list


class Pauses:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"p{i}",
            "namespace": "prod",
            "labels": {"app": "web", "i": str(i)},
            "annotations": {"note": 'caf\u00e9 \u2603 "quoted" \\ back'},
        },
        "spec": {"containers": [{"ports": [{"containerPort": 80 + i}]}], "x": None},
        "status": {"phase": "Running", "ok": True, "f": 1.5e3},
    }


def page(n: int) -> dict[str, Any]:
    return {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "42", "continue": "tok"},
        "items": [pod(i) for i in range(n)],
    }


@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize(
    "dump",
    [
        lambda o: json.dumps(o),
        lambda o: json.dumps(o, separators=(",", ":")),
        lambda o: json.dumps(o, indent=2),
        lambda o: " \n" + json.dumps(o, indent="\t", ensure_ascii=False) + "\r\n ",
    ],
    ids=["default", "compact", "indented", "tabs-unicode-padding"],
)
def test_same_as_json_loads_and_pauses_once_per_item(n: int, dump: Any) -> None:
    text = dump(page(n))
    for data in (text, text.encode(), text.encode("utf-8-sig"), text.encode("utf-16")):
        pauses = Pauses()
        assert load_list(data, pauses) == json.loads(data)
        assert pauses.count == n


def test_items_after_metadata_and_duplicate_keys_like_json_loads() -> None:
    text = '{"items":[{"a":1},{"a":2}],"metadata":{"continue":""},"items":[{"b":3}]}'
    pauses = Pauses()
    assert load_list(text, pauses) == json.loads(text)
    assert pauses.count == 3


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",  # not an object at all
        '"a string"',
        "{}",
        '{"items": null}',
        '{"items": {"not": "an array"}}',
        '{"items": []}',
        '{"kind": "Status", "code": 410}',
    ],
)
def test_other_shapes_parse_as_json_loads_does(text: str) -> None:
    assert load_list(text, lambda: None) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"items": [',
        '{"items": [{"a": 1}',
        '{"items": [{"a": 1},]}',
        '{"items": [{"a": 1} {"a": 2}]}',
        '{"items": []',
        '{"items" []}',
        "{items: []}",
        '{"a": 1,}',
        '{"a": 1 "b": 2}',
        '{"items": []} trailing',
        '{"items": [{"a": 1}]}}',
        '{"items": [nan-ish]}',
        '{"items": ["unterminated]}',
    ],
)
def test_malformed_is_a_value_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # the oracle agrees it is malformed
    with pytest.raises(ValueError):
        load_list(text, lambda: None)
    with pytest.raises(ValueError):
        load_list(text.encode(), lambda: None)


def test_a_failing_pause_stops_the_parse() -> None:
    pauses = Pauses()

    def pause() -> None:
        pauses()
        if pauses.count == 2:
            raise InterruptedError("stopping")

    with pytest.raises(InterruptedError):
        load_list(json.dumps(page(5)), pause)
    assert pauses.count == 2
