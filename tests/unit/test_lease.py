"""Ownership across nodes: the owner lease (host, pid, boot id, heartbeat), takeover after
expiry, refusal before it, force, and renewal while running. "Another host" is the host
identity injected through ``AXLPY_HOST_ID``; time is the injectable ``_lease.clock`` or a
heartbeat written into the journal — never a sleep."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import axlpy
from axlpy import _lease
from axlpy._config import Options
from axlpy._journal import JournalDB
from axlpy._lease import HEARTBEAT, Owner
from axlpy._state import TransferState as T
from axlpy.cli import cli

LEASE_S = 60.0


def _dispatched(db: JournalDB, name: str = "t") -> int:
    tid = db.create_transfer(name, "sync", "tok", Options(lease_timeout=LEASE_S))
    db.set_state(tid, T.CREATED, T.DISPATCHED, event="dispatch", owner=Owner.me(LEASE_S))
    return tid


def test_owner_on_another_host_is_refused_until_its_lease_expires(journal_path, monkeypatch):
    t0 = 1_800_000_000_000_000_000
    monkeypatch.setattr(_lease, "clock", lambda: t0)
    monkeypatch.setenv("AXLPY_HOST_ID", "node17")
    db = JournalDB(journal_path)
    tid = _dispatched(db)
    owner = db.owner(tid)
    assert owner is not None and owner.host == "node17" and owner.heartbeat_ns == t0
    assert owner.lease_ns == int(LEASE_S * 1e9) and owner.boot  # boot id recorded
    monkeypatch.setenv("AXLPY_HOST_ID", "node42")
    # one second before expiry: a live owner elsewhere, never taken over without force
    monkeypatch.setattr(_lease, "clock", lambda: t0 + int((LEASE_S - 1) * 1e9))
    with pytest.raises(axlpy.OwnershipError, match=r"node17, lease renewed 59s ago.*force"):
        db.claim(tid, "t")
    assert db.owner(tid) == owner
    # the lease expired: dead wherever its host is; taken over without force
    monkeypatch.setattr(_lease, "clock", lambda: t0 + int((LEASE_S + 1) * 1e9))
    me = db.claim(tid, "t")
    assert me.host == "node42" and db.owner(tid) == me
    ev = [e for e in db.events(tid) if e["event"] == "takeover"]
    assert ev and "node17" in ev[-1]["detail"] and "lease expired" in ev[-1]["detail"]
    db.close()


def test_force_takes_over_a_fresh_lease_on_another_host(journal_path, monkeypatch):
    monkeypatch.setenv("AXLPY_HOST_ID", "node17")
    db = JournalDB(journal_path)
    tid = _dispatched(db)
    monkeypatch.setenv("AXLPY_HOST_ID", "node42")
    with pytest.raises(axlpy.OwnershipError):
        db.claim(tid, "t")
    assert db.claim(tid, "t", force=True).host == "node42"
    assert "forced" in [e for e in db.events(tid) if e["event"] == "takeover"][-1]["detail"]
    db.close()


def test_live_owner_on_this_host_is_never_taken_over(journal_path, monkeypatch):
    db = JournalDB(journal_path)
    tid = _dispatched(db)
    other = Owner(os.getppid(), _lease.host_id(), _lease.process_start(os.getppid()))
    db.conn.execute("UPDATE transfers SET owner_pid = ?, owner_start = ? WHERE id = ?",
                    (other.pid, other.start, tid))
    # even with an expired lease and force: this host can see the process is alive
    monkeypatch.setattr(_lease, "clock", lambda: 2**62)
    for force in (False, True):
        with pytest.raises(axlpy.OwnershipError, match=f"pid {other.pid}"):
            db.claim(tid, "t", force=force)
    db.close()


def test_lease_is_renewed_while_the_transfer_runs(journal_path, tmp_path, monkeypatch):
    (tmp_path / "src").write_bytes(os.urandom(3 << 20))
    seen: list[tuple[int, int | None]] = []
    j = axlpy.Journal(journal_path)

    def on_progress(_p: object) -> None:
        if seen:
            return
        t = j.open("t")
        tick = 1_900_000_000_000_000_000
        monkeypatch.setattr(_lease, "clock", lambda: tick)
        renewed = HEARTBEAT.beat()
        owner = j.db.owner(t._row.id)
        seen.append((renewed, owner.heartbeat_ns if owner else None))

    t = j.create("t", "sync", chunk_size=1 << 20, extent_size=1 << 20, lease_timeout=LEASE_S)
    t._on_progress = on_progress
    t.add(tmp_path / "src", tmp_path / "dst")
    t.dispatch()
    assert seen and seen[0][0] >= 1 and seen[0][1] == 1_900_000_000_000_000_000
    monkeypatch.setattr(_lease, "clock", __import__("time").time_ns)
    assert HEARTBEAT.beat() == 0  # not running any more: nothing held
    assert j.db.owner(t._row.id) is None  # COMPLETED clears the owner
    j.close()


_WRITER = """
import sys, axlpy
with axlpy.Journal(sys.argv[1]) as j:
    t = j.create(sys.argv[2], "sync", chunk_size=1 << 20, extent_size=1 << 20,
                 lease_timeout=120)
    t.add(sys.argv[3], sys.argv[4])
    t.dispatch()
