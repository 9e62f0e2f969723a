"""Prometheus metrics on a local port (loopback unless configured otherwise)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.registry import Collector

from nicwarden.agent import metrics_catalog as C
from nicwarden.agent.errors import KINDS
from nicwarden.agent.model import Inventory

# The *_created series double every counter and histogram for a start time
# Prometheus does not use; the agent owns its process, so off for all.
disable_created_metrics()  # type: ignore[no-untyped-call]

# CNI commands the histogram names; anything else is "other" (bounded labels).
CNI_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Latencies span a cached STATUS (~1 ms) to a slow ADD with IPAM (~1 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A watch event that changes nothing should cost well under a millisecond.
EVENT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
# A CNI error's code, back to the nearest kind (cni/errors.py CNI_CODES, plus
# the codes only the CNI layer raises).
_CNI_CODE_KINDS = {
    1: "unsupported",
    2: "unsupported_field",
    3: "not_found",
    4: "invalid_argument",
    5: "host",
    6: "invalid_argument",
    7: "invalid_argument",
    11: "unavailable",
    50: "unavailable",
    51: "unavailable",
    100: "already_exists",
    101: "busy",
    102: "unsupported",
}

CniHandler = Callable[[dict[str, str], str], tuple[int, bytes]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._rpc = Counter(
            "nicwarden_rpc_total",
            "gRPC calls by method and outcome",
            ["method", "outcome"],
            registry=self.registry,
        )
        self._devices = Gauge(
            "nicwarden_devices", "PCI functions by role", ["role"], registry=self.registry
        )
        self._generation = Gauge(
            "nicwarden_inventory_generation",
            "Inventory snapshot generation",
            registry=self.registry,
        )
        self._unexplained = Gauge(
            "nicwarden_vf_unexplained",
            "VFs out of place (not home, or renamed) that no attachment explains;"
            " held back from pods until an admin adopts or releases them",
            registry=self.registry,
        )
        self._cni = self._histogram(C.CNI_DURATION, LATENCY_BUCKETS)
        self._allocate = self._histogram(C.ALLOCATE_DURATION, LATENCY_BUCKETS)
        self._watch_event = self._histogram(C.SOURCE_WATCH_EVENT, EVENT_BUCKETS)
        self._errors = Counter(
            C.ERRORS.name, C.ERRORS.help, list(C.ERRORS.labels), registry=self.registry
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _histogram(self, spec: C.MetricSpec, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(
            spec.name, spec.help, list(spec.labels), buckets=buckets, registry=self.registry
        )

    def watch_event(self, kind: str, changed: bool, seconds: float) -> None:
        self._watch_event.labels(kind, "changed" if changed else "unchanged").observe(seconds)

    def rpc(self, method: str, outcome: str) -> None:
        self._rpc.labels(method, outcome).inc()
        if outcome != "ok":
            self.error(outcome, "grpc")

    def error(self, kind: str, source: str) -> None:
        self._errors.labels(kind if kind in KINDS else "internal", source).inc()

    def add_collector(self, collector: Collector) -> None:
        """A scrape-time collector (agent/metrics_collect.py)."""
        self.registry.register(collector)

    def timed_cni(self, handler: CniHandler) -> CniHandler:
        """``handler`` with its latency observed by command and result, and
        its errors counted by kind."""

        def run(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
            command = env.get("CNI_COMMAND", "")
            command = command if command in CNI_COMMANDS else "other"
            start = time.perf_counter()
            code, out = 1, b""
            try:
                code, out = handler(env, stdin)
                return code, out
            finally:
                self._cni.labels(command, "success" if code == 0 else "error").observe(
                    time.perf_counter() - start
                )
                if code != 0:
                    self.error(_cni_error_kind(out), "cni")

        return run

    def allocate_done(self, resource: str, seconds: float, error_kind: str | None) -> None:
        """A device plugin Allocate finished (``error_kind`` None: it succeeded)."""
        self._allocate.labels(resource, "success" if error_kind is None else "error").observe(
            seconds
        )
        if error_kind is not None:
            self.error(error_kind, "deviceplugin")

    def inventory(self, inv: Inventory) -> None:
        self._devices.labels("pf").set(len(inv.pfs))
        self._devices.labels("vf").set(len(inv.vfs()))
        self._generation.set(inv.generation)

    def vf_unexplained(self, count: int) -> None:
        self._unexplained.set(count)

    def serve(self, address: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (0 picks one)."""
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _cni_error_kind(out: bytes) -> str:
    """The kind of a CNI error answer, from its code."""
    try:
        obj: Mapping[str, Any] = json.loads(out or b"{}")
        code = int(obj.get("code", 999))
    except (ValueError, TypeError, AttributeError):
        return "internal"
    return _CNI_CODE_KINDS.get(code, "internal")
