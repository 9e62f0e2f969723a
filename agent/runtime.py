"""The agent's parts wired together, in start order, and torn down in reverse.

Kept apart from the daemon's process concerns (signals, logging, flags) so
tests can run a whole agent in-process."""

from __future__ import annotations

import hashlib
import logging
import os
import socket as pysocket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nicwarden.agent.attach import AttachContext, AttachService
from nicwarden.agent.config import AgentConfig, SimShape
from nicwarden.agent.devices import converge as sriov_converge
from nicwarden.agent.devices.context import DeviceCtx
from nicwarden.agent.devices.recover import recover as recover_devices
from nicwarden.agent.devices.spec import parse_sriov
from nicwarden.agent.drop_events import DropEventHub
from nicwarden.agent.enforcement import PolicyEnforcer
from nicwarden.agent.errors import ConfigError, NicwardenError
from nicwarden.agent.host import hostmodel
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import KernelSysfsWriter, SysfsWriter, check_root
from nicwarden.agent.host.vfnetlink import NetlinkVfConfigurator, VfConfigurator, VfSettings
from nicwarden.agent.inventory import LiveInventory
from nicwarden.agent.metrics import Metrics
from nicwarden.agent.policy import CompileOptions
from nicwarden.agent.reconcile import Unexplained, VfAudit
from nicwarden.agent.sim import SimulatedNode, parse_spec
from nicwarden.agent.sim.vfconfig import SimVfConfigurator
from nicwarden.agent.store import Store
from nicwarden.cni.dispatch import handle_invocation
from nicwarden.cni.http_endpoint import CniHttpServer
from nicwarden.deviceplugin.config import parse_resource_list
from nicwarden.deviceplugin.dra.devices import dra_matches
from nicwarden.deviceplugin.dra.frontends import overlaps, refused_moves
from nicwarden.deviceplugin.manager import DevicePluginManager

log = logging.getLogger(__name__)

# Polling the manifests directory is a few stat() calls: poll often, so small
# edits reach the kernel fast.
MANIFEST_POLL_S = 0.05


