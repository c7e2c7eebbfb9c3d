"""Issue 14 item 1: batched durability — one ``syncfs`` per batch of staged files on a
local filesystem instead of one fsync per temp; per-file fsync on other filesystems and
after a ``syncfs`` error (which then names the file); directory creations fsynced once
per parent and recorded once per batch. Real files, a real journal, the real syscalls
(counted by wrapping ``os.fsync`` and axlpy's ``syncfs``)."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

import axlpy
import axlpy._driver as driver_mod
import axlpy._groupsync as gs_mod
import axlpy.engines
import axlpy.engines._writeback as wb_mod
from axlpy._fstype import statfs_magic
from axlpy._staging import TEMP_PATTERN
from axlpy.engines import ENGINE_TYPES
from tests.conftest import temp_files, tree_bytes, type_params, write_tree

T = axlpy.TransferState
N = 300  # files: two batches of at most 256


@pytest.fixture(autouse=True)
def _local_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if statfs_magic(str(tmp_path)) not in gs_mod.LOCAL_FS:
        pytest.skip(f"{tmp_path} is not on ext4/xfs/btrfs/tmpfs: no batched path here")
    monkeypatch.delenv(gs_mod.MODE_ENV, raising=False)
    # Batches by count only (256 files), never by the clock: the count is exact.
    monkeypatch.setattr(driver_mod, "_GROUP_SECONDS", 1e9)


class Calls:
    """Every fsync (by the path of its fd) and every syncfs of the process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, syncfs_errno: int | None = None,
                 fsync_errno: dict[str, int] | None = None) -> None:
        self.fsyncs: list[str] = []
        self.syncfs = 0
        self.staged_commits = 0
        real_fsync, real_syncfs = os.fsync, gs_mod.syncfs
        real_commit = driver_mod.Driver._commit_staged

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.fsyncs.append(path)
            for name, err in (fsync_errno or {}).items():
                if TEMP_PATTERN.search(os.fsencode(path)) and f"/.{name}.axlpy-" in path:
                    raise OSError(err, os.strerror(err))
            real_fsync(fd)

        def syncfs(fd: int) -> None:
            self.syncfs += 1
            if syncfs_errno is not None:
                raise OSError(syncfs_errno, os.strerror(syncfs_errno))
            real_syncfs(fd)

        def commit_staged(drv: driver_mod.Driver, group: object) -> None:
            self.staged_commits += 1
            real_commit(drv, group)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(gs_mod, "syncfs", syncfs)
        monkeypatch.setattr(driver_mod.Driver, "_commit_staged", commit_staged)

    def temp_fsyncs(self) -> list[str]:
        return [p for p in self.fsyncs if TEMP_PATTERN.search(os.fsencode(p))]


def _src(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {f"d{i % 3}/f{i}": os.urandom(i % 5000) for i in range(N)}
    root = tmp_path / "src"
    write_tree(root, files)
    return root, files


def _copy(journal: axlpy.Journal, src: Path, dst: Path, name: str = "t") -> axlpy.Transfer:
    t = journal.create(name, "sync")
    t.add(src, dst)
    t.dispatch()
    return t


def test_one_syncfs_per_batch_and_no_fsync_per_file(journal, tmp_path, monkeypatch):
    src, _ = _src(tmp_path)
    calls = Calls(monkeypatch)
    t = _copy(journal, src, tmp_path / "dst")
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)
    assert calls.staged_commits == 2  # 300 files: 256 + 44
    assert calls.syncfs == calls.staged_commits  # one per batch, nothing else
    assert calls.temp_fsyncs() == []
    # directory fsyncs: at most one per directory per batch (renames), and the new
    # directories' parents are covered by the batch's syncfs
    per_dir = Counter(calls.fsyncs)
    assert max(per_dir.values()) <= calls.staged_commits, per_dir


@pytest.mark.parametrize("how", ["nfs", "off"])
def test_per_file_fsync_where_not_batched(journal, tmp_path, monkeypatch, how):
    """A network filesystem (statfs magic of NFS) or AXLPY_SYNCFS=off: each temp fsynced
    once, no syncfs."""
    src, _ = _src(tmp_path)
    if how == "nfs":
        monkeypatch.setenv("AXLPY_FAKE_FS_MAGIC", "0x6969")
    else:
        monkeypatch.setenv(gs_mod.MODE_ENV, "off")
    calls = Calls(monkeypatch)
    t = _copy(journal, src, tmp_path / "dst")
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)
    assert calls.syncfs == 0
    assert len(calls.temp_fsyncs()) == N
    assert len(set(calls.temp_fsyncs())) == N


