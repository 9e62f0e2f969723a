"""Compact records: a projection must keep everything the policy engine
reads, and a digest must change exactly when that does."""

from __future__ import annotations

import copy
import json
from typing import Any

from nicwarden.agent.k8s.ledger import Ledger
from nicwarden.agent.k8s.project import digest, project_namespace, project_pod, trim
from nicwarden.agent.policy.objects import NETWORK_STATUS, parse_namespace, parse_pod

STATUS = json.dumps([{"name": "prod/net-a", "interface": "net1", "ips": ["10.1.0.1"]}])


def rich_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "prod",
            "uid": "u-1",
            "resourceVersion": "41",
            "generateName": "web-",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {NETWORK_STATUS: STATUS, "other": "x" * 1000},
            "managedFields": [{"manager": "kubelet"}],
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1"}],
        },
        "spec": {
            "nodeName": "node-7",
            "hostNetwork": False,
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [
                {"name": "a", "image": "img", "env": [{"name": "X", "value": "1"}]},
                {
                    "name": "b",
                    "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 1},
                        {"containerPort": 53, "protocol": "UDP"},
                        {"name": "bad", "containerPort": 70000},
                    ],
                },
            ],
        },
        "status": {"phase": "Running", "podIP": "192.168.0.1", "conditions": [{"type": "Ready"}]},
    }


def test_a_projected_pod_parses_exactly_as_the_full_one() -> None:
    raw = rich_pod()
    projected = project_pod(copy.deepcopy(raw))
    assert parse_pod(projected) == parse_pod(raw)
    assert len(json.dumps(projected)) < len(json.dumps(raw)) / 2
    assert projected["metadata"]["annotations"] == {NETWORK_STATUS: STATUS}
    assert "managedFields" not in projected["metadata"]


def test_wrongly_typed_fields_are_kept_for_the_parser_to_report() -> None:
    raw = rich_pod()
    raw["metadata"]["labels"] = {"app": 7}
    raw["metadata"]["annotations"] = "nope"
    raw["spec"]["containers"] = {"not": "a list"}
    raw["status"] = ["odd"]
    assert parse_pod(project_pod(copy.deepcopy(raw))) == parse_pod(raw)
    assert parse_pod(raw).errors  # the case is real


def test_a_metadata_only_pod_parses_like_one_without_spec_and_status() -> None:
    raw = rich_pod()
    partial = {"kind": "Pod", "apiVersion": "v1", "metadata": raw["metadata"]}
    pod = parse_pod(project_pod(copy.deepcopy(partial)))
    assert pod.labels == {"app": "web", "tier": "front"}
    assert [str(ip) for e in pod.networks for ip in e.ips] == ["10.1.0.1"]
    assert pod.ports == () and pod.phase == ""


def test_repeated_strings_are_shared() -> None:
    a, b = rich_pod(), rich_pod()
    # Built at run time, so equal but distinct objects before projection.
    b["metadata"]["labels"] = {"".join(["ap", "p"]): "".join(["w", "eb"])}
    a["metadata"]["labels"] = {"".join(["a", "pp"]): "".join(["we", "b"])}
    pa, pb = project_pod(a), project_pod(b)
    (ka, va), (kb, vb) = *pa["metadata"]["labels"].items(), *pb["metadata"]["labels"].items()
    assert ka is kb and va is vb


def test_namespace_projection_and_trim() -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "prod", "labels": {"env": "prod"}, "annotations": {"a": "b"}},
        "spec": {"finalizers": ["kubernetes"]},
    }
    assert parse_namespace(project_namespace(copy.deepcopy(ns))) == parse_namespace(ns)
    policy = {
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": "p",
            "managedFields": [],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "k8s.v1.cni.cncf.io/policy-for": "net-a",
            },
        },
        "spec": {"podSelector": {}},
    }
    assert trim(policy)["metadata"] == {
        "name": "p",
        "annotations": {"k8s.v1.cni.cncf.io/policy-for": "net-a"},
    }


def test_digest_ignores_the_resource_version_and_nothing_else() -> None:
    pod = project_pod(rich_pod())
    base = digest(pod)
    bumped = copy.deepcopy(pod)
    bumped["metadata"]["resourceVersion"] = "42"
    assert digest(bumped) == base
    relabeled = copy.deepcopy(pod)
    relabeled["metadata"]["labels"]["tier"] = "back"
    assert digest(relabeled) != base
    # Only content counts, not which string objects carry it (interned or
    # not, shared or not): a list item parsed in the child and the same
    # object from a watch event parsed here digest alike.
    assert digest(json.loads(json.dumps(pod))) == base
    assert digest(project_pod(json.loads(json.dumps(rich_pod())))) == base
    assert pod["metadata"]["resourceVersion"] == "41"  # digest did not touch it


def test_a_lean_ledger_keeps_digests_and_deletes_by_identity() -> None:
    ledger = Ledger(keep_objects=False)
    seen: list[tuple[str, dict[str, Any]]] = []
    ledger.attach(lambda e: seen.append((str(e.action), dict(e.obj))))
    key = ("Pod", "prod", "web")
    pod = project_pod(rich_pod())
    assert ledger.upsert(key, pod)
    bumped = copy.deepcopy(pod)
    bumped["metadata"]["resourceVersion"] = "99"  # a write to a field cut away
    assert not ledger.upsert(key, bumped)
    assert set(ledger.known("Pod").values()) == {digest(pod)}
    assert ledger.replace(("Pod",), {}) == 1  # vanished during a relist
    assert seen[-1] == (
        "delete",
        {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "prod"}},
    )


def test_digest_takes_whatever_a_manifest_can_hold() -> None:
    odd: dict[Any, Any] = {"kind": "Pod", "metadata": {"name": "x", "labels": {1: "a", "b": 2}}}
    loop: list[Any] = []
    loop.append(loop)
    looped = {"kind": "Pod", "metadata": {"name": "x"}, "spec": loop}
    assert digest(odd) == digest(copy.deepcopy(odd))
    assert digest(looped) != digest(odd)
