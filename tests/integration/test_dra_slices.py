"""ResourceSlices published from a simulated node's live inventory to the
in-repo API server, through the real kubernetes client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.k8s.api import load_client
from nicwarden.agent.sim import SimulatedNode
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import device_name
from nicwarden.deviceplugin.dra.slices import TAINT_CARRIER_DOWN, SlicePublisher
from tests.conftest import run
from tests.support.k8s_apiserver import FakeApiServer, wait_until
from tests.support.kubelet_fake import MemoryInventory, PfSpec, build_inventory, kernel_vfs

DRIVER = "vf.nicwarden.io"
NODE = "node-a"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Any]]:
    with FakeApiServer() as server:
        yield server, load_client(server.write_kubeconfig(tmp_path / "kubeconfig"))


def dra(**kw: Any) -> DraConfig:
    return DraConfig(enabled=True, driver=DRIVER, **kw)


def slices(server: FakeApiServer) -> list[dict[str, Any]]:
    with server._cond:
        return [dict(o) for o in server._objects["ResourceSlice"].values()]


def devices_of(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices(server) for d in s["spec"]["devices"]}


def consistent(server: FakeApiServer) -> bool:
    found = slices(server)
    return bool(found) and all(
        s["spec"]["pool"]["resourceSliceCount"] == len(found)
        and s["spec"]["pool"]["generation"] == found[0]["spec"]["pool"]["generation"]
        for s in found
    )


def test_pool_is_paged_at_128_and_republished_after_deletion(
    api: tuple[FakeApiServer, Any],
) -> None:
    server, client = api
    inv = MemoryInventory(
        build_inventory(
            [
                PfSpec("0000:18:00.0", vfs=kernel_vfs(200)),
                PfSpec("0000:5e:00.0", name="ens2f0", vfs=kernel_vfs(60)),
            ]
        )
    )
    pub = SlicePublisher(client, dra(), inv, NODE, resync=5)
    pub.start()
    try:
        wait_until(lambda: len(devices_of(server)) == 260 and consistent(server), what="published")
        assert sorted(len(s["spec"]["devices"]) for s in slices(server)) == [4, 128, 128]
        gen = slices(server)[0]["spec"]["pool"]["generation"]
        # Someone else deletes a slice: it comes back, the pool at a new generation.
        victim = slices(server)[1]
        server.delete(victim)
        wait_until(
            lambda: (
                len(devices_of(server)) == 260
                and consistent(server)
                and slices(server)[0]["spec"]["pool"]["generation"] > gen
            ),
            what="re-published",
        )
        # Another node's slices and other drivers' are not ours to touch.
        other = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": "node-b-x"},
            "spec": {
                "driver": DRIVER,
                "nodeName": "node-b",
                "pool": {"name": "node-b", "generation": 1, "resourceSliceCount": 1},
                "devices": [],
            },
        }
        server.add(other)
        pub.kick()
        time.sleep(0.3)
        assert server.get("ResourceSlice", "", "node-b-x") is not None
    finally:
        pub.stop()


def test_empty_pool_publishes_one_empty_slice(api: tuple[FakeApiServer, Any]) -> None:
    server, client = api
    inv = MemoryInventory(build_inventory([]))
    pub = SlicePublisher(client, dra(), inv, NODE).start()
    try:
        wait_until(lambda: consistent(server), what="published")
        (only,) = slices(server)
        assert only["spec"]["devices"] == [] and only["spec"]["pool"]["resourceSliceCount"] == 1
    finally:
        pub.stop()


@pytest.fixture
def sim(make_sim: Callable[[str], SimulatedNode]) -> SimulatedNode:
    return make_sim("2x4")


@pytest.fixture
def live(sim: SimulatedNode) -> Iterator[LiveInventory]:
    inv = LiveInventory(sim.paths)
    sim.subscribe(inv.notify)
    inv.start()
    yield inv
    inv.stop()


@pytest.mark.root
def test_slices_follow_numvfs_and_carrier(
    api: tuple[FakeApiServer, Any], sim: SimulatedNode, live: LiveInventory
) -> None:
    server, client = api
    pub = SlicePublisher(client, dra(), live, NODE).start()
    try:
        wait_until(lambda: len(devices_of(server)) == 8 and consistent(server), what="published")
        numvfs = sim.paths.pci_devices / sim.pf_address(0) / "sriov_numvfs"
        sim.write(numvfs, "0")
        sim.write(numvfs, "2")
        start = time.monotonic()
        wanted = {device_name(sim.vf_address(0, j)) for j in range(2)} | {
            device_name(sim.vf_address(1, j)) for j in range(4)
        }
        wait_until(lambda: set(devices_of(server)) == wanted and consistent(server), what="numVfs")
        print(f"numVfs change -> ResourceSlice updated in {time.monotonic() - start:.3f} s")
        # The PF loses carrier (its wire is cut): its VFs are tainted NoSchedule.
        run("ip", "link", "set", f"{sim.pf_name(1)}u", "down")
        try:
            pf1 = {device_name(sim.vf_address(1, j)) for j in range(4)}
            wait_until(
                lambda: all(
                    [t["key"] for t in devices_of(server)[n].get("taints", [])]
                    == [TAINT_CARRIER_DOWN]
                    for n in pf1
                ),
                what="carrier taint",
            )
            assert all("taints" not in d for n, d in devices_of(server).items() if n not in pf1)
            assert devices_of(server)[next(iter(pf1))]["taints"][0]["effect"] == "NoSchedule"
        finally:
            run("ip", "link", "set", f"{sim.pf_name(1)}u", "up")
        wait_until(
            lambda: all("taints" not in d for d in devices_of(server).values()), what="untaint"
        )
    finally:
        pub.stop()


def test_a_server_dropping_taints_is_not_rewritten_forever(
    api: tuple[FakeApiServer, Any],
) -> None:
    server, client = api
    server.device_taints = False  # the DRADeviceTaints feature gate is off
    inv = MemoryInventory(
        build_inventory([PfSpec("0000:18:00.0", operstate="down", vfs=kernel_vfs(3))])
    )
    pub = SlicePublisher(client, dra(), inv, NODE).start()
    try:
        wait_until(lambda: len(devices_of(server)) == 3 and consistent(server), what="published")
        assert all("taints" not in d for d in devices_of(server).values())
        wait_until(lambda: pub.stats.publishes >= 1, what="stats")
        writes = pub.stats.writes
        for _ in range(3):
            pub.kick()
            time.sleep(0.1)
        assert pub.stats.writes == writes
    finally:
        pub.stop()
