"""Test doubles for the device plugin: a kubelet and an in-memory inventory.

``FakeKubelet`` is written against the generated v1beta1 stubs (not the
plugin's own plumbing), so a method name or field number that drifted from
the proto shows up as a failure. It behaves like the kubelet's device manager
where it matters: serves ``Registration`` on ``kubelet.sock``, validates the
version and resource name, dials the plugin's endpoint back, asks for its
options and keeps a ListAndWatch stream open; on restart it deletes every
socket in the directory, as kubelet does to make plugins re-register.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from nicwarden.agent.host.discovery import with_dev_nodes
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.model import PF, VF, Inventory, NetdevState, PciFunction
from nicwarden.deviceplugin.rpc import LOCAL_SUBCHANNELS
from nicwarden.proto.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_extended_resource_name(name: str) -> bool:
    """Kubelet's IsExtendedResourceName: ``<domain>/<name>`` outside kubernetes.io."""
    domain, slash, rest = name.partition("/")
    if (
        not slash
        or not _DNS_SUBDOMAIN.match(domain)
        or not _QUALIFIED.match(rest)
        or len(rest) > 63
    ):
        return False
    return domain != "kubernetes.io" and not domain.endswith(".kubernetes.io")


class PluginConnection:
    """Kubelet's client for one registered plugin, with its ListAndWatch stream."""

    def __init__(self, plugin_dir: Path, request: api_pb2.RegisterRequest) -> None:
        self.request = request
        self.resource = request.resource_name
        # As kubelet's fresh Go ClientConn per dial: gRPC Python would share a
        # subchannel with the previous connection to this path, still in
        # backoff after the old plugin went away, and fail at once with its
        # stale ENOENT.
        self.channel = grpc.insecure_channel(
            f"unix://{plugin_dir / request.endpoint}", options=LOCAL_SUBCHANNELS
        )
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.options: api_pb2.DevicePluginOptions | None = None
        self.updates: list[tuple[float, list[api_pb2.Device]]] = []
        self.stream_error: grpc.RpcError | None = None
        self.stream_ended = False
        self._cond = threading.Condition()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.options = self.stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
            self._stream = self.stub.ListAndWatch(api_pb2.Empty())
            for response in self._stream:
                with self._cond:
                    self.updates.append((time.monotonic(), list(response.devices)))
                    self._cond.notify_all()
        except grpc.RpcError as err:
            self.stream_error = err
        except ValueError:  # closed by close() before the stream opened
            pass
        finally:
            with self._cond:
                self.stream_ended = True
                self._cond.notify_all()

    def latest(self) -> list[api_pb2.Device] | None:
        with self._cond:
            return self.updates[-1][1] if self.updates else None

    def wait_for(
        self, predicate: Callable[[list[api_pb2.Device]], bool], timeout: float = 5.0
    ) -> list[api_pb2.Device]:
        """Block until the latest device list satisfies ``predicate``."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: bool(self.updates) and predicate(self.updates[-1][1]), timeout=timeout
            )
            if not ok:
                last = self.updates[-1][1] if self.updates else None
                raise AssertionError(
                    f"{self.resource}: no matching ListAndWatch update; last={last};"
                    f" stream error {self.stream_error!r}"
                )
            return self.updates[-1][1]

    def wait_ended(self, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.stream_ended, timeout=timeout)

    def allocate(self, *containers: Iterable[str]) -> api_pb2.AllocateResponse:
        request = api_pb2.AllocateRequest(
            container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=list(c)) for c in containers
            ]
        )
        return self.stub.Allocate(request, timeout=5)

    def preferred(
        self, available: Iterable[str], must_include: Iterable[str], size: int
    ) -> list[str]:
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        return list(
            self.stub.GetPreferredAllocation(request, timeout=5).container_responses[0].deviceIDs
        )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.channel.close()
        self._thread.join(timeout=5)


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:  # noqa: N802
        return self.kubelet._register(request, context)


class FakeKubelet:
    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / "kubelet.sock"
        self.reject: str | None = None  # set to refuse every registration with this message
        self.attempts: list[api_pb2.RegisterRequest] = []
        self.registrations: list[tuple[float, api_pb2.RegisterRequest]] = []
        self.connections: dict[str, PluginConnection] = {}
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    # -- lifecycle --
    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        with self._cond:
            connections = list(self.connections.values())
            self.connections.clear()
        for conn in connections:
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def restart(self, wipe: bool = True) -> None:
        """Like a kubelet restart: forget plugins, delete every socket (unless
        ``wipe`` is False), serve anew on a new kubelet.sock."""
        self.stop()
        if wipe:
            for entry in self.plugin_dir.iterdir():
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
        self.start()

    # -- registration --
    def _register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:
        with self._cond:
            self.attempts.append(request)
            self._cond.notify_all()
            reject = self.reject
        if reject is not None:
            context.abort(grpc.StatusCode.UNKNOWN, reject)
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.UNKNOWN, f"unsupported version {request.version!r}")
        if not is_extended_resource_name(request.resource_name):
            context.abort(
                grpc.StatusCode.UNKNOWN, f"invalid resource name {request.resource_name!r}"
            )
        if "/" in request.endpoint or not (self.plugin_dir / request.endpoint).exists():
            context.abort(
                grpc.StatusCode.UNKNOWN, f"endpoint {request.endpoint!r} not in {self.plugin_dir}"
            )
        # Like kubelet: answer first, connect back asynchronously.
        threading.Thread(target=self._connect, args=(request,), daemon=True).start()
        return api_pb2.Empty()

    def _connect(self, request: api_pb2.RegisterRequest) -> None:
        conn = PluginConnection(self.plugin_dir, request)
        with self._cond:
            old = self.connections.get(request.resource_name)
            self.connections[request.resource_name] = conn
            self.registrations.append((time.monotonic(), request))
            self._cond.notify_all()
        if old is not None:
            old.close()

    def wait_for_registration(
        self, resource: str, count: int = 1, timeout: float = 5.0
    ) -> PluginConnection:
        """Wait until ``resource`` has registered ``count`` times; its connection."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    sum(1 for _, r in self.registrations if r.resource_name == resource) >= count
                ),
                timeout=timeout,
            )
            if not ok:
                raise AssertionError(f"{resource} did not register {count} time(s) in {timeout}s")
            return self.connections[resource]

    def wait_for_attempts(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.attempts) >= count, timeout=timeout):
                raise AssertionError(
                    f"only {len(self.attempts)} registration attempts in {timeout}s"
                )


