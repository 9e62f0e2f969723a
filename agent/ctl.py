"""``nicwardenctl``: the admin CLI, a gRPC client of the agent's socket.

Exit codes: 0 ok; 1 the agent answered with an error (printed as
``<kind>: <message>``, the kind rebuilt from the agent's error trailer, so an
agent that is up but cannot do something now says ``unavailable: ...``), or
did not answer in time; 2 usage (values out of range included); 3 the
agent's socket cannot be reached (the message names the socket; a user not
allowed into the socket's 0700 directory is told "permission denied: run as
root"). Output cut short by its reader (``| head``) ends quietly with the
command's own exit code. ``observe`` streams until Ctrl-C (exit 130, no
traceback); a ``--pod`` or ``--network`` with no policed interface on the
node is a usage error (2)."""

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
from nicwarden.agent.api_status import error_from_rpc
from nicwarden.agent.errors import NicwardenError
from nicwarden.agent.paging import MAX_PAGE_SIZE
from nicwarden.cni.install import install_shim
from nicwarden.proto.nicwarden.v1 import agent_pb2 as pb
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

# What `policies --kind` offers; the agent validates it again (its list is
# the policy engine's KINDS, which the CLI does not import to stay light).
OBJECT_KINDS = ("MultiNetworkPolicy", "Namespace", "NetworkAttachmentDefinition", "Pod")

DEFAULT_SOCKET = "/run/nicwarden/agent.sock"
EXIT_OK, EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class AgentError(CtlError):
    """The agent answered with one of its errors, rebuilt with its kind."""

    def __init__(self, error: NicwardenError) -> None:
        super().__init__(f"{error.kind}: {error}", EXIT_SERVER)
        self.error = error


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
        try:
            os.stat(self.socket_path)
        except PermissionError:
            raise self._denied() from None
        except OSError:
            raise CtlError(
                f"cannot reach the nicwarden agent: socket {self.socket_path} does not exist"
                " (is nicwarden-agent running? use --socket or NICWARDEN_SOCKET)",
                EXIT_UNREACHABLE,
            ) from None
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._failure(e) from None

    def call_all(self, method: str, request: Message) -> Any:
        """A List RPC followed through every page: one answer holding all
        entries (the agent caps each page under gRPC's message limit)."""
        # The largest pages the agent gives: fewest round trips.
        request.page_size = MAX_PAGE_SIZE  # type: ignore[attr-defined]
        first = self.call(method, request)
        seen = {first.next_page_token}
        while first.next_page_token:
            request.page_token = first.next_page_token  # type: ignore[attr-defined]
            more = self.call(method, request)
            if more.next_page_token in seen:  # a broken agent must not loop us forever
                raise CtlError(
                    f"{method}: the agent repeated page token {more.next_page_token!r}",
                    EXIT_SERVER,
                )
            seen.add(more.next_page_token)
            for field, _ in more.ListFields():
                if field.is_repeated and field.message_type is not None:
                    getattr(first, field.name).extend(getattr(more, field.name))
            first.next_page_token = more.next_page_token
        return first

    def _denied(self) -> CtlError:
        # The agent keeps its socket in a 0700 directory: only root gets in.
        return CtlError(
            f"permission denied: run as root (cannot reach the nicwarden agent's socket"
            f" {self.socket_path} as uid {os.getuid()})",
            EXIT_UNREACHABLE,
        )

    def _failure(self, e: grpc.RpcError) -> CtlError:
        agent_error = error_from_rpc(e)
        if agent_error is not None:
            # The agent's handler answered: whatever the kind (an agent-side
            # "unavailable" included), the agent was reached.
            return AgentError(agent_error)
        code: grpc.StatusCode = e.code()
        if code is grpc.StatusCode.UNAVAILABLE and "permission denied" in str(e.details()).lower():
            return self._denied()
        if code is grpc.StatusCode.UNAVAILABLE:
            return CtlError(
                f"cannot reach the nicwarden agent on {self.socket_path}: {e.details()}",
                EXIT_UNREACHABLE,
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return CtlError(
                f"the nicwarden agent on {self.socket_path} did not answer within"
                f" {self.timeout:g}s (--timeout)",
                EXIT_SERVER,
            )
        # Failed in gRPC itself (say an older agent without this method).
        return CtlError(f"{code.name.lower()}: {e.details()}", EXIT_SERVER)

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
                (d.frontend or "none") if d.role == pb.DEVICE_ROLE_VF else "-",
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
    "OFFERED BY",  # a device plugin pool, "dra", or "none"
    "HEALTH",
]


