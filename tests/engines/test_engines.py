"""Every engine type, end to end on real files and a real journal: copy, background
dispatch, progress, errors raised once, live cancel without leaks, verified mid-file
resume after SIGKILL."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import zlib

import pytest

import axlpy
from axlpy.engines import ENGINE_TYPES
from axlpy.engines.threaded import default_workers
from axlpy.engines.uring import op_size_for
from axlpy.io import IOOp, IORequest
from tests.conftest import PosixWrapperQueue, WriteGate, start_process_threads, type_params

TYPES = type_params(ENGINE_TYPES)
BACKGROUND = [p for p in TYPES if p.values[0] != "sync"]

KiB = 1024
MiB = 1024 * KiB


def _data(n: int, seed: int) -> bytes:
    return os.urandom(n) if n > 4096 else bytes((seed * 7 + i) % 251 for i in range(n))


@pytest.fixture
def area(tmp_path):
    os.chmod(tmp_path, 0o700)
    (tmp_path / "src").mkdir()
    return tmp_path


def _tree(src, sizes):
    for i, n in enumerate(sizes):
        d = src / f"d{i % 3}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(_data(n, i))


def _same_tree(a, b) -> bool:
    return subprocess.run(["diff", "-r", str(a), str(b)], capture_output=True).returncode == 0


def _temps(root) -> list[str]:
    return [f for _, _, fs in os.walk(root) for f in fs if ".axlpy-" in f]


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class CountingQueue(PosixWrapperQueue):
    """A real POSIX queue that counts the bytes written through it (for resume tests)."""

    name = "counting"
    written = 0
    lock = threading.Lock()

    def prep(self, request: IORequest) -> None:
        if request.op is IOOp.WRITE:
            with CountingQueue.lock:
                CountingQueue.written += request.length
        super().prep(request)


def test_default_workers():
    cores = os.cpu_count() or 1
    assert default_workers(1) == 1
    assert default_workers(1000) == min(cores * 2, 16)
    assert default_workers(1000, 3) == 3
    assert default_workers(2, 8) == 2


@pytest.mark.parametrize("chunk", [8 * MiB, 64 * KiB, 3 * MiB, MiB + 4096])
def test_op_size(chunk):
    # One request per chunk: 1 MiB splits of an 8 MiB chunk (64 in flight on one file)
    # made URING 3x slower on a 2 GiB file (docs/engines.md, "URING on large files").
    assert op_size_for(chunk) == chunk


@pytest.mark.parametrize("ttype", TYPES)
def test_copies_tree_exactly(area, ttype):
    chunk = 64 * KiB
    sizes = [0, 1, chunk - 1, chunk, chunk + 1, 4 * chunk, 9 * chunk + 5, 300_000, 13]
    _tree(area / "src", sizes)
    (area / "src" / "empty").mkdir()
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=chunk, extent_size=4 * chunk, workers=3)
    t.add(area / "src", area / "dst")
    t.dispatch()
    t.wait(timeout=120)
    assert t.test() is True
    assert _same_tree(area / "src", area / "dst")
    assert not _temps(area / "dst")
    st = t.status()
    assert (st.state, st.files_done, st.bytes_done) == ("COMPLETED", len(sizes), sum(sizes))
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_background_dispatch_returns_at_once(area, ttype):
    (area / "src" / "big").write_bytes(os.urandom(48 * MiB))
    j = axlpy.Journal(area / "j.db")
    seen = []
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB,
                 on_progress=lambda p: seen.append((p.bytes_done, p.files_done)))
    t.add(area / "src", area / "dst")
    # Hold the journal lock so the first extent commit blocks: the copy cannot finish.
    with j.db._lock:
        t0 = time.monotonic()
        t.dispatch()
        returned = time.monotonic() - t0
        assert t.running
        assert t.test() is False  # never blocks, not done
        with pytest.raises(TimeoutError):
            t.wait(timeout=0.05)
    t.wait(timeout=120)
    assert returned < 30  # generous: the shared machine may be busy
    assert t.test() is True
    assert seen and seen[-1] == (48 * MiB, 1)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    j.close()


@pytest.mark.parametrize("ttype", TYPES)
def test_background_error_from_test(area, ttype):
    (area / "src").rmdir()
    (area / "src").write_bytes(os.urandom(3 * MiB))
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=64 * KiB, extent_size=256 * KiB)
    t.add(area / "src", area / "dst")
    with j.db._lock:
        if ttype == "sync":
            pytest.skip("sync runs inside dispatch()")
        t.dispatch()
        os.truncate(area / "src", MiB)  # shrinks under the copy
    assert t._thread is not None
    t._thread.join(120)  # the background thread has ended (a gate, not a wait)
    assert not t._thread.is_alive()
    with pytest.raises(axlpy.SourceChangedError) as info:
        t.test()
    err = info.value
    assert "src" in (err.path or "")
    assert t.test() is False
    t.wait()  # the error was already raised: wait() returns quietly now
    assert t.state is axlpy.TransferState.FAILED
    assert not (area / "dst").exists()
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_live_cancel_stops_workers_and_leaks_nothing(area, ttype):
    _tree(area / "src", [24 * MiB] * 4)
    j = axlpy.Journal(area / "j.db")
    start_process_threads(j, area)
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    # The gate: once 1 MiB of the 96 is written, every write waits for the cancel flag,
    # so cancel() certainly arrives mid-transfer (whatever engine DEFAULT picks here and
    # however loaded the machine), and the run cannot complete first.
    gate = WriteGate(MiB, inner="uring" if ttype == "uring" else "posix")
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB,
                 queue_factory=gate.queue)
    gate.release = t._cancel
    t.add(area / "src", area / "dst")
    t.dispatch()
    assert gate.held.wait(120), "no write ever reached the gate"
    assert t.running
    t0 = time.monotonic()
    report = t.cancel()
    took = time.monotonic() - t0
    assert not gate.timed_out
    assert t.state is axlpy.TransferState.CANCELLED
    assert not t.running
    assert report.removed_temps  # files were in flight: the live cancel says so
    assert not (area / "dst").exists()  # and the directories it created are gone
    assert set(threading.enumerate()) - threads_before == set()
    assert _fds() - fds_before == set()
    with pytest.raises(axlpy.TransferCancelledError):
        t.test()
    t.free()
    print(f"live cancel of {ttype} took {took * 1000:.1f} ms")
    j.close()


@pytest.mark.parametrize("ttype", TYPES)
def test_stop_frees(area, ttype):
    _tree(area / "src", [2 * MiB] * 3)
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB)
    t.add(area / "src", area / "dst")
    if ttype != "sync":
        t.dispatch()
    t.stop()
    assert j.names() == []
    assert not _temps(area)
    j.close()


_CHILD = """
import sys, axlpy
j = axlpy.Journal(sys.argv[1])
t = j.open("t")
t.dispatch()
t.wait()
"""


@pytest.mark.parametrize("ttype", TYPES)
def test_mid_file_resume_recopies_only_unverified(area, ttype):
    size, chunk, extent = 24 * MiB, 256 * KiB, MiB
    data = os.urandom(size)
    (area / "src" / "big").write_bytes(data)
    jp = area / "j.db"
    j = axlpy.Journal(jp)
    t = j.create("t", ttype, chunk_size=chunk, extent_size=extent)
    t.add(area / "src" / "big", area / "dst" / "big")
    j.close()
    hit = 20  # die once 20 extents (20 MiB) are journaled: ~83 %
    env = dict(os.environ, AXLPY_CRASH_AT="stage.after_extent_commit",
               AXLPY_CRASH_HIT=str(hit))
    r = subprocess.run([sys.executable, "-c", _CHILD, str(jp)], env=env, timeout=300)
    assert r.returncode == -9
    assert not (area / "dst" / "big").exists()
    j = axlpy.Journal(jp)
    t = j.open("t", queue_factory=CountingQueue)
    (fid,) = [f.id for f in j.db.files(t._row.id) if f.kind == "file"]
    assert len(j.db.extents(fid)) == hit
    # Corrupt one byte past the verified prefix: it must not be trusted (it is recopied),
    # and one byte inside it: then only what precedes that extent is kept.
    (tmp,) = _temps(area / "dst")
    with open(area / "dst" / tmp, "r+b") as f:
        f.seek(hit * extent + 10)
        f.write(b"\xff")
    CountingQueue.written = 0
    t.resume()
    t.wait(timeout=300)
    assert (area / "dst" / "big").read_bytes() == data
    recopied = CountingQueue.written
    assert recopied == size - hit * extent, recopied
    print(f"{ttype}: resume after crash at {hit}/{size // extent} extents recopied "
          f"{recopied / MiB:.1f} MiB of {size / MiB:.0f} MiB")
    j.close()


@pytest.mark.parametrize("ttype", TYPES)
def test_resume_distrusts_corrupt_extent(area, ttype):
    size, extent = 8 * MiB, MiB
    data = os.urandom(size)
    (area / "src" / "big").write_bytes(data)
    jp = area / "j.db"
    j = axlpy.Journal(jp)
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=extent)
    t.add(area / "src" / "big", area / "dst" / "big")
    j.close()
    env = dict(os.environ, AXLPY_CRASH_AT="stage.after_extent_commit", AXLPY_CRASH_HIT="6")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(jp)], env=env, timeout=300)
    assert r.returncode == -9
    (tmp,) = _temps(area / "dst")
    with open(area / "dst" / tmp, "r+b") as f:  # flip a byte in extent 3
        f.seek(3 * extent + 77)
        b = f.read(1)
        f.seek(3 * extent + 77)
        f.write(bytes([b[0] ^ 1]))
    j = axlpy.Journal(jp)
    t = j.open("t", queue_factory=CountingQueue)
    CountingQueue.written = 0
    t.resume()
    t.wait(timeout=300)
    assert zlib.crc32((area / "dst" / "big").read_bytes()) == zlib.crc32(data)
    assert CountingQueue.written == size - 3 * extent
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_status_from_another_process_shows_progress(area, ttype):
    size = 32 * MiB
    (area / "src" / "big").write_bytes(os.urandom(size))
    jp = area / "j.db"
    j = axlpy.Journal(jp)
    limit = 8 * MiB
    gate = WriteGate(limit, inner="uring" if ttype == "uring" else "posix")
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB, queue_depth=4,
                 queue_factory=gate.queue)
    t.add(area / "src", area / "dst")
    # Gate: the first verified extent is committed (so the journal shows progress); the
    # writes past ``limit`` bytes wait, so the copy cannot finish meanwhile.
    committed = threading.Event()
    add_extents = j.db.add_extents

    def add_and_signal(extents):
        add_extents(extents)
        committed.set()

    j.db.add_extents = add_and_signal
    t.dispatch()
    code = ("import sys, axlpy; s = axlpy.Journal(sys.argv[1]).open('t').status();"
            "print(s.state.value, s.bytes_done, s.bytes_total)")
    try:
        assert committed.wait(120), "no extent was ever committed"
        out = subprocess.run([sys.executable, "-c", code, str(jp)],
                             capture_output=True, text=True, check=True).stdout.split()
    finally:
        gate.release.set()
    t.wait(timeout=120)
    assert not gate.timed_out
    assert out[0] in ("DISPATCHED", "PAUSED")
    assert 0 < int(out[1]) <= limit and int(out[2]) == size
    assert (area / "dst" / "big").read_bytes() == (area / "src" / "big").read_bytes()
    j.close()


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_many_transfers_in_flight_at_once(area, ttype):
    n = 6
    j = axlpy.Journal(area / "j.db")
    ts = []
    # The third one is held mid-copy (its writes past 64 KiB wait for its cancel):
    # cancelling it certainly happens in flight, and must not touch the others.
    held = WriteGate(64 * KiB, inner="uring" if ttype == "uring" else "posix")
    for i in range(n):
        src = area / "src" / f"s{i}"
        src.mkdir()
        _tree(src, [(i + 1) * 300_000, 4096, 0])
        t = j.create(f"t{i}", ttype, chunk_size=64 * KiB, extent_size=256 * KiB, workers=2,
                     queue_factory=held.queue if i == 2 else None)
        if i == 2:
            held.release = t._cancel
        t.add(src, area / "dst" / f"s{i}")
        ts.append(t)
    for t in ts:
        t.dispatch()
    assert held.held.wait(120), "the held transfer never reached its gate"
    ts[2].cancel()
    assert not held.timed_out
    for i, t in enumerate(ts):
        t.wait(timeout=120)
        if i == 2:
            assert t.state is axlpy.TransferState.CANCELLED
            assert not (area / "dst" / "s2").exists() or not any(
                p.is_file() for p in (area / "dst" / "s2").rglob("*"))
        else:
            assert t.test() is True
            assert _same_tree(area / "src" / f"s{i}", area / "dst" / f"s{i}")
    assert not _temps(area / "dst")
    j.close()
