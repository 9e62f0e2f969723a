"""The generated cluster of tests/support/cluster_gen.py: deterministic, the
sizes asked for, and every object valid to the agent's own parser."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from nicwarden.agent.policy.objects import parse_object
from tests.support import cluster_gen as cg

SPEC = cg.ClusterSpec(pods=2_000, nads=150, policies=400, remote_nodes=50, local_pods=30)


def test_same_spec_same_cluster_other_seed_other_policies() -> None:
    a = json.dumps(list(cg.objects(SPEC)), sort_keys=True)
    assert a == json.dumps(list(cg.objects(SPEC)), sort_keys=True)
    other = cg.ClusterSpec(pods=2_000, nads=150, policies=400, remote_nodes=50, seed=2)
    assert [cg.policy(SPEC, i) for i in range(50)] != [cg.policy(other, i) for i in range(50)]


def test_sizes() -> None:
    kinds = Counter(o["kind"] for o in cg.objects(SPEC))
    assert kinds == {
        "Namespace": 100,
        "NetworkAttachmentDefinition": 150,
        "MultiNetworkPolicy": 400,
        "Pod": 2_000 + 30,
    }
    remote = [cg.pod(SPEC, i) for i in range(0, 2_000, 97)]
    sizes = [len(json.dumps(p)) for p in remote]
    assert all(5_000 <= s <= 8_000 for s in sizes), sizes
    assert {p["spec"]["nodeName"] for p in cg.objects(SPEC) if p["kind"] == "Pod"} >= {
        SPEC.local_node,
        "node-0",
        "node-49",
    }


def test_every_object_is_valid_and_names_are_unique() -> None:
    seen: set[tuple[str, str, str]] = set()
    nads: set[str] = set()
    for raw in cg.objects(SPEC):
        parsed = parse_object(raw)
        assert parsed.errors == (), (raw["metadata"], parsed.errors)
        meta = raw["metadata"]
        key = (raw["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in seen
        seen.add(key)
        if raw["kind"] == "NetworkAttachmentDefinition":
            nads.add(f"{meta['namespace']}/{meta['name']}")
        if raw["kind"] == "Pod":
            # Every secondary network a pod reports is a NAD that exists.
            assert parsed.network_keys() <= nads  # type: ignore[union-attr]
    # Local pods' networks are NADs of their own namespace.
    for lp in cg.local_pods(SPEC):
        assert f"{lp.namespace}/{lp.network}" in nads


def test_policies_cover_every_shape() -> None:
    text = json.dumps([cg.policy(SPEC, i) for i in range(SPEC.policies)])
    for needle in ("ipBlock", "except", "namespaceSelector", "matchExpressions", "endPort"):
        assert needle in text


def test_remote_ips_stay_out_of_the_reserved_subnets() -> None:
    import ipaddress

    reserved = [ipaddress.ip_network(cg.LOCAL_SUBNET), ipaddress.ip_network(cg.FREE_PEER_SUBNET)]
    big = cg.ClusterSpec(pods=200_000)
    for i in (0, 1, 65_535, 65_536, 199_999):
        ip = ipaddress.ip_address(cg.remote_ip(i))
        assert ip in ipaddress.ip_network("10.128.0.0/9")
        assert not any(ip in net for net in reserved)
    assert big.namespaces == 10_000


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        cg.ClusterSpec(pods=-1)
    with pytest.raises(ValueError):
        cg.ClusterSpec(nads=0)
