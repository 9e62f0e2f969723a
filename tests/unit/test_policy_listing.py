"""ListPolicies pages by key and filters by key range (issue 14 item 4).

The keyset property: objects added or removed between two pages shift
nothing, so every object present for the whole listing is listed exactly
once, and nothing is listed twice. Filters (kind, namespace, only problems)
select exactly what a scan of every object would, and a token is only
accepted back with the filters it was issued for.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_enforcer import (
    ALLOW_CLIENTS,
    FakeDatapath,
    FakeSource,
    cluster,
    primed,
    put_ready,
    started,
)
from test_policy_helpers import mnp, nad, namespace, pod

from nicwarden.agent import ctl
from nicwarden.agent.api import AgentService
from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.k8s.source import SourceProblem
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.policy import Action, Event, PolicyEngine
from nicwarden.agent.policy import sorted_keys as sk
from nicwarden.agent.policy.objects import KINDS
from nicwarden.agent.policy_listing import list_policies
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Store
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

NAMESPACES = ("alpha", "beta", "gamma")


def _object(kind: str, ns: str, i: int) -> dict[str, Any]:
    """Object i of a kind; policies alternate valid, dangling (a warning:
    no such NAD) and invalid (an error)."""
    if kind == "Namespace":
        return namespace(f"{ns}{i}" if i else ns)
    if kind == "Pod":
        return pod(ns, f"pod-{i}", {"app": f"a{i % 3}"})
    if kind == "NetworkAttachmentDefinition":
        return nad(ns, f"net-{i}")
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Ingress"]}
    if i % 3 == 2:
        spec["policyTypes"] = ["Sideways"]
    return mnp(spec, name=f"pol-{i}", ns=ns, policy_for="net-0" if i % 3 == 0 else "nowhere")


def _ident(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    key = meta["name"] if obj["kind"] == "Namespace" else f"{meta['namespace']}/{meta['name']}"
    return obj["kind"], key


class _Source:
    def __init__(self) -> None:
        self.list: list[SourceProblem] = []

    def start(self, sink: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def synced(self) -> bool:
        return True

    def problems(self) -> list[SourceProblem]:
        return self.list


@pytest.fixture
def enforcer(tmp_path: Path) -> Iterator[PolicyEnforcer]:
    store = Store.open(tmp_path / "state")
    enf = PolicyEnforcer(store, None, cast(Any, _Source()))
    enf.start()
    try:
        yield enf
    finally:
        enf.stop()
        store.close()


def _fill(enf: PolicyEnforcer, per_kind: int = 6) -> None:
    enf.on_event(Event(Action.ADD, nad("alpha", "net-0")))
    for ns in NAMESPACES:
        for kind in sorted(KINDS):
            for i in range(per_kind):
                enf.on_event(Event(Action.ADD, _object(kind, ns, i)))


def _all(enf: PolicyEnforcer, page_size: int, **filters: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    token = ""
    for _ in range(10_000):
        req = pb.ListPoliciesRequest(page_size=page_size, page_token=token, **filters)
        _, objs, token = list_policies(enf, req)
        seen += [(o.kind, o.key) for o in objs]
        if not token:
            return seen
    raise AssertionError("paging did not end")


# -- the sorted index --------------------------------------------------------

_ops = st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400)


@given(
    ops=_ops,
    low=st.none() | st.integers(-1, 301),
    high=st.none() | st.integers(-1, 302),
    inclusive=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_sorted_keys_matches_a_sorted_set(
    ops: list[tuple[bool, int]], low: int | None, high: int | None, inclusive: bool
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sk, "_LOAD", 4)  # small blocks: splits and merges happen
        keys: sk.SortedKeys[int] = sk.SortedKeys()
        model: set[int] = set()
        for add, k in ops:
            if add:
                keys.add(k)
                model.add(k)
            else:
                keys.discard(k)
                model.discard(k)
            assert len(keys) == len(model)
        assert list(keys) == sorted(model)
        assert all((k in keys) == (k in model) for k in range(-1, 302))
        want = [
            k
            for k in sorted(model)
            if (low is None or k > low or (inclusive and k == low)) and (high is None or k < high)
        ]
        assert list(keys.irange(low, high, low_inclusive=inclusive)) == want
        assert all(len(b) <= 8 for b in keys._blocks)


# -- filters -----------------------------------------------------------------


def test_engine_filters_select_what_a_scan_would(enforcer: PolicyEnforcer) -> None:
    _fill(enforcer)
    engine: PolicyEngine = enforcer.engine
    every = engine.status()
    problems = [s for s in every if not s.ok or s.warnings]
    assert problems and len(problems) < len(every)
    assert engine.status_counts() == (len(every), len(problems))
    for kind in [None, *sorted(KINDS)]:
        for ns in [None, "alpha", "alpha1", "beta", "nosuch"]:
            for only in (False, True):
                want = [
                    s
                    for s in (problems if only else every)
                    if (kind is None or s.kind == kind)
                    and (
                        ns is None
                        or (s.key == ns if s.kind == "Namespace" else s.key.startswith(ns + "/"))
                    )
                ]
                got = engine.status_page(None, 10_000, kind=kind, namespace=ns, problems_only=only)
                assert got == want, (kind, ns, only)
                # Paged 2 at a time, by key, the same rows.
                paged, after = [], None
                while page := engine.status_page(
                    after, 2, kind=kind, namespace=ns, problems_only=only
                ):
                    paged += page
                    after = (page[-1].kind, page[-1].key)
                assert paged == want


def test_problems_follow_the_object(enforcer: PolicyEnforcer) -> None:
    enforcer.on_event(Event(Action.ADD, namespace("alpha")))
    broken = _object("MultiNetworkPolicy", "alpha", 2)
    enforcer.on_event(Event(Action.ADD, broken))
    assert _all(enforcer, 10, problems_only=True) == [_ident(broken)]
    fixed = _object("MultiNetworkPolicy", "alpha", 0)
    fixed["metadata"]["name"] = broken["metadata"]["name"]
    enforcer.on_event(Event(Action.ADD, nad("alpha", "net-0")))
    enforcer.on_event(Event(Action.UPDATE, fixed))
    assert _all(enforcer, 10, problems_only=True) == []
    # The NAD going makes the policy dangle: a warning, without touching it.
    enforcer.on_event(Event(Action.DELETE, nad("alpha", "net-0")))
    assert _all(enforcer, 10, problems_only=True) == [_ident(broken)]
    enforcer.on_event(Event(Action.DELETE, fixed))
    assert _all(enforcer, 10, problems_only=True) == []


def test_source_problems_are_listed_unless_a_kind_or_namespace_is_asked(
    enforcer: PolicyEnforcer,
) -> None:
    _fill(enforcer, per_kind=2)
    source = cast(_Source, enforcer.source)
    source.list = [
        SourceProblem("", "MultiNetworkPolicy x/y", "cannot parse: " + "z" * 5000),
        SourceProblem("/m/a.yaml", "", "bad YAML"),
        SourceProblem("/m/a.yaml", "", "bad YAML"),  # the same twice is one row
    ]
    rows = _all(enforcer, 1, problems_only=True)
    assert rows[-2:] == [("Source", "/m/a.yaml"), ("Source", "MultiNetworkPolicy x/y")]
    assert len(rows) == len(set(rows)) == enforcer.object_counts()[1] + 2
    assert all(k != "Source" for k, _ in _all(enforcer, 1, kind="Pod"))
    assert all(k != "Source" for k, _ in _all(enforcer, 1, namespace="beta"))


# -- keyset paging under change -----------------------------------------------

_change = st.tuples(
    st.booleans(),  # add (else delete)
    st.sampled_from(sorted(KINDS)),
    st.sampled_from(NAMESPACES),
    st.integers(0, 11),
)


@given(
    page_size=st.integers(1, 7),
    changes=st.lists(st.lists(_change, max_size=6), max_size=40),
    filters=st.sampled_from(
        [{}, {"problems_only": True}, {"kind": "Pod"}, {"namespace": "beta"}, {"kind": "Namespace"}]
    ),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_each_object_present_throughout_is_listed_exactly_once(
    enforcer: PolicyEnforcer,
    page_size: int,
    changes: list[list[tuple[bool, str, str, int]]],
    filters: dict[str, Any],
) -> None:
    # Hypothesis reuses the fixture: start each example from the same cluster.
    for kind, key in [(s.kind, s.key) for s in enforcer.engine.status()]:
        obj: dict[str, Any] = {"kind": kind, "metadata": {"name": key.split("/")[-1]}}
        if "/" in key:
            obj["metadata"]["namespace"] = key.split("/")[0]
        enforcer.on_event(Event(Action.DELETE, obj))
    _fill(enforcer)

    def selected() -> set[tuple[str, str]]:
        want = {
            (s.kind, s.key): s
            for s in enforcer.engine.status()
            if filters.get("kind") in (None, s.kind)
            and (not filters.get("problems_only") or not s.ok or s.warnings)
            and (
                "namespace" not in filters
                or s.key.split("/")[0] == filters["namespace"]
                or (s.kind == "Namespace" and s.key == filters["namespace"])
            )
        }
        return set(want)

    present_throughout = selected()
    ever_present = set(present_throughout)
    seen: list[tuple[str, str]] = []
    token, pages = "", 0
    while True:
        assert pages < 1_000, "paging did not end"
        req = pb.ListPoliciesRequest(page_size=page_size, page_token=token, **filters)
        _, objs, token = list_policies(enforcer, req)
        seen += [(o.kind, o.key) for o in objs]
        if not token:
            break
        for add, kind, ns, i in changes[pages] if pages < len(changes) else []:
            obj = _object(kind, ns, i)
            enforcer.on_event(Event(Action.ADD if add else Action.DELETE, obj))
        now = selected()
        present_throughout &= now
        ever_present |= now
        pages += 1
    assert len(seen) == len(set(seen)), "an object was listed twice"
    assert present_throughout <= set(seen), "an object present throughout was missed"
    assert set(seen) <= ever_present
    assert seen == sorted(seen)


# -- tokens and filters that are refused --------------------------------------


def _token(body: object) -> str:
    raw = json.dumps(body).encode()
    return "k1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token, why",
    [
        ("garbage", "malformed"),
        ("17", "malformed"),
        ("k1.%%%%", "malformed"),
        ("k1." + "A" * 5000, "malformed"),
        (_token({"a": 1}), "malformed"),
        (_token(["objects", ["Pod", "a/b"], "x"]), "different filters"),
        (_token(["objects", ["Pod"], "x"]), "malformed"),
        (_token(["elsewhere", "k", None]), "malformed"),
    ],
)
def test_bad_tokens_are_invalid_argument(enforcer: PolicyEnforcer, token: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as err:
        list_policies(enforcer, pb.ListPoliciesRequest(page_token=token))
    assert "next_page_token" in err.value.message


def test_a_token_is_only_good_with_its_filters(enforcer: PolicyEnforcer) -> None:
    _fill(enforcer, per_kind=3)
    _, _, token = list_policies(enforcer, pb.ListPoliciesRequest(page_size=2, kind="Pod"))
    assert token
    list_policies(enforcer, pb.ListPoliciesRequest(page_size=2, kind="Pod", page_token=token))
    for other in ({"kind": "Namespace"}, {}, {"kind": "Pod", "problems_only": True}):
        with pytest.raises(InvalidArgument, match="different filters"):
            list_policies(enforcer, pb.ListPoliciesRequest(page_token=token, **other))
    # A token whose key has the wrong shape for its section, with the right
    # filters, is refused too.
    body = json.loads(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    body[1] = "not-a-pair"
    with pytest.raises(InvalidArgument, match="malformed"):
        list_policies(enforcer, pb.ListPoliciesRequest(kind="Pod", page_token=_token(body)))


@pytest.mark.parametrize(
    "filters, words",
    [
        ({"kind": "Deployment"}, "kind must be one of"),
        ({"kind": "pod"}, "kind must be one of"),
        ({"namespace": "Not_A_Namespace"}, "not a namespace name"),
        ({"namespace": "a/b"}, "not a namespace name"),
        ({"namespace": "x" * 64}, "not a namespace name"),
    ],
)
def test_bad_filters_are_invalid_argument(
    enforcer: PolicyEnforcer, filters: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidArgument, match=words):
        list_policies(enforcer, pb.ListPoliciesRequest(**filters))


# -- nicwardenctl ------------------------------------------------------------


@pytest.fixture
def served(enforcer: PolicyEnforcer, tmp_path: Path) -> Iterator[str]:
    runtime = cast(AgentRuntime, SimpleNamespace(metrics=Metrics(), enforcer=enforcer))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AgentServicer_to_server(AgentService(runtime), server)
    sock = str(tmp_path / "agent.sock")
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield sock
    finally:
        server.stop(None)


def _ctl_json(sock: str, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert ctl.main(["--socket", sock, "-o", "json", "policies", *args]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_nicwardenctl_filters(
    enforcer: PolicyEnforcer, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(enforcer, per_kind=4)
    every = enforcer.engine.status()
    total, bad = enforcer.object_counts()
    out = _ctl_json(served, capsys)
    assert len(out["objects"]) == len(every) == total
    assert (out["objects_total"], out["objects_with_problems"]) == (total, bad)
    problems = _ctl_json(served, capsys, "--problems")["objects"]
    assert [(o["kind"], o["key"]) for o in problems] == [
        (s.kind, s.key) for s in every if not s.ok or s.warnings
    ]
    mnps = _ctl_json(served, capsys, "--kind", "MultiNetworkPolicy", "-n", "beta")["objects"]
    assert [o["key"] for o in mnps] == [f"beta/pol-{i}" for i in range(4)]
    # The table asks for problems only: it shows nothing else.
    assert ctl.main(["--socket", served, "policies"]) == 0
    text = capsys.readouterr().out
    assert "beta/pol-2" in text and "beta/pod-1" not in text
    assert f"{total:,} objects followed, {bad:,} with errors or warnings" in text


def test_nicwardenctl_refuses_unknown_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ctl.build_parser().parse_args(["policies", "--kind", "Deployment"])
    assert "invalid choice" in capsys.readouterr().err
    assert set(ctl.OBJECT_KINDS) == set(KINDS)


# -- this node's interfaces -----------------------------------------------------


@pytest.fixture
def attached(tmp_path: Path) -> Iterator[PolicyEnforcer]:
    """An enforcer with three policed interfaces of prod/server."""
    store = Store.open(tmp_path / "state")
    source = FakeSource()
    enforcer = started(store, FakeDatapath(), source)
    source.deliver(Action.ADD, *cluster(), ALLOW_CLIENTS)
    primed(enforcer, source)
    for ifname in ("net1", "net2", "net3"):
        enforcer.on_attach(put_ready(store, ifname=ifname))
    try:
        yield enforcer
    finally:
        enforcer.stop()
        store.close()


def test_interfaces_come_first_and_page_by_key(attached: PolicyEnforcer) -> None:
    enforcer = attached
    want = [row["key"] for row in enforcer.interfaces()]
    assert len(want) == 3

    def listing(**filters: Any) -> tuple[list[str], list[tuple[str, str]]]:
        ifaces: list[str] = []
        objs: list[tuple[str, str]] = []
        token = ""
        for _ in range(100):
            req = pb.ListPoliciesRequest(page_size=1, page_token=token, **filters)
            i, o, token = list_policies(enforcer, req)
            assert len(i) + len(o) <= 1 and (len(i) + len(o) == 1 or not token)
            ifaces += [m.key for m in i]
            objs += [(m.kind, m.key) for m in o]
            if not token:
                return ifaces, objs
        raise AssertionError("paging did not end")

    ifaces, objs = listing()
    assert sorted(ifaces) == sorted(want) and ifaces == sorted(ifaces)
    assert objs == [(s.kind, s.key) for s in enforcer.engine.status()]
    assert listing(namespace="prod")[0] == ifaces
    assert listing(namespace="elsewhere") == ([], [])
    assert listing(kind="Pod")[0] == []
    # Interfaces are this node's few: "only problems" narrows objects only.
    assert listing(problems_only=True) == (ifaces, [])
