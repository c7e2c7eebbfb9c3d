"""Schema migrations: a journal written by schema 1 (committed fixture, killed mid-transfer)
opens, migrates in one transaction and resumes to identical bytes; a schema-2 journal
(with or without the ``created_dirs`` table that code before step 3 created on first use)
migrates to 3 and resumes or cancels; a migration killed before its commit leaves schema
1; a newer journal is refused naming both versions."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import axlpy
from axlpy._journal import JournalDB
from axlpy._migrations import MIGRATIONS, SCHEMA_VERSION
from tests.conftest import temp_files, write_tree

_SPEC = importlib.util.spec_from_file_location(
    "schema1_fixture", Path(__file__).parents[1] / "fixtures" / "schema1" / "fixture.py")
assert _SPEC is not None and _SPEC.loader is not None
fx = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fx)


def _raw(path: str, sql: str) -> list[tuple[object, ...]]:
    c = sqlite3.connect(path)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def _columns(path: str) -> set[str]:
    return {str(r[1]) for r in _raw(path, "PRAGMA table_info(transfers)")}


def _tables(path: str) -> set[str]:
    return {str(r[0]) for r in _raw(path, "SELECT name FROM sqlite_master WHERE type='table'")}


#: every step a schema-1 journal goes through
ALL_STEPS = [m.version for m in MIGRATIONS]


def test_steps_are_ordered_and_end_at_schema_version():
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions)) and versions[0] == 2
    assert versions[-1] == SCHEMA_VERSION


def test_schema1_fixture_migrates_and_resumes_to_identical_bytes(tmp_path):
    with fx.locked():
        jpath = fx.place(str(tmp_path / "journal"))
        assert _raw(jpath, "PRAGMA user_version") == [(1,)]
        assert "owner_heartbeat_ns" not in _columns(jpath)
        db = JournalDB(jpath, create=False)
        assert db.migrated == ALL_STEPS
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert {"src_ctime_ns", "src_ino", "src_dev"} <= {
            str(r[1]) for r in _raw(jpath, "PRAGMA table_info(files)")}
        # rows dispatched before schema 4 carry no identity (checked by size, mtime and
        # the extent re-read on resume)
        assert all(r.ctime_ns is None for r in db.files(db.transfer(fx.NAME).id))
        row = db.transfer(fx.NAME)
        assert row is not None and row.state.value == "DISPATCHED"
        assert "created_dirs" in _tables(jpath) and db.created_dirs(row.id) == []
        # the migration gave the killed owner a lease from its last commit
        assert row.owner is not None and row.owner.heartbeat_ns == row.updated_ns
        db.close()
        dst = Path(fx.ROOT, "dst")
        partial = sorted(p.name for p in dst.iterdir() if p.name.startswith("."))
        assert partial  # the killed writer's temps are there for resume to verify
        with axlpy.Journal(jpath, create=False) as j:
            t = j.open(fx.NAME)
            t.resume()  # no force: its pid is gone here, or its lease expired elsewhere
            t.wait()
            assert t.state is axlpy.TransferState.COMPLETED
            events = [e["event"] for e in t.events()]
        assert "takeover" in events
        for rel, size in fx.SOURCES.items():
            assert (dst / rel).read_bytes() == fx.content(rel, size), rel
        assert not list(dst.rglob(".*axlpy-*"))
        # the sources were never touched
        for rel, size in fx.SOURCES.items():
            src = Path(fx.ROOT, "src", rel)
            assert src.read_bytes() == fx.content(rel, size)
            assert src.stat().st_mtime_ns == fx.MTIME_NS


# What the code before step 3 ran when a run created its first directory, in a schema-1
# or schema-2 journal: the table existed without a schema version of its own.
_FIRST_USE_DDL = (
    "CREATE TABLE IF NOT EXISTS created_dirs (transfer_id INTEGER NOT NULL REFERENCES"
    " transfers(id), path BLOB NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
    " PRIMARY KEY (transfer_id, path))")
_V2_FILES = {"a.bin": os.urandom(300_000), "sub/c.bin": os.urandom(700_000)}
_V2_WRITER = """
import sys
import axlpy
with axlpy.Journal(sys.argv[1]) as j:
    t = j.create("v2", "sync", chunk_size=65536, extent_size=131072)
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
raise SystemExit("not killed")
"""


def _schema2_journal(tmp_path: Path, first_use_table: bool
                     ) -> tuple[str, Path, list[tuple[object, ...]]]:
    """A schema-2 journal holding a transfer killed after its 4th durable extent (a.bin
    staged, sub/c.bin part-way), whose run created the destination and ``sub``. Schema 2
    is schema 4 without step 3's table and step 4's columns: ``first_use_table`` keeps
    the table as the code
    before step 3 made it (with its rows), else it is gone (a schema-2 journal whose
    runs never created a directory, or written before the table existed)."""
    src = tmp_path / "src"
    write_tree(src, _V2_FILES)
    dst = tmp_path / "out" / "dst"
    dst.parent.mkdir()
    jdir = tmp_path / "journal"
    jdir.mkdir(mode=0o700)
    jpath = str(jdir / "journal.db")
    env = dict(os.environ, AXLPY_CRASH_AT="stage.after_extent_commit", AXLPY_CRASH_HIT="4")
    p = subprocess.run([sys.executable, "-c", _V2_WRITER, jpath, str(src), str(dst)],
                       env=env, check=False, capture_output=True, text=True,
                       cwd=Path(__file__).parents[2])
    assert p.returncode == -9, p.stderr
    c = sqlite3.connect(jpath, isolation_level=None)
    try:
        rows = c.execute("SELECT * FROM created_dirs ORDER BY path").fetchall()
        c.execute("BEGIN IMMEDIATE")
        c.execute("DROP TABLE created_dirs")
        for col in ("src_ctime_ns", "src_ino", "src_dev"):  # step 4's columns
            c.execute(f"ALTER TABLE files DROP COLUMN {col}")
        if first_use_table:
            c.execute(_FIRST_USE_DDL)
            c.executemany("INSERT INTO created_dirs VALUES (?, ?, ?, ?)", rows)
        c.execute("PRAGMA user_version=2")
        c.execute("COMMIT")
    finally:
        c.close()
    # the run created both directories, and journaled them with their inodes
    assert [(bytes(r[1]), r[2], r[3]) for r in rows] == [
        (os.fsencode(d), os.stat(d).st_dev, os.stat(d).st_ino) for d in (dst, dst / "sub")]
    return jpath, dst, rows


@pytest.mark.parametrize("first_use_table", [True, False], ids=["with-table", "no-table"])
@pytest.mark.parametrize("action", ["resume", "cancel"])
def test_schema2_journal_migrates_to_3_and_works(tmp_path, first_use_table, action):
    jpath, dst, rows = _schema2_journal(tmp_path, first_use_table)
    assert _raw(jpath, "PRAGMA user_version") == [(2,)]
    assert ("created_dirs" in _tables(jpath)) == first_use_table
    db = JournalDB(jpath, create=False)
    assert db.migrated == [3, 4] == [m.version for m in MIGRATIONS if m.version > 2]
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    row = db.transfer("v2")
    assert row is not None and row.state.value == "DISPATCHED"
    # a first-use table and its rows survive the step; otherwise it starts empty
    assert db.created_dirs(row.id) == (
        [(bytes(r[1]), r[2], r[3]) for r in rows] if first_use_table else [])
    db.close()
    assert temp_files(dst)  # the killed run's temps, for resume to verify or cancel
    with axlpy.Journal(jpath, create=False) as j:
        t = j.open("v2")
        if action == "resume":
            t.resume()
            t.wait()
            assert t.state is axlpy.TransferState.COMPLETED
            for rel, data in _V2_FILES.items():
                assert (dst / rel).read_bytes() == data, rel
        else:
            report = t.cancel()
            assert t.state is axlpy.TransferState.CANCELLED
            made = [str(dst / "sub"), str(dst)]
            if first_use_table:  # the directories its run recorded are removed
                assert sorted(report.removed_dirs) == sorted(made)
                assert not dst.exists()
            else:  # unrecorded: they cannot be told from directories that were there
                assert report.removed_dirs == [] and report.kept_dirs == {}
                assert [p.name for p in dst.rglob("*")] == ["sub"]
    assert temp_files(tmp_path / "out") == []
    for rel, data in _V2_FILES.items():
        assert (tmp_path / "src" / rel).read_bytes() == data


@pytest.mark.parametrize(("point", "version"), [("migrate.before_commit", 1),
                                           ("migrate.after_commit", SCHEMA_VERSION)])
def test_migration_killed_leaves_old_or_new_schema_never_half(tmp_path, point, version):
    with fx.locked():
        jpath = fx.place(str(tmp_path / "journal"))
        env = dict(os.environ, AXLPY_CRASH_AT=point)
        p = subprocess.run([sys.executable, "-c",
                            "import sys; from axlpy._journal import JournalDB;"
                            " JournalDB(sys.argv[1], create=False)", jpath],
                           env=env, check=False, capture_output=True)
        assert p.returncode == -9, p.stderr
        assert _raw(jpath, "PRAGMA user_version") == [(version,)]
        assert ("owner_heartbeat_ns" in _columns(jpath)) == (version == SCHEMA_VERSION)
        assert ("created_dirs" in _tables(jpath)) == (version == SCHEMA_VERSION)
        assert _raw(jpath, "PRAGMA integrity_check") == [("ok",)]
        db = JournalDB(jpath, create=False)
        assert db.migrated == ([] if version == SCHEMA_VERSION else ALL_STEPS)
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.transfer(fx.NAME) is not None
        db.close()


def test_fresh_journal_has_the_migrated_schema(tmp_path):
    with fx.locked():
        old = fx.place(str(tmp_path / "old"))
        JournalDB(old, create=False).close()
    new = str(tmp_path / "new" / "j.db")
    os.makedirs(os.path.dirname(new), mode=0o700)
    JournalDB(new).close()
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert _raw(new, schema) == _raw(old, schema)
    assert _raw(new, "PRAGMA user_version") == _raw(old, "PRAGMA user_version")
    assert _raw(new, "PRAGMA application_id") == _raw(old, "PRAGMA application_id")
    assert _raw(new, "PRAGMA journal_mode") == [("wal",)]


def test_newer_journal_is_refused_naming_both_versions(journal_path):
    JournalDB(journal_path).close()
    c = sqlite3.connect(journal_path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 7}")
    c.close()
    before = Path(journal_path).read_bytes()
    with pytest.raises(axlpy.JournalError) as ei:
        JournalDB(journal_path, create=False)
    msg = str(ei.value)
    assert f"schema version {SCHEMA_VERSION + 7}" in msg
    assert f"({SCHEMA_VERSION})" in msg
    assert Path(journal_path).read_bytes() == before
