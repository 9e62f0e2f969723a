"""ListPolicies' pages: this node's policed interfaces, then every followed
object's status, then the source's problems, paged by key and filtered by
key range.

At 100,000 pods the object list is the whole cluster. A page reads only its
own rows from the engine's sorted indexes (all keys, and those with errors or
warnings), so it costs O(page + log n), and a listing of only what has
problems costs O(problems). Building every row and slicing, as before, cost
about 107,000 dicts per page.
"""

from __future__ import annotations

import hashlib
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.paging import Section, capped, filters_digest, keyset_page
from nicwarden.agent.policy import ObjectStatus
from nicwarden.agent.policy._fields import is_namespace_name
from nicwarden.agent.policy.objects import KINDS
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from nicwarden.agent.enforcement import PolicyEnforcer

Keyed = tuple[Any, dict[str, Any]]  # (key, row fields)


def list_policies(
    enf: PolicyEnforcer, request: pb.ListPoliciesRequest
) -> tuple[list[pb.PolicedInterfaceStatus], list[pb.PolicyObjectStatus], str]:
    """(interfaces, objects, next page token) for one page of ``request``."""
    kind = request.kind or None
    namespace = request.namespace or None
    if kind is not None and kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(sorted(KINDS))}, not {kind[:80]!r}")
    if namespace is not None and not is_namespace_name(namespace):
        raise InvalidArgument(
            f"namespace {namespace[:80]!r} is not a namespace name (a DNS-1123 label)"
        )
    problems_only = request.problems_only

    def interfaces(after: Any, limit: int) -> list[Keyed]:
        if kind is not None:
            return []
        return enf.interfaces_page(after, limit, namespace)

    def objects(after: Any, limit: int) -> list[ObjectStatus]:
        start = (after[0], after[1]) if after is not None else None
        return enf.objects_page(
            start, limit, kind=kind, namespace=namespace, problems_only=problems_only
        )

    def source(after: Any, limit: int) -> list[Keyed]:
        # The source's problems name files or objects, not a namespace or kind.
        if kind is not None or namespace is not None:
            return []
        # Keyed by a bounded prefix of the file or object, then a digest of
        # the whole problem: a token stays small however long a message is.
        # (Two identical problems are one row.)
        keyed = sorted(
            {
                (key[:256], hashlib.sha256(f"{key}\0{message}".encode()).hexdigest()[:32]): row
                for (key, message), row in enf.source_rows()
            }.items()
        )
        start = (after[0], after[1]) if after is not None else None
        return [(k, r) for k, r in keyed if start is None or k > start][:limit]

    sections = [
        Section("interfaces", interfaces, itemgetter(0), _is_str, _interface_message),
        Section("objects", objects, _status_key, _is_pair, _status_message),
        Section("source", source, itemgetter(0), _is_pair, _source_message),
    ]
    filters = filters_digest(kind, namespace, problems_only)
    shown, token = keyset_page(sections, request.page_size, request.page_token, filters)
    ifaces = [m for m in shown if isinstance(m, pb.PolicedInterfaceStatus)]
    objs = [m for m in shown if isinstance(m, pb.PolicyObjectStatus)]
    return ifaces, objs, token


def _status_key(s: ObjectStatus) -> tuple[str, str]:
    return s.kind, s.key


def _status_message(s: ObjectStatus) -> pb.PolicyObjectStatus:
    # Straight from the engine's immutable status: at a page of 50,000 rows,
    # an intermediate dict per row is most of the cost.
    return pb.PolicyObjectStatus(
        kind=s.kind, key=s.key, ok=s.ok, errors=capped(s.errors), warnings=capped(s.warnings)
    )


def _interface_message(keyed: Keyed) -> pb.PolicedInterfaceStatus:
    fields = keyed[1]
    return pb.PolicedInterfaceStatus(**dict(fields, errors=capped(fields["errors"])))


def _source_message(keyed: Keyed) -> pb.PolicyObjectStatus:
    fields = keyed[1]
    return pb.PolicyObjectStatus(
        **dict(fields, errors=capped(fields["errors"]), warnings=capped(fields["warnings"]))
    )


def _is_str(key: Any) -> bool:
    return isinstance(key, str) and len(key) <= 1024


def _is_pair(key: Any) -> bool:
    return (
        isinstance(key, list)
        and len(key) == 2
        and all(isinstance(k, str) and len(k) <= 1024 for k in key)
    )
