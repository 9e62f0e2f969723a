"""Compact records of the objects the API source delivers: only the fields
the policy engine reads (``agent/policy/objects.py``), so that a cluster's
worth of pods costs a few hundred bytes each rather than the 6+ KiB of their
wire form, and so that a change to a field nobody reads is no change at all.

A field of the wrong type is kept as it came, so the parser still reports it.
Repeated strings (label keys and values, namespace and node names) are
interned: in a large cluster most pods share them.
"""

from __future__ import annotations

import hashlib
import marshal
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

from ..policy.objects import MAX_NETWORK_STATUS_BYTES, NETWORK_STATUS

# The one annotation the engine reads from a pod.
POD_ANNOTATIONS = (NETWORK_STATUS,)
# Written by `kubectl apply`: a second copy of the whole object, never read.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_intern = sys.intern


def _str(value: Any) -> Any:
    return _intern(value) if isinstance(value, str) else value


def _string_map(value: Any) -> Any:
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return {_intern(k): _intern(v) for k, v in value.items()}
    return value


def _metadata(meta: Any, annotations: tuple[str, ...]) -> Any:
    if not isinstance(meta, dict):
        return meta
    out: dict[str, Any] = {}
    for field in ("name", "uid", "resourceVersion"):
        if field in meta:
            out[field] = meta[field]
    if "namespace" in meta:
        out["namespace"] = _str(meta["namespace"])
    if "labels" in meta:
        out["labels"] = _string_map(meta["labels"])
    found = meta.get("annotations")
    if isinstance(found, dict):
        kept = {a: _bounded(found[a]) for a in annotations if a in found}
        if kept:
            out["annotations"] = kept
    elif found is not None:
        out["annotations"] = found
    return out


def _bounded(value: Any) -> Any:
    """An oversized annotation is rejected by the parser whatever its tail:
    keep just enough of it to stay rejected, not megabytes per pod."""
    if isinstance(value, str) and len(value) > MAX_NETWORK_STATUS_BYTES:
        return value[: MAX_NETWORK_STATUS_BYTES + 1]
    return value


def _port(port: Any) -> Any:
    if not isinstance(port, dict):
        return port
    return {
        _intern(k): _str(v) for k, v in port.items() if k in ("name", "containerPort", "protocol")
    }


def _containers(containers: Any) -> Any:
    if not isinstance(containers, list):
        return containers
    out: list[Any] = []
    for c in containers:
        if not isinstance(c, dict):
            out.append(c)
        elif "ports" in c:
            ports = c["ports"]
            out.append({"ports": [_port(p) for p in ports] if isinstance(ports, list) else ports})
        else:
            out.append({})  # keeps later containers' indexes, which errors name
    while out and out[-1] == {}:
        out.pop()
    return out


def project_pod(raw: dict[str, Any]) -> dict[str, Any]:
    """A pod as the engine sees it: identity, labels, network-status, and
    from spec/status (absent from a metadata-only object) the node, phase,
    hostNetwork and named container ports."""
    out: dict[str, Any] = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": _metadata(raw.get("metadata"), POD_ANNOTATIONS),
    }
    spec = raw.get("spec")
    if isinstance(spec, dict):
        kept: dict[str, Any] = {}
        if "nodeName" in spec:
            kept["nodeName"] = _str(spec["nodeName"])
        if "hostNetwork" in spec:
            kept["hostNetwork"] = spec["hostNetwork"]
        containers = _containers(spec.get("containers"))
        if containers:
            kept["containers"] = containers
        out["spec"] = kept
    elif spec is not None:
        out["spec"] = spec
    status = raw.get("status")
    if isinstance(status, dict):
        out["status"] = {"phase": _str(status["phase"])} if "phase" in status else {}
    elif status is not None:
        out["status"] = status
    return out


def project_namespace(raw: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": _metadata(raw.get("metadata"), ())}


def trim(raw: dict[str, Any]) -> dict[str, Any]:
    """Policies and NADs are few and read whole (their Events name them by
    uid); only the API's bookkeeping goes."""
    meta = raw.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(_LAST_APPLIED, None)
    return raw


PROJECTIONS: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "Namespace": project_namespace,
    "Pod": project_pod,
    "NetworkAttachmentDefinition": trim,
    "MultiNetworkPolicy": trim,
}


def digest(obj: Mapping[str, Any]) -> bytes:
    """What the consumer would see of ``obj``, in 16 bytes. The
    resourceVersion is left out: it changes with every write, including
    writes to fields a projection dropped.

    Serialised with ``marshal`` version 0 (no interning flags, no
    back-references, so only content counts), five times faster than sorted
    JSON on a 10,000-CIDR policy. Key order counts: the same object from
    one server always comes in the same order, and a reordered manifest is
    at worst an event that changes nothing."""
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and "resourceVersion" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    try:
        data = marshal.dumps(cast(Any, obj), 0)
    except ValueError:
        # A manifest's YAML may hold dates, or refer to itself; repr copes.
        data = repr(obj).encode(errors="surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()
