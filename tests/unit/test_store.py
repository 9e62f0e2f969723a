from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nicwarden.agent.errors import AlreadyExists, Busy, InvalidArgument, NotFound, StoreError
from nicwarden.agent.store import DB_NAME, SCHEMA_VERSION, AttachmentKey, Store

TABLES = {"meta", "intents", "allocations", "attachments", "vf_homes", "vf_holds", "dra_claims"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(tmp_path / "state", clock=clock)
    yield s
    s.close()


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def tables(db: Path) -> set[str]:
    with raw(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def attach(
    store: Store, container: str, device: str | None, *, ifname: str = "net1", **kw: Any
) -> AttachmentKey:
    key = AttachmentKey(container, ifname, "default/sriov-net")
    store.put_attachment(
        key,
        netns=f"/var/run/netns/{container}",
        device=device,
        kind=kw.pop("kind", "sriov" if device else "chained"),
        pod_namespace=kw.pop("pod_namespace", "default"),
        pod_name=kw.pop("pod_name", f"pod-{container}"),
        pod_uid=f"uid-{container}",
        original={"mac": "00:00:00:00:00:00", "vlan": 0},
        config={"type": "nicwarden", "vlan": 100},
        **kw,
    )
    return key


# -- opening and migrations ---------------------------------------------------


def test_open_creates_private_state_dir_and_current_schema(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    with Store.open(state) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.path == state / DB_NAME
    assert state.stat().st_mode & 0o777 == 0o700
    assert tables(state / DB_NAME) >= TABLES
    with raw(state / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_connection_survives_a_crash_and_enforces_foreign_keys(store: Store) -> None:
    conn = store._connection()
    # WAL + NORMAL: durable against the agent being killed (see _configure).
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        intent = s.begin_intent("bind", "0000:18:02.0", {"driver": "vfio-pci"})
        s.set_meta("instance", "abc")
    with Store.open(tmp_path) as s:
        assert [i.id for i in s.pending_intents()] == [intent]
        assert s.get_meta("instance") == "abc"
        assert s.schema_version == SCHEMA_VERSION


# Schema version 1 as it shipped, written out by hand so that an edit to the
# first migration (which must never change once released) fails this test.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE intents (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'rolled_back')),
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX intents_pending ON intents (kind) WHERE state = 'pending';
CREATE TABLE allocations (
    resource TEXT NOT NULL, device_id TEXT NOT NULL, pod_namespace TEXT NOT NULL,
    pod_name TEXT NOT NULL, pod_uid TEXT NOT NULL, container TEXT, allocated_at REAL NOT NULL,
    PRIMARY KEY (resource, device_id));
INSERT INTO meta VALUES ('instance', 'old-agent');
INSERT INTO intents VALUES (7, 'numvfs', '0000:18:00.0', '{"numvfs": 8}', 'pending', 1.0, 2.0);
INSERT INTO intents VALUES (8, 'bind', '0000:18:02.0', '{}', 'done', 1.0, 2.0);
INSERT INTO allocations VALUES ('nicwarden.io/pool', '0000:18:02.0', 'ns', 'pod', 'uid', NULL, 3.0);
PRAGMA user_version = 1;
"""


def make_v1(state: Path, extra_sql: str = "") -> Path:
    state.mkdir()
    db = state / DB_NAME
    with raw(db) as conn:
        conn.executescript(V1_SCHEMA + extra_sql)
    return db


def test_migrates_v1_database_keeping_rows(tmp_path: Path) -> None:
    make_v1(tmp_path / "state")
    with Store.open(tmp_path / "state") as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.get_meta("instance") == "old-agent"
        [intent] = s.pending_intents()
        assert (intent.id, intent.kind, intent.payload) == (7, "numvfs", {"numvfs": 8})
        [alloc] = s.allocations()
        assert (alloc.device_id, alloc.pod_name, alloc.container) == ("0000:18:02.0", "pod", None)
        # Tables added after v1 work, including the one-device-one-attachment rule.
        attach(s, "c1", "0000:18:02.0")
        with pytest.raises(Busy):
            attach(s, "c2", "0000:18:02.0")
    found = tables(tmp_path / "state" / DB_NAME)
    assert found >= TABLES
    assert "policy_generations" not in found  # created by the second, dropped by the fifth


def test_failed_migration_is_rolled_back_and_reported(tmp_path: Path) -> None:
    # A stray table with the name the next migration creates makes it fail.
    db = make_v1(tmp_path / "state", "CREATE TABLE policy_generations (x);")
    with pytest.raises(StoreError, match="migration to schema version 2 failed"):
        Store.open(tmp_path / "state")
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "attachments" not in tables(db)


@pytest.mark.parametrize("wal", [True, False])
def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path, wal: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / DB_NAME
    with raw(db) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError) as info:
        Store.open(state)
    assert str(info.value) == (
        f"database schema version {SCHEMA_VERSION + 3} is newer than this agent supports"
        f" ({SCHEMA_VERSION}); upgrade the agent or restore a backup: {db}"
    )
    assert db.read_bytes() == before


def test_garbage_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    garbage = b"this is not a database\n" * 400
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match=f"{db} is not a usable sqlite database"):
        Store.open(tmp_path)
    assert db.read_bytes() == garbage


def test_corrupt_page_is_refused_and_left_untouched(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        for n in range(200):
            s.begin_intent("bind", f"0000:18:{n:02x}.0", {"n": n, "pad": "x" * 200})
    db = tmp_path / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 3 * page] = b"\xa5" * page  # scribble over a b-tree page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=str(db)):
        Store.open(tmp_path)
    assert db.read_bytes() == bytes(data)


def test_state_dir_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(StoreError) as info:
        Store.open(blocker / "state")
    assert str(info.value) == f"cannot create state dir {blocker / 'state'}: Not a directory"


def test_state_dir_is_a_regular_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    with pytest.raises(StoreError, match=f"{state}"):
        Store.open(state)


def test_database_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).mkdir()
    with pytest.raises(StoreError, match=f"cannot open state database {tmp_path / DB_NAME}"):
        Store.open(tmp_path)


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        s.get_meta("x")


# -- intents -------------------------------------------------------------------


def test_intent_lifecycle(store: Store, clock: FakeClock) -> None:
    first = store.begin_intent("numvfs", "0000:18:00.0", {"numvfs": 8})
    clock.now = 1001.0
    second = store.begin_intent("bind", "0000:18:02.0", {"driver": "vfio-pci"})
    third = store.begin_intent("bind", "0000:18:02.1", {})
    assert [i.id for i in store.pending_intents()] == [first, second, third]
    assert [i.id for i in store.pending_intents("bind")] == [second, third]

    clock.now = 1002.0
    store.update_intent_payload(second, {"driver": "vfio-pci", "previous": "iavf"})
    store.complete_intent(first)
    store.roll_back_intent(third)
    assert [i.id for i in store.pending_intents()] == [second]
    [pending] = store.pending_intents()
    assert pending.payload == {"driver": "vfio-pci", "previous": "iavf"}
    assert (pending.kind, pending.target, pending.state) == ("bind", "0000:18:02.0", "pending")
    assert (pending.created, pending.updated) == (1001.0, 1002.0)
    done = store.intent(first)
    assert done is not None and (done.state, done.updated) == ("done", 1002.0)
    assert store.intent(999) is None


def test_finishing_an_intent_twice(store: Store) -> None:
    intent = store.begin_intent("bind", "x", {})
    store.complete_intent(intent)
    store.complete_intent(intent)  # a reconcile may repeat it
    with pytest.raises(InvalidArgument, match="already done"):
        store.roll_back_intent(intent)


def test_unknown_intent(store: Store) -> None:
    for call in (store.complete_intent, store.roll_back_intent):
        with pytest.raises(NotFound, match="intent 42"):
            call(42)
    with pytest.raises(NotFound):
        store.update_intent_payload(42, {})


def test_prune_keeps_pending_and_recent(store: Store, clock: FakeClock) -> None:
    old_done = store.begin_intent("a", "t", {})
    old_pending = store.begin_intent("a", "t", {})
    store.complete_intent(old_done)
    clock.now = 5000.0
    recent_done = store.begin_intent("a", "t", {})
    store.complete_intent(recent_done)
    assert store.prune_intents(finished_before=2000.0) == 1
    assert store.intent(old_done) is None
    assert store.intent(old_pending) is not None
    assert store.intent(recent_done) is not None


# -- allocations ---------------------------------------------------------------


def test_allocations(store: Store, clock: FakeClock) -> None:
    store.record_allocation("nicwarden.io/a", ["0000:18:02.0", "0000:18:02.1"], "ns", "p1", "u1")
    store.record_allocation("nicwarden.io/b", ["0000:19:02.0"], "ns", "p2", "u2", "ctr")
    assert [a.device_id for a in store.allocations()] == [
        "0000:18:02.0",
        "0000:18:02.1",
        "0000:19:02.0",
    ]
    [b] = store.allocations("nicwarden.io/b")
    assert (b.pod_name, b.pod_uid, b.container, b.allocated_at) == ("p2", "u2", "ctr", 1000.0)

    clock.now = 1001.0
    store.record_allocation("nicwarden.io/a", ["0000:18:02.1"], "ns", "p3", "u3")
    again = store.allocation_for_device("0000:18:02.1")
    assert again is not None and (again.pod_name, again.allocated_at) == ("p3", 1001.0)
    assert len(store.allocations("nicwarden.io/a")) == 2

    assert store.release_allocation("nicwarden.io/a", "0000:18:02.0") is True
    assert store.release_allocation("nicwarden.io/a", "0000:18:02.0") is False
    assert store.allocation_for_device("0000:18:02.0") is None
    assert store.allocations("nicwarden.io/none") == []


# -- attachments ---------------------------------------------------------------


def test_attachment_crud(store: Store, clock: FakeClock) -> None:
    key = attach(store, "c1", "0000:18:02.0")
    got = store.get_attachment("c1", "net1", "default/sriov-net")
    assert got is not None and got.key == key
    assert (got.state, got.kind, got.device, got.result) == (
        "adding",
        "sriov",
        "0000:18:02.0",
        None,
    )
    assert got.original == {"mac": "00:00:00:00:00:00", "vlan": 0}
    assert got.config == {"type": "nicwarden", "vlan": 100}

    clock.now = 1005.0
    store.set_attachment_state(key, "ready", result={"cniVersion": "1.0.0", "ips": []})
    store.set_attachment_state(key, "deleting")  # no result: keep the stored one
    got = store.get_attachment(*_fields(key))
    assert got is not None
    assert (got.state, got.result, got.created, got.updated) == (
        "deleting",
        {"cniVersion": "1.0.0", "ips": []},
        1000.0,
        1005.0,
    )
    assert store.attachment_for_device("0000:18:02.0") == got

    assert store.delete_attachment(key) is True
    assert store.delete_attachment(key) is False
    assert store.get_attachment(*_fields(key)) is None
    assert store.attachment_for_device("0000:18:02.0") is None


def _fields(key: AttachmentKey) -> tuple[str, str, str]:
    return key.container_id, key.ifname, key.network


def test_attachment_listing(store: Store) -> None:
    attach(store, "c2", "0000:18:02.1", ifname="net2")
    attach(store, "c2", "0000:18:02.0", ifname="net1")
    attach(store, "c1", None, kind="chained")
    assert [(a.container_id, a.ifname) for a in store.list_attachments()] == [
        ("c1", "net1"),
        ("c2", "net1"),
        ("c2", "net2"),
    ]
    assert [a.ifname for a in store.attachments_for_container("c2")] == ["net1", "net2"]
    assert store.attachments_for_container("nope") == []


def test_device_cannot_be_attached_twice(store: Store) -> None:
    attach(store, "c1", "0000:18:02.0", pod_namespace="team-a", pod_name="web-0")
    with pytest.raises(Busy) as info:
        attach(store, "c2", "0000:18:02.0")
    message = str(info.value)
    assert "0000:18:02.0" in message and "team-a/web-0" in message and "container c1" in message
    assert store.get_attachment("c2", "net1", "default/sriov-net") is None


def test_same_key_cannot_be_put_twice(store: Store) -> None:
    attach(store, "c1", "0000:18:02.0")
    with pytest.raises(AlreadyExists, match="container c1 ifname net1"):
        attach(store, "c1", "0000:18:02.1")
    got = store.get_attachment("c1", "net1", "default/sriov-net")
    assert got is not None and got.device == "0000:18:02.0"


def test_chained_attachments_share_no_device(store: Store) -> None:
    attach(store, "c1", None, kind="chained")
    attach(store, "c2", None, kind="chained")
    assert len(store.list_attachments()) == 2


def test_set_state_of_missing_attachment(store: Store) -> None:
    with pytest.raises(NotFound, match="container c9"):
        store.set_attachment_state(AttachmentKey("c9", "net1", "n"), "ready")


def test_device_is_free_again_after_delete(store: Store) -> None:
    store.delete_attachment(attach(store, "c1", "0000:18:02.0"))
    attach(store, "c2", "0000:18:02.0")


# -- meta ----------------------------------------------------------------------


def test_meta(store: Store) -> None:
    assert store.get_meta("instance") is None
    store.set_meta("instance", "one")
    store.set_meta("instance", "two")
    assert store.get_meta("instance") == "two"


# -- transactions and threads --------------------------------------------------


def test_transaction_rolls_back_every_write_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.begin_intent("bind", "x", {})
        attach(store, "c1", "0000:18:02.0")
        raise RuntimeError("kernel said no")
    assert store.pending_intents() == []
    assert store.list_attachments() == []


def test_caught_failure_inside_a_transaction_keeps_earlier_writes(store: Store) -> None:
    attach(store, "c1", "0000:18:02.0")
    with store.transaction():
        intent = store.begin_intent("attach", "0000:18:02.0", {})
        with pytest.raises(Busy):
            attach(store, "c2", "0000:18:02.0")
        with pytest.raises(ValueError), store.transaction():
            store.set_meta("inner", "x")
            raise ValueError
    assert [i.id for i in store.pending_intents()] == [intent]
    assert store.get_meta("inner") is None


def test_concurrent_writers(store: Store) -> None:
    threads, rounds = 8, 40
    errors: list[BaseException] = []
    ids: list[int] = []
    stop = threading.Event()

    def writer(t: int) -> None:
        try:
            for n in range(rounds):
                with store.transaction():
                    ids.append(store.begin_intent("attach", f"t{t}", {"n": n}))
                    attach(store, f"c{t}-{n}", f"{t:04x}:00:{n:02x}.0")
                store.record_allocation("nicwarden.io/p", [f"d{t}-{n}"], "ns", "p", "u")
        except BaseException as e:
            errors.append(e)

    def reader() -> None:
        try:
            while not stop.is_set():
                # A transaction is all-or-nothing to other threads too.
                with store.transaction():
                    assert len(store.list_attachments()) == len(store.pending_intents())
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()

    assert errors == []
    assert len(set(ids)) == threads * rounds
    assert len(store.list_attachments()) == threads * rounds
    assert len(store.allocations()) == threads * rounds


def test_racing_attachments_of_one_device_have_one_winner(store: Store) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def contend(t: int) -> None:
        barrier.wait()
        try:
            attach(store, f"c{t}", "0000:18:02.0")
            outcomes.append("won")
        except Busy:
            outcomes.append("busy")

    workers = [threading.Thread(target=contend, args=(t,)) for t in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(outcomes) == ["busy"] * 5 + ["won"]


# -- crash safety --------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nicwarden.agent.store import AttachmentKey, Store

    store = Store.open(Path(sys.argv[1]))
    run = sys.argv[2]
    for n in range(10**9):
        with store.transaction():
            intent = store.begin_intent("attach", run, {"n": n, "pad": "x" * 300})
            store.put_attachment(
                AttachmentKey(f"{run}-{n}", "net1", "default/net"),
                netns="/proc/1/ns/net", device=f"{run}:{n}", kind="sriov",
                pod_namespace="ns", pod_name="p", pod_uid="u",
                original={"n": n}, config={"pad": "y" * 300},
            )
        print(intent, f"{run}-{n}", flush=True)
    """
)


def run_and_kill(state: Path, run: str, after: int) -> list[tuple[int, str]]:
    """Run CHILD until it has reported ``after`` commits, SIGKILL it, and
    return every commit it reported (some arrive after the count is reached)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), run],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    reported: list[tuple[int, str]] = []
    try:
        for line in itertools.islice(child.stdout, after):
            intent, container = line.split()
            reported.append((int(intent), container))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err
    # A commit counts as reported once its whole line arrived: whatever
    # follows the last newline is a line the kill cut short.
    *complete, _cut = out.split("\n")
    for line in complete:
        intent, container = line.split()
        reported.append((int(intent), container))
    assert len(reported) >= after, err
    return reported


@pytest.mark.parametrize("run", ["r1", "r2", "r3"])
def test_commits_survive_sigkill(tmp_path: Path, run: str) -> None:
    state = tmp_path / "state"
    with Store.open(state) as s:  # a previous life of the same database
        s.begin_intent("numvfs", "0000:18:00.0", {"numvfs": 8})
    survivors: list[tuple[int, str]] = []
    for n, after in enumerate((25, 40, 60)):
        survivors += run_and_kill(state, f"{run}.{n}", after)
        with raw(state / DB_NAME) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
        with Store.open(state) as s:
            pending = {i.id: i.target for i in s.pending_intents("attach")}
            attached = {a.container_id for a in s.list_attachments()}
            for intent, container in survivors:
                assert intent in pending, f"committed intent {intent} lost"
                assert container in attached, f"committed attachment {container} lost"
            # The two writes share a transaction: a kill between them leaves neither.
            assert len(pending) == len(attached)
            assert len(s.pending_intents("numvfs")) == 1
