"""Pages for the List RPCs, so that no answer can outgrow gRPC's 4 MiB
default message limit however many devices, attachments or policy rows the
node holds.

A page ends at the requested size (0 means ``DEFAULT_PAGE_SIZE``; anything
above ``MAX_PAGE_SIZE`` is lowered to it) or before it would pass
``PAGE_BYTES``, whichever comes first; it always holds at least one entry, so
paging always advances. The token is the offset of the next entry in the
list's (sorted, stable) order. Lists are read afresh for each page: an entry
added or removed between two pages can shift the rest by one, as with any
offset paging; each page is still self-consistent.

Lists that can hold the whole cluster (policy object status) page by key
instead (``keyset_page``): the token names the last entry sent, and the next
page is read from the list's index after it. A page then costs O(page), not
O(list), and entries added or removed between pages shift nothing: each
entry present throughout is listed exactly once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import Message

from nicwarden.agent.errors import InvalidArgument

S = TypeVar("S")
M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 10_000
MAX_PAGE_SIZE = 50_000
# Leaves a margin under 4 MiB for the answer's other fields and framing.
PAGE_BYTES = 3 * 1024 * 1024
# Per-entry bound on a repeated message list (errors, warnings) so that one
# entry cannot outgrow a page by itself.
MAX_MESSAGES = 20


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, size) from a request's paging fields; a bad token is the
    caller's error."""
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    if not page_token:
        return 0, size
    if not page_token.isdigit() or len(page_token) > 12:
        raise InvalidArgument(
            f"page_token {page_token[:40]!r} is not one this agent issued "
            "(pass the previous answer's next_page_token, or none for the first page)"
        )
    return int(page_token), size


def page(
    items: Sequence[S], page_size: int, page_token: str, convert: Callable[[S], M]
) -> tuple[list[M], str]:
    """One page of ``items``, each converted to its message (only the
    page's entries are converted), and the token of the next ("" when none)."""
    offset, size = page_bounds(page_size, page_token)
    out: list[M] = []
    used = 0
    index = offset
    while index < len(items) and len(out) < size:
        msg = convert(items[index])
        cost = msg.ByteSize() + 8  # field tag and length prefix
        if out and used + cost > PAGE_BYTES:
            break
        out.append(msg)
        used += cost
        index += 1
    return out, str(index) if index < len(items) else ""


def capped(messages: Sequence[str]) -> list[str]:
    """The first ``MAX_MESSAGES`` messages, plus one counting the rest."""
    if len(messages) <= MAX_MESSAGES:
        return list(messages)
    more = len(messages) - MAX_MESSAGES
    return [*messages[:MAX_MESSAGES], f"and {more:,} more (only the first {MAX_MESSAGES} shown)"]


# A keyset token: its version, the list section it points into, the last key
# sent there, and a digest of the filters it was issued under.
_TOKEN_PREFIX = "k1."
MAX_TOKEN_CHARS = 4096

Key = Any  # a JSON-able key: str, or a list of str


class Section(NamedTuple):
    """One part of a keyset-paged list, read in key order."""

    name: str
    # (after, limit) -> up to ``limit`` entries after key ``after`` (None:
    # from the first), in key order.
    fetch: Callable[[Key | None, int], Sequence[Any]]
    key_of: Callable[[Any], Key]  # an entry's key, as the token holds it
    key_ok: Callable[[Key], bool]  # whether a decoded key has this section's shape
    convert: Callable[[Any], Message]  # an entry's message


def filters_digest(*filters: object) -> str:
    return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]


def encode_token(section: str, key: Key, filters: str) -> str:
    raw = json.dumps([section, key, filters], separators=(",", ":")).encode()
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_token(token: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token {token[:40]!r} is not one this agent issued ({why}); pass the "
        "previous answer's next_page_token with the same filters, or none for the first page"
    )


def decode_token(token: str, sections: Sequence[Section], filters: str) -> tuple[int, Key]:
    """(section index, last key sent) from a keyset token; anything this
    agent did not issue for these filters is the caller's error."""
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(_TOKEN_PREFIX):
        raise _bad_token(token, "malformed")
    body = token[len(_TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_token(token, "malformed") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise _bad_token(token, "malformed")
    name, key, digest = decoded
    for index, section in enumerate(sections):
        if name == section.name and section.key_ok(key):
            if digest != filters:
                raise _bad_token(token, "issued for different filters")
            return index, key
    raise _bad_token(token, "malformed")


def keyset_page(
    sections: Sequence[Section], page_size: int, page_token: str, filters: str
) -> tuple[list[Message], str]:
    """One page across ``sections`` in order, each read by key from where
    the token left off; bounded by size and ``PAGE_BYTES`` as ``page`` is.
    Only the page's entries (and one more, to know whether the list goes on)
    are fetched, and only the last one sent is keyed."""
    _, size = page_bounds(page_size, "")
    start, after = decode_token(page_token, sections, filters) if page_token else (0, None)
    out: list[Message] = []
    used = 0
    last: tuple[Section, Any] | None = None

    def token() -> str:
        assert last is not None  # a page holds at least one entry
        section, entry = last
        return encode_token(section.name, section.key_of(entry), filters)

    for index in range(start, len(sections)):
        section = sections[index]
        for entry in section.fetch(after if index == start else None, size - len(out) + 1):
            if len(out) == size:
                return out, token()
            msg = section.convert(entry)
            cost = msg.ByteSize() + 8  # field tag and length prefix
            if out and used + cost > PAGE_BYTES:
                return out, token()
            out.append(msg)
            used += cost
            last = (section, entry)
    return out, ""
