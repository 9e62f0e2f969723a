"""A pod record rebuilt as an object parses back to the same record."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nicwarden.agent.policy.objects import NETWORK_STATUS, parse_pod
from nicwarden.agent.policy.pod_record import pod_object

names = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}\Z")
label_values = st.from_regex(r"\A[a-z0-9]{0,8}\Z")
ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.just("not-an-ip"))
entries = st.fixed_dictionaries(
    {
        "name": st.one_of(names, st.tuples(names, names).map("/".join)),
        "interface": st.sampled_from(["net1", "net2", "eth0"]),
        "ips": st.lists(ips, max_size=3),
        "mac": st.sampled_from(["", "02:00:00:00:00:01"]),
    },
    optional={"default": st.booleans()},
)
ports = st.fixed_dictionaries(
    {
        "containerPort": st.integers(0, 70000),
        "protocol": st.sampled_from(["TCP", "UDP", "SCTP", "ICMP"]),
    },
    optional={"name": st.one_of(names, st.just(""))},
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(names), "namespace": draw(names)}
    if draw(st.booleans()):
        meta["uid"] = draw(names)
    meta["labels"] = draw(st.dictionaries(names, label_values, max_size=4))
    if draw(st.booleans()):
        meta["annotations"] = {NETWORK_STATUS: json.dumps(draw(st.lists(entries, max_size=3)))}
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "ports": draw(st.lists(ports, max_size=3))}]
    }
    if draw(st.booleans()):
        spec["nodeName"] = draw(names)
    spec["hostNetwork"] = draw(st.booleans())
    out: dict[str, Any] = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec}
    if draw(st.booleans()):
        out["status"] = {"phase": draw(st.sampled_from(["Running", "Pending", "Succeeded"]))}
    return out


@given(pods())
def test_a_record_rebuilt_parses_back_to_itself(raw: dict[str, Any]) -> None:
    pod = parse_pod(raw)
    again = parse_pod(pod_object(pod))
    assert again.errors == ()
    assert again == pod.__class__(
        pod.namespace,
        pod.name,
        pod.uid,
        pod.labels,
        pod.node_name,
        pod.phase,
        pod.host_network,
        pod.ports,
        pod.networks,
        (),
    )
