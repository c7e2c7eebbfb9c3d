"""Journal placement (issue 16 item 5): a journal on a network or parallel filesystem is
detected by statfs magic; by default it is held with ``locking_mode=EXCLUSIVE`` (no
``-shm`` mapping shared between nodes), and with ``AXLPY_JOURNAL_ON_SHARED_FS=refuse`` it
is refused with advice. Real FUSE (powerfs, including a power cut) and injected magics."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
from axlpy import _fstype
from axlpy._journal import JournalDB
from fault_injection.powerfs import PowerLossFS, fuse_unavailable_reason

_FUSE = fuse_unavailable_reason()


@pytest.fixture
def fuse_dir(tmp_path: Path) -> Iterator[tuple[PowerLossFS, Path]]:
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir(mode=0o700)
    fs = PowerLossFS(backing, mnt)
    fs.mount()
    try:
        yield fs, mnt
    finally:
        fs.unmount()


def test_local_disk_is_detected_as_local(tmp_path, monkeypatch):
    monkeypatch.delenv(_fstype.FAKE_MAGIC_ENV, raising=False)
    info = _fstype.detect(str(tmp_path))
    assert info.magic is not None and not info.shared and info.name == "local"


@pytest.mark.parametrize(("magic", "name"), [(0x6969, "NFS"), (0x0BD00BD0, "Lustre"),
                                             (0x47504653, "GPFS"), (0x19830326, "BeeGFS"),
                                             (0x00C36400, "CephFS"), (0x65735546, "FUSE")])
def test_injected_magic_refused_with_advice(journal_path, monkeypatch, magic, name):
    monkeypatch.setenv(_fstype.FAKE_MAGIC_ENV, hex(magic))
    monkeypatch.setenv(_fstype.POLICY_ENV, "refuse")
    with pytest.raises(axlpy.JournalError) as ei:
        JournalDB(journal_path)
    msg = str(ei.value)
    assert f"on {name} (statfs magic {magic:#x})" in msg and "node-local" in msg
    assert not journal_path.exists()  # nothing created


def test_injected_nfs_magic_uses_exclusive_locking(journal_path, tmp_path, monkeypatch):
    monkeypatch.setenv(_fstype.FAKE_MAGIC_ENV, "0x6969")
    (tmp_path / "src").write_bytes(b"x" * 100_000)
    with axlpy.Journal(journal_path) as j:
        assert j.db.fs.name == "NFS" and j.db.exclusive
        assert j.db.conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        assert j.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        t = j.create("t", "sync")
        t.add(tmp_path / "src", tmp_path / "dst")
        t.dispatch()
        assert not Path(str(journal_path) + "-shm").exists()
    assert (tmp_path / "dst").read_bytes() == b"x" * 100_000


def test_bad_policy_is_a_usage_error(journal_path, monkeypatch):
    monkeypatch.setenv(_fstype.FAKE_MAGIC_ENV, "0x6969")
    monkeypatch.setenv(_fstype.POLICY_ENV, "yolo")
    with pytest.raises(axlpy.UsageError, match="AXLPY_JOURNAL_ON_SHARED_FS"):
        JournalDB(journal_path)


_WORKER = textwrap.dedent(
    """
    import sys, axlpy
    with axlpy.Journal(sys.argv[1]) as j:
        t = j.create("t", "sync")
        t.add(sys.argv[2], sys.argv[3])
        t.dispatch()
        print(t.state.value, j.db.fs.name, j.db.exclusive, flush=True)
        sys.stdin.read()  # hold the journal open until the test kills us
    """
)


@pytest.mark.requires_fuse
@pytest.mark.skipif(_FUSE is not None, reason=f"powerfs needs FUSE: {_FUSE}")
@pytest.mark.parametrize("policy", ["exclusive", "refuse"])
def test_journal_on_real_fuse(fuse_dir, tmp_path, monkeypatch, policy):
    fs, mnt = fuse_dir
    monkeypatch.delenv(_fstype.FAKE_MAGIC_ENV, raising=False)
    jdir = mnt / "journal"
    jdir.mkdir(mode=0o700)
    journal = jdir / "j.db"
    data = os.urandom(300_000)
    (tmp_path / "src").write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env[_fstype.POLICY_ENV] = policy
    p = subprocess.Popen([sys.executable, "-c", _WORKER, str(journal), str(tmp_path / "src"),
                          str(mnt / "dst")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().decode().split()
        if policy == "refuse":
            p.wait(timeout=60)
            err = p.stderr.read().decode() if p.stderr else ""
            assert p.returncode != 0 and "is on FUSE" in err and "node-local" in err, err
            assert not journal.exists()
            return
        assert line == ["COMPLETED", "FUSE", "True"]
        assert not Path(str(journal) + "-shm").exists()
        # another process cannot slip in while the owner holds the journal
        c = sqlite3.connect(journal, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            c.execute("SELECT count(*) FROM transfers").fetchall()
        c.close()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.communicate()
    # its commits were durable (fsynced) even though it never closed: power cut, remount
    fs.power_cut()
    fs.remount()
    assert (mnt / "dst").read_bytes() == data
    with axlpy.Journal(journal, create=False) as j:
        assert j.db.exclusive and j.open("t").state is axlpy.TransferState.COMPLETED
