"""A simulated SR-IOV node: a fake sysfs tree whose VF netdevs are real veths.

Each PF is a veth (``<p><i>``) whose peer (``<p><i>u``) sits on a per-PF
bridge (``<p><i>sw``, the NIC's embedded switch); each VF netdev is a veth
(``<p><i>v<j>``) whose peer, the "wire" (``…w``), sits on the same bridge. So
moving a VF into a pod, renaming, addressing and policing it is real kernel
work, and VFs of one PF can reach each other as through a real VEB.

The simulator acts on the writes the kernel would act on (``sriov_numvfs``,
``driver_override``, ``unbind``/``bind``, ``drivers_probe``) and emulates one
more kernel behaviour: a VF whose pod netns dies comes back to the host netns.
(A veth pair dies with its netns; we see the wire vanish while the VF end is
away and recreate the pair. The real kernel keeps the pod-side name when it
is free; we restore the original name, so DEL must find VFs by PCI address.)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from nicwarden.agent.errors import ConfigError, NicwardenError
from nicwarden.agent.host.events import EventCallback, HostEvent, LinkMonitor
from nicwarden.agent.host.netlink import Netlink
from nicwarden.agent.host.paths import HostPaths
from nicwarden.agent.host.sysfs import read_attr, translate_write_error
from nicwarden.agent.model import VFIO_DRIVER
from nicwarden.agent.sim.spec import SimSpec

log = logging.getLogger(__name__)

REAL_CLASS_NET = Path("/sys/class/net")
NET_DRIVERS = {"ice", "i40e", "iavf", "mlx5_core"}


@dataclass
class _VfState:
    pf: int
    index: int
    address: str
    group: int
    driver: str | None
    name: str  # the netdev name the simulator gives it in the host netns
    where: str = "host"  # "host", "away" (in some other netns), "gone", "none" (no netdev)
    ifindex: int = 0


class SimulatedNode:
    def __init__(
        self,
        spec: SimSpec,
        root: Path | None = None,
        prefix: str = "nws",
        keep: bool = False,
        vf_admin_up: bool = True,
    ) -> None:
        """``root`` None: a temp tree removed at stop. A given ``root`` that
        already holds a node (``keep=True`` left it) is adopted, as a restarted
        agent finds a real node: same devices, VFs still in their pods."""
        if not (1 <= len(prefix) <= 5 and prefix.isalnum()):
            raise ConfigError(f"sim prefix {prefix!r}: expected 1-5 letters or digits")
        self.spec = spec
        self.prefix = prefix
        self.keep = keep
        # Real VF drivers create netdevs administratively down; the demo and
        # most tests want them in service, as provisioning leaves them.
        self.vf_admin_up = vf_admin_up
        self._own_root = root is None
        self.root = (
            Path(tempfile.mkdtemp(prefix=f"nicwarden-sim-{prefix}-")) if root is None else root
        )
        self.paths = HostPaths(sys=self.root / "sys", dev=self.root / "dev")
        self.net = Netlink()
        self._lock = threading.RLock()
        self._vfs: dict[str, _VfState] = {}
        self._next_group = 100
        self._expected_deletes: set[str] = set()
        self._subscribers: list[EventCallback] = []
        self._monitor: LinkMonitor | None = None
        self._links: list[str] = []  # every link we created (deleted at stop)

    # -- names and addresses -------------------------------------------------

    def pf_address(self, i: int) -> str:
        return f"0000:{0x18 + i:02x}:00.0"

    def vf_address(self, i: int, j: int) -> str:
        return f"0000:{0x18 + i:02x}:{1 + j // 8:02x}.{j % 8}"

    def pf_name(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def vf_name(self, i: int, j: int) -> str:
        return f"{self.prefix}{i}v{j}"

    def _wire(self, name: str) -> str:
        return f"{name}w"

    def _bridge(self, i: int) -> str:
        return f"{self.prefix}{i}sw"

    def alias(self, address: str) -> str:
        return f"nwsim:{self.prefix}:{address}"

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> SimulatedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def _state_file(self) -> Path:
        return self.root / "sim-state.json"

    def start(self) -> SimulatedNode:
        try:
            self._monitor = LinkMonitor(self._on_link_event).start()
            with self._lock:
                if self._state_file.exists():
                    self._adopt()
                else:
                    self._sweep_stale_links()
                    self._build_static_tree()
                    for i, pf in enumerate(self.spec.pfs):
                        self._make_pf(i)
                        if pf.num_vfs:
                            self._create_vfs(i, pf.num_vfs)
                self._save()
        except BaseException:
            self.keep = False
            self.stop()
            raise
        return self

    def _sweep_stale_links(self) -> None:
        """Links named by our scheme left by a simulated node that died
        without tearing down (a killed agent or demo) would make every create
        fail with EEXIST; only a node with this prefix makes such names."""
        pattern = re.compile(rf"^{re.escape(self.prefix)}\d+(sw|u|v\d+w?)?$")
        stale = [link.name for link in self.net.links() if pattern.match(link.name)]
        for name in stale:
            self.net.delete_link(name)
        if stale:
            log.warning(
                "sim: removed %d stale links of an earlier %r node", len(stale), self.prefix
            )

    def _save(self) -> None:
        state = {
            "prefix": self.prefix,
            "next_group": self._next_group,
            "links": self._links,
            "vfs": [asdict(st) for st in self._vfs.values()],
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self._state_file)

    def _adopt(self) -> None:
        state = json.loads(self._state_file.read_text())
        if state.get("prefix") != self.prefix:
            raise ConfigError(
                f"simulated node at {self.root} uses prefix {state.get('prefix')!r},"
                f" not {self.prefix!r}"
            )
        self._next_group = int(state["next_group"])
        self._links = list(state["links"])
        self._vfs = {d["address"]: _VfState(**d) for d in state["vfs"]}
        # Whatever happened while no agent watched: a VF moved away or back,
        # or its pod's netns died (the wire is gone with it).
        for st in self._vfs.values():
            if st.where == "none":
                continue
            link = self.net.link(st.name)
            wire = self.net.link(self._wire(st.name))
            if link is not None:
                st.where, st.ifindex = "host", link.index
            elif wire is not None:
                st.where = "away"
            else:
                log.info("sim: %s's netns died while unwatched; returning it", st.address)
                self._make_vf_netdev(st)
        log.info("sim: adopted node", extra={"root": str(self.root), "vfs": len(self._vfs)})

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self.keep:
            with self._lock:
                self._save()
            return
        with self._lock:
            for name in reversed(self._links):
                try:
                    self.net.delete_link(name)
                except NicwardenError:
                    log.warning("sim: could not delete %s", name)
            self._links.clear()
            self._vfs.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def links(self) -> list[str]:
        """Links this node made and still owns (tests check tear-down)."""
        return list(self._links)

    def subscribe(self, callback: EventCallback) -> None:
        """Synthetic PCI uevents: the kernel emits these on a real node."""
        self._subscribers.append(callback)

    def _emit(self, action: str, address: str) -> None:
        ev = HostEvent("sim", action, "pci", address)
        for cb in list(self._subscribers):
            try:
                cb(ev)
            except Exception:
                log.exception("sim event subscriber failed")

    # -- tree ----------------------------------------------------------------

    def _build_static_tree(self) -> None:
        p = self.paths
        for d in (p.pci_devices, p.iommu_groups, p.class_net, p.vfio):
            d.mkdir(parents=True, exist_ok=True)
        drivers = {pf.nic.pf_driver for pf in self.spec.pfs} | {
            pf.nic.vf_driver for pf in self.spec.pfs
        }
        for drv in sorted(drivers | {VFIO_DRIVER}):
            dd = p.pci_drivers / drv
            dd.mkdir(parents=True, exist_ok=True)
            for attr in ("bind", "unbind", "new_id"):
                (dd / attr).touch()
        p.drivers_probe.touch()
        (p.vfio / "vfio").touch()

    def _device_dir(self, address: str, vendor: str, device: str, numa: int) -> Path:
        d = self.paths.pci_devices / address
        d.mkdir(parents=True, exist_ok=True)
        (d / "vendor").write_text(f"0x{vendor}\n")
        (d / "device").write_text(f"0x{device}\n")
        (d / "class").write_text("0x020000\n")
        (d / "numa_node").write_text(f"{numa}\n")
        (d / "driver_override").write_text("(null)\n")
        (d / "net").mkdir(exist_ok=True)
        return d

    def _set_driver_link(self, address: str, driver: str | None) -> None:
        link = self.paths.pci_devices / address / "driver"
        if link.is_symlink():
            link.unlink()
        if driver:
            link.symlink_to(Path("..") / ".." / "drivers" / driver)

    def _link_netdev(self, address: str, name: str) -> None:
        net = self.paths.pci_devices / address / "net"
        for old in net.iterdir():
            if old.name != name:
                old.unlink()
        if not (net / name).is_symlink():
            (net / name).symlink_to(REAL_CLASS_NET / name)

    def _make_pf(self, i: int) -> None:
        pf = self.spec.pfs[i]
        addr = self.pf_address(i)
        d = self._device_dir(addr, pf.nic.vendor, pf.nic.pf_device, pf.numa)
        (d / "sriov_totalvfs").write_text(f"{pf.total_vfs}\n")
        (d / "sriov_numvfs").write_text("0\n")
        (d / "sriov_drivers_autoprobe").write_text("1\n")
        self._set_driver_link(addr, pf.nic.pf_driver)
        bridge, name = self._bridge(i), self.pf_name(i)
        self.net.create_bridge(bridge)
        self._links.append(bridge)
        self.net.create_veth(name, f"{name}u")
        self._links.append(name)
        self.net.set_link(f"{name}u", master=bridge, up=True)
        self.net.set_link(bridge, up=True)
        self.net.set_link(name, up=True)
        self._link_netdev(addr, name)

    # -- VFs -----------------------------------------------------------------

    def _create_vfs(self, i: int, n: int) -> None:
        pf = self.spec.pfs[i]
        pf_addr = self.pf_address(i)
        pf_dir = self.paths.pci_devices / pf_addr
        for j in range(n):
            addr = self.vf_address(i, j)
            d = self._device_dir(addr, pf.nic.vendor, pf.nic.vf_device, pf.numa)
            (d / "physfn").symlink_to(Path("..") / pf_addr)
            (pf_dir / f"virtfn{j}").symlink_to(Path("..") / addr)
            group = self._next_group
            self._next_group += 1
            gdir = self.paths.iommu_groups / str(group) / "devices"
            gdir.mkdir(parents=True, exist_ok=True)
            (gdir / addr).symlink_to(Path("../../../../bus/pci/devices") / addr)
            (d / "iommu_group").symlink_to(Path("../../../kernel/iommu_groups") / str(group))
            st = _VfState(i, j, addr, group, None, self.vf_name(i, j), where="none")
            self._vfs[addr] = st
            self._bind(st, pf.nic.vf_driver)
        (pf_dir / "sriov_numvfs").write_text(f"{n}\n")
        for j in range(n):
            self._emit("add", self.vf_address(i, j))

    def _remove_vfs(self, i: int) -> None:
        pf_dir = self.paths.pci_devices / self.pf_address(i)
        for st in sorted(
            (s for s in self._vfs.values() if s.pf == i), key=lambda s: s.index, reverse=True
        ):
            self._unbind(st)
            d = self.paths.pci_devices / st.address
            shutil.rmtree(self.paths.iommu_groups / str(st.group), ignore_errors=True)
            (pf_dir / f"virtfn{st.index}").unlink(missing_ok=True)
            shutil.rmtree(d, ignore_errors=True)
            del self._vfs[st.address]
            self._emit("remove", st.address)
        (pf_dir / "sriov_numvfs").write_text("0\n")

    def _make_vf_netdev(self, st: _VfState) -> None:
        name, wire = st.name, self._wire(st.name)
        pf_bridge = self._bridge(st.pf)
        self.net.create_veth(name, wire)
        self._links.append(name)
        self.net.set_link(name, alias=self.alias(st.address))
        self.net.set_link(wire, master=pf_bridge, up=True)
        if self.vf_admin_up:
            self.net.set_link(name, up=True)
        link = self.net.link(name)
        st.ifindex = link.index if link else 0
        st.where = "host"
        self._link_netdev(st.address, name)

    def _drop_vf_netdev(self, st: _VfState) -> None:
        wire = self._wire(st.name)
        self._expected_deletes.add(wire)
        # Deleting the wire end removes the VF end too, wherever it is now.
        self.net.delete_link(wire)
        if st.name in self._links:
            self._links.remove(st.name)
        st.where = "none"
        net = self.paths.pci_devices / st.address / "net"
        for old in net.iterdir():
            old.unlink()

    def _bind(self, st: _VfState, driver: str) -> None:
        self._set_driver_link(st.address, driver)
        st.driver = driver
        if driver in NET_DRIVERS:
            self._make_vf_netdev(st)
        elif driver == VFIO_DRIVER:
            (self.paths.vfio / str(st.group)).touch()

    def _unbind(self, st: _VfState) -> None:
        if st.driver in NET_DRIVERS and st.where != "none":
            self._drop_vf_netdev(st)
        elif st.driver == VFIO_DRIVER:
            (self.paths.vfio / str(st.group)).unlink(missing_ok=True)
        self._set_driver_link(st.address, None)
        st.driver = None

    # -- the kernel's side of sysfs writes ----------------------------------

    def write(self, path: Path, value: str) -> None:
        """SysfsWriter: act on the write as the kernel would."""
        try:
            self._write(Path(os.path.realpath(path)), value.strip())
        except OSError as e:
            raise translate_write_error(e, path, value) from e
        finally:
            with self._lock:
                self._save()

    def _write(self, path: Path, value: str) -> None:
        sys_root = Path(os.path.realpath(self.paths.sys))
        rel = path.relative_to(sys_root).parts
        with self._lock:
            if rel[:3] == ("bus", "pci", "devices") and len(rel) == 5:
                address, attr = rel[3], rel[4]
                if attr == "sriov_numvfs":
                    return self._write_numvfs(address, value)
                if attr == "driver_override":
                    if address not in self._vfs and not self._is_pf(address):
                        raise OSError(errno.ENODEV, "no such device")
                    (path).write_text((value or "(null)") + "\n")
                    return None
            if rel[:3] == ("bus", "pci", "drivers") and len(rel) == 5:
                driver, attr = rel[3], rel[4]
                if attr == "unbind":
                    return self._write_unbind(driver, value)
                if attr == "bind":
                    return self._write_bind(value, driver)
                if attr == "new_id":
                    return None
            if rel == ("bus", "pci", "drivers_probe"):
                return self._write_bind(value, None)
            path.write_text(value + "\n")
            return None

    def _is_pf(self, address: str) -> bool:
        return any(self.pf_address(i) == address for i in range(len(self.spec.pfs)))

    def _write_numvfs(self, address: str, value: str) -> None:
        idx = [i for i in range(len(self.spec.pfs)) if self.pf_address(i) == address]
        if not idx:
            raise OSError(errno.ENOENT, "not an SR-IOV PF")
        i = idx[0]
        try:
            n = int(value)
        except ValueError:
            raise OSError(errno.EINVAL, f"invalid number {value!r}") from None
        current = int(read_attr(self.paths.pci_devices / address / "sriov_numvfs") or 0)
        if n < 0 or n > self.spec.pfs[i].total_vfs:
            raise OSError(errno.ERANGE, f"{n} exceeds sriov_totalvfs")
        if n == current:
            return
        # The kernel refuses to change a non-zero count directly.
        if current and n:
            raise OSError(errno.EBUSY, f"{current} VFs already enabled; write 0 first")
        if n == 0:
            self._remove_vfs(i)
        else:
            self._create_vfs(i, n)

    def _write_unbind(self, driver: str, address: str) -> None:
        st = self._vfs.get(address)
        if st is None or st.driver != driver:
            raise OSError(errno.ENODEV, f"{address} is not bound to {driver}")
        self._unbind(st)
        self._emit("unbind", address)

    def _write_bind(self, address: str, driver: str | None) -> None:
        st = self._vfs.get(address)
        if st is None:
            raise OSError(errno.ENODEV, f"no such device {address}")
        if st.driver is not None:
            if driver is None:
                return  # drivers_probe on a bound device is a no-op
            raise OSError(errno.EBUSY, f"{address} already bound to {st.driver}")
        override = read_attr(self.paths.pci_devices / address / "driver_override") or "(null)"
        nic = self.spec.pfs[st.pf].nic
        if driver is None:
            driver = override if override != "(null)" else nic.vf_driver
        elif override not in ("(null)", driver):
            raise OSError(errno.EINVAL, f"driver_override is {override}")
        if driver != VFIO_DRIVER and driver != nic.vf_driver:
            raise OSError(errno.ENODEV, f"driver {driver} does not support {address}")
        if not (self.paths.pci_drivers / driver).is_dir():
            raise OSError(errno.ENODEV, f"driver {driver} not loaded")
        self._bind(st, driver)
        self._emit("bind", address)

    # -- VFs leaving and coming back ----------------------------------------

    def _on_link_event(self, ev: HostEvent) -> None:
        with self._lock:
            changed = False
            if ev.action == "newlink":
                changed = self._seen_in_host(ev)
            elif ev.action == "dellink":
                changed = self._gone_from_host(ev)
            # Link events come in bursts (every attach emits several): persist
            # only real changes, it is the simulator's hottest path.
            if changed and self._state_file.parent.exists():
                self._save()

    def _seen_in_host(self, ev: HostEvent) -> bool:
        prefix = f"nwsim:{self.prefix}:"
        if not ev.alias.startswith(prefix):
            return False
        st = self._vfs.get(ev.alias[len(prefix) :])
        if st is None or st.where == "none":
            return False
        changed = (st.where, st.ifindex) != ("host", ev.index)
        st.where, st.ifindex = "host", ev.index
        current = self.paths.pci_devices / st.address / "net" / ev.name
        if not current.is_symlink():
            self._link_netdev(st.address, ev.name)
            changed = True
        if changed:
            # As the kernel's own events would: the tree changed only now,
            # after the link event the inventory may have scanned too early.
            self._emit("change", st.address)
        return changed

    def _gone_from_host(self, ev: HostEvent) -> bool:
        if ev.name in self._expected_deletes:
            self._expected_deletes.discard(ev.name)
            return False
        for st in self._vfs.values():
            if st.where == "host" and ev.index == st.ifindex:
                # Moved away (its wire is still here) or deleted with its pair.
                st.where = "away" if self.net.link(self._wire(st.name)) else "gone"
                return True
            if ev.name == self._wire(st.name) and st.where == "away":
                log.info("sim: %s's netns died; returning it to the host", st.address)
                self._make_vf_netdev(st)
                self._emit("move", st.address)
                return True
        return False
