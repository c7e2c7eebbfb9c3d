"""Rule 3: the journal is private (0600, in a directory only its owner can write), a shared
one is refused unless allowed, and a resume or cancel never acts outside the destination
roots recorded at create time, whatever a journal edited with sqlite3 says."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile

import pytest
from sec_helpers import edit_journal, final_files, run_child, snapshot, temps

import axlpy

T = axlpy.TransferState


# -- privacy ------------------------------------------------------------------------------


def test_new_journal_is_0600_even_with_umask_0(tmp_path):
    d = tmp_path / "j"
    d.mkdir(mode=0o700)
    old = os.umask(0)
    try:
        with axlpy.Journal(d / "journal.db") as j:
            t = j.create("t", "sync")
            s = tmp_path / "s"
            s.write_bytes(b"x")
            t.add(s, tmp_path / "o")
            t.dispatch()
            for name in os.listdir(d):  # journal.db, -wal, -shm
                mode = stat.S_IMODE(os.stat(d / name).st_mode)
                assert mode & 0o077 == 0, f"{name} has mode {mode:o}"
    finally:
        os.umask(old)


def test_missing_journal_directory_is_created_private(tmp_path):
    with axlpy.Journal(tmp_path / "new" / "deeper" / "j.db"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "deeper").st_mode) & 0o077 == 0


@pytest.mark.parametrize(("dir_mode", "file_mode", "match"), [
    (0o777, None, "directory of journal .* writable by other users"),
    (0o1777, None, "directory of journal .* writable by other users"),  # sticky /tmp-like
    (0o770, None, "directory of journal .* writable by other users"),
    (0o700, 0o666, "journal .* writable by other users"),
    (0o700, 0o620, "journal .* writable by other users"),
])
def test_shared_journal_is_refused(tmp_path, dir_mode, file_mode, match):
    d = tmp_path / "j"
    d.mkdir()
    p = d / "journal.db"
    if file_mode is not None:
        axlpy.Journal(p).close()
        os.chmod(p, file_mode)
    os.chmod(d, dir_mode)
    with pytest.raises(axlpy.SecurityError, match=match):
        axlpy.Journal(p)
    if file_mode is None:
        assert not p.exists()  # refused before creating anything


def test_journal_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the journal to another uid")
    d = tmp_path / "j"
    d.mkdir(mode=0o700)
    p = d / "journal.db"
    axlpy.Journal(p).close()
    os.chown(p, 12345, 12345)
    with pytest.raises(axlpy.SecurityError, match="owned by uid 12345"):
        axlpy.Journal(p)
    os.chown(p, 0, 0)
    os.chown(d, 12345, 12345)
    with pytest.raises(axlpy.SecurityError, match="owned by uid 12345"):
        axlpy.Journal(p)


def test_shared_journal_allowed_by_option_or_environment(tmp_path, monkeypatch):
    d = tmp_path / "j"
    d.mkdir()
    os.chmod(d, 0o777)
    axlpy.Journal(d / "a.db", allow_shared=True).close()
    monkeypatch.setenv("AXLPY_ALLOW_SHARED_JOURNAL", "1")
    axlpy.Journal(d / "b.db").close()
    monkeypatch.setenv("AXLPY_ALLOW_SHARED_JOURNAL", "0")
    with pytest.raises(axlpy.SecurityError):
        axlpy.Journal(d / "c.db")


def _as_user(uid: int, gid: int, fn) -> tuple[int, str]:
    """Run ``fn()`` in a forked child that dropped root for ``uid``/``gid`` (modules
    already imported, so no interpreter needs to be readable by that user). Returns the
    child's exit status and what ``fn`` returned (or the error it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = str(fn())
        except BaseException as exc:
            out, code = f"{type(exc).__name__}: {exc}", 1
        os.write(w, out.encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_as_a_non_root_user():
    """Root bypasses permission checks; as a real user the journal is created 0600 and
    another user's journal (in a directory we may write) is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the unprivileged user 'nobody'")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    base = tempfile.mkdtemp(prefix="axlpy-nonroot-", dir="/tmp")  # reachable by nobody
    try:
        os.chmod(base, 0o755)
        mine, theirs = os.path.join(base, "mine"), os.path.join(base, "theirs")
        os.mkdir(mine, 0o700)
        os.mkdir(theirs, 0o700)
        axlpy.Journal(os.path.join(theirs, "j.db")).close()
        os.chown(mine, nobody.pw_uid, nobody.pw_gid)
        os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
        os.chown(os.path.join(theirs, "j.db"), 12345, 12345)  # a third user's journal

        def create() -> str:
            with axlpy.Journal(os.path.join(mine, "j.db")):
                pass
            st = os.stat(os.path.join(mine, "j.db"))
            return f"{stat.S_IMODE(st.st_mode):o} {st.st_uid == os.getuid()}"

        assert _as_user(nobody.pw_uid, nobody.pw_gid, create) == (0, "600 True")
        code, out = _as_user(nobody.pw_uid, nobody.pw_gid,
                             lambda: axlpy.Journal(os.path.join(theirs, "j.db")))
        assert code == 1 and out.startswith("SecurityError") and "uid 12345" in out
    finally:
        shutil.rmtree(base)


# -- a journal edited between dispatch and resume -------------------------------------------


@pytest.fixture
def crashed(journal_path, tmp_path):
    """A transfer of a small tree killed right after its dispatch was committed."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"a" * 5000)
    (src / "b").write_bytes(b"b" * 3000)
    dst = tmp_path / "dst"
    run_child(journal_path, src, dst, crash_at="dispatch.after_commit")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a").write_bytes(b"precious")
    (victim / "passwd").write_bytes(b"root:x:0:0")
    return journal_path, src, dst, victim


def _file_id(journal_path, rel: bytes) -> int:
    import sqlite3

    conn = sqlite3.connect(journal_path)
    try:
        return int(conn.execute("SELECT id FROM files WHERE rel = ?", (rel,)).fetchone()[0])
    finally:
        conn.close()


def _tamper(journal_path, victim, how: str) -> None:
    fid = _file_id(journal_path, b"sub/a")
    v = os.fsencode(victim)
    sql = {
        "dotdot": ("UPDATE files SET rel = ?, dst = root || '/' || ? WHERE id = ?",
                   (b"sub/../../victim/a", b"sub/../../victim/a", fid)),
        "absolute-rel": ("UPDATE files SET rel = ?, dst = ? WHERE id = ?",
                         (v + b"/a", v + b"/a", fid)),
        "root-elsewhere": ("UPDATE files SET root = ?, rel = ?, dst = ? WHERE id = ?",
                           (v, b"a", v + b"/a", fid)),
        "dst-elsewhere": ("UPDATE files SET dst = ? WHERE id = ?", (v + b"/a", fid)),
        "tmp-path": ("UPDATE files SET tmp = ? WHERE id = ?",
                     (b"../../victim/passwd", fid)),
        "tmp-other-name": ("UPDATE files SET tmp = ? WHERE id = ?", (b"b", fid)),
        "unnormalised-root": ("UPDATE files SET root = root || '/sub/..', "
                              "dst = root || '/sub/../' || rel WHERE id = ?", (fid,)),
        "roots-dropped": ("UPDATE transfers SET options = json_remove(options, '$.roots')",
                          ()),
    }[how]
    assert edit_journal(journal_path, *sql) == 1


TAMPERINGS = ["dotdot", "absolute-rel", "root-elsewhere", "dst-elsewhere", "tmp-path",
              "tmp-other-name", "unnormalised-root", "roots-dropped"]


@pytest.mark.parametrize("how", TAMPERINGS)
def test_resume_rejects_rows_escaping_the_roots(crashed, how):
    journal_path, _src, dst, victim = crashed
    before = snapshot(victim)
    _tamper(journal_path, victim, how)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        with pytest.raises(axlpy.SecurityError, match="refusing to write"):
            t.resume()
    assert snapshot(victim) == before
    assert final_files(dst) == {}  # nothing was published either


@pytest.mark.parametrize("how", TAMPERINGS)
def test_cancel_rejects_rows_escaping_the_roots(journal_path, tmp_path, how):
    # Killed after the first file was published: cancel would remove published files
    # (verified by CRC), so a row pointing at an identical victim must be refused.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"precious")
    (src / "b").write_bytes(b"b" * 3000)
    dst = tmp_path / "dst"
    run_child(journal_path, src, dst, crash_at="publish.after_commit")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a").write_bytes(b"precious")  # same bytes, same CRC as the published file
    (victim / "passwd").write_bytes(b"root:x:0:0")
    before = snapshot(victim)
    _tamper(journal_path, victim, how)
    with axlpy.Journal(journal_path) as j:
        with pytest.raises(axlpy.SecurityError, match="refusing to write"):
            j.open("x").cancel()
    assert snapshot(victim) == before


def test_resume_refuses_symlinked_parent_planted_after_crash(crashed):
    journal_path, _src, dst, victim = crashed
    before = snapshot(victim)
    dst.mkdir(exist_ok=True)
    os.symlink(victim, dst / "sub")
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        with pytest.raises(axlpy.SecurityError, match="refusing to follow symlink"):
            t.resume()
        # Removing the planted link lets the same transfer finish, in the right place.
        os.unlink(dst / "sub")
        t.resume()
        assert t.state is T.COMPLETED
    assert snapshot(victim) == before
    assert (dst / "sub" / "a").read_bytes() == b"a" * 5000
    assert temps(dst) == []


def test_untampered_resume_completes(crashed):
    journal_path, src, dst, _victim = crashed
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.resume()
        assert t.state is T.COMPLETED
    assert (dst / "sub" / "a").read_bytes() == (src / "sub" / "a").read_bytes()
    shutil.rmtree(dst)
