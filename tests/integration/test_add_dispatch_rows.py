"""What add() and dispatch journal for each entry, read back with plain sqlite3 from the
journal file: paths and temp names are BLOBs holding the exact bytes (a name that is not
UTF-8 included), a symlink's target is a BLOB and every other entry's is NULL, and the
identity dispatch records is each source's ``stat`` at dispatch. add()'s walk opens one
fd per source directory: none is left open, whether the walk ends or fails."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import axlpy
from axlpy._transfer import Transfer

ODD = b"n\xffme"  # not UTF-8


def _tree(src: Path) -> dict[bytes, str]:
    """A small tree of every kind add() records: ``{rel: kind}``."""
    b = os.fsencode(src)
    os.makedirs(b + b"/sub/deeper")
    os.mkdir(b + b"/empty")
    for rel, data in ((b"a", b"1"), (b"sub/" + ODD, b"22"), (b"sub/deeper/c", b"333")):
        with open(b + b"/" + rel, "wb") as f:
            f.write(data)
    os.symlink(b"a", b + b"/link")
    return {b"": "dir", b"a": "file", b"empty": "dir", b"link": "symlink", b"sub": "dir",
            b"sub/" + ODD: "file", b"sub/deeper": "dir", b"sub/deeper/c": "file"}


def _rows(journal: axlpy.Journal, cols: str) -> dict[bytes, tuple]:
    conn = sqlite3.connect(journal.path)
    try:
        return {bytes(r[0]): r[1:] for r in conn.execute(f"SELECT rel, {cols} FROM files")}
    finally:
        conn.close()


def test_add_journals_each_entry_as_walked(journal, tmp_path):
    kinds = _tree(tmp_path / "src")
    src, dst = os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dst")
    t = journal.create("rows", "sync")
    assert t.add(tmp_path / "src", tmp_path / "dst") == len(kinds)
    rows = _rows(journal, "kind, src, dst, root, size, mtime_ns, mode, uid, gid, link,"
                          " typeof(src), typeof(dst), typeof(root), typeof(rel),"
                          " typeof(link), tmp, state")
    assert set(rows) == set(kinds)
    for rel, kind in kinds.items():
        s = src + b"/" + rel if rel else src
        st = os.lstat(s)
        link = os.readlink(s) if kind == "symlink" else None
        size = {"file": st.st_size, "symlink": len(link or b""), "dir": 0}[kind]
        assert rows[rel] == (
            kind, s, dst + b"/" + rel if rel else dst, dst, size, st.st_mtime_ns,
            st.st_mode & 0o7777, st.st_uid, st.st_gid, link,
            "blob", "blob", "blob", "blob", "blob" if link else "null", None, "PENDING",
        ), rel


def test_dispatch_journals_identity_and_temp_names(journal, tmp_path, monkeypatch):
    kinds = _tree(tmp_path / "src")
    src = os.fsencode(tmp_path / "src")
    t = journal.create("disp", "sync")
    t.add(tmp_path / "src", tmp_path / "dst")
    # the dispatch transaction as it is, without the run that would follow it
    monkeypatch.setattr(Transfer, "_start", lambda self, body: None)
    t.dispatch()
    assert t.state is axlpy.TransferState.DISPATCHED
    row = journal.db.transfer("disp")
    assert row is not None
    rows = _rows(journal, "id, size, mtime_ns, mode, src_ctime_ns, src_ino, src_dev, tmp,"
                          " typeof(tmp)")
    for rel, kind in kinds.items():
        fid, *ident, tmp, tmp_type = rows[rel]
        if kind == "dir":
            assert (tmp, tmp_type) == (None, "null"), rel
            continue
        assert tmp_type == "blob", rel
        assert tmp.startswith(b"." + rel.rpartition(b"/")[2]), (rel, tmp)
        assert tmp.endswith(f".axlpy-{row.token}-{row.id}-{fid}".encode()), (rel, tmp)
        if kind == "file":
            st = os.stat(src + b"/" + rel)
            assert ident == [st.st_size, st.st_mtime_ns, st.st_mode & 0o7777,
                             st.st_ctime_ns, st.st_ino, st.st_dev], rel


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_walk_leaves_no_directory_fd_open(journal, tmp_path):
    for i in range(12):
        (tmp_path / "ok" / f"d{i:02d}").mkdir(parents=True)
        (tmp_path / "ok" / f"d{i:02d}" / "f").write_bytes(b"x")
    for i in range(12):
        (tmp_path / "bad" / f"d{i:02d}").mkdir(parents=True)
    os.mkfifo(tmp_path / "bad" / "d07" / "fifo")  # refused mid-walk, 8 directories in
    before = _fds()
    t = journal.create("fds", "sync")
    assert t.add(tmp_path / "ok", tmp_path / "o1") == 1 + 12 * 2
    assert _fds() == before
    with pytest.raises(axlpy.BadSourceError, match=r"d07/fifo.*FIFO"):
        t.add(tmp_path / "bad", tmp_path / "o2")
    assert _fds() == before
    assert len(t.files()) == 1 + 12 * 2
