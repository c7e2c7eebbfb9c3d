"""Admission control: bounded reservations, ledger, backoff, timeout, degraded mode,
batch splitting and rollback, under many threads. Every admission a test creates must
end with no slot held and an empty ledger (checked by the ``make`` fixture)."""

from __future__ import annotations

import errno
import os
import random
import threading
import time

import pytest

from axlpy import AdmissionTimeoutError, UsageError
from axlpy._admission import (
    ENV_TIMEOUT,
    Admission,
    AdmittedIOQueue,
    BoundedAdmission,
    UnlimitedAdmission,
    get_admission,
    reserved,
    submit_batch,
    timeout_from_env,
)
from axlpy.io import FaultyIOQueue, PosixIOQueue, SubmitError
from axlpy.testing import run_all
from tests.conftest import blocked_waiting_for_io, requires_uring, wait_until

RNG = random.Random(20240503)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def make():
    made: list[BoundedAdmission | UnlimitedAdmission] = []

    def factory(depth=4, **kw):
        a = BoundedAdmission(depth, **kw)
        made.append(a)
        return a

    yield factory
    for a in made:
        assert a.in_use == 0, "slots leaked"
        assert a.outstanding == 0, "ledger records leaked"
        assert not a.degraded


def test_protocol_is_satisfied():
    assert isinstance(BoundedAdmission(1), Admission)
    assert isinstance(UnlimitedAdmission(), Admission)


def test_reserve_and_release_exactly_what_a_record_holds(make):
    a = make(4)
    r1 = a.reserve(3)
    r2 = a.reserve(1)
    assert (a.in_use, a.holding(r1), a.holding(r2)) == (4, 3, 1)
    assert a.try_reserve(1) is None
    assert a.release(r1, 2) == 2
    assert (a.in_use, a.holding(r1)) == (2, 1)
    assert a.release(r1) == 1
    assert a.holding(r1) == 0
    assert a.release(r2) == 1


def test_double_release_is_refused_and_changes_nothing(make):
    a = make(2)
    r = a.reserve(1)
    keep = a.reserve(1)
    a.release(r)
    with pytest.raises(UsageError, match="holds 0 slots"):
        a.release(r)
    with pytest.raises(UsageError):
        a.release(keep, 2)
    assert a.in_use == 1
    a.release(keep)


@pytest.mark.parametrize(("n", "ok"), [(0, False), (1, True), (4, True), (5, False)])
def test_reservation_size_must_fit_depth(make, n, ok):
    a = make(4)
    if ok:
        a.release(a.reserve(n))
    else:
        with pytest.raises(UsageError, match="split the batch"):
            a.reserve(n)


def test_timeout_fires_with_two_phase_backoff(make):
    t = FakeTime()
    a = make(
        1,
        timeout_us=10_000,
        yield_rounds=3,
        min_sleep_us=50,
        max_sleep_us=400,
        clock=t.clock,
        sleep=t.sleep,
    )
    held = a.reserve(1)
    with pytest.raises(AdmissionTimeoutError, match="full: 1/1 slots held"):
        a.reserve(1)
    # Phase one yielded without sleeping; phase two doubled 50us up to the 400us cap
    # and stopped at the 10 ms deadline.
    assert t.sleeps[:4] == pytest.approx([50e-6, 100e-6, 200e-6, 400e-6])
    assert set(t.sleeps[3:-1]) == {400e-6}
    assert sum(t.sleeps) == pytest.approx(0.010)
    assert a.timeouts == 1
    assert a.in_use == 1  # the timed-out call reserved nothing
    a.release(held)


def test_zero_timeout_fails_at_once(make):
    a = make(1, timeout_us=0)
    held = a.reserve(1)
    t0 = time.monotonic()
    with pytest.raises(AdmissionTimeoutError):
        a.reserve(1)
    assert time.monotonic() - t0 < 1
    a.release(held)


def test_timeout_from_env(monkeypatch, make):
    monkeypatch.setenv(ENV_TIMEOUT, "1234")
    assert timeout_from_env() == 1234
    assert make(1).timeout_us == 1234
    assert make(1, timeout_us=5).timeout_us == 5  # explicit setting wins
    monkeypatch.setenv(ENV_TIMEOUT, "soon")
    with pytest.raises(UsageError, match=ENV_TIMEOUT):
        timeout_from_env()
    monkeypatch.setenv(ENV_TIMEOUT, "-1")
    with pytest.raises(UsageError):
        timeout_from_env()
    monkeypatch.delenv(ENV_TIMEOUT)
    assert timeout_from_env() == 30_000_000


