"""``FaultyIOQueue``: error injection around a real queue, for retry and fallback tests.

Some facts about how real IO fails, which the three modes copy: a request refused by
the kernel before it started (EBADF, EINVAL, ENOMEM) moved nothing ("before"); an IO
error reported by the device after a write may have left some or all of its bytes on
disk ("after": the request really runs, then its result is replaced); and a submission
call can fail as a whole with nothing queued ("submit": io_uring_enter or ibv_post_send
returning an error, reported as :class:`SubmitError` with the requests dropped).
"""

from __future__ import annotations

import errno as errno_mod
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from ._base import Completion, IOQueue, IORequest, SubmitError

__all__ = ["FaultyIOQueue"]

Mode = Literal["before", "after", "submit"]


class FaultyIOQueue(IOQueue):
    """Wrap ``inner`` and fail chosen requests with ``errno``; everything else runs on it.

    A request is chosen when its 1-based position among the requests prepared on this
    wrapper is in ``nth``, or when ``predicate(request)`` is true; at most ``limit``
    requests are failed in all (``None``: no limit).

    Args:
        inner: the real queue that runs every request that is not failed before it runs.
        nth: positions to fail (an int or several).
        predicate: fail the requests it returns True for.
        errno: the error injected (as ``-errno`` in a completion, or on ``SubmitError``).
        mode: ``"before"`` completes a chosen request with ``-errno`` without running it
            (nothing on disk changes); ``"after"`` runs it on ``inner`` for real and then
            reports ``-errno`` instead of its result (its bytes may be on disk);
            ``"submit"`` makes ``submit()`` raise ``SubmitError`` with the chosen
            requests dropped, after handing the others to ``inner``.
        limit: the most requests to fail.

    Attributes:
        injected: how many requests were failed so far.
        seen: how many requests were prepared so far.
    """

    name = "faulty"

    def __init__(
        self,
        inner: IOQueue,
        *,
        nth: int | Iterable[int] = (),
        predicate: Callable[[IORequest], bool] | None = None,
        errno: int = errno_mod.EIO,
        mode: Mode = "before",
        limit: int | None = None,
    ) -> None:
        if mode not in ("before", "after", "submit"):
            raise ValueError(f"unknown mode {mode!r}")
        self.inner = inner
        self._nth = frozenset([nth] if isinstance(nth, int) else nth)
        self._predicate = predicate
        self._errno = errno
        self._mode = mode
        self._limit = limit
        self._lock = threading.Lock()
        self.injected = 0
        self.seen = 0
        self._chosen: set[IORequest] = set()
        self._held: list[IORequest] = []  # "before"/"submit": prepared, not given to inner
        self._failed: deque[Completion] = deque()

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        return self.inner.thread_safe

    @property
    def depth(self) -> int:
        return self.inner.depth

    @property
    def in_flight(self) -> int:
        with self._lock:
            own = len(self._held) + len(self._failed)
        return own + self.inner.in_flight

    def accepts(self, request: IORequest) -> bool:
        return self.inner.accepts(request)

    def prep(self, request: IORequest) -> None:
        with self._lock:
            if self._in_flight_locked() >= self.depth:
                raise BlockingIOError(f"faulty queue full ({self.depth} in flight)")
            position = self.seen + 1
            chosen = self._limit is None or self.injected < self._limit
            chosen = chosen and (
                position in self._nth or (self._predicate is not None and self._predicate(request))
            )
            if chosen and self._mode != "after":
                request.backend = self.inner.name
                self._held.append(request)
            else:
                self.inner.prep(request)
            self.seen = position
            if chosen:
                self.injected += 1
                self._chosen.add(request)

    def submit(self) -> int:
        with self._lock:
            held, self._held = self._held, []
            if self._mode == "before":
                for req in held:
                    self._failed.append(Completion(req, -self._errno))
                    self._chosen.discard(req)
        taken = self.inner.submit()
        if self._mode == "before" or not held:
            return taken + len(held)
        with self._lock:
            for req in held:
                self._chosen.discard(req)
        raise SubmitError(self._errno, "injected submit failure", taken=taken, dropped=list(held))

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        with self._lock:
            out = list(self._failed)
            self._failed.clear()
        need = max(0, min_complete - len(out))
        if self.inner.in_flight or need:
            for c in self.inner.reap(need, timeout if need else 0):
                with self._lock:
                    if c.request in self._chosen:
                        self._chosen.discard(c.request)
                        c = Completion(c.request, -self._errno)
                out.append(c)
        return out

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            self._failed.clear()
            self._chosen.clear()
        self.inner.close()

    def _in_flight_locked(self) -> int:
        return len(self._held) + len(self._failed) + self.inner.in_flight
