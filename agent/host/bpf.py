"""The BPF policy datapath's loader: the only module that imports bcc.

What lives in the kernel, per instance, under ``<bpffs>/nicwarden/<instance>/``:

* the maps of ``nicwarden.bpf.layout.MAPS`` (policy tries, per-interface
  config, flow table, counters, an interface registry, a meta record), each
  pinned, so enforcement and its state outlive the agent process;
* ``nw_policy``: the one policy program (bcc-compiled once per ``load()``),
  pinned and installed in slot 0 of the pinned prog array ``nw_progs``.

Per attached interface, two trampolines (ingress, egress) of nine
instructions each, assembled here and loaded with ``BPF_PROG_LOAD``: they put
the interface's key and the direction in ``skb->cb`` and tail-call
``nw_progs[0]``. They are what the tc filters run. The interface key is ours
(an allocated number recorded in the ``nw_ifaces`` registry with the netns
cookie, ifindex and name it stands for) because tc programs have no in-kernel
view of their device's netns: on this kernel the tc ``bpf_get_netns_cookie()``
is ``skb->sk``'s netns, init_net for a socket-less skb (measured: ARP replies
report init_net's cookie).

If a trampoline's tail call finds the prog array empty it drops (fail
closed). The kernel empties a prog array when its last *user* reference (fd
or pin) goes, even while programs still use it; the pin of ``nw_progs`` is
what keeps enforcement alive between agent processes.

Restart: ``adopt()`` opens the pins (no compile, no reload); the trampolines
in the pods' tc hooks never stopped running. ``load()`` on an existing
instance recompiles, reuses the pinned maps (bcc's ``BPF_TABLE_PINNED``
opens a pin if present) and swaps the program in ``nw_progs[0]`` atomically:
an in-place upgrade.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import NetNS
from pyroute2.netlink.exceptions import NetlinkError

from nicwarden.agent.errors import HostError, InvalidArgument, NotFound, Unavailable
from nicwarden.agent.host.bpfsys import (
    _CLONE_NEWNET,
    _SO_NETNS_COOKIE,
    _TC_H_EGRESS,
    _TC_H_INGRESS,
    _U32,
    _U64,
    _libc,
    _load_trampoline,
    _Map,
    _map_info,
    _obj_get,
    _obj_pin,
    _possible_cpus,
    _prog_info,
)
from nicwarden.agent.host.netlink import translate
from nicwarden.agent.host.paths import HostPaths
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, LoweredLike, Verdict

log = logging.getLogger(__name__)

BPF_SRC_DIR = Path(L.__file__).resolve().parent
POLICY_SOURCE = BPF_SRC_DIR / "policy.c"

# -- netns helpers ---------------------------------------------------------------


def netns_cookie(path: str) -> int:
    """SO_NETNS_COOKIE of a socket opened inside the netns at ``path``.

    setns() happens in a throwaway thread: it switches only that thread's
    namespace, and the thread ends with it.
    """
    out: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ct.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                out.append(
                    struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8))[0]
                )
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    t = threading.Thread(target=run, name="nw-netns-cookie")
    t.start()
    t.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, FileNotFoundError):
            raise NotFound(f"network namespace {path} does not exist") from exc
        raise HostError(f"cannot read the cookie of network namespace {path}: {exc}") from exc
    return out[0]


@contextlib.contextmanager
def _netns(path: str) -> Iterator[Any]:
    if not os.path.exists(path):
        raise NotFound(f"network namespace {path} does not exist")
    try:
        sock = NetNS(path, flags=0)  # flags=0: never create a missing netns
    except (OSError, NetlinkError) as e:
        raise NotFound(f"cannot enter network namespace {path}: {e}") from e
    try:
        yield sock
    finally:
        sock.close()


def _tc(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NetlinkError as e:
        raise translate(e, what) from e


# -- the datapath ------------------------------------------------------------------


@dataclass(frozen=True)
class Count:
    packets: int = 0
    bytes: int = 0


@dataclass
class _Active:
    """What we last wrote for one (iface, direction): enough to delete it."""

    gen: int
    peer_keys: list[bytes]
    port_keys: list[bytes]


class PolicyDatapath:
    """One instance of the policy datapath (maps + program pinned in bpffs).

    Thread-safe: one lock serializes every control operation.
    """

    def __init__(
        self,
        instance: str = "default",
        paths: HostPaths | None = None,
        keep_established: bool = False,
    ) -> None:
        # bpffs refuses names containing '.', so letters, digits, '_', '-' only.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", instance):
            raise InvalidArgument(f"bad datapath instance name {instance!r}")
        self.paths = paths or HostPaths()
        self.instance = instance
        self.pin_dir = self.paths.bpffs / "nicwarden" / instance
        # False: a policy switch revokes established flows the new policy
        # does not allow (checked lazily, on each flow's next packet).
        # True: flows survive policy changes until they expire.
        self.keep_established = keep_established
        self._lock = threading.RLock()
        self._maps: dict[str, _Map[Any, Any]] = {}
        self._prog_fd: int | None = None
        self._ifaces: dict[int, IfaceKey] = {}
        self._active: dict[tuple[int, Direction], _Active] = {}
        self._ncpu = _possible_cpus()

    # -- lifecycle -------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._prog_fd is not None

    def load(self) -> None:
        """Compile policy.c (once), create or reuse the pinned maps, and put
        the program in ``nw_progs[0]`` (atomically replacing a previous one)."""
        from bcc import BPF  # deferred: importing bcc costs ~0.2 s

        with self._lock:
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            # bcc would reuse a pinned map of another shape without a word.
            for spec in L.MAPS:
                if (self.pin_dir / spec.name).exists():
                    fd = self._open_pin(spec.name)
                    try:
                        self._check_shape(spec, fd)
                    finally:
                        os.close(fd)
            pin_define = f'-DNW_PIN_DIR="{self.pin_dir}"'
            try:
                b = BPF(
                    src_file=str(POLICY_SOURCE).encode(), cflags=[f"-I{BPF_SRC_DIR}", pin_define]
                )
            except Exception as e:  # bcc raises bare Exception on compile errors
                raise HostError(f"compiling {POLICY_SOURCE} failed: {e}") from e
            try:
                fn = b.load_func(L.PROG_FUNC.encode(), BPF.SCHED_CLS)
                self._open_all()
                self._init_meta()
                self._set_prog(fn.fd)
                self._pin_prog(fn.fd)
            finally:
                # Drops bcc's fds; the pins keep maps and program alive.
                b.cleanup()
            if self._prog_fd is not None:  # an upgrade of an open instance
                os.close(self._prog_fd)
            self._prog_fd = self._open_pin(L.PROG_PIN)
            self._recover()
            log.info("policy datapath %s loaded (prog id %d)", self.instance, self.prog_id())

    def adopt(self) -> None:
        """Open an instance left pinned by a previous agent process, without
        compiling or reloading anything: enforcement never paused."""
        with self._lock:
            if not (self.pin_dir / L.PROG_PIN).exists():
                raise NotFound(f"no pinned datapath at {self.pin_dir}")
            self._open_all()
            meta = self._maps["nw_meta"].lookup(_U32(0))
            if meta is None or meta.layout_version != L.LAYOUT_VERSION:
                found = meta.layout_version if meta else "none"
                self.close()
                raise HostError(
                    f"pinned datapath at {self.pin_dir} has layout {found}, "
                    f"this agent speaks {L.LAYOUT_VERSION}: load() or cleanup()"
                )
            if self._prog_fd is not None:
                os.close(self._prog_fd)
            self._prog_fd = self._open_pin(L.PROG_PIN)
            self._recover()
            log.info("policy datapath %s adopted (%d interfaces)", self.instance, len(self._ifaces))

    def close(self) -> None:
        """Drop our fds; everything pinned keeps running."""
        with self._lock:
            for m in self._maps.values():
                m.close()
            self._maps.clear()
            if self._prog_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._prog_fd)
            self._prog_fd = None
            self._ifaces.clear()
            self._active.clear()

    def cleanup(self, force: bool = False) -> None:
        """Remove every filter we installed and every pin: the instance is gone.
        Works on an unopened object too (it adopts what is pinned first).

        A filter left behind would tail-call an emptied prog array and drop
        everything, so when the registry cannot be read (a pinned layout this
        agent does not speak) or a filter cannot be removed, nothing is
        unpinned unless ``force``.
        """
        with self._lock:
            if not self.loaded and (self.pin_dir / L.PROG_PIN).exists():
                try:
                    self.adopt()
                except HostError as e:
                    if not force:
                        raise HostError(
                            f"cannot read {self.pin_dir} to remove its filters; "
                            "cleanup(force=True) unpins anyway",
                            str(e),
                        ) from e
                    log.warning("cleanup: %s; unpinning anyway", e)
            failed: list[str] = []
            for iface in list(self._ifaces.values()):
                try:
                    self._set_filters(iface, False)
                except NotFound:
                    pass  # the netns or the link is gone: so are the filters
                except HostError as e:
                    failed.append(f"{iface.netns}:{iface.ifname}: {e}")
            if failed and not force:
                raise HostError("cleanup: filters not removed, pins kept", "; ".join(failed))
            self.close()
            if self.pin_dir.exists():
                for entry in self.pin_dir.iterdir():
                    entry.unlink()
                self.pin_dir.rmdir()
            with contextlib.suppress(OSError):
                self.pin_dir.parent.rmdir()  # only when empty (no other instance)

    def prog_id(self) -> int:
        return int(_prog_info(self._need_prog()).id)

    # -- interfaces ------------------------------------------------------------

    def attach(self, netns: str, ifname: str) -> IfaceKey:
        """Register ``ifname`` inside ``netns`` (a name under the netns dir or a
        path). Idempotent. Filters appear once a direction is isolated."""
        with self._lock:
            self._need_prog()
            path = self._netns_path(netns)
            with _netns(path) as ns:
                found = ns.link_lookup(ifname=ifname)
                if not found:
                    raise NotFound(f"link {ifname} not found in netns {path}")
                ifindex = int(found[0])
            cookie = netns_cookie(path)
            for known in self._ifaces.values():
                if (known.netns_cookie, known.ifindex) == (cookie, ifindex):
                    return known
            meta_key = _U32(0)
            meta = self._maps["nw_meta"].lookup(meta_key) or L.Meta()
            iface_id = max(meta.next_iface, 1)
            meta.next_iface = iface_id + 1
            self._maps["nw_meta"].update(meta_key, meta)
            key = IfaceKey(iface_id, path, ifname, ifindex, cookie)
            self._maps["nw_ifaces"].update(_U32(iface_id), self._info_of(key, 0))
            self._ifaces[iface_id] = key
            return key

    def detach(self, iface: IfaceKey) -> None:
        """Remove the filters and every map entry of the interface. Succeeds
        when the netns or the link is already gone."""
        with self._lock:
            self._need_prog()
            with contextlib.suppress(NotFound):  # netns or link gone: so are the filters
                self._set_filters(iface, False)
            for d in Direction:
                self._drop_tables(iface.id, d)
                self._maps["nw_cfg"].delete(L.CfgKey(iface=iface.id, dir=d))
                for v in Verdict:
                    self._maps["nw_counters"].delete(L.CounterKey(iface=iface.id, dir=d, verdict=v))
            self._maps["nw_ifaces"].delete(_U32(iface.id))
            self._ifaces.pop(iface.id, None)
            # Flows of the interface are left to expire in the LRU: keys are
            # never reused, so nothing can match them again.

    def interfaces(self) -> list[IfaceKey]:
        with self._lock:
            return sorted(self._ifaces.values(), key=lambda k: k.id)

    # -- policy ---------------------------------------------------------------

    def apply(self, iface: IfaceKey, direction: Direction, table: LoweredLike) -> int:
        """Install ``table`` as the new generation of (iface, direction) and
        switch to it; returns the generation.

        Order: every entry of the new generation, then the one ``nw_cfg``
        write that switches, then deletion of the old generation (shortest
        prefixes first, see ``_delete_shortest_first``). A packet sees the
        old table or the new one, never a mix, and never more than either
        allows. Failure before the switch leaves the old policy in force.
        """
        with self._lock:
            self._need_prog()
            self._known(iface)
            direction = Direction(direction)
            cfg_key = L.CfgKey(iface=iface.id, dir=direction)
            cur = self._maps["nw_cfg"].lookup(cfg_key)
            old_gen = cur.gen if cur is not None else 0
            gen = old_gen % 0xFFFFFFFF + 1
            try:
                peer_entries, port_entries, any_mask = _pack(iface.id, direction, gen, table)
            except ValueError as e:
                raise InvalidArgument(
                    f"policy table for {iface.ifname} {direction.name.lower()}: {e}"
                ) from e

            written = _Active(gen, [], [])
            try:
                for pk, pv in peer_entries:
                    self._maps["nw_peers"].update(pk, pv)
                    written.peer_keys.append(bytes(pk))
                for qk, qv in port_entries:
                    self._maps["nw_ports"].update(qk, qv)
                    written.port_keys.append(bytes(qk))
                flags = L.CFG_KEEP_ESTABLISHED if self.keep_established else 0
                self._maps["nw_cfg"].update(
                    cfg_key,
                    L.CfgVal(
                        any_proto_mask=any_mask, gen=gen, isolated=int(table.isolated), flags=flags
                    ),
                )
            except OSError as e:
                self._delete_keys(written)
                raise HostError(
                    f"writing generation {gen} of {iface.ifname} "
                    f"{direction.name.lower()} failed: {e.strerror}"
                ) from e
            # The switch is done; from here on the old generation is garbage.
            old = self._active.pop((iface.id, direction), None)
            if old is not None and old.gen != gen:
                self._delete_keys(old)
            elif old is None and old_gen:
                self._drop_gen(iface.id, direction, old_gen)
            self._active[(iface.id, direction)] = written
            # tc is touched only when the interface's isolation flips (each
            # netns entry costs a fork in pyroute2); resync() forces it.
            want = self._any_isolated(iface.id)
            if want != bool(self._iface_flags(iface.id) & L.IFACE_FILTERS):
                self._set_filters(iface, want)
            return gen

    def resync(self, iface: IfaceKey) -> None:
        """Make the tc filters match the tables again (after someone removed
        them, or when the agent doubts the kernel state)."""
        with self._lock:
            self._need_prog()
            self._known(iface)
            self._set_filters(iface, self._any_isolated(iface.id))

    def generation(self, iface: IfaceKey, direction: Direction) -> int:
        with self._lock:
            cur = self._maps["nw_cfg"].lookup(L.CfgKey(iface=iface.id, dir=Direction(direction)))
            return cur.gen if cur is not None else 0

    def read_back(self, iface: IfaceKey, direction: Direction) -> LoweredDirection:
        """The active generation, read from the kernel maps (a full scan of
        both tries: a diagnostic, not a hot path)."""
        with self._lock:
            self._need_prog()
            direction = Direction(direction)
            cur = self._maps["nw_cfg"].lookup(L.CfgKey(iface=iface.id, dir=direction))
            if cur is None or not cur.isolated:
                return LoweredDirection(False)
            peers: dict[L.PeerEntry, int] = {}
            for pk in self._maps["nw_peers"].iter_keys():
                if (pk.iface, pk.dir, pk.gen) == (iface.id, direction, cur.gen):
                    v = self._maps["nw_peers"].lookup(pk)
                    if v is not None:
                        peers[L.unpack_peer_key(pk)[3]] = v.v
            ports: dict[L.PortEntry, int] = {}
            for qk in self._maps["nw_ports"].iter_keys():
                if (qk.iface, qk.dir, qk.gen) == (iface.id, direction, cur.gen):
                    v = self._maps["nw_ports"].lookup(qk)
                    if v is not None:
                        ports[L.unpack_port_key(qk)[3]] = v.v
            return LoweredDirection(True, peers, ports, cur.any_proto_mask)

    def counters(self, iface: IfaceKey) -> dict[tuple[Direction, Verdict], Count]:
        """Packets and bytes per (direction, verdict), summed over CPUs."""
        with self._lock:
            self._need_prog()
            out: dict[tuple[Direction, Verdict], Count] = {}
            m = self._maps["nw_counters"]
            for d in Direction:
                for v in Verdict:
                    slots = m.lookup_percpu(L.CounterKey(iface=iface.id, dir=d, verdict=v)) or []
                    out[(d, v)] = Count(sum(s.packets for s in slots), sum(s.bytes for s in slots))
            return out

    def flow_count(self, iface: IfaceKey | None = None) -> int:
        with self._lock:
            self._need_prog()
            return sum(
                1
                for k in self._maps["nw_flows"].iter_keys()
                if iface is None or k.iface == iface.id
            )

    def filters_installed(self, iface: IfaceKey) -> dict[Direction, bool]:
        with self._lock, _netns(iface.netns) as ns:
            return {d: self._our_filter(ns, iface.ifindex, d) is not None for d in Direction}

    # -- internals ------------------------------------------------------------

    def _need_prog(self) -> int:
        if self._prog_fd is None:
            raise Unavailable(f"policy datapath {self.instance} is not loaded (load() or adopt())")
        return self._prog_fd

    def _known(self, iface: IfaceKey) -> None:
        if iface.id not in self._ifaces:
            raise NotFound(f"interface key {iface.id} ({iface.ifname}) is not attached")

    def _netns_path(self, netns: str) -> str:
        p = Path(netns) if "/" in netns else self.paths.netns_dir / netns
        return str(p)

    def _open_pin(self, name: str) -> int:
        try:
            return _obj_get(self.pin_dir / name)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NotFound(f"pin {self.pin_dir / name} does not exist") from e
            raise HostError(f"cannot open pin {self.pin_dir / name}: {e.strerror}") from e

    @staticmethod
    def _check_shape(spec: L.MapSpec, fd: int) -> None:
        info = _map_info(fd)
        want = (spec.kernel_type, spec.key_size(), spec.value_size(), spec.max_entries)
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        if want != have:
            raise HostError(
                f"pinned map {spec.name} has (type, key, value, max) {have}, "
                f"expected {want}: cleanup() the instance to change layouts"
            )

    def _open_all(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        types: dict[str, tuple[type[ct.Structure], type[ct.Structure]]] = {
            "nw_peers": (L.PeerKey, _U64),
            "nw_ports": (L.PortKey, _U64),
            "nw_cfg": (L.CfgKey, L.CfgVal),
            "nw_flows": (L.FlowKey, L.FlowVal),
            "nw_counters": (L.CounterKey, L.CounterVal),
            "nw_ifaces": (_U32, L.IfaceInfo),
            "nw_meta": (_U32, L.Meta),
            "nw_progs": (_U32, _U32),
        }
        try:
            for spec in L.MAPS:
                fd = self._open_pin(spec.name)
                try:
                    self._check_shape(spec, fd)
                except HostError:
                    os.close(fd)
                    raise
                key_t, val_t = types[spec.name]
                percpu = self._ncpu if spec.kernel_type == L.BPF_MAP_TYPE_PERCPU_HASH else 0
                self._maps[spec.name] = _Map(spec, fd, key_t, val_t, percpu)
        except BaseException:
            for m in self._maps.values():
                m.close()
            self._maps.clear()
            raise

    def _init_meta(self) -> None:
        m = self._maps["nw_meta"]
        meta = m.lookup(_U32(0))
        if meta is None or meta.layout_version == 0:
            m.update(_U32(0), L.Meta(layout_version=L.LAYOUT_VERSION, next_iface=1))
        elif meta.layout_version != L.LAYOUT_VERSION:
            raise HostError(
                f"pinned datapath at {self.pin_dir} has layout {meta.layout_version}, "
                f"this agent speaks {L.LAYOUT_VERSION}: cleanup() it first"
            )

    def _set_prog(self, fd: int) -> None:
        # One map write: every trampoline jumps to the new program from its
        # next packet on. Running packets finish in the old one (RCU).
        self._maps["nw_progs"].update(_U32(0), _U32(fd))

    def _pin_prog(self, fd: int) -> None:
        final = self.pin_dir / L.PROG_PIN
        # bpffs refuses any name containing a '.' (EPERM): no dotfile here.
        tmp = self.pin_dir / f"{L.PROG_PIN}_new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _obj_pin(fd, tmp)
        os.replace(tmp, final)  # bpffs supports rename: no moment without a pin

    def _recover(self) -> None:
        """Rebuild the registry from the kernel and forget generations that
        are not active (an interrupted apply() leaves some)."""
        self._ifaces.clear()
        self._active.clear()
        for k in list(self._maps["nw_ifaces"].iter_keys()):
            info = self._maps["nw_ifaces"].lookup(k)
            if info is None:
                continue
            self._ifaces[k.v] = IfaceKey(
                k.v, info.netns.decode(), info.ifname.decode(), info.ifindex, info.netns_cookie
            )
        active: dict[tuple[int, int], int] = {}
        for ck in self._maps["nw_cfg"].iter_keys():
            cv = self._maps["nw_cfg"].lookup(ck)
            if cv is not None:
                active[(ck.iface, ck.dir)] = cv.gen
        peers: dict[tuple[int, Direction], list[bytes]] = {}
        ports: dict[tuple[int, Direction], list[bytes]] = {}
        stale_peers: list[L.PeerKey] = []
        stale_ports: list[L.PortKey] = []
        for pk in list(self._maps["nw_peers"].iter_keys()):
            if active.get((pk.iface, pk.dir)) == pk.gen:
                peers.setdefault((pk.iface, Direction(pk.dir)), []).append(bytes(pk))
            else:
                stale_peers.append(pk)
        for qk in list(self._maps["nw_ports"].iter_keys()):
            if active.get((qk.iface, qk.dir)) == qk.gen:
                ports.setdefault((qk.iface, Direction(qk.dir)), []).append(bytes(qk))
            else:
                stale_ports.append(qk)
        for pk in stale_peers:
            self._maps["nw_peers"].delete(pk)
        for qk in stale_ports:
            self._maps["nw_ports"].delete(qk)
        for (iface_id, d), gen in active.items():
            self._active[(iface_id, Direction(d))] = _Active(
                gen,
                peers.get((iface_id, Direction(d)), []),
                ports.get((iface_id, Direction(d)), []),
            )

    def _delete_keys(self, act: _Active) -> None:
        self._delete_shortest_first(
            self._maps["nw_peers"], [L.PeerKey.from_buffer_copy(raw) for raw in act.peer_keys]
        )
        self._delete_shortest_first(
            self._maps["nw_ports"], [L.PortKey.from_buffer_copy(raw) for raw in act.port_keys]
        )

    @staticmethod
    def _delete_shortest_first(m: _Map[Any, Any], keys: list[Any]) -> None:
        """Delete a retired generation's trie entries, shortest prefix first.

        A packet that read the old nw_cfg just before the switch may still be
        looking these entries up. Removing a longer entry (an ``except``)
        before the shorter one covering it would briefly hand it the shorter
        entry's wider mask. Shortest first, every lookup returns either its
        old answer or a miss (mask 0), which can only deny more.
        """
        for k in sorted(keys, key=lambda k: int(k.prefixlen)):
            m.delete(k)

    def _drop_gen(self, iface_id: int, direction: Direction, gen: int) -> None:
        """Delete entries of one generation found by scanning (slow path)."""
        for name in ("nw_peers", "nw_ports"):
            m = self._maps[name]
            doomed = [
                k for k in m.iter_keys() if (k.iface, k.dir, k.gen) == (iface_id, direction, gen)
            ]
            self._delete_shortest_first(m, doomed)

    def _drop_tables(self, iface_id: int, direction: Direction) -> None:
        act = self._active.pop((iface_id, direction), None)
        if act is not None:
            self._delete_keys(act)

    def _iface_flags(self, iface_id: int) -> int:
        info = self._maps["nw_ifaces"].lookup(_U32(iface_id))
        return int(info.flags) if info is not None else 0

    def _any_isolated(self, iface_id: int) -> bool:
        for d in Direction:
            cv = self._maps["nw_cfg"].lookup(L.CfgKey(iface=iface_id, dir=d))
            if cv is not None and cv.isolated:
                return True
        return False

    def _info_of(self, key: IfaceKey, flags: int) -> L.IfaceInfo:
        netns = key.netns.encode()
        if len(netns) >= L.NETNS_PATH_MAX:
            raise InvalidArgument(f"netns path {key.netns} is longer than {L.NETNS_PATH_MAX - 1}")
        return L.IfaceInfo(
            netns_cookie=key.netns_cookie,
            ifindex=key.ifindex,
            flags=flags,
            ifname=key.ifname.encode(),
            netns=netns,
        )

    @staticmethod
    def _parent(direction: Direction) -> int:
        return _TC_H_INGRESS if direction is Direction.INGRESS else _TC_H_EGRESS

    def _filter_name(self, iface: IfaceKey, direction: Direction) -> str:
        return f"nicwarden:{self.instance}:{iface.id}:{direction.name.lower()}"

    def _our_filter(self, ns: Any, ifindex: int, direction: Direction) -> Any | None:
        try:
            msgs = ns.get_filters(index=ifindex, parent=self._parent(direction))
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return None  # no clsact (or no link): no filter
            raise translate(e, "list tc filters") from e
        for msg in msgs:
            # tcm_info = prio << 16 | protocol; the chain head has no options.
            if (
                msg.get_attr("TCA_KIND") == "bpf"
                and (msg["info"] >> 16) == L.TC_PRIO
                and msg.get_attr("TCA_OPTIONS") is not None
            ):
                return msg
        return None

    def _set_filters(self, iface: IfaceKey, want: bool) -> None:
        """Both filters or none: a non-isolated direction still records flows
        so that replies pass the isolated one."""
        info = self._maps["nw_ifaces"].lookup(_U32(iface.id))
        flags = info.flags if info is not None else 0
        with _netns(iface.netns) as ns:
            found = ns.link_lookup(ifname=iface.ifname)
            if not found or int(found[0]) != iface.ifindex:
                raise NotFound(
                    f"link {iface.ifname} (ifindex {iface.ifindex}) is gone from {iface.netns}"
                )
            idx = iface.ifindex
            if want:
                try:
                    ns.tc("add", "clsact", idx)
                    flags |= L.IFACE_OWNS_CLSACT
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise translate(e, f"add clsact to {iface.ifname}") from e
                for d in Direction:
                    if self._our_filter(ns, idx, d) is not None:
                        continue
                    fd = _load_trampoline(iface.id, d, self._maps["nw_progs"].fd)
                    try:
                        _tc(
                            f"attach {d.name.lower()} filter to {iface.ifname}",
                            ns.tc,
                            "add-filter",
                            "bpf",
                            idx,
                            L.TC_HANDLE,
                            fd=fd,
                            name=self._filter_name(iface, d),
                            parent=self._parent(d),
                            prio=L.TC_PRIO,
                            direct_action=True,
                        )
                    finally:
                        os.close(fd)  # the filter holds its own reference
                flags |= L.IFACE_FILTERS
            else:
                for d in Direction:
                    if self._our_filter(ns, idx, d) is None:
                        continue
                    try:
                        ns.tc(
                            "del-filter",
                            "bpf",
                            idx,
                            L.TC_HANDLE,
                            parent=self._parent(d),
                            prio=L.TC_PRIO,
                        )
                    except NetlinkError as e:
                        if e.code not in (errno.ENOENT, errno.EINVAL):
                            raise translate(e, f"detach filter from {iface.ifname}") from e
                flags &= ~L.IFACE_FILTERS
                if flags & L.IFACE_OWNS_CLSACT and not self._other_filters(ns, idx):
                    with contextlib.suppress(NetlinkError):
                        ns.tc("del", "clsact", idx)
                    flags &= ~L.IFACE_OWNS_CLSACT
        if info is not None and info.flags != flags:
            info.flags = flags
            self._maps["nw_ifaces"].update(_U32(iface.id), info)

    def _other_filters(self, ns: Any, ifindex: int) -> bool:
        for parent in (_TC_H_INGRESS, _TC_H_EGRESS):
            try:
                msgs = ns.get_filters(index=ifindex, parent=parent)
            except NetlinkError:
                continue
            if any(m.get_attr("TCA_OPTIONS") is not None for m in msgs):
                return True
        return False


def _pack(
    iface_id: int, direction: Direction, gen: int, table: LoweredLike
) -> tuple[list[tuple[L.PeerKey, _U64]], list[tuple[L.PortKey, _U64]], int]:
    """Validate and pack a whole table before anything is written."""
    if not table.isolated:
        return [], [], 0
    peers = [
        (L.peer_key(iface_id, direction, gen, e), _U64(L.check_mask(m, f"peer {e}")))
        for e, m in table.peers.items()
    ]
    ports = [
        (L.port_key(iface_id, direction, gen, e), _U64(L.check_mask(m, f"port {e}")))
        for e, m in table.ports.items()
    ]
    return peers, ports, L.check_mask(table.any_proto_mask, "any_proto_mask")


def counters_by_name(counts: Mapping[tuple[Direction, Verdict], Count]) -> dict[str, int]:
    """Flatten for metrics: ``{"ingress_drop_policy_packets": n, ...}``."""
    out: dict[str, int] = {}
    for (d, v), c in counts.items():
        base = f"{d.name.lower()}_{v.name.lower()}"
        out[f"{base}_packets"] = c.packets
        out[f"{base}_bytes"] = c.bytes
    return out