def test_bad_mode_is_a_clear_error(journal, tmp_path, monkeypatch):
    src, _ = _src(tmp_path)
    monkeypatch.setenv(gs_mod.MODE_ENV, "sometimes")
    t = journal.create("t", "sync")
    t.add(src, tmp_path / "dst")
    with pytest.raises(axlpy.AxlError, match="AXLPY_SYNCFS must be one of"):
        t.dispatch()


def test_syncfs_error_falls_back_to_fsync_of_each_file(journal, tmp_path, monkeypatch):
    """syncfs fails (EIO) but every temp's own fsync succeeds: the error was not ours;
    the copy completes, each temp fsynced once, the filesystem stays on per-file fsync
    for the rest of the run (one syncfs attempt in all), and the journal says so."""
    src, _ = _src(tmp_path)
    calls = Calls(monkeypatch, syncfs_errno=errno.EIO)
    t = _copy(journal, src, tmp_path / "dst")
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)
    assert calls.syncfs == 1
    assert len(set(calls.temp_fsyncs())) == N
    events = [e for e in t.events() if e["event"] == "syncfs-failed"]
    assert len(events) == 1 and "Input/output error" in events[0]["detail"]


def test_syncfs_error_is_attributed_to_its_file(journal, tmp_path, monkeypatch):
    """syncfs fails and so does the fsync of one temp: the run fails naming that file,
    nothing of its batch is journaled STAGED or renamed; resume then finishes it."""
    src, _ = _src(tmp_path)
    Calls(monkeypatch, syncfs_errno=errno.EIO, fsync_errno={"f7": errno.EIO})
    with pytest.raises(axlpy.TransferError) as ei:
        _copy(journal, src, tmp_path / "dst")
    assert ei.value.path == str(tmp_path / "dst" / "d1" / "f7")
    assert "fsync of its temp failed" in str(ei.value)
    t = journal.open("t")
    assert t.state is T.FAILED
    states = Counter(f.state for f in t.files() if f.kind == "file")
    assert states == {axlpy.FileState.PENDING: N}
    assert not (tmp_path / "dst" / "d1" / "f7").exists()
    assert temp_files(tmp_path / "dst")  # left for resume or cancel
    monkeypatch.undo()
    monkeypatch.setattr(driver_mod, "_GROUP_SECONDS", 1e9)
    t.resume()
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)


def test_empty_dirs_fsync_each_parent_once_and_record_in_one_commit(
        journal, journal_path, tmp_path, monkeypatch):
    """10,000 empty directories used to cost one parent fsync and one journal commit
    each. Batched: the new directories are covered by one syncfs (no parent fsyncs) and
    recorded in a few transactions; cancel still removes every one of them."""
    src = tmp_path / "src"
    dirs = [f"a{i // 50}/e{i}" for i in range(600)]
    write_tree(src, {}, empty_dirs=tuple(dirs))
    calls = Calls(monkeypatch)
    t = _copy(journal, src, tmp_path / "dst")
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)
    assert calls.syncfs <= 2  # one per batch of 1024 new directories (613 here)
    dir_fsyncs = [p for p in calls.fsyncs if os.path.isdir(p)]
    assert len(dir_fsyncs) <= 1, dir_fsyncs  # the destination root's parent at most
    with sqlite3.connect(journal_path) as db:
        (n,) = db.execute("SELECT count(*) FROM created_dirs").fetchone()
    assert n == 600 + 12 + 1  # leaves, their parents, the root


