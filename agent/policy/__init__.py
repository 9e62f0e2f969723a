"""MultiNetworkPolicy engine: pure logic, no kernel access.

``objects`` parses and validates Kubernetes objects, ``selectors`` evaluates
label selectors, ``compiler`` turns policies into per-interface semantic
tables, ``lower`` turns those into the BPF map entries (its docstring is the
datapath contract) and ``engine`` recomputes incrementally on object events.
"""

from __future__ import annotations

from .compiler import compile_interface, compile_policies
from .engine import Action, Event, ObjectStatus, PolicyEngine
from .lower import (
    MAX_CLASSES,
    LoweredInterface,
    LoweredTable,
    LoweringError,
    digest,
    lookup,
    lower,
    lower_interface,
)
from .objects import (
    MultiNetworkPolicy,
    Namespace,
    NetworkAttachmentDefinition,
    Pod,
    parse_object,
)
from .selectors import LabelSelector
from .state import ClusterState
from .tables import (
    ALL,
    Block,
    CompileOptions,
    DirectionTable,
    InterfaceKey,
    InterfaceTables,
    PolicedInterface,
    PortRange,
    TrafficClass,
    evaluate,
)

__all__ = [
    "ALL",
    "MAX_CLASSES",
    "Action",
    "Block",
    "ClusterState",
    "CompileOptions",
    "DirectionTable",
    "Event",
    "InterfaceKey",
    "InterfaceTables",
    "LabelSelector",
    "LoweredInterface",
    "LoweredTable",
    "LoweringError",
    "MultiNetworkPolicy",
    "Namespace",
    "NetworkAttachmentDefinition",
    "ObjectStatus",
    "Pod",
    "PolicedInterface",
    "PolicyEngine",
    "PortRange",
    "TrafficClass",
    "compile_interface",
    "compile_policies",
    "digest",
    "evaluate",
    "lookup",
    "lower",
    "lower_interface",
    "parse_object",
]
