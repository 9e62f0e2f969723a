"""Reading a ResourceClaim kubelet asks us to prepare, and taking from its
allocation what belongs to this driver.

kubelet names a claim only by namespace, name and UID; the allocation (which
devices, with which opaque configs) is in the claim's status, so it is read
from the API. A claim replaced under the same name has another UID: the
request is then for an object that no longer exists, and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from nicwarden.agent.k8s._kube import ApiException, client

RESOURCE_API = "resource.k8s.io/v1"
DEFAULT_TIMEOUT_S = 10.0


class ClaimError(Exception):
    """This claim cannot be prepared; the message goes back to kubelet as
    the claim's error (other claims of the same call carry on)."""


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


@dataclass(frozen=True)
class AllocatedDevice:
    request: str  # the main request's name ("<main>/<sub>" becomes "<main>")
    pool: str
    device: str


@dataclass(frozen=True)
class OpaqueConfig:
    """One ``status.allocation.devices.config[]`` entry addressed to us."""

    index: int  # its position in that list, for error messages
    requests: tuple[str, ...]  # empty: applies to every request
    parameters: object  # the raw JSON the claim's author wrote

    def applies_to(self, request: str) -> bool:
        return not self.requests or request in self.requests


@dataclass(frozen=True)
class AllocatedClaim:
    ref: ClaimRef
    devices: tuple[AllocatedDevice, ...]
    configs: tuple[OpaqueConfig, ...]


class ClaimReader(Protocol):
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The claim as JSON, or None when it does not exist; raises
        :class:`ClaimError` when the API cannot say."""
        ...


class ApiClaimReader:
    """Reads claims through the ``kubernetes`` client's resource.k8s.io/v1 API.

    The raw JSON is kept (``_preload_content=False``): the client's typed
    models would drop fields newer than the client, and opaque parameters are
    ours to parse.
    """

    def __init__(self, api_client: Any, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._api = client.ResourceV1Api(api_client)
        self._timeout = timeout

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self._api.read_namespaced_resource_claim(
                name, namespace, _preload_content=False, _request_timeout=self._timeout
            )
            body = json.loads(response.data)
        except ApiException as err:
            if err.status == 404:
                return None
            raise ClaimError(
                f"cannot read ResourceClaim {namespace}/{name}: API server answered"
                f" {err.status} {err.reason}"
            ) from err
        except (OSError, ValueError) as err:
            # urllib3's connection and timeout errors are OSErrors.
            raise ClaimError(f"cannot read ResourceClaim {namespace}/{name}: {err}") from err
        if not isinstance(body, dict):
            raise ClaimError(f"ResourceClaim {namespace}/{name}: the API answered a non-object")
        return body


def fetch(reader: ClaimReader, ref: ClaimRef, driver: str) -> AllocatedClaim:
    found = reader.get(ref.namespace, ref.name)
    if found is None:
        raise ClaimError(f"ResourceClaim {ref.namespace}/{ref.name} not found")
    return allocation(found, ref, driver)


def allocation(claim: dict[str, Any], ref: ClaimRef, driver: str) -> AllocatedClaim:
    """This driver's devices and configs from ``claim``'s allocation."""
    uid = _get(claim, "metadata", "uid")
    if uid != ref.uid:
        raise ClaimError(
            f"ResourceClaim {ref.namespace}/{ref.name} has uid {uid}, not {ref.uid}:"
            " the claim was replaced"
        )
    alloc = _get(claim, "status", "allocation")
    if not isinstance(alloc, dict):
        raise ClaimError(f"ResourceClaim {ref.namespace}/{ref.name} is not allocated")
    results = _get(alloc, "devices", "results")
    devices: list[AllocatedDevice] = []
    for i, result in enumerate(results if isinstance(results, list) else []):
        if not isinstance(result, dict) or result.get("driver") != driver:
            continue
        request, pool, device = (result.get(k) for k in ("request", "pool", "device"))
        if not all(isinstance(v, str) and v for v in (request, pool, device)):
            raise ClaimError(
                f"ResourceClaim {ref.namespace}/{ref.name}: status.allocation.devices"
                f".results[{i}] lacks request, pool or device"
            )
        assert isinstance(request, str) and isinstance(pool, str) and isinstance(device, str)
        devices.append(AllocatedDevice(request.split("/", 1)[0], pool, device))
    if not devices:
        raise ClaimError(
            f"ResourceClaim {ref.namespace}/{ref.name} has no devices allocated by {driver}"
        )
    configs: list[OpaqueConfig] = []
    raw_configs = _get(alloc, "devices", "config")
    for i, entry in enumerate(raw_configs if isinstance(raw_configs, list) else []):
        opaque = entry.get("opaque") if isinstance(entry, dict) else None
        if not isinstance(opaque, dict) or opaque.get("driver") != driver:
            continue  # configs for other drivers are theirs to read
        requests = entry.get("requests") or []
        names = tuple(r.split("/", 1)[0] for r in requests if isinstance(r, str))
        configs.append(OpaqueConfig(i, names, opaque.get("parameters")))
    return AllocatedClaim(ref, tuple(devices), tuple(configs))


def _get(obj: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
