"""The four object types the policy engine reads, with where they live in
the API (group/version/plural) and whether they are namespaced.

One table serves both sources: the directory source checks manifests'
``apiVersion`` against it, the API source builds its list/watch calls from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("Namespace", "Pod", "NetworkAttachmentDefinition", "MultiNetworkPolicy")

# (kind, namespace, name); namespace is "" for cluster-scoped kinds.
ObjectKey = tuple[str, str, str]


@dataclass(frozen=True)
class ResourceType:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: Mapping[str, ResourceType] = {
    r.kind: r
    for r in (
        ResourceType("Namespace", "", "v1", "namespaces", namespaced=False),
        ResourceType("Pod", "", "v1", "pods", namespaced=True),
        ResourceType(
            "NetworkAttachmentDefinition",
            "k8s.cni.cncf.io",
            "v1",
            "network-attachment-definitions",
            namespaced=True,
        ),
        # v1beta2 exists in the CRD but is not served
        # (docs/contracts.md#multinetworkpolicy), so a cluster would reject it: the directory source does too.
        ResourceType(
            "MultiNetworkPolicy",
            "k8s.cni.cncf.io",
            "v1beta1",
            "multi-networkpolicies",
            namespaced=True,
        ),
    )
}

# Where the API server puts namespaced objects whose manifest names no namespace.
DEFAULT_NAMESPACE = "default"


def object_key(kind: str, obj: Mapping[str, Any]) -> ObjectKey | None:
    """The identity of an already-normalised object, or None without a name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    if not RESOURCES[kind].namespaced:
        return (kind, "", name)
    namespace = meta.get("namespace")
    return (
        kind,
        namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE,
        name,
    )


def describe(key: ObjectKey) -> str:
    """``"Pod prod/web"`` / ``"Namespace prod"``, as problems and logs name objects."""
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
