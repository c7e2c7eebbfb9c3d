"""Dispatch, the run and resume read the journal's file rows a batch at a time (issue
14.4): the rows alive at once are bounded by the batch and the files in flight, not by
the number of files in the transfer. Counted through a real journal, real files and a
real crash (SIGKILL at a crash point in a child process)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

import axlpy
from axlpy import _driver, _journal
from axlpy._journal import FileRow
from axlpy.engines import threaded
from tests.conftest import tree_bytes, write_tree

NFILES = 600
BATCH = 32
UNTAKEN = 64


def _live_rows() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is FileRow)


@pytest.fixture
def counting(monkeypatch):
    """Small batches; the most FileRows alive whenever a group is published, the run
    starts, or a batch of rows is read."""
    monkeypatch.setattr(_journal, "FILE_BATCH", BATCH, raising=False)
    # PTHREAD's bound on results waiting for the driver (two publish groups), scaled to
    # this tree as the group is: the bound below must stay well under NFILES
    monkeypatch.setattr(threaded, "_MAX_UNTAKEN", UNTAKEN)
    # Rows left alive by earlier tests in this process (garbage in reference cycles,
    # e.g. held by a traceback) are not this transfer's: counted once and taken off.
    gc.collect()
    before = _live_rows()
    peak = {"rows": 0, "samples": 0}

    def sample() -> None:
        peak["rows"] = max(peak["rows"], _live_rows() - before)
        peak["samples"] += 1

    publish, run = _driver.Driver._publish, _driver.Driver.run
    batches = getattr(_journal.JournalDB, "file_batches", None)

    def counted_publish(self, *a, **k):
        sample()
        return publish(self, *a, **k)

    def counted_run(self, *a, **k):
        sample()
        return run(self, *a, **k)

    def counted_batches(self, *a, **k):
        for b in batches(self, *a, **k):
            sample()
            yield b

    monkeypatch.setattr(_driver.Driver, "_publish", counted_publish)
    monkeypatch.setattr(_driver.Driver, "run", counted_run)
    if batches is not None:
        monkeypatch.setattr(_journal.JournalDB, "file_batches", counted_batches)
    return peak


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {f"d{i % 7}/f{i:04d}": bytes([i % 251]) * (i % 5 + 1)
                     for i in range(NFILES)})
    return src


def _bound() -> int:
    # a batch being read, a batch being staged, one publish group (256), the results
    # an engine may hold for the consumer (PTHREAD: 64) and the STAGED rows a resume
    # keeps: well below the NFILES rows (+7 directories) of the transfer
    return 2 * BATCH + 256 + 64 + 64


@pytest.mark.parametrize("ttype", ["sync", "pthread", "default"])
def test_dispatch_and_run_hold_a_batch_not_every_row(journal, tree, tmp_path, counting,
                                                     ttype):
    t = journal.create("s", ttype)
    t.add(tree, tmp_path / "dst")
    t.dispatch()
    t.wait()
    assert t.state is axlpy.TransferState.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(tree)
    assert counting["rows"] < _bound(), counting
    assert counting["samples"] > NFILES // BATCH  # the bound was looked at often


def test_resume_holds_a_batch_not_every_row(journal_path, tree, tmp_path, counting):
    dst = tmp_path / "dst"
    child = ("import sys, axlpy\n"
             "j = axlpy.Journal(sys.argv[1]); t = j.create('r', 'sync')\n"
             "t.add(sys.argv[2], sys.argv[3]); t.dispatch()\n")
    env = dict(os.environ, AXLPY_CRASH_AT="stage.after_commit", AXLPY_CRASH_HIT="2")
    proc = subprocess.run([sys.executable, "-c", child, str(journal_path), str(tree),
                           str(dst)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with axlpy.Journal(journal_path) as j:
        t = j.open("r")
        before = t.status()
        assert 0 < before.files_done < NFILES  # some published, some left
        t.resume()
        t.wait()
        assert t.state is axlpy.TransferState.COMPLETED
    assert tree_bytes(dst) == tree_bytes(tree)
    assert counting["rows"] < _bound(), counting


def _wide_tree(root, dirs: int = 100, per_dir: int = 60) -> int:
    # many small directories: the walk's own listing of one directory stays small
    for i in range(dirs):
        d = root / f"d{i:03d}"
        d.mkdir(parents=True)
        for k in range(per_dir):
            (d / f"file-with-a-longish-name-{k:03d}").touch()
    return dirs * per_dir + dirs + 1


def test_add_streams_its_rows_into_the_insert(journal, tmp_path):
    """add() inserts each walked row as it is made (issue 14.4): the Python memory it
    allocates at its peak is a few bytes per entry, not a held row (~400 bytes) each.
    Measured with tracemalloc (SQLite's own pages are not Python allocations)."""
    import tracemalloc

    n = _wide_tree(tmp_path / "src")
    t = journal.create("wide", "sync")
    tracemalloc.start()
    try:
        added = t.add(tmp_path / "src", tmp_path / "dst")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert added == n
    assert len(t.files()) == n
    assert peak < n * 64, f"{peak} bytes at the peak for {n} entries"


def test_streamed_add_names_a_duplicate_and_adds_nothing(journal, tmp_path):
    """A destination added twice is found by the insert while the walk streams: the
    error names it and the whole add is rolled back (the earlier add stays)."""
    _wide_tree(tmp_path / "src", dirs=3, per_dir=5)
    (tmp_path / "one").write_bytes(b"1")
    t = journal.create("dup", "sync")
    t.add(tmp_path / "one", tmp_path / "dst" / "d001" / "file-with-a-longish-name-002")
    with pytest.raises(axlpy.UsageError,
                       match=r"d001/file-with-a-longish-name-002.*added twice"):
        t.add(tmp_path / "src", tmp_path / "dst")
    assert [f.dst for f in t.files()] == [
        str(tmp_path / "dst" / "d001" / "file-with-a-longish-name-002")]
    assert [e["event"] for e in t.events()].count("add") == 1


def test_a_long_add_walk_holds_no_journal_lock(journal, tmp_path, monkeypatch):
    """While add() walks a tree, other writers are not kept waiting for the walk: another
    process can begin a write transaction at once (busy timeout 0), and another thread of
    this process can commit through the same journal. Both happen mid-walk, from inside
    the walk itself, so no timing is involved."""
    import sqlite3
    import threading

    from axlpy import _transfer

    _wide_tree(tmp_path / "src", dirs=4, per_dir=3000)
    other_t = journal.create("other", "sync")
    seen: dict[str, object] = {}
    real_walk = _transfer.walk_source

    def walk(*args, **kwargs):
        for i, row in enumerate(real_walk(*args, **kwargs)):
            if i == 5000:  # several spool batches in
                conn = sqlite3.connect(journal.path, timeout=0, isolation_level=None)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("ROLLBACK")
                    seen["process"] = "ok"
                except sqlite3.OperationalError as exc:
                    seen["process"] = str(exc)
                finally:
                    conn.close()
                done = threading.Event()

                def commit(done: threading.Event = done) -> None:
                    other_t.free()  # a journal commit from another thread
                    done.set()

                th = threading.Thread(target=commit, daemon=True)
                th.start()
                seen["thread"] = done.wait(60)  # a bound on failure, not a sync
            yield row

    monkeypatch.setattr(_transfer, "walk_source", walk)
    t = journal.create("big", "sync")
    n = t.add(tmp_path / "src", tmp_path / "dst")
    assert seen == {"process": "ok", "thread": True}
    assert n == 4 * 3000 + 4 + 1 and len(t.files()) == n
    assert "other" not in [x.name for x in journal.transfers()]


def test_add_interrupted_by_its_walk_adds_nothing_and_leaves_no_spool(journal, tmp_path,
                                                                      monkeypatch):
    from axlpy import _transfer

    _wide_tree(tmp_path / "src", dirs=3, per_dir=1000)
    real_walk = _transfer.walk_source

    def walk(*args, **kwargs):
        for i, row in enumerate(real_walk(*args, **kwargs)):
            if i == 2500:
                raise OSError(5, "Input/output error (injected mid-walk)")
            yield row

    monkeypatch.setattr(_transfer, "walk_source", walk)
    t = journal.create("t", "sync")
    with pytest.raises(axlpy.AxlError, match="injected mid-walk"):
        t.add(tmp_path / "src", tmp_path / "dst")
    assert t.files() == []
    assert [e["event"] for e in t.events()].count("add") == 0
    conn = journal.db.conn
    assert conn.execute("SELECT name FROM sqlite_temp_master").fetchall() == []
    assert not conn.in_transaction
