"""``nicwardenctl``: the admin CLI, a gRPC client of the agent's socket.

Exit codes: 0 ok, 1 the agent answered with an error, 2 usage, 3 the agent
cannot be reached (the message names the socket)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from nicwarden.agent import __version__
from nicwarden.cni.install import install_shim
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

DEFAULT_SOCKET = "/run/nicwarden/agent.sock"
EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def to_json(msg: Message) -> dict[str, Any]:
    return MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Client:
    def __init__(self, socket_path: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix:{socket_path}")
        self.stub = pb_grpc.AgentStub(self._channel)

    def call(self, method: str, request: Message) -> Any:
        if not os.path.exists(self.socket_path):
            raise CtlError(
                f"cannot reach the nicwarden agent: socket {self.socket_path} does not exist"
                " (is nicwarden-agent running? use --socket or NICWARDEN_SOCKET)",
                EXIT_UNREACHABLE,
            )
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CtlError(
                    f"cannot reach the nicwarden agent on {self.socket_path}: {e.details()}",
                    EXIT_UNREACHABLE,
                ) from None
            raise CtlError(f"{code.name.lower()}: {e.details()}", EXIT_SERVER) from None

    def close(self) -> None:
        self._channel.close()


ROLE_NAMES = {pb.DEVICE_ROLE_PF: "PF", pb.DEVICE_ROLE_VF: "VF"}


def _device_rows(devices: Sequence[pb.Device]) -> list[list[object]]:
    rows: list[list[object]] = []
    for d in devices:
        nd = d.netdev if d.HasField("netdev") else None
        rows.append(
            [
                d.pci_address,
                ROLE_NAMES.get(d.role, "?"),
                d.driver or "-",
                nd.name if nd else "-",
                nd.mac if nd else "-",
                nd.operstate if nd else "-",
                d.numa_node,
                d.iommu_group if d.iommu_group >= 0 else "-",
                d.pf_name or d.pf_address or f"{d.num_vfs}/{d.total_vfs} VFs",
                "ok" if d.healthy else f"UNHEALTHY: {d.health_detail}",
            ]
        )
    return rows


DEVICE_HEADERS = [
    "PCI",
    "ROLE",
    "DRIVER",
    "NETDEV",
    "MAC",
    "LINK",
    "NUMA",
    "IOMMU",
    "PF/VFS",
    "HEALTH",
]


def cmd_devices(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    role = {"pf": pb.DEVICE_ROLE_PF, "vf": pb.DEVICE_ROLE_VF, None: pb.DEVICE_ROLE_UNSPECIFIED}
    req = pb.ListDevicesRequest(role=role[args.role], pf=args.pf or "", driver=args.driver or "")
    if args.numa is not None:
        req.numa_node = args.numa
    resp = client.call("ListDevices", req)
    return resp, table(DEVICE_HEADERS, _device_rows(resp.devices))


def cmd_device(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    d = client.call("GetDevice", pb.GetDeviceRequest(id=args.id))
    lines = [f"{k}: {v}" for k, v in to_json(d).items() if k != "netdev"]
    if d.HasField("netdev"):
        lines += [f"netdev.{k}: {v}" for k, v in to_json(d.netdev).items()]
    return d, "\n".join(lines)


def cmd_version(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    v = client.call("GetVersion", pb.GetVersionRequest())
    sim = " (simulated node)" if v.simulated else ""
    text = (
        f"nicwardenctl {__version__}\nagent {v.version} api {v.api_version} on {v.node_name}{sim}\n"
        f"kernel {v.kernel}, python {v.python}"
    )
    return v, text


def cmd_health(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    h = client.call("Health", pb.HealthRequest())
    rows = [[c.name, "ok" if c.ok else "FAIL", c.detail] for c in h.components]
    text = table(["COMPONENT", "STATUS", "DETAIL"], rows)
    return h, text


def cmd_pools(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("ListPools", pb.ListPoolsRequest())
    rows = [
        [
            p.name,
            p.resource,
            f"{p.healthy_count}/{p.device_count}",
            "yes" if p.registered else "no",
            p.last_error or "-",
        ]
        for p in resp.pools
    ]
    text = table(["POOL", "RESOURCE", "HEALTHY", "REGISTERED", "LAST ERROR"], rows)
    if args.devices:
        drows = [
            [
                p.resource,
                d.id,
                d.driver or "-",
                d.pf_name or d.pf_address,
                d.numa_node,
                d.health + (f" ({d.problem})" if d.problem else ""),
            ]
            for p in resp.pools
            for d in p.devices
        ]
        text += "\n\n" + table(["RESOURCE", "DEVICE", "DRIVER", "PF", "NUMA", "HEALTH"], drows)
    for err in resp.config_errors:
        text += f"\ninvalid pool skipped: {err}"
    return resp, text


def cmd_allocations(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("ListAllocations", pb.ListAllocationsRequest(resource=args.resource or ""))
    rows = [
        [
            a.resource,
            a.device_id,
            f"{a.pod_namespace}/{a.pod_name}" if a.pod_name else "-",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.allocated_at)),
        ]
        for a in resp.allocations
    ]
    return resp, table(["RESOURCE", "DEVICE", "POD", "ALLOCATED"], rows)


def _attachment_rows(atts: Sequence[pb.Attachment]) -> list[list[object]]:
    rows: list[list[object]] = []
    for a in atts:
        ips = ""
        if a.result_json:
            ips = ",".join(ip.get("address", "") for ip in json.loads(a.result_json).get("ips", []))
        rows.append(
            [
                a.container_id[:12],
                f"{a.pod_namespace}/{a.pod_name}" if a.pod_name else "-",
                a.ifname,
                a.network,
                a.kind,
                a.device or "-",
                a.state,
                ips or "-",
            ]
        )
    return rows


ATTACHMENT_HEADERS = ["CONTAINER", "POD", "IFNAME", "NETWORK", "KIND", "DEVICE", "STATE", "IPS"]


def cmd_attachments(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("ListAttachments", pb.ListAttachmentsRequest())
    return resp, table(ATTACHMENT_HEADERS, _attachment_rows(resp.attachments))


def cmd_attachment(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("GetAttachment", pb.GetAttachmentRequest(container_id=args.container_id))
    text = table(ATTACHMENT_HEADERS, _attachment_rows(resp.attachments))
    for a in resp.attachments:
        text += f"\n\n{a.ifname} netns {a.netns}\n{a.result_json}"
    return resp, text


def cmd_reconcile(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("Reconcile", pb.ReconcileRequest())
    return resp, "\n".join(resp.actions) or "nothing to do"


def cmd_install_cni(args: argparse.Namespace) -> int:
    """Local: copy the shim into the CNI bin dir (no agent needed)."""
    try:
        target = install_shim(Path(args.dir), python=args.python)
    except (OSError, ValueError) as e:
        print(f"nicwardenctl: cannot install the CNI shim into {args.dir}: {e}", file=sys.stderr)
        return EXIT_SERVER
    print(f"installed {target}")
    return EXIT_OK


Command = Callable[[Client, argparse.Namespace], tuple[Message, str]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2, as documented
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nicwardenctl", description="Admin CLI of the nicwarden node agent.")
    p.add_argument("--socket", default=os.environ.get("NICWARDEN_SOCKET", DEFAULT_SOCKET))
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("devices", help="list PFs and VFs")
    d.add_argument("--role", choices=["pf", "vf"])
    d.add_argument("--pf", help="only this PF (PCI address or netdev) and its VFs")
    d.add_argument("--driver")
    d.add_argument("--numa", type=int)
    d.set_defaults(func=cmd_devices)
    one = sub.add_parser("device", help="show one PF or VF")
    one.add_argument("id", help="PCI address or netdev name")
    one.set_defaults(func=cmd_device)
    pools = sub.add_parser("pools", help="device plugin pools (kubelet resources)")
    pools.add_argument("--devices", action="store_true", help="list each pool's devices")
    pools.set_defaults(func=cmd_pools)
    allocs = sub.add_parser("allocations", help="devices kubelet allocated")
    allocs.add_argument("--resource")
    allocs.set_defaults(func=cmd_allocations)
    sub.add_parser("attachments", help="pod attachments").set_defaults(func=cmd_attachments)
    one_att = sub.add_parser("attachment", help="one container's attachments")
    one_att.add_argument("container_id")
    one_att.set_defaults(func=cmd_attachment)
    sub.add_parser("reconcile", help="reconcile attachments with the kernel now").set_defaults(
        func=cmd_reconcile
    )
    sub.add_parser("version", help="agent and CLI versions").set_defaults(func=cmd_version)
    inst = sub.add_parser("install-cni", help="install the CNI shim (local, atomic)")
    inst.add_argument("--dir", default="/opt/cni/bin")
    inst.add_argument("--python", default="/usr/bin/python3", help="interpreter for the shim")
    inst.set_defaults(local=cmd_install_cni)
    sub.add_parser("health", help="agent component health").set_defaults(func=cmd_health)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "local", None) is not None:
        code: int = args.local(args)
        return code
    client = Client(args.socket, args.timeout)
    try:
        msg, text = args.func(client, args)
    except CtlError as e:
        print(f"nicwardenctl: {e}", file=sys.stderr)
        return e.code
    finally:
        client.close()
    if args.output == "json":
        print(json.dumps(to_json(msg), indent=2, sort_keys=True))
    else:
        print(text)
    if isinstance(msg, pb.HealthResponse) and not msg.ok:
        return EXIT_SERVER
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
