"""The watch stream's line splitting: events split over chunks, keep-alive
blank lines, and a bound on one event's size."""

from __future__ import annotations

import pytest

from nicwarden.agent.k8s import reflector
from nicwarden.agent.k8s.reflector import _lines


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def stream(self, amt: None, decode_content: bool) -> tuple[bytes, ...]:
        return self.chunks


def test_events_split_anywhere_come_out_whole() -> None:
    stream = Chunks(b'{"a"', b": 1}\n\n", b'{"b": 2}\n{"c"', b"", b": 3}", b"\n  \n", b'{"d": 4}')
    assert list(_lines(stream)) == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}', b'{"d": 4}']


def test_an_endless_event_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reflector, "MAX_EVENT_BYTES", 100)
    ok = Chunks(b"x" * 60, b"y" * 39 + b"\n", b"z" * 99, b"\n")
    assert [len(line) for line in _lines(ok)] == [99, 99]
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        list(_lines(Chunks(b"\n" + b"x" * 60, b"y" * 60)))
