"""Pods and MultiNetworkPolicies as the API serves them, for tests and
benchmarks that drive the policy engine and the kernel datapath: one pod
address on one secondary network, policies for that network."""

from __future__ import annotations

import json
from typing import Any

NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


def pod(
    name: str, labels: dict[str, str], ip: str, *, ns: str = "prod", network: str = "prod/net"
) -> dict[str, Any]:
    """A running pod whose Multus network-status gives it ``ip`` on ``network``."""
    status = [{"name": network, "interface": "net1", "ips": [ip]}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "uid": f"u-{name}",
            "annotations": {NETWORK_STATUS: json.dumps(status)},
        },
        "spec": {"containers": [{"name": "c"}]},
    }


def policy(
    name: str, spec: dict[str, Any], *, ns: str = "prod", policy_for: str = "net"
) -> dict[str, Any]:
    return {
        "kind": "MultiNetworkPolicy",
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for},
        },
        "spec": spec,
    }
