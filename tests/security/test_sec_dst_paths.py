"""Rules 1 and 2: destination paths are walked through directory fds; a symlink below the
directory the user named is refused unless ``follow_dst_symlinks``; temps are private
(0600, O_EXCL|O_NOFOLLOW) until the final mode is applied just before the rename."""

from __future__ import annotations

import os
import stat

import pytest
from sec_helpers import (
    final_files,
    make_deep,
    recursion_headroom,
    remove_tree,
    run_child,
    snapshot,
    temps,
)

import axlpy
from axlpy._staging import DirCache, create_temp

T = axlpy.TransferState


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "top").write_bytes(b"top" * 1000)
    (root / "sub" / "a").write_bytes(os.urandom(100_000))
    (root / "sub" / "deeper" / "b").write_bytes(b"b")
    return root


@pytest.fixture
def decoy(tmp_path):
    d = tmp_path / "decoy"
    d.mkdir()
    (d / "keep").write_bytes(b"the attacker's target must stay as it is")
    return d


def test_symlinked_dir_below_root_is_refused(journal, src, decoy, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(decoy, dst / "sub")  # planted where the tree's "sub" will go
    before = snapshot(decoy)
    t = journal.create("t", "sync")
    t.add(src, dst)
    with pytest.raises(axlpy.SecurityError, match=r"refusing to follow symlink.*"
                       r"follow_dst_symlinks=True"):
        t.dispatch()
    assert t.state is T.FAILED
    assert snapshot(decoy) == before
    assert os.path.islink(dst / "sub")  # left alone, not replaced or followed


def test_symlinked_dir_deep_below_root_is_refused(journal, src, decoy, tmp_path):
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    os.symlink(decoy, dst / "sub" / "deeper")
    before = snapshot(decoy)
    t = journal.create("t", "sync")
    t.add(src, dst)
    with pytest.raises(axlpy.SecurityError, match="deeper"):
        t.dispatch()
    assert snapshot(decoy) == before
    # The resume refuses too, and cancel removes what was staged without following it.
    with pytest.raises(axlpy.SecurityError):
        t.resume()
    assert snapshot(decoy) == before
    t.cancel()
    assert t.state is T.CANCELLED
    assert temps(dst) == [] and snapshot(decoy) == before


def test_symlink_to_a_file_in_place_of_a_dir_is_refused(journal, src, decoy, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(decoy / "keep", dst / "sub")
    t = journal.create("t", "sync")
    t.add(src, dst)
    with pytest.raises(axlpy.SecurityError):
        t.dispatch()
    assert (decoy / "keep").read_bytes() == b"the attacker's target must stay as it is"


def test_follow_dst_symlinks_allows_it(journal, src, decoy, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(decoy, dst / "sub")
    t = journal.create("t", "sync", follow_dst_symlinks=True)
    t.add(src, dst)
    t.dispatch()
    assert t.state is T.COMPLETED
    assert (decoy / "a").read_bytes() == (src / "sub" / "a").read_bytes()


def test_symlinks_in_the_path_the_user_named_are_followed(journal, src, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")  # e.g. /scratch -> /mnt/fs1/scratch
    t = journal.create("t", "sync")
    t.add(src, tmp_path / "alias" / "ckpt")
    t.add(src / "top", tmp_path / "alias" / "single" / "top")
    t.dispatch()
    assert (real / "ckpt" / "sub" / "a").read_bytes() == (src / "sub" / "a").read_bytes()
    assert (real / "single" / "top").read_bytes() == (src / "top").read_bytes()


def test_dircache_refuses_dot_dot_and_symlinks(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "root" / "link")
    root = os.fsencode(tmp_path / "root")
    with DirCache(mkdirs=True) as dirs:
        for rel in (b"a/../..", b"../x", b"a//b", b"./a"):
            with pytest.raises(axlpy.SecurityError):
                dirs.open(root, rel)
        with pytest.raises(axlpy.SecurityError, match="link"):
            dirs.open(root, b"link/new")
    assert not (tmp_path / "new").exists() and not (tmp_path / "x").exists()


def test_dircache_opens_a_very_deep_tree_without_recursion(tmp_path):
    root = os.fsencode(tmp_path / "deep")
    try:
        with recursion_headroom(150) as depth:
            rel = b"/".join([b"d"] * depth)
            with DirCache(mkdirs=True) as dirs:
                fd = dirs.open(root, rel)
                os.close(create_temp(fd, b"leaf"))
            with DirCache(mkdirs=False) as dirs:  # a fresh cache opens every level again
                fd = dirs.open(root, rel)
                assert "leaf" in os.listdir(fd)
    finally:
        remove_tree(root)


def test_deep_tree_end_to_end(journal, tmp_path):
    src, out = tmp_path / "s", tmp_path / "o"
    try:
        with recursion_headroom(150) as depth:
            make_deep(src, depth, {b"f": b"deep"})
            t = journal.create("deep", "sync")
            t.add(src, out, limits=axlpy.Limits(max_depth=depth + 10))
            t.dispatch()
            assert t.state is T.COMPLETED
        with open(os.path.join(os.fsencode(out), *([b"d"] * depth), b"f"), "rb") as f:
            assert f.read() == b"deep"
    finally:
        remove_tree(src)
        remove_tree(out)


def test_deep_tree_cancel_after_crash(journal_path, tmp_path):
    src, dst = tmp_path / "s", tmp_path / "o"
    try:
        with recursion_headroom(150) as depth:
            make_deep(src, depth, {b"f": b"f" * 100, b"g": b"g" * 100})
            run_child(journal_path, src, dst, crash_at="publish.after_rename",
                      max_depth=depth + 10)
            with axlpy.Journal(journal_path) as j:
                t = j.open("x")
                t.cancel()
                assert t.state is T.CANCELLED
        assert final_files(dst) == {} and temps(dst) == []
    finally:
        remove_tree(src)
        remove_tree(dst)


def test_temp_is_private_until_publish_and_final_mode_applied_before_rename(
        journal_path, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(os.urandom(300_000))
    os.chmod(s, 0o644)
    dst = tmp_path / "out" / "f"
    # Killed mid-copy: the temp exists, with mode 0600 whatever the source's mode.
    run_child(journal_path, s, dst, crash_at="stage.after_write")
    (tmp,) = temps(tmp_path / "out")
    assert stat.S_IMODE(os.lstat(tmp).st_mode) == 0o600
    assert not dst.exists()
    # Killed after the fsync, before the rename: the final mode is already applied.
    jp2 = tmp_path / "j2" / "j.db"
    jp2.parent.mkdir(mode=0o700)
    dst2 = tmp_path / "out2" / "f"
    run_child(jp2, s, dst2, crash_at="stage.after_fsync", metadata=True)
    (tmp2,) = temps(tmp_path / "out2")
    st = os.lstat(tmp2)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_mtime_ns == os.stat(s).st_mtime_ns
    assert not dst2.exists()


def test_planted_symlink_at_temp_name_is_replaced_not_followed(journal_path, tmp_path,
                                                               decoy):
    s = tmp_path / "s"
    (s / "d").mkdir(parents=True)
    for i in range(3):
        (s / "d" / f"f{i}").write_bytes(os.urandom(50_000))
    dst = tmp_path / "dst"
    run_child(journal_path, s, dst, crash_at="dispatch.after_commit")
    # An attacker who can write the destination plants symlinks under the temp names
    # (they are predictable once dispatched) pointing at a file of the victim.
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        row = j.db.transfer("x")
        assert row is not None
        rows = j.db.files(row.id)
        (dst / "d").mkdir(parents=True)
        for r in rows:
            if r.kind == "file" and r.tmp is not None:
                os.symlink(decoy / "keep", os.path.join(os.path.dirname(r.dst), r.tmp))
        before = snapshot(decoy)
        t.resume()
        assert t.state is T.COMPLETED
    assert snapshot(decoy) == before
    for i in range(3):
        assert (dst / "d" / f"f{i}").read_bytes() == (s / "d" / f"f{i}").read_bytes()
    assert temps(dst) == []
    assert all(v != b"<symlink>" for v in final_files(dst).values())
