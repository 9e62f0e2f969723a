"""Pod attachments: the agent's CNI backend (ADD, DEL, CHECK, STATUS, GC).

Every ADD records what it found (VF netdev name, MAC, MTU, PF-side VF
attributes) in the store *before* changing anything, in state ``adding``;
each step pushes its undo, and a failure unwinds them (IPAM DEL included).
A crash leaves the ``adding`` row, which reconcile() rolls back at start.
DEL is idempotent and finds the VF by PCI address wherever it is: still in
the pod, back in the host netns because the pod's netns died, or gone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nicwarden.agent import ipam
from nicwarden.agent.errors import AlreadyExists, Busy, NicwardenError, NotFound
from nicwarden.agent.faults import crash_point
from nicwarden.agent.files import atomic_write
from nicwarden.agent.host.discovery import host_netdev, read_function_if_present
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.nsid import is_host_netns
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.vf_locate import is_vf_link
from nicwarden.agent.host.vfnetlink import VfConfigurator, VfSettings
from nicwarden.agent.model import PF, VF, InventorySource
from nicwarden.agent.store import Attachment, AttachmentKey, Store
from nicwarden.cni.errors import (
    INVALID_CONFIG,
    IO_FAILURE,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
)
from nicwarden.cni.errors import INVALID_ENVIRONMENT as INVALID_ENV
from nicwarden.cni.errors import TRY_AGAIN_LATER as TRY_AGAIN
from nicwarden.cni.request import CniRequest, Command
from nicwarden.cni.result import Interface, Result, parse_result
from nicwarden.deviceplugin.devinfo import device_info

log = logging.getLogger(__name__)

RETURN_WAIT_S = 3.0  # how long DEL waits for a VF to come home from a dying netns


PolicyHook = Callable[[Attachment], None]


@dataclass
class AttachContext:
    paths: HostPaths
    inventory: InventorySource
    store: Store
    vfconf: VfConfigurator
    settings_type: type[VfSettings] = VfSettings
    netlink: Callable[[str | None], Netlink] = Netlink
    on_attach: list[PolicyHook] = field(default_factory=list)
    on_detach: list[PolicyHook] = field(default_factory=list)
    ready: Callable[[], bool] = lambda: True
    # (pod namespace, pod name, pod uid, message) for failed ADDs: Events.
    on_error: list[Callable[[str, str, str, str], None]] = field(default_factory=list)
    # Why a VF must not be handed out though no attachment holds it (it is
    # out of place with nothing on record to explain it), or None.
    blocked: Callable[[str], str | None] = lambda _address: None
    # Why an ADD may not take a VF whose front-end needs an allocation on
    # record first (a VF DRA offers and no prepared claim holds), or None.
    unclaimed: Callable[[str], str | None] = lambda _address: None


class KeyedLocks:
    """One lock per key (VF address, attachment key), alive while in use:
    keys include container IDs, so a lock table that never shrank would grow
    with every pod the node ever ran."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        # Sorted acquisition: two requests naming the same keys cannot deadlock.
        ordered = sorted(set(keys))
        with self._guard:
            locks = []
            for k in ordered:
                lock, users = self._locks.get(k, (threading.Lock(), 0))
                self._locks[k] = (lock, users + 1)
                locks.append(lock)
        acquired: list[threading.Lock] = []
        try:
            for lock in locks:
                lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            with self._guard:
                for k in ordered:
                    lock, users = self._locks[k]
                    if users == 1:
                        del self._locks[k]
                    else:
                        self._locks[k] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Undo:
    """A stack of compensating actions, run newest first on failure."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def run(self) -> list[str]:
        failed = []
        while self._steps:
            what, fn = self._steps.pop()
            try:
                fn()
            except Exception as e:  # keep unwinding: strand as little as possible
                log.error("rollback step failed", extra={"step": what, "error": str(e)})
                failed.append(f"{what}: {e}")
        return failed


def key_of(req: CniRequest) -> AttachmentKey:
    return AttachmentKey(req.container_id, req.ifname, req.network_name)


def netns_alive(path: str) -> bool:
    return bool(path) and os.path.exists(path)


# How long an ADD rollback waits for a VF it brought home to show in sysfs.
FORGET_WAIT_S = 2.0


class AttachService:
    """Implements nicwarden.cni.dispatch.CniBackend."""

    def __init__(self, ctx: AttachContext) -> None:
        self.ctx = ctx
        self.locks = KeyedLocks()

    # -- ADD -----------------------------------------------------------------

    def add(self, req: CniRequest) -> Result:
        try:
            return self._add(req)
        except Exception as e:
            for hook in self.ctx.on_error:
                try:
                    hook(
                        req.args.pod_namespace or "",
                        req.args.pod_name or "",
                        req.args.pod_uid or "",
                        f"attaching {req.ifname} on network {req.network_name} failed: {e}",
                    )
                except Exception:
                    log.exception("attach error hook failed")
            raise

    def _add(self, req: CniRequest) -> Result:
        if req.device_id is None:
            if req.prev_result is not None:
                return self._add_chained(req)
            raise CniError(
                INVALID_CONFIG,
                'no deviceID: set top-level "deviceID" (Multus injects it from the NAD\'s'
                " k8s.v1.cni.cncf.io/resourceName) or runtimeConfig.deviceID, or chain this"
                " plugin after another one for policy-only mode",
            )
        _refuse_netns(req.netns)
        ipam.require_plugin(req)
        key = key_of(req)
        with self.locks.hold(f"vf:{req.device_id}", f"att:{key}"):
            vf = self._find_vf(req.device_id)
            self._claimable(vf, key)
            with self.ctx.netlink(req.netns) as pod:
                if pod.link(req.ifname) is not None:
                    raise CniError(
                        INVALID_CONFIG, f"interface {req.ifname} already exists in {req.netns}"
                    )
                if vf.fn.is_vfio:
                    return self._add_dpdk(req, vf)
                return self._add_netdev(req, vf, pod)

    def _find_vf(self, address: str) -> VF:
        found = self._fresh(address)
        if found is None:
            raise CniError(INVALID_CONFIG, f"deviceID {address} is not a VF on this node")
        if not isinstance(found, VF):
            raise CniError(INVALID_CONFIG, f"deviceID {address} is a PF, not a VF")
        return found

    def _claimable(self, vf: VF, key: AttachmentKey) -> None:
        if self.ctx.store.get_attachment(key.container_id, key.ifname, key.network):
            raise AlreadyExists(
                f"container {key.container_id} already has {key.ifname} on network"
                f" {key.network}: DEL it first"
            )
        why_not = self.ctx.unclaimed(vf.address)
        if why_not is not None:
            raise CniError(INVALID_CONFIG, f"deviceID {vf.address} refused: {why_not}")
        holder = self.ctx.store.attachment_for_device(vf.address)
        if holder is None:
            why = self.ctx.blocked(vf.address)
            if why is not None:
                raise Busy(f"VF {vf.address} is not offered to pods: {why}")
            return
        if netns_alive(holder.netns):
            raise Busy(
                f"VF {vf.address} is attached to pod {holder.pod_namespace}/{holder.pod_name}"
                f" (container {holder.container_id}, {holder.ifname})"
            )
        # Its pod's netns is gone but nobody sent DEL (Multus lost its cache).
        log.warning("reclaiming VF from a dead netns", extra={"vf": vf.address})
        self._release(holder)

    def _pf_ifname(self, vf: VF) -> str:
        if vf.pf_name is None:
            raise NotFound(f"PF {vf.pf_address} of VF {vf.address} has no netdev")
        return vf.pf_name

    def _original(self, vf: VF) -> dict[str, Any]:
        nd = vf.fn.netdev
        settings = self.ctx.vfconf.get(self._pf_ifname(vf), vf.index)
        return {
            "name": nd.name if nd else None,
            "mac": nd.mac if nd else None,
            "mtu": nd.mtu if nd else None,
            # A move keeps the ifindex when it is free in the target netns (a
            # new pod netns holds only lo): how rollback and DEL find the VF
            # there whatever name it ended up with.
            "ifindex": nd.ifindex if nd else None,
            "vf": _plain(settings),
        }

    def _original_for(self, req: CniRequest, vf: VF) -> dict[str, Any]:
        # CNI_PATH is kept so a reconcile after a crash can still run IPAM DEL.
        return {**self._original(vf), "cni_path": req.cni_path}

    def _put(self, req: CniRequest, vf: VF, kind: str, original: Mapping[str, Any]) -> Attachment:
        return self.ctx.store.put_attachment(
            key_of(req),
            netns=req.netns,
            device=vf.address,
            kind=kind,  # type: ignore[arg-type]
            pod_namespace=req.args.pod_namespace or "",
            pod_name=req.args.pod_name or "",
            pod_uid=req.args.pod_uid or "",
            original=original,
            config=dict(req.config),
        )

    def _apply_pf_side(
        self, req: CniRequest, vf: VF, undo: Undo, original: Mapping[str, Any]
    ) -> None:
        wanted = self._wanted_settings(req)
        if wanted is None:
            return
        pf = self._pf_ifname(vf)
        undo.push("restore PF-side VF attributes", lambda: self._restore_vf(pf, vf.index, original))
        self.ctx.vfconf.set(pf, vf.index, wanted)

    def _wanted_settings(self, req: CniRequest) -> VfSettings | None:
        o = req.options
        if o is None:
            return None
        wanted = self.ctx.settings_type(
            mac=o.mac,
            # qos rides in the VLAN attribute: qos without a VLAN means VLAN 0.
            vlan=0 if o.vlan_qos is not None and o.vlan is None else o.vlan,
            qos=o.vlan_qos,
            vlan_proto=o.vlan_proto,
            spoofchk=o.spoofchk,
            trust=o.trust,
            link_state=o.link_state,
            min_tx_rate=o.min_tx_rate,
            max_tx_rate=o.max_tx_rate,
        )
        return wanted if wanted.given() else None

    def _restore_vf(self, pf: str, index: int, original: Mapping[str, Any]) -> None:
        saved = original.get("vf") or {}
        self.ctx.vfconf.set(pf, index, self.ctx.settings_type(**saved))

    def _add_netdev(self, req: CniRequest, vf: VF, pod: Netlink) -> Result:
        nd = vf.fn.netdev
        if nd is None:
            raise CniError(
                TRY_AGAIN,
                f"VF {vf.address} has no netdev in the host netns (still leaving another pod?)",
            )

        def plumb(undo: Undo, att: Attachment, original: Mapping[str, Any]) -> Result:
            undo.push("bring VF home", lambda: self._bring_home(vf, att, original))
            self.ctx.netlink(None).move_to_netns(nd.name, req.netns, new_name=req.ifname)
            crash_point("attach.after_move")
            pod.drop_altnames(req.ifname)
            opts = req.options
            pod.set_link(
                req.ifname,
                mac=opts.mac if opts is not None and opts.mac else None,
                mtu=opts.mtu if opts is not None and opts.mtu else None,
                up=True,
            )
            ip_result = self._ipam_add(req, undo)
            if ip_result is not None:
                ipam.apply(pod, req.ifname, ip_result)
            crash_point("attach.before_commit")
            link = pod.link(req.ifname)
            assert link is not None
            iface = Interface(
                name=req.ifname, mac=link.mac, sandbox=req.netns, mtu=link.mtu, pci_id=vf.address
            )
            return _with_interface(ip_result, iface)

        return self._attach_vf(req, vf, "sriov", plumb)

    def _add_dpdk(self, req: CniRequest, vf: VF) -> Result:
        def describe(undo: Undo, att: Attachment, original: Mapping[str, Any]) -> Result:
            # A vfio VF has no kernel netdev: the addresses are the DPDK app's to use.
            iface = Interface(name=req.ifname, sandbox=req.netns, pci_id=vf.address)
            return _with_interface(self._ipam_add(req, undo), iface)

        return self._attach_vf(req, vf, "dpdk", describe)

    def _attach_vf(
        self,
        req: CniRequest,
        vf: VF,
        kind: str,
        body: Callable[[Undo, Attachment, Mapping[str, Any]], Result],
    ) -> Result:
        """What every VF ADD does around its own steps (``body``): the
        original state on record first, PF-side attributes, then device-info,
        the commit and the allocation; on failure every step is undone."""
        original = self._original_for(req, vf)
        att = self._put(req, vf, kind, original)
        undo = Undo()
        undo.push("forget attachment", lambda: self._forget(att, vf))
        try:
            self._apply_pf_side(req, vf, undo, original)
            result = body(undo, att, original)
            self._device_info(req, vf)
            self.ctx.store.set_attachment_state(att.key, "ready", result.render("1.1.0"))
            self._claim_allocation(req, vf)
        except BaseException:
            problems = undo.run()
            if problems:
                log.error("ADD rollback incomplete", extra={"problems": "; ".join(problems)})
            raise
        self._notify(self.ctx.on_attach, att.key)
        return result

    def _forget(self, att: Attachment, vf: VF) -> None:
        """Delete the row only once the VF is home: while it is elsewhere the
        row is the only record of where it went and what to restore, and it
        keeps the VF from being handed out again (reconcile retries it)."""
        # The VF was just brought home; on the simulated node its sysfs
        # link follows the kernel a moment later, so wait briefly.
        if att.kind == "sriov" and self.wait_home(vf.address, FORGET_WAIT_S) is None:
            raise CniError(
                TRY_AGAIN,
                f"VF {vf.address} is not back in the host netns; its attachment is kept"
                " for reconcile to finish the rollback",
            )
        self.ctx.store.delete_attachment(att.key)

    def _claim_allocation(self, req: CniRequest, vf: VF) -> None:
        """Kubelet's Allocate names no pod; the ADD that gets the device does.
        Tie them, so the CLI and refusals can name the pod."""
        alloc = self.ctx.store.allocation_for_device(vf.address)
        if alloc is not None:
            self.ctx.store.record_allocation(
                alloc.resource,
                [vf.address],
                pod_namespace=req.args.pod_namespace or "",
                pod_name=req.args.pod_name or "",
                pod_uid=req.args.pod_uid or "",
                container=req.container_id,
            )

    def _ipam_add(self, req: CniRequest, undo: Undo) -> Result | None:
        if ipam.ipam_section(req.config) is None:
            return None
        undo.push("IPAM DEL", lambda: ipam.delete(req))
        return ipam.for_interface(ipam.add(req))

    def _device_info(self, req: CniRequest, vf: VF) -> None:
        """Multus may have copied the DP's file here already
        (docs/contracts.md#device-info-files); write ours (0444, atomically)
        only when it has not."""
        if not req.device_info_file:
            return
        target = Path(req.device_info_file)
        if target.exists():
            return
        info = device_info(vf.address, vf.pf_address, None)
        try:
            atomic_write(target, json.dumps(info, sort_keys=True), 0o444)
        except OSError as e:
            raise CniError(
                IO_FAILURE, f"cannot write the device-info file {target}: {e.strerror or e}"
            ) from e

    def _add_chained(self, req: CniRequest) -> Result:
        prev = req.prev_result
        assert prev is not None
        _refuse_netns(req.netns)
        if not any(i.name == req.ifname and i.sandbox for i in prev.interfaces):
            raise CniError(
                INVALID_CONFIG,
                f"prevResult has no sandbox interface {req.ifname}: nothing to police",
            )
        att = self.ctx.store.put_attachment(
            key_of(req),
            netns=req.netns,
            device=None,
            kind="chained",
            pod_namespace=req.args.pod_namespace or "",
            pod_name=req.args.pod_name or "",
            pod_uid=req.args.pod_uid or "",
            original={},
            config=dict(req.config),
            state="ready",
            result=prev.render("1.1.0"),
        )
        self._notify(self.ctx.on_attach, att.key)
        return prev

    # -- DEL -----------------------------------------------------------------

    def delete(self, req: CniRequest) -> None:
        key = key_of(req)
        att = self.ctx.store.get_attachment(key.container_id, key.ifname, key.network)
        if att is None:
            # A DEL with no matching ADD (or a repeat): release IPAM anyway
            # (docs/contracts.md#cni-commands).
            if _owns_ipam(req):
                ipam.delete(req)
            return
        with self.locks.hold(f"vf:{att.device}" if att.device else "vf:-", f"att:{key}"):
            self._release(att, req)

    def _release(self, att: Attachment, req: CniRequest | None = None) -> None:
        """Undo an attachment completely; safe to repeat after a crash."""
        if att.state != "deleting":
            self.ctx.store.set_attachment_state(att.key, "deleting")
        self._notify(self.ctx.on_detach, att.key)
        if att.kind != "chained" and att.device is not None:
            vf = self._find_vf_anyhow(att.device)
            if vf is not None:
                if att.kind == "sriov":
                    self._bring_home(vf, att, att.original)
                if att.original.get("vf"):
                    self._restore_vf(self._pf_ifname(vf), vf.index, att.original)
        if att.kind != "chained" and ipam.ipam_section(att.config) is not None:
            ipam.delete(req if req is not None else _replay_request(att))
        if att.device is not None:
            # The pod is done with the device: kubelet frees it on its side too.
            alloc = self.ctx.store.allocation_for_device(att.device)
            if alloc is not None:
                self.ctx.store.release_allocation(alloc.resource, att.device)
        self.ctx.store.delete_attachment(att.key)

    def _find_vf_anyhow(self, address: str) -> VF | None:
        found = self._fresh(address)
        return found if isinstance(found, VF) else None

    def _fresh(self, address: str) -> PF | VF | None:
        """The device as sysfs says right now. Reads only that function (a
        full rescan on every step costs more than the netlink work itself);
        the snapshot supplies its place in the tree."""
        known = self.ctx.inventory.snapshot().find(address)
        if known is None:
            known = self.ctx.inventory.rescan().find(address)
        if not isinstance(known, VF):
            return known
        fn = read_function_if_present(self.ctx.paths, known.address)
        if fn is None:
            return self.ctx.inventory.rescan().find(address)
        return replace(known, fn=fn)

    def _bring_home(self, vf: VF, att: Attachment, original: Mapping[str, Any]) -> None:
        """Return the VF netdev to the host netns with its original name, MAC,
        MTU, and without the addresses and routes the attachment gave it."""
        name, mac, mtu = original.get("name"), original.get("mac"), original.get("mtu")
        current = self._host_netdev(vf.address)
        if current is None and netns_alive(att.netns):
            with self.ctx.netlink(att.netns) as pod:
                found = _locate(pod, vf, att, original)
                if found is not None:
                    # Leaving a netns drops the addresses and routes it had there.
                    pod.move_to_netns(found, None, new_name=name or None)
                    current = name or None
            if current is None:
                current = self.wait_home(vf.address, 1.0)
        if current is None:
            # The netns is dying: the kernel returns the VF shortly.
            current = self.wait_home(vf.address, RETURN_WAIT_S)
        if current is None:
            raise CniError(
                TRY_AGAIN,
                f"VF {vf.address} is neither in {att.netns or 'the pod netns'} nor back in the"
                " host netns yet; retry DEL",
            )
        with self.ctx.netlink(None) as host:
            # An attachment made before host netns were refused put the pod's
            # addresses and routes on the host itself.
            self._strip(host, current, att)
            host.set_link(
                current,
                new_name=name if name and current != name else None,
                mac=mac or None,
                mtu=mtu or None,
                up=True,
            )

    def _strip(self, nl: Netlink, ifname: str, att: Attachment) -> None:
        """Remove the attachment's routes and addresses from ``ifname`` (there
        only when the attachment was made in the host netns itself)."""
        result = att.result or {}
        ours = {str(ip.get("address")) for ip in result.get("ips") or [] if isinstance(ip, dict)}
        present = {a.cidr for a in nl.addresses(ifname)} & ours
        if not present:
            return
        for route in result.get("routes") or []:
            if isinstance(route, dict) and route.get("dst"):
                nl.delete_route(str(route["dst"]), None, ifname)
        for cidr in sorted(present):
            nl.delete_address(ifname, cidr)

    def _host_netdev(self, address: str) -> str | None:
        nd = host_netdev(self.ctx.paths, address)
        return nd.name if nd is not None else None

    def wait_home(self, address: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            name = self._host_netdev(address)
            if name is not None or time.monotonic() >= deadline:
                return name
            time.sleep(0.05)

    # -- CHECK ---------------------------------------------------------------

    def check(self, req: CniRequest) -> None:
        key = key_of(req)
        att = self.ctx.store.get_attachment(key.container_id, key.ifname, key.network)
        if att is None:
            raise CniError(
                UNKNOWN_CONTAINER,
                f"no attachment {key.ifname} for container {key.container_id} on {key.network}",
            )
        if att.state != "ready":
            raise CniError(TRY_AGAIN, f"attachment is {att.state}")
        if att.kind == "chained":
            return
        expected = req.prev_result or (parse_result(att.result, "1.1.0") if att.result else None)
        if att.kind == "sriov":
            self._check_netdev(req, att, expected)
        self._check_pf_side(req, att)
        if _owns_ipam(req):
            ipam.check(req)

    def _check_netdev(self, req: CniRequest, att: Attachment, expected: Result | None) -> None:
        if not netns_alive(req.netns):
            raise CniError(INVALID_ENV, f"netns {req.netns} does not exist")
        pod = self.ctx.netlink(req.netns)
        link = pod.link(req.ifname)
        if link is None:
            raise CniError(INVALID_CONFIG, f"interface {req.ifname} is missing from {req.netns}")
        if expected is None:
            return
        mine = [i for i in expected.interfaces if i.name == req.ifname]
        if mine and mine[0].mac and mine[0].mac.lower() != link.mac.lower():
            raise CniError(
                INVALID_CONFIG, f"{req.ifname} MAC is {link.mac}, expected {mine[0].mac}"
            )
        have = {a.cidr for a in pod.addresses(req.ifname)}
        for ip in expected.ips:
            if str(ip.address) not in have:
                raise CniError(INVALID_CONFIG, f"{req.ifname} lacks address {ip.address}")
        routes = {r.dst for r in pod.routes(req.ifname)}
        for route in expected.routes:
            if str(route.dst) not in routes and route.dst.prefixlen != 0:
                raise CniError(INVALID_CONFIG, f"route {route.dst} via {req.ifname} is missing")

    def _check_pf_side(self, req: CniRequest, att: Attachment) -> None:
        wanted = self._wanted_settings(req)
        if wanted is None or att.device is None:
            return
        vf = self._find_vf(att.device)
        have = _plain(self.ctx.vfconf.get(self._pf_ifname(vf), vf.index))
        for name, value in _plain(wanted).items():
            if value is not None and have.get(name) != value:
                raise CniError(
                    INVALID_CONFIG,
                    f"VF {vf.address} {name} is {have.get(name)!r}, expected {value!r}",
                )

    # -- STATUS, GC ----------------------------------------------------------

    def status(self, req: CniRequest) -> CniError | None:
        if not self.ctx.ready():
            return CniError(NOT_AVAILABLE, "the nicwarden agent's inventory is not ready")
        if _owns_ipam(req):
            try:
                ipam.negotiated_config(req)
            except CniError as e:
                return CniError(NOT_AVAILABLE, f"IPAM plugin unavailable: {e.msg}")
        return None

    def gc(self, req: CniRequest) -> None:
        valid = {(a.container_id, a.ifname) for a in req.valid_attachments}
        errors = []
        for att in self.ctx.store.list_attachments():
            if att.network != req.network_name or (att.container_id, att.ifname) in valid:
                continue
            try:
                with self.locks.hold(
                    f"vf:{att.device}" if att.device else "vf:-", f"att:{att.key}"
                ):
                    current = self._current(att)
                    if current is not None:
                        self._release(current)
            except (CniError, NicwardenError) as e:  # keep going, report at the end
                errors.append(f"{att.container_id}/{att.ifname}: {e}")
        if _owns_ipam(req):
            ipam.gc(req)
        if errors:
            raise CniError(
                TRY_AGAIN, "GC could not release every stale attachment", "; ".join(errors)
            )

    # -- reconcile -----------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Finish what a crash interrupted and free VFs whose pods vanished.
        Returns a line per action taken (logged and shown by the CLI)."""
        done = []
        for listed in self.ctx.store.list_attachments():
            if _why_stale(listed) is None:
                continue
            try:
                with self.locks.hold(
                    f"vf:{listed.device}" if listed.device else "vf:-", f"att:{listed.key}"
                ):
                    # Judged again under the locks: the ADD or DEL that held
                    # them may have finished what looked half-done.
                    att = self._current(listed)
                    reason = None if att is None else _why_stale(att)
                    if att is None or reason is None:
                        continue
                    self._release(att)
                done.append(f"released {listed.container_id}/{listed.ifname} ({reason})")
            except (CniError, NicwardenError) as e:
                done.append(f"could not release {listed.container_id}/{listed.ifname}: {e}")
        for line in done:
            log.info("reconcile", extra={"action": line})
        return done

    def _current(self, att: Attachment) -> Attachment | None:
        """The attachment as the store has it now (None when gone)."""
        return self.ctx.store.get_attachment(att.container_id, att.ifname, att.network)

    def _notify(self, hooks: list[PolicyHook], key: AttachmentKey) -> None:
        att = self.ctx.store.get_attachment(key.container_id, key.ifname, key.network)
        if att is None:
            return
        for hook in hooks:
            try:
                hook(att)
            except Exception:
                log.exception("attachment hook failed")


