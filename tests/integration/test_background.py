"""Background transfers under stress: many in flight in one process, cancel at random
moments (seeded, replayable; a write gate holds each run at its moment) with the
foundation's invariants checked after each."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

import axlpy
from axlpy.engines import ENGINE_TYPES
from tests.conftest import WriteGate, start_process_threads, type_params

BACKGROUND = type_params([t for t in ENGINE_TYPES if t != "sync"])
SEED = int(os.environ.get("AXLPY_TEST_SEED", "20261121"))
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def area(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


def _make_src(root, rng: random.Random, n: int) -> dict[str, bytes]:
    files = {"big": rng.randbytes(6 * MiB)}  # so there is always something in flight
    (root / "big").parent.mkdir(parents=True, exist_ok=True)
    (root / "big").write_bytes(files["big"])
    for i in range(n):
        size = rng.choice([0, 1, 5000, 64 * KiB, 300 * KiB, 2 * MiB + 17])
        rel = f"d{i % 4}/f{i}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        p.write_bytes(data)
        files[rel] = data
    return files


def _check_invariants(t: axlpy.Transfer, dst, files: dict[str, bytes]) -> str:
    """Foundation invariants: every destination path holds the source's bytes or nothing;
    no temp is left; the journal says COMPLETED or CANCELLED (and nothing is left for a
    CANCELLED one)."""
    state = t.state
    assert state in (axlpy.TransferState.COMPLETED, axlpy.TransferState.CANCELLED), state
    left = [os.path.join(d, f) for d, _, fs in os.walk(dst) for f in fs]
    assert not [p for p in left if ".axlpy-" in p], left
    for rel, data in files.items():
        p = dst / rel
        if state is axlpy.TransferState.COMPLETED:
            assert p.read_bytes() == data, rel
        else:
            assert not p.exists(), rel
    return state.value


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_cancel_at_random_moments(area, ttype):
    rng = random.Random(SEED)
    src = area / "src"
    files = _make_src(src, rng, 12)
    total = sum(len(d) for d in files.values())
    j = axlpy.Journal(area / "j.db")
    start_process_threads(j, area)
    outcomes = []
    threads_before = set(threading.enumerate())
    fds_before = set(os.listdir("/proc/self/fd"))
    rounds = 12
    for i in range(rounds):
        dst = area / f"dst{i}"
        # The moment: a random number of bytes written (the last round: all of them, so
        # the cancel comes after COMPLETED). Past it every write waits for the cancel, so
        # each of the other rounds is cancelled mid-transfer, whatever engine DEFAULT
        # picks and however loaded the machine.
        at = rng.random() * total if i < rounds - 1 else total
        gate = WriteGate(int(at), inner="uring" if ttype == "uring" else "posix")
        t = j.create(f"t{i}", ttype, chunk_size=64 * KiB, extent_size=256 * KiB,
                     workers=rng.choice([0, 1, 3]), queue_factory=gate.queue)
        gate.release = t._cancel
        t.add(src, dst)
        t.dispatch()
        if i < rounds - 1:
            assert gate.held.wait(120), f"round {i}: no write reached the gate at {at:.0f}"
            t.cancel()
        else:
            t.wait(timeout=120)
            with pytest.raises(axlpy.InvalidTransitionError):
                t.cancel()  # COMPLETED: cancel is refused and undoes nothing
            assert not gate.held.is_set()
        t.wait(timeout=120)
        assert not gate.timed_out
        outcomes.append(_check_invariants(t, dst, files))
        t.free()
    assert set(threading.enumerate()) - threads_before == set()
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()
    assert outcomes == ["CANCELLED"] * (rounds - 1) + ["COMPLETED"], f"seed {SEED}"
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_many_concurrent_transfers_independent(area, ttype):
    rng = random.Random(SEED + 1)
    n = 10
    j = axlpy.Journal(area / "j.db")
    srcs, ts = [], []
    for i in range(n):
        src = area / f"src{i}"
        srcs.append(_make_src(src, rng, 5))
        t = j.create(f"t{i}", ttype, chunk_size=64 * KiB, extent_size=256 * KiB)
        t.add(src, area / f"dst{i}")
        ts.append(t)
    # One of them is held in flight (its progress callback waits for the cancel) and
    # cancelled: that must not touch the others.
    victim = 3
    held = ts[victim]
    held._on_progress = lambda p: held._cancel.wait(60)
    for t in ts:
        t.dispatch()
    assert held.running, (held.state, held._error)
    ts[victim].cancel()
    deadline = time.monotonic() + 120
    while not all(t.test() or t.state.is_final for t in ts if t is not ts[victim]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for i, t in enumerate(ts):
        t.wait(timeout=120)
        got = _check_invariants(t, area / f"dst{i}", srcs[i])
        assert got == "COMPLETED" or i == victim
    statuses = {s.name: s for s in j.transfers()}
    assert all(s.files_done == s.files_total for n_, s in statuses.items()
               if n_ != f"t{victim}")
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_progress_callback_and_status_agree(area, ttype):
    rng = random.Random(SEED + 2)
    files = _make_src(area / "src", rng, 8)
    calls = []
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=64 * KiB, extent_size=256 * KiB,
                 on_progress=lambda p: calls.append((p.bytes_done, p.files_done, p.rate)))
    t.add(area / "src", area / "dst")
    t.dispatch()
    t.wait(timeout=120)
    st = t.status()
    assert st.bytes_done == st.bytes_total == sum(len(d) for d in files.values())
    assert st.files_done == st.files_total == len(files)
    assert calls[-1][:2] == (st.bytes_total, st.files_total)
    assert all(r >= 0 for _, _, r in calls)
    j.close()
