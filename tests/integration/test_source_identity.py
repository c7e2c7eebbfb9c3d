"""Issue 15.4: a source rewritten at the same size with its mtime put back is caught.

Size and mtime are not an identity: anyone who can write a file can put its mtime back
(``touch -d``, ``os.utime``). ``st_ctime_ns`` cannot be set by a user, ``st_ino``/``st_dev``
tell a file replaced by a rename, and the journal holds the CRC32C of every verified
extent, so resume can re-read those extents of the source before trusting a temp's
prefix. Every test here builds the forged rewrite on real files and a real journal.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from axlpy import TransferState as T
from tests.cli.clitools import child_env, run_sub

MIB = 1 << 20

CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", "sync", chunk_size=1 << 20, extent_size=1 << 20)
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
""")


def _killed_after_first_extent(journal: Path, src: Path, dst: Path) -> None:
    """A transfer of ``src`` killed right after its first extent was journaled."""
    env = dict(child_env(journal), AXLPY_CRASH_AT="stage.after_extent_commit",
               AXLPY_CRASH_HIT="1")
    p = subprocess.run([sys.executable, "-c", CHILD, str(journal), str(src), str(dst)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr


def _forge_rewrite(src: Path) -> bytes:
    """Rewrite the first and last MiB at the same size, then put the mtime back."""
    st = os.stat(src)
    with open(src, "r+b") as f:
        f.write(b"\x11" * MIB)
        f.seek(st.st_size - MIB)
        f.write(b"\x22" * MIB)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(src)
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return src.read_bytes()


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    journal = tmp_path / "j" / "journal.db"
    src = tmp_path / "src.bin"
    old = os.urandom(4 * MIB)
    src.write_bytes(old)
    dst = tmp_path / "out" / "dst.bin"
    _killed_after_first_extent(journal, src, dst)
    return journal, src, dst, old


def _resume_refused(journal: Path) -> axlpy.SourceChangedError:
    """Resume transfer "x": it must raise SourceChangedError (returned) and end FAILED."""
    with axlpy.Journal(journal) as j:
        t = j.open("x")
        with pytest.raises(axlpy.SourceChangedError) as info:
            t.resume()
            t.wait()
        assert t.state is T.FAILED
    return info.value


def _forge_journal_ctime(journal: Path, src: Path) -> None:
    """What a filesystem whose ctime did not move would show (coarse timestamps, or a
    journal written before identity was recorded): the recorded ctime equals the
    source's current one, so only the extent re-read can tell."""
    st = os.stat(src)
    c = sqlite3.connect(journal)
    with c:
        n = c.execute("UPDATE files SET src_ctime_ns = ? WHERE kind = 'file'",
                      (st.st_ctime_ns,)).rowcount
    c.close()
    assert n == 1


def test_forged_mtime_rewrite_fails_resume_cli(tmp_path):
    """The issue's reproduction, through the CLI: resume must not exit 0 and publish a
    mix of old and new bytes, and verify must not say OK."""
    journal, src, dst, old = _setup(tmp_path)
    new = _forge_rewrite(src)
    r = run_sub(journal, "resume", "x", "--progress", "none")
    assert r.code != 0, (r.out, r.err)
    assert "changed" in r.err and "ctime" in r.err, r.err
    assert not dst.exists() or dst.read_bytes() in (old, new)
    assert not dst.exists()
    v = run_sub(journal, "verify", "x")
    assert v.code != 0
    assert "OK" not in v.out.split(":")[0]


def test_forged_rewrite_raises_source_changed_naming_ctime(tmp_path):
    journal, src, dst, _ = _setup(tmp_path)
    _forge_rewrite(src)
    err = _resume_refused(journal)
    assert "ctime" in str(err)
    assert "ctime" in err.changed
    assert err.path == str(src)
    assert not dst.exists()


def test_extent_reread_catches_rewrite_when_ctime_matches(tmp_path):
    journal, src, dst, _ = _setup(tmp_path)
    _forge_rewrite(src)
    _forge_journal_ctime(journal, src)
    err = _resume_refused(journal)
    assert "content" in err.changed
    assert "extent 0" in str(err)
    assert not dst.exists()


def test_extent_reread_keeps_prefix_of_unchanged_source(tmp_path):
    journal, _src, dst, old = _setup(tmp_path)
    with axlpy.Journal(journal) as j:
        t = j.open("x")
        t.resume()
        assert t.state is T.COMPLETED
    assert dst.read_bytes() == old


def test_no_recheck_source_skips_the_reread(tmp_path):
    """``recheck_source=False`` trusts ctime/inode alone: with a ctime that did not move
    (forged here) the rewrite goes unnoticed, which is what the option trades away."""
    journal, src, _dst, _ = _setup(tmp_path)
    _forge_rewrite(src)
    _forge_journal_ctime(journal, src)
    with axlpy.Journal(journal) as j:
        t = j.open("x")
        t.resume(recheck_source=False)
        assert t.state is T.COMPLETED


def test_no_recheck_source_cli_option(tmp_path):
    journal, _src, dst, old = _setup(tmp_path)
    r = run_sub(journal, "resume", "x", "--no-recheck-source", "--progress", "none")
    assert r.code == 0, r.err
    assert dst.read_bytes() == old


def test_source_replaced_by_rename_is_caught_on_resume(tmp_path):
    """Same size, same mtime, new inode (a replace-by-rename): the inode names it."""
    journal, src, dst, old = _setup(tmp_path)
    st = os.stat(src)
    repl = tmp_path / "repl"
    repl.write_bytes(old[:MIB] + os.urandom(3 * MIB))
    os.utime(repl, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(repl, src)
    assert "inode" in _resume_refused(journal).changed
    assert not dst.exists()


def _past_ctime_tick(src: Path) -> None:
    """Gate: the kernel's (coarse) timestamp clock has moved past ``src``'s ctime, so
    a change made from now on gives it a new ctime. Waits on the clock itself (a probe
    file's ctime), not for a time."""
    probe = src.with_name(src.name + ".tick")
    probe.write_bytes(b"")
    while os.stat(probe).st_ctime_ns <= os.stat(src).st_ctime_ns:
        os.chmod(probe, 0o600 ^ (os.stat(probe).st_mode & 0o100))
    probe.unlink()


def test_ctime_change_during_copy_fails_at_end_of_file(tmp_path, journal_path):
    """A source changed while it is copied (here chmod: only its ctime moves) fails at
    the end-of-file check; nothing is published."""
    src = tmp_path / "s"
    src.write_bytes(os.urandom(3 * MIB))
    dst = tmp_path / "d"
    done = []

    def on_progress(p: object) -> None:
        # SYNC: called in the copying thread after a chunk, deterministic.
        if not done:
            done.append(1)
            os.chmod(src, 0o640)

    _past_ctime_tick(src)
    with axlpy.Journal(journal_path) as j:
        t = j.create("c", "sync", chunk_size=MIB, extent_size=MIB, on_progress=on_progress)
        t.add(src, dst)
        with pytest.raises(axlpy.SourceChangedError) as info:
            t.dispatch()
        assert done
        assert "ctime" in info.value.changed
        assert t.state is T.FAILED
    assert not dst.exists()


def test_dispatch_records_identity(tmp_path, journal_path):
    src = tmp_path / "s"
    src.write_bytes(b"abc")
    with axlpy.Journal(journal_path) as j:
        t = j.create("i", "sync")
        t.add(src, tmp_path / "d")
        t.dispatch()
        (row,) = [r for r in j.db.files(t._row.id) if r.kind == "file"]
    st = os.stat(src)
    assert (row.ctime_ns, row.ino, row.dev) == (st.st_ctime_ns, st.st_ino, st.st_dev)
