"""tc attach and detach on the netlink path (``agent/host/tc.py``), checked
with ``tc`` itself run inside the netns (``ip netns exec``)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator

import pytest

from nicwarden.agent.errors import AlreadyExists, HostError, NotFound
from nicwarden.agent.host.bpfsys import load_sched_cls
from nicwarden.agent.host.tc import TC_H_EGRESS, TC_H_INGRESS, Filter, Tc
from tests.support.oracle import run

pytestmark = pytest.mark.root

PRIO = 0x4E57
# r0 = TC_ACT_OK (0); exit
PASS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def tc_show(ns: str, *args: str) -> str:
    return run("ip", "netns", "exec", ns, "tc", *args).stdout


def has_clsact(ns: str, dev: str) -> bool:
    return "clsact" in tc_show(ns, "qdisc", "show", "dev", dev)


@pytest.fixture
def pod(netns: Callable[[], str]) -> str:
    ns = netns()
    run("ip", "-n", ns, "link", "add", "nwt-a", "type", "veth", "peer", "name", "nwt-b")
    return ns


@pytest.fixture
def prog() -> Iterator[int]:
    fd = load_sched_cls(PASS, "nwt_pass")
    yield fd
    os.close(fd)


def ifindex(ns: str, dev: str) -> int:
    return int(json.loads(run("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]["ifindex"])


@pytest.mark.parametrize("by", ["name", "path"])
def test_attach_and_detach_a_bpf_filter(pod: str, prog: int, by: str) -> None:
    target = pod if by == "name" else f"/run/netns/{pod}"
    with Tc(target) as tc:
        idx = tc.ifindex("nwt-a")
        assert idx == ifindex(pod, "nwt-a")
        assert idx is not None
        assert tc.filters(idx, TC_H_INGRESS) == []  # no clsact yet: no filters, no error

        assert tc.add_clsact(idx) is True
        assert has_clsact(pod, "nwt-a")
        assert tc.add_clsact(idx) is False  # already there

        tc.add_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1, prog_fd=prog, name="nwt_pass")
        shown = tc_show(pod, "filter", "show", "dev", "nwt-a", "ingress")
        assert "bpf" in shown and "nwt_pass" in shown and "direct-action" in shown
        assert f"pref {PRIO}" in shown
        assert tc_show(pod, "filter", "show", "dev", "nwt-a", "egress").strip() == ""
        assert tc.filters(idx, TC_H_INGRESS) == [
            Filter(kind="bpf", prio=PRIO, handle=1, name="nwt_pass")
        ]
        assert tc.filters(idx, TC_H_EGRESS) == []
        # Nothing happened on the host's side of the world.
        assert "nwt_pass" not in run("tc", "filter", "show", "dev", "lo", "ingress").stdout

        assert tc.del_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1) is True
        assert tc_show(pod, "filter", "show", "dev", "nwt-a", "ingress").strip() == ""
        assert tc.del_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1) is False

        assert tc.del_clsact(idx) is True
        assert not has_clsact(pod, "nwt-a")
        assert tc.del_clsact(idx) is False
        assert tc.filters(idx, TC_H_EGRESS) == []


def test_filters_lists_foreign_filters_too(pod: str, prog: int) -> None:
    run("ip", "netns", "exec", pod, "tc", "qdisc", "add", "dev", "nwt-a", "clsact")
    run(
        "ip", "netns", "exec", pod, "tc", "filter", "add", "dev", "nwt-a", "egress",
        "pref", "7", "u32", "match", "u32", "0", "0",
    )  # fmt: skip
    with Tc(pod) as tc:
        idx = tc.ifindex("nwt-a")
        assert idx is not None
        tc.add_bpf_filter(idx, TC_H_EGRESS, prio=PRIO, handle=1, prog_fd=prog, name="nwt_pass")
        # u32 lists its hash table and its key: two entries, one kind.
        kinds = {(f.kind, f.prio) for f in tc.filters(idx, TC_H_EGRESS)}
        assert kinds == {("bpf", PRIO), ("u32", 7)}
        assert tc.del_bpf_filter(idx, TC_H_EGRESS, prio=PRIO, handle=1)
    shown = tc_show(pod, "filter", "show", "dev", "nwt-a", "egress")
    assert "u32" in shown and "nwt_pass" not in shown


def test_missing_netns_and_link(pod: str) -> None:
    with pytest.raises(NotFound):
        Tc("nwt-absent-0000")
    with Tc(pod) as tc:
        assert tc.ifindex("nwt-nope") is None


def test_the_kernels_reason_reaches_the_error(pod: str, prog: int) -> None:
    with Tc(pod) as tc:
        idx = tc.ifindex("nwt-a")
        assert idx is not None
        # No clsact yet: the kernel refuses, and says why in an extended ack.
        with pytest.raises(HostError) as e:
            tc.add_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1, prog_fd=prog, name="nwt_x")
        assert "attach bpf filter nwt_x" in e.value.message
        assert "qdisc" in e.value.details.lower()
        tc.add_clsact(idx)
        tc.add_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1, prog_fd=prog, name="nwt_x")
        with pytest.raises(AlreadyExists):  # the same prio and handle twice
            tc.add_bpf_filter(idx, TC_H_INGRESS, prio=PRIO, handle=1, prog_fd=prog, name="nwt_x")
        assert [f.name for f in tc.filters(idx, TC_H_INGRESS)] == ["nwt_x"]
