"""The device plugin and DRA on one node, from one inventory: every VF is
offered by exactly one of them, also while VFs change driver."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.backoff import BackoffPolicy
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.k8s.api import load_client
from nicwarden.agent.model import Inventory
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import device_name, dra_matches
from nicwarden.deviceplugin.dra.slices import SlicePublisher
from nicwarden.deviceplugin.manager import DevicePluginManager
from tests.support.k8s_apiserver import FakeApiServer
from tests.support.kubelet_fake import (
    FakeKubelet,
    MemoryInventory,
    PfSpec,
    build_inventory,
    kernel_vfs,
    short_tmpdir,
    vf_address,
    vfio_vfs,
    wait_until,
)

PF0 = "0000:18:00.0"
NODE = "node-a"
DRA = DraConfig(enabled=True, driver="vf.nicwarden.io", selectors=[{"drivers": ["vfio-pci"]}])


def inventory(kernel: int, vfio: int) -> Inventory:
    return build_inventory([PfSpec(PF0, vfs=kernel_vfs(kernel) + vfio_vfs(vfio, start=kernel))])


@pytest.fixture
def root() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    shutil.rmtree(path)


def test_no_vf_is_in_both_list_and_watch_and_a_slice(root: Path) -> None:
    source = MemoryInventory(inventory(6, 2))
    kubelet = FakeKubelet(root / "dp")
    kubelet.start()
    server = FakeApiServer().start()
    # The device plugin pool selects every VF: only the exclusion keeps
    # DRA's VFs out of it.
    manager = DevicePluginManager(
        source,
        [{"resourceName": "net"}],
        paths=HostPaths(dev=root / "dev"),
        kubelet_dir=kubelet.plugin_dir,
        device_info_dir=root / "devinfo",
        poll_interval=0.1,
        backoff=BackoffPolicy(initial=0.1, cap=0.4),
        exclude=lambda vf, pf: dra_matches(DRA, vf, pf),
    )
    publisher = SlicePublisher(
        load_client(server.write_kubeconfig(root / "kubeconfig")), DRA, source, NODE
    )
    try:
        manager.start()
        publisher.start()
        conn = kubelet.wait_for_registration("nicwarden.io/net")

        def plugin_ids() -> set[str]:
            return {d.ID for d in conn.latest() or []}

        def slice_ids() -> set[str]:
            with server._cond:
                slices: list[dict[str, Any]] = list(server._objects["ResourceSlice"].values())
            return {d["name"] for s in slices for d in s["spec"]["devices"]}

        def state(kernel: int, vfio: int) -> bool:
            all_vfs = [vf_address(PF0, i) for i in range(kernel + vfio)]
            return plugin_ids() == set(all_vfs[:kernel]) and slice_ids() == {
                device_name(a) for a in all_vfs[kernel:]
            }

        wait_until(lambda: state(6, 2), timeout=5)
        # Two more VFs are bound to vfio-pci: they leave the pool for DRA.
        source.publish(inventory(4, 4))
        wait_until(lambda: state(4, 4), timeout=5)
        both = {device_name(a) for a in plugin_ids()} & slice_ids()
        assert both == set()
        assert len(plugin_ids()) + len(slice_ids()) == 8
    finally:
        publisher.stop()
        manager.stop()
        server.stop()
        kubelet.stop()
