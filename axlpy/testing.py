"""Conformance suite for IO queues: ``check_io_queue(make_queue)``.

Every queue (``posix``, ``uring``, ``memory``, the fallback and faulty wrappers, and
``rdma`` where a device exists) must pass the same checks, the way trio's
``check_one_way_stream`` is run against every stream. The checks use real files in a
temporary directory (and ``/dev/full`` for ENOSPC), or, for a
:class:`~axlpy.io.MemoryIOQueue`, its in-memory files::

    from axlpy.io import PosixIOQueue
    from axlpy.testing import check_io_queue

    def test_posix_conforms():
        check_io_queue(PosixIOQueue)

Each check opens its own queue, closes it, and asserts ``in_flight == 0`` before that.
A check that would otherwise wait for ever fails after ``timeout`` seconds instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from .io._base import Completion, IOQueue, IORequest
from .io._memory import MemoryFiles, MemoryIOQueue

__all__ = ["CHECKS", "MemoryTestFiles", "OSTestFiles", "TestFiles", "check_io_queue", "run_all"]

#: how long one check may wait for completions before it fails
TIMEOUT = 60.0


class TestFiles(Protocol):
    """Where the checks get descriptors from."""

    def open(self, data: bytes = b"", *, readable: bool = True, writable: bool = True) -> int:
        """A new file holding ``data``, opened for the given access."""
        ...

    def contents(self, fd: int) -> bytes:
        """Every byte of the file behind ``fd``."""
        ...

    def close(self, fd: int) -> None:
        """Close ``fd``."""
        ...

    def bad_fd(self) -> int:
        """A descriptor that is not open."""
        ...

    def full_fd(self) -> int | None:
        """A descriptor whose writes fail with ENOSPC, or None if there is none."""
        ...


class OSTestFiles:
    """Real files in ``directory``."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._n = 0

    def open(self, data: bytes = b"", *, readable: bool = True, writable: bool = True) -> int:
        self._n += 1
        path = os.path.join(self.directory, f"f{self._n}")
        with open(path, "wb") as f:
            f.write(data)
        mode = os.O_RDWR if readable and writable else os.O_RDONLY if readable else os.O_WRONLY
        return os.open(path, mode | os.O_CLOEXEC)

    def contents(self, fd: int) -> bytes:
        size = os.fstat(fd).st_size
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            return f.read(size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def bad_fd(self) -> int:
        fd = 900
        while True:
            try:
                fcntl.fcntl(fd, fcntl.F_GETFD)
            except OSError:
                return fd
            fd += 1

    def full_fd(self) -> int | None:
        try:
            return os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return None


class MemoryTestFiles:
    """The in-memory files of a :class:`MemoryIOQueue`."""

    __test__ = False

    def __init__(self, files: MemoryFiles) -> None:
        self.files = files

    def open(self, data: bytes = b"", *, readable: bool = True, writable: bool = True) -> int:
        return self.files.open(data, readable=readable, writable=writable)

    def contents(self, fd: int) -> bytes:
        return self.files.contents(fd)

    def close(self, fd: int) -> None:
        self.files.close(fd)

    def bad_fd(self) -> int:
        return self.files.bad_fd()

    def full_fd(self) -> int | None:
        return self.files.open(b"", readable=False, limit=0)


MakeQueue = Callable[[], IOQueue]
Check = Callable[[MakeQueue, TestFiles, int], None]


def run_all(
    queue: IOQueue, requests: Iterable[IORequest] = (), timeout: float = TIMEOUT
) -> dict[IORequest, Completion]:
    """Submit what is prepared and reap until nothing is in flight; return completions by
    request. Fails (AssertionError) if a request completes twice or time runs out."""
    del requests  # they were prepared on ``queue`` already; kept for readability at call sites
    queue.submit()
    done: dict[IORequest, Completion] = {}
    deadline = time.monotonic() + timeout
    while queue.in_flight:
        left = deadline - time.monotonic()
        assert left > 0, f"{queue.name}: {queue.in_flight} requests never completed"
        for c in queue.reap(queue.in_flight, left):
            assert c.request not in done, f"{queue.name}: request completed twice"
            done[c.request] = c
    return done


@contextmanager
def _queue(make_queue: MakeQueue) -> Iterator[IOQueue]:
    q = make_queue()
    try:
        yield q
        assert q.in_flight == 0, f"{q.name}: in_flight is {q.in_flight} after the check"
    finally:
        q.close()


def _pattern(n: int, seed: int) -> bytes:
    block = bytes((seed + i * 7) % 251 for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


# -- the checks ---------------------------------------------------------------------------


def check_offsets(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """Writes at offsets (out of order, one past the end) land where asked; reads return them."""
    fd = files.open()
    try:
        parts = [(8192, _pattern(3000, 1)), (0, _pattern(4096, 2)), (20000, _pattern(10, 3))]
        with _queue(make_queue) as q:
            reqs = [q.prep_write(fd, data, off) for off, data in parts]
            done = run_all(q, reqs)
            assert [done[r].result for r in reqs] == [len(d) for _, d in parts]
            expect = bytearray(20010)
            for off, data in parts:
                expect[off : off + len(data)] = data
            assert files.contents(fd) == bytes(expect)
            bufs = [bytearray(len(d)) for _, d in parts]
            reqs = [q.prep_read(fd, b, off) for b, (off, _) in zip(bufs, parts, strict=True)]
            done = run_all(q, reqs)
            for r, b, (_, data) in zip(reqs, bufs, parts, strict=True):
                assert done[r].result == len(data)
                assert bytes(b) == data
            hole = bytearray(100)
            r = q.prep_read(fd, hole, 5000)
            assert run_all(q, [r])[r].result == 100
            assert hole == bytes(100)
    finally:
        files.close(fd)


def check_short_read_at_eof(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """A read is short only at end of file: across it, at it, past it."""
    data = _pattern(1000, 4)
    fd = files.open(data)
    try:
        with _queue(make_queue) as q:
            cases = [(0, 4096, 1000), (600, 1000, 400), (1000, 10, 0), (50_000, 10, 0)]
            bufs = [bytearray(n) for _, n, _ in cases]
            reqs = [q.prep_read(fd, b, off) for b, (off, _, _) in zip(bufs, cases, strict=True)]
            done = run_all(q, reqs)
            for r, b, (off, _, expect) in zip(reqs, bufs, cases, strict=True):
                assert done[r].result == expect, (off, done[r].result)
                assert bytes(b[:expect]) == data[off : off + expect]
    finally:
        files.close(fd)


def check_zero_length(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """Zero-byte reads and writes complete with 0 and change nothing."""
    fd = files.open(b"abc")
    try:
        with _queue(make_queue) as q:
            reqs = [q.prep_read(fd, bytearray(), 1), q.prep_write(fd, b"", 10)]
            done = run_all(q, reqs)
            assert [done[r].result for r in reqs] == [0, 0]
            assert files.contents(fd) == b"abc"
    finally:
        files.close(fd)


def check_large_buffers(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """A single request of ``large`` bytes (64 MiB by default) moves whole."""
    data = os.urandom(large)
    fd = files.open()
    try:
        with _queue(make_queue) as q:
            r = q.prep_write(fd, data, 4096)
            assert run_all(q, [r])[r].result == large
            buf = bytearray(large + 4096)
            r = q.prep_read(fd, buf, 4096)
            assert run_all(q, [r])[r].result == large
            assert buf[:large] == data
    finally:
        files.close(fd)


def check_errors(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """Errors come back as -errno completions: EBADF, EBADF for the wrong access mode,
    ENOSPC; and a failing request does not spoil the good ones submitted with it."""
    good = files.open(b"hello")
    ro = files.open(b"read-only", writable=False)
    wo = files.open(b"write-only", readable=False)
    full = files.full_fd()
    bad = files.bad_fd()
    try:
        with _queue(make_queue) as q:
            buf = bytearray(5)
            # A good read first, so a depth-1 queue still mixes it with failures.
            specs: list[tuple[Callable[[], IORequest], int]] = [
                (lambda: q.prep_read(good, buf, 0), 5),
                (lambda: q.prep_read(bad, bytearray(10), 0), -errno.EBADF),
                (lambda: q.prep_write(bad, b"x", 0), -errno.EBADF),
                (lambda: q.prep_write(ro, b"nope", 0), -errno.EBADF),
                (lambda: q.prep_read(wo, bytearray(4), 0), -errno.EBADF),
            ]
            if full is not None:
                specs.append((lambda: q.prep_write(full, b"no room", 0), -errno.ENOSPC))
            got: list[int] = []
            for i in range(0, len(specs), q.depth):
                reqs = [prep() for prep, _ in specs[i : i + q.depth]]
                done = run_all(q, reqs)
                got += [done[r].result for r in reqs]
                failed = [c for c in done.values() if not c.ok]
                assert all(c.errno == -c.result for c in failed)
            assert got == [e for _, e in specs], got
            assert bytes(buf) == b"hello"
            assert files.contents(ro) == b"read-only"
    finally:
        for fd in (good, ro, wo) + ((full,) if full is not None else ()):
            files.close(fd)


def check_completion_order(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """Completions name their requests (and tags); each comes back exactly once, in any
    order; results are right whatever the order."""
    fd = files.open()
    try:
        with _queue(make_queue) as q:
            n = min(32, q.depth)
            blocks = [_pattern(4096, i) for i in range(n)]
            reqs = [q.prep_write(fd, b, i * 4096, tag=("w", i)) for i, b in enumerate(blocks)]
            assert q.in_flight == n
            done = run_all(q, reqs)
            assert set(done) == set(reqs)
            for r in reqs:
                assert done[r].request is r
                assert done[r].result == 4096
                assert r.backend, "the queue that ran a request must name itself"
            assert files.contents(fd) == b"".join(blocks)
            bufs = [bytearray(4096) for _ in range(n)]
            reqs = [q.prep_read(fd, b, i * 4096, tag=i) for i, b in enumerate(bufs)]
            done = run_all(q, reqs)
            for c in done.values():
                i = c.request.tag
                assert isinstance(i, int)
                assert bytes(bufs[i]) == blocks[i]
    finally:
        files.close(fd)


def check_accounting(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """``in_flight`` counts prepared and unreaped requests; ``depth`` is enforced at prep;
    ``reap`` on an idle queue returns at once; many rounds reuse the queue cleanly."""
    fd = files.open(_pattern(4096, 9))
    try:
        with _queue(make_queue) as q:
            assert q.depth >= 1
            assert q.in_flight == 0
            t0 = time.monotonic()
            assert q.reap(1, 0.05) == []
            assert q.reap(0) == []
            assert time.monotonic() - t0 < 5
            reqs = [q.prep_read(fd, bytearray(16), 0) for _ in range(q.depth)]
            assert q.in_flight == q.depth
            try:
                q.prep_read(fd, bytearray(16), 0)
            except BlockingIOError:
                pass
            else:
                raise AssertionError(f"{q.name}: prep past depth {q.depth} was accepted")
            assert q.in_flight == q.depth
            done = run_all(q, reqs)
            assert len(done) == q.depth
            assert q.in_flight == 0
            for _ in range(10):  # wrap the mechanism's rings a few times
                reqs = [q.prep_read(fd, bytearray(64), 64 * i) for i in range(min(q.depth, 8))]
                assert all(c.result == 64 for c in run_all(q, reqs).values())
    finally:
        files.close(fd)


def check_arguments(make_queue: MakeQueue, files: TestFiles, large: int) -> None:
    """Bad arguments are refused at prep, and a closed queue refuses everything."""
    fd = files.open(b"x")
    try:
        q = make_queue()
        bad_calls: list[Callable[[], IORequest]] = [
            lambda: q.prep_read(fd, b"read-only bytes", 0),
            lambda: q.prep_write(fd, b"x", -1),
        ]
        for bad_call in bad_calls:
            try:
                bad_call()
            except ValueError:
                pass
            else:
                raise AssertionError(f"{q.name}: bad argument accepted")
        assert q.in_flight == 0
        q.close()
        q.close()  # idempotent
        try:
            q.prep_write(fd, b"x", 0)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{q.name}: prep after close accepted")
    finally:
        files.close(fd)


CHECKS: dict[str, Check] = {
    "offsets": check_offsets,
    "short_read_at_eof": check_short_read_at_eof,
    "zero_length": check_zero_length,
    "large_buffers": check_large_buffers,
    "errors": check_errors,
    "completion_order": check_completion_order,
    "accounting": check_accounting,
    "arguments": check_arguments,
}


def check_io_queue(
    make_queue: MakeQueue,
    *,
    files: TestFiles | None = None,
    only: Iterable[str] | None = None,
    large: int = 64 << 20,
) -> None:
    """Run the conformance checks against queues made by ``make_queue``.

    Args:
        make_queue: returns a new, open queue each call.
        files: where descriptors come from; by default real files in a temporary
            directory, or the in-memory files of a :class:`MemoryIOQueue`.
        only: names from :data:`CHECKS` to run (all by default).
        large: the size of the large-buffer check's single request.

    Raises:
        AssertionError: the first check that failed, with the queue's name.
    """
    names = list(CHECKS) if only is None else list(only)
    unknown = set(names) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks: {sorted(unknown)}")
    if files is not None:
        for name in names:
            CHECKS[name](make_queue, files, large)
        return
    probe = make_queue()
    try:
        memory = probe.files if isinstance(probe, MemoryIOQueue) else None
    finally:
        probe.close()
    if memory is not None:
        for name in names:
            CHECKS[name](make_queue, MemoryTestFiles(memory), large)
        return
    with tempfile.TemporaryDirectory(prefix="axlpy-check-") as d:
        for name in names:
            CHECKS[name](make_queue, OSTestFiles(d), large)
