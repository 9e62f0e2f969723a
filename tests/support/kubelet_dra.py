"""A test kubelet for DRA drivers: the plugin watcher and the DRA client.

Written against the generated registration and DRA stubs (not the plugin's
own plumbing), so a service, method or field that drifted from the protos
fails here. It behaves like kubelet where it matters:

* finds sockets in the registry directory (subdirectories too, names
  starting with ``.`` ignored), dials each, asks ``GetInfo`` with a 1 s
  deadline, validates type, name, endpoint and services, then answers
  ``NotifyRegistrationStatus`` (``false`` with the reason on a failure);
* a removed socket deregisters its driver; a re-created one (another file)
  registers again;
* picks the first service in the plugin's list that it supports, and
  calls NodePrepareResources / NodeUnprepareResources through it.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from nicwarden.deviceplugin.rpc import LOCAL_SUBCHANNELS
from nicwarden.proto.dra.v1 import api_pb2 as v1
from nicwarden.proto.dra.v1 import api_pb2_grpc as v1_grpc
from nicwarden.proto.dra.v1beta1 import api_pb2 as v1beta1
from nicwarden.proto.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from nicwarden.proto.pluginregistration.v1 import api_pb2 as reg
from nicwarden.proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc

KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Identity = tuple[int, int, int]


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


@dataclass
class Registered:
    socket: Path
    identity: Identity | None
    info: reg.PluginInfo
    service: str  # the chosen one, e.g. "v1.DRAPlugin"


@dataclass
class Attempt:
    socket: Path
    info: reg.PluginInfo | None
    error: str  # "" when registered


@dataclass
class DraKubelet:
    registry_dir: Path
    poll: float = 0.05
    services: tuple[str, ...] = KUBELET_SERVICES  # what this kubelet can call
    drivers: dict[str, Registered] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    deregistrations: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[Path, Identity | None] = {}

    # -- the plugin watcher ---------------------------------------------------

    def start(self) -> DraKubelet:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DraKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sockets(self) -> dict[Path, Identity | None]:
        found: dict[Path, Identity | None] = {}
        for root, dirs, files in os.walk(self.registry_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(root) / name
                if name.startswith("."):
                    continue
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        found[path] = _identity(path)
                except FileNotFoundError:
                    continue
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.poll)

    def scan(self) -> None:
        now = self._sockets()
        for path in list(self._seen):
            if path not in now:
                self._deregister(path)
                del self._seen[path]
        for path, ident in now.items():
            if path in self._seen and self._seen[path] == ident:
                continue
            if path in self._seen:
                # Replaced between two scans: kubelet's watcher sees the
                # delete, then the create.
                self._deregister(path)
            self._seen[path] = ident
            self._register(path, ident)

    def _deregister(self, socket: Path) -> None:
        with self._cond:
            for name, r in list(self.drivers.items()):
                if r.socket == socket:
                    del self.drivers[name]
                    self.deregistrations += 1
            self._cond.notify_all()

    def _register(self, socket: Path, ident: Identity | None) -> None:
        info: reg.PluginInfo | None = None
        error = ""
        channel = grpc.insecure_channel(f"unix://{socket}", options=LOCAL_SUBCHANNELS)
        try:
            stub = reg_grpc.RegistrationStub(channel)
            try:
                info = stub.GetInfo(reg.InfoRequest(), timeout=1)
            except grpc.RpcError as err:
                error = f"GetInfo failed: {err}"
            if info is not None:
                service, error = self._validate(info)
                if not error:
                    with self._cond:
                        self.drivers[info.name] = Registered(socket, ident, info, service)
                try:
                    stub.NotifyRegistrationStatus(
                        reg.RegistrationStatus(plugin_registered=not error, error=error),
                        timeout=5,
                    )
                except grpc.RpcError as err:
                    if not error:  # the plugin refusing a success is a failure too
                        error = f"NotifyRegistrationStatus failed: {err}"
        finally:
            channel.close()
        with self._cond:
            self.attempts.append(Attempt(socket, info, error))
            self._cond.notify_all()

    def _validate(self, info: reg.PluginInfo) -> tuple[str, str]:
        if info.type != "DRAPlugin":
            return "", f"unsupported plugin type {info.type!r}"
        if len(info.name) > 63 or not _DNS_SUBDOMAIN.match(info.name):
            return "", f"invalid driver name {info.name!r}"
        if not info.endpoint or not info.endpoint.startswith("/"):
            return "", f"endpoint {info.endpoint!r} is not an absolute path"
        if not info.supported_versions:
            return "", "no supported versions"
        for service in info.supported_versions:
            if service in self.services:
                return service, ""
        return "", f"none of {list(info.supported_versions)} is supported"

    def wait_registered(self, driver: str, count: int = 1, timeout: float = 5.0) -> Registered:
        """Until ``driver`` has been registered ``count`` times in total."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    driver in self.drivers
                    and sum(
                        1 for a in self.attempts if a.info and a.info.name == driver and not a.error
                    )
                    >= count
                ),
                timeout=timeout,
            )
            if not ok:
                raise AssertionError(f"{driver} not registered {count}x; attempts={self.attempts}")
            return self.drivers[driver]

    def wait_deregistered(self, driver: str, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: driver not in self.drivers, timeout=timeout):
                raise AssertionError(f"{driver} still registered")

    # -- the DRA client -----------------------------------------------------------

    def client(self, driver: str, service: str | None = None) -> DraClient:
        r = self.drivers[driver]
        return DraClient(Path(r.info.endpoint), service or r.service)


Claim = tuple[str, str, str]  # namespace, name, uid


class DraClient:
    def __init__(self, endpoint: Path, service: str) -> None:
        self.service = service
        self.channel = grpc.insecure_channel(f"unix://{endpoint}", options=LOCAL_SUBCHANNELS)
        if service == "v1.DRAPlugin":
            self._pb = v1
            self.stub = v1_grpc.DRAPluginStub(self.channel)
        elif service == "v1beta1.DRAPlugin":
            self._pb = v1beta1  # type: ignore[assignment]
            self.stub = v1beta1_grpc.DRAPluginStub(self.channel)  # type: ignore[assignment]
        else:
            raise ValueError(service)

    def prepare(self, *claims: Claim, timeout: float = 45.0) -> dict[str, object]:
        request = self._pb.NodePrepareResourcesRequest(
            claims=[self._pb.Claim(namespace=ns, name=n, uid=u) for ns, n, u in claims]
        )
        return dict(self.stub.NodePrepareResources(request, timeout=timeout).claims)

    def unprepare(self, *claims: Claim, timeout: float = 45.0) -> dict[str, str]:
        request = self._pb.NodeUnprepareResourcesRequest(
            claims=[self._pb.Claim(namespace=ns, name=n, uid=u) for ns, n, u in claims]
        )
        answer = self.stub.NodeUnprepareResources(request, timeout=timeout)
        return {uid: r.error for uid, r in answer.claims.items()}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> DraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_plain(entry: object) -> dict[str, object]:
    """A NodePrepareResourceResponse as plain data, to compare v1 with v1beta1."""
    devices = [
        {
            "request_names": list(d.request_names),  # type: ignore[attr-defined]
            "pool_name": d.pool_name,  # type: ignore[attr-defined]
            "device_name": d.device_name,  # type: ignore[attr-defined]
            "cdi_device_ids": list(d.cdi_device_ids),  # type: ignore[attr-defined]
        }
        for d in entry.devices  # type: ignore[attr-defined]
    ]
    return {"devices": devices, "error": entry.error}  # type: ignore[attr-defined]