def cmd_devices(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    role = {"pf": pb.DEVICE_ROLE_PF, "vf": pb.DEVICE_ROLE_VF, None: pb.DEVICE_ROLE_UNSPECIFIED}
    req = pb.ListDevicesRequest(role=role[args.role], pf=args.pf or "", driver=args.driver or "")
    if args.numa is not None:
        req.numa_node = args.numa
    resp = client.call_all("ListDevices", req)
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
    resp = client.call_all("ListPools", pb.ListPoolsRequest())
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
    resp = client.call_all(
        "ListAllocations", pb.ListAllocationsRequest(resource=args.resource or "")
    )
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


def cmd_claims(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call_all("ListClaims", pb.ListClaimsRequest())
    rows = [
        [
            f"{c.namespace}/{c.name}",
            c.uid,
            ",".join(sorted({d.pod for d in c.devices if d.pod})) or "-",
            d.device,
            d.pci_address,
            d.cdi_id or "-",
            c.state,
            f"{d.attachment} ({d.attachment_state})" if d.attachment else "-",
        ]
        for c in resp.claims
        for d in (c.devices or [pb.ClaimDevice()])
    ]
    headers = ["CLAIM", "UID", "POD", "DEVICE", "PCI", "CDI ID", "STATE", "ATTACHMENT"]
    text = table(headers, rows)
    if not resp.driver:
        text += "\n(dra: is not active on this agent)"
    return resp, text


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
    resp = client.call_all("ListAttachments", pb.ListAttachmentsRequest())
    return resp, table(ATTACHMENT_HEADERS, _attachment_rows(resp.attachments))


def cmd_attachment(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call("GetAttachment", pb.GetAttachmentRequest(container_id=args.container_id))
    text = table(ATTACHMENT_HEADERS, _attachment_rows(resp.attachments))
    for a in resp.attachments:
        text += f"\n\n{a.ifname} netns {a.netns}\n{a.result_json}"
    return resp, text


def cmd_pfs(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    resp = client.call_all("ListDevices", pb.ListDevicesRequest(role=pb.DEVICE_ROLE_PF))
    rows = []
    for d in resp.devices:
        nd = d.netdev if d.HasField("netdev") else None
        rows.append(
            [
                d.pci_address,
                nd.name if nd else "-",
                f"{d.vendor}:{d.device}",
                d.driver or "-",
                f"{d.num_vfs}/{d.total_vfs}",
                d.numa_node,
                nd.operstate if nd else "-",
                "ok" if d.healthy else f"UNHEALTHY: {d.health_detail}",
            ]
        )
    return resp, table(["PCI", "NETDEV", "ID", "DRIVER", "VFS", "NUMA", "LINK", "HEALTH"], rows)


def cmd_numvfs(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    r = client.call("SetNumVfs", pb.SetNumVfsRequest(pf=args.pf, num_vfs=args.count))
    verb = "set" if r.changed else "already"
    return r, f"{r.pf_name or r.pf}: numvfs {verb} {r.num_vfs} (was {r.previous})"


# Largest value each numeric VF attribute takes: 12-bit VLAN ID, 3-bit
# priority, rates in Mbps carried as uint32 (the netlink attribute's width).
U32_MAX = 2**32 - 1
VF_LIMITS = {"vlan": 4095, "qos": 7, "min_tx_rate": U32_MAX, "max_tx_rate": U32_MAX}
# SR-IOV's TotalVFs register is 16 bits wide.
MAX_VFS = 65535

VF_KEYS = {
    "mac": ("mac", str),
    "vlan": ("vlan", int),
    "qos": ("qos", int),
    "proto": ("vlan_proto", str),
    "spoofchk": ("spoofchk", "bool"),
    "trust": ("trust", "bool"),
    "link-state": ("link_state", str),
    "min-rate": ("min_tx_rate", int),
    "max-rate": ("max_tx_rate", int),
    "rate": ("max_tx_rate", int),
}


def parse_vf_settings(words: Sequence[str]) -> pb.VfSettings:
    """``mac 02:.. vlan 100 qos 3 spoofchk off rate 1000`` → VfSettings."""
    if not words or len(words) % 2:
        raise CtlError(f"expected KEY VALUE pairs; keys: {', '.join(VF_KEYS)}", EXIT_USAGE)
    out = pb.VfSettings()
    for key, raw in zip(words[::2], words[1::2], strict=True):
        if key not in VF_KEYS:
            raise CtlError(f"unknown VF attribute {key!r}; keys: {', '.join(VF_KEYS)}", EXIT_USAGE)
        field, kind = VF_KEYS[key]
        value: object
        if kind == "bool":
            if raw not in ("on", "off"):
                raise CtlError(f"{key}: expected on or off, got {raw!r}", EXIT_USAGE)
            value = raw == "on"
        elif kind is int:
            try:
                value = int(raw)
            except ValueError:
                raise CtlError(f"{key}: expected a number, got {raw!r}", EXIT_USAGE) from None
            if value < 0:
                raise CtlError(f"{key}: must not be negative", EXIT_USAGE)
            if value > VF_LIMITS[field]:
                raise CtlError(
                    f"{key}: {value} is out of range (0 to {VF_LIMITS[field]})", EXIT_USAGE
                )
        else:
            value = raw
        setattr(out, field, value)
    return out


def cmd_vf(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    settings = parse_vf_settings(args.settings)
    r = client.call("SetVf", pb.SetVfRequest(vf=args.vf, settings=settings))
    rows = [
        [f.name, _show(r.before, f.name), _show(r.after, f.name)]
        for f in pb.VfSettings.DESCRIPTOR.fields
    ]
    return r, f"{r.vf}\n" + table(["ATTRIBUTE", "BEFORE", "AFTER"], rows)


def _show(msg: pb.VfSettings, name: str) -> str:
    return str(getattr(msg, name)) if msg.HasField(name) else "-"


def cmd_bind(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    r = client.call(
        "BindDriver", pb.BindDriverRequest(vf=args.vf, driver=args.driver, force=args.force)
    )
    text = (
        f"{r.vf}: {r.previous or 'unbound'} -> {r.driver}"
        if r.changed
        else (f"{r.vf}: already on {r.driver}")
    )
    if r.overridden:
        text += "\nforced despite: " + "; ".join(r.overridden)
    if r.devices:
        text += "\ndevices: " + " ".join(r.devices)
    return r, text


def cmd_converge(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    r = client.call("Converge", pb.ConvergeRequest(dry_run=args.dry_run))
    lines = [f"applied: {a}" for a in r.applied] + [f"skipped: {x}" for x in r.skipped]
    lines += [f"drift: {d}" for d in r.drift]
    lines += [f"still differs: {d}" for d in r.remaining] if not args.dry_run else []
    lines.append("converged" if r.converged else "NOT converged")
    return r, "\n".join(lines)


def cmd_policies(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    # The table shows only objects with problems, so it asks for only those:
    # at 100,000 objects that is a page or two, not every object's row.
    request = pb.ListPoliciesRequest(
        problems_only=args.problems or args.output != "json",
        kind=args.kind or "",
        namespace=args.namespace or "",
    )
    resp = client.call_all("ListPolicies", request)
    rows = []
    for i in resp.interfaces:
        iso = "+".join(
            d for d, on in (("in", i.ingress_isolated), ("out", i.egress_isolated)) if on
        )
        allowed = i.counters.get("ingress_pass_policy", 0) + i.counters.get("egress_pass_policy", 0)
        dropped = i.counters.get("ingress_drop_policy", 0) + i.counters.get("egress_drop_policy", 0)
        rows.append(
            [
                i.pod,
                i.ifname,
                i.network,
                iso or "open",
                i.ingress_entries,
                i.egress_entries,
                ",".join(i.policies) or "-",
                i.generation,
                allowed,
                dropped,
                "; ".join(i.errors) or "ok",
            ]
        )
    text = table(
        [
            "POD",
            "IF",
            "NETWORK",
            "ISOLATED",
            "IN-CIDRS",
            "OUT-CIDRS",
            "POLICIES",
            "GEN",
            "ALLOWED",
            "DROPPED",
            "STATUS",
        ],
        rows,
    )
    bad = [o for o in resp.objects if not o.ok or o.warnings]
    if bad:
        text += "\n\n" + table(
            ["KIND", "OBJECT", "STATUS", "PROBLEMS"],
            [
                [
                    o.kind,
                    o.key,
                    "INVALID" if not o.ok else "WARNING",
                    "; ".join([*o.errors, *o.warnings]),
                ]
                for o in bad
            ],
        )
    text += (
        f"\n\n{resp.objects_total:,} objects followed, "
        f"{resp.objects_with_problems:,} with errors or warnings"
    )
    if not resp.datapath_ok:
        text += f"\n\ndatapath: NOT ENFORCING: {resp.datapath_error}"
    if args.verbose:
        for i in resp.interfaces:
            nonzero = [f"{k}={v}" for k, v in sorted(i.counters.items()) if v]
            if nonzero:
                text += f"\n\n{i.pod} {i.ifname} packets: " + ", ".join(nonzero)
    return resp, text


def cmd_reconcile(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    req = pb.ReconcileRequest(adopt=args.adopt or "", release=args.release or "")
    resp = client.call("Reconcile", req)
    lines = list(resp.actions) or ["nothing to do"]
    lines += [f"out of place, not offered to pods: {u}" for u in resp.unexplained]
    return resp, "\n".join(lines)


def cmd_install_cni(args: argparse.Namespace) -> int:
    """Local: copy the shim into the CNI bin dir (no agent needed)."""
    try:
        target = install_shim(Path(args.dir))
    except (OSError, ValueError) as e:
        print(f"nicwardenctl: cannot install the CNI shim into {args.dir}: {e}", file=sys.stderr)
        return EXIT_SERVER
    print(f"installed {target}")
    return EXIT_OK


Command = Callable[[Client, argparse.Namespace], tuple[Message, str]]

EXIT_INTERRUPTED = 130  # Ctrl-C on a stream: the usual 128 + SIGINT
_OBSERVE_COLUMNS = (
    ("TIME", 12),
    ("POD", 28),
    ("NETWORK", 20),
    ("DIR", 7),
    ("VERDICT", 7),
    ("REASON", 9),
    ("PROTO", 5),
    ("SOURCE", 23),
    ("DESTINATION", 23),
)
_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}


def _duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``2h``: seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    num, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(num) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30s, 5m or 1h, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def _pod_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected --pod namespace/name, got {text!r}")
    return ns, name


def _endpoint(addr: str, port: int) -> str:
    if not addr:
        return "-"
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port else addr


def observe_line(r: pb.FlowRecord) -> str:
    cells = [
        time.strftime("%H:%M:%S", time.localtime(r.time)) + f".{int(r.time * 1000) % 1000:03d}",
        f"{r.namespace}/{r.pod}" if r.pod else f"iface#{r.iface}",
        r.network or "-",
        r.direction,
        r.verdict,
        r.reason,
        _PROTO_NAMES.get(r.protocol, str(r.protocol)),
        _endpoint(r.src, r.src_port),
        _endpoint(r.dst, r.dst_port),
    ]
    line = "  ".join(c.ljust(w) for c, (_, w) in zip(cells, _OBSERVE_COLUMNS, strict=True))
    return line + "  " + (",".join(r.policies) or "-")


def cmd_observe(args: argparse.Namespace) -> int:
    """Stream flow records until Ctrl-C (exit 130, quietly) or the agent ends it."""
    ns, name = args.pod or ("", "")
    req = pb.ObserveRequest(
        pod_namespace=ns,
        pod_name=name,
        network=args.network or "",
        verdict=args.verdict or "",
        since_seconds=args.since or 0.0,
    )
    client = Client(args.socket, args.timeout)
    stream: Any = None
    try:
        client.call("GetVersion", pb.GetVersionRequest())  # reachability, as other commands
        stream = client.stub.Observe(req)
        if args.output != "json":
            _emit("  ".join(h.ljust(w) for h, w in _OBSERVE_COLUMNS) + "  POLICIES")
        for rec in stream:
            if args.output == "json":
                _emit(json.dumps(to_json(rec), sort_keys=True))
            else:
                _emit(observe_line(rec))
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        return EXIT_INTERRUPTED
    except grpc.RpcError as e:
        err = client._failure(e)
        print(f"nicwardenctl: {err}", file=sys.stderr)
        if isinstance(err, AgentError) and err.error.kind in ("invalid_argument", "not_found"):
            return EXIT_USAGE  # a filter naming nothing on this node
        return err.code
    except CtlError as e:
        print(f"nicwardenctl: {e}", file=sys.stderr)
        return e.code
    finally:
        client.close()
    return EXIT_OK


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of VFs, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("the number of VFs cannot be negative")
    if value > MAX_VFS:
        raise argparse.ArgumentTypeError(
            f"{value} VFs is out of range: SR-IOV allows at most {MAX_VFS}"
        )
    return value


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
    sub.add_parser(
        "claims", help="DRA ResourceClaims prepared on this node, their devices and pods"
    ).set_defaults(func=cmd_claims)
    sub.add_parser("attachments", help="pod attachments").set_defaults(func=cmd_attachments)
    one_att = sub.add_parser("attachment", help="one container's attachments")
    one_att.add_argument("container_id")
    one_att.set_defaults(func=cmd_attachment)
    sub.add_parser("pfs", help="SR-IOV physical functions").set_defaults(func=cmd_pfs)
    nv = sub.add_parser(
        "numvfs", help="set a PF's VF count (0 first when changing, as the kernel needs)"
    )
    nv.add_argument("pf", help="PF PCI address or netdev name")
    nv.add_argument("count", type=_count, help="number of VFs")
    nv.set_defaults(func=cmd_numvfs)
    vf = sub.add_parser("vf", help="set PF-side VF attributes")
    vf.add_argument("vf", help="VF PCI address or netdev name")
    vf.add_argument("action", choices=["set"])
    vf.add_argument(
        "settings", nargs="+", metavar="KEY VALUE", help=f"pairs; keys: {', '.join(VF_KEYS)}"
    )
    vf.set_defaults(func=cmd_vf)
    bind = sub.add_parser("bind", help="bind a VF to vfio-pci (DPDK) or back to its kernel driver")
    bind.add_argument("vf", help="VF PCI address or netdev name")
    bind.add_argument("driver", choices=["vfio-pci", "kernel"])
    bind.add_argument("--force", action="store_true", help="even if the VF is in use")
    bind.set_defaults(func=cmd_bind)
    conv = sub.add_parser("converge", help="apply the sriov: desired state now")
    conv.add_argument("--dry-run", action="store_true", help="only report drift")
    conv.set_defaults(func=cmd_converge)
    pol = sub.add_parser(
        "policies", help="policed interfaces, rules loaded, counters, object status"
    )
    pol.add_argument("-v", "--verbose", action="store_true", help="every non-zero counter")
    pol.add_argument(
        "--problems",
        action="store_true",
        help="only objects with errors or warnings (the table shows only those anyway)",
    )
    pol.add_argument("--kind", choices=sorted(OBJECT_KINDS), help="only objects of this kind")
    pol.add_argument(
        "--namespace", "-n", metavar="NS", help="only this namespace's objects and interfaces"
    )
    pol.set_defaults(func=cmd_policies)
    rec = sub.add_parser("reconcile", help="reconcile attachments and VFs with the kernel now")
    decide = rec.add_mutually_exclusive_group()
    decide.add_argument(
        "--adopt",
        metavar="VF",
        help="accept a VF that is out of place with no attachment as it is",
    )
    decide.add_argument(
        "--release",
        metavar="VF",
        help="bring such a VF back to the host netns under its home name",
    )
    rec.set_defaults(func=cmd_reconcile)
    sub.add_parser("version", help="agent and CLI versions").set_defaults(func=cmd_version)
    inst = sub.add_parser("install-cni", help="install the CNI shim (local, atomic)")
    inst.add_argument("--dir", default="/opt/cni/bin")
    inst.set_defaults(local=cmd_install_cni)
    sub.add_parser("health", help="agent component health").set_defaults(func=cmd_health)
    obs = sub.add_parser("observe", help="stream dropped-flow records until Ctrl-C")
    obs.add_argument("--pod", type=_pod_ref, metavar="NS/NAME", help="only this pod")
    obs.add_argument("--network", help="only this network (as the pod's interface names it)")
    obs.add_argument("--verdict", choices=["dropped", "allowed"])
    obs.add_argument(
        "--since", type=_duration, metavar="DURATION", help="also show kept records this recent"
    )
    obs.set_defaults(local=cmd_observe)
    for sp in sub.choices.values():
        # `nicwardenctl devices -o json` works as well as `nicwardenctl -o json devices`.
        sp.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
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
    _emit(json.dumps(to_json(msg), indent=2, sort_keys=True) if args.output == "json" else text)
    if isinstance(msg, pb.HealthResponse) and not msg.ok:
        return EXIT_SERVER
    return EXIT_OK


def _emit(text: str) -> None:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`| head`). Point stdout at /dev/null so
        # the interpreter's own flush at exit does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
