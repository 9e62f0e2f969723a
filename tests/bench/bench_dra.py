"""DRA kubelet plugin numbers (a script: prints, asserts nothing).

    .venv/bin/python tests/bench/bench_dra.py [calls]

NodePrepareResources for a two-device claim (one kernel VF, one vfio VF with
vhost-net) through real gRPC over the plugin's unix socket, on a synthetic
4 PF x 64 VF inventory, including the claim GET against the in-repo API
server, the store checkpoint (sqlite WAL, synchronous=NORMAL) and the CDI
spec. Each prepare is fresh (the claim is unprepared in between). Also: a
repeated prepare answered from the checkpoint, and unprepare. No driver is
rebound (the VFs already sit on the drivers asked for): binding is the
device management path's cost, measured by its own tests.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nicwarden.agent.devices.context import DeviceCtx  # noqa: E402
from nicwarden.agent.host.paths import HostPaths  # noqa: E402
from nicwarden.agent.k8s.api import load_client  # noqa: E402
from nicwarden.agent.store import Store  # noqa: E402
from nicwarden.deviceplugin.dra.claims import ApiClaimReader  # noqa: E402
from nicwarden.deviceplugin.dra.config import DraConfig  # noqa: E402
from nicwarden.deviceplugin.dra.devices import device_name  # noqa: E402
from nicwarden.deviceplugin.dra.plugin import DraPlugin  # noqa: E402
from tests.support.k8s_apiserver import FakeApiServer  # noqa: E402
from tests.support.kubelet_dra import DraKubelet  # noqa: E402
from tests.support.kubelet_fake import (  # noqa: E402
    MemoryInventory,
    PfSpec,
    VfSpec,
    build_inventory,
    default_group,
    make_vfio_nodes,
    short_tmpdir,
    vf_address,
)

DRIVER = "vf.nicwarden.io"
NODE = "bench-node"
TARGET_P99_MS = 20.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(what: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"  {what:<38} p50 {statistics.median(ms):6.2f} ms   p99 {pct(ms, 0.99):6.2f} ms"
        f"   (n={len(ms)})"
    )


def main(calls: int) -> None:
    root = short_tmpdir("nwbdra")
    api = FakeApiServer().start()
    kubelet: DraKubelet | None = None
    plugin: DraPlugin | None = None
    store: Store | None = None
    try:
        pfs = [
            PfSpec(
                f"0000:{0x18 + 0x20 * p:02x}:00.0",
                name=f"ens{p + 1}f0",
                vfs=[
                    VfSpec(i, "vfio-pci", netdev_state=None) if i % 4 == 0 else VfSpec(i)
                    for i in range(64)
                ],
            )
            for p in range(4)
        ]
        dev = root / "dev"
        make_vfio_nodes(
            dev, [default_group(vf_address(p.address, i)) for p in pfs for i in range(0, 64, 4)]
        )
        (dev / "net").mkdir()
        (dev / "vhost-net").touch()
        (dev / "net" / "tun").touch()
        inventory = MemoryInventory(build_inventory(pfs, dev=dev), dev=dev)
        cfg = DraConfig(
            enabled=True,
            driver=DRIVER,
            registry_dir=root / "reg",
            plugins_dir=root / "plugins",
            cdi_dir=root / "cdi",
        )
        store = Store.open(root / "state")
        ctx = DeviceCtx(
            paths=HostPaths(dev=dev),
            writer=None,  # type: ignore[arg-type]
            inventory=inventory,  # type: ignore[arg-type]
            store=store,
            netdevs=None,  # type: ignore[arg-type]
            vfconf=None,  # type: ignore[arg-type]
        )
        reader = ApiClaimReader(load_client(api.write_kubeconfig(root / "kubeconfig")))
        cfg.registry_dir.mkdir(parents=True)
        plugin = DraPlugin(cfg, store, ctx, inventory, reader, NODE)  # type: ignore[arg-type]
        plugin.start()
        kubelet = DraKubelet(cfg.registry_dir).start()
        kubelet.wait_registered(DRIVER)

        net, dpdk = (
            device_name(vf_address(pfs[1].address, 5)),
            device_name(vf_address(pfs[2].address, 8)),
        )
        stored = api.add(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": "bench", "namespace": "default"},
                "status": {
                    "allocation": {
                        "devices": {
                            "results": [
                                {"request": "net", "driver": DRIVER, "pool": NODE, "device": net},
                                {"request": "dpdk", "driver": DRIVER, "pool": NODE, "device": dpdk},
                            ],
                            "config": [
                                {
                                    "source": "FromClaim",
                                    "requests": ["net"],
                                    "opaque": {
                                        "driver": DRIVER,
                                        "parameters": {"driver": "netdev", "ifName": "net1"},
                                    },
                                },
                                {
                                    "source": "FromClaim",
                                    "requests": ["dpdk"],
                                    "opaque": {
                                        "driver": DRIVER,
                                        "parameters": {"driver": "vfio-pci", "vhostNet": True},
                                    },
                                },
                            ],
                        }
                    }
                },
            }
        )
        ref = ("default", "bench", stored["metadata"]["uid"])
        fresh: list[float] = []
        repeat: list[float] = []
        unprep: list[float] = []
        with kubelet.client(DRIVER) as c:
            for _ in range(20):  # warm up connections and caches
                c.prepare(ref)
                c.unprepare(ref)
            for _ in range(calls):
                t0 = time.perf_counter()
                answer = c.prepare(ref)
                t1 = time.perf_counter()
                c.prepare(ref)
                t2 = time.perf_counter()
                c.unprepare(ref)
                t3 = time.perf_counter()
                if answer[ref[2]].error:  # type: ignore[attr-defined]
                    raise SystemExit(f"prepare failed: {answer[ref[2]].error}")  # type: ignore[attr-defined]
                fresh.append(t1 - t0)
                repeat.append(t2 - t1)
                unprep.append(t3 - t2)
        # The floor: one checkpoint commit (sqlite WAL, synchronous=NORMAL),
        # which a prepare must make before it answers.
        commit: list[float] = []
        for _ in range(calls):
            t0 = time.perf_counter()
            store.put_dra_claim("floor", "default", "floor", [{"address": "x"}], [], "prepared")
            commit.append(time.perf_counter() - t0)
        store.delete_dra_claim("floor")
        print("DRA NodePrepareResources, two-device claim, 4 PF x 64 VF inventory, real gRPC:")
        line("prepare (GET + checkpoint + CDI spec)", fresh)
        line("prepare again (from the checkpoint)", repeat)
        line("unprepare", unprep)
        line("floor: one checkpoint commit alone", commit)
        p99 = pct(fresh, 0.99) * 1000
        print(f"  prepare p99 / target ({TARGET_P99_MS:.0f} ms): {p99 / TARGET_P99_MS:.2f}")
        print(
            "  prepare / checkpoint commit:"
            f" p50 {statistics.median(fresh) / statistics.median(commit):.2f},"
            f" p99 {pct(fresh, 0.99) / pct(commit, 0.99):.2f}"
        )
    finally:
        if kubelet is not None:
            kubelet.stop()
        if plugin is not None:
            plugin.stop()
        if store is not None:
            store.close()
        api.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
