"""The device plugin manager against a test kubelet over real unix sockets.

No kernel needed: inventories are hand-built, the dev root is a temp dir."""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from nicwarden.agent.backoff import BackoffPolicy
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.model import Inventory
from nicwarden.deviceplugin.manager import DevicePluginManager
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2
from tests.support.kubelet_fake import (
    FakeKubelet,
    MemoryInventory,
    PfSpec,
    VfSpec,
    build_inventory,
    kernel_vfs,
    make_vfio_nodes,
    short_tmpdir,
    socket_files,
    vf_address,
    vfio_vfs,
    wait_until,
)

PF0 = "0000:18:00.0"
PF1 = "0000:5e:00.0"
NET = "nicwarden.io/net"
DPDK = "nicwarden.io/dpdk"
POOLS: list[dict[str, Any]] = [
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    {"resourceName": "net", "selectors": {"drivers": ["iavf"]}},
]


@dataclass
class Env:
    root: Path
    kubelet: FakeKubelet
    managers: list[DevicePluginManager]

    @property
    def plugin_dir(self) -> Path:
        return self.kubelet.plugin_dir

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def devinfo(self) -> Path:
        return self.root / "devinfo"

    def manager(
        self, source: MemoryInventory, pools: list[dict[str, Any]] | None = None, **kw: Any
    ) -> DevicePluginManager:
        m = DevicePluginManager(
            source,
            POOLS if pools is None else pools,
            paths=HostPaths(dev=self.dev),
            kubelet_dir=self.plugin_dir,
            device_info_dir=self.devinfo,
            poll_interval=0.1,
            backoff=BackoffPolicy(initial=0.1, cap=0.4),
            **kw,
        )
        self.managers.append(m)
        m.start()
        return m


@pytest.fixture
def env() -> Iterator[Env]:
    root = short_tmpdir()
    kubelet = FakeKubelet(root / "dp")
    kubelet.start()
    e = Env(root, kubelet, [])
    yield e
    for m in e.managers:
        m.stop()
    kubelet.stop()
    shutil.rmtree(root)


def inv(kernel: int = 2, vfio: int = 1, **pf: Any) -> Inventory:
    return build_inventory(
        [
            PfSpec(
                PF0,
                name="ens1f0",
                numa=0,
                vfs=kernel_vfs(kernel) + vfio_vfs(vfio, start=kernel),
                **pf,
            ),
            PfSpec(PF1, name="ens2f0", numa=1, vfs=kernel_vfs(1)),
        ]
    )


def ids(devices: list[api_pb2.Device]) -> list[str]:
    return [d.ID for d in devices]


def health(devices: list[api_pb2.Device]) -> dict[str, str]:
    return {d.ID: d.health for d in devices}


def vfio_groups_of(inventory: Inventory) -> list[int]:
    return [
        v.fn.iommu_group for v in inventory.vfs() if v.fn.is_vfio and v.fn.iommu_group is not None
    ]


def started(
    env: Env, inventory: Inventory, **kw: Any
) -> tuple[MemoryInventory, DevicePluginManager]:
    make_vfio_nodes(env.dev, vfio_groups_of(inventory))
    source = MemoryInventory(inventory, dev=env.dev)
    return source, env.manager(source, **kw)


def time_to_update(
    conn: Any, change: Callable[[], None], predicate: Callable[[list[api_pb2.Device]], bool]
) -> float:
    start = time.monotonic()
    change()
    conn.wait_for(predicate, timeout=5)
    arrived = next(t for t, devs in reversed(conn.updates) if predicate(devs))
    return arrived - start


