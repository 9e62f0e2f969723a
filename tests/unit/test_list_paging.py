"""Every List RPC pages: 120,000 policy rows through a real gRPC server on a
unix socket would be ~8 MiB in one answer, past gRPC's 4 MiB limit
(RESOURCE_EXHAUSTED); paged, nicwardenctl still lists every row, and the API
itself hands out pages that together hold each row exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from types import SimpleNamespace
from typing import cast

import grpc
import pytest
from test_policy_enforcer import FakeSource

from nicwarden.agent import ctl, paging
from nicwarden.agent.api import AgentService
from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.policy import Action, Event
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.agent.store import Store
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

ROWS = 120_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PolicyEnforcer]]:
    tmp = tmp_path_factory.mktemp("paging")
    store = Store.open(tmp / "state")
    source = FakeSource()
    enforcer = PolicyEnforcer(store, None, source)
    enforcer.start()
    assert source.sink is not None
    for i in range(ROWS):
        name = f"namespace-with-a-longish-name-{i:06d}"
        source.sink(Event(Action.ADD, {"kind": "Namespace", "metadata": {"name": name}}))
    runtime = cast(AgentRuntime, SimpleNamespace(metrics=Metrics(), enforcer=enforcer))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AgentServicer_to_server(AgentService(runtime), server)
    sock = str(tmp / "agent.sock")
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield sock, enforcer
    finally:
        server.stop(None)
        enforcer.stop()
        store.close()


def test_all_rows_would_not_fit_one_message(served: tuple[str, PolicyEnforcer]) -> None:
    _, enforcer = served
    whole = pb.ListPoliciesResponse(
        objects=[pb.PolicyObjectStatus(**o) for o in enforcer.objects()]
    )
    assert whole.ByteSize() > 4 * 1024 * 1024  # what the unpaged answer would have been


def test_the_api_pages_every_row_exactly_once(served: tuple[str, PolicyEnforcer]) -> None:
    sock, _ = served
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = pb_grpc.AgentStub(channel)
        keys: list[str] = []
        token, pages = "", 0
        while True:
            # The largest page size: pages end at the byte bound instead.
            request = pb.ListPoliciesRequest(page_size=paging.MAX_PAGE_SIZE, page_token=token)
            resp = stub.ListPolicies(request, timeout=60)
            assert resp.ByteSize() <= paging.PAGE_BYTES + 64 * 1024
            keys.extend(o.key for o in resp.objects)
            pages += 1
            token = resp.next_page_token
            if not token:
                break
        assert pages > 1 and len(keys) == ROWS and len(set(keys)) == ROWS
        # A small explicit page size is honoured; a huge one is lowered.
        small = stub.ListPolicies(pb.ListPoliciesRequest(page_size=7), timeout=60)
        assert len(small.objects) == 7 and small.next_page_token
        after = stub.ListPolicies(
            pb.ListPoliciesRequest(page_size=3, page_token=small.next_page_token), timeout=60
        )
        assert [o.key for o in after.objects] == keys[7:10]
        big = stub.ListPolicies(pb.ListPoliciesRequest(page_size=10**9), timeout=60)
        assert 0 < len(big.objects) <= paging.MAX_PAGE_SIZE
        with pytest.raises(grpc.RpcError) as err:
            stub.ListPolicies(pb.ListPoliciesRequest(page_token="garbage"), timeout=60)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_nicwardenctl_follows_the_pages(
    served: tuple[str, PolicyEnforcer], capsys: pytest.CaptureFixture[str]
) -> None:
    sock, _ = served
    assert ctl.main(["--socket", sock, "-o", "json", "policies"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["objects"]) == ROWS and out["next_page_token"] == ""


def test_page_bounds_and_message_caps() -> None:
    assert paging.page_bounds(0, "") == (0, paging.DEFAULT_PAGE_SIZE)
    assert paging.page_bounds(10**9, "5") == (5, paging.MAX_PAGE_SIZE)
    with pytest.raises(InvalidArgument):
        paging.page_bounds(0, "-1")
    items = [f"{i:04d}" + "x" * 1000 for i in range(5000)]
    first, token = paging.page(items, 0, "", lambda s: pb.ComponentHealth(name=s))
    assert 0 < len(first) < len(items) and token == str(len(first))
    last, end = paging.page(items, 0, str(len(items) - 1), lambda s: pb.ComponentHealth(name=s))
    assert [m.name for m in last] == [items[-1]] and end == ""
    msgs = [f"m{i}" for i in range(100)]
    assert paging.capped(msgs)[-1] == "and 80 more (only the first 20 shown)"
    assert len(paging.capped(msgs)) == paging.MAX_MESSAGES + 1


def test_every_list_request_has_paging_fields() -> None:
    for request, response in [
        (pb.ListDevicesRequest, pb.ListDevicesResponse),
        (pb.ListPoolsRequest, pb.ListPoolsResponse),
        (pb.ListAllocationsRequest, pb.ListAllocationsResponse),
        (pb.ListAttachmentsRequest, pb.ListAttachmentsResponse),
        (pb.ListPoliciesRequest, pb.ListPoliciesResponse),
    ]:
        assert {"page_size", "page_token"} <= set(request.DESCRIPTOR.fields_by_name)
        assert "next_page_token" in response.DESCRIPTOR.fields_by_name
