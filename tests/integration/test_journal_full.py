"""The journal's filesystem fills up (issue 12 item 4), and no sqlite3 or bare OS error
crosses the public API.

The journal lives on a small tmpfs mounted for the test (skipped, with the reason, where
mounting is not permitted); the sources and destinations live elsewhere, so only the
journal runs out of space. The filesystem is filled by a filler file written until
ENOSPC, at a point chosen by the test (a progress callback is the gate), never by timing.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
import axlpy._driver
from axlpy import JournalError, JournalFullError, TransferState

ROOT = Path(__file__).resolve().parents[2]


class SmallFS:
    def __init__(self, mnt: Path) -> None:
        self.mnt = mnt
        self.journal = mnt / "journal.db"
        self.filler = mnt / "filler"

    def fill(self) -> None:
        """Write the filler until the filesystem has no free page left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096):
                while True:
                    try:
                        os.write(fd, b"\xff" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        st = os.statvfs(self.mnt)
        assert st.f_bfree * st.f_frsize < 4096, "the filesystem is not full"

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFS]:
    mnt = tmp_path / "jfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the journal: {r.stderr.strip()}")
    try:
        yield SmallFS(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _tree(root: Path, n: int, size: int = 1000) -> Path:
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / "sub" / f"file-with-a-long-name-{i:05d}.bin").write_bytes(
            os.urandom(size))
    return root


def _assert_mapped(exc: BaseException, mnt: Path) -> None:
    assert isinstance(exc, JournalFullError), repr(exc)
    assert exc.mount == str(mnt)
    msg = str(exc)
    assert "\n" not in msg
    assert f"Free space on {mnt}" in msg
    assert "restore" not in msg
    assert isinstance(exc.__cause__, sqlite3.Error | OSError)


def test_failed_add_leaves_no_half_made_transfer(small_fs, tmp_path, monkeypatch):
    # Publish in groups of 256 files, not "256 files or 0.1 s": the journal's WAL grows by
    # one set of pages per group commit (about 0.8 MB here), and on a loaded machine the
    # time rule made so many groups that the WAL outgrew the 2 MB filesystem.
    monkeypatch.setattr(axlpy._driver, "_GROUP_SECONDS", 1e9)
    src = _tree(tmp_path / "src", 400)
    j = axlpy.Journal(small_fs.journal)
    t = j.create("x", "sync")
    options_before = j.db.transfer("x").options
    small_fs.fill()
    with pytest.raises(axlpy.AxlError) as ei:
        t.add(src, tmp_path / "dst")
    _assert_mapped(ei.value, small_fs.mnt)
    assert not ei.value.resumable
    assert "make the call again" in str(ei.value)
    # Nothing of the add was committed: no rows, and the options (roots, adds) unchanged.
    assert j.db.files(t._row.id) == []
    assert j.db.transfer("x").options == options_before
    small_fs.free()
    assert t.add(src, tmp_path / "dst") == 402
    t.dispatch()
    assert t.state is TransferState.COMPLETED
    j.close()


@pytest.mark.parametrize("ttype", ["sync", "default"])
def test_journal_full_mid_transfer_is_resumable(small_fs, tmp_path, ttype):
    src = _tree(tmp_path / "src", 60, 20_000)
    dst = tmp_path / "dst"
    filled = []

    def on_progress(p: object) -> None:
        if not filled:  # the gate: fill the journal's filesystem once copying is under way
            filled.append(True)
            small_fs.fill()

    j = axlpy.Journal(small_fs.journal)
    t = j.create("x", ttype, on_progress=on_progress)
    t.add(src, dst)
    with pytest.raises(axlpy.AxlError) as ei:
        t.dispatch()
        t.wait()
    assert filled
    _assert_mapped(ei.value, small_fs.mnt)
    assert ei.value.resumable
    assert ei.value.transfer == "x"
    assert "resume transfer 'x'" in str(ei.value)
    j.close()
    small_fs.free()
    with axlpy.Journal(small_fs.journal) as j2:
        t2 = j2.open("x")
        t2.resume()
        t2.wait()
        assert t2.state is TransferState.COMPLETED
    for f in (src / "sub").iterdir():
        assert (dst / "sub" / f.name).read_bytes() == f.read_bytes()


def test_opening_on_a_full_filesystem_is_not_called_corrupt(small_fs):
    axlpy.Journal(small_fs.journal).close()  # closed: SQLite removed -wal and -shm
    small_fs.fill()
    with pytest.raises(axlpy.AxlError) as ei:
        axlpy.Journal(small_fs.journal).names()
    _assert_mapped(ei.value, small_fs.mnt)


