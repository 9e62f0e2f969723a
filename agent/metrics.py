"""Prometheus metrics on a local port (loopback unless configured otherwise)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from nicwarden.agent.model import Inventory


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
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def rpc(self, method: str, outcome: str) -> None:
        self._rpc.labels(method, outcome).inc()

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
