"""Label index: which objects carry ``key`` or ``key=value``, so a selector is
answered by intersecting the sets its positive terms name instead of scanning
every object. Negative terms (NotIn, DoesNotExist) also match objects without
the key, so they never narrow here; the caller still runs the exact
``LabelSelector.matches`` on the candidates."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Set
from typing import TypeVar

from .selectors import LabelSelector, Operator

K = TypeVar("K", bound=Hashable)


class LabelIndex:
    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, str], set[str]] = {}
        self._by_key: dict[str, set[str]] = {}

    def add(self, ident: str, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            self._by_pair.setdefault((key, value), set()).add(ident)
            self._by_key.setdefault(key, set()).add(ident)

    def discard(self, ident: str, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            _drop(self._by_pair, (key, value), ident)
            _drop(self._by_key, key, ident)

    def terms(self, selector: LabelSelector) -> list[Term]:
        """The selector's positive terms as index buckets: a pod matching it
        is in at least one bucket of every term. Buckets are the index's own
        sets (not copies), so asking costs nothing however large they are."""
        out: list[Term] = [(self._by_pair.get(pair, _EMPTY),) for pair in selector.match_labels]
        for req in selector.requirements:
            if req.operator is Operator.IN:
                out.append(tuple(self._by_pair.get((req.key, v), _EMPTY) for v in req.values))
            elif req.operator is Operator.EXISTS:
                out.append((self._by_key.get(req.key, _EMPTY),))
        return out

    def candidates(self, selector: LabelSelector) -> set[str] | None:
        """A superset of the objects ``selector`` matches, or ``None`` when no
        term narrows it (every object is a candidate)."""
        return intersect(self.terms(selector))


Term = tuple[Set[str], ...]  # OR of buckets
_EMPTY: frozenset[str] = frozenset()


def intersect(terms: list[Term]) -> set[str] | None:
    """Members of every term (``None`` for no terms), in time proportional to
    the smallest term, never to the larger ones."""
    if not terms:
        return None
    ordered = sorted(terms, key=lambda t: sum(len(b) for b in t))
    out: set[str] = set().union(*ordered[0])
    for term in ordered[1:]:
        if not out:
            break
        out = {k for k in out if any(k in b for b in term)}
    return out


def _drop(index: dict[K, set[str]], key: K, ident: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(ident)
        if not bucket:
            del index[key]  # bounded memory under label churn
