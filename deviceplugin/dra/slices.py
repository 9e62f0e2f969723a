"""Publish this node's DRA VFs as ``resource.k8s.io/v1`` ResourceSlices.

One pool per node, named after the node, with ``spec.nodeName`` = node. The
pool is split into slices of at most 128 devices (64 once any device carries
a taint: the API's limit for slices using taints). Every slice of the pool
carries the same ``generation`` and ``resourceSliceCount``; any change to
the pool bumps the generation on all of them, so a scheduler never mixes
two versions of the pool. An empty pool still publishes one empty slice, so
consumers can tell "no devices" from "not published yet".

Health becomes device taints:

* the PF's carrier is down → ``nicwarden.io/pf-carrier-down: NoSchedule``;
* a VF that vanished without being configured away (its PF went, or the
  VF did while its PF still counts it) → ``nicwarden.io/vf-vanished:
  NoExecute``. It stays listed, tainted, for ``vanished_grace`` seconds, so
  pods holding it are evicted and nothing new lands on it; then it is dropped.
  A VF removed by lowering ``sriov_numvfs`` is gone by design and is dropped
  at once, as is a VF that no longer matches the ``dra:`` selectors;
* a VF the agent holds back from pods (out of place with nothing on record
  to explain it, or held by an admin) → ``nicwarden.io/vf-held-back:
  NoSchedule`` until ``nicwardenctl reconcile --adopt|--release`` settles
  it. Kept listed rather than dropped, so the slice shows why the device
  cannot be allocated, and a claim already holding it is not evicted.

The publisher follows the live inventory (coalescing bursts of changes into
one write) and watches its own slices: a slice someone else deletes or edits
is put back. A periodic resync catches anything a dropped watch missed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nicwarden.agent.k8s._kube import ApiException, client, watch
from nicwarden.agent.model import PF, Inventory, InventorySource
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import DraDevice, offered
from nicwarden.deviceplugin.pools import link_type

log = logging.getLogger(__name__)

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES = 128  # ResourceSliceMaxDevices
MAX_DEVICES_WITH_TAINTS = 64  # ResourceSliceMaxDevicesWithAdvancedFeatures
MAX_ATTRIBUTES = 32  # attributes and capacities of one device, combined
MAX_STRING = 64  # an attribute's string value

TAINT_CARRIER_DOWN = "nicwarden.io/pf-carrier-down"
TAINT_VANISHED = "nicwarden.io/vf-vanished"
TAINT_HELD_BACK = "nicwarden.io/vf-held-back"
PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"

_HTTP_CONFLICT = 409
_HTTP_NOT_FOUND = 404
_HTTP_GONE = 410


# -- building (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str  # "NoSchedule" | "NoExecute"
    time_added: str  # RFC 3339, kept while the condition lasts

    def to_api(self) -> dict[str, str]:
        return {"key": self.key, "effect": self.effect, "timeAdded": self.time_added}


def _string(value: str) -> dict[str, str]:
    return {"string": value[:MAX_STRING]}


def device_attributes(dev: DraDevice, pcie_root: str | None = None) -> dict[str, dict[str, Any]]:
    """The attributes of one VF. Unqualified names are in the driver's
    domain (CEL: ``device.attributes["<driver>"].pfName``)."""
    vf, pf = dev.vf, dev.pf
    attrs: dict[str, dict[str, Any]] = {
        PCI_BUS_ID: _string(vf.address),
        "pfPciAddress": _string(vf.pf_address),
        "vfIndex": {"int": vf.index},
        "vendor": _string(vf.fn.vendor),
        "device": _string(vf.fn.device),
        # What the VF is bound to for pods: a kernel netdev or vfio-pci (DPDK).
        "driver": _string("vfio" if vf.fn.is_vfio else "netdev"),
    }
    if vf.pf_name:
        attrs["pfName"] = _string(vf.pf_name)
    if vf.fn.driver:
        attrs["kernelDriver"] = _string(vf.fn.driver)
    if vf.fn.numa_node >= 0:
        attrs["numaNode"] = {"int": vf.fn.numa_node}
    kind = link_type(vf, pf)
    if kind:
        attrs["linkType"] = _string(kind)
    if pcie_root:
        attrs[PCIE_ROOT] = _string(pcie_root)
    assert len(attrs) <= MAX_ATTRIBUTES
    return attrs


def pf_carrier_down(pf: PF) -> bool:
    """The PF's link has no carrier (a PF without a netdev is not judged)."""
    netdev = pf.fn.netdev
    return netdev is not None and not netdev.carrier


