"""NodePrepareResources and NodeUnprepareResources: the work behind them.

Per claim, in order, so a crash at any point is finished or undone later:

1. validate everything (the allocation, this node's pool, the devices, the
   opaque configs): a problem fails the claim before anything changes;
2. when a VF must change driver, record the plan in the store (state
   ``preparing``) with each VF's driver before we touch it;
3. bind the VFs whose config asks for another driver, through the device
   management path with its in-use checks (a failure moves the VFs already
   moved back and forgets the claim);
4. write the claim's CDI spec, then mark the claim ``prepared``.

A claim already ``prepared`` is answered from its checkpoint without asking
the API (its spec re-written if it is missing or differs); one left
``preparing`` by a crash resumes from its recorded plan. Unprepare needs only the checkpoint:
drivers restored, spec deleted, row deleted; an unknown claim is fine.

Calls are serialised, as the reference kubelet plugin does by default; the
API reads happen before taking the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nicwarden.agent.devices import binding
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.errors import Busy, NicwardenError, NotFound
from nicwarden.agent.health import vfio_mount
from nicwarden.agent.host import pci
from nicwarden.agent.model import VF, VFIO_DRIVER, Inventory
from nicwarden.agent.schema import Invalid
from nicwarden.agent.store import DraClaimRecord, Store
from nicwarden.deviceplugin.dra import cdi
from nicwarden.deviceplugin.dra.claims import (
    AllocatedClaim,
    ClaimError,
    ClaimReader,
    ClaimRef,
    fetch,
)
from nicwarden.deviceplugin.dra.config import DraConfig
from nicwarden.deviceplugin.dra.devices import DraDevice, by_name
from nicwarden.deviceplugin.dra.vfconfig import BIND_TARGET, configs_for
from nicwarden.deviceplugin.naming import (
    TUN,
    VFIO_CONTAINER_MOUNT,
    VHOST_NET,
    InfoEntry,
    env_var_name,
    info_env_value,
    info_env_var_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """One claim's answer: its devices, or the error kubelet gets for it."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


def _bind_class(driver: str | None) -> str | None:
    """What binding.bind() calls the driver a VF had: vfio-pci or its kernel driver."""
    if driver is None:
        return None
    return "vfio-pci" if driver == VFIO_DRIVER else "kernel"


