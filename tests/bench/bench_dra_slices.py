"""DRA ResourceSlice numbers (a script: prints, asserts nothing).

    .venv/bin/python tests/bench/bench_dra_slices.py          # root: also a simulated node

Time from a VF change to the updated ResourceSlice in the in-repo API server
(target < 1 s), through the real kubernetes client:

- hand-built inventory, 4 PFs x 64 VFs (2 slices), one VF changes driver;
- simulated node (root only), ``sriov_numvfs`` rewritten on a PF: the live
  inventory's kernel events drive it, as on a node.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nicwarden.agent.k8s.api import load_client  # noqa: E402
from nicwarden.deviceplugin.dra.config import DraConfig  # noqa: E402
from nicwarden.deviceplugin.dra.devices import device_name  # noqa: E402
from nicwarden.deviceplugin.dra.slices import SlicePublisher  # noqa: E402
from tests.support.k8s_apiserver import FakeApiServer  # noqa: E402
from tests.support.kubelet_fake import (  # noqa: E402
    MemoryInventory,
    PfSpec,
    VfSpec,
    build_inventory,
)

DRA = DraConfig(enabled=True, driver="vf.nicwarden.io")
TARGET_S = 1.0


def slice_devices(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    with server._cond:
        slices = list(server._objects["ResourceSlice"].values())
    return {d["name"]: d for s in slices for d in s["spec"]["devices"]}


def wait(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("slice not updated")
        time.sleep(0.001)
    return time.monotonic() - start


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{name}: n={len(samples)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms"
        f" max={ordered[-1] * 1000:.1f} ms; p99/target={p99 / TARGET_S:.3f}"
    )


def synthetic(vfio_at: int | None) -> Any:
    pfs = []
    for p in range(4):
        vfs = [
            VfSpec(
                j,
                "vfio-pci" if (p, j) == (0, vfio_at) else "iavf",
                netdev_state=None if (p, j) == (0, vfio_at) else "up",
            )
            for j in range(64)
        ]
        pfs.append(PfSpec(f"0000:{0x18 + p * 0x20:02x}:00.0", name=f"ens{p}f0", vfs=vfs))
    return build_inventory(pfs)


def bench_memory(client: Any, server: FakeApiServer, rounds: int = 50) -> None:
    source = MemoryInventory(synthetic(None))
    pub = SlicePublisher(client, DRA, source, "bench-mem").start()
    try:
        wait(lambda: len(slice_devices(server)) == 256)
        samples = []
        for i in range(rounds):
            source.publish(synthetic(i % 64))
            name = device_name(source.snapshot().pfs[0].vfs[i % 64].address)
            samples.append(
                wait(
                    lambda n=name: (
                        slice_devices(server).get(n, {}).get("attributes", {}).get("driver")
                        == {"string": "vfio"}
                    )
                )
            )
        report("VF driver change -> ResourceSlice (4x64 VFs, 2 slices)", samples)
    finally:
        pub.stop(delete=True)


def bench_sim(client: Any, server: FakeApiServer, rounds: int = 10) -> None:
    from nicwarden.agent.inventory import LiveInventory
    from nicwarden.agent.sim import SimulatedNode, parse_spec

    sim = SimulatedNode(parse_spec("1x8"), prefix="b" + uuid.uuid4().hex[:4]).start()
    live = LiveInventory(sim.paths)
    sim.subscribe(live.notify)
    live.start()
    pub = SlicePublisher(client, DRA, live, "bench-sim").start()
    try:
        numvfs = sim.paths.pci_devices / sim.pf_address(0) / "sriov_numvfs"
        wait(lambda: len(slice_devices(server)) == 8)
        samples = []
        for i in range(rounds):
            want = 4 if i % 2 == 0 else 8
            start = time.monotonic()
            sim.write(numvfs, "0")
            sim.write(numvfs, str(want))
            wait(lambda w=want: len(slice_devices(server)) == w)
            samples.append(time.monotonic() - start)
        report("sriov_numvfs rewrite -> ResourceSlice (simulated node)", samples)
    finally:
        pub.stop(delete=True)
        live.stop()
        sim.stop()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nw-bench-dra-"))
    server = FakeApiServer().start()
    try:
        client = load_client(server.write_kubeconfig(tmp / "kubeconfig"))
        bench_memory(client, server)
        if os.geteuid() == 0:
            bench_sim(client, server)
        else:
            print("simulated node: skipped (needs root)")
    finally:
        server.stop()
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
