"""In-memory queue: the reference implementation the conformance suite is checked against.

Some facts about the files it models (those of a local POSIX file system): a read at or
past the end returns fewer bytes (0 past it); a write past the end grows the file and
leaves a hole of zero bytes; a write to a descriptor opened read-only, a read from one
opened write-only, and any IO on a descriptor that is not open fail with EBADF; a write
that runs out of space first writes what fits, then fails with ENOSPC on the remainder;
the kernel's own queues complete requests in any order, which is why this one returns
them in reverse (or seeded random) order rather than the order they were submitted in.
"""

from __future__ import annotations

import errno
import random
import threading
from collections import deque
from dataclasses import dataclass

from ._base import Completion, IOOp, IOQueue, IORequest

__all__ = ["MemoryFiles", "MemoryIOQueue"]


@dataclass
class _File:
    data: bytearray
    readable: bool
    writable: bool
    limit: int | None


class MemoryFiles:
    """A table of in-memory files addressed by integer descriptors, shared by queues.

    Descriptors start at 1,000,000 so a real descriptor is never mistaken for one. All
    methods are thread-safe.
    """

    _FIRST_FD = 1_000_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[int, _File] = {}
        self._next = self._FIRST_FD

    def open(
        self,
        data: bytes = b"",
        *,
        readable: bool = True,
        writable: bool = True,
        limit: int | None = None,
    ) -> int:
        """Create a file holding ``data`` and return its descriptor.

        Args:
            data: initial contents.
            readable: reads succeed (else EBADF, like a file opened O_WRONLY).
            writable: writes succeed (else EBADF, like a file opened O_RDONLY).
            limit: the most bytes the file may hold; writing past it fails with ENOSPC
                after the bytes that fit were written.
        """
        with self._lock:
            fd = self._next
            self._next += 1
            self._files[fd] = _File(bytearray(data), readable, writable, limit)
            return fd

    def contents(self, fd: int) -> bytes:
        """A copy of the file's bytes. Raises ``OSError(EBADF)`` if ``fd`` is not open."""
        with self._lock:
            return bytes(self._get(fd).data)

    def close(self, fd: int) -> None:
        """Forget the file. Raises ``OSError(EBADF)`` if ``fd`` is not open."""
        with self._lock:
            self._get(fd)
            del self._files[fd]

    def __contains__(self, fd: object) -> bool:
        with self._lock:
            return fd in self._files

    def bad_fd(self) -> int:
        """A descriptor that is not open (and never was)."""
        return self._FIRST_FD - 1

    def run(self, req: IORequest) -> int:
        """Run one request: bytes moved, or ``-errno``."""
        with self._lock:
            try:
                f = self._get(req.fd)
            except OSError as exc:
                return -(exc.errno or errno.EIO)
            if req.length == 0:
                return 0
            if req.op is IOOp.READ:
                if not f.readable:
                    return -errno.EBADF
                chunk = f.data[req.offset : req.offset + req.length]
                req.buf[: len(chunk)] = chunk
                return len(chunk)
            if not f.writable:
                return -errno.EBADF
            end = req.offset + req.length
            room = end if f.limit is None else min(end, f.limit)
            fits = max(0, room - req.offset)
            if fits:
                if len(f.data) < req.offset:
                    f.data.extend(bytes(req.offset - len(f.data)))
                f.data[req.offset : req.offset + fits] = req.buf[:fits]
            return req.length if fits == req.length else -errno.ENOSPC

    def _get(self, fd: int) -> _File:
        try:
            return self._files[fd]
        except KeyError:
            raise OSError(errno.EBADF, f"memory fd {fd} is not open") from None


class MemoryIOQueue(IOQueue):
    """Requests on :class:`MemoryFiles`, completed at ``reap()`` in a scrambled order.

    Args:
        files: the file table the descriptors refer to (a new empty one by default).
        depth: the most requests prepared or unreaped at once.
        seed: ``None`` completes in reverse submission order; an int shuffles with
            ``random.Random(seed)`` so a failing order can be replayed.
    """

    name = "memory"
    thread_safe = True

    def __init__(
        self, files: MemoryFiles | None = None, depth: int = 64, *, seed: int | None = None
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.files = files if files is not None else MemoryFiles()
        self._depth = depth
        self._rng = random.Random(seed) if seed is not None else None
        self._lock = threading.Lock()
        self._prepared: list[IORequest] = []
        self._submitted: deque[IORequest] = deque()
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._prepared) + len(self._submitted)

    def accepts(self, request: IORequest) -> bool:
        """Only descriptors of this queue's :class:`MemoryFiles` (never a real one)."""
        return request.fd in self.files

    def prep(self, request: IORequest) -> None:
        with self._lock:
            self._check_open()
            if len(self._prepared) + len(self._submitted) >= self._depth:
                raise BlockingIOError(f"memory queue full ({self._depth} in flight)")
            request.backend = self.name
            self._prepared.append(request)

    def submit(self) -> int:
        with self._lock:
            self._check_open()
            n = len(self._prepared)
            self._submitted.extend(self._prepared)
            self._prepared.clear()
            return n

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        with self._lock:
            self._check_open()
            todo = list(self._submitted)
            self._submitted.clear()
        if self._rng is None:
            todo.reverse()
        else:
            self._rng.shuffle(todo)
        return [Completion(req, self.files.run(req)) for req in todo]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._prepared.clear()
            self._submitted.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")
