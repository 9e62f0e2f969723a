"""The one validation engine for what operators write: the agent's YAML
config (``agent/config.py``), the ``sriov:`` desired state
(``agent/devices/spec.py``), the device plugin's ``resourceList``
(``deviceplugin/config.py``) and policy objects (``agent/policy/``).

* A :class:`Problem` is a key path from the root (list items appear as
  ``"[3]"``) and a reason; rendered, ``<source>: <dotted.key>: <reason>``.
* A *validator* takes a raw value and returns the parsed one, or raises
  :class:`Invalid` with the reason (or several problems at sub-paths).
* :class:`Problems` collects while a parser carries on, so one report lists
  every problem, not just the first.
* The declarative schema: a frozen dataclass whose fields are declared with
  :func:`setting`; :func:`parse_section` builds it from a raw mapping, with
  unknown keys reported (and the closest known key suggested).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Validator = Callable[[object], T]
KeyPath = tuple[str, ...]

_META = "nicwarden.setting"


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()  # a Problem about a key, not a particular value


# -- problems -------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: KeyPath  # keys from the root; list items appear as "[3]"
    reason: str
    value: object = NO_VALUE  # the offending value, when a report shows it apart

    def render(self, source: str) -> str:
        return f"{source}: {dotted(self.path) or '<top level>'}: {self.reason}"

    def under(self, *prefix: str) -> Problem:
        return dataclasses.replace(self, path=(*prefix, *self.path))


class Invalid(Exception):
    """Raised by a validator. A plain reason applies to the value itself;
    section validators raise several problems at sub-paths."""

    def __init__(self, reason: str = "", *, problems: Sequence[Problem] = ()) -> None:
        super().__init__(reason or "; ".join(p.reason for p in problems))
        self.problems = list(problems) or [Problem((), reason)]

    def under(self, key: str) -> list[Problem]:
        return [p.under(key) for p in self.problems]


def key_path(path: str | Sequence[str]) -> KeyPath:
    """``"spec.ingress[0].from"`` -> ``("spec", "ingress", "[0]", "from")``;
    :func:`dotted` turns it back into the same text."""
    if not isinstance(path, str):
        return tuple(path)
    if not path:
        return ()
    return tuple(re.split(r"\.|(?=\[)", path))


def dotted(path: Sequence[str]) -> str:
    out = ""
    for part in path:
        out += part if part.startswith("[") or not out else f".{part}"
    return out


class Problems:
    """Every problem found while parsing one input (or one item of a list)."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    def add(self, path: str | Sequence[str], reason: str, value: object = NO_VALUE) -> None:
        self.found.append(Problem(key_path(path), reason, value))

    def extend(self, problems: Iterable[Problem], under: str | Sequence[str] = ()) -> None:
        prefix = key_path(under)
        self.found.extend(p.under(*prefix) for p in problems)

    def check(self, validate: Validator[T], value: object, path: str | Sequence[str]) -> T | None:
        """``validate(value)``, or None with its problems recorded at ``path``."""
        try:
            return validate(value)
        except Invalid as e:
            self.extend(e.problems, path)
            return None

    def unknown_keys(
        self, raw: Mapping[Any, Any], known: Sequence[str], path: str | Sequence[str] = ()
    ) -> None:
        prefix = key_path(path)
        for key in raw:
            if key not in known:
                self.found.append(unknown_key(key, known).under(*prefix))

    def raise_if_any(self) -> None:
        if self.found:
            raise Invalid(problems=self.found)

    def render(self, source: str) -> list[str]:
        return [p.render(source) for p in self.found]

    def __bool__(self) -> bool:
        return bool(self.found)

    def __len__(self) -> int:
        return len(self.found)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.found)


def describe(value: object) -> str:
    """How a bad value appears in an error: short, and in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key(key: object, known: Sequence[str]) -> Problem:
    name = key if isinstance(key, str) else describe(key)
    hint = difflib.get_close_matches(str(name), known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f" (known keys: {', '.join(known)})"
    return Problem((str(name),), f"unknown key{suggestion}")


# -- reusable validators ----------------------------------------------------


def _strict_int(value: object) -> int | None:
    # bool is an int subclass, but "port: yes" is a mistake, not port 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # Overrides from flags arrive as strings; accept the canonical form.
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return None


def int_range(low: int, high: int, *, strings: bool = True) -> Validator[int]:
    """An integer in ``[low, high]``. ``strings=False`` refuses ``"8"``: only
    command-line overrides need the string form."""

    def validate(value: object) -> int:
        number = _strict_int(value) if strings or not isinstance(value, str) else None
        if number is None or not low <= number <= high:
            raise Invalid(f"expected an integer {low}-{high}, got {describe(value)}")
        return number

    return validate


port = int_range(1, 65535)


def positive_int(value: object) -> int:
    number = _strict_int(value)
    if number is None or number < 1:
        raise Invalid(f"expected a positive integer, got {describe(value)}")
    return number


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Invalid(f"expected true or false, got {describe(value)}")


def string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a non-empty string, got {describe(value)}")
    return value


def path(value: object) -> Path:
    # A relative path in a daemon's config would depend on the cwd it was
    # started from; require the operator to say what they mean.
    text = string(value)
    if "\0" in text or not text.startswith("/"):
        raise Invalid(f"expected an absolute path, got {describe(value)}")
    return Path(text)


def enum(*choices: str) -> Validator[str]:
    def validate(value: object) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {describe(value)}")
        assert isinstance(value, str)
        return value

    return validate


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(value: object) -> float:
    """Seconds, as a number or a string with a unit: ``30``, ``1.5s``, ``500ms``, ``5m``, ``1h``."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds is None or not 0 < seconds < float("inf"):
        raise Invalid(
            f"expected a positive duration (seconds, or e.g. 500ms, 30s, 5m, 1h), got {describe(value)}"
        )
    return seconds


