"""End-to-end transfers on real files with the SYNC engine: copy, tree, metadata, move,
resume and cancel across processes, free, and the compat face."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import axlpy
from axlpy import compat
from tests.conftest import temp_files, tree_bytes, write_tree

T = axlpy.TransferState
FILES = {
    "a.bin": os.urandom(300_000),
    "zero": b"",
    "one": b"1",
    "sub/b.txt": b"hello\n",
    "sub/deeper/c.bin": os.urandom(70_000),
}


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write_tree(root, FILES, empty_dirs=("empty", "sub/empty2"))
    return root


def test_tree_copy(journal, src, tmp_path):
    dst = tmp_path / "dst"
    t = journal.create("tree", "sync", chunk_size=65536, extent_size=131072)
    assert t.add(src, dst) == len(FILES) + 5  # files + 5 directories incl. root
    t.dispatch()
    assert t.test() is True
    assert tree_bytes(dst) == tree_bytes(src)
    assert temp_files(dst) == []
    st = t.status()
    assert st.state is T.COMPLETED
    assert (st.files_done, st.files_total) == (len(FILES), len(FILES))
    assert st.bytes_done == st.bytes_total == sum(len(v) for v in FILES.values())
    assert all(f.state is axlpy.FileState.PUBLISHED for f in t.files())


def test_single_file_and_default_mode(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"data")
    os.chmod(s, 0o640)
    t = journal.create("one", "sync")
    t.add(s, tmp_path / "out" / "d")
    t.dispatch()
    assert (tmp_path / "out" / "d").read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "out" / "d").st_mode & 0o777 == 0o640 & ~umask


def test_metadata_copy(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"meta")
    os.chmod(s, 0o751)
    os.utime(s, ns=(1_000_000_000, 1_500_000_000_123))
    t = journal.create("meta", "sync", metadata=True)
    t.add(s, tmp_path / "d")
    t.dispatch()
    st = os.stat(tmp_path / "d")
    assert st.st_mode & 0o7777 == 0o751
    assert st.st_mtime_ns == 1_500_000_000_123


def test_move_deletes_sources_only_after_publish(journal, src, tmp_path):
    before = tree_bytes(src)
    dst = tmp_path / "dst"
    t = journal.create("mv", "sync", move=True)
    t.add(src, dst)
    t.dispatch()
    assert tree_bytes(dst) == before
    assert not src.exists()
    events = [e["event"] for e in t.events()]
    assert events.index("renamed") < events.index("complete")


def test_overwrites_existing_destination_file_atomically(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"new content")
    d = tmp_path / "d"
    d.write_bytes(b"old")
    t = journal.create("ow", "sync")
    t.add(s, d)
    t.dispatch()
    assert d.read_bytes() == b"new content"


def test_symlink_policies(journal, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"pointed-to")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(target)
    t = journal.create("copy-links", "sync")
    t.add(tree, tmp_path / "d1")
    t.dispatch()
    assert os.readlink(tmp_path / "d1" / "link") == str(target)
    t = journal.create("follow", "sync", symlinks="follow")
    t.add(tree, tmp_path / "d2")
    t.dispatch()
    assert not os.path.islink(tmp_path / "d2" / "link")
    assert (tmp_path / "d2" / "link").read_bytes() == b"pointed-to"
    t = journal.create("refuse", "sync", symlinks="refuse")
    with pytest.raises(axlpy.BadSourceError, match="symlink"):
        t.add(tree, tmp_path / "d3")


def test_cancel_before_dispatch_and_free(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"x")
    t = journal.create("c", "sync")
    t.add(s, tmp_path / "d")
    t.cancel()
    assert t.state is T.CANCELLED
    assert not (tmp_path / "d").exists()
    t.free()
    assert journal.names() == []


def test_free_refuses_unfinished(journal, tmp_path, monkeypatch):
    s = tmp_path / "s"
    s.write_bytes(b"x" * 100)
    t = journal.create("f", "sync")
    t.add(s, tmp_path / "d")
    # Make the copy fail: the source changes between dispatch's stat and the copy.
    from axlpy.engines import _stager

    real = _stager.open_source

    def changed(task, *args):
        os.utime(s, ns=(1, 1))
        return real(task, *args)

    monkeypatch.setattr(_stager, "open_source", changed)
    with pytest.raises(axlpy.SourceChangedError, match="changed since dispatch") as info:
        t.dispatch()
    assert str(s) in str(info.value)
    assert t.state is T.FAILED
    assert not (tmp_path / "d").exists()
    with pytest.raises(axlpy.InvalidTransitionError):
        t.free()
    t.cancel()
    assert temp_files(tmp_path) == []
    t.free()


CHILD = textwrap.dedent("""
    import os, sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", "sync", chunk_size=65536, extent_size=65536)
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
""")


def _run_child_killed_at(point, journal_path, src, dst, hit=1):
    env = dict(os.environ, AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT=str(hit))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(journal_path), str(src), str(dst)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr


@pytest.mark.parametrize("point", ["stage.after_write", "stage.after_commit",
                                   "publish.after_rename", "renamed.after_commit"])
def test_resume_in_new_process_after_kill(journal_path, src, tmp_path, point):
    dst = tmp_path / "dst"
    _run_child_killed_at(point, journal_path, src, dst)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        assert t.state in (T.DISPATCHED, T.RENAMED)
        t.resume()
        assert t.state is T.COMPLETED
        assert "takeover" in [e["event"] for e in t.events()]
    assert tree_bytes(dst) == tree_bytes(src)
    assert temp_files(dst) == []


@pytest.mark.parametrize("point", ["stage.after_write", "stage.after_commit",
                                   "publish.after_rename", "publish.after_commit"])
def test_cancel_in_new_process_after_kill(journal_path, src, tmp_path, point):
    dst = tmp_path / "dst"
    before = tree_bytes(src)
    _run_child_killed_at(point, journal_path, src, dst)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.cancel()
        assert t.state is T.CANCELLED
    assert temp_files(tmp_path) == []
    files = {k: v for k, v in tree_bytes(dst).items() if v is not None} if dst.exists() else {}
    assert files == {}  # cancel removes what it published: no half checkpoint remains
    assert tree_bytes(src) == before


def test_mid_file_resume_keeps_verified_extents(journal_path, tmp_path):
    s = tmp_path / "big"
    data = os.urandom(10 * 65536 + 123)
    s.write_bytes(data)
    dst = tmp_path / "d"
    _run_child_killed_at("stage.after_extent_commit", journal_path, s, dst, hit=6)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.resume()
        copied = t._progress.bytes_done if t._progress else None
    assert dst.read_bytes() == data
    # 6 extents were journaled before the kill; they were verified and kept (counted as
    # done up front), so the resume copied only the rest.
    assert copied == len(data)


def test_live_owner_blocks_other_process(journal_path, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"x")
    with axlpy.Journal(journal_path) as j:
        t = j.create("own", "sync")
        t.add(s, tmp_path / "d")
        # Simulate a dispatch that stopped here while this process is alive.
        j.db.claim(t._row.id, "own")
        j.db.set_state(t._row.id, T.CREATED, T.DISPATCHED, event="dispatch", name="own")
    code = textwrap.dedent(f"""
        import axlpy, sys
        t = axlpy.Journal({str(journal_path)!r}).open("own")
        try:
            t.resume()
        except axlpy.OwnershipError as e:
            print("OWNED", e); sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pid {os.getpid()}" in proc.stdout


