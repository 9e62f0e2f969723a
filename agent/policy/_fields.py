"""Field-level helpers shared by the object parsers: a per-object issue
collector (the shared validation engine's, ``agent/schema.py``) and typed
accessors for plain dicts (YAML manifests or the Kubernetes API's JSON, both
camelCase).

Parsers never raise for a bad field: they record an issue naming the object
and the field path and carry on, so one report lists every problem and the
compiler can still fail closed for whatever the object selects.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any

from ..schema import Problems, dotted, key_path

# Kubernetes object-name grammars (apimachinery validation): namespaces are
# DNS-1123 labels, most other names (NADs included) DNS-1123 subdomains.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


class Issues(Problems):
    """Problems of one object, reported as
    ``"<Kind> <ns>/<name>: <field path>: <problem>"``."""

    def __init__(self, subject: str) -> None:
        super().__init__()
        self.subject = subject

    @property
    def messages(self) -> list[str]:
        return [
            f"{self.subject}: {dotted(p.path)}: {p.reason}"
            if p.path
            else f"{self.subject}: {p.reason}"
            for p in self.found
        ]


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def as_mapping(raw: object, issues: Issues, path: str) -> Mapping[str, Any] | None:
    """``raw`` as a mapping; ``None`` (absent) stays ``None`` silently."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        return raw
    issues.add(path, f"must be an object, got {type_name(raw)}")
    return None


def as_list(raw: object, issues: Issues, path: str) -> list[Any] | None:
    """``raw`` as a list; ``None`` (absent) stays ``None`` silently."""
    if raw is None:
        return None
    if isinstance(raw, list | tuple):
        return list(raw)
    issues.add(path, f"must be a list, got {type_name(raw)}")
    return None


def check_keys(raw: Mapping[str, Any], allowed: frozenset[str], issues: Issues, path: str) -> None:
    """Reject unknown keys. A misspelt ``from`` would otherwise read as "all
    sources" and silently open the pod, so typos must fail closed."""
    for key in sorted(set(raw) - allowed, key=str):
        issues.add((*key_path(path), str(key)), "unknown field")


def string_map(raw: object, issues: Issues, path: str) -> dict[str, str]:
    """A ``map[string]string`` (labels, annotations); bad entries are dropped."""
    mapping = as_mapping(raw, issues, path)
    if mapping is None:
        return {}
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            issues.add(f"{path}.{key}", f"must be a string, got {type_name(value)}")
            continue
        out[key] = value
    return out


def is_namespace_name(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS1123_LABEL.match(name))


def is_object_name(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def network_key(ref: str, default_namespace: str) -> str:
    """Normalise a NAD reference (``name`` or ``ns/name``) to ``ns/name``.

    Raises ``ValueError`` with the reason when the reference is malformed.
    """
    parts = ref.split("/")
    if len(parts) == 1:
        namespace, name = default_namespace, parts[0]
    elif len(parts) == 2:
        namespace, name = parts
    else:
        raise ValueError(f"{ref!r} has more than one '/'")
    if not is_namespace_name(namespace):
        raise ValueError(f"{ref!r}: namespace {namespace!r} is not a DNS-1123 label")
    if not is_object_name(name):
        raise ValueError(f"{ref!r}: name {name!r} is not a DNS-1123 subdomain")
    return f"{namespace}/{name}"


def metadata(raw: Mapping[str, Any], kind: str) -> tuple[str, str, Mapping[str, Any]]:
    """``(namespace, name, metadata)``; raises ``ValueError`` without a name,
    because an object that cannot be named cannot be tracked or reported."""
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        raise ValueError(f"{kind}: metadata missing or not an object")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind}: metadata.name missing or not a string")
    namespace = meta.get("namespace")
    if namespace is None or namespace == "":
        # Manifests often omit it; kubectl would apply them to "default".
        namespace = "default"
    if not isinstance(namespace, str):
        raise ValueError(f"{kind} {name}: metadata.namespace is not a string")
    return namespace, name, meta


def dotted_quad(text: str) -> int | None:
    """The IPv4 address ``text`` spells as a dotted quad, as an integer, or
    None. Pods' addresses and policies' CIDRs pass here by the thousand: the
    C parser takes a tenth of ``ipaddress``'s time and accepts exactly the
    dotted quads ``ipaddress`` accepts (no leading zeros, no other forms).
    Callers send anything it refuses down the general ``ipaddress`` path,
    which names the problem."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):  # not a dotted quad; NUL or surrogates
        return None
