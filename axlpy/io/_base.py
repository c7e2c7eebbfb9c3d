"""The IO-queue contract: the lowest-level operations and nothing more.

A queue moves bytes between a file descriptor and a caller-owned buffer. It does not chunk,
checksum, fsync, thread or retry: the engine above does each of those once, for every queue.

Ownership and ordering rules:

- ``prep_read``/``prep_write`` only record a request; nothing happens until ``submit()``.
  The caller keeps the buffer alive and untouched until that request's completion is reaped.
- ``submit()`` hands every prepared request to the mechanism and returns how many it took.
  If it raises, the requests it did not take are dropped and their reservations released
  (see ``axlpy._admission``); the requests it took still complete and must be reaped.
- ``reap()`` returns completions in whatever order the mechanism finished them; each names
  its request. A completion's ``result`` is the number of bytes moved, or ``-errno``.
  A write completes in full or with an error (a queue resubmits a short write's remainder
  itself); a read is short only at end of file.
- ``depth`` is the most requests in flight at once; ``in_flight`` counts prepared or
  submitted requests not yet reaped. After ``close()`` nothing may be called but ``close()``.
- ``thread_safe`` says whether several threads may use one queue at once. When it is False
  the engine gives each thread its own queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    # collections.abc.Buffer is 3.12+; the stub-only name costs nothing at run time.
    from typing_extensions import Buffer

__all__ = ["Completion", "IOOp", "IOQueue", "IORequest", "SubmitError", "as_memoryview"]


class IOOp(enum.Enum):
    READ = "read"
    WRITE = "write"


@dataclass(eq=False)
class IORequest:
    """One read or write of ``length`` bytes at ``offset`` of ``fd``, into or from ``buf``."""

    op: IOOp
    fd: int
    buf: memoryview
    offset: int
    tag: object = None
    #: set by the queue that ran it (the fallback wrapper may move it to another queue)
    backend: str = field(default="", compare=False)

    @property
    def length(self) -> int:
        return self.buf.nbytes


@dataclass(frozen=True, eq=False)
class Completion:
    """The result of one request: bytes moved (>= 0) or ``-errno``."""

    request: IORequest
    result: int

    @property
    def ok(self) -> bool:
        return self.result >= 0

    @property
    def errno(self) -> int | None:
        return -self.result if self.result < 0 else None


class SubmitError(OSError):
    """``submit()`` failed in the mechanism (not in our bookkeeping) part-way through a batch.

    ``taken`` requests were handed to the mechanism and still complete (reap them);
    ``dropped`` lists the requests it did not take: they moved no bytes, are no longer in
    flight and may be resubmitted, here or on another queue. ``errno`` is the mechanism's.
    """

    def __init__(self, errno: int, message: str, *, taken: int, dropped: list[IORequest]) -> None:
        super().__init__(errno, message)
        self.taken = taken
        self.dropped = dropped


def as_memoryview(buf: Buffer) -> memoryview:
    """A flat byte view of ``buf`` (no copy)."""
    mv = memoryview(buf)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


class IOQueue(ABC):
    """Base of every IO queue (see the module doc for the contract)."""

    #: the registry name ("posix", "uring", "rdma", ...)
    name: ClassVar[str] = ""
    #: may several threads call one instance at once?
    thread_safe: ClassVar[bool] = False

    def prep_read(self, fd: int, buf: Buffer, offset: int, tag: object = None) -> IORequest:
        """Record a read of ``len(buf)`` bytes at ``offset`` into ``buf``.

        Raises:
            ValueError: ``buf`` is read-only or ``offset`` is negative (nothing recorded).
            BlockingIOError: ``depth`` requests are already in flight (nothing recorded).
        """
        mv = as_memoryview(buf)
        if mv.readonly:
            raise ValueError("read buffer is read-only")
        req = IORequest(IOOp.READ, fd, mv, _check_offset(offset), tag)
        self.prep(req)
        return req

    def prep_write(self, fd: int, buf: Buffer, offset: int, tag: object = None) -> IORequest:
        """Record a write of ``buf`` at ``offset``.

        Raises:
            ValueError: ``offset`` is negative (nothing recorded).
            BlockingIOError: ``depth`` requests are already in flight (nothing recorded).
        """
        req = IORequest(IOOp.WRITE, fd, as_memoryview(buf), _check_offset(offset), tag)
        self.prep(req)
        return req

    @abstractmethod
    def prep(self, request: IORequest) -> None:
        """Record an already-built request (the fallback wrapper uses this to move one)."""
        raise NotImplementedError  # pragma: no cover

    def accepts(self, request: IORequest) -> bool:
        """Could this queue run ``request``? The fallback wrapper asks before moving one.

        Only says whether the mechanism can carry the request at all (an RDMA queue only
        carries descriptors of its peer); it does not predict the IO's result.
        """
        return True

    @abstractmethod
    def submit(self) -> int:
        """Hand every prepared request to the mechanism; return how many it took.

        Raises:
            SubmitError: the mechanism refused part of the batch; see its ``dropped``.
            ValueError: the queue is closed.
        """
        raise NotImplementedError  # pragma: no cover

    @abstractmethod
    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        """Return finished requests, waiting for at least ``min_complete`` of them (but no
        more than are in flight) unless ``timeout`` seconds pass first."""
        raise NotImplementedError  # pragma: no cover

    @property
    @abstractmethod
    def depth(self) -> int:
        """The most requests that may be in flight at once."""
        raise NotImplementedError  # pragma: no cover

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Requests prepared or submitted and not yet reaped."""
        raise NotImplementedError  # pragma: no cover

    @abstractmethod
    def close(self) -> None:
        """Release the mechanism's resources. Idempotent."""
        raise NotImplementedError  # pragma: no cover

    def __enter__(self) -> IOQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_offset(offset: int) -> int:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset
