"""A ResourceClaim's ``status.devices[]`` entries for the VFs this node
attached: the ``Ready`` condition and ``networkData`` (interface name, IPs in
CIDR form, MAC), written after a CNI ADD and cleared at DEL.

Level-based: a claim is queued when one of its VFs is attached or detached,
and the worker writes what the store says now (a prepared claim, each VF's
attachment in state ``ready``), so a repeat, a lost write or a restart
converges. ``status.devices`` is a list-map keyed by driver, pool, device
(and shareID): only this driver's entries for the claim's devices are
replaced; other drivers' entries are kept. The write is a merge patch of the
``/status`` subresource carrying ``metadata.resourceVersion``, so a
concurrent writer makes it fail with 409 and it is redone on the fresh claim.
Writes happen off the CNI path, on one thread, so a slow API server never
delays an ADD.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from nicwarden.agent.k8s._kube import ApiException, client
from nicwarden.agent.store import Attachment, DraClaimRecord, Store

log = logging.getLogger(__name__)

_HTTP_NOT_FOUND = 404
_HTTP_CONFLICT = 409
READY = "Ready"
MAX_IPS = 16  # networkData.ips


def claim_for_device(store: Store, address: str) -> DraClaimRecord | None:
    """The prepared claim holding VF ``address``, or None."""
    for claim in store.dra_claims():
        if claim.state == "prepared" and any(d.get("address") == address for d in claim.devices):
            return claim
    return None


def network_data(att: Attachment) -> dict[str, Any]:
    """``networkData`` from the attachment's CNI result: the pod-side
    interface, its addresses (CIDR, host bits kept) and MAC."""
    result = att.result or {}
    interfaces = result.get("interfaces") or []
    index = next(
        (
            i
            for i, itf in enumerate(interfaces)
            if itf.get("name") == att.ifname and itf.get("sandbox")
        ),
        None,
    )
    ips = [
        str(ip["address"])
        for ip in result.get("ips") or []
        if ip.get("address") and (index is None or ip.get("interface") in (None, index))
    ]
    out: dict[str, Any] = {"interfaceName": att.ifname}
    if ips:
        out["ips"] = list(dict.fromkeys(ips))[:MAX_IPS]
    if index is not None and interfaces[index].get("mac"):
        out["hardwareAddress"] = str(interfaces[index]["mac"])
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def device_entry(driver: str, device: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
    return {
        "driver": driver,
        "pool": str(device.get("pool", "")),
        "device": str(device.get("device", "")),
        "conditions": [
            {
                "type": READY,
                "status": "True",
                "reason": "Attached",
                "message": f"attached as {att.ifname} in pod {att.pod_namespace}/{att.pod_name}",
                "lastTransitionTime": _now(),
            }
        ],
        "networkData": network_data(att),
    }


def _key(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(entry.get("driver", "")),
        str(entry.get("pool", "")),
        str(entry.get("device", "")),
        str(entry.get("shareID", "")),
    )


def merged(
    current: Sequence[Mapping[str, Any]],
    ours: Sequence[Mapping[str, Any]],
    owned: set[tuple[str, str, str, str]],
) -> list[dict[str, Any]]:
    """``current`` with the entries at ``owned`` keys replaced by ``ours``
    (absent from ``ours``: removed). An unchanged entry keeps its condition's
    ``lastTransitionTime``, so a re-write changes nothing."""
    old = {_key(e): e for e in current}
    out = [dict(e) for e in current if _key(e) not in owned]
    for entry in ours:
        previous = old.get(_key(entry))
        if previous is not None and _same(previous, entry):
            out.append(dict(previous))
        else:
            out.append(dict(entry))
    return out


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def strip(e: Mapping[str, Any]) -> str:
        conds = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in e.get("conditions") or []
        ]
        return json.dumps({**e, "conditions": conds}, sort_keys=True)

    return strip(a) == strip(b)


class ClaimStatusWriter:
    """The attach hooks (``on_attach``/``on_detach``) and the worker."""

    def __init__(
        self,
        api_client: Any,
        store: Store,
        driver: str,
        *,
        timeout: float = 10.0,
        retry: float = 1.0,
    ) -> None:
        self._api = client.ResourceV1Api(api_client)
        self._store = store
        self._driver = driver
        self._timeout = timeout
        self._retry = retry
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._busy = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.last_error = ""

    # -- hooks (called by the attach service after a committed ADD / at DEL)

    def on_attach(self, att: Attachment) -> None:
        self._queue_for(att)

    def on_detach(self, att: Attachment) -> None:
        self._queue_for(att)

    def _queue_for(self, att: Attachment) -> None:
        if att.device is None:
            return
        claim = claim_for_device(self._store, att.device)
        if claim is not None:
            self.enqueue(claim.uid)

    def enqueue(self, uid: str) -> None:
        with self._cond:
            if uid in self._pending:
                return
            self._pending.add(uid)
        self._queue.put(uid)

    def resync(self) -> None:
        """Queue every prepared claim (at start: a crash may have lost writes)."""
        for claim in self._store.dra_claims():
            if claim.state == "prepared":
                self.enqueue(claim.uid)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> ClaimStatusWriter:
        self._thread = threading.Thread(target=self._run, name="dra-claim-status", daemon=True)
        self._thread.start()
        self.resync()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self._timeout + 1)
            self._thread = None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once nothing is queued or being written (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            uid = self._queue.get()
            if uid is None:
                return
            with self._cond:
                self._pending.discard(uid)
                self._busy += 1
            try:
                self.write(uid)
            except Exception as e:
                self.last_error = str(e)
                log.warning(
                    "writing ResourceClaim status failed; retrying",
                    extra={"claim": uid, "error": str(e)},
                )
                threading.Timer(self._retry, self.enqueue, (uid,)).start()
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    # -- the write -------------------------------------------------------------

    def desired(self, claim: DraClaimRecord) -> tuple[list[dict[str, Any]], set[Any]]:
        """This driver's entries for ``claim`` as the store says now, and the
        keys they own (an entry for each of the claim's devices, set or not)."""
        ours: list[dict[str, Any]] = []
        owned: set[tuple[str, str, str, str]] = set()
        for device in claim.devices:
            entry_key = (
                self._driver,
                str(device.get("pool", "")),
                str(device.get("device", "")),
                "",
            )
            owned.add(entry_key)
            att = self._store.attachment_for_device(str(device.get("address", "")))
            if att is not None and att.state == "ready":
                ours.append(device_entry(self._driver, device, att))
        return ours, owned

    def write(self, uid: str) -> bool:
        """Bring the claim's status in line; True when a PATCH was sent."""
        for _attempt in range(5):
            claim = self._store.dra_claim(uid)
            if claim is None:
                return False
            ours, owned = self.desired(claim)
            try:
                response = self._api.read_namespaced_resource_claim_status(
                    claim.name,
                    claim.namespace,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            except ApiException as e:
                if e.status == _HTTP_NOT_FOUND:
                    return False  # deleted: nothing to write on
                raise
            obj = json.loads(response.data)
            meta = obj.get("metadata") or {}
            if meta.get("uid") != uid:
                return False  # replaced by another claim of the same name
            current = (obj.get("status") or {}).get("devices") or []
            devices = merged(current, ours, owned)
            if devices == current:
                return False
            patch = {
                "metadata": {"resourceVersion": meta.get("resourceVersion")},
                "status": {"devices": devices or None},
            }
            try:
                self._api.patch_namespaced_resource_claim_status(
                    claim.name,
                    claim.namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            except ApiException as e:
                if e.status == _HTTP_CONFLICT:
                    continue
                if e.status == _HTTP_NOT_FOUND:
                    return False
                raise
            self.writes += 1
            return True
        raise RuntimeError(f"ResourceClaim {uid}: status kept changing (5 conflicts)")
