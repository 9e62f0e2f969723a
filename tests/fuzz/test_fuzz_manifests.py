"""Hostile manifests in the watched directory: malformed, huge, deep,
non-UTF-8, wrong types. The agent must keep answering, keep its problem
reports bounded, forget a file's objects when it goes, and leave the node
as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.support.fuzz_node import FuzzNode, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.fuzz]

# Far above any sane report, far below what took the agent past gRPC's
# 4 MiB message limit (234k rows).
MAX_ROWS = 5_000

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": "fuzz",
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": "fuzz/fuzznet"},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], **spec},
    }


PEER = st.fixed_dictionaries(
    {},
    optional={
        "ipBlock": st.fixed_dictionaries(
            {
                "cidr": st.sampled_from(
                    ["10.0.0.0/8", "10.1.2.3/33", "x", "::/0", "10.0.0.0/8\n", "", 5]
                )
            },
            optional={
                "except": st.lists(
                    st.sampled_from(["10.1.0.0/16", "11.0.0.0/8", "bad", 7]), max_size=3
                )
            },
        ),
        "podSelector": st.one_of(
            JSON,
            st.fixed_dictionaries(
                {
                    "matchExpressions": st.lists(
                        st.fixed_dictionaries(
                            {
                                "key": st.sampled_from(["app", "", "a/b/c", "x" * 70]),
                                "operator": st.sampled_from(
                                    ["In", "NotIn", "Exists", "DoesNotExist", "Gt", ""]
                                ),
                                "values": st.one_of(
                                    st.lists(st.text(max_size=5), max_size=3), st.text(max_size=3)
                                ),
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
        ),
        "namespaceSelector": JSON,
    },
)
PORT = st.fixed_dictionaries(
    {},
    optional={
        "protocol": st.sampled_from(["TCP", "UDP", "SCTP", "ICMP", "tcp", "", 6]),
        "port": st.one_of(st.integers(-1, 70000), st.sampled_from(["http", "", "80", "x" * 20])),
        "endPort": st.integers(-1, 70000),
    },
)
RULE = st.fixed_dictionaries(
    {}, optional={"from": st.lists(PEER, max_size=3), "ports": st.lists(PORT, max_size=3)}
)
MNP = st.builds(
    lambda name, rules, types, extra: policy(name, ingress=rules, policyTypes=types, **extra),
    st.sampled_from(["p1", "p2", "", "UPPER", "x" * 300]),
    st.lists(RULE, max_size=3),
    st.one_of(st.lists(st.sampled_from(["Ingress", "Egress", "Sideways", ""]), max_size=3), JSON),
    st.dictionaries(st.sampled_from(["egress", "podSelector", "bogus"]), JSON, max_size=2),
)
DOC = st.one_of(
    MNP,
    JSON,
    st.builds(lambda k: {"apiVersion": "v1", "kind": k, "metadata": {}}, st.text(max_size=12)),
)


@st.composite
def manifest_file(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["yaml", "json", "bytes", "deep", "many", "huge"]))
    if kind == "yaml":
        return yaml.safe_dump_all(draw(st.lists(DOC, min_size=1, max_size=5))).encode()
    if kind == "json":
        return json.dumps(draw(DOC)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    if kind == "deep":
        depth = draw(st.sampled_from([1_000, 20_000]))
        return (
            (b"[" * depth + b"]" * depth)
            if draw(st.booleans())
            else (b"a:\n" + b"".join(b" " * i + b"b:\n" for i in range(1, depth // 10)))
        )
    if kind == "many":
        return b"---\n".join(
            b"kind: Bogus\napiVersion: x/v1\n"
            for _ in range(draw(st.sampled_from([2_000, 30_000])))
        )
    return (
        b"kind: ConfigMap\ndata:\n  x: '"
        + b"A" * draw(st.sampled_from([3_000_000, 9_000_000]))
        + b"'\n"
    )


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Sentinel:
    """A valid policy written after each input: once the agent reports it,
    the directory pass that read the input is over."""

    def __init__(self, node: FuzzNode) -> None:
        self.node, self.n = node, 0

    def settle(self) -> None:
        self.n += 1
        name = f"sentinel-{self.n}"
        write_atomically(
            self.node.manifests / "zz-sentinel.yaml", yaml.safe_dump(policy(name)).encode()
        )
        assert wait_until(
            lambda: any(name in o.get("key", "") for o in self.node.policies().get("objects", [])),
            timeout=30,
        ), "the agent did not take in the sentinel after a hostile manifest"


@pytest.mark.timeout(1200)
def test_hostile_manifests(node: FuzzNode) -> None:
    sentinel = Sentinel(node)

    @settings(max_examples=examples(25))
    @given(content=manifest_file(), name=st.sampled_from(["a.yaml", "b.json", "c.yml", "d.txt"]))
    def one(content: bytes, name: str) -> None:
        path = node.manifests / name
        write_atomically(path, content)
        try:
            sentinel.settle()
            status = node.policies()
            rows = status.get("objects", [])
            assert len(rows) <= MAX_ROWS, f"{len(rows)} status rows for one file"
            assert sum(len(o.get("errors", [])) for o in rows) <= MAX_ROWS
        finally:
            path.unlink()
        sentinel.settle()
        left = [
            o
            for o in node.policies().get("objects", [])
            if not o.get("key", "").endswith(f"sentinel-{sentinel.n}")
        ]
        assert not left, f"objects of a removed file are still reported: {left[:3]}"
        node.check()

    one()