def test_compat_face(tmp_path, journal_path, src):
    dst = tmp_path / "dst"
    assert compat.AXL_Init() == compat.AXL_SUCCESS
    xid = compat.AXL_Create(compat.AXL_XFER_SYNC, "c1", str(journal_path))
    assert xid > 0
    assert compat.AXL_Add(xid, str(src), str(dst)) == compat.AXL_SUCCESS
    assert compat.AXL_Dispatch(xid) == compat.AXL_SUCCESS
    assert compat.AXL_Test(xid) == compat.AXL_SUCCESS
    assert compat.AXL_Wait(xid) == compat.AXL_SUCCESS
    assert compat.AXL_Free(xid) == compat.AXL_SUCCESS
    assert tree_bytes(dst) == tree_bytes(src)
    # Errors are return codes, with the reason kept.
    assert compat.AXL_Add(9999, "a", "b") == compat.AXL_FAILURE
    assert "unknown transfer id 9999" in compat.AXL_LastError()
    assert compat.AXL_Create(compat.AXL_XFER_ASYNC_DW, "dw", str(journal_path)) == -1
    # Open by state file alone, without knowing the type or the name.
    xid = compat.AXL_Create(compat.AXL_XFER_PTHREAD if False else compat.AXL_XFER_SYNC,
                            "c2", str(journal_path))
    compat.AXL_Add(xid, str(src / "a.bin"), str(tmp_path / "a2"))
    xid2 = compat.AXL_Create(compat.AXL_XFER_STATE_FILE, "", str(journal_path))
    assert compat.AXL_Dispatch(xid2) == compat.AXL_SUCCESS
    assert (tmp_path / "a2").read_bytes() == FILES["a.bin"]
    # Stop cancels and frees everything, including a cancelled transfer (C AXL fails).
    xid3 = compat.AXL_Create(compat.AXL_XFER_SYNC, "c3", str(journal_path))
    compat.AXL_Add(xid3, str(src / "one"), str(tmp_path / "one"))
    assert compat.AXL_Cancel(xid3) == compat.AXL_SUCCESS
    assert compat.AXL_Wait(xid3) == compat.AXL_SUCCESS
    assert compat.AXL_Stop() == compat.AXL_SUCCESS
    assert compat.AXL_Finalize() == compat.AXL_SUCCESS
    with axlpy.Journal(journal_path) as j:
        assert j.names() == []


def test_small_file_changed_while_read_leaves_no_temp(journal, tmp_path, monkeypatch):
    """Issue 14.3: a file below one chunk is read and checked before its temp exists, so
    a source rewritten after it was opened fails the copy without creating a temp."""
    s = tmp_path / "s"
    s.write_bytes(b"x" * 100)
    dst = tmp_path / "out"
    t = journal.create("small", "sync")
    t.add(s, dst / "d")
    from axlpy.engines import _stager

    real = _stager.open_source

    def opened_then_changed(task, *args):
        fd = real(task, *args)
        os.utime(s, ns=(1, 1))  # rewritten after the open: the mtime no longer matches
        return fd

    monkeypatch.setattr(_stager, "open_source", opened_then_changed)
    with pytest.raises(axlpy.SourceChangedError, match="changed since dispatch"):
        t.dispatch()
    assert t.state is T.FAILED
    assert not dst.exists() or list(dst.iterdir()) == []  # no temp, no final file
