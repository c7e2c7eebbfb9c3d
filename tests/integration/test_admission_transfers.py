"""Admission control in the real data path: a URING transfer through an io_uring queue of
depth 2 backs off, splits batches and rolls back a failed submission, and the bytes are
still right; the counters reach the journal, ``axlpy status --json`` and ``cp -v``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import axlpy
from axlpy._admission import EVENT, AdmissionStats
from axlpy.io import FaultyIOQueue, IOOp, IOQueue, IORequest, open_queue
from tests.conftest import requires_uring, tree_bytes, write_tree

KiB = 1024
FAST = {"max_attempts": 4, "base_delay": 0.001, "max_delay": 0.01, "jitter": "none"}


def _files() -> dict[str, bytes]:
    return {f"d/f{i}.bin": os.urandom(200 * KiB + 777 * i) for i in range(4)}


class SubmitFailOnce:
    """Fail one read's submission, chosen while another request is already in the ring,
    so the failure lands part-way through a batch with work in flight (across every
    queue the transfer opens: the predicate is shared)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fired = 0
        self.queues: list[IOQueue] = []

    def factory(self, depth: int) -> IOQueue:
        inner = open_queue("uring", depth=depth)

        def choose(req: IORequest) -> bool:
            with self.lock:
                if self.fired or req.op is not IOOp.READ or inner.in_flight < 1:
                    return False
                self.fired += 1
                return True

        q = FaultyIOQueue(inner, predicate=choose, mode="submit")
        self.queues.append(q)
        return q


@requires_uring
def test_depth2_transfer_backs_off_splits_and_rolls_back(journal, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, _files())
    fail = SubmitFailOnce()
    t = journal.create("adm", "uring", queue_factory=fail.factory, queue_depth=2,
                       chunk_size=64 * KiB, extent_size=128 * KiB, retry=FAST)
    t.add(src, dst)
    t.dispatch()
    t.wait()
    assert t.state is axlpy.TransferState.COMPLETED
    assert tree_bytes(dst) == tree_bytes(src)
    assert fail.fired == 1
    assert all(q.depth == 2 for q in fail.queues)

    stats = t.admission_stats().as_dict()
    # Every read and write (64 KiB each, ~800 KiB of files) went through admission.
    assert stats["admitted"] >= 2 * sum(-(-len(b) // (64 * KiB)) for b in _files().values())
    assert stats["waited"] > 0  # the engine keeps 4 buffers busy on a queue of 2
    assert stats["split"] > 0
    assert stats["rolled_back"] >= 1  # the dropped read's slot was given back
    assert stats["degraded"] == 1
    assert stats["timed_out"] == 0
    # One event, written when staging ended (before COMPLETED), holds the same numbers.
    events = [e for e in journal.db.events(t._row.id) if e["event"] == EVENT]
    assert len(events) == 1
    assert json.loads(events[0]["detail"]) == stats
    assert AdmissionStats.total(journal.db.events(t._row.id)).as_dict() == stats


@requires_uring
def test_counters_in_status_json_and_cp_verbose(tmp_path: Path) -> None:
    """The real CLI, a real io_uring queue of depth 2: ``cp -v`` ends with the admission
    line and ``status --json`` carries the same counters."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, _files())
    jdir = tmp_path / "j"
    jdir.mkdir(mode=0o700)
    env = dict(os.environ, AXLPY_JOURNAL=str(jdir / "j.db"), AXLPY_QUEUE_DEPTH="2",
               AXLPY_CHUNK_SIZE=str(64 * KiB), AXLPY_EXTENT_SIZE=str(128 * KiB))
    cli = [sys.executable, "-m", "axlpy"]
    cp = subprocess.run([*cli, "cp", "-v", "--type", "uring", "--name", "c",
                         "--progress", "lines", str(src), str(dst)],
                        env=env, capture_output=True, text=True, check=False)
    assert cp.returncode == 0, cp.stderr
    assert tree_bytes(dst) == tree_bytes(src)
    line = next(x for x in cp.stderr.splitlines() if "admission:" in x)
    st = subprocess.run([*cli, "status", "c", "--json"], env=env, capture_output=True,
                        text=True, check=False)
    assert st.returncode == 0, st.stderr
    counts = json.loads(st.stdout)["transfer"]["admission"]
    assert set(counts) == set(AdmissionStats.FIELDS)
    assert counts["admitted"] > 0 and counts["waited"] > 0 and counts["split"] > 0
    assert line.endswith(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))


@pytest.mark.parametrize("ttype", ["sync", "pthread"])
def test_every_engine_submits_through_admission(journal, tmp_path: Path, ttype: str) -> None:
    """Not only URING: every queue a transfer opens is admitted (posix here)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, _files())
    t = journal.create("e", ttype, queue="posix", chunk_size=64 * KiB,
                       extent_size=128 * KiB)
    t.add(src, dst)
    t.dispatch()
    t.wait()
    assert tree_bytes(dst) == tree_bytes(src)
    assert t.admission_stats().admitted >= 2 * 16
