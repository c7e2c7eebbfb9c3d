"""Issue 15.3: hard links inside one transfer arrive as hard links.

Names of one source inode (same st_dev/st_ino at dispatch) form a group: the first name
(lowest row id) is copied, every later name is ``link()``ed to it once it is published
(temp link, STAGED, rename, dir fsync, PUBLISHED), so crash, resume and cancel keep them
linked or remove them. ``hard_links=False`` (``cp --no-hard-links``) copies each name.
Real files, a real journal, real killed processes (crash points).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from axlpy import TransferState as T
from axlpy.engines import ENGINE_TYPES
from tests.cli.clitools import child_env, run_sub
from tests.conftest import copy_completed, resume_completed, type_params

TYPES = type_params(ENGINE_TYPES)
MIB = 1 << 20


def _tree(root: Path) -> Path:
    """src/ with: a + sub/b (a pair, 3 MiB: the chunked path), s + t + sub/u (a group of
    three, small), lone (no link), out (linked to a file outside the tree)."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(os.urandom(3 * MIB + 5))
    os.link(src / "a", src / "sub" / "b")
    (src / "s").write_bytes(b"small group")
    os.link(src / "s", src / "t")
    os.link(src / "s", src / "sub" / "u")
    (src / "lone").write_bytes(b"alone")
    (src / "out").write_bytes(b"has a name outside")
    os.link(src / "out", root / "outside-name")
    return src


