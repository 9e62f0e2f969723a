"""A ResourceClaim's status.devices entry follows the VF's attachment: written
after a CNI ADD (checked against ``ip -j addr`` in the pod) and cleared at
DEL, through the in-repo API server and the real kubernetes client.

The claim is recorded as prepared the way Prepare records it (the store's
``dra_claims`` checkpoint); the attach service is wired as the agent wires it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.attach import AttachContext, AttachService
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.k8s.api import load_client
from nicwarden.agent.sim import SimulatedNode
from nicwarden.agent.sim.vfconfig import SimVfConfigurator
from nicwarden.agent.store import Store
from nicwarden.cni.request import parse_request
from nicwarden.deviceplugin.dra.devices import device_name
from nicwarden.deviceplugin.dra.status import ClaimStatusWriter
from tests.support.k8s_apiserver import FakeApiServer, wait_until
from tests.support.oracle import run

PLUGIN_DIR = Path("/usr/lib/cni")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (PLUGIN_DIR / "host-local").exists(), reason="containernetworking-plugins missing"
    ),
]

DRIVER = "vf.nicwarden.io"
NODE = "node-a"
CLAIM_UID = "5a1c0e2e-0000-4000-8000-000000000001"
OTHER = {"driver": "gpu.example.com", "pool": "node-a", "device": "gpu-0", "conditions": []}


def pod_view(ns: str, ifname: str) -> dict[str, Any]:
    (link,) = json.loads(run("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).stdout)
    ips = [
        f"{a['local']}/{a['prefixlen']}"
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]
    return {"interfaceName": link["ifname"], "ips": ips, "hardwareAddress": link["address"]}


def test_claim_status_follows_add_and_del(
    make_sim: Callable[[str], SimulatedNode],
    netns: Callable[[], str],
    server: FakeApiServer,
    tmp_path: Path,
) -> None:
    sim = make_sim("1x2")
    vf = sim.vf_address(0, 1)
    dev = device_name(vf)
    server.add(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "net-claim", "namespace": "default", "uid": CLAIM_UID},
            "spec": {"devices": {"requests": [{"name": "vf"}]}},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "vf", "driver": DRIVER, "pool": NODE, "device": dev}
                        ]
                    }
                },
                # Another driver's entry: the list-map must keep it.
                "devices": [OTHER],
            },
        }
    )
    store = Store.open(tmp_path / "state")
    inventory = LiveInventory(sim.paths, watch_kernel=False).start()
    sim.subscribe(inventory.notify)
    writer = ClaimStatusWriter(
        load_client(server.write_kubeconfig(tmp_path / "kubeconfig")), store, DRIVER
    )
    try:
        ctx = AttachContext(
            paths=sim.paths,
            inventory=inventory,
            store=store,
            vfconf=SimVfConfigurator(sim),
            ready=inventory.ready.is_set,
        )
        ctx.on_attach.append(writer.on_attach)
        ctx.on_detach.append(writer.on_detach)
        svc = AttachService(ctx)
        writer.start()
        store.put_dra_claim(
            CLAIM_UID,
            "default",
            "net-claim",
            [{"request": "vf", "pool": NODE, "device": dev, "address": vf}],
            [f"{DRIVER}/vf={CLAIM_UID}-{dev}"],
            "prepared",
        )
        ns = netns()

        def request(command: str) -> Any:
            env = {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": "c-dra",
                "CNI_NETNS": f"/var/run/netns/{ns}",
                "CNI_IFNAME": "net1",
                "CNI_PATH": str(PLUGIN_DIR),
                "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            }
            config = {
                "cniVersion": "1.0.0",
                "name": "dra-net",
                "type": "nicwarden",
                "deviceID": vf,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(tmp_path / "ipam"),
                    "ranges": [
                        [{"subnet": "10.233.0.0/24"}],
                        [{"subnet": "fd00:233::/64"}],
                    ],
                },
            }
            return parse_request(env, json.dumps(config))

        svc.add(request("ADD"))

        def ours() -> list[dict[str, Any]]:
            claim = server.get("ResourceClaim", "default", "net-claim") or {}
            return [d for d in claim.get("status", {}).get("devices", []) if d["driver"] == DRIVER]

        wait_until(lambda: bool(ours()), what="status written")
        (entry,) = ours()
        assert (entry["pool"], entry["device"]) == (NODE, dev)
        (ready,) = entry["conditions"]
        assert (ready["type"], ready["status"]) == ("Ready", "True")
        view = pod_view(ns, "net1")
        assert len(view["ips"]) == 2
        data = entry["networkData"]
        assert data["interfaceName"] == view["interfaceName"]
        assert data["hardwareAddress"] == view["hardwareAddress"]
        assert sorted(data["ips"]) == sorted(view["ips"])
        claim = server.get("ResourceClaim", "default", "net-claim")
        assert claim is not None and OTHER in claim["status"]["devices"]
        # A repeat (a resync, a restart) writes nothing new.
        version = claim["metadata"]["resourceVersion"]
        writer.resync()
        assert writer.wait_idle()
        again = server.get("ResourceClaim", "default", "net-claim")
        assert again is not None and again["metadata"]["resourceVersion"] == version

        svc.delete(request("DEL"))
        wait_until(lambda: not ours(), what="status cleared")
        claim = server.get("ResourceClaim", "default", "net-claim")
        assert claim is not None and claim["status"]["devices"] == [OTHER]
        assert claim["status"]["allocation"]["devices"]["results"][0]["device"] == dev
    finally:
        writer.stop()
        inventory.stop()
        store.close()
