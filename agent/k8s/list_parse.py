"""One list page, from its wire bytes to what the ledger takes: for each
item its key, the digest of its projection, and the projection.

Pure and self-contained, so that it can run in the list parser's child
process (``list_worker``) as well as in the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .kinds import ObjectKey, ResourceType, object_key
from .list_json import load_list
from .project import PROJECTIONS, digest

# What client-go's metadata client is served items as.
PARTIAL_KIND = "PartialObjectMetadata"

# (key, digest of the projection, the projection)
Item = tuple[ObjectKey, bytes, dict[str, Any]]


@dataclass
class Page:
    list_kind: Any  # the body's "kind" ("PodList", "PartialObjectMetadataList", ...)
    resource_version: Any
    continue_token: Any
    items: list[Item] = field(default_factory=list)


def normalise(
    resource: ResourceType, raw: dict[str, Any]
) -> tuple[ObjectKey | None, dict[str, Any]]:
    """``raw`` projected (``project.py``) and named. List items of built-in
    kinds come without kind/apiVersion, and metadata-only ones as
    PartialObjectMetadata: the projection names them, so objects look the
    same from a list, a watch or a manifest."""
    if raw.get("kind") in (None, PARTIAL_KIND):
        raw["kind"] = resource.kind
        raw["apiVersion"] = resource.api_version
    raw.setdefault("apiVersion", resource.api_version)
    obj = PROJECTIONS[resource.kind](raw)
    return object_key(resource.kind, obj), obj


def parse_page(resource: ResourceType, data: bytes, pause: Callable[[], None]) -> Page:
    """``ValueError`` if ``data`` is not JSON; items that are not objects or
    have no name are left out (untrackable)."""
    body = load_list(data, pause)
    if not isinstance(body, dict):
        raise ValueError(f"a {resource.plural} list page is not a JSON object")
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    page = Page(body.get("kind"), meta.get("resourceVersion"), meta.get("continue"))
    items = body.get("items")
    for raw in items if isinstance(items, list) else ():
        if isinstance(raw, dict):
            key, obj = normalise(resource, raw)
            if key is not None:
                page.items.append((key, digest(obj), obj))
    return page