def test_degraded_rejects_until_drained(make):
    a = make(4, timeout_us=0)
    r = a.reserve(2)
    a.mark_degraded()
    assert a.degraded
    assert a.try_reserve(1) is None  # free slots exist, but new work is refused
    with pytest.raises(AdmissionTimeoutError, match="degraded"):
        a.reserve(1)
    a.release(r, 1)
    assert a.degraded
    a.release(r)
    assert not a.degraded  # drained: recovered by itself
    a.release(a.reserve(4))


def test_mark_degraded_when_idle_is_a_no_op(make):
    a = make(2)
    a.mark_degraded()
    assert not a.degraded


def test_reserved_context_manager_releases_once(make):
    a = make(2)
    with pytest.raises(RuntimeError):
        with reserved(a, 2):
            assert a.in_use == 2
            raise RuntimeError("boom")
    assert a.in_use == 0
    with reserved(a, 2) as record:
        a.release(record, 1)  # a completion released one inside the block
    assert a.in_use == 0


def test_unlimited_and_factory():
    u = get_admission(None)
    assert isinstance(u, UnlimitedAdmission)
    records = [u.reserve(1000) for _ in range(10)]
    assert u.in_use == 10_000
    for r in records:
        u.release(r)
    assert u.in_use == 0
    assert u.outstanding == 0
    with pytest.raises(UsageError):
        u.release(records[0])
    b = get_admission(8, timeout_us=7)
    assert isinstance(b, BoundedAdmission)
    assert (b.depth, b.timeout_us) == (8, 7)
    assert isinstance(get_admission(0), UnlimitedAdmission)


def test_many_threads_never_exceed_depth_and_never_leak(make):
    a = make(8, timeout_us=20_000_000)
    peak = 0
    held = 0
    lock = threading.Lock()
    errors: list[BaseException] = []
    seeds = [RNG.randrange(2**32) for _ in range(16)]

    def worker(seed):
        rng = random.Random(seed)
        nonlocal peak, held
        try:
            for _ in range(300):
                n = rng.randint(1, 4)
                with reserved(a, n):
                    with lock:
                        held += n
                        peak = max(peak, held)
                    assert a.in_use <= a.depth
                    os.sched_yield()
                    with lock:
                        held -= n
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "stalled"
    assert errors == []
    assert 1 < peak <= 8
    assert a.in_use == 0


