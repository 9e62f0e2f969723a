"""Policy tables in the pinned maps: generations, their switch, in-place
changes, read-back, counters and flows.

A table of (interface, direction) is written as a new generation next to the
active one; one ``nw_cfg`` write switches to it; the old one is deleted
afterwards, shortest prefixes first. A packet sees the old table or the new
one, never a mix, and never more than either allows.

A change of peer entries alone whose prefixes do not nest is written in
place instead (lpm_delta.py says why that is atomic per packet), then the
generation's ``epoch`` is bumped so that established flows are re-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.host import errnos
from nicwarden.agent.host.bpf_pins import Maps
from nicwarden.agent.host.bpfsys import U64, Map
from nicwarden.agent.host.lpm_delta import PeerDelta, peer_delta
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, LoweredLike, Verdict

TrieKey = TypeVar("TrieKey", L.PeerKey, L.PortKey)


@dataclass(frozen=True)
class Count:
    packets: int = 0
    bytes: int = 0


@dataclass
class Active:
    """The generation in force for (iface, direction), and what it holds.
    ``table`` is None when its contents are not known (an in-place change
    failed halfway): the next write then switches generations."""

    gen: int
    epoch: int
    table: LoweredLike | None


# epoch is a u16 in nw_cfg; at its end the next change switches generations,
# so a (gen, epoch) pair is never reused while a flow may still hold it.
MAX_EPOCH = 0xFFFF


def pack(
    iface_id: int, direction: Direction, gen: int, table: LoweredLike
) -> tuple[list[tuple[L.PeerKey, U64]], list[tuple[L.PortKey, U64]], int]:
    """Validate and pack a whole table before anything is written."""
    if not table.isolated:
        return [], [], 0
    peers = [
        (L.peer_key(iface_id, direction, gen, e), U64(L.check_mask(m, f"peer {e}")))
        for e, m in table.peers.items()
    ]
    ports = [
        (L.port_key(iface_id, direction, gen, e), U64(L.check_mask(m, f"port {e}")))
        for e, m in table.ports.items()
    ]
    return peers, ports, L.check_mask(table.any_proto_mask, "any_proto_mask")


def delete_shortest_first(m: Map[TrieKey, U64], keys: list[TrieKey]) -> None:
    """Delete a retired generation's trie entries, shortest prefix first.

    A packet that read the old nw_cfg just before the switch may still be
    looking these entries up. Removing a longer entry (an ``except``) before
    the shorter one covering it would briefly hand it the shorter entry's
    wider mask. Shortest first, every lookup returns either its old answer or
    a miss (mask 0), which can only deny more.
    """
    for k in sorted(keys, key=lambda k: int(k.prefixlen)):
        m.delete(k)


class Tables:
    """The generations of every (interface, direction). Not locked: the
    datapath facade serializes calls."""

    def __init__(self, maps: Maps) -> None:
        self.maps = maps
        self._active: dict[tuple[int, Direction], Active] = {}
        # How writes went: "switch" (a new generation), "delta" (in place),
        # "unchanged" (nothing to write). Tests and benchmarks read these.
        self.writes: dict[str, int] = {"switch": 0, "delta": 0, "unchanged": 0}

    def recover(self) -> None:
        """Learn the active generations and their contents from the kernel,
        and delete entries of any other generation (an interrupted switch
        leaves some)."""
        self._active.clear()
        active: dict[tuple[int, int], L.CfgVal] = {}
        for ck in self.maps.cfg.iter_keys():
            cv = self.maps.cfg.lookup(ck)
            if cv is not None:
                active[(ck.iface, ck.dir)] = cv
        peers: dict[tuple[int, int], dict[L.PeerEntry, int]] = {}
        ports: dict[tuple[int, int], dict[L.PortEntry, int]] = {}
        stale_peers: list[L.PeerKey] = []
        stale_ports: list[L.PortKey] = []
        for pk in list(self.maps.peers.iter_keys()):
            cv = active.get((pk.iface, pk.dir))
            pv = self.maps.peers.lookup(pk) if cv is not None and cv.gen == pk.gen else None
            if pv is None:
                stale_peers.append(pk)
            else:
                peers.setdefault((pk.iface, pk.dir), {})[L.unpack_peer_key(pk)[3]] = pv.v
        for qk in list(self.maps.ports.iter_keys()):
            cv = active.get((qk.iface, qk.dir))
            qv = self.maps.ports.lookup(qk) if cv is not None and cv.gen == qk.gen else None
            if qv is None:
                stale_ports.append(qk)
            else:
                ports.setdefault((qk.iface, qk.dir), {})[L.unpack_port_key(qk)[3]] = qv.v
        delete_shortest_first(self.maps.peers, stale_peers)
        delete_shortest_first(self.maps.ports, stale_ports)
        for (iface_id, d), cv in active.items():
            table = LoweredDirection(
                bool(cv.isolated),
                peers.get((iface_id, d), {}),
                ports.get((iface_id, d), {}),
                cv.any_proto_mask,
            )
            self._active[(iface_id, Direction(d))] = Active(cv.gen, cv.epoch, table)

    def clear(self) -> None:
        self._active.clear()

    def write(
        self, iface: IfaceKey, direction: Direction, table: LoweredLike, keep_established: bool
    ) -> int:
        """Make ``table`` the one in force, in place when that is atomic
        (lpm_delta.py), else as the next generation. Returns the generation.
        Failure leaves the old policy in force (or, after an in-place change
        failed halfway, every packet judged by the old or the new answer for
        its peer, and the next write switches generations)."""
        cfg_key = L.CfgKey(iface=iface.id, dir=direction)
        cur = self.maps.cfg.lookup(cfg_key)
        flags = L.CFG_KEEP_ESTABLISHED if keep_established else 0
        act = self._active.get((iface.id, direction))
        where = f"{iface.ifname} {direction.name.lower()}"
        if (
            cur is not None
            and act is not None
            and act.table is not None
            and act.gen == cur.gen
            and cur.flags == flags
        ):
            if not cur.isolated and not table.isolated:
                self.writes["unchanged"] += 1
                act.table = table
                return int(cur.gen)
            delta = peer_delta(act.table, table) if cur.epoch < MAX_EPOCH else None
            if delta is not None:
                self._write_delta(iface, direction, cfg_key, cur, act, table, delta, where)
                return int(cur.gen)
        return self._switch(iface, direction, cfg_key, cur, table, flags, where)

    def _write_delta(
        self,
        iface: IfaceKey,
        direction: Direction,
        cfg_key: L.CfgKey,
        cur: L.CfgVal,
        act: Active,
        table: LoweredLike,
        delta: PeerDelta,
        where: str,
    ) -> None:
        if not delta:
            self.writes["unchanged"] += 1
            act.table = table
            return
        try:
            upserts = [
                (L.peer_key(iface.id, direction, cur.gen, e), U64(L.check_mask(m, f"peer {e}")))
                for e, m in delta.upserts.items()
            ]
            deletes = [L.peer_key(iface.id, direction, cur.gen, e) for e in delta.deletes]
        except ValueError as e:
            raise InvalidArgument(f"policy table for {where}: {e}") from e
        try:
            for pk, pv in upserts:
                self.maps.peers.update(pk, pv)
            for pk in deletes:
                self.maps.peers.delete(pk)
            # Entries first, then the epoch: a flow's next packet that sees the
            # new epoch is re-checked against entries already in place.
            epoch = cur.epoch + 1
            cur.epoch = epoch
            self.maps.cfg.update(cfg_key, cur)
        except OSError as e:
            # Each address still gets its old answer or its new one; what the
            # table holds as a whole is no longer known, so the next write
            # rewrites it from scratch.
            act.table = None
            raise errnos.from_oserror(e, f"changing generation {cur.gen} of {where}") from e
        act.epoch, act.table = epoch, table
        self.writes["delta"] += 1

    def _switch(
        self,
        iface: IfaceKey,
        direction: Direction,
        cfg_key: L.CfgKey,
        cur: L.CfgVal | None,
        table: LoweredLike,
        flags: int,
        where: str,
    ) -> int:
        """Install ``table`` as the next generation and switch to it. Failure
        before the switch leaves the old policy in force."""
        old_gen = cur.gen if cur is not None else 0
        gen = old_gen % 0xFFFFFFFF + 1
        try:
            peer_entries, port_entries, any_mask = pack(iface.id, direction, gen, table)
        except ValueError as e:
            raise InvalidArgument(f"policy table for {where}: {e}") from e

        peers_done: list[L.PeerKey] = []
        ports_done: list[L.PortKey] = []
        try:
            for pk, pv in peer_entries:
                self.maps.peers.update(pk, pv)
                peers_done.append(pk)
            for qk, qv in port_entries:
                self.maps.ports.update(qk, qv)
                ports_done.append(qk)
            self.maps.cfg.update(
                cfg_key,
                L.CfgVal(
                    any_proto_mask=any_mask,
                    gen=gen,
                    isolated=int(table.isolated),
                    flags=flags,
                    epoch=0,
                ),
            )
        except OSError as e:
            delete_shortest_first(self.maps.peers, peers_done)
            delete_shortest_first(self.maps.ports, ports_done)
            raise errnos.from_oserror(e, f"writing generation {gen} of {where}") from e
        # The switch is done; from here on the old generation is garbage.
        old = self._active.pop((iface.id, direction), None)
        if old is not None and old.gen != gen:
            self._delete(iface.id, direction, old)
        elif old is None and old_gen:
            self._drop_gen(iface.id, direction, old_gen)
        self._active[(iface.id, direction)] = Active(gen, 0, table)
        self.writes["switch"] += 1
        return gen

    def forget(self, iface_id: int) -> None:
        """Every table, config and counter of an interface."""
        for d in Direction:
            act = self._active.pop((iface_id, d), None)
            if act is not None:
                self._delete(iface_id, d, act)
            self.maps.cfg.delete(L.CfgKey(iface=iface_id, dir=d))
            for v in Verdict:
                self.maps.counters.delete(L.CounterKey(iface=iface_id, dir=d, verdict=v))
        # Flows of the interface are left to expire in the LRU: keys are
        # never reused, so nothing can match them again.

    def generation(self, iface_id: int, direction: Direction) -> int:
        cur = self.maps.cfg.lookup(L.CfgKey(iface=iface_id, dir=direction))
        return cur.gen if cur is not None else 0

    def any_isolated(self, iface_id: int) -> bool:
        for d in Direction:
            cv = self.maps.cfg.lookup(L.CfgKey(iface=iface_id, dir=d))
            if cv is not None and cv.isolated:
                return True
        return False

    def read_back(self, iface_id: int, direction: Direction) -> LoweredDirection:
        """The active generation, read from the kernel maps (a full scan of
        both tries: a diagnostic, not a hot path)."""
        cur = self.maps.cfg.lookup(L.CfgKey(iface=iface_id, dir=direction))
        if cur is None or not cur.isolated:
            return LoweredDirection(False)
        peers: dict[L.PeerEntry, int] = {}
        for pk in self.maps.peers.iter_keys():
            if (pk.iface, pk.dir, pk.gen) == (iface_id, direction, cur.gen):
                v = self.maps.peers.lookup(pk)
                if v is not None:
                    peers[L.unpack_peer_key(pk)[3]] = v.v
        ports: dict[L.PortEntry, int] = {}
        for qk in self.maps.ports.iter_keys():
            if (qk.iface, qk.dir, qk.gen) == (iface_id, direction, cur.gen):
                w = self.maps.ports.lookup(qk)
                if w is not None:
                    ports[L.unpack_port_key(qk)[3]] = w.v
        return LoweredDirection(True, peers, ports, cur.any_proto_mask)

    def counters(self, iface_id: int) -> dict[tuple[Direction, Verdict], Count]:
        """Packets and bytes per (direction, verdict), summed over CPUs."""
        out: dict[tuple[Direction, Verdict], Count] = {}
        for d in Direction:
            for v in Verdict:
                key = L.CounterKey(iface=iface_id, dir=d, verdict=v)
                slots = self.maps.counters.lookup_percpu(key) or []
                out[(d, v)] = Count(sum(s.packets for s in slots), sum(s.bytes for s in slots))
        return out

    def flow_count(self, iface_id: int | None = None) -> int:
        return sum(
            1 for k in self.maps.flows.iter_keys() if iface_id is None or k.iface == iface_id
        )

    def _delete(self, iface_id: int, direction: Direction, act: Active) -> None:
        if act.table is None:
            self._drop_gen(iface_id, direction, act.gen)
            return
        if not act.table.isolated:
            return  # an unisolated generation has no entries
        peers, ports, _ = pack(iface_id, direction, act.gen, act.table)
        delete_shortest_first(self.maps.peers, [k for k, _ in peers])
        delete_shortest_first(self.maps.ports, [k for k, _ in ports])

    def _drop_gen(self, iface_id: int, direction: Direction, gen: int) -> None:
        """Delete entries of one generation found by scanning (slow path)."""
        want = (iface_id, direction, gen)
        delete_shortest_first(
            self.maps.peers,
            [k for k in self.maps.peers.iter_keys() if (k.iface, k.dir, k.gen) == want],
        )
        delete_shortest_first(
            self.maps.ports,
            [k for k in self.maps.ports.iter_keys() if (k.iface, k.dir, k.gen) == want],
        )