def test_registration_and_initial_list(env: Env) -> None:
    _, manager = started(env, inv())
    conn = env.kubelet.wait_for_registration(NET)
    req = conn.request
    assert (req.version, req.endpoint, req.resource_name) == ("v1beta1", "nicwarden-net.sock", NET)
    assert req.options.get_preferred_allocation_available and not req.options.pre_start_required
    sock = env.plugin_dir / "nicwarden-net.sock"
    assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.lstat().st_mode) == 0o600

    devices = conn.wait_for(lambda d: len(d) == 3)
    assert ids(devices) == [vf_address(PF0, 0), vf_address(PF0, 1), vf_address(PF1, 0)]
    assert set(health(devices).values()) == {"Healthy"}
    assert [[n.ID for n in d.topology.nodes] for d in devices] == [[0], [0], [1]]
    assert conn.options is not None and conn.options.get_preferred_allocation_available

    dpdk = env.kubelet.wait_for_registration(DPDK)
    assert ids(dpdk.wait_for(lambda d: len(d) == 1)) == [vf_address(PF0, 2)]
    status = {p.name: p for p in manager.pools()}
    assert (
        status["net"].registered
        and status["net"].device_count == 3
        and status["net"].healthy_count == 3
    )
    assert status["net"].socket == sock and status["net"].last_error is None


def test_topology_omitted_when_excluded_or_unknown(env: Env) -> None:
    inventory = build_inventory(
        [
            PfSpec(PF0, numa=-1, vfs=kernel_vfs(1)),
            PfSpec(PF1, name="ens2f0", numa=1, vfs=kernel_vfs(1)),
        ]
    )
    pools = [
        {"resourceName": "plain", "selectors": {"pfNames": ["ens1f0"]}},
        {"resourceName": "flat", "excludeTopology": True},
    ]
    env.manager(MemoryInventory(inventory, dev=env.dev), pools)
    plain = env.kubelet.wait_for_registration("nicwarden.io/plain")
    assert [len(d.topology.nodes) for d in plain.wait_for(lambda d: len(d) == 1)] == [0]  # NUMA -1
    flat = env.kubelet.wait_for_registration("nicwarden.io/flat")
    assert [len(d.topology.nodes) for d in flat.wait_for(lambda d: len(d) == 1)] == [
        0
    ]  # NUMA 1, excluded


def test_vf_added_and_removed_reach_kubelet_within_1s(env: Env) -> None:
    source, _ = started(env, inv(kernel=2))
    conn = env.kubelet.wait_for_registration(NET)
    conn.wait_for(lambda d: len(d) == 3)
    added = time_to_update(conn, lambda: source.publish(inv(kernel=4)), lambda d: len(d) == 5)
    assert added < 1.0
    removed = time_to_update(conn, lambda: source.publish(inv(kernel=1)), lambda d: len(d) == 2)
    assert removed < 1.0
    assert vf_address(PF0, 1) not in ids(conn.latest() or [])


def test_identical_snapshots_are_not_resent(env: Env) -> None:
    source, _ = started(env, inv())
    conn = env.kubelet.wait_for_registration(NET)
    conn.wait_for(lambda d: len(d) == 3)
    before = len(conn.updates)
    for _ in range(3):
        source.publish(inv())  # new objects, same content
    time.sleep(0.5)  # several watch-loop ticks too
    assert len(conn.updates) == before


def test_driver_change_moves_vf_between_pools(env: Env) -> None:
    source, _ = started(env, inv(kernel=2, vfio=0))
    net = env.kubelet.wait_for_registration(NET)
    dpdk = env.kubelet.wait_for_registration(DPDK)
    moving = vf_address(PF0, 1)
    net.wait_for(lambda d: moving in ids(d))
    dpdk.wait_for(lambda d: d == [])

    rebound = build_inventory(
        [
            PfSpec(
                PF0,
                name="ens1f0",
                vfs=[VfSpec(0), VfSpec(1, "vfio-pci", iommu_group=77, netdev_state=None)],
            ),
            PfSpec(PF1, name="ens2f0", numa=1, vfs=kernel_vfs(1)),
        ]
    )
    make_vfio_nodes(env.dev, [77])
    source.publish(rebound)
    net.wait_for(lambda d: moving not in ids(d), timeout=1)
    dpdk.wait_for(lambda d: ids(d) == [moving], timeout=1)

    resp = dpdk.allocate([moving]).container_responses[0]
    assert [(s.host_path, s.container_path) for s in resp.devices] == [
        (str(env.dev / "vfio" / "vfio"), "/dev/vfio/vfio"),
        (str(env.dev / "vfio" / "77"), "/dev/vfio/77"),
    ]
    with pytest.raises(grpc.RpcError) as err:
        net.allocate([moving])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and moving in (
        err.value.details() or ""
    )

    # ... and back to the kernel driver: no device specs any more.
    source.publish(inv(kernel=2, vfio=0))
    net.wait_for(lambda d: moving in ids(d), timeout=1)
    assert list(net.allocate([moving]).container_responses[0].devices) == []


