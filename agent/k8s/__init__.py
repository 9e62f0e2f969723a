"""Kubernetes objects for the policy engine: one ``ObjectSource`` interface,
two implementations (the API server, a directory of manifests), and an Event
recorder for reporting problems back to the cluster.

The names below are imported on first use, not with the package: the list
parser's child process (``list_worker``) imports ``project`` and must not
pay for the Kubernetes client (a third of a second, tens of MB) on every
relist.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nicwarden.agent.backoff import BackoffPolicy

    from .api import ApiSource, load_client
    from .directory import DirectorySource
    from .events import EventRecorder, ObjectRef
    from .kinds import KINDS, RESOURCES, ObjectKey, ResourceType
    from .source import ObjectSource, Sink, SourceProblem

_WHERE = {
    "ApiSource": ".api",
    "load_client": ".api",
    "DirectorySource": ".directory",
    "EventRecorder": ".events",
    "ObjectRef": ".events",
    "KINDS": ".kinds",
    "RESOURCES": ".kinds",
    "ObjectKey": ".kinds",
    "ResourceType": ".kinds",
    "ObjectSource": ".source",
    "Sink": ".source",
    "SourceProblem": ".source",
    "BackoffPolicy": "nicwarden.agent.backoff",
}

__all__ = [
    "KINDS",
    "RESOURCES",
    "ApiSource",
    "BackoffPolicy",
    "DirectorySource",
    "EventRecorder",
    "ObjectKey",
    "ObjectRef",
    "ObjectSource",
    "ResourceType",
    "Sink",
    "SourceProblem",
    "load_client",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value
