"""A list response parsed one item at a time, so its reader can stand aside
between items.

``json.loads`` of one page (500 pods of a few KiB each: megabytes) is a
single C call that holds the interpreter lock throughout: tens of
milliseconds in which no other thread of the agent (a CNI request) runs,
and which no switch interval cuts short. The C scanner behind
``JSONDecoder.raw_decode`` parses one value at a time at the same speed, so
here the page's top-level object is walked in Python, each of its values is
parsed by the scanner, and the elements of ``items`` one by one, with a
call to ``pause`` after each.

The result equals ``json.loads(data)``, errors included (``ValueError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def load_list(data: bytes | str, pause: Callable[[], None]) -> Any:
    if not isinstance(data, str):
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    text = data
    idx = _skip(text, 0)
    if not text.startswith("{", idx):
        # Not a list object (an error body, say): nothing to walk.
        return json.loads(text)
    out: dict[str, Any] = {}
    idx = _skip(text, idx + 1)
    if text.startswith("}", idx):
        return _end(text, idx + 1, out)
    while True:
        key, idx = _member(text, idx)
        if key == "items" and text.startswith("[", idx):
            out[key], idx = _array(text, idx, pause)
        else:
            out[key], idx = _value(text, idx)
        idx = _skip(text, idx)
        if text.startswith(",", idx):
            idx = _skip(text, idx + 1)
        elif text.startswith("}", idx):
            return _end(text, idx + 1, out)
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)


def _array(text: str, idx: int, pause: Callable[[], None]) -> tuple[list[Any], int]:
    items: list[Any] = []
    idx = _skip(text, idx + 1)
    if text.startswith("]", idx):
        return items, idx + 1
    while True:
        value, idx = _value(text, idx)
        items.append(value)
        pause()
        idx = _skip(text, idx)
        if text.startswith(",", idx):
            idx = _skip(text, idx + 1)
        elif text.startswith("]", idx):
            return items, idx + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)


def _member(text: str, idx: int) -> tuple[Any, int]:
    """An object member's key and the index of its value."""
    if not text.startswith('"', idx):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, idx)
    key, idx = _DECODER.raw_decode(text, idx)
    idx = _skip(text, idx)
    if not text.startswith(":", idx):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
    return key, _skip(text, idx + 1)


def _value(text: str, idx: int) -> tuple[Any, int]:
    return _DECODER.raw_decode(text, idx)


def _skip(text: str, idx: int) -> int:
    match = _WS.match(text, idx)
    return match.end() if match is not None else idx


def _end(text: str, idx: int, out: dict[str, Any]) -> dict[str, Any]:
    idx = _skip(text, idx)
    if idx != len(text):
        raise json.JSONDecodeError("Extra data", text, idx)
    return out


# The list's own metadata (resourceVersion, continue) is a few hundred bytes.
_HEAD_BYTES = 64 << 10


def list_head(data: bytes) -> dict[str, Any] | None:
    """The top-level members of a list page that come before ``items``, if
    ``metadata`` is among them (the API server writes kind, apiVersion and
    metadata first), read from the page's first bytes only; else None.

    Lets a reader ask for the next page while the items of this one are
    still being parsed elsewhere. None means "parse the page to know".
    """
    try:
        text = data[:_HEAD_BYTES].decode("utf-8", "ignore")
    except (AttributeError, TypeError):
        return None
    idx = _skip(text, 0)
    if not text.startswith("{", idx):
        return None
    out: dict[str, Any] = {}
    idx = _skip(text, idx + 1)
    try:
        while text.startswith('"', idx):
            key, idx = _member(text, idx)
            if key == "items":
                break
            out[key], idx = _value(text, idx)
            idx = _skip(text, idx)
            if not text.startswith(",", idx):
                return None
            idx = _skip(text, idx + 1)
    except ValueError:
        return None
    return out if isinstance(out.get("metadata"), dict) else None


def no_pause() -> None:
    """The ``pause`` of a reader nothing more urgent waits for."""