class Preparer:
    def __init__(
        self,
        cfg: DraConfig,
        store: Store,
        devices: DeviceCtx,
        reader: ClaimReader,
        node_name: str,
    ) -> None:
        self.cfg = cfg
        self.driver = cfg.driver_name
        self._store = store
        self._ctx = devices
        self._reader = reader
        self._node = node_name
        self._lock = threading.Lock()
        # by_name() of the last snapshot and config seen: both are immutable
        # and change far less often than claims are prepared.
        self._offered_cache: tuple[Inventory, DraConfig, dict[str, DraDevice]] | None = None

    def set_config(self, cfg: DraConfig) -> None:
        """A reloaded ``dra:`` section: new selectors apply to the next
        prepare. The driver name and directories are fixed for the process
        (prepared claims' specs and sockets carry them)."""
        if (cfg.driver_name, cfg.cdi_dir) != (self.driver, self.cfg.cdi_dir):
            raise ValueError("the DRA driver name and CDI directory change only with a restart")
        self.cfg = cfg

    def _offered(self, inventory: Inventory) -> dict[str, DraDevice]:
        cached = self._offered_cache
        if cached is None or cached[0] is not inventory or cached[1] is not self.cfg:
            cached = (inventory, self.cfg, by_name(inventory, self.cfg))
            self._offered_cache = cached
        return cached[2]

    # -- prepare -----------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        """One outcome per requested claim, keyed by the requested UID."""
        fetched: dict[str, AllocatedClaim | ClaimError] = {}
        for ref in refs:
            record = self._store.dra_claim(ref.uid)
            if record is not None and record.state != "unpreparing":
                continue  # the checkpoint answers; the claim may be gone from the API
            try:
                fetched[ref.uid] = fetch(self._reader, ref, self.driver)
            except ClaimError as err:
                fetched[ref.uid] = err
        out: dict[str, Outcome] = {}
        with self._lock:
            for ref in refs:
                try:
                    out[ref.uid] = self._prepare_one(ref, fetched.get(ref.uid))
                except ClaimError as err:
                    log.warning("cannot prepare claim %s: %s", ref, err)
                    out[ref.uid] = Outcome(error=str(err))
                except Exception as err:
                    log.exception("preparing claim %s failed", ref)
                    out[ref.uid] = Outcome(error=f"internal error preparing the claim: {err}")
        return out

    def _prepare_one(self, ref: ClaimRef, fetched: AllocatedClaim | ClaimError | None) -> Outcome:
        record = self._store.dra_claim(ref.uid)
        if record is not None and record.state == "prepared":
            self._ensure_spec(record)
            return _outcome(self.driver, record.devices)
        if record is not None and record.state == "unpreparing":
            self._unprepare_record(record)  # finish what a crash interrupted, then start over
            record = None
        if record is not None:  # "preparing": a crash came between plan and answer
            plan = record.devices
        else:
            if isinstance(fetched, ClaimError):
                raise fetched
            if fetched is None:
                raise ClaimError(f"claim {ref} was unprepared while this call waited")
            plan = self._plan(fetched)
        moves = self._moves(plan)
        if moves and record is None:
            # Durable before the first driver moves: Unprepare or a resumed
            # Prepare must know where each VF came from.
            self._store.put_dra_claim(ref.uid, ref.namespace, ref.name, plan, [], "preparing")
        try:
            plan = self._bind_all(plan, moves)
            cdi_ids = self._write_spec(ref.uid, plan)
        except (NicwardenError, ClaimError, OSError) as err:
            self._roll_back(ref.uid, plan)
            raise ClaimError(f"claim {ref}: {err}; nothing is left prepared") from err
        self._store.put_dra_claim(ref.uid, ref.namespace, ref.name, plan, cdi_ids, "prepared")
        log.info("prepared claim %s: %s", ref, ", ".join(d["address"] for d in plan))
        return _outcome(self.driver, plan)

    def _plan(self, claim: AllocatedClaim) -> list[dict[str, Any]]:
        """What to do for each device, checked against this node; no side effects."""
        ref = claim.ref
        try:
            configs = configs_for(claim.configs, [d.request for d in claim.devices])
        except Invalid as err:
            raise ClaimError(
                f"claim {ref}: invalid opaque config: "
                + "; ".join(p.render(self.driver) for p in err.problems)
            ) from err
        inventory = self._ctx.inventory.snapshot()
        offered = self._offered(inventory)
        held = self._held_by_others(ref.uid)
        plan: list[dict[str, Any]] = []
        for alloc in claim.devices:
            label = f"{alloc.pool}/{alloc.device}"
            if alloc.pool != self._node:
                raise ClaimError(
                    f"claim {ref}: device {label} is not in this node's pool {self._node}"
                )
            found = offered.get(alloc.device)
            if found is None:
                raise ClaimError(
                    f"claim {ref}: device {label} is not a VF this node offers through {self.driver}"
                )
            if found.address in held:
                raise ClaimError(
                    f"claim {ref}: device {label} ({found.address}) is already prepared"
                    f" for claim {held[found.address]}"
                )
            conf = configs[alloc.request]
            if conf.vhost_net and inventory.missing_dev_nodes:
                raise ClaimError(
                    f"claim {ref}: vhostNet asked for, but this node lacks"
                    f" {', '.join(inventory.missing_dev_nodes)}"
                )
            plan.append(
                {
                    "request": alloc.request,
                    "pool": alloc.pool,
                    "device": alloc.device,
                    "address": found.address,
                    "pf": found.pf.address,
                    "previous": found.vf.fn.driver,
                    "target": BIND_TARGET.get(conf.driver or ""),
                    "driver": conf.driver,
                    "ifName": conf.if_name,
                    "networkName": conf.network_name,
                    "vhostNet": conf.vhost_net,
                    "cdiName": cdi.device_name(ref.uid, alloc.device),
                }
            )
        return plan

    def _held_by_others(self, uid: str) -> dict[str, str]:
        held: dict[str, str] = {}
        for record in self._store.dra_claims():
            if record.uid != uid:
                for d in record.devices:
                    held[str(d.get("address"))] = (
                        f"{record.namespace}/{record.name} (uid {record.uid})"
                    )
        return held

    def _moves(self, plan: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
        """(address, bind target) of the VFs not yet on the driver their config asks for."""
        inventory = self._ctx.inventory.snapshot()
        out = []
        for step in plan:
            found = inventory.find(step["address"])
            current = found.fn.driver if isinstance(found, VF) else None
            if step["target"] is not None and _bind_class(current) != step["target"]:
                out.append((step["address"], step["target"]))
        return out

    def _bind_all(
        self, plan: list[dict[str, Any]], moves: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """Make the ``moves`` (through binding.bind, with its in-use checks);
        returns the plan with the vfio group node each vfio VF ended up with."""
        for address, target in moves:
            try:
                binding.bind(self._ctx, address, target)
            except Busy as err:
                raise ClaimError(_in_use(address, target, err)) from err
        inventory = self._ctx.inventory.snapshot()
        out = []
        for step in plan:
            found = inventory.find(step["address"])
            if not isinstance(found, VF):
                raise NotFound(f"VF {step['address']} vanished while being prepared")
            mount = vfio_mount(found) if found.fn.is_vfio else None
            if found.fn.is_vfio and mount is None:
                raise NotFound(
                    f"VF {found.address} is bound to vfio-pci but its vfio group node is missing"
                )
            out.append(
                {
                    **step,
                    "vfioNode": str(mount.host_path) if mount else None,
                    "vfioPath": mount.container_path if mount else None,
                }
            )
        return out

    def _vf(self, address: str) -> VF | None:
        found = self._ctx.inventory.snapshot().find(address)
        return found if isinstance(found, VF) else None

    def _spec(
        self, uid: str, plan: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, object], list[str]]:
        """The claim's CDI spec document and the qualified ids of its devices."""
        paths = self._ctx.paths
        devices = []
        for step in plan:
            per_device = env_var_name(f"{self.driver}/{step['device']}")
            env = (f"{per_device}={step['address']}",)
            nodes: list[cdi.DeviceNode] = []
            if step.get("vfioNode"):
                nodes.append(cdi.DeviceNode(VFIO_CONTAINER_MOUNT, str(pci.vfio_container(paths))))
                nodes.append(cdi.DeviceNode(step["vfioPath"], step["vfioNode"]))
            if step.get("vhostNet"):
                vhost, tun = pci.vhost_nodes(paths)
                nodes += [cdi.DeviceNode(VHOST_NET, str(vhost)), cdi.DeviceNode(TUN, str(tun))]
            devices.append(cdi.CdiDevice(step["cdiName"], env, tuple(nodes)))
        # The device plugin's claim-wide pair, with the driver name as the
        # resource: what pods written for sriov-network-device-plugin read.
        info = info_env_value(
            InfoEntry(s["address"], s.get("vfioPath"), bool(s.get("vhostNet"))) for s in plan
        )
        claim_env = (
            f"{env_var_name(self.driver)}={','.join(s['address'] for s in plan)}",
            f"{info_env_var_name(self.driver)}={info}",
        )
        document = cdi.spec_document(self.driver, devices, claim_env)
        return document, [cdi.qualified_id(self.driver, d.name) for d in devices]

    def _write_spec(self, uid: str, plan: Sequence[dict[str, Any]]) -> list[str]:
        document, ids = self._spec(uid, plan)
        cdi.write_spec(self.cfg.cdi_dir, self.driver, uid, document)
        return ids

    def _ensure_spec(self, record: DraClaimRecord) -> bool:
        """Re-write a prepared claim's spec when it is missing or not what
        the checkpoint says (a reboot emptied the directory, someone edited
        it); returns whether it had to."""
        document, _ids = self._spec(record.uid, record.devices)
        if cdi.spec_is_current(self.cfg.cdi_dir, self.driver, record.uid, document):
            return False
        cdi.write_spec(self.cfg.cdi_dir, self.driver, record.uid, document)
        log.warning("re-wrote the CDI spec of prepared claim %s/%s", record.namespace, record.name)
        return True

    def restore_specs(self) -> int:
        """At start: every prepared claim's spec back in place (the CDI
        directory is usually tmpfs, emptied by a reboot kubelet's checkpoint
        survives). Returns how many were re-written."""
        with self._lock:
            return sum(
                self._ensure_spec(r) for r in self._store.dra_claims() if r.state == "prepared"
            )

    def _roll_back(self, uid: str, plan: Sequence[dict[str, Any]]) -> None:
        problems = self._restore_drivers(plan)
        cdi.remove_spec(self.cfg.cdi_dir, self.driver, uid)
        if problems:
            # Keep the checkpoint: Unprepare (or the next Prepare) retries.
            self._store.set_dra_claim_state(uid, "unpreparing")
            log.error("claim %s: could not move every VF back: %s", uid, "; ".join(problems))
        else:
            self._store.delete_dra_claim(uid)

    # -- unprepare ---------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        """The error per requested UID ("" when unprepared, or never prepared)."""
        out: dict[str, str] = {}
        with self._lock:
            for ref in refs:
                record = self._store.dra_claim(ref.uid)
                try:
                    if record is not None:
                        self._unprepare_record(record)
                        log.info("unprepared claim %s", ref)
                    else:
                        # Never recorded, but a crash between spec and
                        # checkpoint can leave a spec behind.
                        cdi.remove_spec(self.cfg.cdi_dir, self.driver, ref.uid)
                    out[ref.uid] = ""
                except ClaimError as err:
                    log.warning("cannot unprepare claim %s: %s", ref, err)
                    out[ref.uid] = str(err)
                except Exception as err:
                    log.exception("unpreparing claim %s failed", ref)
                    out[ref.uid] = f"internal error unpreparing the claim: {err}"
        return out

    def _unprepare_record(self, record: DraClaimRecord) -> None:
        if record.state != "unpreparing":
            # Before moving drivers back: a prepared claim counts as using its VFs.
            self._store.set_dra_claim_state(record.uid, "unpreparing")
        problems = self._restore_drivers(record.devices)
        if problems:
            raise ClaimError(
                f"claim {record.namespace}/{record.name}: cannot restore VF drivers: "
                + "; ".join(problems)
            )
        cdi.remove_spec(self.cfg.cdi_dir, self.driver, record.uid)
        self._store.delete_dra_claim(record.uid)

    def _restore_drivers(self, plan: Sequence[dict[str, Any]]) -> list[str]:
        problems = []
        for step in plan:
            home = _bind_class(step.get("previous"))
            if step.get("target") is None or home is None or home == step["target"]:
                continue  # never moved (or it had no driver: nothing to go back to)
            vf = self._vf(step["address"])
            if vf is not None and _bind_class(vf.fn.driver) == home:
                continue
            try:
                binding.bind(self._ctx, step["address"], home)
            except NotFound:
                continue  # the VF is gone (numVfs lowered): nothing left to restore
            except NicwardenError as err:
                problems.append(f"{step['address']} back to {step['previous']}: {err}")
        return problems


def _in_use(address: str, target: str, err: Busy) -> str:
    """binding's in-use refusal, phrased for kubelet's caller: its advice
    (an admin's force flag) has no place on this path; the VF must be freed."""
    detail = str(err).split("; force", 1)[0].removeprefix(f"{address} is in use: ")
    return (
        f"VF {address} is in use ({detail}), so it cannot move to {target} for this claim;"
        " kubelet retries once it is free"
    )


def _outcome(driver: str, plan: Sequence[dict[str, Any]]) -> Outcome:
    return Outcome(
        devices=tuple(
            PreparedDevice(
                step["request"],
                step["pool"],
                step["device"],
                (cdi.qualified_id(driver, step["cdiName"]),),
            )
            for step in plan
        )
    )
