"""Objects from the Kubernetes API server: one list+watch loop per kind
(``reflector.py``), all feeding one ledger so the sink sees a single,
serialised stream. Pods are watched in every namespace (policy peers can be
anywhere), as one stream rather than one per namespace.

``pod_metadata_only`` follows pods as ``PartialObjectMetadata`` (labels,
annotations, identity), a fraction of their wire size. The policy engine
also reads three things from a pod's spec and status; with metadata only,
two are asked of the server as a field selector instead (finished pods and
hostNetwork pods are never peers, so they are left out), and the third,
named container ports, is lost: a rule naming a port then resolves it on no
pod, which only narrows what it allows. Hence off by default.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicwarden.agent.backoff import BackoffPolicy

from ..errors import ConfigError
from ._kube import client, config
from .kinds import KINDS, RESOURCES
from .ledger import Ledger
from .reflector import EventTimer, Reflector, WatchSettings
from .source import Sink, SourceProblem

log = logging.getLogger(__name__)

# How long stop() waits for the loops to notice before giving up on them
# (they are daemon threads; a stuck one cannot keep the process alive).
_STOP_TIMEOUT = 10.0
# The pods the engine can use, for when it cannot see their phase or
# hostNetwork itself (objects.Pod.is_peer_candidate). A pod that finishes
# leaves the selection, so its watch delivers DELETED.
PEER_PODS = "status.phase!=Succeeded,status.phase!=Failed,spec.hostNetwork=false"


def load_client(kubeconfig: Path | None = None) -> Any:
    """An ``ApiClient``: the in-cluster service account when running in a pod
    (``KUBERNETES_SERVICE_HOST`` set) and no kubeconfig was given, else the
    kubeconfig (``None``: ``$KUBECONFIG`` or ``~/.kube/config``)."""
    configuration = client.Configuration()
    in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                client_configuration=configuration,
                persist_config=False,
            )
    except (config.ConfigException, OSError, ValueError) as exc:
        source = (
            "in-cluster config"
            if in_cluster
            else str(kubeconfig)
            if kubeconfig is not None
            else "the default kubeconfig"
        )
        raise ConfigError(f"cannot load Kubernetes client config from {source}: {exc}") from exc
    return client.ApiClient(configuration)


class ApiSource:
    def __init__(
        self,
        api_client: Any,
        node_name: str,
        *,
        backoff: BackoffPolicy | None = None,
        watch_timeout: float = 300.0,
        request_timeout: float = 30.0,
        page_size: int = 500,
        pod_metadata_only: bool = False,
        pause: Callable[[], None] | None = None,
        timed: EventTimer | None = None,
    ) -> None:
        """``pause`` is called between the objects of a list and of a relist's
        diff; it may wait while more urgent work runs (CNI requests: see
        policy_feed.Priority), for a bounded time. ``timed`` hears how long
        each watch event took to handle."""
        self.node_name = node_name  # names this agent in logs
        self._client = api_client
        self._settings = WatchSettings(
            backoff=backoff or BackoffPolicy(),
            watch_timeout=watch_timeout,
            request_timeout=request_timeout,
            page_size=page_size,
        )
        self._ledger = Ledger(keep_objects=False, pause=pause)
        self._stopping = threading.Event()
        self._reflectors: list[Reflector] = []
        self._threads: list[tuple[threading.Thread, Reflector]] = []
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        calls: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "Namespace": (core.list_namespace, ()),
            "Pod": (core.list_pod_for_all_namespaces, ()),
        }
        for kind in ("NetworkAttachmentDefinition", "MultiNetworkPolicy"):
            r = RESOURCES[kind]
            calls[kind] = (custom.list_cluster_custom_object, (r.group, r.version, r.plural))
        for kind in KINDS:
            call, args = calls[kind]
            partial = kind == "Pod" and pod_metadata_only
            self._reflectors.append(
                Reflector(
                    RESOURCES[kind],
                    call,
                    args,
                    self._ledger,
                    self._settings,
                    self._stopping,
                    metadata_only=partial,
                    field_selector=PEER_PODS if partial else None,
                    pause=pause,
                    timed=timed,
                )
            )

    # -- ObjectSource -----------------------------------------------------

    def start(self, sink: Sink) -> None:
        if self._threads:
            raise RuntimeError("ApiSource already started")
        self._ledger.attach(sink)
        self._stopping.clear()
        for reflector in self._reflectors:
            # A restart relists: while stopped, the server may have compacted
            # past our version, and the relist's diff against the ledger
            # delivers exactly what changed meanwhile (deletes included).
            reflector.resource_version = None
            reflector.synced.clear()
            thread = threading.Thread(
                target=reflector.run, name=f"k8s-watch-{reflector.resource.plural}", daemon=True
            )
            self._threads.append((thread, reflector))
            thread.start()
        log.info("watching the API server", extra={"node": self.node_name})

    def stop(self) -> None:
        self._stopping.set()
        for thread, reflector in self._threads:
            # Interrupt repeatedly: a watch that was being opened when we
            # first asked has no socket to close yet.
            waited = 0.0
            while thread.is_alive() and waited < _STOP_TIMEOUT:
                reflector.interrupt()
                thread.join(0.1)
                waited += 0.1
            if thread.is_alive():
                log.warning("watch loop did not stop", extra={"kind": reflector.kind})
        self._threads = []
        self._ledger.attach(None)

    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors)

    def problems(self) -> list[SourceProblem]:
        return [p for r in self._reflectors if (p := r.problem()) is not None]

    # -- introspection (tests, nicwardenctl) ------------------------------

    def metadata_only(self) -> dict[str, bool | None]:
        """Per kind: served metadata-only (True), asked but refused (False),
        or not asked / not known yet (None)."""
        return {r.kind: r.metadata_only for r in self._reflectors}

    def resource_versions(self) -> dict[str, str | None]:
        return {r.kind: r.resource_version for r in self._reflectors}
