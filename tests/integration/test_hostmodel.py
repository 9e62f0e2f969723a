"""The strict host model in a real netns: a pod with interfaces on two
networks delivers each interface's addresses only to packets that arrived on
that interface (or are its own), answers ARP only for the receiving
interface's addresses, and re-applying or moving an address is clean."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from nicwarden.agent.errors import NotFound
from nicwarden.agent.host import hostmodel
from tests.support.oracle import run
from tests.support.traffic import ping_ok

pytestmark = pytest.mark.root

A = ipaddress.ip_address


def pod_with_two_networks(netns: Callable[[], str]) -> tuple[str, str]:
    """pod: a1 10.9.1.1/24 (net1, no peer), b1 10.9.2.1/24 (net2) wired to
    peer's b2 10.9.2.2/24, which routes net1's subnet out of b2."""
    pod, peer = netns(), netns()
    run("ip", "-n", pod, "link", "add", "a1", "type", "veth", "peer", "name", "a2")
    run("ip", "-n", pod, "link", "add", "b1", "type", "veth", "peer", "name", "b2", "netns", peer)
    run("ip", "-n", pod, "addr", "add", "10.9.1.1/24", "dev", "a1")
    run("ip", "-n", pod, "addr", "add", "10.9.2.1/24", "dev", "b1")
    for link in ("a1", "a2", "b1"):
        run("ip", "-n", pod, "link", "set", link, "up")
    run("ip", "-n", peer, "addr", "add", "10.9.2.2/24", "dev", "b2")
    run("ip", "-n", peer, "link", "set", "b2", "up")
    run("ip", "-n", peer, "route", "add", "10.9.1.0/24", "dev", "b2")
    return pod, peer


def test_an_address_is_delivered_only_through_its_own_interface(
    netns: Callable[[], str],
) -> None:
    pod, peer = pod_with_two_networks(netns)
    assert ping_ok(peer, "10.9.1.1")  # the weak host model: net1's address through net2
    hostmodel.apply(pod, "a1", [A("10.9.1.1")])
    hostmodel.apply(pod, "b1", [A("10.9.2.1")])
    assert not ping_ok(peer, "10.9.1.1")
    assert ping_ok(peer, "10.9.2.1")  # net2's own address still answers
    assert ping_ok(pod, "10.9.1.1")  # and the pod reaches its own addresses
    assert hostmodel.arp_settings(pod, "b1") == {"arp_ignore": "1", "arp_announce": "2"}
    rules = run("ip", "-n", pod, "rule", "show").stdout.splitlines()
    unconditional = [r.split(":")[0] for r in rules if r.endswith("from all lookup local")]
    assert unconditional == [str(hostmodel.LOCAL_PREF)], rules


def test_reapplying_is_idempotent_and_a_moved_address_follows(netns: Callable[[], str]) -> None:
    pod, _ = pod_with_two_networks(netns)
    v6 = A("fd00:9::1")
    hostmodel.deliver_only_via(pod, "a1", [A("10.9.1.1"), v6])
    first = hostmodel.delivery_rules(pod)
    hostmodel.deliver_only_via(pod, "a1", [A("10.9.1.1"), v6])
    assert hostmodel.delivery_rules(pod) == first
    assert (hostmodel.ALLOW_PREF, "a1", "fd00:9::1") in first
    hostmodel.deliver_only_via(pod, "b1", [A("10.9.1.1")])
    rules = hostmodel.delivery_rules(pod)
    assert (hostmodel.ALLOW_PREF, "b1", "10.9.1.1") in rules
    assert (hostmodel.ALLOW_PREF, "a1", "10.9.1.1") not in rules
    assert [r for r in rules if r[2] == "10.9.1.1" and r[0] == hostmodel.DROP_PREF]


def test_rules_written_by_another_tool_are_replaced_exactly(netns: Callable[[], str]) -> None:
    """Rules are deleted by sending back what the kernel listed, so a rule
    of any shape (here iproute2's, an earlier owner of the address) goes,
    and nothing else: the unrelated rule stays."""
    pod, peer = pod_with_two_networks(netns)
    ip_rule = ("ip", "-n", pod, "rule", "add", "to", "10.9.1.1")
    run(*ip_rule, "iif", "b1", "lookup", "local", "pref", str(hostmodel.ALLOW_PREF))
    run(*ip_rule[:-1], "10.9.3.0/24", "lookup", "main", "pref", "50")
    assert ping_ok(peer, "10.9.1.1")
    hostmodel.deliver_only_via(pod, "a1", [A("10.9.1.1")])
    rules = hostmodel.delivery_rules(pod)
    assert [r for r in rules if r[2] == "10.9.1.1"] == [
        (hostmodel.ALLOW_PREF, "a1", "10.9.1.1"),
        (hostmodel.ALLOW_PREF, "lo", "10.9.1.1"),
        (hostmodel.DROP_PREF, "", "10.9.1.1"),
    ]
    assert "to 10.9.3.0/24 lookup main" in run("ip", "-n", pod, "rule", "show").stdout
    assert not ping_ok(peer, "10.9.1.1")  # b1 no longer delivers a1's address


def test_a_missing_interface_is_named_and_changes_nothing(netns: Callable[[], str]) -> None:
    pod, _ = pod_with_two_networks(netns)
    before = run("ip", "-n", pod, "rule", "show").stdout
    with pytest.raises(NotFound, match="nwt-gone"):
        hostmodel.apply(pod, "nwt-gone", [A("10.9.1.1")])
    assert run("ip", "-n", pod, "rule", "show").stdout == before
