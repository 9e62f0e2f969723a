"""The simulated node on the real kernel: veths, sysfs behaviour, live events.

Oracles are independent of the agent: `ip` for links and netns, the
filesystem for sysfs links."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from nicwarden.agent.errors import Busy, InvalidArgument, NotFound
from nicwarden.agent.host.discovery import scan
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.model import Inventory
from nicwarden.agent.sim import SimulatedNode, parse_spec
from tests.support.oracle import host_links, run, unique

pytestmark = pytest.mark.root


@pytest.fixture
def sim(make_sim: Callable[[str], SimulatedNode]) -> SimulatedNode:
    return make_sim("2x8")


@pytest.fixture
def live(sim: SimulatedNode) -> Iterator[LiveInventory]:
    inv = LiveInventory(sim.paths)
    sim.subscribe(inv.notify)
    inv.start()
    yield inv
    inv.stop()


def wait_for(inv: LiveInventory, pred: Callable[[Inventory], bool], timeout: float = 1.0) -> float:
    """Seconds until ``pred`` holds for a published snapshot; fails after timeout."""
    hit = threading.Event()
    start = time.monotonic()
    unsub = inv.subscribe(lambda snap: hit.set() if pred(snap) else None)
    try:
        if pred(inv.snapshot()):
            return 0.0
        assert hit.wait(timeout), "inventory did not see the change in time"
        return time.monotonic() - start
    finally:
        unsub()


def test_two_pfs_eight_vfs_inventory_matches_kernel(
    sim: SimulatedNode, live: LiveInventory
) -> None:
    inv = live.snapshot()
    assert [pf.name for pf in inv.pfs] == [sim.pf_name(0), sim.pf_name(1)]
    assert [len(pf.vfs) for pf in inv.pfs] == [8, 8]
    links = host_links(sim.prefix)
    for i, pf in enumerate(inv.pfs):
        assert pf.fn.numa_node == i % 2 and pf.num_vfs == 8
        for j, vf in enumerate(pf.vfs):
            assert vf.address == sim.vf_address(i, j) and vf.fn.driver == "iavf"
            assert vf.fn.netdev is not None and vf.fn.netdev.name == sim.vf_name(i, j)
            assert vf.fn.netdev.name in links
            shown = run("ip", "-br", "link", "show", vf.fn.netdev.name).stdout.split()
            assert shown[2] == vf.fn.netdev.mac
    groups = [vf.fn.iommu_group for vf in inv.vfs()]
    assert len(set(groups)) == 16


def test_deleted_vf_netdev_is_seen_within_a_second(sim: SimulatedNode, live: LiveInventory) -> None:
    name = sim.vf_name(0, 3)
    run("ip", "link", "del", name)
    took = wait_for(live, lambda s: s.pfs[0].vfs[3].fn.netdev is None)
    assert took < 1.0


def test_other_links_do_not_cost_a_scan_but_ours_do(sim: SimulatedNode) -> None:
    """Pods' veths come and go on a busy node: no rescan for them."""
    live = LiveInventory(sim.paths, resync_interval=3600)  # no periodic scan in the window
    sim.subscribe(live.notify)
    live.start()
    try:
        _other_links_and_ours(sim, live)
    finally:
        live.stop()


def _other_links_and_ours(sim: SimulatedNode, live: LiveInventory) -> None:
    time.sleep(0.3)  # let the start-up events settle
    scans, ignored = live.scans, live.ignored_events
    other = f"nwo{uuid.uuid4().hex[:6]}"
    run("ip", "link", "add", other, "type", "veth", "peer", "name", f"{other}p")
    try:
        run("ip", "link", "set", other, "up")
        time.sleep(0.5)
        assert live.ignored_events > ignored
        assert live.scans == scans
    finally:
        run("ip", "link", "del", other, check=False)
    # A VF's netdev renamed behind our back is scanned for.
    name, renamed = sim.vf_name(0, 5), f"{sim.prefix}zz"
    run("ip", "link", "set", name, "down")
    run("ip", "link", "set", name, "name", renamed)
    try:
        wait_for(
            live,
            lambda s: (
                s.pfs[0].vfs[5].fn.netdev is not None and s.pfs[0].vfs[5].fn.netdev.name == renamed
            ),
        )
    finally:
        run("ip", "link", "set", renamed, "name", name)
        run("ip", "link", "set", name, "up")


