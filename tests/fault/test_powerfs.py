"""powerfs: what survives a simulated power cut, checked with real files and real SQLite.

Each test mounts powerfs over ``tmp_path/backing`` at ``tmp_path/mnt``, does real syscalls on the
mount, cuts the power, and then looks at the backing directory (which holds exactly the durable
state) or at a fresh remount.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fault_injection.powerfs import (  # noqa: E402
    PowerFSError,
    PowerLossFS,
    fuse_unavailable_reason,
)

_UNAVAILABLE = fuse_unavailable_reason()
pytestmark = [
    pytest.mark.requires_fuse,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"powerfs needs FUSE: {_UNAVAILABLE}"),
    pytest.mark.timeout(120),
]


# -- helpers -----------------------------------------------------------------------------------


def write(path: Path, data: bytes, *, fsync: bool, flags: int = os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root``: file content, ``"<dir>"`` or ``"-> target"``."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = f"-> {os.readlink(full)}"
            elif full.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = full.read_bytes()
    return out


def powerfs_pids(mountpoint: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fault_injection.powerfs" in cmdline and os.fsencode(mountpoint) in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "backing"
    path.mkdir()
    return path


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    return tmp_path / "mnt"


@pytest.fixture
def fs(backing: Path, mnt: Path) -> Iterator[PowerLossFS]:
    powerfs = PowerLossFS(backing, mnt)
    powerfs.mount()
    yield powerfs
    powerfs.unmount()
    assert not os.path.ismount(mnt)


# -- 1. file data needs fsync ------------------------------------------------------------------


def test_new_file_without_fsync_is_gone(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    write(mnt / "a", b"data", fsync=False)
    fsync_dir(mnt)  # the name is durable, the data is not
    write(mnt / "b", b"data", fsync=False)  # neither is durable
    assert fs.status() == {"dirty_dirs": 1, "dirty_files": 2}
    fs.power_cut()
    assert tree(backing) == {"a": b""}


def test_overwrite_without_fsync_keeps_old_content(backing: Path, mnt: Path) -> None:
    (backing / "old").write_bytes(b"old content")  # on disk before the mount: durable
    (backing / "trunc").write_bytes(b"0123456789")
    (backing / "grow").write_bytes(b"abc")
    with PowerLossFS(backing, mnt) as fs:
        write(mnt / "old", b"new", fsync=False)  # O_TRUNC + write
        os.truncate(mnt / "trunc", 3)
        with open(mnt / "grow", "r+b") as f:
            f.seek(10)
            f.write(b"xyz")  # pwrite past the end
        assert (mnt / "old").read_bytes() == b"new"
        fs.power_cut()
    assert tree(backing) == {"old": b"old content", "trunc": b"0123456789", "grow": b"abc"}


def test_fsync_keeps_last_synced_content(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    fd = os.open(mnt / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.pwrite(fd, b"AAAA", 0)
    os.pwrite(fd, b"BB", 8)
    os.fdatasync(fd)
    os.pwrite(fd, b"CC", 2)  # after the last sync: lost
    os.close(fd)
    fsync_dir(mnt)
    fs.power_cut()
    assert (backing / "f").read_bytes() == b"AAAA\0\0\0\0BB"
    assert (backing / "f").stat().st_mode & 0o777 == 0o600


# -- 2./3. a new name needs fsync of its directory ---------------------------------------------


@pytest.mark.parametrize(
    ("dir_fsync", "expected"),
    [(False, {}), (True, {"ckpt": b"payload"})],
)
def test_new_file_needs_directory_fsync(
    fs: PowerLossFS, backing: Path, mnt: Path, dir_fsync: bool, expected: dict[str, bytes]
) -> None:
    write(mnt / "ckpt", b"payload", fsync=True)
    if dir_fsync:
        fsync_dir(mnt)
    fs.power_cut()
    assert tree(backing) == expected


def test_new_directory_needs_its_parent_fsynced(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    (mnt / "a" / "b").mkdir(parents=True)
    write(mnt / "a" / "b" / "f", b"x", fsync=True)
    fsync_dir(mnt / "a" / "b")
    fsync_dir(mnt / "a")  # a/b and a/b/f are durable below a, but "a" itself is not
    fs.power_cut()
    assert tree(backing) == {}


def test_full_publish_sequence_survives(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    (mnt / "out").mkdir()
    fsync_dir(mnt)
    write(mnt / "out" / "ckpt.tmp", b"payload", fsync=True, flags=os.O_CREAT | os.O_EXCL)
    os.rename(mnt / "out" / "ckpt.tmp", mnt / "out" / "ckpt")
    fsync_dir(mnt / "out")
    os.symlink("ckpt", mnt / "out" / "latest")
    os.link(mnt / "out" / "ckpt", mnt / "out" / "ckpt.hard")
    fsync_dir(mnt / "out")
    assert fs.status() == {"dirty_dirs": 0, "dirty_files": 0}
    fs.power_cut()
    assert tree(backing) == {
        "out": "<dir>",
        "out/ckpt": b"payload",
        "out/ckpt.hard": b"payload",
        "out/latest": "-> ckpt",
    }
    assert (backing / "out" / "ckpt").stat().st_ino == (backing / "out" / "ckpt.hard").stat().st_ino
    fs.remount()
    assert (mnt / "out" / "latest").read_bytes() == b"payload"


def test_inode_numbers_and_ctimes_survive_a_cut(fs: PowerLossFS, mnt: Path) -> None:
    """As on a real disk: an inode keeps its number across a cut (hard links share it), and the
    ctime of its last durable state until its next change (axlpy's resume checks both)."""
    write(mnt / "kept", b"kept", fsync=True)
    os.link(mnt / "kept", mnt / "kept.hard")
    write(mnt / "synced", b"synced", fsync=True)
    fsync_dir(mnt)
    fs.power_cut()
    fs.remount()  # now "kept" is untouched at mount, as a move's source is
    kept = os.stat(mnt / "kept")
    synced = os.stat(mnt / "synced")
    write(mnt / "synced", b" and lost", fsync=False, flags=os.O_APPEND)
    assert os.stat(mnt / "synced").st_ctime_ns != synced.st_ctime_ns
    for _ in range(2):  # and again: what a cut keeps, the next cut keeps too
        fs.power_cut()
        fs.remount()
        now = os.stat(mnt / "kept")
        # not st_dev: a FUSE mount gets an anonymous device number per mount, which another
        # mount (a parallel sweep) may have taken meanwhile — as on a real remount or
        # reboot, which is why axlpy's identity check tolerates a device change alone
        assert (now.st_ino, now.st_ctime_ns) == (kept.st_ino, kept.st_ctime_ns)
        assert os.stat(mnt / "kept.hard").st_ino == kept.st_ino
        assert (mnt / "synced").read_bytes() == b"synced"
        again = os.stat(mnt / "synced")
        assert (again.st_ino, again.st_ctime_ns) == (synced.st_ino, synced.st_ctime_ns)
        assert {e.name: e.inode() for e in os.scandir(mnt)} == {
            "kept": kept.st_ino, "kept.hard": kept.st_ino, "synced": synced.st_ino}
    os.chmod(mnt / "kept", 0o600)  # a change in the new mount moves the ctime on
    changed = os.stat(mnt / "kept")
    assert changed.st_ino == kept.st_ino and changed.st_ctime_ns > kept.st_ctime_ns
    write(mnt / "new", b"new", fsync=True)
    assert os.stat(mnt / "new").st_ino not in (kept.st_ino, synced.st_ino)


# -- 4. rename over an old file ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dir_fsync", "expected"),
    [
        (False, {"ckpt": b"old"}),  # the rename and the temp's name are both lost
        (True, {"ckpt": b"new content"}),
    ],
)
def test_rename_over_old_file(
    backing: Path, mnt: Path, dir_fsync: bool, expected: dict[str, bytes]
) -> None:
    (backing / "ckpt").write_bytes(b"old")
    with PowerLossFS(backing, mnt) as fs:
        write(mnt / "ckpt.tmp", b"new content", fsync=True, flags=os.O_CREAT | os.O_EXCL)
        os.replace(mnt / "ckpt.tmp", mnt / "ckpt")
        if dir_fsync:
            fsync_dir(mnt)
        fs.power_cut()
    assert tree(backing) == expected