# -- inventory doubles ---------------------------------------------------------


class MemoryInventory:
    """An InventorySource publishing hand-built snapshots. With ``dev``, each
    published snapshot gets its dev-root facts (vfio nodes, vhost-net/tun)
    read from that directory, as the live inventory's scan does."""

    def __init__(self, inventory: Inventory, dev: Path | None = None) -> None:
        self._dev = dev
        self._inventory = self._discovered(inventory)
        self._subscribers: list[Callable[[Inventory], None]] = []
        self._lock = threading.Lock()

    def snapshot(self) -> Inventory:
        with self._lock:
            return self._inventory

    def subscribe(self, callback: Callable[[Inventory], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, inventory: Inventory, notify: bool = True) -> None:
        """Make ``inventory`` current (next generation); ``notify=False`` changes
        the snapshot without telling subscribers, to prove who reads it."""
        inventory = self._discovered(inventory)
        with self._lock:
            inventory = replace(inventory, generation=self._inventory.generation + 1)
            self._inventory = inventory
            subscribers = list(self._subscribers) if notify else []
        for callback in subscribers:
            callback(inventory)

    def _discovered(self, inventory: Inventory) -> Inventory:
        return (
            inventory if self._dev is None else with_dev_nodes(HostPaths(dev=self._dev), inventory)
        )

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)


