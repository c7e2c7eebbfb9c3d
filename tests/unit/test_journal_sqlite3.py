"""The journal on plain sqlite3 (issue 14.5): a nested ``transaction()`` is a savepoint, as
sqlite-utils' ``atomic()`` made it. (That a new journal is the file older axlpy built is
``tests/unit/test_migrations.py::test_fresh_journal_has_the_migrated_schema``, against a
schema-1 journal written by that code.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from axlpy._config import Options
from axlpy._journal import JournalDB


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
