"""Kubernetes objects for the policy engine: one ``ObjectSource`` interface,
two implementations (the API server, a directory of manifests), and an Event
recorder for reporting problems back to the cluster.
"""

from __future__ import annotations

from nicwarden.agent.backoff import BackoffPolicy

from .api import ApiSource, load_client
from .directory import DirectorySource
from .events import EventRecorder, ObjectRef
from .kinds import KINDS, RESOURCES, ObjectKey, ResourceType
from .source import ObjectSource, Sink, SourceProblem

__all__ = [
    "KINDS",
    "RESOURCES",
    "ApiSource",
    "BackoffPolicy",
    "DirectorySource",
    "EventRecorder",
    "ObjectRef",
    "ObjectKey",
    "ObjectSource",
    "ResourceType",
    "Sink",
    "SourceProblem",
    "load_client",
]
