"""io_uring queue on the ``liburing`` 2024.5.3 Cython binding.

Some facts about io_uring completions:

- A completion (CQE) carries the 64-bit ``user_data`` of its submission (SQE) and ``res``:
  bytes moved, or ``-errno``. CQEs arrive in whatever order the kernel finishes the
  requests, not in submission order; ``user_data`` is the only link back.
- ``res`` may be short for a regular file too: a read crossing end of file, a write that
  filled the disk part-way, a request over MAX_RW_COUNT (0x7ffff000 bytes), a request
  punted to an io-wq worker that was interrupted. Nothing resubmits the remainder for us,
  so this queue does, until the read returns 0 (end of file) or the write fails.
- -EAGAIN and -EINTR in ``res`` mean "nothing happened, try again", not an IO error.
- Errors about the request itself (bad descriptor, O_DIRECT misalignment -> EINVAL,
  read-only descriptor -> EBADF) come back as CQEs, not as a failing io_uring_enter(2).
  io_uring_enter fails only when it consumed no SQE at all (EAGAIN/ENOMEM for kernel
  memory, EBUSY when the CQ ring would overflow, EINTR); its SQEs then stay in the ring.
- Buffered IO that hits the page cache is done inline inside io_uring_enter, so
  ``submit()`` may itself take as long as the copy. The binding's calls do not release
  the GIL, so this queue never blocks in ``io_uring_wait_cqe``: it registers an eventfd,
  which the kernel signals on every CQE, and waits in ``poll(2)``, which does.
- The kernel keeps reading into or writing from our buffers until each CQE is posted,
  even after ``io_uring_queue_exit``; so ``close()`` first waits for every request the
  kernel holds.
- Registered (fixed) buffers spare the kernel pinning user pages per request; that only
  matters for O_DIRECT. The binding's ``*_fixed`` calls take a ``char *`` (the start of a
  ``bytes``/``bytearray``), so caller buffers would have to be copied into registered
  bounce buffers; bench/io_queues.py measured that copy costing more than pinning saves,
  so this queue uses plain IORING_OP_READ/WRITE (see docs/backends.md).
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .._errors import BackendUnavailableError
from ._base import Completion, IOOp, IOQueue, IORequest, SubmitError

__all__ = ["SUPPORTED_LIBURING", "UringIOQueue", "load_liburing"]

#: the only binding this module is written and tested against
SUPPORTED_LIBURING = "2024.5.3"
_INSTALL_HINT = f"pip install 'axlpy[uring]' (liburing=={SUPPORTED_LIBURING})"
#: one SQE moves at most this much; the kernel caps a single read/write at 0x7ffff000
_IOSQE_ASYNC = 1 << 4  # IOSQE_ASYNC_BIT = 4 in <linux/io_uring.h>
_MAX_SQE_BYTES = 1 << 30
#: "try again" results retried in place, at most this many times for one request
_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR})
_MAX_RETRIES = 16
#: user_data of an SQE we turned into a no-op after a failed io_uring_enter
_IGNORED = 0


_LIBURING: ModuleType | None = None
_LIBURING_LOCK = threading.Lock()


def check_liburing_version() -> str:
    """The installed liburing's version, read from its distribution metadata without
    importing it. The only place axlpy checks it (the probe and :func:`load_liburing`
    both call this). Raises BackendUnavailableError if liburing is missing or is not
    :data:`SUPPORTED_LIBURING`."""
    from .._imports import dist_version

    version = dist_version("liburing")
    if version is None:
        raise BackendUnavailableError(f"io_uring needs liburing: {_INSTALL_HINT}")
    if version != SUPPORTED_LIBURING:
        raise BackendUnavailableError(
            f"liburing {version} is installed but axlpy only loads {SUPPORTED_LIBURING} "
            f"(the 2026.x build can crash with SIGILL): {_INSTALL_HINT}"
        )
    return version


def load_liburing() -> ModuleType:
    """Import the liburing binding after checking its installed version.

    The version is read from the distribution metadata *before* importing, so an
    unsupported build (the 2026.x Zig build dies with SIGILL on CPUs without AVX-512) is
    never loaded into this process.

    Raises:
        BackendUnavailableError: liburing is missing, or not version 2024.5.3.
    """
    check_liburing_version()
    global _LIBURING
    # liburing's package __init__ loads its API through a custom importer that rewrites a
    # .pyc as it goes; two threads importing it at once let the second one see a module
    # without io_uring() yet (seen: "module 'liburing' has no attribute 'io_uring'").
    # Import it once, under a lock, and hand out the finished module.
    with _LIBURING_LOCK:
        if _LIBURING is None:
            _LIBURING = _import_liburing()
        return _LIBURING


def _import_liburing() -> ModuleType:
    """Import liburing in this process, with other processes kept out meanwhile.

    liburing 2024.5.3's ``__init__`` runs ``dynamic_import.importer()``, whose cache loader
    never succeeds (a bug in ``load_cache``), so *every* import removes and rewrites
    ``liburing/__pycache__/__init__.importer-311.pyc``. Processes importing it at once
    (MPI ranks, parallel tests) race on that file (``FileNotFoundError``), and the importer
    marks the package as done *before* that work, so a retry in the same process used to
    get the bare package without ``io_uring`` (about 1 in 30 of 16 processes started
    together). An exclusive ``flock`` on the package directory while importing serialises
    the processes of every user who can read it; if an import still fails, the importer's
    record is dropped so the retry runs it again. Nothing axlpy owns is written.
    """
    import fcntl
    import importlib.util

    spec = importlib.util.find_spec("liburing")  # locates, runs nothing
    where = list(spec.submodule_search_locations or []) if spec else []
    lock_fd = -1
    if where:
        try:
            lock_fd = os.open(where[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except OSError:  # unreadable or no flock here: import as before
            if lock_fd >= 0:
                os.close(lock_fd)
            lock_fd = -1
    try:
        for attempt in range(5):
            try:
                import liburing

                if hasattr(liburing, "io_uring"):
                    module: ModuleType = liburing
                    return module
            except (ImportError, OSError):
                if attempt == 4:
                    raise
            for name in [m for m in sys.modules
                         if m == "liburing" or m.startswith("liburing.")]:
                del sys.modules[name]
            _forget_importer_record(where)
            time.sleep(0.05 * (attempt + 1))
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)  # releases the flock
    raise BackendUnavailableError("liburing imported without its io_uring API")


def _forget_importer_record(where: list[str]) -> None:
    # dynamic_import.check.IMPORTER_CALLED maps "<package dir>/" to the sub-directories it
    # excluded; while the entry is there, importer() returns at once and leaves the bare
    # package in sys.modules.
    check = sys.modules.get("dynamic_import.check")
    called = getattr(check, "IMPORTER_CALLED", None)
    if isinstance(called, dict):
        for path in where:
            called.pop(os.path.join(path, ""), None)


def _check_kernel() -> None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
    except OSError:
        return  # older kernels have no such switch
    if disabled == "2":
        raise BackendUnavailableError("io_uring is disabled (kernel.io_uring_disabled=2)")


@dataclass(eq=False)
class _Op:
    request: IORequest
    done: int = 0
    retries: int = 0


class UringIOQueue(IOQueue):
    """Reads and writes through one io_uring; one instance per thread.

    Args:
        depth: the most requests in flight at once; also the ring's SQ size (the kernel
            rounds it up to a power of two and makes the CQ twice as big, so completions
            never overflow).

    Raises:
        BackendUnavailableError: liburing 2024.5.3 is missing, or the kernel refuses to
            set up a ring (ENOSYS, EPERM, io_uring_disabled).
    """

    name = "uring"
    thread_safe = False

    def __init__(self, depth: int = 64) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._L: Any = load_liburing()
        _check_kernel()
        self._depth = depth
        self._ring: Any = self._L.io_uring()
        try:
            self._L.io_uring_queue_init(depth, self._ring, 0)
        except OSError as exc:
            raise BackendUnavailableError(f"io_uring_queue_init failed: {exc}") from exc
        self._cqe: Any = self._L.io_uring_cqe()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._L.io_uring_register_eventfd(self._ring, self._efd)
        except OSError as exc:
            os.close(self._efd)
            self._L.io_uring_queue_exit(self._ring)
            raise BackendUnavailableError(f"io_uring_register_eventfd failed: {exc}") from exc
        self._poll = select.poll()
        self._poll.register(self._efd, select.POLLIN)
        self._prepared: list[IORequest] = []
        self._ops: dict[int, _Op] = {}
        self._done: deque[Completion] = deque()
        self._next_key = 1
        self._nops = 0  # SQEs turned into no-ops whose CQEs we still expect
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_flight(self) -> int:
        return len(self._prepared) + len(self._ops) + len(self._done)

    def prep(self, request: IORequest) -> None:
        self._check_open()
        if self.in_flight >= self._depth:
            raise BlockingIOError(f"uring queue full ({self._depth} in flight)")
        request.backend = self.name
        self._prepared.append(request)

    def submit(self) -> int:
        self._check_open()
        todo, self._prepared = self._prepared, []
        batch: list[tuple[Any, int]] = []
        for req in todo:
            if req.length == 0:
                # A zero-length SQE would need a pointer into an empty buffer; the answer
                # is known without asking the kernel.
                self._done.append(Completion(req, 0))
                continue
            key = self._next_key
            self._next_key += 1
            op = _Op(req)
            self._ops[key] = op
            batch.append((self._queue_sqe(op, key), key))
        if not batch:
            return len(todo)
        try:
            self._enter()
        except OSError as exc:
            # io_uring_enter consumed none of this batch: turn its SQEs into no-ops so the
            # kernel never touches the buffers, and give the requests back undone.
            dropped = []
            for sqe, key in batch:
                self._L.io_uring_prep_nop(sqe)
                self._L.io_uring_sqe_set_data64(sqe, _IGNORED)
                self._nops += 1
                dropped.append(self._ops.pop(key).request)
            taken = len(todo) - len(dropped)
            raise SubmitError(
                exc.errno or errno.EIO,
                f"io_uring_enter failed: {exc}",
                taken=taken,
                dropped=dropped,
            ) from exc
        return len(todo)

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        self._check_open()
        out = list(self._done)
        self._done.clear()
        want = min(min_complete, len(out) + len(self._ops))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain(out)
            if len(out) >= want:
                return out
            if deadline is None:
                wait_ms = -1
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return out
                wait_ms = max(1, int(left * 1000))
            if self._poll.poll(wait_ms):
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass  # a spurious wakeup: the counter was already reset

    def close(self) -> None:
        if self._closed:
            return
        # The kernel may still be copying into caller buffers: wait for all of it.
        self._prepared.clear()
        while self._ops or self._nops:
            self._drain(None)
            if self._ops or self._nops:
                self._poll.poll(100)
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
        self._done.clear()
        self._closed = True
        self._poll.unregister(self._efd)
        try:
            self._L.io_uring_unregister_eventfd(self._ring)
        finally:
            os.close(self._efd)
            self._L.io_uring_queue_exit(self._ring)

    def __del__(self) -> None:
        if getattr(self, "_closed", True) is False:
            self.close()

    # -- internals ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")

    def _get_sqe(self) -> Any:
        sqe = self._L.io_uring_get_sqe(self._ring)
        if not sqe:
            # The SQ ring is full of earlier SQEs the kernel has not consumed yet.
            self._enter()
            sqe = self._L.io_uring_get_sqe(self._ring)
            if not sqe:  # pragma: no cover - depth <= SQ entries rules this out
                raise BlockingIOError("io_uring submission queue is full")
        return sqe

    def _queue_sqe(self, op: _Op, key: int) -> Any:
        req = op.request
        n = min(req.length - op.done, _MAX_SQE_BYTES)
        view = req.buf[op.done : op.done + n]
        sqe = self._get_sqe()
        if req.op is IOOp.READ:
            self._L.io_uring_prep_read(sqe, req.fd, view, n, req.offset + op.done)
        else:
            self._L.io_uring_prep_write(sqe, req.fd, view, n, req.offset + op.done)
            # A buffered write is done inline, inside io_uring_enter, and the binding holds
            # the GIL there: punt writes to the kernel's io-wq workers instead, so copying
            # overlaps with checksumming and reading (measured: 77 -> 158 MB/s).
            self._L.io_uring_sqe_set_flags(sqe, _IOSQE_ASYNC)
        self._L.io_uring_sqe_set_data64(sqe, key)
        return sqe

    def _enter(self) -> None:
        """Hand every queued SQE to the kernel, retrying its "try again" answers."""
        for attempt in range(_MAX_RETRIES):
            if self._L.io_uring_sq_ready(self._ring) == 0:
                return
            try:
                self._L.io_uring_submit(self._ring)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EBUSY, errno.EINTR):
                    raise
                if attempt == _MAX_RETRIES - 1:
                    raise
                # EBUSY: the CQ ring is full; it empties as we reap into _done.
                self._drain_into_done()
                time.sleep(0.0001 * (attempt + 1))
        if self._L.io_uring_sq_ready(self._ring):  # pragma: no cover
            raise OSError(errno.EAGAIN, "io_uring kept refusing submissions")

    def _drain_into_done(self) -> None:
        tmp: list[Completion] = []
        self._drain(tmp)
        self._done.extend(tmp)

    def _drain(self, out: list[Completion] | None) -> None:
        """Consume every CQE that is ready; finished requests go to ``out``."""
        L, ring, cqe = self._L, self._ring, self._cqe
        again: list[tuple[Any, int]] = []
        while L.io_uring_peek_cqe(ring, cqe) == 0:
            key = cqe.user_data
            res = cqe.res
            L.io_uring_cqe_seen(ring, cqe)
            if key == _IGNORED:
                self._nops -= 1
                continue
            op = self._ops[key]
            result = self._advance(op, res)
            if result is None:
                again.append((self._queue_sqe(op, key), key))  # the rest, same key
                continue
            del self._ops[key]
            if out is not None:
                out.append(Completion(op.request, result))
        if not again:
            return
        try:
            self._enter()
        except OSError as exc:
            # The kernel took none of the remainders: they end with its errno (a write
            # that stops part-way is an error, never a short completion).
            for sqe, key in again:
                L.io_uring_prep_nop(sqe)
                L.io_uring_sqe_set_data64(sqe, _IGNORED)
                self._nops += 1
                op = self._ops.pop(key)
                if out is not None:
                    out.append(Completion(op.request, -(exc.errno or errno.EIO)))

    def _advance(self, op: _Op, res: int) -> int | None:
        """Fold one CQE into its request: the final result, or None to resubmit."""
        req = op.request
        if res < 0:
            if -res in _RETRY_ERRNOS and op.retries < _MAX_RETRIES:
                op.retries += 1
                return None
            return res
        if res == 0:
            if req.op is IOOp.READ:
                return op.done  # end of file
            return -errno.EIO  # a write that moves nothing would loop for ever
        op.done += res
        if op.done < req.length:
            return None  # short: continue with the remainder
        return op.done