def test_empty_dirs_per_parent_fsync_without_syncfs(journal, tmp_path, monkeypatch):
    """Per-file path (AXLPY_SYNCFS=off): each parent of new directories fsynced once,
    not once per mkdir."""
    src = tmp_path / "src"
    dirs = [f"a{i // 50}/e{i}" for i in range(600)]
    write_tree(src, {}, empty_dirs=tuple(dirs))
    monkeypatch.setenv(gs_mod.MODE_ENV, "off")
    calls = Calls(monkeypatch)
    t = _copy(journal, src, tmp_path / "dst")
    assert t.state is T.COMPLETED
    dir_fsyncs = Counter(p for p in calls.fsyncs if os.path.isdir(p))
    assert calls.syncfs == 0
    assert max(dir_fsyncs.values()) == 1, dir_fsyncs
    assert len(dir_fsyncs) <= 12 + 2  # the 12 parents, the root, the root's parent


def test_cancel_removes_directories_recorded_in_batches(journal, tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(src, {"x/y/f": b"data"}, empty_dirs=("x/e1", "x/y/e2", "z"))
    Calls(monkeypatch, syncfs_errno=None)
    t = journal.create("t", "sync")
    t.add(src, tmp_path / "dst")
    monkeypatch.setattr(driver_mod.Driver, "_publish_dirs",
                        lambda self, dirs, rows: (_ for _ in ()).throw(OSError(errno.EIO,
                                                                             "boom")))
    with pytest.raises(axlpy.AxlError):
        t.dispatch()
    monkeypatch.undo()
    report = journal.open("t").cancel()
    assert not (tmp_path / "dst").exists(), report


def test_syncfs_reports_errno(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        gs_mod.syncfs(fd)  # a real call succeeds
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="Bad file descriptor") as ei:
        gs_mod.syncfs(fd)  # closed: EBADF from the kernel, not a silent 0
    assert ei.value.errno == errno.EBADF


@pytest.mark.parametrize("typ", type_params(ENGINE_TYPES))
def test_large_temps_are_fsynced_by_their_engine_not_by_the_batch(journal, tmp_path,
                                                                  monkeypatch, typ):
    """Issue 14, 64 x 32 MiB: on the batched path a large temp (at least
    two steps) is fsynced once by its engine, then its pages are dropped whole; the
    batch's ``syncfs`` is not asked to cover it (a ``syncfs`` while large temps are
    written flushes their pages under their writers). Small temps stay on the batch."""
    step = 1 << 20
    monkeypatch.setattr(wb_mod, "settings",
                        lambda: wb_mod.WriteBehind(step=step, dontneed=True, drop_temp=True))
    files = {"big1": os.urandom(3 * step + 17), "d/big2": os.urandom(2 * step),
             "small": b"tiny"}
    src = tmp_path / "src"
    write_tree(src, files)
    events: list[tuple[str, str, int, int]] = []
    calls = Calls(monkeypatch)
    real_fsync, real_drop = os.fsync, wb_mod.drop_pages
    covered: list[list[str]] = []
    real_durable = driver_mod.Driver._make_durable

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), 0, 0))
        real_fsync(fd)

    def drop(fd: int, off: int, n: int) -> None:
        events.append(("drop", os.readlink(f"/proc/self/fd/{fd}"), off, n))
        real_drop(fd, off, n)

    def make_durable(drv: driver_mod.Driver, group: list[axlpy.engines.StageResult],
                     dirs: object) -> None:
        covered.append([os.path.basename(os.fsdecode(r.task.row.rel)) for r in group])
        real_durable(drv, group, dirs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(wb_mod, "drop_pages", drop)
    monkeypatch.setattr(driver_mod.Driver, "_make_durable", make_durable)
    t = journal.create("t", typ)
    t.add(src, tmp_path / "dst")
    t.dispatch()
    t.wait()
    assert t.state is T.COMPLETED
    assert tree_bytes(tmp_path / "dst") == tree_bytes(src)
    temps = calls.temp_fsyncs()
    for big in ("/.big1.axlpy-", "/d/.big2.axlpy-"):
        mine = [p for p in temps if big in p]
        assert len(mine) == 1, (big, temps)
        # after its fsync, the temp's pages are dropped whole (offset 0, to the end)
        at = events.index(("fsync", mine[0], 0, 0))
        assert ("drop", mine[0], 0, 0) in events[at:], events
    assert not any("/.small.axlpy-" in p for p in temps)  # the batch's syncfs covers it
    assert calls.syncfs >= 1
    assert not any(name.startswith("big") for g in covered for name in g), covered
    assert ["small"] in covered
