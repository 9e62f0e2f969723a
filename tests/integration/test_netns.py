"""The one netns-entry routine (``agent/host/netns.py``) against the real
kernel: which netns a thread is in is read from ``/proc/thread-self/ns/net``
(its inode), independently of the routine."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from nicwarden.agent.errors import InvalidArgument, NotFound
from nicwarden.agent.host import netns
from nicwarden.agent.host.netlink import open_iproute
from tests.support.oracle import run

pytestmark = pytest.mark.root


def here() -> int:
    """The inode of the calling thread's netns."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def test_enter_by_name_and_by_path(netns_factory: Callable[[], str]) -> None:
    name = netns_factory()
    home = here()
    assert inode(name) != home
    assert netns.run_in(name, here) == inode(name)
    assert here() == home
    assert netns.run_in(f"/run/netns/{name}", here) == inode(name)
    assert netns.run_in(Path("/run/netns") / name, here) == inode(name)
    assert here() == home


def test_a_name_resolves_under_the_given_directory(
    netns_factory: Callable[[], str], tmp_path: Path
) -> None:
    name = netns_factory()
    with pytest.raises(NotFound, match=str(tmp_path)):
        netns.run_in(name, here, netns_dir=tmp_path)
    assert netns.run_in(name, here, netns_dir=Path("/run/netns")) == inode(name)


def test_restores_the_thread_when_the_body_raises(netns_factory: Callable[[], str]) -> None:
    name = netns_factory()
    home = here()

    def boom() -> None:
        assert here() == inode(name)
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns.run_in(name, boom)
    assert here() == home


def test_nested_entries_return_step_by_step(netns_factory: Callable[[], str]) -> None:
    a, b = netns_factory(), netns_factory()
    home = here()

    def in_a() -> tuple[int, int, int]:
        before = here()
        inner = netns.run_in(b, here)
        return before, inner, here()

    assert netns.run_in(a, in_a) == (inode(a), inode(b), inode(a))
    assert here() == home


def test_missing_netns_is_not_found_and_changes_nothing() -> None:
    home = here()
    with pytest.raises(NotFound, match="nwt-absent-"):
        netns.run_in("nwt-absent-0000", here)
    with pytest.raises(NotFound):
        netns.run_in("/proc/999999999/ns/net", here)
    with pytest.raises(NotFound):
        netns.cookie("nwt-absent-0000")
    assert here() == home


def test_a_file_that_is_not_a_netns_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    home = here()
    with pytest.raises(InvalidArgument, match="not a network namespace"):
        netns.run_in(plain, here)
    assert here() == home


def test_concurrent_threads_do_not_leak_into_each_other(
    netns_factory: Callable[[], str],
) -> None:
    names = [netns_factory() for _ in range(3)]
    home = here()
    wrong: list[str] = []
    go = threading.Barrier(len(names) * 2 + 1)

    def worker(name: str) -> None:
        mine = here()
        go.wait()
        for i in range(300):
            got = netns.run_in(name, here)
            if got != inode(name):
                wrong.append(f"{name} #{i}: inside {got}")
            if here() != mine:
                wrong.append(f"{name} #{i}: not home after")

    def bystander() -> None:
        # Never enters: must never observe another thread's netns.
        go.wait()
        for i in range(3000):
            if here() != home:
                wrong.append(f"bystander #{i} moved")

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    threads += [threading.Thread(target=bystander) for _ in names]
    for t in threads:
        t.start()
    go.wait()
    for _ in range(3000):
        if here() != home:
            wrong.append("main thread moved")
    for t in threads:
        t.join()
    assert wrong == []
    assert here() == home


def test_cookie_is_per_netns_and_stable(netns_factory: Callable[[], str]) -> None:
    a, b = netns_factory(), netns_factory()
    ca = netns.cookie(a)
    assert ca == netns.cookie(f"/run/netns/{a}")
    assert ca != netns.cookie(b)
    assert ca != netns.cookie()
    assert netns.cookie() == netns.cookie("/proc/self/ns/net")


def test_a_netlink_socket_opened_inside_stays_there(netns_factory: Callable[[], str]) -> None:
    name = netns_factory()
    run("ip", "-n", name, "link", "add", "nwt-a", "type", "veth", "peer", "name", "nwt-b")
    home = here()
    ipr = open_iproute(name)
    try:
        assert here() == home  # the thread is back; the socket is not
        names = {str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()}
    finally:
        ipr.close()
    oracle = run("ip", "-n", name, "-o", "link", "show").stdout
    expected = {line.split(":")[1].strip().split("@")[0] for line in oracle.splitlines()}
    assert names == expected == {"lo", "nwt-a", "nwt-b"}


@pytest.fixture
def netns_factory(netns: Callable[[], str]) -> Callable[[], str]:
    """The shared ``netns`` fixture under a name that does not shadow the module."""
    return netns