def _why_stale(att: Attachment) -> str | None:
    """Why the periodic reconcile should undo ``att``, if it should."""
    if att.state in ("adding", "deleting"):
        return f"half-done {att.state.removesuffix('ing')}"
    if not netns_alive(att.netns):
        return "pod netns gone without DEL"
    return None


def _refuse_netns(netns: str) -> None:
    if not netns_alive(netns):
        raise CniError(INVALID_ENV, f"CNI_NETNS {netns!r} does not exist")
    if is_host_netns(netns):
        raise CniError(
            INVALID_ENV,
            f"CNI_NETNS {netns!r} is the host's network namespace (the agent's own):"
            " a pod interface cannot be attached there",
        )


def _locate(pod: Netlink, vf: VF, att: Attachment, original: Mapping[str, Any]) -> str | None:
    """The VF's netdev name in ``pod``, found by its identity, never by its
    name (a link the pod made under the attachment's name must not be taken
    home): its parent device (or the simulator's alias) naming the PCI
    address, else the ifindex it had when we moved it."""
    links = [link for link in pod.links() if link.link_type != "loopback"]
    for link in links:
        if is_vf_link(link, vf.address):
            return link.name
    ifindex = original.get("ifindex")
    for link in links:
        if ifindex and link.index == ifindex:
            return link.name
    return None


def _owns_ipam(req: CniRequest) -> bool:
    """In a conflist each plugin gets its own config object, so an ipam
    section in ours is ours to delegate (chained mode normally has none)."""
    return ipam.ipam_section(req.config) is not None


def _with_interface(ip_result: Result | None, iface: Interface) -> Result:
    if ip_result is None:
        return Result(interfaces=(iface,))
    return Result(
        interfaces=(iface,), ips=ip_result.ips, routes=ip_result.routes, dns=ip_result.dns
    )


def _plain(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        return dict(settings)
    return {k: v for k, v in asdict(settings).items()}


def _replay_request(att: Attachment) -> CniRequest:
    """A DEL request rebuilt from the store (reconcile has no runtime call)."""
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": att.container_id,
        "CNI_NETNS": att.netns,
        "CNI_IFNAME": att.ifname,
        "CNI_PATH": str(att.original.get("cni_path") or "/opt/cni/bin"),
    }
    return CniRequest(
        command=Command.DEL,
        cni_version=str(att.config.get("cniVersion", "1.0.0")),
        env=env,
        container_id=att.container_id,
        netns=att.netns,
        ifname=att.ifname,
        cni_path=env["CNI_PATH"],
        config=att.config,
        network_name=att.network,
    )
