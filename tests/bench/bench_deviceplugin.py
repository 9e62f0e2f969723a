"""Device plugin numbers (a script: prints, asserts nothing).

    .venv/bin/python tests/bench/bench_deviceplugin.py

- Allocate latency through real gRPC over a unix socket (1,000 calls);
- inventory change -> ListAndWatch update seen by the test kubelet;
- pool build (and build + health) for a synthetic 4 PF x 64 VF inventory.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nicwarden.agent.host.discovery import with_dev_nodes  # noqa: E402
from nicwarden.agent.host.paths import HostPaths  # noqa: E402
from nicwarden.agent.model import Inventory  # noqa: E402
from nicwarden.deviceplugin.config import parse_resource_list  # noqa: E402
from nicwarden.deviceplugin.manager import DevicePluginManager  # noqa: E402
from nicwarden.deviceplugin.pools import build_pools  # noqa: E402
from nicwarden.deviceplugin.state import evaluate  # noqa: E402
from tests.support.kubelet_fake import (  # noqa: E402
    FakeKubelet,
    MemoryInventory,
    PfSpec,
    VfSpec,
    build_inventory,
    make_vfio_nodes,
    short_tmpdir,
)

POOLS = [
    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    {"resourceName": "net_a", "selectors": [{"pfNames": ["ens1f0#0-31", "ens2f0#0-31"]}]},
    {"resourceName": "net_b", "selectors": {"drivers": ["iavf"]}},
]


def synthetic(
    pfs: int = 4, vfs: int = 64, vfio_every: int = 4, vf_count: int | None = None
) -> Inventory:
    """4 PFs on 2 NUMA nodes; every 4th VF bound to vfio-pci."""
    specs = []
    for p in range(pfs):
        n = vfs if vf_count is None else vf_count
        specs.append(
            PfSpec(
                f"0000:{0x18 + 0x20 * p:02x}:00.0",
                name=f"ens{p + 1}f0",
                numa=p // 2,
                vfs=[
                    VfSpec(i, "vfio-pci", netdev_state=None) if i % vfio_every == 0 else VfSpec(i)
                    for i in range(n)
                ],
            )
        )
    return build_inventory(specs)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(label: str, samples_s: list[float]) -> None:
    ms = [s * 1000 for s in samples_s]
    print(
        f"{label:<46} n={len(ms):<5} p50={pct(ms, 0.5):8.3f} ms  p99={pct(ms, 0.99):8.3f} ms"
        f"  mean={statistics.fmean(ms):8.3f} ms  max={max(ms):8.3f} ms"
    )


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_pool_build() -> None:
    inv = synthetic()
    configs = parse_resource_list(POOLS, "nicwarden.io").pools
    root = short_tmpdir("nwb")
    try:
        make_vfio_nodes(
            root / "dev", [v.fn.iommu_group for v in inv.vfs() if v.fn.iommu_group is not None]
        )
        paths = HostPaths(dev=root / "dev")
        counts = {k: len(v) for k, v in build_pools(inv, configs).items()}
        print(
            f"synthetic inventory: {len(inv.pfs)} PFs x 64 VFs = {len(inv.vfs())} VFs; pools {counts}"
        )
        report(
            "build_pools (pure selector matching)", timed(lambda: build_pools(inv, configs), 300)
        )
        report(
            "with_dev_nodes (the /dev stats a scan adds)",
            timed(lambda: with_dev_nodes(paths, inv), 300),
        )
        report("evaluate (pools + health)", timed(lambda: evaluate(inv, configs), 300))
    finally:
        shutil.rmtree(root)


def bench_grpc() -> None:
    root = short_tmpdir("nwb")
    kubelet = FakeKubelet(root / "dp")
    kubelet.start()
    inv = synthetic()
    make_vfio_nodes(
        root / "dev", [v.fn.iommu_group for v in inv.vfs() if v.fn.iommu_group is not None]
    )
    source = MemoryInventory(inv)
    manager = DevicePluginManager(
        source,
        POOLS,
        paths=HostPaths(dev=root / "dev"),
        kubelet_dir=root / "dp",
        device_info_dir=root / "devinfo",
        poll_interval=0.5,
    )
    manager.start()
    try:
        net = kubelet.wait_for_registration("nicwarden.io/net_b")
        dpdk = kubelet.wait_for_registration("nicwarden.io/dpdk")
        net_ids = [d.ID for d in net.wait_for(lambda d: len(d) > 0)]
        dpdk_ids = [d.ID for d in dpdk.wait_for(lambda d: len(d) > 0)]
        for conn, ids in ((net, net_ids), (dpdk, dpdk_ids)):
            for i in range(20):  # warm up channels and code paths
                conn.allocate([ids[i % len(ids)]])
        counter = iter(range(10**9))
        report(
            "Allocate, 1 kernel VF, via gRPC",
            timed(lambda: net.allocate([net_ids[next(counter) % len(net_ids)]]), 1000),
        )
        report(
            "Allocate, 1 vfio VF, via gRPC",
            timed(lambda: dpdk.allocate([dpdk_ids[next(counter) % len(dpdk_ids)]]), 1000),
        )
        report(
            "Allocate, 4 kernel VFs, via gRPC",
            timed(lambda: net.allocate(net_ids[(k := next(counter) % 20) : k + 4]), 1000),
        )
        report(
            "GetPreferredAllocation, 4 of all net_b VFs",
            timed(lambda: net.preferred(net_ids, [], 4), 1000),
        )

        # Inventory change -> ListAndWatch update at the kubelet. Alternate
        # between 64 and 63 VFs on each PF so every publish changes the list.
        latencies = []
        for i in range(100):
            want = 63 if i % 2 == 0 else 64
            changed = synthetic(vf_count=want)
            expected = len(
                build_pools(changed, parse_resource_list(POOLS, "nicwarden.io").pools)["net_b"]
            )
            before = len(net.updates)
            t = time.monotonic()
            source.publish(changed)
            net.wait_for(lambda d, n=expected: len(d) == n, timeout=5)
            arrived = net.updates[before][0] if len(net.updates) > before else time.monotonic()
            latencies.append(arrived - t)
        report("inventory change -> ListAndWatch at kubelet", latencies)
    finally:
        manager.stop()
        kubelet.stop()
        shutil.rmtree(root)


def main() -> None:
    print(f"python {sys.version.split()[0]}")
    bench_pool_build()
    bench_grpc()


if __name__ == "__main__":
    main()
