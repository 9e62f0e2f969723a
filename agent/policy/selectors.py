"""Kubernetes ``metav1.LabelSelector``: ``matchLabels`` AND every
``matchExpressions`` requirement (In, NotIn, Exists, DoesNotExist).

The reference MultiNetworkPolicy enforcer converts selectors with
``LabelSelectorAsMap``, which only understands matchLabels and single-value
``In`` and drops the peer otherwise (multi-networkpolicy#4); we evaluate the
full grammar. An empty selector ``{}`` matches everything; what a *missing*
selector means depends on where it sits and is decided by the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ._fields import Issues, as_list, as_mapping, check_keys, type_name


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.IN:
            return labels.get(self.key) in self.values
        if self.operator is Operator.NOT_IN:
            # Per apimachinery, NotIn also matches objects without the key.
            return labels.get(self.key) not in self.values
        if self.operator is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    match_labels: frozenset[tuple[str, str]] = frozenset()
    requirements: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.requirements
        )


EVERYTHING = LabelSelector()

_SELECTOR_KEYS = frozenset({"matchLabels", "matchExpressions"})
_REQUIREMENT_KEYS = frozenset({"key", "operator", "values"})


def parse_selector(raw: object, issues: Issues, path: str) -> LabelSelector | None:
    """Parse a selector; ``None`` when it is invalid (issues say why).

    ``raw is None`` (field absent) is also ``None`` but adds no issue; callers
    that need to tell the two apart check ``raw`` themselves.
    """
    before = len(issues.messages)
    mapping = as_mapping(raw, issues, path)
    if mapping is None:
        return None
    check_keys(mapping, _SELECTOR_KEYS, issues, path)
    labels: set[tuple[str, str]] = set()
    match_labels = as_mapping(mapping.get("matchLabels"), issues, f"{path}.matchLabels") or {}
    for key, value in match_labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            issues.add(f"{path}.matchLabels.{key}", f"must be a string, got {type_name(value)}")
            continue
        labels.add((key, value))
    requirements: list[Requirement] = []
    expressions = as_list(mapping.get("matchExpressions"), issues, f"{path}.matchExpressions")
    for i, expr in enumerate(expressions or []):
        req = _parse_requirement(expr, issues, f"{path}.matchExpressions[{i}]")
        if req is not None:
            requirements.append(req)
    if len(issues.messages) != before:
        return None
    return LabelSelector(frozenset(labels), tuple(requirements))


def _parse_requirement(raw: object, issues: Issues, path: str) -> Requirement | None:
    mapping = as_mapping(raw, issues, path)
    if mapping is None:
        if raw is None:
            issues.add(path, "must be an object, got null")
        return None
    check_keys(mapping, _REQUIREMENT_KEYS, issues, path)
    key = mapping.get("key")
    if not isinstance(key, str) or not key:
        issues.add(f"{path}.key", "required and must be a non-empty string")
        return None
    op_raw = mapping.get("operator")
    try:
        operator = Operator(op_raw if isinstance(op_raw, str) else "")
    except ValueError:
        issues.add(
            f"{path}.operator",
            f"unknown operator {op_raw!r} (want In, NotIn, Exists or DoesNotExist)",
        )
        return None
    values_raw = as_list(mapping.get("values"), issues, f"{path}.values")
    if values_raw is None and mapping.get("values") is not None:
        return None
    values = values_raw or []
    if any(not isinstance(v, str) for v in values):
        issues.add(f"{path}.values", "every value must be a string")
        return None
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        issues.add(f"{path}.values", f"operator {operator.value} needs at least one value")
        return None
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        issues.add(f"{path}.values", f"operator {operator.value} takes no values")
        return None
    return Requirement(key, operator, frozenset(values))
