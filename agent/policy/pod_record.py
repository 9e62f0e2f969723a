"""A pod record back as the object ``parse_pod`` reads.

The enforcer merges its own attachments into a pod's ``network-status``
before the engine sees it, and must merge again when an attachment comes or
goes. Keeping every pod's object for that would cost a cluster's worth of
dictionaries on every node; the engine's record holds everything
``parse_pod`` reads, so a pod not on this node is rebuilt from it instead.
"""

from __future__ import annotations

import json
from typing import Any

from .objects import NETWORK_STATUS, Pod


def pod_object(pod: Pod) -> dict[str, Any]:
    """An object that ``parse_pod`` turns back into ``pod`` (errors aside:
    the record holds only what was valid)."""
    meta: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace}
    if pod.uid:
        meta["uid"] = pod.uid
    if pod.labels:
        meta["labels"] = dict(pod.labels)
    if pod.networks:
        entries = [
            {
                "name": e.network,
                "interface": e.interface,
                "ips": [str(ip) for ip in e.ips],
                "mac": e.mac,
            }
            for e in pod.networks
        ]
        meta["annotations"] = {NETWORK_STATUS: json.dumps(entries)}
    spec: dict[str, Any] = {}
    if pod.node_name:
        spec["nodeName"] = pod.node_name
    if pod.host_network:
        spec["hostNetwork"] = True
    if pod.ports:
        spec["containers"] = [
            {
                "name": "ports",
                "ports": [
                    {"name": p.name, "containerPort": p.port, "protocol": p.protocol.name}
                    if p.name
                    else {"containerPort": p.port, "protocol": p.protocol.name}
                    for p in pod.ports
                ],
            }
        ]
    out: dict[str, Any] = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec}
    if pod.phase:
        out["status"] = {"phase": pod.phase}
    return out