def test_allocate_uses_the_current_iommu_group(env: Env) -> None:
    inventory = build_inventory(
        [PfSpec(PF0, vfs=[VfSpec(0, "vfio-pci", iommu_group=5, netdev_state=None)])]
    )
    source, _ = started(env, inventory)
    dpdk = env.kubelet.wait_for_registration(DPDK)
    dpdk.wait_for(lambda d: len(d) == 1)
    make_vfio_nodes(env.dev, [6], noiommu=True)
    regrouped = build_inventory(
        [PfSpec(PF0, vfs=[VfSpec(0, "vfio-pci", iommu_group=6, netdev_state=None)])]
    )
    source.publish(regrouped, notify=False)  # Allocate must not wait for an event
    resp = dpdk.allocate([vf_address(PF0, 0)]).container_responses[0]
    assert (str(env.dev / "vfio" / "noiommu-6"), "/dev/vfio/6") in [
        (s.host_path, s.container_path) for s in resp.devices
    ]


def test_link_down_marks_unhealthy_then_healthy_again(env: Env) -> None:
    source, manager = started(env, inv())
    conn = env.kubelet.wait_for_registration(NET)
    conn.wait_for(lambda d: len(d) == 3)
    on_pf0 = {vf_address(PF0, 0), vf_address(PF0, 1)}

    took = time_to_update(
        conn,
        lambda: source.publish(inv(operstate="down")),
        lambda d: all((h == "Unhealthy") == (i in on_pf0) for i, h in health(d).items()),
    )
    assert took < 1.0
    net = next(p for p in manager.pools() if p.name == "net")
    assert net.healthy_count == 1
    assert all("link is down" in (d.problem or "") for d in net.devices if d.id in on_pf0)
    with pytest.raises(grpc.RpcError) as err:
        conn.allocate([vf_address(PF0, 0)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert vf_address(PF0, 0) in (err.value.details() or "")

    source.publish(inv())
    conn.wait_for(lambda d: set(health(d).values()) == {"Healthy"}, timeout=1)


def test_vfio_node_vanishing_is_read_from_the_next_snapshot(env: Env) -> None:
    """Health reads the vfio node from the inventory: the plugin itself never
    looks under /dev, and the rescan an event (udev's vfio uevent, here a
    publish) triggers is what it reacts to."""
    source, _ = started(env, inv())
    dpdk = env.kubelet.wait_for_registration(DPDK)
    vf = vf_address(PF0, 2)
    dpdk.wait_for(lambda d: health(d) == {vf: "Healthy"})
    group = next(g for g in vfio_groups_of(inv()))
    (env.dev / "vfio" / str(group)).unlink()
    time.sleep(0.3)  # several watch-loop ticks: no stat of /dev on its own
    assert health(dpdk.latest() or []) == {vf: "Healthy"}
    source.publish(inv())
    dpdk.wait_for(lambda d: health(d) == {vf: "Unhealthy"}, timeout=1)
    (env.dev / "vfio" / f"noiommu-{group}").touch()
    source.publish(inv())
    dpdk.wait_for(lambda d: health(d) == {vf: "Healthy"}, timeout=1)


def test_allocate_errors_name_the_ids(env: Env) -> None:
    started(env, inv())
    conn = env.kubelet.wait_for_registration(NET)
    conn.wait_for(lambda d: len(d) == 3)
    with pytest.raises(grpc.RpcError) as err:
        conn.allocate([vf_address(PF0, 0)], ["0000:aa:00.1"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "0000:aa:00.1" in (err.value.details() or "")
    assert not (env.devinfo / "dp").exists()  # refused calls write nothing


def test_allocate_and_preferred_over_grpc(env: Env) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[str]]] = []

        def record_allocation(self, resource: str, device_ids: list[str]) -> None:
            self.calls.append((resource, device_ids))

    recorder = Recorder()
    started(env, inv(kernel=3, vfio=0), recorder=recorder)
    conn = env.kubelet.wait_for_registration(NET)
    all_ids = ids(conn.wait_for(lambda d: len(d) == 4))
    # NUMA 0 holds 3 on one PF; NUMA 1 holds 1: two devices pack on NUMA 0.
    assert conn.preferred(all_ids, [], 2) == [vf_address(PF0, 0), vf_address(PF0, 1)]
    assert conn.preferred(all_ids, [vf_address(PF1, 0)], 1) == [vf_address(PF1, 0)]

    a = vf_address(PF0, 0)
    resp = conn.allocate([a]).container_responses[0]
    assert resp.envs["PCIDEVICE_NICWARDEN_IO_NET"] == a
    assert (env.devinfo / "dp" / f"nicwarden.io-net-{a}-device.json").exists()
    assert recorder.calls == [(NET, [a])]


def test_kubelet_restart_re_registers_within_5s(env: Env) -> None:
    source, manager = started(env, inv())
    env.kubelet.wait_for_registration(NET)
    start = time.monotonic()
    env.kubelet.restart()
    conn = env.kubelet.wait_for_registration(NET, count=2, timeout=5)
    env.kubelet.wait_for_registration(DPDK, count=2, timeout=5)
    assert time.monotonic() - start < 5
    assert len(conn.wait_for(lambda d: len(d) == 3)) == 3
    assert socket_files(env.plugin_dir) == [
        "kubelet.sock",
        "nicwarden-dpdk.sock",
        "nicwarden-net.sock",
    ]
    # The new stream is live: changes still flow.
    source.publish(inv(kernel=3))
    conn.wait_for(lambda d: len(d) == 4, timeout=1)
    assert all(p.registered for p in manager.pools())


def test_new_kubelet_socket_alone_triggers_re_registration(env: Env) -> None:
    started(env, inv())
    env.kubelet.wait_for_registration(NET)
    env.kubelet.restart(wipe=False)  # our socket survives; kubelet.sock is new
    conn = env.kubelet.wait_for_registration(NET, count=2, timeout=5)
    assert len(conn.wait_for(lambda d: len(d) == 3)) == 3


def test_plugin_socket_deleted_re_registers(env: Env) -> None:
    started(env, inv())
    env.kubelet.wait_for_registration(NET)
    (env.plugin_dir / "nicwarden-net.sock").unlink()
    conn = env.kubelet.wait_for_registration(NET, count=2, timeout=5)
    assert len(conn.wait_for(lambda d: len(d) == 3)) == 3


def test_rejected_registration_is_retried_with_backoff(env: Env) -> None:
    env.kubelet.reject = "resource name already registered"
    _, manager = started(env, inv(), pools=[POOLS[1]])
    env.kubelet.wait_for_attempts(4, timeout=5)
    status = manager.pools()[0]
    assert not status.registered
    assert "resource name already registered" in (status.last_error or "")
    # Backoff: the gaps between attempts grow (0.1, 0.2, 0.4 s ...), capped.
    env.kubelet.reject = None
    conn = env.kubelet.wait_for_registration(NET, timeout=5)
    conn.wait_for(lambda d: len(d) == 3)
    wait_until(lambda: manager.pools()[0].registered)
    assert manager.pools()[0].last_error is None


def test_waits_for_a_kubelet_that_is_not_there_yet(env: Env) -> None:
    env.kubelet.stop()
    _, manager = started(env, inv(), pools=[POOLS[1]])
    wait_until(lambda: "waiting for kubelet" in (manager.pools()[0].last_error or ""))
    env.kubelet.start()
    conn = env.kubelet.wait_for_registration(NET, timeout=5)
    conn.wait_for(lambda d: len(d) == 3)


def test_shutdown_sends_empty_list_and_cleans_up(env: Env) -> None:
    source, manager = started(env, inv())
    net = env.kubelet.wait_for_registration(NET)
    dpdk = env.kubelet.wait_for_registration(DPDK)
    net.wait_for(lambda d: len(d) == 3)
    dpdk.wait_for(lambda d: len(d) == 1)
    net.allocate([vf_address(PF0, 0)])
    dpdk.allocate([vf_address(PF0, 2)])
    (env.devinfo / "dp" / "other.io-x-0000:01:00.0-device.json").write_text("{}")
    assert len(list((env.devinfo / "dp").iterdir())) == 3

    manager.stop()
    env.managers.remove(manager)
    # The farewell is on the wire when stop() returns; kubelet reads it when
    # its stream thread next runs.
    net.wait_for(lambda d: d == [])
    dpdk.wait_for(lambda d: d == [])
    assert net.wait_ended() and dpdk.wait_ended()
    assert socket_files(env.plugin_dir) == ["kubelet.sock"]
    assert [p.name for p in (env.devinfo / "dp").iterdir()] == [
        "other.io-x-0000:01:00.0-device.json"
    ]
    assert source.subscribers == 0


def test_config_changes_apply_live(env: Env) -> None:
    source, manager = started(env, inv(), pools=[POOLS[1]])
    net = env.kubelet.wait_for_registration(NET)
    net.wait_for(lambda d: len(d) == 3)

    errors = manager.apply_config(
        [
            POOLS[1],
            {"resourceName": "bad", "selectors": {"pfNames": ["ens1f0#3-1"]}},
            {"resourceName": "pf1", "selectors": {"rootDevices": [PF1]}},
            POOLS[0],
        ]
    )
    assert [e.pool for e in errors] == ["bad"]
    assert [e.pool for e in manager.config_errors()] == ["bad"]
    dpdk = env.kubelet.wait_for_registration(DPDK)
    assert ids(dpdk.wait_for(lambda d: len(d) == 1)) == [vf_address(PF0, 2)]
    pf1 = env.kubelet.wait_for_registration("nicwarden.io/pf1")
    assert pf1.wait_for(lambda d: d == []) == []  # PF1's VF is taken by the earlier net pool
    assert len(net.updates) >= 1 and not net.stream_ended  # unchanged pool kept its stream
    assert [p.name for p in manager.pools()] == ["net", "pf1", "dpdk"]

    # Narrow "net" to PF0: it restarts; PF1's VF falls through to "pf1".
    manager.apply_config(
        [
            {"resourceName": "net", "selectors": {"drivers": ["iavf"], "pfNames": ["ens1f0"]}},
            {"resourceName": "pf1", "selectors": {"rootDevices": [PF1]}},
        ]
    )
    assert net.wait_ended()
    net2 = env.kubelet.wait_for_registration(NET, count=2)
    net2.wait_for(lambda d: len(d) == 2)
    pf1.wait_for(lambda d: ids(d) == [vf_address(PF1, 0)], timeout=1)
    assert dpdk.wait_for(lambda d: d == [], timeout=1) == []  # removed pool: farewell list
    wait_until(lambda: "nicwarden-dpdk.sock" not in socket_files(env.plugin_dir))
