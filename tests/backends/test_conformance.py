"""Every queue passes the same conformance suite (axlpy.testing.check_io_queue)."""

from __future__ import annotations

import errno

import pytest

from axlpy.io import (
    FallbackIOQueue,
    FaultyIOQueue,
    MemoryFiles,
    MemoryIOQueue,
    PosixIOQueue,
    probe_queue,
)
from axlpy.testing import CHECKS, MemoryTestFiles, check_io_queue
from tests.conftest import requires_uring

# Each capability probe runs once per process (probe_queue is cached).
_RDMA = probe_queue("rdma")
requires_rdma = [
    pytest.mark.requires_rdma,
    pytest.mark.skipif(_RDMA is not None, reason=f"RDMA unavailable: {_RDMA}"),
]


def _uring(depth: int = 64):
    from axlpy.io._uring import UringIOQueue

    return UringIOQueue(depth)


_MEMORY = MemoryFiles()

FACTORIES = [
    pytest.param(lambda: PosixIOQueue(8), id="posix"),
    pytest.param(lambda: MemoryIOQueue(_MEMORY, 8), id="memory"),
    pytest.param(lambda: MemoryIOQueue(_MEMORY, 8, seed=1234), id="memory-shuffled"),
    pytest.param(lambda: _uring(8), id="uring", marks=requires_uring),
    pytest.param(lambda: _uring(64), id="uring-64", marks=requires_uring),
    pytest.param(
        lambda: FallbackIOQueue(_uring(8), PosixIOQueue(8, reopen_direct=True)),
        id="fallback-uring-posix",
        marks=requires_uring,
    ),
    pytest.param(
        lambda: FallbackIOQueue(PosixIOQueue(8), MemoryIOQueue(_MEMORY, 8)),
        id="fallback-posix-memory",
    ),
    # A FaultyIOQueue that never fires must be transparent.
    pytest.param(lambda: FaultyIOQueue(PosixIOQueue(8)), id="faulty-idle-posix"),
]


@pytest.mark.parametrize("make_queue", FACTORIES)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_conformance(make_queue, check):
    check_io_queue(make_queue, only=[check])


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_memory_conformance_explicit_files(check):
    files = MemoryFiles()
    check_io_queue(lambda: MemoryIOQueue(files, 4), files=MemoryTestFiles(files), only=[check])


@pytest.mark.parametrize("check", [pytest.param(c, marks=requires_rdma) for c in sorted(CHECKS)])
def test_rdma_conformance(check, tmp_path):  # pragma: no cover - no RDMA device here
    import os
    import threading

    from axlpy.io._rdma import VerbsIOQueue, VerbsPeer
    from axlpy.testing import OSTestFiles

    peer = VerbsPeer(0)
    port = peer._listener.getsockname()[1]
    threading.Thread(target=peer.serve_one, daemon=True).start()
    queue = VerbsIOQueue(("127.0.0.1", port), 8)

    class RemoteFiles(OSTestFiles):
        def open(self, data=b"", *, readable=True, writable=True):
            local = super().open(data, readable=readable, writable=writable)
            path = os.readlink(f"/proc/self/fd/{local}")
            os.close(local)
            mode = os.O_RDWR if readable and writable else os.O_RDONLY if readable else os.O_WRONLY
            return queue.open_remote(path, mode)

    check_io_queue(lambda: queue, files=RemoteFiles(str(tmp_path)), only=[check], large=4 << 20)


def test_suite_catches_a_broken_queue():
    """The suite is not vacuous: a queue that swallows a write's errno fails it."""

    class Lying(PosixIOQueue):
        def reap(self, min_complete=1, timeout=None):
            return [
                type(c)(c.request, c.request.length) if c.result == -errno.EBADF else c
                for c in super().reap(min_complete, timeout)
            ]

    with pytest.raises(AssertionError):
        check_io_queue(lambda: Lying(8), only=["errors"])


def test_unknown_check_name():
    with pytest.raises(ValueError, match="unknown checks"):
        check_io_queue(PosixIOQueue, only=["nope"])