def _axlpy(journal: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env.update(AXLPY_JOURNAL=str(journal),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "axlpy", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert "sqlite3" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("axlpy: error:")]
    assert len(lines) == 1, r.stderr
    assert "restore" not in lines[0]
    return lines[0]


def test_cli_on_a_full_journal_filesystem(small_fs, tmp_path):
    src = _tree(tmp_path / "src", 30, 20_000)
    axlpy.Journal(small_fs.journal).close()
    small_fs.fill()
    line = _one_error_line(_axlpy(small_fs.journal, "cp", "--progress", "none",
                                  src, tmp_path / "dst"))
    assert f"free space on {small_fs.mnt}, then run `axlpy cp --progress none" in line

    # A transfer left DISPATCHED by a full journal: resume says to free space and resume.
    # A transfer left DISPATCHED by a process that hit the full journal and exited.
    small_fs.free()
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import axlpy
        from test_journal_full import SmallFS
        from pathlib import Path
        fs = SmallFS(Path({str(small_fs.mnt)!r}))
        filled = []
        def on_progress(p):
            if not filled:
                filled.append(True)
                fs.fill()
        t = axlpy.Journal(fs.journal).create("y", "sync", on_progress=on_progress)
        t.add({str(src)!r}, {str(tmp_path / "dst-y")!r})
        try:
            t.dispatch()
        except axlpy.JournalFullError:
            sys.exit(7)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 7, r.stderr
    line = _one_error_line(_axlpy(small_fs.journal, "resume", "--progress", "none", "y"))
    assert f"free space on {small_fs.mnt}, then `axlpy resume --journal" in line
    assert line.endswith(" y`")
    small_fs.free()
    r = _axlpy(small_fs.journal, "resume", "--progress", "none", "y")
    assert r.returncode == 0, r.stderr
    r = _axlpy(small_fs.journal, "verify", "y")
    assert r.returncode == 0, r.stdout + r.stderr


def test_never_dispatched_transfer_advice_is_coherent(small_fs, tmp_path):
    """A transfer left CREATED with no files (its add failed on a full journal):
    ``resume`` refuses it and ``verify`` does not advise resume; both name ``free``."""
    src = _tree(tmp_path / "src", 400)
    with axlpy.Journal(small_fs.journal) as j:
        t = j.create("z", "sync")
        small_fs.fill()
        with pytest.raises(JournalFullError):
            t.add(src, tmp_path / "dst")
    small_fs.free()
    r = _axlpy(small_fs.journal, "resume", "z")
    assert r.returncode == 2, r.stderr
    assert "never dispatched" in r.stderr and "`axlpy free" in r.stderr
    r = _axlpy(small_fs.journal, "verify", "z")
    assert "resume" not in r.stdout + r.stderr
    assert "`axlpy free" in r.stdout + r.stderr
    r = _axlpy(small_fs.journal, "free", "z")
    assert r.returncode == 0, r.stderr


# -- no raw sqlite3 / OS error crosses the public API -----------------------------------


def test_journal_path_is_a_directory(tmp_path):
    d = tmp_path / "state"
    (d / "journal.db").mkdir(parents=True, mode=0o700)
    os.chmod(d, 0o700)
    with pytest.raises(JournalError, match=r"journal\.db") as ei:
        axlpy.Journal(d / "journal.db")
    assert not isinstance(ei.value, OSError)


def test_journal_directory_cannot_be_created(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    # root ignores modes: make the parent a file, so makedirs fails for anyone
    (ro / "notadir").write_bytes(b"")
    with pytest.raises(JournalError, match="notadir") as ei:
        axlpy.Journal(ro / "notadir" / "journal.db")
    assert not isinstance(ei.value, OSError)


def test_busy_and_full_are_journal_errors():
    assert issubclass(axlpy.JournalBusyError, JournalError)
    assert issubclass(axlpy.JournalBusyError, TimeoutError)
    assert issubclass(JournalFullError, JournalError)
    assert not issubclass(JournalFullError, OSError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), axlpy.JournalBusyError),
        (sqlite3.DatabaseError("file is not a database"), JournalError),
        (sqlite3.OperationalError("disk I/O error"), JournalError),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), JournalError),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), JournalError),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/j"), JournalError),
        (PermissionError(errno.EACCES, "Permission denied", "/nonexistent"), JournalError),
        (OSError(errno.EIO, "Input/output error"), JournalError),
    ],
)
def test_every_error_from_below_is_mapped(tmp_path, exc, expected):
    """The boundary's mapping is complete: each sqlite3 class and common OSErrors."""
    from axlpy._boundary import ErrorContext, map_error

    out = map_error(exc, ErrorContext(str(tmp_path / "j.db"), 1.0))
    assert type(out) is expected
    assert str(tmp_path / "j.db") in str(out)
    assert "\n" not in str(out)


def test_wait_timeout_is_not_mapped(tmp_path):
    """``wait(timeout=)`` running out raises the builtin TimeoutError, as documented."""
    from axlpy._boundary import ErrorContext, map_error

    exc = TimeoutError("transfer 't' still running")
    assert map_error(exc, ErrorContext(str(tmp_path / "j.db"), 1.0, "t")) is exc


def test_every_sqlite3_error_class_is_mapped(tmp_path):
    from axlpy._boundary import ErrorContext, map_error

    classes = [c for c in vars(sqlite3).values()
               if isinstance(c, type) and issubclass(c, sqlite3.Error)]
    assert len(classes) >= 8
    for c in classes:
        out = map_error(c("boom"), ErrorContext(str(tmp_path / "j.db"), 1.0))
        assert isinstance(out, axlpy.AxlError), c