def test_many_threads_time_out_instead_of_hanging(make):
    a = make(2, timeout_us=50_000)
    blocker = a.reserve(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker():
        try:
            a.release(a.reserve(1))
            result = "got"
        except AdmissionTimeoutError:
            result = "timeout"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert time.monotonic() - t0 < 10
    assert outcomes == ["timeout"] * 8
    assert a.timeouts == 8
    a.release(blocker)


def test_waiters_wake_when_slots_are_released(make):
    """reserve() really blocks while the slot is held (the waiter is seen failing to take
    it), and a release wakes it: its own wait steps are 60 s long, so only the release's
    notify can end the wait within the join below."""
    looked = threading.Semaphore(0)

    def clock():
        looked.release()  # called once for the deadline, then once per failed attempt
        return time.monotonic()

    a = make(1, timeout_us=300_000_000, yield_rounds=0, min_sleep_us=60_000_000,
             max_sleep_us=60_000_000, clock=clock)
    held = a.reserve(1)
    looked.acquire()  # its deadline (the slot was free: no second look)
    got = []
    t = threading.Thread(target=lambda: got.append(a.reserve(1)))
    t.start()
    assert looked.acquire(timeout=60)  # the waiter's deadline
    # The waiter looks again only after failing to take the slot (a reserve() that did
    # not block would have returned instead).
    assert looked.acquire(timeout=60), f"reserve() did not block: {got}"
    assert got == []
    a.release(held)
    t.join(30)
    assert not t.is_alive() and len(got) == 1
    a.release(got[0])


# -- AdmittedIOQueue over real queues --------------------------------------------------


def _uring(depth):
    from axlpy.io._uring import UringIOQueue

    return UringIOQueue(depth)


def _queues():
    yield pytest.param(lambda: PosixIOQueue(8), id="posix")
    yield pytest.param(lambda: _uring(8), id="uring", marks=requires_uring)


@pytest.mark.parametrize("make_queue", list(_queues()))
def test_batch_larger_than_depth_is_split(make_queue, make, tmp_path):
    a = make(8)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    q = AdmittedIOQueue(make_queue(), a)  # the inner queue refuses a 9th in flight
    try:
        blocks = [bytes([i % 256]) * 1000 for i in range(100)]
        reqs = [q.prep_write(fd, b, i * 1000) for i, b in enumerate(blocks)]
        assert q.in_flight == 100
        done = run_all(q, reqs)
        assert all(done[r].result == 1000 for r in reqs)
        assert os.pread(fd, 100_000, 0) == b"".join(blocks)
        assert a.in_use == 0
        assert q.in_flight == 0
    finally:
        q.close()
        os.close(fd)


def test_submit_failure_part_way_rolls_back_and_degrades(make, tmp_path):
    a = make(8, timeout_us=0)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    inner = FaultyIOQueue(PosixIOQueue(8), nth=[11], errno=errno.ENOMEM, mode="submit")
    q = AdmittedIOQueue(inner, a)
    try:
        reqs = [q.prep_write(fd, bytes([65 + i % 26]), i) for i in range(30)]
        with pytest.raises(SubmitError) as info:
            q.submit()
        dropped = info.value.dropped
        assert dropped == [reqs[10], *reqs[16:]]
        assert info.value.errno == errno.ENOMEM
        # Chunk two's seven taken requests hold seven slots; nothing else is held.
        assert a.in_use == 7
        assert a.degraded
        with pytest.raises(AdmissionTimeoutError, match="degraded"):
            a.reserve(1)
        done = run_all(q, [])
        assert set(done) == set(reqs) - set(dropped)
        assert all(c.result == 1 for c in done.values())
        assert a.in_use == 0
        assert not a.degraded
        data = os.pread(fd, 100, 0)
        assert len(data) == 16
        assert data[10:11] == b"\0"  # the dropped request never ran
        # The queue works again after draining.
        r = q.prep_write(fd, b"K", 10)
        assert run_all(q, [r])[r].result == 1
    finally:
        q.close()
        os.close(fd)


def test_injected_completion_failures_release_their_slots(make, tmp_path):
    a = make(4)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    q = AdmittedIOQueue(FaultyIOQueue(PosixIOQueue(4), predicate=lambda r: r.offset % 2 == 1), a)
    try:
        reqs = [q.prep_write(fd, b"x", i) for i in range(20)]
        done = run_all(q, reqs)
        assert sorted(c.result for c in done.values()) == [-errno.EIO] * 10 + [1] * 10
        assert a.in_use == 0
    finally:
        q.close()
        os.close(fd)


def test_threads_with_own_queues_share_one_admission(make, tmp_path):
    a = make(4, timeout_us=20_000_000)
    errors: list[BaseException] = []

    def worker(k):
        fd = os.open(tmp_path / f"f{k}", os.O_RDWR | os.O_CREAT)
        q = AdmittedIOQueue(PosixIOQueue(4), a)
        try:
            reqs = [q.prep_write(fd, bytes([k]) * 512, i * 512) for i in range(64)]
            done = run_all(q, reqs)
            assert all(c.result == 512 for c in done.values())
            assert os.pread(fd, 64 * 512, 0) == bytes([k]) * 64 * 512
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            q.close()
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert a.in_use == 0


def test_submit_batch_helper(make, tmp_path):
    a = make(3)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    inner = PosixIOQueue(3)
    from axlpy.io import IOOp, IORequest

    reqs = [IORequest(IOOp.WRITE, fd, memoryview(b"ab"), 2 * i) for i in range(10)]
    q = submit_batch(inner, reqs, a)
    try:
        done = run_all(q, [])
        assert len(done) == 10
        assert a.in_use == 0
        assert os.pread(fd, 20, 0) == b"ab" * 10
    finally:
        q.close()
        os.close(fd)


@requires_uring
def test_close_with_requests_in_flight_returns_slots(make, tmp_path):
    a = make(4)
    rfd, wfd = os.pipe()
    q = AdmittedIOQueue(_uring(4), a)
    q.prep_read(rfd, bytearray(1), 0)
    q.submit()
    assert a.in_use == 1
    me = threading.get_native_id()

    def writer():  # only once close() waits for the read in the kernel
        wait_until(lambda: blocked_waiting_for_io(me), "close() waiting in the kernel")
        os.write(wfd, b"x")

    w = threading.Thread(target=writer)
    w.start()
    q.close()
    w.join()
    assert a.in_use == 0
    os.close(rfd)
    os.close(wfd)