def ip_address(value: object) -> str:
    # Literals only: resolving a name at start would make config validity
    # depend on DNS, and hides what is actually bound.
    try:
        return str(ipaddress.ip_address(string(value)))
    except (Invalid, ValueError):
        raise Invalid(
            f"expected an IP address such as 127.0.0.1 or ::1, got {describe(value)}"
        ) from None


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def dns_subdomain(value: object) -> str:
    text = string(value)
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise Invalid(f"expected a DNS subdomain such as nicwarden.io, got {describe(value)}")
    return text


def mapping(value: object) -> dict[str, Any]:
    """Any mapping with string keys, kept raw for its owner to validate."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a mapping, got {describe(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise Invalid(f"expected string keys, got key {describe(bad[0])}")
    return copy.deepcopy(dict(value))


def list_of(validate: Validator[T], what: str, *, non_empty: bool = False) -> Validator[list[T]]:
    """A list whose items each pass ``validate``; every bad item is reported
    at its index. ``what`` names the items in the error for a non-list."""

    def validate_list(value: object) -> list[T]:
        if not isinstance(value, list | tuple) or (non_empty and not value):
            adjective = "non-empty " if non_empty else ""
            raise Invalid(f"expected a {adjective}list of {what}, got {describe(value)}")
        items: list[T] = []
        problems = Problems()
        for index, item in enumerate(value):
            parsed = problems.check(validate, item, (f"[{index}]",))
            if parsed is not None:
                items.append(parsed)
        problems.raise_if_any()
        return items

    return validate_list


list_of_mappings = list_of(mapping, "mappings")


def optional(validate: Validator[T]) -> Validator[T | None]:
    def validate_optional(value: object) -> T | None:
        return None if value is None else validate(value)

    return validate_optional


# -- the declarative schema ---------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    validate: Validator[Any]
    doc: str
    key: str | None  # YAML key when not the camelCase of the attribute


def setting(validate: Validator[T], default: T, doc: str, *, key: str | None = None) -> T:
    """Declare a config field: how to validate it, its default and what it is for."""
    metadata = {_META: _Spec(validate, doc, key)}
    if isinstance(default, list | dict):
        # Each config gets its own copy, so no caller can mutate the default.
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _settings(cls: type[Any]) -> dict[str, tuple[dataclasses.Field[Any], _Spec]]:
    """YAML key -> (dataclass field, spec) for every declared setting."""
    out: dict[str, tuple[dataclasses.Field[Any], _Spec]] = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if isinstance(spec, _Spec):
            out[spec.key or _camel(f.name)] = (f, spec)
    return out


def parse_section(cls: type[T], raw: object) -> T:
    """Build config class ``cls`` from a raw mapping, or raise every problem found."""
    if not isinstance(raw, Mapping):
        raise Invalid(f"expected a mapping, got {describe(raw)}")
    specs = _settings(cls)
    problems = Problems()
    problems.unknown_keys(raw, list(specs))
    values: dict[str, Any] = {}
    for key, (f, spec) in specs.items():
        if key in raw:
            try:
                values[f.name] = spec.validate(raw[key])
            except Invalid as e:
                problems.extend(e.problems, (key,))
    problems.raise_if_any()
    built = cls(**values)
    check: Callable[[], None] | None = getattr(built, "check", None)
    if check is not None:
        check()  # cross-field rules, run only once every field is valid
    return built


def section(cls: type[T]) -> Validator[T]:
    """Validator for a nested config section."""

    def validate(value: object) -> T:
        return parse_section(cls, value)

    return validate


def _plain(value: object) -> object:
    if _is_section(value):
        return to_plain_dict(value)
    if value is None or isinstance(value, str | int | float | bool | list | tuple | dict):
        return copy.deepcopy(value)
    return str(value)  # paths and small value types print as their YAML form


def _is_section(value: object) -> bool:
    return dataclasses.is_dataclass(value) and bool(_settings(type(value)))


def to_plain_dict(config: object) -> dict[str, object]:
    """A config object as the YAML-shaped mapping that would produce it."""
    assert dataclasses.is_dataclass(config) and not isinstance(config, type)
    return {key: _plain(getattr(config, f.name)) for key, (f, _) in _settings(type(config)).items()}


@dataclass(frozen=True)
class SettingDoc:
    key: str  # dotted YAML path
    default: object
    doc: str


def settings_reference(cls: type[Any], prefix: str = "") -> list[SettingDoc]:
    """Every setting with its default, nested sections flattened, for docs."""
    defaults = cls()
    rows: list[SettingDoc] = []
    for key, (f, spec) in _settings(cls).items():
        default = getattr(defaults, f.name)
        if _is_section(default):
            rows += settings_reference(type(default), f"{prefix}{key}.")
        else:
            rows.append(SettingDoc(f"{prefix}{key}", _plain(default), spec.doc))
    return rows