def test_rename_of_unsynced_temp_never_publishes_partial_data(
    fs: PowerLossFS, backing: Path, mnt: Path
) -> None:
    write(mnt / "ckpt", b"old", fsync=True)
    fsync_dir(mnt)
    write(mnt / "ckpt.tmp", b"new content", fsync=False)  # the bug: no fsync before rename
    os.replace(mnt / "ckpt.tmp", mnt / "ckpt")
    fsync_dir(mnt)
    fs.power_cut()
    assert tree(backing) == {"ckpt": b""}  # the name moved, the data did not: caught


@pytest.mark.parametrize(
    ("synced", "expected"),
    [
        ("src", {"src": "<dir>", "dst": "<dir>"}),  # gone from src, never arrived in dst
        ("dst", {"src": "<dir>", "src/f": b"x", "dst": "<dir>", "dst/f": b"x"}),
        ("both", {"src": "<dir>", "dst": "<dir>", "dst/f": b"x"}),
    ],
)
def test_cross_directory_rename_needs_both_directories(
    fs: PowerLossFS, backing: Path, mnt: Path, synced: str, expected: dict[str, bytes | str]
) -> None:
    (mnt / "src").mkdir()
    (mnt / "dst").mkdir()
    write(mnt / "src" / "f", b"x", fsync=True)
    for d in ("src", "dst", "."):
        fsync_dir(mnt / d)
    os.rename(mnt / "src" / "f", mnt / "dst" / "f")
    if synced in ("src", "both"):
        fsync_dir(mnt / "src")
    if synced in ("dst", "both"):
        fsync_dir(mnt / "dst")
    fs.power_cut()
    assert tree(backing) == expected


