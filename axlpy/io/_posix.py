"""POSIX queue: ``os.preadv``/``os.pwritev`` run at submit time.

Some facts about pread(2)/pwrite(2): both may move fewer bytes than asked (a signal, a
pipe, a full disk part-way); pwrite's short write is continued here so a write completes
whole or with an error; pread returns 0 only at end of file, so a read stops short there.
EINTR is retried at once (PEP 475 already does this for us in os.preadv/os.pwritev).
"""

from __future__ import annotations

import os
import threading
from collections import deque

from ._base import Completion, IOOp, IOQueue, IORequest

__all__ = ["PosixIOQueue"]


class PosixIOQueue(IOQueue):
    """Synchronous pread/pwrite behind the queue interface; safe to share across threads."""

    name = "posix"
    thread_safe = True

    def __init__(self, depth: int = 64) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._depth = depth
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


def _run(req: IORequest) -> int:
    """Run one request to the end (bytes moved) or return ``-errno``."""
    done = 0
    try:
        if req.op is IOOp.READ:
            while done < req.length:
                n = os.preadv(req.fd, [req.buf[done:]], req.offset + done)
                if n == 0:
                    break  # end of file
                done += n
        else:
            while done < req.length:
                n = os.pwritev(req.fd, [req.buf[done:]], req.offset + done)
                if n == 0:  # pragma: no cover - pwrite never returns 0 for len > 0
                    raise OSError(5, "pwrite wrote nothing")
                done += n
    except OSError as exc:
        return -(exc.errno or 5)
    return done
