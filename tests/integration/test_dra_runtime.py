"""The agent with both front-ends on a simulated node, against the in-repo
API server: which VF each offers (ListDevices), the slices, a reload that
moves VFs between them (refused while one is in use, naming the pod), and
the prepared claims (ListClaims)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from nicwarden.agent import ctl
from nicwarden.agent.api import AgentService
from nicwarden.agent.config import load_config
from nicwarden.agent.errors import ConfigError
from nicwarden.agent.runtime import AgentRuntime
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import device_name
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc
from tests.support.k8s_apiserver import FakeApiServer, wait_until
from tests.support.oracle import host_links

pytestmark = pytest.mark.root

DRIVER = "vf.nicwarden.io"
NODE = "node-rt"


def vf(i: int) -> str:
    return f"0000:18:01.{i}"


@pytest.fixture
def runtime(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AgentRuntime]:
    monkeypatch.setenv("NODE_NAME", NODE)
    config = load_config(
        None,
        {
            "stateDir": str(tmp_path / "state"),
            "socket": str(tmp_path / "agent.sock"),
            "cniSocket": str(tmp_path / "cni.sock"),
            "kubeletDir": str(tmp_path / "kubelet"),
            "deviceInfoDir": str(tmp_path / "devinfo"),
            "simulate": "1x4",
            "policy": {"enabled": False},
            "metrics": {"enabled": False},
            "reconcileInterval": 3600,
            "kubernetes": {
                "watch": True,
                "kubeconfig": str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                "events": False,
            },
            "resourceList": [
                {"resourceName": "net", "selectors": {"pciAddresses": [vf(0), vf(1)]}}
            ],
            "dra": {
                "enabled": True,
                "driver": DRIVER,
                "selectors": {"pciAddresses": [vf(2), vf(3)]},
                "registryDir": str(tmp_path / "registry"),
                "pluginsDir": str(tmp_path / "plugins"),
                "cdiDir": str(tmp_path / "cdi"),
            },
        },
    )
    prefix = "t" + uuid.uuid4().hex[:4]
    rt = AgentRuntime(config, sim_prefix=prefix).start()
    try:
        yield rt
    finally:
        rt.stop()
        assert host_links(prefix) == set(), "the runtime left links behind"


def slice_devices(server: FakeApiServer) -> set[str]:
    with server._cond:
        slices: list[dict[str, Any]] = list(server._objects["ResourceSlice"].values())
    return {d["name"] for s in slices for d in s["spec"]["devices"]}


def offered_by(service: AgentService) -> dict[str, str]:
    resp = service.ListDevices(pb.ListDevicesRequest(role=pb.DEVICE_ROLE_VF), None)
    return {d.pci_address: d.frontend for d in resp.devices}


def pool_ids(runtime: AgentRuntime) -> set[str]:
    assert runtime.deviceplugin is not None
    return {d.id for p in runtime.deviceplugin.pools() for d in p.devices}


def test_front_ends_and_a_reload_that_moves_vfs(
    runtime: AgentRuntime, server: FakeApiServer
) -> None:
    service = AgentService(runtime)
    wait_until(lambda: slice_devices(server) == {device_name(vf(2)), device_name(vf(3))})
    assert offered_by(service) == {vf(0): "net", vf(1): "net", vf(2): "dra", vf(3): "dra"}
    assert pool_ids(runtime) == {vf(0), vf(1)}

    # Move VF 1 to DRA while kubelet has it allocated to a pod: refused.
    moved = replace(
        runtime.config,
        resource_list=[{"resourceName": "net", "selectors": {"pciAddresses": [vf(0)]}}],
        dra=DraConfig(
            enabled=True,
            driver=DRIVER,
            selectors={"pciAddresses": [vf(1), vf(2), vf(3)]},
            registry_dir=runtime.config.dra.registry_dir,
            plugins_dir=runtime.config.dra.plugins_dir,
            cdi_dir=runtime.config.dra.cdi_dir,
        ),
    )
    assert runtime.store is not None
    runtime.store.record_allocation(
        "nicwarden.io/net", [vf(1)], pod_namespace="team-a", pod_name="web-0", pod_uid="u1"
    )
    with pytest.raises(ConfigError, match=rf"VF {vf(1)} would move from net to dra.*team-a/web-0"):
        runtime.reload(moved)
    assert offered_by(service)[vf(1)] == "net"

    # Released: the same reload goes through, and both front-ends follow.
    runtime.store.release_allocation("nicwarden.io/net", vf(1))
    assert "dra" in runtime.reload(moved)
    assert offered_by(service)[vf(1)] == "dra"
    wait_until(lambda: device_name(vf(1)) in slice_devices(server), what="slice")
    wait_until(lambda: pool_ids(runtime) == {vf(0)}, what="pool")

    # A reload that would offer a VF twice is refused, naming both.
    both = replace(
        moved,
        resource_list=[{"resourceName": "net", "selectors": {"pciAddresses": [vf(0), vf(1)]}}],
    )
    with pytest.raises(ConfigError, match=rf"VF {vf(1)} is selected by device plugin pool 'net'"):
        runtime.reload(both)


def test_list_claims_shows_the_checkpoint(
    runtime: AgentRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runtime.store is not None
    cdi_id = f"{DRIVER}/vf=uid-1-{device_name(vf(2))}"
    runtime.store.put_dra_claim(
        "uid-1",
        "team-a",
        "claim-a",
        [
            {
                "request": "vf",
                "pool": NODE,
                "device": device_name(vf(2)),
                "address": vf(2),
                "cdiName": f"uid-1-{device_name(vf(2))}",
            }
        ],
        [cdi_id],
        "prepared",
    )
    resp = AgentService(runtime).ListClaims(pb.ListClaimsRequest(), None)
    assert resp.driver == DRIVER
    (claim,) = resp.claims
    assert (claim.namespace, claim.name, claim.state) == ("team-a", "claim-a", "prepared")
    (dev,) = claim.devices
    assert (dev.pci_address, dev.cdi_id, dev.attachment) == (vf(2), cdi_id, "")

    # The CLI, over the agent's gRPC socket.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AgentServicer_to_server(AgentService(runtime), server)
    sock = tmp_path / "api.sock"
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        assert ctl.main(["--socket", str(sock), "claims"]) == 0
        header, row = capsys.readouterr().out.splitlines()[:2]
        assert header.split() == [
            "CLAIM",
            "UID",
            "POD",
            "DEVICE",
            "PCI",
            "CDI",
            "ID",
            "STATE",
            "ATTACHMENT",
        ]
        assert row.split() == [
            "team-a/claim-a",
            "uid-1",
            "-",
            device_name(vf(2)),
            vf(2),
            cdi_id,
            "prepared",
            "-",
        ]
        assert ctl.main(["--socket", str(sock), "devices", "--role", "vf"]) == 0
        lines = capsys.readouterr().out.splitlines()
        column = lines[0].index("OFFERED BY")
        offered = {line.split()[0]: line[column:].split()[0] for line in lines[1:]}
        assert offered == {vf(0): "net", vf(1): "net", vf(2): "dra", vf(3): "dra"}
    finally:
        server.stop(0)