def _ino(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_dev, st.st_ino


def _assert_linked(dst: Path, src: Path) -> None:
    for rel in ("a", "sub/b", "s", "t", "sub/u", "lone", "out"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert _ino(dst / "a") == _ino(dst / "sub" / "b")
    assert os.stat(dst / "a").st_nlink == 2
    assert _ino(dst / "s") == _ino(dst / "t") == _ino(dst / "sub" / "u")
    assert os.stat(dst / "s").st_nlink == 3
    assert _ino(dst / "a") != _ino(dst / "s")
    # a name outside the copy is not part of it: one name at the destination
    assert os.stat(dst / "lone").st_nlink == 1
    assert os.stat(dst / "out").st_nlink == 1
    assert not list(dst.rglob(".*axlpy*")), "temps left"


@pytest.mark.parametrize("ttype", TYPES)
def test_hard_links_recreated(tmp_path, journal_path, ttype):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    copy_completed(journal_path, "h", ttype, src, dst, chunk_size=MIB, extent_size=MIB)
    _assert_linked(dst, src)
    r = run_sub(journal_path, "verify", "h")
    assert r.code == 0 and r.out.startswith("OK"), r.out + r.err


@pytest.mark.parametrize("ttype", TYPES)
def test_hard_links_off_copies_each_name(tmp_path, journal_path, ttype):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    copy_completed(journal_path, "h", ttype, src, dst, hard_links=False)
    assert (dst / "sub" / "b").read_bytes() == (src / "a").read_bytes()
    assert _ino(dst / "a") != _ino(dst / "sub" / "b")
    assert len({_ino(dst / r) for r in ("s", "t", "sub/u")}) == 3


def test_cli_cp_keeps_links_and_no_hard_links_flag(tmp_path, journal_path):
    src = _tree(tmp_path)
    r = run_sub(journal_path, "cp", "--progress", "none", src, tmp_path / "d1")
    assert r.code == 0, r.err
    _assert_linked(tmp_path / "d1", src)
    r = run_sub(journal_path, "cp", "--progress", "none", "--no-hard-links", src,
                tmp_path / "d2")
    assert r.code == 0, r.err
    assert _ino(tmp_path / "d2" / "a") != _ino(tmp_path / "d2" / "sub" / "b")


def _pair(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "a").write_bytes(b"first name")
    os.link(src / "a", src / "b")
    return src


def test_resume_relinks_later_names_of_a_recopied_first_name(tmp_path, journal_path):
    """Killed once both names are published (before the transfer is RENAMED); the first
    name's file is then replaced by another one: resume copies the first name again and
    resets its later name too, so the two are linked again (not left on the old inode)."""
    src = _pair(tmp_path)
    dst = tmp_path / "dst"
    env = dict(child_env(journal_path), AXLPY_CRASH_AT="publish.after_commit",
               AXLPY_CRASH_HIT="2")
    _child(journal_path, src, dst, "sync", env)
    assert _ino(dst / "a") == _ino(dst / "b")
    (tmp_path / "other").write_bytes(b"somebody else")
    os.replace(tmp_path / "other", dst / "a")
    resume_completed(journal_path, "x")
    assert (dst / "a").read_bytes() == b"first name"
    assert _ino(dst / "a") == _ino(dst / "b")


_CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", sys.argv[4], chunk_size=1 << 20, extent_size=1 << 20,
                 move=sys.argv[5] == "move")
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
    t.wait()
""")


def _child(journal: Path, src: Path, dst: Path, ttype: str, env: dict[str, str],
           move: bool = False) -> None:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(journal), str(src), str(dst),
                        ttype, "move" if move else "copy"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -9, p.stderr


#: (crash point, hit): after the first names' PUBLISHED commit (nothing of the later
#: names yet), after the first / the last later name's temp link (PENDING rows with
#: temps), after the first later name's rename (4 first names are renamed before it;
#: the other later names are STAGED with their temps)
CRASHES = [("publish.after_commit", 1), ("link.after_temp", 1), ("link.after_temp", 3),
           ("publish.after_rename", 5)]


@pytest.mark.parametrize("ttype", type_params(["sync", "pthread"]))
@pytest.mark.parametrize(("point", "hit"), CRASHES, ids=[f"{p}#{h}" for p, h in CRASHES])
@pytest.mark.parametrize("op", ["resume", "cancel"])
def test_crash_between_first_name_and_link(tmp_path, journal_path, ttype, point, hit, op):
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    env = dict(child_env(journal_path), AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT=str(hit))
    _child(journal_path, src, dst, ttype, env)
    # the later names are not published yet, or a temp link / the final link exists
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        if op == "resume":
            t.resume()
            t.wait()
            assert t.state is T.COMPLETED
        else:
            t.cancel()
            assert t.state is T.CANCELLED
    if op == "resume":
        _assert_linked(dst, src)
    else:
        left = [p for p in dst.rglob("*") if not p.is_dir()] if dst.exists() else []
        assert left == [], left
    # sources untouched
    assert (src / "sub" / "b").read_bytes() == (src / "a").read_bytes()
    assert _ino(src / "a") == _ino(src / "sub" / "b")


@pytest.mark.parametrize("ttype", TYPES)
def test_move_mode_deletes_every_name_of_a_group(tmp_path, journal_path, ttype):
    """Unlinking the first source name moves the ctime of the others: they are still
    deleted (their bytes re-read against the journal), not kept as 'changed'."""
    src = _tree(tmp_path)
    expect = {rel: (src / rel).read_bytes() for rel in ("a", "sub/b", "s", "t", "sub/u")}
    dst = tmp_path / "dst"
    events = copy_completed(journal_path, "m", ttype, src, dst, move=True)
    kept = [e for e in events if e["event"].startswith("move-kept")]
    assert kept == []
    assert not src.exists(), sorted(map(str, src.rglob("*")))
    for rel, data in expect.items():
        assert (dst / rel).read_bytes() == data
    assert _ino(dst / "a") == _ino(dst / "sub" / "b")


def test_move_mode_killed_after_first_unlink_resumes(tmp_path, journal_path):
    """Killed after one name of the pair was deleted: the other's ctime moved; resume
    still deletes it (its bytes re-read) and leaves no source behind."""
    src = _pair(tmp_path)
    dst = tmp_path / "dst"
    env = dict(child_env(journal_path), AXLPY_CRASH_AT="move.after_unlink",
               AXLPY_CRASH_HIT="1")
    _child(journal_path, src, dst, "sync", env, move=True)
    assert len(list(src.iterdir())) == 1
    kept = [e for e in resume_completed(journal_path, "x")
            if e["event"].startswith("move-kept")]
    assert kept == []
    assert not src.exists()
    assert _ino(dst / "a") == _ino(dst / "b")


def test_move_mode_keeps_a_rewritten_linked_source(tmp_path, journal_path):
    """The ctime allowance is for a sibling's unlink only: a name whose bytes changed
    is kept (its mtime put back, so only its ctime and its content tell)."""
    src = _pair(tmp_path)
    dst = tmp_path / "dst"
    env = dict(child_env(journal_path), AXLPY_CRASH_AT="move.after_unlink",
               AXLPY_CRASH_HIT="1")
    _child(journal_path, src, dst, "sync", env, move=True)
    (left,) = src.iterdir()
    st = os.stat(left)
    with open(left, "r+b") as f:
        f.write(b"X")
    os.utime(left, ns=(st.st_atime_ns, st.st_mtime_ns))
    kept = [e for e in resume_completed(journal_path, "x")
            if e["event"] == "move-kept-changed-source"]
    assert left.read_bytes() == b"Xirst name"
    assert len(kept) == 1
    assert (dst / "a").read_bytes() == b"first name"