def _converged(live: LiveInventory, sim: SimulatedNode, timeout: float = 3.0) -> bool:
    """Whether the live snapshot comes to equal a fresh full scan."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.snapshot().pfs == scan(sim.paths).pfs:
            return True
        time.sleep(0.02)
    return False


def test_known_vf_events_reread_only_that_vf_and_match_a_full_scan(sim: SimulatedNode) -> None:
    """A pod's ADD and DEL move a VF out and back: each event re-reads only
    the VF it names, and the snapshot stays what a full scan would say."""
    live = LiveInventory(sim.paths, resync_interval=3600)
    sim.subscribe(live.notify)
    live.start()
    netns = unique("nwinv")
    run("ip", "netns", "add", netns)
    rng = random.Random(20261129)
    names = {(p, v): sim.vf_name(p, v) for p in range(2) for v in range(8)}
    away: set[tuple[int, int]] = set()
    try:
        time.sleep(0.3)  # let the start-up events settle
        scans, refreshes = live.scans, live.refreshes
        for step in range(60):
            vf = rng.choice(sorted(names))
            name = names[vf]
            if vf in away:
                run("ip", "-n", netns, "link", "set", name, "netns", "1")
                away.discard(vf)
                continue
            op = rng.choice(["down", "up", "mtu", "mac", "rename", "away"])
            if op in ("down", "up"):
                run("ip", "link", "set", name, op)
            elif op == "mtu":
                run("ip", "link", "set", name, "mtu", str(rng.choice([1280, 1500, 9000])))
            elif op == "mac":
                mac = f"02:00:00:{vf[0]:02x}:{vf[1]:02x}:{step:02x}"
                run("ip", "link", "set", name, "address", mac)
            elif op == "rename":
                new = f"{sim.prefix}r{vf[0]}{vf[1]}{step}"[:15]
                run("ip", "link", "set", name, "down")
                run("ip", "link", "set", name, "name", new)
                names[vf] = new
            else:
                run("ip", "link", "set", name, "netns", netns)
                away.add(vf)
            if step % 10 == 9:
                assert _converged(live, sim), f"snapshot differs from a full scan after step {step}"
        for vf in sorted(away):
            run("ip", "-n", netns, "link", "set", names[vf], "netns", "1")
        assert _converged(live, sim)
        assert live.refreshes > refreshes
        assert live.scans == scans  # every VF came back under its own ifindex
    finally:
        live.stop()
        run("ip", "netns", "del", netns, check=False)
        for (p, v), name in names.items():
            if name != sim.vf_name(p, v):
                run("ip", "link", "set", name, "down", check=False)
                run("ip", "link", "set", name, "name", sim.vf_name(p, v), check=False)


def test_link_down_is_seen(sim: SimulatedNode, live: LiveInventory) -> None:
    run("ip", "link", "set", sim.vf_name(1, 0), "down")
    wait_for(
        live,
        lambda s: (
            s.pfs[1].vfs[0].fn.netdev is not None and s.pfs[1].vfs[0].fn.netdev.operstate == "down"
        ),
    )


def test_numvfs_follows_kernel_rules_and_is_seen(sim: SimulatedNode, live: LiveInventory) -> None:
    attr = sim.paths.pci_devices / sim.pf_address(0) / "sriov_numvfs"
    with pytest.raises(Busy, match="write 0 first"):
        sim.write(attr, "4")
    with pytest.raises(InvalidArgument):
        sim.write(attr, "65")
    with pytest.raises(InvalidArgument):
        sim.write(attr, "four")
    sim.write(attr, "0")
    wait_for(live, lambda s: s.pfs[0].num_vfs == 0 and not s.pfs[0].vfs)
    assert not {sim.vf_name(0, j) for j in range(8)} & host_links(sim.prefix)
    sim.write(attr, "4")
    wait_for(live, lambda s: len(s.pfs[0].vfs) == 4)
    assert {sim.vf_name(0, j) for j in range(4)} <= host_links(sim.prefix)


def test_vfio_bind_and_back(sim: SimulatedNode, live: LiveInventory) -> None:
    vf = sim.vf_address(0, 1)
    dev = sim.paths.pci_devices / vf
    sim.write(dev / "driver_override", "vfio-pci")
    sim.write(dev / "driver" / "unbind", vf)
    assert not (dev / "driver").exists()
    assert sim.vf_name(0, 1) not in host_links(sim.prefix)
    sim.write(sim.paths.drivers_probe, vf)
    snap = wait_for_vf(live, vf, lambda f: f.driver == "vfio-pci")
    group = snap.fn.iommu_group
    assert (sim.paths.vfio / str(group)).exists() and snap.fn.netdev is None
    with pytest.raises(Busy):
        sim.write(sim.paths.pci_drivers / "iavf" / "bind", vf)
    sim.write(dev / "driver_override", "")
    sim.write(sim.paths.pci_drivers / "vfio-pci" / "unbind", vf)
    assert not (sim.paths.vfio / str(group)).exists()
    sim.write(sim.paths.drivers_probe, vf)
    back = wait_for_vf(live, vf, lambda f: f.driver == "iavf" and f.netdev is not None)
    assert back.fn.netdev is not None and back.fn.netdev.name == sim.vf_name(0, 1)
    with pytest.raises(NotFound):
        sim.write(sim.paths.pci_drivers / "iavf" / "unbind", "0000:77:00.0")


def wait_for_vf(live: LiveInventory, address: str, pred: Callable[..., bool]) -> object:
    def check(s: Inventory) -> bool:
        f = s.find(address)
        return f is not None and pred(f.fn)

    wait_for(live, check)
    found = live.snapshot().find(address)
    assert found is not None
    return found


def test_vf_returns_to_host_when_its_netns_dies(
    sim: SimulatedNode, live: LiveInventory, netns: Callable[[], str]
) -> None:
    ns = netns()
    name = sim.vf_name(0, 5)
    run("ip", "link", "set", name, "netns", ns)
    run("ip", "-n", ns, "link", "set", name, "name", "net1")
    wait_for(live, lambda s: s.pfs[0].vfs[5].fn.netdev is None)
    run("ip", "netns", "del", ns)
    wait_for(live, lambda s: s.pfs[0].vfs[5].fn.netdev is not None)
    assert name in host_links(sim.prefix)


def test_stale_links_of_a_dead_node_are_swept() -> None:
    """A node killed without tear-down leaves links named by our scheme;
    the next node with that prefix removes them instead of failing EEXIST."""
    prefix = "t" + uuid.uuid4().hex[:4]
    run("ip", "link", "add", f"{prefix}0sw", "type", "bridge")
    run("ip", "link", "add", f"{prefix}0v0", "type", "veth", "peer", "name", f"{prefix}0v0w")
    run("ip", "link", "add", f"{prefix}9x", "type", "bridge")  # not our scheme: kept
    node = SimulatedNode(parse_spec("1x2"), prefix=prefix)
    try:
        node.start()
        assert {node.vf_name(0, 0), node.vf_name(0, 1), node.pf_name(0)} <= host_links(prefix)
    finally:
        node.stop()
        assert host_links(prefix) == {f"{prefix}9x"}
        run("ip", "link", "del", f"{prefix}9x")