"""


def _killed_on_node17(journal_path: Path, tmp_path: Path, name: str) -> bytes:
    data = os.urandom(5 << 20)
    (tmp_path / f"{name}.src").write_bytes(data)
    env = dict(os.environ, AXLPY_HOST_ID="node17", AXLPY_CRASH_AT="stage.after_extent_commit",
               AXLPY_CRASH_HIT="2")
    p = subprocess.run([sys.executable, "-c", _WRITER, str(journal_path), name,
                        str(tmp_path / f"{name}.src"), str(tmp_path / f"{name}.dst")],
                       env=env, check=False, capture_output=True)
    assert p.returncode == -9, p.stderr
    return data


def _age_heartbeat(journal_path: Path, name: str, seconds: float) -> None:
    c = sqlite3.connect(journal_path)
    with c:
        c.execute("UPDATE transfers SET owner_heartbeat_ns = owner_heartbeat_ns - ?"
                  " WHERE name = ?", (int(seconds * 1e9), name))
    c.close()


def test_transfer_killed_on_another_node_resumes_after_lease_expiry(journal_path, tmp_path,
                                                                     monkeypatch):
    data = _killed_on_node17(journal_path, tmp_path, "ck")
    monkeypatch.setenv("AXLPY_HOST_ID", "node42")
    with axlpy.Journal(journal_path) as j:
        with pytest.raises(axlpy.OwnershipError, match="on host node17"):
            j.open("ck").resume()
        assert j.open("ck").state is T.DISPATCHED
    _age_heartbeat(journal_path, "ck", 121)
    with axlpy.Journal(journal_path) as j:
        t = j.open("ck")
        t.resume()
        t.wait()
    assert (tmp_path / "ck.dst").read_bytes() == data


def test_cli_resume_refuses_then_force_takes_over(journal_path, tmp_path, monkeypatch):
    data = _killed_on_node17(journal_path, tmp_path, "ck")
    env = {"AXLPY_JOURNAL": str(journal_path), "AXLPY_HOST_ID": "node42"}
    r = CliRunner().invoke(cli, ["resume", "ck"], env=env)
    assert r.exit_code != 0 and "node17" in r.output and "--force" in r.output, r.output
    r = CliRunner().invoke(cli, ["resume", "--force", "ck"], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ck.dst").read_bytes() == data


def test_heartbeat_thread_renews_on_its_own():
    """The daemon renews every fifth of the lease by itself (waits for an event)."""
    import threading

    renewed = threading.Event()
    calls: list[int] = []

    class FakeJournal:
        def renew(self, tid: int, owner: Owner) -> bool:
            calls.append(tid)
            renewed.set()
            return True

    fake = FakeJournal()
    owner = Owner(os.getpid(), "h", "s", 0, int(0.5e9))  # lease 0.5 s: beat every 0.1 s
    HEARTBEAT.hold(fake, 7, owner)
    try:
        assert renewed.wait(60), "the heartbeat thread never renewed the lease"
        assert calls[0] == 7
    finally:
        HEARTBEAT.drop(fake, 7)
