"""Policy tables in the pinned maps: generations, their switch, read-back,
counters and flows.

A table of (interface, direction) is written as a new generation next to the
active one; one ``nw_cfg`` write switches to it; the old one is deleted
afterwards, shortest prefixes first. A packet sees the old table or the new
one, never a mix, and never more than either allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from nicwarden.agent.errors import InvalidArgument
from nicwarden.agent.host import errnos
from nicwarden.agent.host.bpf_pins import Maps
from nicwarden.agent.host.bpfsys import U64, Map
from nicwarden.bpf import layout as L
from nicwarden.bpf.layout import Direction, IfaceKey, LoweredDirection, LoweredLike, Verdict

TrieKey = TypeVar("TrieKey", L.PeerKey, L.PortKey)


@dataclass(frozen=True)
class Count:
    packets: int = 0
    bytes: int = 0


@dataclass
class Written:
    """What one generation wrote for (iface, direction): enough to delete it."""

    gen: int
    peer_keys: list[bytes] = field(default_factory=list)
    port_keys: list[bytes] = field(default_factory=list)


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
        self._active: dict[tuple[int, Direction], Written] = {}

    def recover(self) -> None:
        """Learn the active generations from the kernel and delete entries of
        any other (an interrupted write leaves some)."""
        self._active.clear()
        active: dict[tuple[int, int], int] = {}
        for ck in self.maps.cfg.iter_keys():
            cv = self.maps.cfg.lookup(ck)
            if cv is not None:
                active[(ck.iface, ck.dir)] = cv.gen
        peers: dict[tuple[int, Direction], list[bytes]] = {}
        ports: dict[tuple[int, Direction], list[bytes]] = {}
        stale_peers: list[L.PeerKey] = []
        stale_ports: list[L.PortKey] = []
        for pk in list(self.maps.peers.iter_keys()):
            if active.get((pk.iface, pk.dir)) == pk.gen:
                peers.setdefault((pk.iface, Direction(pk.dir)), []).append(bytes(pk))
            else:
                stale_peers.append(pk)
        for qk in list(self.maps.ports.iter_keys()):
            if active.get((qk.iface, qk.dir)) == qk.gen:
                ports.setdefault((qk.iface, Direction(qk.dir)), []).append(bytes(qk))
            else:
                stale_ports.append(qk)
        for pk in stale_peers:
            self.maps.peers.delete(pk)
        for qk in stale_ports:
            self.maps.ports.delete(qk)
        for (iface_id, d), gen in active.items():
            key = (iface_id, Direction(d))
            self._active[key] = Written(gen, peers.get(key, []), ports.get(key, []))

    def clear(self) -> None:
        self._active.clear()

    def write(
        self, iface: IfaceKey, direction: Direction, table: LoweredLike, keep_established: bool
    ) -> int:
        """Install ``table`` as the next generation and switch to it. Failure
        before the switch leaves the old policy in force."""
        cfg_key = L.CfgKey(iface=iface.id, dir=direction)
        cur = self.maps.cfg.lookup(cfg_key)
        old_gen = cur.gen if cur is not None else 0
        gen = old_gen % 0xFFFFFFFF + 1
        where = f"{iface.ifname} {direction.name.lower()}"
        try:
            peer_entries, port_entries, any_mask = pack(iface.id, direction, gen, table)
        except ValueError as e:
            raise InvalidArgument(f"policy table for {where}: {e}") from e

        written = Written(gen)
        try:
            for pk, pv in peer_entries:
                self.maps.peers.update(pk, pv)
                written.peer_keys.append(bytes(pk))
            for qk, qv in port_entries:
                self.maps.ports.update(qk, qv)
                written.port_keys.append(bytes(qk))
            flags = L.CFG_KEEP_ESTABLISHED if keep_established else 0
            self.maps.cfg.update(
                cfg_key,
                L.CfgVal(
                    any_proto_mask=any_mask, gen=gen, isolated=int(table.isolated), flags=flags
                ),
            )
        except OSError as e:
            self._delete(written)
            raise errnos.from_oserror(e, f"writing generation {gen} of {where}") from e
        # The switch is done; from here on the old generation is garbage.
        old = self._active.pop((iface.id, direction), None)
        if old is not None and old.gen != gen:
            self._delete(old)
        elif old is None and old_gen:
            self._drop_gen(iface.id, direction, old_gen)
        self._active[(iface.id, direction)] = written
        return gen

    def forget(self, iface_id: int) -> None:
        """Every table, config and counter of an interface."""
        for d in Direction:
            act = self._active.pop((iface_id, d), None)
            if act is not None:
                self._delete(act)
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

    def _delete(self, act: Written) -> None:
        delete_shortest_first(
            self.maps.peers, [L.PeerKey.from_buffer_copy(raw) for raw in act.peer_keys]
        )
        delete_shortest_first(
            self.maps.ports, [L.PortKey.from_buffer_copy(raw) for raw in act.port_keys]
        )

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