def test_directory_rename_keeps_its_contents(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    (mnt / "d").mkdir()
    write(mnt / "d" / "f", b"x", fsync=True)
    fsync_dir(mnt / "d")
    fsync_dir(mnt)
    (mnt / "e").mkdir()
    fsync_dir(mnt)
    os.rename(mnt / "d", mnt / "e")  # over an empty directory
    assert os.listdir(mnt / "e") == ["f"]
    write(mnt / "e" / "g", b"y", fsync=True)  # new name in the moved directory: not durable
    fsync_dir(mnt)
    fs.power_cut()
    assert tree(backing) == {"e": "<dir>", "e/f": b"x"}


# -- 5. unlink ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dir_fsync", "expected"),
    [(False, {"victim": b"keep me", "d": "<dir>"}), (True, {})],
)
def test_unlink_and_rmdir_need_directory_fsync(
    backing: Path, mnt: Path, dir_fsync: bool, expected: dict[str, bytes | str]
) -> None:
    (backing / "victim").write_bytes(b"keep me")
    (backing / "d").mkdir()
    with PowerLossFS(backing, mnt) as fs:
        os.unlink(mnt / "victim")
        os.rmdir(mnt / "d")
        assert not (mnt / "victim").exists()
        if dir_fsync:
            fsync_dir(mnt)
        fs.power_cut()
    assert tree(backing) == expected


def test_fsync_through_fd_of_unlinked_file_counts(
    fs: PowerLossFS, backing: Path, mnt: Path
) -> None:
    write(mnt / "f", b"one", fsync=True)
    fsync_dir(mnt)
    fd = os.open(mnt / "f", os.O_RDWR)
    os.unlink(mnt / "f")  # not durable: the name comes back ...
    os.pwrite(fd, b"two", 0)
    os.fsync(fd)  # ... with the data of the last fsync, made through the open descriptor
    os.close(fd)
    fs.power_cut()
    assert tree(backing) == {"f": b"two"}


# -- 6. SQLite ---------------------------------------------------------------------------------

