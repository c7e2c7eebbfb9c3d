"""FallbackIOQueue over a real io_uring: real failures, retries, stats, degraded mode.

The failures are the kernel's own: an O_DIRECT descriptor with an unaligned offset makes
io_uring answer -EINVAL, and the POSIX fallback (``reopen_direct=True``) redoes the
request through a buffered descriptor of the same file. A descriptor that is not open
fails on both. FaultyIOQueue wraps the real ring where a failure has to be repeated on
demand (degraded mode) or raised at submit time.
"""

from __future__ import annotations

import errno
import os

import pytest

from axlpy.io import (
    FallbackIOQueue,
    FaultyIOQueue,
    IORequest,
    PosixIOQueue,
    SubmitError,
)
from axlpy.testing import run_all
from tests.conftest import requires_uring

pytestmark = requires_uring

BLOCK = 4096


def _uring(depth=16):
    from axlpy.io._uring import UringIOQueue

    return UringIOQueue(depth)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def direct_fd(tmp_path):
    path = tmp_path / "direct.bin"
    path.write_bytes(bytes(4 * BLOCK))
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    yield fd, path
    os.close(fd)


@pytest.fixture
def fallback():
    q = FallbackIOQueue(_uring(), PosixIOQueue(16, reopen_direct=True), degrade_after=3)
    yield q
    assert q.in_flight == 0
    q.close()


def test_uring_really_fails_unaligned_o_direct(direct_fd):
    """The premise: the ring itself rejects the request (and plain posix does too)."""
    fd, _ = direct_fd
    for q in (_uring(), PosixIOQueue(4)):
        r = q.prep_write(fd, b"x" * 100, 1)
        assert run_all(q, [r])[r].result == -errno.EINVAL
        q.close()


def test_uring_failure_retried_on_posix(direct_fd, fallback):
    fd, path = direct_fd
    data = os.urandom(1000)
    r = fallback.prep_write(fd, data, 1)  # unaligned offset and length: EINVAL on uring
    c = run_all(fallback, [r])[r]
    assert c.result == len(data)
    assert c.request.backend == "posix"
    assert path.read_bytes()[1:1001] == data
    p, f = fallback.stats["primary"], fallback.stats["fallback"]
    assert (p.name, p.ops, p.errors, p.fallbacks, p.bytes) == ("uring", 1, 1, 1, 0)
    assert (f.name, f.ops, f.errors, f.fallbacks, f.bytes) == ("posix", 1, 0, 0, len(data))
    assert f.write_bytes == len(data)
    assert not fallback.degraded


def test_mixed_batch_counts_bytes_where_they_moved(direct_fd, tmp_path, fallback):
    fd, path = direct_fd
    plain = os.open(tmp_path / "plain.bin", os.O_RDWR | os.O_CREAT)
    try:
        good = [fallback.prep_write(plain, bytes([i]) * 3000, i * 3000) for i in range(5)]
        bad = fallback.prep_write(fd, b"y" * 10, 7)
        done = run_all(fallback, [*good, bad])
        assert all(done[r].result == 3000 and r.backend == "uring" for r in good)
        assert done[bad].result == 10 and bad.backend == "posix"
        assert fallback.stats["primary"].bytes == 15000
        assert fallback.stats["fallback"].bytes == 10
        assert fallback.stats["primary"].ops == 6
        buf = bytearray(10)
        r = fallback.prep_read(fd, buf, 7)  # unaligned read: also moved
        assert run_all(fallback, [r])[r].result == 10
        assert bytes(buf) == b"y" * 10
        assert fallback.stats["fallback"].read_bytes == 10
        assert path.read_bytes()[7:17] == b"y" * 10
    finally:
        os.close(plain)


def test_failure_on_both_reports_the_fallbacks_error(fallback):
    r = fallback.prep_write(987_654, b"z", 0)  # not an open descriptor
    c = run_all(fallback, [r])[r]
    assert c.result == -errno.EBADF
    assert fallback.stats["primary"].errors == 1
    assert fallback.stats["primary"].fallbacks == 1
    assert fallback.stats["fallback"].errors == 1
    assert fallback.stats["fallback"].bytes == 0


def test_errno_filter_keeps_failure_on_primary(direct_fd):
    fd, _ = direct_fd
    q = FallbackIOQueue(
        _uring(), PosixIOQueue(4, reopen_direct=True), should_fallback=lambda e: e != errno.EINVAL
    )
    r = q.prep_write(fd, b"x", 1)
    assert run_all(q, [r])[r].result == -errno.EINVAL
    assert q.stats["primary"].fallbacks == 0
    assert q.stats["fallback"].ops == 0
    q.close()


def test_fallback_that_does_not_accept_is_not_used(direct_fd):
    fd, _ = direct_fd

    class Picky(PosixIOQueue):
        def accepts(self, request: IORequest) -> bool:
            return False

    q = FallbackIOQueue(_uring(), Picky(4, reopen_direct=True))
    r = q.prep_write(fd, b"x", 1)
    assert run_all(q, [r])[r].result == -errno.EINVAL
    assert q.stats["primary"].fallbacks == 0
    q.close()


