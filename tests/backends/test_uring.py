"""io_uring specifics the conformance suite does not reach: short writes on a full file
system, reads from a pipe (GIL released while waiting), version refusal, close()."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from axlpy import BackendUnavailableError
from axlpy.io import PosixIOQueue
from axlpy.testing import run_all
from tests.conftest import blocked_waiting_for_io, requires_uring, wait_until


def _uring(depth=8):
    from axlpy.io._uring import UringIOQueue

    return UringIOQueue(depth)


@pytest.mark.parametrize(
    "make_queue",
    [
        pytest.param(_uring, id="uring", marks=requires_uring),
        pytest.param(PosixIOQueue, id="posix"),
    ],
)
def test_write_that_fills_the_disk_is_an_error_not_short(make_tmpfs, make_queue):
    """A 1 MiB tmpfs, so a 3 MiB write runs out of space part-way."""
    fd = os.open(make_tmpfs("1m") / "big", os.O_RDWR | os.O_CREAT)
    q = make_queue()
    try:
        data = os.urandom(3 << 20)
        r = q.prep_write(fd, data, 0)
        assert run_all(q, [r])[r].result == -errno.ENOSPC
        size = os.fstat(fd).st_size
        # The first, short write landed (that is what the kernel does); the queue went on
        # with the remainder and reported the error instead of a short count.
        assert 0 < size <= 1 << 20
        assert os.pread(fd, size, 0) == data[:size]
        assert q.in_flight == 0
    finally:
        q.close()
        os.close(fd)


@requires_uring
def test_wait_releases_the_gil_and_wakes_on_completion():
    rfd, wfd = os.pipe()
    q = _uring()
    try:
        buf = bytearray(5)
        r = q.prep_read(rfd, buf, 0)
        q.submit()
        got = []
        waiter = threading.Thread(target=lambda: got.extend(q.reap(1, 60.0)))
        waiter.start()
        # The waiter is blocked in the kernel waiting for the read, and this thread runs
        # Python meanwhile: reap() released the GIL (were it held, this loop could not run).
        wait_until(lambda: waiter.native_id is not None
                   and blocked_waiting_for_io(waiter.native_id),
                   "the waiter blocked in the kernel")
        assert got == []
        os.write(wfd, b"hello")
        waiter.join(60)
        assert not waiter.is_alive()
        assert [c.request for c in got] == [r]
        assert got[0].result == 5
        assert bytes(buf) == b"hello"
    finally:
        q.close()
        os.close(rfd)
        os.close(wfd)


@requires_uring
def test_reap_timeout_returns_what_is_done():
    rfd, wfd = os.pipe()
    q = _uring()
    try:
        r = q.prep_read(rfd, bytearray(1), 0)
        q.submit()
        t0 = time.monotonic()
        assert q.reap(1, 0.1) == []
        assert 0.05 < time.monotonic() - t0 < 5
        assert q.in_flight == 1
        os.write(wfd, b"!")
        assert [c.request for c in q.reap(1, 10)] == [r]
        assert q.in_flight == 0
    finally:
        q.close()
        os.close(rfd)
        os.close(wfd)


@requires_uring
def test_close_waits_for_requests_the_kernel_holds():
    rfd, wfd = os.pipe()
    q = _uring()
    buf = bytearray(3)
    q.prep_read(rfd, buf, 0)
    q.submit()
    me = threading.get_native_id()

    def writer() -> None:  # only once close() is waiting in the kernel
        wait_until(lambda: blocked_waiting_for_io(me), "close() blocked in the kernel")
        os.write(wfd, b"abc")

    w = threading.Thread(target=writer)
    w.start()
    q.close()  # must not return while the kernel can still write into buf
    w.join()
    assert bytes(buf) == b"abc"
    os.close(rfd)
    os.close(wfd)
    with pytest.raises(ValueError, match="closed"):
        q.submit()


@requires_uring
def test_depth_larger_than_batch_runs_concurrently(tmp_path):
    """64 requests in flight at once on one ring, all correct."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    q = _uring(64)
    try:
        blocks = [os.urandom(65536) for _ in range(64)]
        reqs = [q.prep_write(fd, b, i * 65536) for i, b in enumerate(blocks)]
        assert q.in_flight == 64
        done = run_all(q, reqs)
        assert all(done[r].result == 65536 for r in reqs)
        assert os.pread(fd, 64 * 65536, 0) == b"".join(blocks)
    finally:
        q.close()
        os.close(fd)


def test_unsupported_liburing_version_is_refused(monkeypatch, tmp_path):
    from axlpy.io import _uring

    # A newer build's metadata first on sys.path, as pip would leave it: read, never loaded.
    (tmp_path / "liburing-2026.1.7.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"2026\.1\.7.*axlpy\[uring\]"):
        _uring.load_liburing()


def test_missing_liburing_says_how_to_install(monkeypatch):
    from axlpy import _imports
    from axlpy.io import _uring

    monkeypatch.setattr(_imports, "dist_version", lambda name: None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'axlpy\[uring\]'"):
        _uring.UringIOQueue(4)


# -- importing liburing while other processes import it --------------------------------------

#: in a fresh process: the first removal of liburing's importer cache fails as when another
#: process removed it a moment before (the race seen with parallel processes), then
#: load_liburing() must still hand out the io_uring API
_RACED_IMPORT = """
import os, sys
import dynamic_import
imp = sys.modules["dynamic_import.importer"]  # the package's ``importer`` is the function
real, calls = imp.remove, []
def remove(path):
    calls.append(path)
    if len(calls) == 1:
        real(path)
        raise FileNotFoundError(2, "No such file or directory (removed by another process)", path)
    return real(path)
imp.remove = remove
from axlpy.io._uring import load_liburing
L = load_liburing()
assert calls, "the importer never rewrote its cache: the race cannot happen here"
assert callable(L.io_uring), L
print("ok")
"""


@requires_uring
def test_liburing_import_survives_another_process_rewriting_its_cache():
    """liburing 2024.5.3 rewrites ``__pycache__/__init__.importer-311.pyc`` on every import
    (its cache loader never succeeds); a process that lost the race on that file used to
    get the bare package on retry: "liburing imported without its io_uring API"."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _RACED_IMPORT], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def _load_after(barrier, results):  # in a forked child
    barrier.wait()
    try:
        from axlpy.io._uring import load_liburing

        results.put("ok" if callable(load_liburing().io_uring) else "no io_uring")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


@requires_uring
def test_processes_importing_liburing_at_once_all_get_its_api():
    """16 processes released together by one barrier, 5 times (before the fix about 1 in
    30 such processes failed here)."""
    import multiprocessing
    from collections import Counter

    ctx = multiprocessing.get_context("fork")
    seen: Counter[str] = Counter()
    for _ in range(5):
        barrier, results = ctx.Barrier(16), ctx.Queue()
        procs = [ctx.Process(target=_load_after, args=(barrier, results)) for _ in range(16)]
        for p in procs:
            p.start()
        for _ in procs:
            seen[results.get(timeout=120)] += 1
        for p in procs:
            p.join()
    assert seen == {"ok": 80}, seen
