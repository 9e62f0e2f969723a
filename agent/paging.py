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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

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
