"""POSIX queue: ``os.preadv``/``os.pwritev`` run at submit time.

Some facts about pread(2)/pwrite(2): both may move fewer bytes than asked (a signal, a
pipe, a full disk part-way); pwrite's short write is continued here so a write completes
whole or with an error; pread returns 0 only at end of file, so a read stops short there.
EINTR is retried at once (PEP 475 already does this for us in os.preadv/os.pwritev).
A single call moves at most 0x7ffff000 bytes (MAX_RW_COUNT), so requests over 2 GiB are
always continued. On a descriptor opened with O_DIRECT the buffer address, the offset and
the length must be aligned to the device's logical block (512 or 4096 bytes): otherwise
the kernel answers EINVAL before moving anything. ``reopen_direct=True`` retries such a
request through a second, buffered descriptor of the same file (``/proc/self/fd/N``),
which is what makes this queue a useful fallback behind io_uring for O_DIRECT files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections import deque

from ._base import Completion, IOOp, IOQueue, IORequest

__all__ = ["PosixIOQueue"]

_O_DIRECT = getattr(os, "O_DIRECT", 0)


class PosixIOQueue(IOQueue):
    """Synchronous pread/pwrite behind the queue interface; safe to share across threads.

    Args:
        depth: the most requests prepared or unreaped at once.
        reopen_direct: when a request on an O_DIRECT descriptor fails with EINVAL (an
            unaligned buffer, offset or length), run it again through a buffered
            descriptor of the same file. Off by default: the caller asked for O_DIRECT.
    """

    name = "posix"
    thread_safe = True

    def __init__(self, depth: int = 64, *, reopen_direct: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._depth = depth
        self._reopen_direct = reopen_direct
        self._lock = threading.Lock()
        self._prepared: deque[IORequest] = deque()
        self._done: deque[Completion] = deque()
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._prepared) + len(self._done)

    def prep(self, request: IORequest) -> None:
        with self._lock:
            self._check_open()
            if len(self._prepared) + len(self._done) >= self._depth:
                raise BlockingIOError(f"posix queue full ({self._depth} in flight)")
            request.backend = self.name
            self._prepared.append(request)

    def submit(self) -> int:
        with self._lock:
            self._check_open()
            todo = list(self._prepared)
            self._prepared.clear()
        for req in todo:
            result = _run(req)
            if result == -errno.EINVAL and self._reopen_direct:
                result = _run_buffered(req, result)
            with self._lock:
                self._done.append(Completion(req, result))
        return len(todo)

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        # Every submitted request is already done: nothing to wait for.
        with self._lock:
            out = list(self._done)
            self._done.clear()
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._prepared.clear()
            self._done.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")


def _run(req: IORequest, fd: int | None = None) -> int:
    """Run one request to the end (bytes moved) or return ``-errno``."""
    fd = req.fd if fd is None else fd
    done = 0
    try:
        if req.op is IOOp.READ:
            while done < req.length:
                n = os.preadv(fd, [req.buf[done:]], req.offset + done)
                if n == 0:
                    break  # end of file
                done += n
        else:
            while done < req.length:
                n = os.pwritev(fd, [req.buf[done:]], req.offset + done)
                if n == 0:  # pragma: no cover - pwrite never returns 0 for len > 0
                    raise OSError(errno.EIO, "pwrite wrote nothing")
                done += n
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    return done


def _run_buffered(req: IORequest, result: int) -> int:
    """Run ``req`` again through a buffered descriptor if its own is O_DIRECT."""
    try:
        flags = fcntl.fcntl(req.fd, fcntl.F_GETFL)
    except OSError:
        return result
    if not flags & _O_DIRECT:
        return result
    # F_GETFL gives the access mode and the status flags; O_CREAT/O_TRUNC are not among
    # them, so reopening with these flags cannot truncate or create anything.
    try:
        alt = os.open(f"/proc/self/fd/{req.fd}", (flags & ~_O_DIRECT) | os.O_CLOEXEC)
    except OSError:
        return result
    try:
        return _run(req, alt)
    finally:
        os.close(alt)
