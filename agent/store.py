"""The agent's durable state: one sqlite database under the state dir.

The ``intents`` table is the write-ahead log for kernel changes: a change is
recorded as pending before it is made and marked done after, so a restart can
finish or roll back whatever a crash interrupted. Attachments keep the VF state
we found, so DEL (or a reconcile) can put the device back as it was.

A database we cannot trust (not sqlite, failing ``quick_check``, or written by
a newer agent) is refused with :class:`StoreError` and never reset: it may be
the only record of which VFs sit in which pods.

An empty state is trusted only when the state dir shows no database ever
existed. A new database is built under a temporary name and renamed into
place, then a marker file is written beside it; so a zero-byte database, or
a missing one with the marker or sqlite's WAL/SHM files left behind, means
state was lost, and is refused like a corrupt one rather than taken as a
fresh node (which would forget every VF sitting in a pod).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nicwarden.agent.errors import AlreadyExists, Busy, InvalidArgument, NotFound, StoreError

DB_NAME = "nicwarden.db"
# Written once the first schema is in place: "a database has existed here".
MARKER_NAME = "nicwarden.db.created"
_NEW_NAME = ".nicwarden.db.new"
_LEFTOVER_SUFFIXES = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT_S = 5.0

IntentState = Literal["pending", "done", "rolled_back"]
AttachmentKind = Literal["sriov", "dpdk", "chained"]
AttachmentState = Literal["adding", "ready", "deleting"]
DraClaimState = Literal["preparing", "prepared", "unpreparing"]

Migration = Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> Migration:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return apply


# Append-only: once a migration has shipped, never edit it; add a new one.
# PRAGMA user_version holds how many have been applied.
MIGRATIONS: tuple[Migration, ...] = (
    _sql(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE intents (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'rolled_back')),
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
        # Startup reconciliation reads only pending intents; finished ones pile up.
        "CREATE INDEX intents_pending ON intents (kind) WHERE state = 'pending'",
        """CREATE TABLE allocations (
            resource TEXT NOT NULL,
            device_id TEXT NOT NULL,
            pod_namespace TEXT NOT NULL,
            pod_name TEXT NOT NULL,
            pod_uid TEXT NOT NULL,
            container TEXT,
            allocated_at REAL NOT NULL,
            PRIMARY KEY (resource, device_id))""",
    ),
    _sql(
        """CREATE TABLE attachments (
            container_id TEXT NOT NULL,
            ifname TEXT NOT NULL,
            network TEXT NOT NULL,
            netns TEXT NOT NULL,
            device TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('sriov', 'dpdk', 'chained')),
            state TEXT NOT NULL CHECK (state IN ('adding', 'ready', 'deleting')),
            pod_namespace TEXT NOT NULL,
            pod_name TEXT NOT NULL,
            pod_uid TEXT NOT NULL,
            original TEXT NOT NULL,
            config TEXT NOT NULL,
            result TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (container_id, ifname, network))""",
        # A VF in two pods at once is the one state we must never record;
        # chained attachments have no device of their own.
        "CREATE UNIQUE INDEX attachments_device ON attachments (device) WHERE device IS NOT NULL",
        """CREATE TABLE policy_generations (
            iface_key TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            digest TEXT NOT NULL,
            applied_at REAL NOT NULL)""",
    ),
    _sql(
        # The name and ifindex each VF netdev had when last seen home and
        # unattached: a later name on the same ifindex is a rename nobody
        # recorded.
        """CREATE TABLE vf_homes (
            device TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            ifindex INTEGER NOT NULL,
            updated REAL NOT NULL)""",
        # VFs an admin accepted as used outside any attachment.
        """CREATE TABLE vf_holds (
            device TEXT PRIMARY KEY,
            note TEXT NOT NULL,
            held_at REAL NOT NULL)""",
    ),
    _sql(
        # DRA claims this node prepared: everything Unprepare needs to undo
        # the work (drivers to restore, the CDI spec to delete), since by
        # then the ResourceClaim may be gone from the API.
        """CREATE TABLE dra_claims (
            uid TEXT PRIMARY KEY,
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            devices TEXT NOT NULL,
            cdi_ids TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('preparing', 'prepared', 'unpreparing')),
            prepared REAL NOT NULL,
            updated REAL NOT NULL)""",
    ),
    _sql(
        # policy_generations recorded each interface's loaded table
        # generation after the fact, costing a commit per policy update and
        # per CNI DEL; nothing read it back, since a restarting agent reloads
        # every interface from the policy engine and the pinned maps.
        "DROP TABLE policy_generations",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Intent:
    id: int
    kind: str
    target: str
    payload: dict[str, Any]
    state: IntentState
    created: float
    updated: float


@dataclass(frozen=True)
class Allocation:
    resource: str
    device_id: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    container: str | None
    allocated_at: float


@dataclass(frozen=True)
class AttachmentKey:
    container_id: str
    ifname: str
    network: str


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    network: str
    netns: str
    device: str | None  # VF PCI address; None for chained attachments
    kind: AttachmentKind
    state: AttachmentState
    pod_namespace: str
    pod_name: str
    pod_uid: str
    original: dict[str, Any]  # the VF's state before we touched it
    config: dict[str, Any]  # the CNI network config
    result: dict[str, Any] | None
    created: float
    updated: float

    @property
    def key(self) -> AttachmentKey:
        return AttachmentKey(self.container_id, self.ifname, self.network)


@dataclass(frozen=True)
class VfHome:
    device: str
    name: str
    ifindex: int
    updated: float


@dataclass(frozen=True)
class VfHold:
    device: str
    note: str
    held_at: float


@dataclass(frozen=True)
class DraClaimRecord:
    """A DRA claim as this node prepared it (the checkpoint Unprepare uses)."""

    uid: str
    namespace: str
    name: str
    devices: list[dict[str, Any]]  # one entry per allocated device, in answer order
    cdi_ids: list[str]
    state: DraClaimState
    prepared: float
    updated: float


_ATTACHMENT_COLUMNS = (
    "container_id, ifname, network, netns, device, kind, state, pod_namespace, pod_name,"
    " pod_uid, original, config, result, created, updated"
)
_INTENT_COLUMNS = "id, kind, target, payload, state, created, updated"
_ALLOCATION_COLUMNS = (
    "resource, device_id, pod_namespace, pod_name, pod_uid, container, allocated_at"
)
_DRA_COLUMNS = "uid, namespace, name, devices, cdi_ids, state, prepared, updated"


class Store:
    """Thread-safe access to the state database.

    One connection serves every thread (gRPC workers, the CNI endpoint,
    background loops); an ``RLock`` serialises it so one thread's statements
    never land inside another thread's transaction.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(cls, state_dir: Path, clock: Callable[[], float] = time.time) -> Store:
        """Open ``state_dir/nicwarden.db`` and migrate it; create it only when
        the state dir shows none ever existed."""
        path = state_dir / DB_NAME
        _make_state_dir(state_dir)
        if not path.exists() and not path.is_symlink():
            _refuse_lost(state_dir, path)
            _create(state_dir, path)
        elif path.is_file() and path.stat().st_size == 0:
            raise StoreError(
                f"state database {path} is empty (0 bytes): the state it held is lost, and"
                " starting from nothing would forget every VF attached to a pod; restore a"
                f" backup, or, on a node with no pods using VFs, remove it and {MARKER_NAME}"
            )
        conn = _connect(path)
        try:
            _check_readable(conn, path)
            _configure(conn, path)
            _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        # Databases made before the marker existed get it now.
        _write_marker(state_dir)
        return cls(conn, path, clock)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def schema_version(self) -> int:
        return int(self._query_one("PRAGMA user_version")[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all commit together or none do.

        BEGIN IMMEDIATE takes the write lock up front, so a transaction that
        reads then writes cannot fail half-way on a lock upgrade. Nested use
        becomes a savepoint: an inner failure the caller catches undoes only
        the inner writes.
        """
        with self._lock:
            conn = self._connection()
            savepoint = f"nested_{self._depth}" if self._depth else None
            self._run(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._undo(conn, savepoint)
                raise
            self._depth -= 1
            self._finish(conn, savepoint)

    def _finish(self, conn: sqlite3.Connection, savepoint: str | None) -> None:
        try:
            conn.execute(f"RELEASE {savepoint}" if savepoint else "COMMIT")
        except sqlite3.Error as e:
            self._undo(conn, savepoint)
            raise self._error("commit failed", e) from e

    def _undo(self, conn: sqlite3.Connection, savepoint: str | None) -> None:
        # Some errors (SQLITE_FULL, SQLITE_IOERR) make sqlite roll back by
        # itself; a second ROLLBACK would then mask the original exception.
        if not conn.in_transaction:
            return
        if savepoint:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
        else:
            conn.execute("ROLLBACK")

    # -- intents ------------------------------------------------------------

    def begin_intent(self, kind: str, target: str, payload: Mapping[str, Any]) -> int:
        """Record a kernel change as pending; it is durable when this returns."""
        now = self._clock()
        with self.transaction():
            cur = self._run(
                "INSERT INTO intents (kind, target, payload, state, created, updated)"
                " VALUES (?, ?, ?, 'pending', ?, ?)",
                (kind, target, _encode(payload), now, now),
            )
        assert cur.lastrowid is not None  # always set after a rowid-table INSERT
        return cur.lastrowid

    def complete_intent(self, intent_id: int) -> None:
        self._finish_intent(intent_id, "done")

    def roll_back_intent(self, intent_id: int) -> None:
        self._finish_intent(intent_id, "rolled_back")

    def _finish_intent(self, intent_id: int, state: IntentState) -> None:
        # Repeating the same outcome is a no-op: a reconcile after a crash may
        # not know whether the first attempt's completion was recorded.
        with self.transaction():
            current = self._intent_state(intent_id)
            if current == state:
                return
            if current != "pending":
                raise InvalidArgument(
                    f"intent {intent_id} is already {current}; cannot mark it {state}"
                )
            self._run(
                "UPDATE intents SET state = ?, updated = ? WHERE id = ?",
                (state, self._clock(), intent_id),
            )

    def _intent_state(self, intent_id: int) -> str:
        row = self._query_one_or_none("SELECT state FROM intents WHERE id = ?", (intent_id,))
        if row is None:
            raise NotFound(f"intent {intent_id} not found")
        return str(row[0])

    def update_intent_payload(self, intent_id: int, payload: Mapping[str, Any]) -> None:
        with self.transaction():
            cur = self._run(
                "UPDATE intents SET payload = ?, updated = ? WHERE id = ?",
                (_encode(payload), self._clock(), intent_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"intent {intent_id} not found")

    def intent(self, intent_id: int) -> Intent | None:
        row = self._query_one_or_none(
            f"SELECT {_INTENT_COLUMNS} FROM intents WHERE id = ?", (intent_id,)
        )
        return None if row is None else self._intent(row)

    def pending_intents(self, kind: str | None = None) -> list[Intent]:
        """Pending intents, oldest first (the order they must be reconciled in)."""
        sql = f"SELECT {_INTENT_COLUMNS} FROM intents WHERE state = 'pending'"
        params: tuple[object, ...] = ()
        if kind is not None:
            sql += " AND kind = ?"
            params = (kind,)
        return [self._intent(row) for row in self._query(sql + " ORDER BY id", params)]

    def prune_intents(self, finished_before: float) -> int:
        """Delete finished intents last updated before ``finished_before``."""
        with self.transaction():
            cur = self._run(
                "DELETE FROM intents WHERE state != 'pending' AND updated < ?",
                (finished_before,),
            )
        return cur.rowcount

    def _intent(self, row: Sequence[Any]) -> Intent:
        return Intent(
            id=row[0],
            kind=row[1],
            target=row[2],
            payload=self._decode(row[3], "intents.payload"),
            state=row[4],
            created=row[5],
            updated=row[6],
        )

    # -- allocations --------------------------------------------------------

    def record_allocation(
        self,
        resource: str,
        device_ids: Sequence[str],
        pod_namespace: str,
        pod_name: str,
        pod_uid: str,
        container: str | None = None,
    ) -> None:
        """Record devices as allocated, replacing any earlier record for them.

        Replacing is right because kubelet is the authority on allocations:
        a device it hands out again was freed, even if we missed the release.
        """
        now = self._clock()
        rows = [
            (resource, device_id, pod_namespace, pod_name, pod_uid, container, now)
            for device_id in device_ids
        ]
        with self.transaction():
            self._run_many(
                f"INSERT OR REPLACE INTO allocations ({_ALLOCATION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def release_allocation(self, resource: str, device_id: str) -> bool:
        """Forget an allocation; returns whether there was one (releasing twice is fine)."""
        with self.transaction():
            cur = self._run(
                "DELETE FROM allocations WHERE resource = ? AND device_id = ?",
                (resource, device_id),
            )
        return cur.rowcount > 0

    def allocations(self, resource: str | None = None) -> list[Allocation]:
        sql = f"SELECT {_ALLOCATION_COLUMNS} FROM allocations"
        params: tuple[object, ...] = ()
        if resource is not None:
            sql += " WHERE resource = ?"
            params = (resource,)
        rows = self._query(sql + " ORDER BY resource, device_id", params)
        return [Allocation(*row) for row in rows]

    def allocation_for_device(self, device_id: str) -> Allocation | None:
        # A device belongs to one pool, but if config moved it between pools
        # the newest record is the one kubelet acted on last.
        row = self._query_one_or_none(
            f"SELECT {_ALLOCATION_COLUMNS} FROM allocations WHERE device_id = ?"
            " ORDER BY allocated_at DESC, resource LIMIT 1",
            (device_id,),
        )
        return None if row is None else Allocation(*row)

    # -- attachments --------------------------------------------------------

    def put_attachment(
        self,
        key: AttachmentKey,
        *,
        netns: str,
        device: str | None,
        kind: AttachmentKind,
        pod_namespace: str,
        pod_name: str,
        pod_uid: str,
        original: Mapping[str, Any],
        config: Mapping[str, Any],
        state: AttachmentState = "adding",
        result: Mapping[str, Any] | None = None,
    ) -> Attachment:
        """Insert a new attachment.

        Never overwrites: the stored ``original`` state is what DEL restores,
        so a second ADD for the same key raises AlreadyExists, and a device
        already attached elsewhere raises Busy naming the holder.
        """
        now = self._clock()
        values = (
            key.container_id,
            key.ifname,
            key.network,
            netns,
            device,
            kind,
            state,
            pod_namespace,
            pod_name,
            pod_uid,
            _encode(original),
            _encode(config),
            None if result is None else _encode(result),
            now,
            now,
        )
        with self.transaction():
            try:
                self._run(
                    f"INSERT INTO attachments ({_ATTACHMENT_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
            except sqlite3.IntegrityError as e:
                raise self._attachment_conflict(key, device, e) from e
            stored = self.get_attachment(key.container_id, key.ifname, key.network)
        assert stored is not None  # inserted just above, under the same lock
        return stored

    def _attachment_conflict(
        self, key: AttachmentKey, device: str | None, err: sqlite3.IntegrityError
    ) -> Exception:
        if self.get_attachment(key.container_id, key.ifname, key.network) is not None:
            return AlreadyExists(f"attachment {_describe_key(key)} already exists")
        holder = self.attachment_for_device(device) if device is not None else None
        if holder is not None:
            return Busy(
                f"device {device} is already attached to pod"
                f" {holder.pod_namespace}/{holder.pod_name} ({_describe_key(holder.key)})"
            )
        return self._error("attachment rejected", err)

    def set_attachment_state(
        self,
        key: AttachmentKey,
        state: AttachmentState,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """Move an attachment to ``state``; a given ``result`` replaces the stored one."""
        sql = "UPDATE attachments SET state = ?, updated = ?"
        params: list[object] = [state, self._clock()]
        if result is not None:
            sql += ", result = ?"
            params.append(_encode(result))
        sql += " WHERE container_id = ? AND ifname = ? AND network = ?"
        params += [key.container_id, key.ifname, key.network]
        with self.transaction():
            if self._run(sql, params).rowcount == 0:
                raise NotFound(f"attachment {_describe_key(key)} not found")

    def get_attachment(self, container_id: str, ifname: str, network: str) -> Attachment | None:
        row = self._query_one_or_none(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments"
            " WHERE container_id = ? AND ifname = ? AND network = ?",
            (container_id, ifname, network),
        )
        return None if row is None else self._attachment(row)

    def attachments_for_container(self, container_id: str) -> list[Attachment]:
        rows = self._query(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE container_id = ?"
            " ORDER BY ifname, network",
            (container_id,),
        )
        return [self._attachment(row) for row in rows]

    def attachment_for_device(self, device: str) -> Attachment | None:
        row = self._query_one_or_none(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE device = ?", (device,)
        )
        return None if row is None else self._attachment(row)

    def list_attachments(self) -> list[Attachment]:
        rows = self._query(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments ORDER BY container_id, ifname, network"
        )
        return [self._attachment(row) for row in rows]

    def delete_attachment(self, key: AttachmentKey) -> bool:
        """Delete an attachment; returns whether it existed (CNI DEL is idempotent)."""
        with self.transaction():
            cur = self._run(
                "DELETE FROM attachments WHERE container_id = ? AND ifname = ? AND network = ?",
                (key.container_id, key.ifname, key.network),
            )
        return cur.rowcount > 0

    def _attachment(self, row: Sequence[Any]) -> Attachment:
        return Attachment(
            container_id=row[0],
            ifname=row[1],
            network=row[2],
            netns=row[3],
            device=row[4],
            kind=row[5],
            state=row[6],
            pod_namespace=row[7],
            pod_name=row[8],
            pod_uid=row[9],
            original=self._decode(row[10], "attachments.original"),
            config=self._decode(row[11], "attachments.config"),
            result=None if row[12] is None else self._decode(row[12], "attachments.result"),
            created=row[13],
            updated=row[14],
        )

    # -- VF homes and holds ---------------------------------------------------

    def vf_home(self, device: str) -> VfHome | None:
        row = self._query_one_or_none(
            "SELECT device, name, ifindex, updated FROM vf_homes WHERE device = ?", (device,)
        )
        return None if row is None else VfHome(*row)

    def set_vf_home(self, device: str, name: str, ifindex: int) -> None:
        with self.transaction():
            self._run(
                "INSERT OR REPLACE INTO vf_homes (device, name, ifindex, updated)"
                " VALUES (?, ?, ?, ?)",
                (device, name, ifindex, self._clock()),
            )

    def vf_hold(self, device: str) -> VfHold | None:
        row = self._query_one_or_none(
            "SELECT device, note, held_at FROM vf_holds WHERE device = ?", (device,)
        )
        return None if row is None else VfHold(*row)

    def vf_holds(self) -> list[VfHold]:
        rows = self._query("SELECT device, note, held_at FROM vf_holds ORDER BY device")
        return [VfHold(*row) for row in rows]

    def hold_vf(self, device: str, note: str) -> None:
        with self.transaction():
            self._run(
                "INSERT OR REPLACE INTO vf_holds (device, note, held_at) VALUES (?, ?, ?)",
                (device, note, self._clock()),
            )

    def release_vf_hold(self, device: str) -> bool:
        with self.transaction():
            cur = self._run("DELETE FROM vf_holds WHERE device = ?", (device,))
        return cur.rowcount > 0

    # -- meta ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._query_one_or_none("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._run("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- DRA claims -----------------------------------------------------------

    def put_dra_claim(
        self,
        uid: str,
        namespace: str,
        name: str,
        devices: Sequence[Mapping[str, Any]],
        cdi_ids: Sequence[str],
        state: DraClaimState,
    ) -> None:
        """Insert or replace the checkpoint of claim ``uid``; the first
        write's time is kept as when it was prepared."""
        now = self._clock()
        with self.transaction():
            row = self._query_one_or_none("SELECT prepared FROM dra_claims WHERE uid = ?", (uid,))
            self._run(
                "INSERT OR REPLACE INTO dra_claims (uid, namespace, name, devices, cdi_ids,"
                " state, prepared, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    namespace,
                    name,
                    json.dumps([dict(d) for d in devices], sort_keys=True),
                    json.dumps(list(cdi_ids)),
                    state,
                    now if row is None else row[0],
                    now,
                ),
            )

    def set_dra_claim_state(self, uid: str, state: DraClaimState) -> None:
        with self.transaction():
            cur = self._run(
                "UPDATE dra_claims SET state = ?, updated = ? WHERE uid = ?",
                (state, self._clock(), uid),
            )
            if cur.rowcount == 0:
                raise NotFound(f"DRA claim {uid} not found")

    def dra_claim(self, uid: str) -> DraClaimRecord | None:
        row = self._query_one_or_none(
            f"SELECT {_DRA_COLUMNS} FROM dra_claims WHERE uid = ?", (uid,)
        )
        return None if row is None else self._dra_claim(row)

    def dra_claims(self) -> list[DraClaimRecord]:
        rows = self._query(f"SELECT {_DRA_COLUMNS} FROM dra_claims ORDER BY namespace, name, uid")
        return [self._dra_claim(row) for row in rows]

    def delete_dra_claim(self, uid: str) -> bool:
        """Forget a claim; returns whether it was recorded (unprepare is idempotent)."""
        with self.transaction():
            cur = self._run("DELETE FROM dra_claims WHERE uid = ?", (uid,))
        return cur.rowcount > 0

    def _dra_claim(self, row: Sequence[Any]) -> DraClaimRecord:
        devices = self._decode_list(row[3], "dra_claims.devices")
        if not all(isinstance(d, dict) for d in devices):
            raise self._error("dra_claims.devices holds a non-object entry", None)
        cdi_ids = self._decode_list(row[4], "dra_claims.cdi_ids")
        return DraClaimRecord(
            uid=row[0],
            namespace=row[1],
            name=row[2],
            devices=devices,
            cdi_ids=[str(c) for c in cdi_ids],
            state=row[5],
            prepared=row[6],
            updated=row[7],
        )

    def _decode_list(self, text: str, column: str) -> list[Any]:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise self._error(f"{column} holds invalid JSON", e) from e
        if not isinstance(value, list):
            raise self._error(f"{column} holds {type(value).__name__}, not a list", None)
        return value

    # -- plumbing -----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state database {self._path} is closed")
        return self._conn

    def _run(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """Execute one statement. IntegrityError passes through for callers to
        name the conflict; other sqlite errors become StoreError."""
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as e:
                raise self._error("query failed", e) from e

    def _run_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._lock:
            try:
                self._connection().executemany(sql, rows)
            except sqlite3.Error as e:
                raise self._error("query failed", e) from e

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._run(sql, params).fetchall()

    def _query_one_or_none(self, sql: str, params: Sequence[object] = ()) -> Any:
        with self._lock:
            return self._run(sql, params).fetchone()

    def _query_one(self, sql: str, params: Sequence[object] = ()) -> Any:
        row = self._query_one_or_none(sql, params)
        if row is None:
            raise self._error(f"no row from {sql!r}", None)
        return row

    def _decode(self, text: str, column: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise self._error(f"{column} holds invalid JSON", e) from e
        if not isinstance(value, dict):
            raise self._error(f"{column} holds {type(value).__name__}, not an object", None)
        return value

    def _error(self, what: str, err: BaseException | None) -> StoreError:
        return StoreError(f"state database {self._path}: {what}", str(err) if err else "")


def _encode(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def _describe_key(key: AttachmentKey) -> str:
    return f"container {key.container_id} ifname {key.ifname} network {key.network}"


def _make_state_dir(state_dir: Path) -> None:
    try:
        # 0700: the database names every pod's devices and their prior state.
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create state dir {state_dir}: {e.strerror or e}") from e
    if not state_dir.is_dir():
        raise StoreError(f"state dir {state_dir} is not a directory")


def _leftovers(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}{s}") for s in _LEFTOVER_SUFFIXES) if p.exists()]


def _refuse_lost(state_dir: Path, path: Path) -> None:
    """A missing database is new only if nothing shows one existed."""
    signs = _leftovers(path)
    marker = state_dir / MARKER_NAME
    if marker.exists():
        signs.insert(0, marker)
    if signs:
        raise StoreError(
            f"state database {path} is missing but {', '.join(p.name for p in signs)} show it"
            " existed: the state it held is lost, and starting from nothing would forget every"
            " VF attached to a pod; restore a backup, or, on a node with no pods using VFs,"
            " remove those files"
        )


def _create(state_dir: Path, path: Path) -> None:
    """Build the first schema under a temporary name and rename it into
    place, so a crash mid-creation never leaves a half-made database that
    the next start would have to judge."""
    tmp = state_dir / _NEW_NAME
    for stale in (tmp, *(Path(f"{tmp}{s}") for s in _LEFTOVER_SUFFIXES)):
        stale.unlink(missing_ok=True)
    conn = _connect(tmp)
    try:
        _configure(conn, tmp)
        _migrate(conn, tmp)
        # Fold the WAL into the file: only the main file is renamed.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as e:
        raise StoreError(f"cannot create state database {path}: {e}") from e
    finally:
        conn.close()
    for stale in (Path(f"{tmp}{s}") for s in _LEFTOVER_SUFFIXES):
        stale.unlink(missing_ok=True)
    _fsync(tmp)
    os.rename(tmp, path)
    _fsync(state_dir)
    _write_marker(state_dir)


def _write_marker(state_dir: Path) -> None:
    marker = state_dir / MARKER_NAME
    if marker.exists():
        return
    tmp = state_dir / f".{MARKER_NAME}.tmp"
    try:
        tmp.write_text(f"schema {SCHEMA_VERSION} created {time.time():.0f}\n")
        _fsync(tmp)
        os.rename(tmp, marker)
        _fsync(state_dir)
    except OSError as e:
        raise StoreError(f"cannot write {marker}: {e.strerror or e}") from e


def _fsync(target: Path) -> None:
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    # sqlite silently falls back to read-only on a write-protected file; we
    # would only find out at the first write, on some pod's request path.
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise StoreError(f"state database {path}: {target} is not writable")
    try:
        return sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as e:
        raise StoreError(f"cannot open state database {path}: {e}") from e


def _check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file that is not a sound sqlite database, before writing anything."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as e:
        raise StoreError(
            f"state database {path} is not a usable sqlite database ({e});"
            " move it aside or restore a backup"
        ) from e
    if problems != ["ok"]:
        raise StoreError(
            f"state database {path} is corrupt; move it aside or restore a backup",
            "; ".join(str(p) for p in problems[:5]),
        )


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        # Checked before switching to WAL, which rewrites the file header: a
        # database from a newer agent must be left exactly as we found it.
        _refuse_newer(_user_version(conn), path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        # NORMAL: a commit is in the WAL before COMMIT returns, so it
        # survives the agent being killed at any point, which is what the
        # record-before-change rule must survive. Only an OS crash or power
        # loss can drop the last commits, and then the kernel state they
        # describe is gone too: pod netns, VF placement, driver binding and
        # numvfs do not outlive a reboot. FULL added an fsync to every
        # commit: ~25% of the agent's time on the CNI path, and the p99 of a
        # DRA prepare (docs/design.md, "State and recovery").
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    except sqlite3.Error as e:
        raise StoreError(f"cannot configure state database {path}: {e}") from e
    if str(mode).lower() != "wal":
        raise StoreError(f"state database {path}: cannot enable WAL mode (got {mode!r})")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this agent supports"
            f" ({SCHEMA_VERSION}); upgrade the agent or restore a backup: {path}"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply each missing migration in its own transaction."""
    for target in range(_user_version(conn) + 1, SCHEMA_VERSION + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Re-read under the write lock: another process may have migrated
            # (or a newer agent upgraded) since we looked.
            current = _user_version(conn)
            _refuse_newer(current, path)
            if current >= target:
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(
                    f"state database {path}: migration to schema version {target} failed: {e}"
                ) from e
            raise