def test_degraded_after_consecutive_failures_then_reprobe(tmp_path):
    """Every uring request fails (injected around the real ring): after 3 in a row the
    primary is skipped; after reprobe_after seconds one probe goes to it again."""
    clock = FakeClock()
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    broken = [True]
    faulty = FaultyIOQueue(_uring(), predicate=lambda r: broken[0], errno=errno.EIO)
    q = FallbackIOQueue(
        faulty,
        PosixIOQueue(16),
        degrade_after=3,
        reprobe_after=10.0,
        reprobe_every=None,
        clock=clock,
    )
    try:
        for i in range(3):
            r = q.prep_write(fd, b"a" * 100, i * 100)
            assert run_all(q, [r])[r].result == 100
            assert r.backend == "posix"
        assert q.degraded
        assert faulty.seen == 3
        # Degraded: new requests go straight to posix; the ring sees nothing.
        r = q.prep_write(fd, b"b" * 100, 300)
        assert run_all(q, [r])[r].result == 100
        assert faulty.seen == 3
        assert q.stats["primary"].fallbacks == 3
        # Time passes, the primary is still broken: the probe fails and is retried.
        clock.now += 11
        r = q.prep_write(fd, b"c" * 100, 400)
        assert run_all(q, [r])[r].result == 100
        assert faulty.seen == 4
        assert q.degraded
        # The primary heals; after the next wait the probe succeeds and it is back.
        broken[0] = False
        r = q.prep_write(fd, b"d" * 100, 500)
        run_all(q, [r])
        assert faulty.seen == 4  # still waiting out reprobe_after
        clock.now += 11
        r = q.prep_write(fd, b"e" * 100, 600)
        assert run_all(q, [r])[r].result == 100
        assert r.backend == "uring"
        assert not q.degraded
        r = q.prep_write(fd, b"f" * 100, 700)
        run_all(q, [r])
        assert r.backend == "uring"
        with open(tmp_path / "f.bin", "rb") as f:
            assert f.read() == b"".join(bytes([c]) * 100 for c in b"aaabcdef")
        assert q.stats["primary"].bytes == 200
        assert q.stats["fallback"].bytes == 600
    finally:
        assert q.in_flight == 0
        q.close()
        os.close(fd)


def test_reprobe_after_count(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    faulty = FaultyIOQueue(_uring(), nth=[1], errno=errno.EIO)
    q = FallbackIOQueue(
        faulty, PosixIOQueue(8), degrade_after=1, reprobe_after=1e9, reprobe_every=2
    )
    try:
        backends = []
        for i in range(4):
            r = q.prep_write(fd, b"x", i)
            run_all(q, [r])
            backends.append(r.backend)
        # 1: failed on uring -> posix, degraded; 2, 3: posix; 4: the count-based probe.
        assert backends == ["posix", "posix", "posix", "uring"]
        assert not q.degraded
    finally:
        q.close()
        os.close(fd)


def test_submit_time_failure_moves_dropped_requests(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    faulty = FaultyIOQueue(_uring(), nth=[2, 3], errno=errno.ENOMEM, mode="submit")
    q = FallbackIOQueue(faulty, PosixIOQueue(8))
    try:
        reqs = [q.prep_write(fd, bytes([65 + i]) * 10, 10 * i) for i in range(4)]
        done = run_all(q, reqs)
        assert [done[r].result for r in reqs] == [10] * 4
        assert [r.backend for r in reqs] == ["uring", "posix", "posix", "uring"]
        assert q.stats["primary"].errors == 2
        assert q.stats["primary"].fallbacks == 2
        assert q.stats["primary"].bytes == 20
        assert q.stats["fallback"].bytes == 20
        with open(tmp_path / "f.bin", "rb") as f:
            assert f.read() == b"A" * 10 + b"B" * 10 + b"C" * 10 + b"D" * 10
    finally:
        q.close()
        os.close(fd)


def test_submit_failure_on_both_raises_with_dropped(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    prim = FaultyIOQueue(_uring(), nth=[1], errno=errno.ENOMEM, mode="submit")
    fb = FaultyIOQueue(PosixIOQueue(8), nth=[1], errno=errno.EAGAIN, mode="submit")
    q = FallbackIOQueue(prim, fb)
    try:
        r1 = q.prep_write(fd, b"1", 0)
        r2 = q.prep_write(fd, b"2", 1)
        with pytest.raises(SubmitError) as info:
            q.submit()
        assert info.value.dropped == [r1]
        assert info.value.taken == 1
        done = run_all(q, [])
        assert set(done) == {r2}
        assert q.in_flight == 0
    finally:
        q.close()
        os.close(fd)


def test_bookkeeping_errors_are_not_retried(tmp_path):
    q = FallbackIOQueue(_uring(2), PosixIOQueue(8))
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    try:
        q.prep_write(fd, b"1", 0)
        q.prep_write(fd, b"2", 1)
        with pytest.raises(BlockingIOError):
            q.prep_write(fd, b"3", 2)  # depth is min(2, 8): our limit, not an IO error
        assert q.stats["primary"].fallbacks == 0
        run_all(q, [])
    finally:
        q.close()
        os.close(fd)