_SQLITE_WORKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    mode = sys.argv[4]
    assert con.execute("PRAGMA journal_mode=" + mode).fetchone()[0] == mode.lower()
    con.execute("PRAGMA synchronous=" + sys.argv[2])
    con.execute("CREATE TABLE t(x INTEGER)")
    for i in range(int(sys.argv[3])):
        con.execute("INSERT INTO t VALUES (?)", (i,))  # autocommit: one transaction each
    print("committed", flush=True)
    time.sleep(600)  # killed here, with the connection still open
    """
)


def sqlite_rows(db: Path) -> int | None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(con.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return None
    finally:
        con.close()


@pytest.mark.parametrize(
    ("journal_mode", "synchronous", "cut", "survivors"),
    [
        ("WAL", "FULL", True, 5),
        ("WAL", "NORMAL", False, 5),  # kill -9 alone: the page cache keeps NORMAL's commits
        ("WAL", "NORMAL", True, None),  # power loss: WAL frames never fsynced, all commits lost
        # Rollback journal: SQLite fsyncs the directory after deleting the journal only with
        # EXTRA, so with FULL the hot journal comes back and rolls the last commit back.
        ("DELETE", "FULL", True, 4),
        ("DELETE", "EXTRA", True, 5),
    ],
)
def test_sqlite_commits_after_power_cut(
    fs: PowerLossFS,
    mnt: Path,
    journal_mode: str,
    synchronous: str,
    cut: bool,
    survivors: int | None,
) -> None:
    db = mnt / "journal.db"
    worker = subprocess.Popen(
        [sys.executable, "-c", _SQLITE_WORKER, str(db), synchronous, "5", journal_mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        assert line == b"committed\n", worker.stderr.read() if worker.stderr else b""
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    if cut:
        pending = fs.power_cut()
        assert pending["dirty_files"] >= (1 if synchronous == "NORMAL" else 0)
        fs.remount()
    assert sqlite_rows(db) == survivors


# -- 7. control, unmount, processes ------------------------------------------------------------


def test_clean_unmount_keeps_unsynced_data_and_leaves_no_process(backing: Path, mnt: Path) -> None:
    fs = PowerLossFS(backing, mnt)
    with fs:
        assert os.path.ismount(mnt)
        assert powerfs_pids(mnt) == [fs.pid]
        write(mnt / "f", b"unsynced", fsync=False)
    assert not os.path.ismount(mnt)
    assert powerfs_pids(mnt) == []
    assert tree(backing) == {"f": b"unsynced"}
    assert not fs.state.exists()


def test_busy_unmount_still_stops_the_daemon(backing: Path, mnt: Path) -> None:
    fs = PowerLossFS(backing, mnt)
    fs.mount()
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"kept")
        fs.unmount()  # EBUSY: falls back to a lazy unmount and SIGTERM
        assert not os.path.ismount(mnt)
        assert powerfs_pids(mnt) == []
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    assert tree(backing) == {"f": b"kept"}


def test_power_cut_detaches_and_open_files_fail(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    pid = fs.pid
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fs.power_cut()
        assert not os.path.ismount(mnt)
        assert not fs.mounted
        assert pid is not None
        assert powerfs_pids(mnt) == []
        with pytest.raises(OSError):  # noqa: PT011 - EIO or ENOTCONN, both mean "device gone"
            os.write(fd, b"too late")
    finally:
        with contextlib.suppress(OSError):  # close() flushes, which fails with ENOTCONN
            os.close(fd)
    assert tree(backing) == {}
    with pytest.raises(PowerFSError):
        fs.power_cut()
    fs.remount()
    assert os.listdir(mnt) == []


def test_sync_makes_everything_durable_and_cuts_repeat(
    fs: PowerLossFS, backing: Path, mnt: Path
) -> None:
    write(mnt / "a", b"1", fsync=False)
    (mnt / "d").mkdir()
    write(mnt / "d" / "b", b"2", fsync=False)
    assert fs.sync() == {"dirty_dirs": 2, "dirty_files": 2}
    assert fs.status() == {"dirty_dirs": 0, "dirty_files": 0}
    write(mnt / "a", b"lost", fsync=False)
    os.unlink(mnt / "d" / "b")
    fs.power_cut()
    assert tree(backing) == {"a": b"1", "d": "<dir>", "d/b": b"2"}
    fs.remount()
    write(mnt / "c", b"3", fsync=True)
    fs.power_cut()
    assert tree(backing) == {"a": b"1", "d": "<dir>", "d/b": b"2"}


def test_cli_mount_and_powercut(backing: Path, mnt: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fault_injection.powerfs"]
    daemon = subprocess.Popen(
        [*cmd, "mount", str(backing), str(mnt), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert daemon.stdout is not None
        announced = json.loads(daemon.stdout.readline())
        assert announced == {"control": str(state / "control.sock")}
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert daemon.poll() is None, "powerfs exited"
            assert time.monotonic() < deadline, "powerfs did not mount"
            time.sleep(0.01)
        write(mnt / "f", b"x", fsync=True)
        status = subprocess.run([*cmd, "status", str(state)], env=env, capture_output=True)
        assert json.loads(status.stdout) == {"dirty_dirs": 1, "dirty_files": 0}
        cut = subprocess.run([*cmd, "powercut", str(state)], env=env, capture_output=True)
        assert cut.returncode == 0, cut.stderr
        assert daemon.wait(20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if daemon.stdout is not None:
            daemon.stdout.close()
    assert not os.path.ismount(mnt)
    assert tree(backing) == {}


def test_a_few_mib_in_seconds(fs: PowerLossFS, backing: Path, mnt: Path) -> None:
    payload = os.urandom(4 << 20)
    start = time.monotonic()
    for i in range(3):
        write(mnt / f"shard{i}", payload, fsync=True)
    fsync_dir(mnt)
    fs.power_cut()
    assert time.monotonic() - start < 20
    assert all((backing / f"shard{i}").read_bytes() == payload for i in range(3))
