"""The journal on plain sqlite3 (issue 14.5): sqlite-utils creates a new journal's tables
(the one thing it is imported for); a new journal is the file sqlite-utils always built,
and a nested ``transaction()`` is a savepoint, as sqlite-utils' ``atomic()`` made it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from axlpy._config import Options
from axlpy._journal import APPLICATION_ID, JournalDB
from axlpy._migrations import SCHEMA_VERSION, apply_steps

sqlite_utils = pytest.importorskip("sqlite_utils")


def _old_schema_1(conn: sqlite3.Connection) -> None:
    """What ``JournalDB._create_schema`` did through sqlite-utils before (verbatim)."""
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.table("transfers").create(
        {
            "id": int, "name": str, "type": str, "state": str, "token": str,
            "options": str, "created_ns": int, "updated_ns": int,
            "owner_pid": int, "owner_host": str, "owner_start": str, "error": str,
        },
        pk="id", not_null={"name", "type", "state", "token", "options"},
    )
    db.table("transfers").create_index(["name"], unique=True)
    db.table("files").create(
        {
            "id": int, "transfer_id": int, "kind": str, "src": bytes, "dst": bytes,
            "root": bytes, "rel": bytes, "tmp": bytes, "size": int, "mtime_ns": int,
            "mode": int, "uid": int, "gid": int, "link": bytes, "crc32c": int,
            "state": str, "bytes_done": int, "error": str,
        },
        pk="id", foreign_keys=[("transfer_id", "transfers", "id")],
        not_null={"transfer_id", "kind", "src", "dst", "root", "rel", "state"},
        defaults={"bytes_done": 0},
    )
    db.table("files").create_index(["transfer_id", "dst"], unique=True)
    db.table("files").create_index(["transfer_id", "state"])
    db.table("extents").create(
        {"file_id": int, "idx": int, "length": int, "crc32c": int},
        pk=("file_id", "idx"), foreign_keys=[("file_id", "files", "id")],
    )
    db.table("events").create(
        {
            "id": int, "transfer_id": int, "file_id": int, "ts_ns": int,
            "event": str, "from_state": str, "to_state": str, "detail": str,
            "pid": int,
        },
        pk="id", not_null={"transfer_id", "ts_ns", "event"},
    )
    db.table("events").create_index(["transfer_id"])


def _master(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                        "ORDER BY rowid").fetchall()


def test_new_journal_is_the_journal_the_old_code_built(tmp_path: Path) -> None:
    JournalDB(tmp_path / "j.db").close()
    new = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    old = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    old.execute("BEGIN IMMEDIATE")
    _old_schema_1(old)
    old.execute(f"PRAGMA application_id={APPLICATION_ID}")
    apply_steps(old, 1)
    old.execute("COMMIT")
    assert _master(new) == _master(old)
    for pragma in ("application_id", "user_version", "journal_mode"):
        got = new.execute(f"PRAGMA {pragma}").fetchone()[0]
        if pragma != "journal_mode":
            assert got == old.execute(f"PRAGMA {pragma}").fetchone()[0], pragma
        else:
            assert got == "wal"
    assert new.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_nested_transaction_is_a_savepoint(tmp_path: Path) -> None:
    """An error inside a nested transaction undoes only its own writes; the outer one
    goes on and commits durably; an error in the outer one undoes everything."""
    jdb = JournalDB(tmp_path / "j.db")
    try:
        tid = jdb.create_transfer("t", "sync", "0123abcd", Options())
        with jdb.transaction() as db:
            db.execute("INSERT INTO created_dirs (transfer_id, path, dev, ino) "
                       "VALUES (?, x'61', 1, 1)", (tid,))
            with pytest.raises(sqlite3.IntegrityError), jdb.transaction() as inner:
                inner.execute("INSERT INTO created_dirs (transfer_id, path, dev, ino) "
                              "VALUES (?, x'62', 1, 2)", (tid,))
                inner.execute("INSERT INTO transfers (name) VALUES (NULL)")  # NOT NULL
            assert db.in_transaction
        with pytest.raises(RuntimeError), jdb.transaction() as db:
            db.execute("INSERT INTO created_dirs (transfer_id, path, dev, ino) "
                       "VALUES (?, x'63', 1, 3)", (tid,))
            raise RuntimeError("the outer one fails")
        assert not jdb.conn.in_transaction
    finally:
        jdb.close()
    other = sqlite3.connect(tmp_path / "j.db")
    assert other.execute("SELECT path FROM created_dirs ORDER BY path").fetchall() == [
        (b"a",)]