class AgentRuntime:
    def __init__(
        self,
        config: AgentConfig,
        *,
        sim_prefix: str = "nws",
        sim_root: Path | None = None,
        sim_keep: bool = False,
    ) -> None:
        self.config = config
        self.sim_prefix = sim_prefix
        self.sim_root = sim_root
        self.sim_keep = sim_keep
        # The DaemonSet passes the Kubernetes node name (downward API); the
        # hostname can differ from it.
        self.node_name = os.environ.get("NODE_NAME") or pysocket.gethostname()
        self.started_at = time.time()
        self.metrics = Metrics()
        self.sim: SimulatedNode | None = None
        self.paths = HostPaths(sys=config.sysfs_root, dev=config.dev_root)
        self.writer: SysfsWriter = KernelSysfsWriter()
        self.store: Store | None = None
        self.inventory = LiveInventory(self.paths)
        self.vfconf: VfConfigurator = NetlinkVfConfigurator()
        self.attach: AttachService | None = None
        self.audit: VfAudit | None = None
        self.cni_server: CniHttpServer | None = None
        self.deviceplugin: DevicePluginManager | None = None
        self.enforcer: PolicyEnforcer | None = None
        self.policy_feed: Any = None  # policy_feed.PolicyFeed when an object source is configured
        self.cni_priority: Any = None  # policy_feed.Priority, held by CNI requests
        self.datapath: Any = None
        self.drop_events: DropEventHub | None = None
        self.devices: DeviceCtx | None = None
        self.events: Any = None
        self.dra_slices: Any = None  # deviceplugin.dra.slices.SlicePublisher when dra: is active
        self.dra_plugin: Any = None  # deviceplugin.dra.plugin.DraPlugin
        self.dra_status: Any = None  # deviceplugin.dra.status.ClaimStatusWriter
        self._reconciler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stops: list[Callable[[], None]] = []

    @property
    def simulated(self) -> bool:
        return self.sim is not None

    def start(self) -> AgentRuntime:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.store = Store.open(self.config.state_dir)
        self._stops.append(self.store.close)
        self._open_node()
        self._start_inventory()
        self._start_attach()
        self._start_enforcement()
        # Finish what a crash interrupted before taking new requests.
        assert self.attach is not None
        self.attach.reconcile()
        self._start_audit()
        self._start_devices()
        self._start_cni()
        self._start_deviceplugin()
        self._start_dra()
        self._start_collectors()
        self._reconciler = threading.Thread(
            target=self._reconcile_loop, name="reconcile", daemon=True
        )
        self._reconciler.start()
        self._stops.append(self._stopping.set)

    def _open_node(self) -> None:
        """The real node's sysfs, or a simulated node built (or adopted)."""
        cfg = self.config
        if cfg.simulate is None:
            check_root(self.paths)
            return
        spec = parse_spec(str(cfg.simulate) if isinstance(cfg.simulate, SimShape) else cfg.simulate)
        self.sim = SimulatedNode(
            spec, root=self.sim_root, prefix=self.sim_prefix, keep=self.sim_keep
        ).start()
        self._stops.append(self.sim.stop)
        self.paths, self.writer = self.sim.paths, self.sim
        self.vfconf = SimVfConfigurator(self.sim)
        log.info("simulated node up", extra={"root": str(self.sim.root), "pfs": len(spec.pfs)})

    def _start_inventory(self) -> None:
        self.inventory = LiveInventory(self.paths)
        self.inventory.subscribe(self.metrics.inventory)
        self.inventory.start()
        self._stops.append(self.inventory.stop)
        if self.sim is not None:
            self.sim.subscribe(self.inventory.notify)
        inv = self.inventory.snapshot()
        self.metrics.inventory(inv)
        log.info("inventory ready", extra={"pfs": len(inv.pfs), "vfs": len(inv.vfs())})

    def _start_attach(self) -> None:
        assert self.store is not None
        self.attach = AttachService(
            AttachContext(
                paths=self.paths,
                inventory=self.inventory,
                store=self.store,
                vfconf=self.vfconf,
                settings_type=VfSettings,
                ready=self.inventory.ready.is_set,
            )
        )

    def _start_audit(self) -> None:
        """VFs out of place that no attachment explains are held back from
        pods until an admin adopts or releases them."""
        assert self.attach is not None
        audit = VfAudit(self.attach)
        self.audit = audit
        self.attach.ctx.blocked = audit.why_blocked
        audit.on_change.append(lambda: self.metrics.vf_unexplained(len(audit.unexplained())))
        audit.on_change.append(self._refresh_pools)
        audit.on_found.append(self._vfs_unexplained)
        audit.run()
        self.metrics.vf_unexplained(len(audit.unexplained()))

    def _refresh_pools(self) -> None:
        if self.deviceplugin is not None:
            self.deviceplugin.refresh()

    def _vfs_unexplained(self, found: list[Unexplained]) -> None:
        if self.events is None:
            return
        from nicwarden.agent.k8s import ObjectRef

        node = ObjectRef("Node", self.node_name, "", "v1", "")
        for u in found:
            self.events.warning(
                node,
                "NicwardenVfUnexplained",
                f"VF {u}; not offered to pods until `nicwardenctl reconcile --adopt` or"
                " `--release`",
            )

    def _start_devices(self) -> None:
        """SR-IOV/DPDK management: settle interrupted changes, then converge."""
        assert self.store is not None
        self.devices = DeviceCtx(
            paths=self.paths,
            writer=self.writer,
            inventory=self.inventory,
            store=self.store,
            netdevs=Netlink(),
            vfconf=self.vfconf,
            timeout_s=self.config.device_timeout,
            allow_noiommu=self.config.allow_no_iommu,
        )
        recover_devices(self.devices)
        self.converge()

    def _start_collectors(self) -> None:
        """Scrape-time metrics. VF counters come from the PF's netlink
        statistics on a node, from each VF netdev's own counters on a
        simulated node (its veths have no PF-side statistics)."""
        from nicwarden.agent.host.vfstats import (
            NetdevVfStatsReader,
            NetlinkVfStatsReader,
            VfStatsReader,
        )
        from nicwarden.agent.metrics_collect import (
            DropEventsCollector,
            InventoryReadsCollector,
            PodDeviceCollector,
            PolicyCollector,
            PoolCollector,
            SourceFeedCollector,
            ThreadCpuCollector,
            VfStatsCollector,
        )

        store = self.store
        assert store is not None
        reader: VfStatsReader
        if self.sim is not None:
            reader = NetdevVfStatsReader(self.sim.alias, self._vf_netns)
        else:
            reader = NetlinkVfStatsReader(self.paths)
        for collector in (
            VfStatsCollector(self.inventory.snapshot, reader),
            PodDeviceCollector(store.list_attachments, store.allocations),
            PoolCollector(lambda: self.deviceplugin, store.allocations),
            PolicyCollector(lambda: self.enforcer),
            DropEventsCollector(lambda: (self.datapath, self.drop_events)),
            SourceFeedCollector(
                lambda: self.policy_feed.stats() if self.policy_feed is not None else None
            ),
            ThreadCpuCollector(),
            InventoryReadsCollector(lambda: (self.inventory.scans, self.inventory.refreshes)),
        ):
            self.metrics.add_collector(collector)

    def _vf_netns(self, address: str) -> str | None:
        """The netns a VF was moved to, from its attachment."""
        assert self.store is not None
        att = self.store.attachment_for_device(address)
        return att.netns if att is not None else None

    def _start_cni(self) -> None:
        attach = self.attach
        assert attach is not None
        priority = self.cni_priority

        def handle(env: dict[str, str], stdin: str) -> tuple[int, bytes]:
            if priority is None:
                return handle_invocation(env, stdin, attach)
            with priority.running():
                return handle_invocation(env, stdin, attach)

        self.cni_server = CniHttpServer(
            self.config.cni_socket,
            self.metrics.timed_cni(handle),
            ready=self.inventory.ready.is_set,
        )
        self.cni_server.start()
        self._stops.append(self.cni_server.stop)

    def _start_deviceplugin(self) -> None:
        assert self.store is not None
        cfg = self.config
        self._check_frontends(cfg)
        self.deviceplugin = DevicePluginManager(
            self.inventory,
            cfg.resource_list,
            resource_prefix=cfg.resource_prefix,
            paths=self.paths,
            kubelet_dir=cfg.kubelet_dir,
            device_info_dir=cfg.device_info_dir,
            recorder=_AllocationRecorder(self.store),
            blocked=self.audit.blocked if self.audit is not None else None,
            # Each VF has one front-end: what DRA offers is never in a pool.
            exclude=lambda vf, pf: dra_matches(self.config.dra, vf, pf),
            on_allocate=self.metrics.allocate_done,
        )
        for issue in self.deviceplugin.config_errors():
            log.error("invalid device plugin pool", extra={"problem": str(issue)})
        self.deviceplugin.start()
        self._stops.append(self.deviceplugin.stop)

    def _check_frontends(self, cfg: AgentConfig) -> None:
        """A VF selected by both a device plugin pool and ``dra:`` is a config error."""
        pools = parse_resource_list(cfg.resource_list, cfg.resource_prefix).pools
        found = overlaps(self.inventory.snapshot(), pools, cfg.dra)
        if found:
            raise ConfigError("\n".join(str(o) for o in found))

    def _start_dra(self) -> None:
        """The DRA front-end: ResourceSlices, the kubelet plugin and claim
        status. Config validation guarantees the API is configured."""
        dra = self.config.dra
        if not dra.active:
            return
        from nicwarden.agent.host.pcie import pcie_root
        from nicwarden.agent.k8s import load_client
        from nicwarden.deviceplugin.dra.claims import ApiClaimReader
        from nicwarden.deviceplugin.dra.gate import ClaimGate
        from nicwarden.deviceplugin.dra.plugin import DraPlugin
        from nicwarden.deviceplugin.dra.slices import SlicePublisher
        from nicwarden.deviceplugin.dra.status import ClaimStatusWriter

        assert self.store is not None and self.devices is not None and self.attach is not None
        api = load_client(self.config.kubernetes.kubeconfig)
        paths = self.paths
        audit = self.audit
        self.dra_slices = SlicePublisher(
            api,
            dra,
            self.inventory,
            self.node_name,
            pcie_root=lambda a: pcie_root(paths, a),
            # Held back from pods: tainted NoSchedule, so no claim is allocated it.
            held_back=audit.blocked if audit is not None else dict,
        ).start()
        self._stops.append(self.dra_slices.stop)
        if audit is not None:
            audit.on_change.append(self.dra_slices.kick)
        self.dra_status = ClaimStatusWriter(api, self.store, dra.driver_name).start()
        self._stops.append(self.dra_status.stop)
        self.attach.ctx.on_attach.append(self.dra_status.on_attach)
        self.attach.ctx.on_detach.append(self.dra_status.on_detach)
        self.attach.ctx.unclaimed = ClaimGate(lambda: self.config.dra, self.inventory, self.store)
        self.dra_plugin = DraPlugin(
            dra, self.store, self.devices, self.inventory, ApiClaimReader(api), self.node_name
        )
        self.dra_plugin.start()
        self._stops.append(self.dra_plugin.stop)

    def converge(self, dry_run: bool = False) -> sriov_converge.ConvergeReport:
        """Bring PFs to the ``sriov:`` desired state (at start and on SIGHUP).
        A dry run only reports drift."""
        assert self.devices is not None
        desired = parse_sriov(self.config.sriov)
        if dry_run:
            return sriov_converge.drift(self.devices, desired)
        report = sriov_converge.converge(self.devices, desired)
        if report.drift or report.skipped or report.applied:
            log.info("sriov converge", extra=report.to_dict())
        return report

    def reload(self, config: AgentConfig) -> list[str]:
        """SIGHUP: take the parts of a new config that can change live (SR-IOV
        desired state, device plugin pools); the rest, resourcePrefix included,
        needs a restart."""
        changes = []
        if config.sriov != self.config.sriov:
            changes.append("sriov")
        if config.resource_list != self.config.resource_list:
            changes.append("resourceList")
        if config.dra != self.config.dra:
            self._check_dra_reload(config)
            changes.append("dra")
        elif "resourceList" in changes:
            self._check_dra_reload(config)
        self.config = config
        if "resourceList" in changes and self.deviceplugin is not None:
            for issue in self.deviceplugin.apply_config(config.resource_list):
                log.error("invalid device plugin pool", extra={"problem": str(issue)})
        if "dra" in changes:
            if self.dra_slices is not None:
                self.dra_slices.set_config(config.dra)
            if self.dra_plugin is not None:
                self.dra_plugin.set_config(config.dra)
            if self.deviceplugin is not None:
                self.deviceplugin.refresh()
        self.converge()
        return changes

    def _check_dra_reload(self, new: AgentConfig) -> None:
        """Refuse (ConfigError, old config kept) a reload that makes a VF
        offered twice, changes what only a restart can, or moves an in-use VF
        between DRA and the device plugin."""
        old = self.config
        self._check_frontends(new)
        fixed = ("driver", "registry_dir", "plugins_dir", "cdi_dir")
        if old.dra.active and new.dra.active:
            changed = [f for f in fixed if getattr(old.dra, f) != getattr(new.dra, f)]
        else:
            changed = ["enabled"] if old.dra.active != new.dra.active else []
        if changed:
            raise ConfigError(
                "dra." + ", dra.".join(changed) + " cannot change on reload: restart the agent"
            )
        assert self.store is not None
        prefix = old.resource_prefix
        problems = refused_moves(
            self.inventory.snapshot(),
            self.store,
            (parse_resource_list(old.resource_list, prefix).pools, old.dra),
            (parse_resource_list(new.resource_list, prefix).pools, new.dra),
        )
        if problems:
            raise ConfigError("reload refused: " + "; ".join(problems))

    def _start_enforcement(self) -> None:
        """Policy enforcement is optional equipment: without bcc or kernel
        headers the agent still serves VFs, and says so in health."""
        cfg = self.config.policy
        assert self.store is not None and self.attach is not None
        error = ""
        if cfg.enabled:
            instance = cfg.bpf_instance
            if self.sim is not None and instance == "default":
                instance = f"sim-{self.sim_prefix}"  # simulated nodes must not share pins
            try:
                from nicwarden.agent.host.bpf import PolicyDatapath

                dp = PolicyDatapath(
                    instance,
                    keep_established=cfg.keep_established,
                    filter_linger_s=cfg.filter_linger_seconds,
                )
                self._open_datapath(dp)
                self.datapath = dp
                self._stops.append(self._close_datapath)
            except Exception as e:
                error = str(e)
                log.error("policy datapath unavailable", extra={"error": error})
        else:
            error = "disabled by config (policy.enabled: false)"
        source: Any = None
        if self.config.manifests_dir is not None:
            from nicwarden.agent.k8s.directory import DirectorySource

            source = DirectorySource(self.config.manifests_dir, poll_interval=MANIFEST_POLL_S)
        elif self.config.kubernetes.watch:
            from nicwarden.agent.k8s import ApiSource, EventRecorder, load_client
            from nicwarden.agent.policy_feed import Priority

            api = load_client(self.config.kubernetes.kubeconfig)
            # The reflectors stand aside for CNI requests too, between the
            # items of a list: a relist's parsing is most of its CPU.
            self.cni_priority = Priority()
            source = ApiSource(
                api,
                self.node_name,
                pod_metadata_only=self.config.kubernetes.pod_metadata_only,
                pause=self.cni_priority.wait_idle,
                timed=self.metrics.watch_event,
            )
            if self.config.kubernetes.events:
                self.events = EventRecorder(api, self.node_name)
                self._stops.append(self.events.close)
                self.attach.ctx.on_error.append(self._attach_failed)
        if source is not None:
            from nicwarden.agent.policy_feed import PolicyFeed, Priority

            # The source's threads only enqueue, and the feed stands aside
            # while CNI requests run: ADD/DEL never wait for a burst.
            self.cni_priority = self.cni_priority or Priority()
            source = self.policy_feed = PolicyFeed(source, priority=self.cni_priority)
        self.enforcer = PolicyEnforcer(
            self.store,
            self.datapath,
            source,
            CompileOptions(allow_icmp=cfg.allow_icmp),
            datapath_error=error,
            on_invalid=self._policy_invalid if self.events is not None else None,
            strict_host_model=hostmodel.apply,
        )
        self.attach.ctx.on_attach.append(self.enforcer.on_attach)
        self.attach.ctx.on_detach.append(self.enforcer.on_detach)
        self.enforcer.start()
        self._stops.append(self.enforcer.stop)
        self._start_drop_events()

    def _start_drop_events(self) -> None:
        """The ring reader: records flow to the hub that Observe streams from."""
        assert self.enforcer is not None
        self.drop_events = DropEventHub(self.enforcer.owner_of)
        if self.datapath is None:
            return
        ev = self.config.policy.drop_events
        try:
            self.datapath.set_drop_events(ev.enabled, ev.per_flow_interval_ms, ev.max_per_second)
            if not ev.enabled:
                return
            from nicwarden.agent.host.bpf_events import RingThread

            ring = RingThread(self.datapath.events_fd(), self.drop_events.publish)
            ring.start()
            self._stops.append(ring.stop)
        except Exception as e:
            log.error("drop events unavailable", extra={"error": str(e)})

    def _attach_failed(self, namespace: str, pod: str, uid: str, message: str) -> None:
        from nicwarden.agent.k8s import ObjectRef

        if self.events is not None and pod:
            ref = ObjectRef("Pod", pod, namespace, "v1", uid)
            self.events.warning(ref, "NicwardenAttachFailed", message)

    def _policy_invalid(self, obj: Mapping[str, Any], message: str) -> None:
        if self.events is not None:
            self.events.warning(obj, "NicwardenPolicyInvalid", message)

    def _open_datapath(self, dp: Any) -> None:
        """Adopt pinned enforcement (no gap); swap in a new program only when
        this agent's datapath source differs from the one that made the pins
        (an upgrade), recorded in the store."""
        from nicwarden.agent.host.bpf import BPF_SRC_DIR

        assert self.store is not None
        digest = hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted(BPF_SRC_DIR.glob("*.[ch]")))
        ).hexdigest()
        key = f"bpf.source.{dp.instance}"
        if (dp.pin_dir / "nw_progs").exists():
            try:
                dp.adopt()
                if self.store.get_meta(key) == digest:
                    return
                log.info("datapath source changed since the pins were made: upgrading in place")
            except NicwardenError as e:
                log.warning("cannot adopt pinned datapath, reloading", extra={"error": str(e)})
        dp.load()
        self.store.set_meta(key, digest)

    def _close_datapath(self) -> None:
        """Pins outlive the agent so pods stay enforced across restarts; a
        throwaway simulated node takes its interfaces with it, so its pins go."""
        if self.datapath is None:
            return
        if self.sim is not None and not self.sim_keep:
            self.datapath.cleanup(force=True)
        else:
            self.datapath.close()

    def _reconcile_loop(self) -> None:
        while not self._stopping.wait(self.config.reconcile_interval):
            try:
                if self.attach is not None:
                    self.attach.reconcile()
                if self.audit is not None:
                    self.audit.run()
                if self.datapath is not None:
                    self.datapath.sweep()
            except Exception:
                log.exception("periodic reconcile failed")

    def stop(self) -> None:
        while self._stops:
            fn = self._stops.pop()
            try:
                fn()
            except Exception:
                log.exception("shutdown step failed")

    def health(self) -> list[tuple[str, bool, str]]:
        inv = self.inventory.snapshot()
        policy_ok = self.enforcer is not None and (
            self.datapath is not None or not self.config.policy.enabled
        )
        policy_detail = (
            self.enforcer.datapath_error or "eBPF datapath loaded"
            if self.enforcer is not None
            else "not started"
        )
        out = [
            (
                "inventory",
                self.inventory.ready.is_set(),
                f"{len(inv.pfs)} PFs, {len(inv.vfs())} VFs, generation {inv.generation}",
            ),
            ("store", self.store is not None, str(self.config.state_dir)),
            self._vf_health(),
            ("policy", policy_ok, policy_detail),
            self._source_health(),
        ]
        return out

    def _source_health(self) -> tuple[str, bool, str]:
        """Not ready until the object source's initial state is enforced:
        before that, pods here are enforced by what a previous agent left
        pinned, or not at all. A later relist keeps it ready; its backlog
        shows in the detail and in nicwarden_source_lag_seconds."""
        name = "policy-source"
        if self.enforcer is None:
            return (name, False, "not started")
        feed = self.policy_feed
        if feed is None:
            return (name, True, "no object source configured")
        feed.synced()  # latches the initial sync if the source just finished it
        st = feed.stats()
        backlog = f"{st.queued} events queued, lag {st.lag_s:.1f} s"
        problems = "".join(f"; {p}" for p in feed.problems()[:3])
        if not st.synced:
            return (name, False, f"syncing: {backlog}{problems}")
        last = (
            f"last event {time.time() - st.last_applied_at:.0f} s ago"
            if st.last_applied_at is not None
            else "no event yet"
        )
        return (name, True, f"synced, {last}, {backlog}{problems}")

    def _vf_health(self) -> tuple[str, bool, str]:
        if self.audit is None:
            return ("vfs", True, "not audited yet")
        bad = self.audit.unexplained()
        if not bad:
            held = len(self.audit.blocked())
            return ("vfs", True, f"every VF home or attached ({held} held by an admin)")
        return (
            "vfs",
            False,
            "out of place, not offered to pods until `nicwardenctl reconcile --adopt|--release`: "
            + "; ".join(str(u) for u in bad),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "simulated": self.simulated,
            "sysfs": str(self.paths.sys),
            "dev": str(self.paths.dev),
        }


class _AllocationRecorder:
    """Kubelet's Allocate names no pod: record the devices now; the CNI ADD
    that receives the deviceID later ties them to the pod."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_allocation(self, resource: str, device_ids: list[str]) -> None:
        self.store.record_allocation(
            resource, device_ids, pod_namespace="", pod_name="", pod_uid=""
        )


def state_lock_path(state_dir: Path) -> Path:
    return state_dir / "agent.lock"
