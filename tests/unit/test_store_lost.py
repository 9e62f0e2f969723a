"""A state database that was lost must not be mistaken for a new node's."""

from __future__ import annotations

from pathlib import Path

import pytest

from nicwarden.agent.errors import StoreError
from nicwarden.agent.store import DB_NAME, MARKER_NAME, SCHEMA_VERSION, Store


def listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_new_state_dir_gets_database_and_marker(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as s:
        assert s.schema_version == SCHEMA_VERSION
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert DB_NAME in names and MARKER_NAME in names
    assert not any(n.startswith(".nicwarden.db.new") for n in names)


def test_zero_byte_database_is_refused_untouched(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.set_meta("k", "v")
    (tmp_path / DB_NAME).write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    before = listing(tmp_path)
    with pytest.raises(StoreError, match="is empty \\(0 bytes\\)"):
        Store.open(tmp_path)
    assert listing(tmp_path) == before


def test_zero_byte_database_without_marker_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(StoreError, match="is empty"):
        Store.open(tmp_path)
    assert listing(tmp_path) == {DB_NAME: b""}


def test_missing_database_with_marker_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    (tmp_path / DB_NAME).unlink()
    before = listing(tmp_path)
    with pytest.raises(StoreError, match=f"missing but {MARKER_NAME}"):
        Store.open(tmp_path)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_missing_database_with_sqlite_leftovers_is_refused(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"{DB_NAME}{suffix}").write_bytes(b"x" * 32)
    before = listing(tmp_path)
    with pytest.raises(StoreError, match=f"{DB_NAME}{suffix} show it existed"):
        Store.open(tmp_path)
    assert listing(tmp_path) == before


def test_database_made_before_the_marker_gets_one(tmp_path: Path) -> None:
    Store.open(tmp_path / "upgraded").close()
    (tmp_path / "upgraded" / MARKER_NAME).unlink()
    Store.open(tmp_path / "upgraded").close()
    assert (tmp_path / "upgraded" / MARKER_NAME).exists()


def test_vf_homes_and_holds(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        assert s.vf_home("0000:18:01.0") is None
        s.set_vf_home("0000:18:01.0", "ens1v0", 7)
        home = s.vf_home("0000:18:01.0")
        assert home is not None and (home.name, home.ifindex) == ("ens1v0", 7)
        s.hold_vf("0000:18:01.1", "adopted")
        assert [h.device for h in s.vf_holds()] == ["0000:18:01.1"]
        assert s.release_vf_hold("0000:18:01.1") and not s.release_vf_hold("0000:18:01.1")