def netdev(
    name: str, operstate: str = "up", link_type: str = "ether", ifindex: int = 10
) -> NetdevState:
    return NetdevState(
        name, "02:00:00:00:00:01", 1500, operstate, operstate == "up", link_type, ifindex
    )


@dataclass
class VfSpec:
    index: int
    driver: str | None = "iavf"
    iommu_group: int | None = None
    netdev_state: str | None = "up"  # None: no host netdev
    numa: int | None = None  # default: the PF's
    device: str = "1889"


@dataclass
class PfSpec:
    address: str  # "0000:18:00.0"
    name: str | None = "ens1f0"
    numa: int = 0
    operstate: str = "up"
    vendor: str = "8086"
    device: str = "1592"
    vfs: list[VfSpec] = field(default_factory=list)


def vf_address(pf_address: str, index: int) -> str:
    """VF addresses below the PF: bus+1, 8 functions per device slot."""
    domain, bus, devfn = pf_address.split(":")
    return f"{domain}:{int(bus, 16) + 1:02x}:{index // 8:02x}.{index % 8}"


def default_group(address: str) -> int:
    """A distinct IOMMU group per PCI address (VFs usually get one each)."""
    _, bus, devfn = address.split(":")
    dev, fn = devfn.split(".")
    return int(bus, 16) * 256 + int(dev, 16) * 8 + int(fn)


def build_inventory(
    pfs: Iterable[PfSpec], generation: int = 0, dev: Path | None = None
) -> Inventory:
    """An inventory as discovery would report it; with ``dev``, the dev-root
    facts (vfio group nodes, vhost-net/tun) come from that directory, as a
    scan reads them, else every node is taken as present."""
    out: list[PF] = []
    for p in pfs:
        pf_fn = PciFunction(
            p.address,
            p.vendor,
            p.device,
            "ice",
            p.numa,
            None,
            netdev(p.name, p.operstate) if p.name else None,
        )
        vfs: list[VF] = []
        for v in p.vfs:
            address = vf_address(p.address, v.index)
            nd = None
            if v.netdev_state is not None:
                nd = netdev(f"{p.name or 'pf'}v{v.index}", v.netdev_state)
            fn = PciFunction(
                address,
                p.vendor,
                v.device,
                v.driver,
                p.numa if v.numa is None else v.numa,
                v.iommu_group if v.iommu_group is not None else default_group(address),
                nd,
            )
            node = (
                f"/dev/vfio/{fn.iommu_group}" if fn.is_vfio and fn.iommu_group is not None else None
            )
            vfs.append(VF(fn, p.address, p.name, v.index, node))
        out.append(PF(pf_fn, total_vfs=64, num_vfs=len(vfs), vfs=tuple(vfs)))
    inventory = Inventory(tuple(out), generation)
    return inventory if dev is None else with_dev_nodes(HostPaths(dev=dev), inventory)


def kernel_vfs(count: int, start: int = 0) -> list[VfSpec]:
    return [VfSpec(i) for i in range(start, start + count)]


def vfio_vfs(count: int, start: int = 0) -> list[VfSpec]:
    return [VfSpec(i, driver="vfio-pci", netdev_state=None) for i in range(start, start + count)]


def make_vfio_nodes(dev_root: Path, groups: Iterable[int], noiommu: bool = False) -> None:
    vfio = dev_root / "vfio"
    vfio.mkdir(parents=True, exist_ok=True)
    (vfio / "vfio").touch()
    for g in groups:
        (vfio / (f"noiommu-{g}" if noiommu else str(g))).touch()


def short_tmpdir(prefix: str = "nw") -> Path:
    """A temp dir short enough for unix socket paths (108-byte limit)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02
) -> float:
    """Poll ``predicate``; return the seconds it took, or raise on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met in {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start


def socket_files(directory: Path) -> list[str]:
    return sorted(e.name for e in directory.iterdir() if stat.S_ISSOCK(os.lstat(e).st_mode))
