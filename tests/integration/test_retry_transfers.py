"""Retry and operator intervention, end to end, with real injected failures: a FaultyIOQueue
around a real POSIX or io_uring queue, a destination on a small tmpfs that fills up (ENOSPC),
a source that cannot be read (EACCES injected: we run as root, chmod does not stop us)."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
import uuid

import pytest

import axlpy
from axlpy.engines import ENGINE_TYPES
from axlpy.io import FaultyIOQueue, IOOp, IORequest, PosixIOQueue, open_queue
from tests.conftest import pause_gate, resize_tmpfs, start_process_threads, type_params

TYPES = type_params(ENGINE_TYPES)

KiB = 1024
MiB = 1024 * KiB
FAST = {"max_attempts": 4, "base_delay": 0.001, "max_delay": 0.01, "jitter": "none"}


@pytest.fixture
def area(tmp_path):
    os.chmod(tmp_path, 0o700)
    (tmp_path / "src").mkdir()
    return tmp_path


def _inner(ttype: str, depth: int):
    return open_queue("uring", depth=depth) if ttype == "uring" else PosixIOQueue(depth)


class Injector:
    """Fail chosen requests across every queue a transfer opens (one per engine thread)."""

    def __init__(self, ttype: str, *, op: IOOp, errno_: int, nth: int = 1,
                 times: int | None = 1, path_part: str | None = None,
                 mode: str = "before") -> None:
        self.ttype, self.op, self.errno, self.nth = ttype, op, errno_, nth
        self.times, self.path_part, self.mode = times, path_part, mode
        self.lock = threading.Lock()
        self.seen = 0
        self.injected = 0
        self.offsets: list[int] = []

    def _choose(self, req: IORequest) -> bool:
        if req.op is not self.op:
            return False
        if self.path_part is not None:
            try:
                target = os.readlink(f"/proc/self/fd/{req.fd}")
            except OSError:
                return False
            if self.path_part not in target:
                return False
        with self.lock:
            self.seen += 1
            if self.seen < self.nth or (self.times is not None and self.injected >= self.times):
                return False
            self.injected += 1
            self.offsets.append(req.offset)
            return True

    def __call__(self, depth: int) -> FaultyIOQueue:
        return FaultyIOQueue(_inner(self.ttype, depth), predicate=self._choose,
                             errno=self.errno, mode=self.mode)  # type: ignore[arg-type]


def _check_copied(src, dst) -> None:
    assert subprocess.run(["diff", "-r", str(src), str(dst)]).returncode == 0
    assert not [f for _, _, fs in os.walk(dst) for f in fs if ".axlpy-" in f]


def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__
    return out


@pytest.mark.parametrize("ttype", TYPES)
@pytest.mark.parametrize(("op", "mode"), [(IOOp.WRITE, "before"), (IOOp.WRITE, "after"),
                                          (IOOp.READ, "before"), (IOOp.WRITE, "submit")])
def test_transient_eio_is_retried_and_transfer_completes(area, ttype, op, mode):
    for i in range(3):
        (area / "src" / f"f{i}").write_bytes(os.urandom(700 * KiB + i))
    inj = Injector(ttype, op=op, errno_=errno.EIO, nth=5, times=2, mode=mode)
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=64 * KiB, extent_size=256 * KiB, retry=FAST,
                 queue_factory=inj)
    t.add(area / "src", area / "dst")
    t.dispatch()
    t.wait(timeout=120)
    assert t.test() is True
    assert inj.injected == 2
    _check_copied(area / "src", area / "dst")
    j.close()


@pytest.mark.parametrize("ttype", TYPES)
def test_persistent_eio_fails_naming_file_then_resumes(area, ttype):
    (area / "src" / "ok").write_bytes(os.urandom(100 * KiB))
    (area / "src" / "bad").write_bytes(os.urandom(900 * KiB))
    inj = Injector(ttype, op=IOOp.WRITE, errno_=errno.EIO, nth=3, times=None,
                   path_part=".bad.axlpy-")
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=64 * KiB, extent_size=128 * KiB, retry=FAST,
                 queue_factory=inj)
    t.add(area / "src", area / "dst")
    with pytest.raises(axlpy.RetriesExhaustedError) as ei:
        t.dispatch()
        t.wait(timeout=120)
    err = ei.value
    assert err.attempts == FAST["max_attempts"]
    assert "bad" in str(err) and err.path and err.path.endswith("/dst/bad")
    chain = _chain(err)
    assert any(isinstance(e, OSError) and e.errno == errno.EIO for e in chain)
    assert t.test() is False  # raised exactly once
    assert t.state is axlpy.TransferState.FAILED
    assert "bad" in (t.status().error or "")
    assert not (area / "dst" / "bad").exists()
    # The cause is gone: resume (another handle, a healthy queue) finishes the job and
    # keeps the verified extents the failed run journaled.
    j2 = axlpy.Journal(area / "j.db")
    t2 = j2.open("t")
    t2.resume()
    t2.wait(timeout=120)
    assert t2.test() is True
    _check_copied(area / "src", area / "dst")
    j.close()
    j2.close()


@pytest.mark.parametrize("ttype", TYPES)
def test_unreadable_source_fails_at_once_without_retry(area, ttype):
    (area / "src" / "secret").write_bytes(os.urandom(300 * KiB))
    inj = Injector(ttype, op=IOOp.READ, errno_=errno.EACCES, times=None,
                   path_part="/src/secret")
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=64 * KiB, retry=FAST | {"max_attempts": 9},
                 queue_factory=inj)
    t.add(area / "src", area / "dst")
    t0 = time.monotonic()
    with pytest.raises(axlpy.IOBackendError) as ei:
        t.dispatch()
        t.wait(timeout=120)
    assert ei.value.errno == errno.EACCES
    assert "secret" in (ei.value.path or "")
    # Not retried: EACCES does not heal by waiting. (The io_uring engine has several reads
    # of the file in flight at once; each fails once.)
    assert inj.injected >= 1
    assert len(set(inj.offsets)) == len(inj.offsets)
    assert time.monotonic() - t0 < 60
    assert t.state is axlpy.TransferState.FAILED
    assert not (area / "dst" / "secret").exists()
    j.close()


@pytest.fixture
def small_fs(make_tmpfs):
    return make_tmpfs("4m")


def _grow(mnt, size="64m") -> None:
    resize_tmpfs(mnt, size)


@pytest.mark.parametrize("ttype", TYPES)
def test_disk_full_fails_in_fail_mode(area, small_fs, ttype):
    (area / "src" / "big").write_bytes(os.urandom(6 * MiB))
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB, retry=FAST)
    t.add(area / "src" / "big", small_fs / "big")
    with pytest.raises(axlpy.TransferError) as ei:
        t.dispatch()
        t.wait(timeout=120)
    assert any(getattr(e, "errno", None) == errno.ENOSPC for e in _chain(ei.value))
    assert "big" in (ei.value.path or str(ei.value))
    assert t.state is axlpy.TransferState.FAILED
    assert not (small_fs / "big").exists()
    _grow(small_fs)
    t.resume()
    t.wait(timeout=120)
    assert (small_fs / "big").read_bytes() == (area / "src" / "big").read_bytes()
    j.close()


@pytest.mark.parametrize("ttype", TYPES)
@pytest.mark.parametrize("how", ["api", "flag"])
def test_disk_full_pauses_then_operator_continues(area, small_fs, ttype, how):
    if ttype == "sync" and how == "api":
        pytest.skip("a paused SYNC transfer blocks the thread that would call intervene()")
    data = os.urandom(6 * MiB)
    (area / "src" / "big").write_bytes(data)
    flag = area / f"flag-{uuid.uuid4().hex}"
    j = axlpy.Journal(area / "j.db")
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB,
                 retry=FAST | {"mode": "intervention", "flag_file": str(flag),
                               "poll_interval": 0.02})
    t.add(area / "src" / "big", small_fs / "big")
    paused = pause_gate(t)
    if ttype == "sync":
        # SYNC pauses inside dispatch(): the operator acts from another thread.
        def operator():
            assert paused.wait(120), "never paused"
            _grow(small_fs)
            flag.write_text("continue\n")
        th = threading.Thread(target=operator)
        th.start()
        t.dispatch()
        th.join()
    else:
        t.dispatch()
        assert paused.wait(120), f"never paused: {t.status()}"
        st = t.status()
        assert st.running and st.state is axlpy.TransferState.PAUSED
        assert t.test() is False
        done_before = st.bytes_done
        assert 0 < done_before < len(data)
        _grow(small_fs)
        if how == "api":
            t.intervene("continue")
        else:
            flag.write_text("continue\n")
    t.wait(timeout=120)
    assert t.test() is True
    assert (small_fs / "big").read_bytes() == data
    events = [e["event"] for e in t.events()]
    assert "pause" in events and "continue" in events
    j.close()


@pytest.mark.parametrize("ttype", [p for p in TYPES if p.values[0] != "sync"])
@pytest.mark.parametrize("how", ["api", "flag"])
def test_disk_full_pause_then_operator_cancels(area, small_fs, ttype, how):
    (area / "src" / "big").write_bytes(os.urandom(6 * MiB))
    flag = area / "flag"
    j = axlpy.Journal(area / "j.db")
    start_process_threads(j, area)
    fds_before = set(os.listdir("/proc/self/fd"))
    threads_before = set(threading.enumerate())
    t = j.create("t", ttype, chunk_size=256 * KiB, extent_size=MiB,
                 retry=FAST | {"mode": "intervention", "flag_file": str(flag),
                               "poll_interval": 0.02})
    t.add(area / "src" / "big", small_fs / "big")
    paused = pause_gate(t)
    t.dispatch()
    assert paused.wait(120), f"never paused: {t.status()}"
    if how == "api":
        t.intervene("cancel")
    else:
        flag.write_text("cancel")
        t.wait(timeout=60)
    assert t.state is axlpy.TransferState.CANCELLED
    assert os.listdir(small_fs) == []
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()
    assert set(threading.enumerate()) - threads_before == set()
    j.close()


def test_paused_transfer_killed_resumes_from_journal(area, small_fs):
    """PAUSED is journaled: a process that dies while paused leaves a resumable transfer."""
    data = os.urandom(6 * MiB)
    (area / "src" / "big").write_bytes(data)
    jp = area / "j.db"
    j = axlpy.Journal(jp)
    t = j.create("t", "pthread", chunk_size=256 * KiB, extent_size=MiB,
                 retry=FAST | {"mode": "intervention", "flag_file": str(area / "flag")})
    t.add(area / "src" / "big", small_fs / "big")
    j.close()
    # The child says "P" on stdout once PAUSED is journaled (a gate, not a wait).
    child = subprocess.Popen(
        [os.sys.executable, "-c",
         "import os, sys, axlpy; t = axlpy.Journal(sys.argv[1]).open('t')\n"
         "journal_pause = t.journal.db.pause\n"
         "def pause(*a, **kw):\n"
         "    moved = journal_pause(*a, **kw)\n"
         "    os.write(1, b'P')\n"
         "    return moved\n"
         "t.journal.db.pause = pause\n"
         "t.dispatch(); t.wait()",
         str(jp)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.read(1) == b"P", "the child never paused"
        j = axlpy.Journal(jp)
        assert j.open("t").status().state is axlpy.TransferState.PAUSED
        extents_before = sum(len(j.db.extents(f.id)) for f in j.db.files(j.open("t")._row.id))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert extents_before >= 1
    _grow(small_fs)
    t = j.open("t")
    t.resume()
    t.wait(timeout=120)
    assert (small_fs / "big").read_bytes() == data
    j.close()
