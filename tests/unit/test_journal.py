"""The journal file: pragmas, schema checks, refusal to touch foreign files, ownership."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

import axlpy
from axlpy._journal import APPLICATION_ID, SCHEMA_VERSION, JournalDB, Owner


def test_pragmas_checked(journal_path):
    db = JournalDB(journal_path)
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    assert os.stat(journal_path).st_mode & 0o777 == 0o600


def test_reopen_keeps_transfers(journal_path):
    with axlpy.Journal(journal_path) as j:
        j.create("a", "sync")
        j.create("b", "sync")
    with axlpy.Journal(journal_path) as j:
        assert j.names() == ["a", "b"]


def test_duplicate_name(journal):
    journal.create("a", "sync")
    with pytest.raises(axlpy.JournalError, match="already exists"):
        journal.create("a", "sync")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a database" * 10, "not an SQLite journal"),
        (b"SQLite format 3\x00" + b"\x00" * 20, "bad header"),
    ],
)
def test_non_sqlite_file_is_refused_and_untouched(journal_path, content, message):
    journal_path.write_bytes(content)
    with pytest.raises(axlpy.JournalError, match=message) as info:
        axlpy.Journal(journal_path)
    assert str(journal_path) in str(info.value)
    assert journal_path.read_bytes() == content


def test_foreign_sqlite_schema_refused(journal_path):
    c = sqlite3.connect(journal_path)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    before = journal_path.read_bytes()
    with pytest.raises(axlpy.JournalError, match="not an axlpy journal"):
        axlpy.Journal(journal_path)
    assert journal_path.read_bytes() == before


def test_newer_schema_refused(journal_path):
    axlpy.Journal(journal_path).close()
    c = sqlite3.connect(journal_path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.commit()
    c.close()
    with pytest.raises(axlpy.JournalError, match="newer"):
        axlpy.Journal(journal_path)


def test_truncated_journal_refused(journal_path, tmp_path):
    with axlpy.Journal(journal_path) as j:
        for i in range(50):
            j.create(f"t{i}", "sync")
    c = sqlite3.connect(journal_path)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    data = journal_path.read_bytes()
    journal_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(axlpy.JournalError) as info:
        j = axlpy.Journal(journal_path)
        j.names()
    assert str(journal_path) in str(info.value)


def test_missing_journal_without_create(journal_path):
    with pytest.raises(axlpy.JournalError, match="does not exist"):
        axlpy.Journal(journal_path, create=False)
    assert not journal_path.exists()


def test_shared_directory_refused(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(axlpy.SecurityError, match="writable by other users"):
        axlpy.Journal(d / "j.db")
    axlpy.Journal(d / "j.db", allow_shared=True).close()


def test_events_are_append_only_log(journal, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 10)
    t = journal.create("e", "sync")
    t.add(src, tmp_path / "out")
    t.dispatch()
    events = [e["event"] for e in t.events()]
    assert events[0] == "create" and events[-1] == "complete"
    assert {"add", "dispatch", "staged", "published", "renamed"} <= set(events)
    ts = [e["ts_ns"] for e in t.events()]
    assert ts == sorted(ts)


def test_owner_alive_checks_pid_and_start_time():
    me = Owner.me()
    assert me.alive() is True
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = Owner(int(proc.stdout), me.host, "x")
    assert dead.alive() is False
    recycled = Owner(me.pid, me.host, me.start + "-other")
    assert recycled.alive() is False
    elsewhere = Owner(1, "some-other-host", "")
    assert elsewhere.alive() is None
