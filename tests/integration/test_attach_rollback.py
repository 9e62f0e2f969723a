"""ADD's rollback finds the VF by PCI address whatever name it ended up
with, and keeps the attachment row while the VF is not home.

Requests here bypass the CNI parser's name checks on purpose (the parser
now refuses ``net%d``): they stand for any way the kernel could hand the VF
a name other than the one asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from nicwarden.agent.host.netlink import Netlink
from tests.integration.test_attach_service import (  # the in-process rig
    Rig,
    assert_home,
    fail_add,
    leases,
    ns_links,
    rig,
)

__all__ = ["rig"]  # a fixture, used by name
pytestmark = [pytest.mark.root]


def test_templated_name_rolls_back_to_a_vf_at_home(rig: Rig, netns: Callable[[], str]) -> None:
    """The kernel expands ``net%d`` to ``net0``; every later step that names
    ``net%d`` fails, and the undo must still bring the VF home."""
    ns = netns()
    before = rig.view()
    req = replace(rig.request("ADD", "c-tpl", ns), ifname="net%d")
    err = fail_add(rig, rig.svc, req)

    assert "net%d" in str(err)
    assert ns_links(ns) == {}
    assert_home(rig, before, "c-tpl")


def test_row_is_kept_while_the_vf_cannot_come_home(rig: Rig, netns: Callable[[], str]) -> None:
    """An undo that cannot return the VF must not forget where it went."""
    ns = netns()

    class StuckAway(Netlink):
        def set_link(self, name: str, **kwargs: object) -> None:
            if self.netns is not None:  # the pod side: make ADD fail after the move
                raise RuntimeError("injected: pod-side link config failed")
            super().set_link(name, **kwargs)  # type: ignore[arg-type]

        def move_to_netns(self, name: str, target: str | None, new_name: str | None = None) -> None:
            if target is None:
                raise RuntimeError("injected: the move home failed")
            super().move_to_netns(name, target, new_name=new_name)

    fail_add(rig, rig.service(netlink=StuckAway), rig.request("ADD", "c-stuck", ns))
    assert set(ns_links(ns)) == {"net1"}  # the VF is still in the pod...
    (att,) = rig.store.list_attachments()  # ...and the store still says so
    assert (att.container_id, att.state) == ("c-stuck", "adding")
    assert "c-stuck" not in leases(rig.data_dir).values()

    # A reconcile with a working netlink finishes the rollback.
    rig.svc.reconcile()
    assert rig.store.list_attachments() == []
    assert ns_links(ns) == {}