@dataclass(frozen=True)
class PoolDevice:
    """One device as published: name, attributes, taints."""

    name: str
    attributes: Mapping[str, Mapping[str, Any]]
    taints: tuple[Taint, ...] = ()

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "attributes": dict(self.attributes)}
        if self.taints:
            out["taints"] = [t.to_api() for t in self.taints]
        return out


def page(devices: Sequence[PoolDevice]) -> list[list[PoolDevice]]:
    """Split the pool (sorted by name) into slices; at least one, maybe empty."""
    ordered = sorted(devices, key=lambda d: d.name)
    size = MAX_DEVICES_WITH_TAINTS if any(d.taints for d in ordered) else MAX_DEVICES
    pages = [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]
    return pages or [[]]


def slice_name(node: str, driver: str, index: int) -> str:
    """A stable name per (node, driver, page), so a re-publish updates in
    place; hashed when the plain form would exceed a DNS subdomain's 253."""
    plain = f"{node}-{driver}-{index}"
    if len(plain) <= 253:
        return plain
    digest = hashlib.sha256(f"{node}/{driver}".encode()).hexdigest()[:16]
    return f"{node[:200]}-{digest}-{index}"


def build_slices(
    devices: Sequence[PoolDevice], *, driver: str, node: str, generation: int
) -> list[dict[str, Any]]:
    """The ResourceSlice objects of the pool at ``generation``."""
    pages = page(devices)
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {
                "name": slice_name(node, driver, i),
                "labels": {"app.kubernetes.io/managed-by": "nicwarden"},
            },
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {
                    "name": node,
                    "generation": generation,
                    "resourceSliceCount": len(pages),
                },
                "devices": [d.to_api() for d in devs],
            },
        }
        for i, devs in enumerate(pages)
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PoolTracker:
    """Turns inventory snapshots into the pool's devices, remembering what a
    pure function cannot: when each taint started and which VFs vanished."""

    def __init__(
        self,
        cfg: DraConfig,
        *,
        vanished_grace: float = 300.0,
        pcie_root: Callable[[str], str | None] = lambda _address: None,
        clock: Callable[[], float] = time.monotonic,
        held_back: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self._cfg = cfg
        self._held_back = held_back  # VF address -> why it is not offered to pods
        self._grace = vanished_grace
        self._pcie_root = pcie_root
        self._clock = clock
        self._since: dict[tuple[str, str], str] = {}  # (device, taint key) -> timeAdded
        self._last: dict[str, DraDevice] = {}  # offered at the previous snapshot
        self._vanished: dict[str, tuple[DraDevice, float]] = {}  # name -> (last seen, when)
        self._roots: dict[str, str | None] = {}

    def set_config(self, cfg: DraConfig) -> None:
        self._cfg = cfg

    def devices(self, inventory: Inventory) -> list[PoolDevice]:
        now = self._clock()
        current = {d.name: d for d in offered(inventory, self._cfg)}
        pfs = {pf.address: pf for pf in inventory.pfs}
        for name, dev in self._last.items():
            if name in current or name in self._vanished:
                continue
            pf = pfs.get(dev.pf.address)
            if pf is not None and dev.vf.index >= pf.num_vfs:
                continue  # numVfs lowered: removed on purpose, not vanished
            if pf is not None and any(v.address == dev.vf.address for v in pf.vfs):
                continue  # still there, no longer selected: simply not offered
            self._vanished[name] = (dev, now)
        for name in list(self._vanished):
            dev, when = self._vanished[name]
            pf = pfs.get(dev.pf.address)
            # A snapshot taken mid-way through a numVfs write shows VFs gone
            # before the PF's count drops: the later count explains them.
            on_purpose = pf is not None and dev.vf.index >= pf.num_vfs
            if name in current or on_purpose or now - when >= self._grace:
                del self._vanished[name]
        self._last = current
        out: list[PoolDevice] = []
        live_keys: set[tuple[str, str]] = set()
        held = self._held_back()
        for name, dev in current.items():
            taints: list[Taint] = []
            pf = pfs.get(dev.pf.address, dev.pf)
            if pf_carrier_down(pf):
                taints.append(self._taint(name, TAINT_CARRIER_DOWN, "NoSchedule", live_keys))
            if dev.address in held:
                taints.append(self._taint(name, TAINT_HELD_BACK, "NoSchedule", live_keys))
            out.append(PoolDevice(name, device_attributes(dev, self._root(dev)), tuple(taints)))
        for name, (dev, _when) in self._vanished.items():
            taint = self._taint(name, TAINT_VANISHED, "NoExecute", live_keys)
            out.append(PoolDevice(name, device_attributes(dev, self._root(dev)), (taint,)))
        # A condition that ended forgets its start, so a new one gets a new time.
        self._since = {k: v for k, v in self._since.items() if k in live_keys}
        out.sort(key=lambda d: d.name)
        return out

    def _taint(self, device: str, key: str, effect: str, live: set[tuple[str, str]]) -> Taint:
        live.add((device, key))
        return Taint(key, effect, self._since.setdefault((device, key), _now()))

    def _root(self, dev: DraDevice) -> str | None:
        if dev.vf.address not in self._roots:
            self._roots[dev.vf.address] = self._pcie_root(dev.vf.address)
        return self._roots[dev.vf.address]


def _content(obj: Mapping[str, Any]) -> tuple[str, str]:
    """What a slice says apart from its generation, for change detection."""
    spec = dict(obj.get("spec") or {})
    pool = dict(spec.get("pool") or {})
    pool.pop("generation", None)
    spec["pool"] = pool
    name = str((obj.get("metadata") or {}).get("name", ""))
    return name, json.dumps(spec, sort_keys=True)


# -- publishing ---------------------------------------------------------------


@dataclass
class PublishStats:
    publishes: int = 0  # passes that wrote anything
    writes: int = 0  # create/update/delete calls
    repairs: int = 0  # passes that found a slice changed or removed by someone else
    generation: int = 0
    slices: int = 0
    devices: int = 0
    last_error: str = ""
    last_publish: float = 0.0  # time.monotonic() of the last pass that wrote


class SlicePublisher:
    """Keeps this node's ResourceSlices equal to the inventory's DRA devices."""

    def __init__(
        self,
        api_client: Any,
        cfg: DraConfig,
        inventory: InventorySource,
        node_name: str,
        *,
        coalesce: float = 0.02,
        resync: float = 30.0,
        vanished_grace: float = 300.0,
        request_timeout: float = 10.0,
        retry: float = 1.0,
        pcie_root: Callable[[str], str | None] = lambda _address: None,
        held_back: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self._api = client.ResourceV1Api(api_client)
        self._driver = cfg.driver_name
        self._node = node_name
        self._inventory = inventory
        self._coalesce = coalesce
        self._resync = resync
        self._timeout = request_timeout
        self._retry = retry
        self._tracker = PoolTracker(
            cfg, vanished_grace=vanished_grace, pcie_root=pcie_root, held_back=held_back
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._published: dict[str, tuple[str, str]] = {}  # slice name -> _content
        # The API's slices as our last writes left them; dropped (None) when
        # the watch reports a change we did not make, at a resync and after
        # any error, so the next pass lists them afresh.
        self._cache: dict[str, dict[str, Any]] | None = None
        self._own_versions: set[str] = set()
        self._own_deletes: set[str] = set()
        # What the API server stored for what we wrote, when it differs: a
        # server without the DRADeviceTaints feature gate drops taints, and
        # comparing against our own form would rewrite the slices forever.
        self._stored_as: dict[str, str] = {}
        self._generation = 0
        self._watch: Any = None
        self._threads: list[threading.Thread] = []
        self._unsubscribe: Callable[[], None] | None = None
        self.stats = PublishStats()
        self.published = threading.Condition()

    @property
    def _selector(self) -> str:
        return f"spec.nodeName={self._node},spec.driver={self._driver}"

    def start(self) -> SlicePublisher:
        if self._threads:
            raise RuntimeError("slice publisher already started")
        self._stopping.clear()
        self._unsubscribe = self._inventory.subscribe(lambda _inv: self._wake.set())
        self._wake.set()
        for target, name in ((self._run, "dra-slices"), (self._watch_loop, "dra-slices-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, *, delete: bool = False) -> None:
        """Stop following the inventory. The slices stay published (kubelet
        wipes a driver's slices itself once its plugin is gone for long);
        ``delete=True`` removes them now (DRA turned off)."""
        self._stopping.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            current = self._watch
        if current is not None:
            current.stop()
        for thread in self._threads:
            thread.join(timeout=self._timeout + 1)
        self._threads = []
        if delete:
            for obj in self._list()[0]:
                self._delete(obj["metadata"]["name"])

    def set_config(self, cfg: DraConfig) -> None:
        """New selectors (a reload); the driver name cannot change live."""
        if cfg.driver_name != self._driver:
            raise ValueError("the DRA driver name cannot change while publishing")
        self._tracker.set_config(cfg)
        self._wake.set()

    def kick(self) -> None:
        """Check the slices now (also what the watch does on any change)."""
        self._wake.set()

    # -- the publishing loop --------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._wake.wait(self._resync):
                self._invalidate()  # periodic full check against the API
            if self._stopping.is_set():
                return
            # Let a burst of inventory events (numVfs writes a VF at a time) settle.
            time.sleep(self._coalesce)
            self._wake.clear()
            try:
                self.sync()
            except Exception as e:  # the API may be down: keep the loop, retry
                self._invalidate()
                self.stats.last_error = str(e)
                log.warning("publishing ResourceSlices failed", extra={"error": str(e)})
                self._stopping.wait(self._retry)
                self._wake.set()

    def sync(self) -> bool:
        """One pass: publish the pool if the API's slices differ from it.
        Returns whether anything was written."""
        for _attempt in range(5):
            try:
                return self._sync_once()
            except ApiException as e:
                self._invalidate()
                if e.status != _HTTP_CONFLICT:
                    raise
                # Someone wrote meanwhile: look again.
        raise RuntimeError("ResourceSlices kept changing under us (5 conflicts in a row)")

    def _sync_once(self) -> bool:
        devices = self._tracker.devices(self._inventory.snapshot())
        with self._lock:
            cached = None if self._cache is None else list(self._cache.values())
        if cached is None:
            cached, _rv = self._list()
            with self._lock:
                self._cache = {o["metadata"]["name"]: o for o in cached}
        existing = cached
        by_name = {o["metadata"]["name"]: o for o in existing}
        highest = max(
            [int(o["spec"]["pool"].get("generation", 0)) for o in existing] + [self._generation]
        )
        wanted = build_slices(devices, driver=self._driver, node=self._node, generation=0)
        want_content = {
            name: self._stored_as.get(text, text) for name, text in map(_content, wanted)
        }
        have_content = {name: _content(o)[1] for name, o in by_name.items()}
        generations = {int(o["spec"]["pool"].get("generation", 0)) for o in existing}
        if want_content == have_content and len(generations) == 1:
            self._generation = highest
            return False
        if self._published and any(have_content.get(n) != c[1] for n, c in self._published.items()):
            self.stats.repairs += 1
        generation = highest + 1
        writes = 0
        for obj in build_slices(
            devices, driver=self._driver, node=self._node, generation=generation
        ):
            name = obj["metadata"]["name"]
            current = by_name.pop(name, None)
            if current is None:
                stored = self._call(self._api.create_resource_slice, obj)
            else:
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                stored = self._call(self._api.replace_resource_slice, name, obj)
            self._remember(stored)
            self._note_stored_form(obj, stored)
            writes += 1
        for name in by_name:  # pages no longer needed, or left by an older agent
            self._delete(name)
            writes += 1
        with self._lock:
            self._generation = generation
            self._published = {_content(o)[0]: _content(o) for o in wanted}
        pages = page(devices)
        with self.published:
            self.stats.publishes += 1
            self.stats.writes += writes
            self.stats.generation = generation
            self.stats.slices = len(pages)
            self.stats.devices = len(devices)
            self.stats.last_error = ""
            self.stats.last_publish = time.monotonic()
            self.published.notify_all()
        log.info(
            "published ResourceSlices",
            extra={"generation": generation, "slices": len(pages), "devices": len(devices)},
        )
        return True

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        response = self._api.list_resource_slice(
            field_selector=self._selector,
            _preload_content=False,
            _request_timeout=self._timeout,
        )
        body = json.loads(response.data)
        items = [o for o in body.get("items") or [] if o.get("spec", {}).get("pool")]
        return items, str((body.get("metadata") or {}).get("resourceVersion", ""))

    def _call(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        response = fn(*args, _preload_content=False, _request_timeout=self._timeout)
        body = json.loads(response.data or b"{}")
        return body if isinstance(body, dict) else {}

    def _remember(self, stored: Mapping[str, Any]) -> None:
        meta = stored.get("metadata") or {}
        with self._lock:
            if self._cache is not None and meta.get("name") and stored.get("spec"):
                self._cache[str(meta["name"])] = dict(stored)
            else:
                self._cache = None
            if meta.get("resourceVersion"):
                self._own_versions.add(str(meta["resourceVersion"]))

    def _note_stored_form(self, sent: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
        if not stored.get("spec"):
            return
        mine, theirs = _content(sent)[1], _content(stored)[1]
        if mine == theirs:
            return
        if len(self._stored_as) > 256:
            self._stored_as.clear()
        if mine not in self._stored_as:
            log.warning(
                "the API server changed the ResourceSlice we wrote (device taints need the"
                " DRADeviceTaints feature gate); publishing what it keeps",
                extra={"slice": str((stored.get("metadata") or {}).get("name", ""))},
            )
        self._stored_as[mine] = theirs

    def _invalidate(self) -> None:
        with self._lock:
            self._cache = None

    def _delete(self, name: str) -> None:
        with self._lock:
            self._own_deletes.add(name)
            if self._cache is not None:
                self._cache.pop(name, None)
        try:
            self._call(self._api.delete_resource_slice, name)
        except ApiException as e:
            if e.status != _HTTP_NOT_FOUND:
                raise

    # -- watching our slices ---------------------------------------------

    def _watch_loop(self) -> None:
        """Any change to this node's slices of this driver wakes the
        publisher, which compares and repairs (its own writes compare equal)."""
        rv = ""
        while not self._stopping.is_set():
            try:
                if not rv:
                    _items, rv = self._list()
                rv = self._watch_once(rv)
            except ApiException as e:
                rv = ""
                if e.status != _HTTP_GONE:
                    log.warning("watching ResourceSlices failed", extra={"error": str(e)})
                    self._stopping.wait(self._retry)
            except Exception as e:
                rv = ""
                if not self._stopping.is_set():
                    log.warning("watching ResourceSlices failed", extra={"error": str(e)})
                    self._stopping.wait(self._retry)

    def _own(self, kind: str, name: str, version: str) -> bool:
        """The event echoes one of our writes (nothing to check)."""
        with self._lock:
            if kind == "DELETED":
                if name in self._own_deletes:
                    self._own_deletes.discard(name)
                    return True
                return False
            if version in self._own_versions:
                self._own_versions.discard(version)
                return True
            return False

    def _watch_once(self, rv: str) -> str:
        current = watch.Watch(return_type="object")
        with self._lock:
            self._watch = current
        if self._stopping.is_set():
            return rv
        duration = max(1, int(self._resync))
        stream = current.stream(
            self._api.list_resource_slice,
            field_selector=self._selector,
            resource_version=rv,
            timeout_seconds=duration,
            _request_timeout=(self._timeout, duration + self._timeout),
        )
        try:
            with contextlib.closing(stream):
                for event in stream:
                    if self._stopping.is_set():
                        break
                    if not isinstance(event, Mapping):
                        continue
                    if event.get("type") == "ERROR":
                        return ""
                    raw = event.get("raw_object") or {}
                    meta = raw.get("metadata") or {}
                    rv = str(meta.get("resourceVersion") or rv)
                    if event.get("type") in ("DELETED", "MODIFIED", "ADDED") and not self._own(
                        str(event.get("type")), str(meta.get("name", "")), rv
                    ):
                        self._invalidate()
                        self._wake.set()
        finally:
            with self._lock:
                self._watch = None
        return rv
