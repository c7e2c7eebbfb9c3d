"""Schema migrations: a journal written by schema 1 (committed fixture, killed mid-transfer)
opens, migrates in one transaction and resumes to identical bytes; a migration killed
before its commit leaves schema 1; a newer journal is refused naming both versions."""

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
        assert db.migrated == [2]
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        row = db.transfer(fx.NAME)
        assert row is not None and row.state.value == "DISPATCHED"
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
        assert _raw(jpath, "PRAGMA integrity_check") == [("ok",)]
        db = JournalDB(jpath, create=False)
        assert db.migrated == ([] if version == SCHEMA_VERSION else [2])
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
