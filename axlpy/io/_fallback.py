"""``FallbackIOQueue``: one entry point over a fast queue and a plain one that retries it.

Some facts about why a request fails on one mechanism and not on another: io_uring and
RDMA refuse things pread/pwrite accept (an unaligned O_DIRECT buffer is EINVAL on both,
but a buffered descriptor of the same file takes it; a ring can hit its kernel memory
limit, ENOMEM/EAGAIN at io_uring_enter, while a plain syscall still works). Other
failures belong to the file, not the mechanism (EBADF, ENOSPC, EIO from the disk): the
fallback fails the same way, and that second failure is what the caller sees.

Only failures of the IO itself move a request: a ``-errno`` completion, or a
:class:`SubmitError` (the mechanism refused it at ``io_uring_enter`` or ``ibv_post_send``).
Our own bookkeeping errors (queue full, queue closed, a bad argument) are raised as they
are and never retried elsewhere. A request is only moved when the fallback
:meth:`~IOQueue.accepts` it, and it moves whole: the fallback redoes it from its first
byte, so a write the primary left half-done is rewritten, and stats count its bytes on
the fallback, the queue that really moved them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._base import Completion, IOOp, IOQueue, IORequest, SubmitError

__all__ = ["BackendStats", "FallbackIOQueue"]

log = logging.getLogger("axlpy.io")


@dataclass
class BackendStats:
    """Counters for one backend behind a :class:`FallbackIOQueue`.

    Attributes:
        name: the backend's registry name.
        ops: completions this backend produced (successful or not).
        bytes: bytes moved by this backend's successful completions.
        errors: requests that failed on this backend (completion or submit time).
        fallbacks: requests moved away from this backend to the fallback.
    """

    name: str
    ops: int = 0
    bytes: int = 0
    errors: int = 0
    fallbacks: int = 0
    read_bytes: int = 0
    write_bytes: int = 0


class FallbackIOQueue(IOQueue):
    """Send requests to ``primary``; retry the ones whose IO fails there on ``fallback``.

    Degraded mode: after ``degrade_after`` consecutive primary failures the primary is
    marked degraded and new requests go straight to the fallback. It is probed again
    (one request is routed to it) once ``reprobe_after`` seconds have passed on
    ``clock`` or ``reprobe_every`` requests went to the fallback, whichever comes first;
    a successful probe clears the degraded state, a failed one restarts the wait.

    Both queues must be used from one thread at a time (``thread_safe`` is False), and
    the wrapper owns them: ``close()`` closes both.

    Args:
        primary: the fast queue (e.g. ``UringIOQueue``).
        fallback: the queue that retries (e.g. ``PosixIOQueue(reopen_direct=True)``).
        degrade_after: consecutive primary failures that mark it degraded (>= 1).
        reprobe_after: seconds in degraded mode before probing the primary again.
        reprobe_every: requests sent to the fallback while degraded before probing again
            (``None``: only the time counts).
        should_fallback: which ``errno`` values move a failed request (all by default).
        clock: a monotonic clock in seconds (injected by tests).
    """

    name = "fallback"
    thread_safe = False

    def __init__(
        self,
        primary: IOQueue,
        fallback: IOQueue,
        *,
        degrade_after: int = 3,
        reprobe_after: float = 30.0,
        reprobe_every: int | None = 1000,
        should_fallback: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if degrade_after < 1:
            raise ValueError(f"degrade_after must be >= 1, got {degrade_after}")
        self.primary = primary
        self.fallback = fallback
        self._degrade_after = degrade_after
        self._reprobe_after = reprobe_after
        self._reprobe_every = reprobe_every
        self._should_fallback = should_fallback or (lambda _errno: True)
        self._clock = clock
        self._stats = {
            "primary": BackendStats(primary.name),
            "fallback": BackendStats(fallback.name),
        }
        #: request -> the queue it is on now
        self._where: dict[IORequest, IOQueue] = {}
        self._consecutive = 0
        self._degraded_since: float | None = None
        self._sent_while_degraded = 0
        self._probe: IORequest | None = None
        #: prepared on a queue but not yet handed to its mechanism
        self._unsubmitted: set[IORequest] = set()
        self._closed = False

    # -- state ----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return min(self.primary.depth, self.fallback.depth)

    @property
    def in_flight(self) -> int:
        return len(self._where)

    @property
    def degraded(self) -> bool:
        """True while new requests bypass the primary."""
        return self._degraded_since is not None

    @property
    def stats(self) -> dict[str, BackendStats]:
        """Counters keyed ``"primary"`` and ``"fallback"`` (live objects; copy to keep)."""
        return self._stats

    # -- IOQueue ----------------------------------------------------------------------

    def accepts(self, request: IORequest) -> bool:
        return self.primary.accepts(request) or self.fallback.accepts(request)

    def prep(self, request: IORequest) -> None:
        self._check_open()
        if len(self._where) >= self.depth:
            raise BlockingIOError(f"fallback queue full ({self.depth} in flight)")
        target = self._route(request)
        target.prep(request)  # a full or closed queue raises here: bookkeeping, not IO
        self._where[request] = target
        self._unsubmitted.add(request)
        if target is self.fallback and self.degraded:
            self._sent_while_degraded += 1

    def submit(self) -> int:
        self._check_open()
        taken = 0
        cause: OSError | None = None
        lost: list[IORequest] = []
        self._unsubmitted.clear()
        try:
            taken += self.primary.submit()
        except SubmitError as exc:
            taken += exc.taken
            cause = exc
            for req in exc.dropped:
                self._stats["primary"].errors += 1
                self._primary_failed(req)
                if self._move(req):
                    continue
                lost.append(req)
        try:
            taken += self.fallback.submit()
        except SubmitError as exc:
            taken += exc.taken
            cause = exc
            for req in exc.dropped:
                self._stats["fallback"].errors += 1
                lost.append(req)
        if lost:
            for req in lost:
                self._forget(req)
            assert cause is not None
            raise SubmitError(
                cause.errno or errno.EIO, str(cause), taken=taken, dropped=lost
            ) from cause
        return taken

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        self._check_open()
        out: list[Completion] = []
        want = min(min_complete, len(self._where) - len(self._unsubmitted))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._collect(self.fallback, 0, 0, out)
            self._collect(self.primary, 0, 0, out)
            if len(out) >= want:
                return out
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0:
                return out
            # Block on the primary when only it holds submitted work; otherwise take
            # short slices so neither queue's completions wait for the other's.
            on_primary, on_fallback = self._submitted_counts()
            if on_primary and not on_fallback:
                self._collect(self.primary, 1, left, out)
            elif on_fallback and not on_primary:
                self._collect(self.fallback, 1, left, out)
            else:
                self._collect(self.primary, 1, 0.002 if left is None else min(left, 0.002), out)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._where.clear()
        try:
            self.primary.close()
        finally:
            self.fallback.close()

    # -- internals ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")

    def _route(self, request: IORequest) -> IOQueue:
        if not self.primary.accepts(request):
            return self.fallback
        if self._degraded_since is None:
            return self.primary
        if self._probe is None and self._probe_due():
            self._probe = request
            log.info("re-probing degraded IO queue %s", self.primary.name)
            return self.primary
        return self.fallback

    def _probe_due(self) -> bool:
        assert self._degraded_since is not None
        if self._clock() - self._degraded_since >= self._reprobe_after:
            return True
        return self._reprobe_every is not None and self._sent_while_degraded >= self._reprobe_every

    def _submitted_counts(self) -> tuple[int, int]:
        on_primary = on_fallback = 0
        for req, queue in self._where.items():
            if req in self._unsubmitted:
                continue
            if queue is self.primary:
                on_primary += 1
            else:
                on_fallback += 1
        return on_primary, on_fallback

    def _collect(
        self, queue: IOQueue, min_complete: int, timeout: float | None, out: list[Completion]
    ) -> None:
        moved = False
        for c in queue.reap(min_complete, timeout):
            if queue is self.primary:
                moved |= self._from_primary(c, out)
            else:
                self._finish(c, self._stats["fallback"], out)
        if moved:
            self._submit_moved(out)

    def _submit_moved(self, out: list[Completion]) -> None:
        """Hand the fallback the requests just moved to it, unless the caller has its own
        prepared there and not yet submitted: then they wait for the caller's submit()."""
        if any(self._where.get(r) is self.fallback for r in self._unsubmitted):
            return
        try:
            self.fallback.submit()
        except SubmitError as exc:
            for req in exc.dropped:
                self._stats["fallback"].ops += 1
                self._stats["fallback"].errors += 1
                self._forget(req)
                out.append(Completion(req, -(exc.errno or errno.EIO)))

    def _from_primary(self, c: Completion, out: list[Completion]) -> bool:
        """Account one primary completion; True if its request moved to the fallback."""
        stats = self._stats["primary"]
        if c.ok:
            self._primary_ok(c.request)
            self._finish(c, stats, out)
            return False
        stats.ops += 1
        stats.errors += 1
        self._primary_failed(c.request)
        err = c.errno or errno.EIO
        if self._should_fallback(err) and self._move(c.request):
            if any(self._where.get(r) is self.fallback for r in self._unsubmitted):
                self._unsubmitted.add(c.request)  # rides along with the caller's submit
            return True
        self._where.pop(c.request, None)
        out.append(c)
        return False

    def _move(self, req: IORequest) -> bool:
        """Put a request the primary failed on the fallback; False if it cannot go."""
        if not self.fallback.accepts(req):
            return False
        try:
            self.fallback.prep(req)
        except (BlockingIOError, ValueError):
            return False
        self._stats["primary"].fallbacks += 1
        self._where[req] = self.fallback
        return True

    def _finish(self, c: Completion, stats: BackendStats, out: list[Completion]) -> None:
        stats.ops += 1
        if c.ok:
            stats.bytes += c.result
            if c.request.op is IOOp.READ:
                stats.read_bytes += c.result
            else:
                stats.write_bytes += c.result
        else:
            stats.errors += 1
        self._where.pop(c.request, None)
        out.append(c)

    def _primary_ok(self, req: IORequest) -> None:
        self._consecutive = 0
        if self._probe is req:
            self._probe = None
        if self._degraded_since is not None:
            log.warning("IO queue %s recovered; leaving degraded mode", self.primary.name)
            self._degraded_since = None
            self._sent_while_degraded = 0

    def _primary_failed(self, req: IORequest) -> None:
        self._consecutive += 1
        if self._probe is req:
            self._probe = None
            self._degraded_since = self._clock()  # failed probe: wait again
            self._sent_while_degraded = 0
        elif self._degraded_since is None and self._consecutive >= self._degrade_after:
            log.warning(
                "IO queue %s failed %d times in a row; sending new requests to %s",
                self.primary.name,
                self._consecutive,
                self.fallback.name,
            )
            self._degraded_since = self._clock()
            self._sent_while_degraded = 0

    def _forget(self, req: IORequest) -> None:
        self._where.pop(req, None)
        self._unsubmitted.discard(req)
        if self._probe is req:
            self._probe = None
