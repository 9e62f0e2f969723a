"""Per-VF metrics on a simulated node: real packets through attached VFs
raise the exporter-compatible ``sriov_vf_*`` series, the pod join works,
CNI latency is observed and the pool gauges match the device plugin."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nicwarden.agent.config import load_config
from nicwarden.agent.errors import NotFound, Unsupported
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.vfstats import NetlinkVfStatsReader, VfRef
from nicwarden.agent.runtime import AgentRuntime
from tests.support.cni_runtime import ensure_shim_built, invoke, netns_path
from tests.support.kubelet_fake import FakeKubelet
from tests.support.oracle import host_links, run, unique
from tests.support.traffic import in_netns

pytestmark = [pytest.mark.root]

Samples = list[tuple[str, dict[str, str], float]]


def vf(i: int) -> str:
    return f"0000:18:01.{i}"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[AgentRuntime]:
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
            "resourceList": [
                {"resourceName": "net", "selectors": {"pciAddresses": [vf(0), vf(1), vf(2)]}}
            ],
        },
    )
    prefix = "m" + uuid.uuid4().hex[:4]
    kubelet = FakeKubelet(tmp_path / "kubelet")
    kubelet.start()
    rt = AgentRuntime(config, sim_prefix=prefix).start()
    rt.kubelet = kubelet  # type: ignore[attr-defined]
    try:
        yield rt
    finally:
        rt.stop()
        kubelet.stop()
        assert host_links(prefix) == set(), "the runtime left links behind"


def scrape(rt: AgentRuntime) -> Samples:
    text = generate_latest(rt.metrics.registry).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def attach(rt: AgentRuntime, tmp: Path, pod: str, device: str, ns: str) -> str:
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": str(rt.config.cni_socket),
        "deviceID": device,
        "ipam": {"type": "host-local", "subnet": "10.57.0.0/24", "dataDir": str(tmp / "ipam")},
    }
    out = invoke(
        str(ensure_shim_built()),
        "ADD",
        conf,
        container=f"c-{pod}",
        netns=netns_path(ns),
        ifname="net1",
        pod=pod,
        namespace="prod",
    )
    assert out.code == 0, out.stdout + out.stderr
    return str(out.json["ips"][0]["address"].split("/")[0])


def send_udp(ns: str, dst: str, count: int) -> None:
    def blast() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(count):
                s.sendto(b"x" * 64, (dst, 9))

    in_netns(ns, blast)


def test_vf_packets_pod_join_cni_latency_and_pools(
    runtime: AgentRuntime, tmp_path: Path, netns: Callable[[], str]
) -> None:
    before = scrape(runtime)
    assert value(before, "sriov_vf_tx_packets", pciAddr=vf(0)) >= 0
    a_ns, b_ns = netns(), netns()
    attach(runtime, tmp_path, "a", vf(0), a_ns)
    b_ip = attach(runtime, tmp_path, "b", vf(1), b_ns)
    # A pod's VF is away from the host netns: still counted, by identity.
    start = scrape(runtime)
    send_udp(a_ns, b_ip, 1000)
    after = scrape(runtime)

    labels = {"pf": runtime.sim.pf_name(0) if runtime.sim else "", "numa_node": "0"}
    tx = value(after, "sriov_vf_tx_packets", pciAddr=vf(0), vf="0", **labels)
    rx = value(after, "sriov_vf_rx_packets", pciAddr=vf(1), vf="1", **labels)
    assert tx - value(start, "sriov_vf_tx_packets", pciAddr=vf(0)) >= 1000
    assert rx - value(start, "sriov_vf_rx_packets", pciAddr=vf(1)) >= 1000
    assert value(after, "sriov_vf_tx_bytes", pciAddr=vf(0)) >= 1000 * 64

    # sriov_vf_tx_packets * on(pciAddr) group_left(pod,namespace) sriov_kubepoddevice
    pods = {
        lab["pciAddr"]: (lab["namespace"], lab["pod"], lab["container"])
        for n, lab, _v in after
        if n == "sriov_kubepoddevice"
    }
    joined = {
        (pods[lab["pciAddr"]][0], pods[lab["pciAddr"]][1]): v
        for n, lab, v in after
        if n == "sriov_vf_tx_packets" and lab["pciAddr"] in pods
    }
    assert set(joined) == {("prod", "a"), ("prod", "b")}
    assert joined[("prod", "a")] == tx
    assert pods[vf(0)][2] == "c-a"

    # Each ADD was timed, under its command and result.
    assert (
        value(
            after, "nicwarden_cni_request_duration_seconds_count", command="ADD", result="success"
        )
        == 2
    )

    # Pool gauges are the device plugin's own view.
    assert runtime.deviceplugin is not None
    for pool in runtime.deviceplugin.pools():
        assert value(after, "nicwarden_pool_devices", resource=pool.resource) == pool.device_count
        assert (
            value(after, "nicwarden_pool_healthy_devices", resource=pool.resource)
            == pool.healthy_count
        )
        assert value(after, "nicwarden_pool_allocated_devices", resource=pool.resource) == 0
    assert value(after, "nicwarden_scrape_collector_success", collector="vf_stats") == 1

    # Allocate through kubelet's gRPC: timed, and the pool counts it allocated.
    resource = "nicwarden.io/net"
    conn = runtime.kubelet.wait_for_registration(resource)  # type: ignore[attr-defined]
    conn.allocate([vf(2)])
    with pytest.raises(grpc.RpcError, match="unknown device IDs"):
        conn.allocate(["0000:99:00.0"])
    allocated = scrape(runtime)
    alloc = "nicwarden_deviceplugin_allocate_duration_seconds_count"
    assert value(allocated, alloc, resource=resource, result="success") == 1
    assert value(allocated, alloc, resource=resource, result="error") == 1
    assert value(allocated, "nicwarden_pool_allocated_devices", resource=resource) == 1
    errors = {
        lab["kind"]: v
        for n, lab, v in allocated
        if n == "nicwarden_errors_total" and lab["source"] == "deviceplugin"
    }
    assert errors == {"invalid_argument": 1}

    # DEL: timed too, and the VF no longer joins to the pod.
    conf = {
        "cniVersion": "1.0.0",
        "name": "sriov-net",
        "type": "nicwarden",
        "agentSocket": str(runtime.config.cni_socket),
        "deviceID": vf(0),
        "ipam": {"type": "host-local", "subnet": "10.57.0.0/24", "dataDir": str(tmp_path / "ipam")},
    }
    out = invoke(
        str(ensure_shim_built()),
        "DEL",
        conf,
        container="c-a",
        netns=netns_path(a_ns),
        ifname="net1",
        pod="a",
        namespace="prod",
    )
    assert out.code == 0, out.stdout
    final = scrape(runtime)
    assert (
        value(
            final, "nicwarden_cni_request_duration_seconds_count", command="DEL", result="success"
        )
        == 1
    )
    assert {lab["pod"] for n, lab, _v in final if n == "sriov_kubepoddevice"} == {"b"}


def test_pf_reader_on_a_link_without_vfs_says_so(tmp_path: Path) -> None:
    """The kernel answers the VF-list request for any link; one that is not
    a PF carries no VF list, and the reader names that instead of serving
    zeros."""
    name = unique("nwq")
    run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    try:
        reader = NetlinkVfStatsReader(HostPaths(sys=tmp_path))
        with pytest.raises(Unsupported, match="reports no VF statistics"):
            reader.read(name, "0000:00:00.0", [VfRef(0, "0000:00:00.1")])
        with pytest.raises(NotFound):
            reader.read(name + "x", "0000:00:00.0", [])
    finally:
        run("ip", "link", "del", name, check=False)
