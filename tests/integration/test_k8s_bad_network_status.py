"""A pod's malformed network-status, through the real API source (list/watch
against the in-repo API server, full and metadata-only): the source keeps
going, the pod keeps its last valid addresses in the compiled tables, and
the engine counts it as malformed once. No root needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nicwarden.agent.policy import lookup
from nicwarden.agent.policy.objects import MAX_NETWORK_STATUS_BYTES
from tests.integration.test_k8s_metadata import (  # noqa: F401 (fixtures)
    TARGETS,
    Fed,
    cluster,
    make_source,
    pod,
)
from tests.support.k8s_apiserver import FakeApiServer, wait_until

TCP = 6
CLIENT = ("dev", "client-4")
CLIENT_IP, MOVED_IP = "10.1.1.5", "10.1.1.99"

BAD = (
    "{not json",
    '{"an": "object"}',
    '[{"name": 7}]',
    json.dumps([{"name": "prod/net-a", "ips": ["10.1.1.300"]}]),
    json.dumps([{"name": "prod/net-a", "ips": [MOVED_IP], "pad": "x" * MAX_NETWORK_STATUS_BYTES}]),
)


def server_allows(fed: Fed, ip: str) -> bool:
    lowered = fed.engine.lowered(TARGETS[0].key)
    assert lowered is not None and lowered.ingress.isolated
    return lookup(lowered.ingress, 4, ip, TCP, 8080)


def client(status_text: str | None = None, ip: str = CLIENT_IP) -> dict[str, Any]:
    return pod(*CLIENT, {"app": "client"}, {"prod/net-a": ip}, status_text=status_text)


@pytest.mark.parametrize("metadata_only", [False, True])
def test_malformed_status_keeps_the_pods_addresses(
    server: FakeApiServer,  # noqa: F811
    make_source: Any,  # noqa: F811
    metadata_only: bool,
) -> None:
    for obj in cluster():
        server.add(obj)
    fed = Fed(make_source(pod_metadata_only=metadata_only), server)
    assert server_allows(fed, CLIENT_IP)
    digest = fed.engine.digest(TARGETS[0].key)
    before = len(fed.log)
    for text in BAD:
        server.update(client(text))
    server.add(pod("dev", "after", {"app": "client"}, {"prod/net-a": "10.1.4.1"}))
    wait_until(lambda: len(fed.log) >= before + len(BAD) + 1, what="every event")
    assert fed.source.problems() == []
    # The bad writes changed nothing enforced; the later pod still got in.
    assert server_allows(fed, CLIENT_IP) and not server_allows(fed, MOVED_IP)
    assert server_allows(fed, "10.1.4.1") and fed.engine.digest(TARGETS[0].key) != digest
    assert fed.engine.malformed() == {"Pod": 1} and fed.engine.malformed_total == {"Pod": 1}
    # Valid again: the new address takes effect, and the pod is no longer counted.
    before = len(fed.log)
    server.update(client(ip=MOVED_IP))
    wait_until(lambda: len(fed.log) > before, what="the valid update")
    assert server_allows(fed, MOVED_IP) and not server_allows(fed, CLIENT_IP)
    assert fed.engine.malformed() == {}
