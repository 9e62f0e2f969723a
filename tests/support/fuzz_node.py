"""A simulated node for the fuzzing harness, and the invariant every input
must leave true.

The oracle is independent of the agent's own reads: VFs are located by the
simulator's identity alias (``nwsim:<prefix>:<bdf>``) with ``ip -j link`` in
the host and in every netns the harness made, leases are read from
host-local's data directory, and host addresses and routes come from ``ip``.
The agent's side comes over gRPC in-process (the CLI's start-up would make
every check cost ~0.3 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc
from tests.support.agent_proc import Running, cleanup_node, kill_agent, start_agent, stop_agent
from tests.support.oracle import run

FUZZ_SUBNET = "10.231.0.0/24"
NETWORK = "fuzznet"


@dataclass(frozen=True)
class Located:
    """Where a VF's netdev is: ``netns`` None means the host's."""

    netns: str | None
    name: str


@dataclass
class HostView:
    addresses: set[tuple[str, str]] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)


def _json(cmd: list[str]) -> Any:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    return json.loads(out) if out.strip() else []


def host_view(exclude_prefix: str) -> HostView:
    """Global addresses and routes of the host netns. Links other tests add
    and remove concurrently come and go; ours (the sim's) must never carry an
    address, so they are included."""
    view = HostView()
    for link in _json(["ip", "-j", "addr", "show"]):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                view.addresses.add((link["ifname"], f"{a['local']}/{a['prefixlen']}"))
    for fam in ("-4", "-6"):
        for r in _json(["ip", "-j", fam, "route", "show", "table", "all"]):
            dev = r.get("dev", "")
            if r.get("dst", "").startswith(("fe80", "ff00", "multicast")):
                continue
            if r.get("type") in (
                "local",
                "broadcast",
                "multicast",
                "anycast",
            ) and not dev.startswith(exclude_prefix):
                continue
            view.routes.add(
                f"{r.get('dst')} via {r.get('gateway', '-')} dev {dev} {r.get('table', '')}"
            )
    return view


class FuzzNode:
    """One agent on a 1×4 simulated node with a manifests directory, three
    pod netns, and a gRPC client for checks."""

    VFS = tuple(f"0000:18:01.{i}" for i in range(4))
    PF = "0000:18:00.0"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.manifests = tmp / "manifests"
        self.manifests.mkdir()
        self.ipam_dir = tmp / "ipam"
        self.netns = [f"nwf-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for ns in self.netns:
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        config = tmp / "agent.yaml"
        config.write_text(f"manifestsDir: {self.manifests}\nreconcileInterval: 3600\n")
        try:
            self.agent: Running = start_agent(tmp, "--config", str(config), spec="1x4")
        except BaseException:
            self._drop_netns()  # close() never runs for a node that did not start
            raise
        self.prefix = self.agent.prefix
        self._channel = grpc.insecure_channel(f"unix:{self.agent.sock}")
        self.stub = pb_grpc.AgentStub(self._channel)
        self.baseline = host_view(self.prefix)

    # -- plumbing ---------------------------------------------------------

    def netns_path(self, i: int) -> str:
        return f"/var/run/netns/{self.netns[i]}"

    def config(self, **over: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "nicwarden",
            "agentSocket": str(self.agent.cni_sock),
            "deviceID": self.VFS[0],
            "ipam": {"type": "host-local", "subnet": FUZZ_SUBNET, "dataDir": str(self.ipam_dir)},
        }
        conf.update(over)
        return conf

    def close(self) -> None:
        try:
            self.release_all()
        finally:
            self._channel.close()
            if self.agent.proc.poll() is None:
                stop_agent(self.agent)
            else:
                kill_agent(self.agent)
            self._drop_netns()
            cleanup_node(self.prefix)

    def _drop_netns(self) -> None:
        for ns in self.netns:
            run("ip", "netns", "del", ns, check=False)

    def release_all(self) -> None:
        """DEL every attachment the agent holds, through the real shim."""
        from tests.support.agent_proc import SHIM
        from tests.support.cni_runtime import invoke

        for att in self.attachments():
            invoke(
                SHIM,
                "DEL",
                self.config(deviceID=att["device"]),
                container=att["container_id"],
                netns=att["netns"],
                ifname=att["ifname"],
            )

    # -- the agent's side -------------------------------------------------

    def answers(self) -> bool:
        try:
            self.stub.GetVersion(pb.GetVersionRequest(), timeout=10)
            return True
        except grpc.RpcError:
            return False

    def attachments(self) -> list[dict[str, Any]]:
        """Every attachment, following pages where the API pages."""
        rows: list[dict[str, Any]] = []
        req = pb.ListAttachmentsRequest()
        while True:
            resp = self.stub.ListAttachments(req, timeout=10)
            rows += MessageToDict(resp, preserving_proto_field_name=True).get("attachments", [])
            token = getattr(resp, "next_page_token", "")
            if not token:
                return rows
            req = pb.ListAttachmentsRequest(page_token=token)

    def policies(self) -> dict[str, Any]:
        resp = self.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30)
        out: dict[str, Any] = MessageToDict(resp, preserving_proto_field_name=True)
        return out

    # -- the kernel's side ------------------------------------------------

    def locate_vfs(self) -> dict[str, list[Located]]:
        """Every netdev carrying one of our VFs' identity, wherever it is."""
        tag = f"nwsim:{self.prefix}:"
        found: dict[str, list[Located]] = {}
        places: list[str | None] = [None, *self.netns]
        for ns in places:
            cmd = (
                ["ip", "-j", "-d", "link", "show"]
                if ns is None
                else ["ip", "-n", ns, "-j", "-d", "link", "show"]
            )
            for link in _json(cmd):
                alias = link.get("ifalias", "")
                if alias.startswith(tag):
                    found.setdefault(alias[len(tag) :], []).append(Located(ns, link["ifname"]))
        return found

    def leases(self) -> set[str]:
        d = self.ipam_dir / NETWORK
        if not d.is_dir():
            return set()
        return {p.name for p in d.iterdir() if not p.name.startswith(("last_reserved_ip", "lock"))}

    # -- the invariant ----------------------------------------------------

    def check(self) -> None:
        """A specific error or success was already checked by the caller;
        here: every VF home or attached exactly as the store says, no lease
        without an attachment, no host address or route changed, and the
        agent still answers."""
        assert self.answers(), "the agent stopped answering"
        atts = self.attachments()
        assert all(a.get("state") == "ready" for a in atts), f"half-done attachment rows: {atts}"
        by_device = {a["device"]: a for a in atts if a.get("kind", "sriov") == "sriov"}
        assert len(by_device) == len([a for a in atts if a.get("kind", "sriov") == "sriov"]), (
            f"one VF in two attachments: {atts}"
        )
        where = self.locate_vfs()
        for i, vf in enumerate(self.VFS):
            places = where.get(vf, [])
            assert len(places) == 1, f"VF {vf} found {len(places)} times: {places}"
            loc = places[0]
            att = by_device.get(vf)
            if att is None:
                assert loc == Located(None, f"{self.prefix}0v{i}"), (
                    f"VF {vf} is not home and no attachment explains it: {loc}"
                )
            else:
                ns_name = os.path.basename(att["netns"])
                assert loc == Located(ns_name, att["ifname"]), (
                    f"VF {vf} is at {loc}, the store says {ns_name}/{att['ifname']}"
                )
        ips = set()
        for a in atts:
            result = json.loads(a.get("result_json") or "{}")
            ips |= {ip["address"].split("/")[0] for ip in result.get("ips", [])}
        stray = self.leases() - ips
        assert not stray, f"leases without an attachment: {stray}"
        now = host_view(self.prefix)
        added = now.addresses - self.baseline.addresses
        assert not {
            a for a in added if a[0].startswith(self.prefix) or a[1].startswith("10.231.")
        }, f"host addresses added: {added}"
        gone = {
            a
            for a in self.baseline.addresses - now.addresses
            if a[0] in {x[0] for x in now.addresses}
        }
        assert not gone, f"host addresses removed: {gone}"
        new_routes = {
            r
            for r in now.routes - self.baseline.routes
            if "10.231." in r or f"dev {self.prefix}" in r
        }
        assert not new_routes, f"host routes added: {new_routes}"


@contextmanager
def fuzz_node(tmp: Path) -> Iterator[FuzzNode]:
    node = FuzzNode(tmp)
    try:
        yield node
    finally:
        node.close()


def wait_until(pred: Any, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
