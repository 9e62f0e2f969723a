"""``nicwarden-agent``: the per-node daemon."""

from __future__ import annotations

import os

# gRPC core logs a line for every fork (IPAM delegates are exec'd); keep its
# own chatter to errors. Must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import fcntl
import logging
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import yaml

from nicwarden.agent import __version__, logs
from nicwarden.agent.api import AgentService
from nicwarden.agent.config import AgentConfig, load_config
from nicwarden.agent.devices import spec as sriov_spec
from nicwarden.agent.errors import AlreadyExists, ConfigError, NicwardenError
from nicwarden.agent.gc_policy import FullCollections
from nicwarden.agent.runtime import AgentRuntime, state_lock_path
from nicwarden.agent.sockets import claim, lock_down, release
from nicwarden.agent.thread_names import ThreadNamer
from nicwarden.proto.nicwarden.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger("nicwarden.agent")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
MAIN_TICK_S = 1.0  # reload check, full collections, thread names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nicwarden-agent", description=__doc__)
    p.add_argument("--config", type=Path, help="YAML config file (flags override it)")
    p.add_argument(
        "--simulate",
        nargs="?",
        const="2x8",
        metavar="SPEC",
        help="run on a simulated SR-IOV node: NxM (PFs x VFs, default 2x8) or a YAML file",
    )
    p.add_argument("--sim-prefix", default="nws", help="netdev name prefix of simulated links")
    p.add_argument(
        "--sim-root",
        type=Path,
        help="keep the simulated node's tree here; an existing one is adopted (agent restarts)",
    )
    p.add_argument(
        "--sim-keep",
        action="store_true",
        help="leave the simulated node up when the agent stops, for a restart to adopt",
    )
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--socket", type=Path, help="gRPC admin socket")
    p.add_argument("--cni-socket", type=Path, help="socket the CNI shim talks to")
    p.add_argument("--sysfs-root", type=Path)
    p.add_argument("--dev-root", type=Path)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument("--metrics-address")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--no-metrics", action="store_true")
    p.add_argument("--version", action="version", version=f"nicwarden-agent {__version__}")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    flags = {
        "state_dir": "stateDir",
        "socket": "socket",
        "cni_socket": "cniSocket",
        "sysfs_root": "sysfsRoot",
        "dev_root": "devRoot",
        "log_level": "logLevel",
        "log_format": "logFormat",
        "metrics_address": "metrics.address",
        "metrics_port": "metrics.port",
    }
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            out[key] = str(value) if isinstance(value, Path) else value
    if args.no_metrics:
        out["metrics.enabled"] = False
    if args.simulate is not None:
        out["simulate"] = _simulate_value(args.simulate)
    return out


def _simulate_value(spec: str) -> object:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        try:
            return yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--simulate {spec}: cannot read simulation spec: {e}") from e
    return spec


class StateLock:
    """One agent per state dir: a second one would fight over the kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyExists(
                f"another nicwarden agent (pid {holder}) holds {self.path}; refusing to start"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Agent:
    """The daemon: runtime + gRPC server + metrics, with ordered shutdown."""

    def __init__(
        self,
        config: AgentConfig,
        sim_prefix: str = "nws",
        sim_root: Path | None = None,
        sim_keep: bool = False,
    ) -> None:
        self.config = config
        self.runtime = AgentRuntime(
            config, sim_prefix=sim_prefix, sim_root=sim_root, sim_keep=sim_keep
        )
        self.lock = StateLock(state_lock_path(config.state_dir))
        self.server: Any = None
        self.metrics_port: int | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        claim(self.config.socket, "nicwarden agent")
        self.lock.acquire()
        try:
            self.runtime.start()
            self._serve_grpc()
            m = self.config.metrics
            if m.enabled:
                self.metrics_port = self.runtime.metrics.serve(m.address, m.port)
        except BaseException:
            self.stop()
            raise
        log.info(
            "agent ready",
            extra={
                "socket": str(self.config.socket),
                "metrics_port": self.metrics_port,
                **self.runtime.describe(),
            },
        )

    def _serve_grpc(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"))
        pb_grpc.add_AgentServicer_to_server(AgentService(self.runtime), server)
        path = self.config.socket
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise NicwardenError(f"cannot bind gRPC socket {path}")
        server.start()
        lock_down(path)
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=2).wait()
            self.server = None
        release(self.config.socket)
        self.runtime.metrics.stop()
        self.runtime.stop()
        self.lock.release()
        self.stopped.set()


def _reload(agent: Agent, args: argparse.Namespace) -> None:
    """SIGHUP: re-read the config; a bad one is logged and the old one kept."""
    try:
        config = load_config(args.config, overrides_from(args))
        sriov_spec.parse_sriov(config.sriov, source=str(args.config or "command line"))
    except ConfigError as e:
        log.error("reload refused, keeping the running config: %s", e)
        return
    try:
        changed = agent.runtime.reload(config)
    except NicwardenError as e:
        log.error("reload failed: %s", e)
        return
    log.info("config reloaded", extra={"changed": ",".join(changed) or "nothing live"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides_from(args))
    except ConfigError as e:
        print(f"nicwarden-agent: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Sections owned by their modules: invalid desired state stops the
        # agent before it touches anything (device plugin pools are instead
        # reported and skipped one by one, as sriov-network-device-plugin does).
        sriov_spec.parse_sriov(config.sriov, source=str(args.config or "command line"))
    except ConfigError as e:
        print(f"nicwarden-agent: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(config.log_level, config.log_format)
    log.info("starting", extra={"version": __version__, "config": str(config.to_dict())})
    agent = Agent(
        config, sim_prefix=args.sim_prefix, sim_root=args.sim_root, sim_keep=args.sim_keep
    )
    stop = threading.Event()
    reload_requested = threading.Event()
    # The main loop sleeps on this: a signal wakes it at once, and otherwise
    # it runs its ticks once a second (every wakeup of an idle agent costs
    # CPU, ~1 ms on a VM).
    wake = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()
        wake.set()

    def on_hup(_signum: int, _frame: object) -> None:
        reload_requested.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.start()
    except NicwardenError as e:
        log.error("cannot start: %s", e, extra={"kind": e.kind})
        print(f"nicwarden-agent: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    # Before the first cluster list arrives: the sync starts in agent.start's
    # threads and returns here at once.
    full_collections = FullCollections()
    full_collections.install()
    names = ThreadNamer()
    try:
        while not stop.is_set():
            wake.wait(MAIN_TICK_S)
            wake.clear()
            if stop.is_set():
                break
            if reload_requested.is_set():
                reload_requested.clear()
                _reload(agent, args)
            full_collections.tick()
            names.tick()
        agent.stop()
    finally:
        full_collections.uninstall()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
