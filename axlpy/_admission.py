"""Admission control: never hand an IO queue more requests than its depth.

Shaped like orbax's in-flight byte limits: an :class:`Admission` protocol, a bounded
implementation, an unlimited null object, a factory (:func:`get_admission`) and a
:func:`reserved` context manager. Slots are counted in requests, not bytes.

How a reservation lives and ends:

1. ``reserve(n)`` waits for ``n`` free slots with a two-phase backoff: first it yields
   the CPU ``yield_rounds`` times (a completion is usually microseconds away), then it
   sleeps in short, doubling steps (``min_sleep_us`` up to ``max_sleep_us``), waking
   early when slots are released. Past the timeout it raises
   :class:`~axlpy.AdmissionTimeoutError`; it never waits for ever. The timeout comes from
   the ``timeout_us`` argument, else the environment variable
   ``AXLPY_QUEUE_BACKOFF_TIMEOUT_US``, else 30 s.
2. It returns a record id. The ledger maps each record to the slots it still holds;
   ``release(record, n)`` gives back exactly those, once: releasing more than a record
   holds raises :class:`~axlpy.UsageError` instead of corrupting the count.
3. ``mark_degraded()`` (after a submission failed part-way) makes new reservations wait
   until every outstanding slot is released, then the admission recovers by itself.

:class:`AdmittedIOQueue` puts this in front of any :class:`~axlpy.io.IOQueue`: it splits
batches larger than the depth, reserves before submitting, releases on each completion,
and rolls back the unsubmitted part of a batch when submission fails. Every queue a
transfer's engine opens is one (``Transfer._driver``); :class:`AdmissionStats` counts
what admission did, and the driver journals it as an ``admission`` event per run.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._errors import AdmissionTimeoutError, UsageError
from .io._base import Completion, IOQueue, IORequest, SubmitError

__all__ = [
    "DEFAULT_TIMEOUT_US",
    "ENV_TIMEOUT",
    "EVENT",
    "Admission",
    "AdmissionStats",
    "AdmittedIOQueue",
    "BoundedAdmission",
    "UnlimitedAdmission",
    "get_admission",
    "reserved",
    "submit_batch",
    "timeout_from_env",
]

#: environment variable holding the reservation timeout in microseconds
ENV_TIMEOUT = "AXLPY_QUEUE_BACKOFF_TIMEOUT_US"
#: the timeout when neither the setting nor the environment gives one (30 s)
DEFAULT_TIMEOUT_US = 30_000_000


#: the journal event that records one run's :class:`AdmissionStats` (detail: JSON)
EVENT = "admission"


@dataclass
class AdmissionStats:
    """What admission control did for one transfer run, over every queue it opened.

    Thread-safe (engine threads share one). Counts requests unless said otherwise:

    - ``admitted``: requests handed to a queue after reserving their slots;
    - ``waited``: reservations that found the queue full and backed off (reaping the
      queue's own completions, or the admission's yield-then-sleep wait);
    - ``split``: ``submit()`` calls whose batch went to the queue in more than one chunk
      (the batch was larger than the room left);
    - ``timed_out``: reservations that gave up (``AdmissionTimeoutError``);
    - ``rolled_back``: requests whose slots were given back because the queue's
      ``submit()`` failed before taking them (they are redone by the engine);
    - ``degraded``: times a queue's admission was marked degraded after such a failure.

    Recorded in the journal as an ``admission`` event at the end of each run's staging
    (see docs/design.md); :meth:`total` sums a transfer's events.
    """

    admitted: int = 0
    waited: int = 0
    split: int = 0
    timed_out: int = 0
    rolled_back: int = 0
    degraded: int = 0
    #: set once these counters are in the journal (so a reader does not add them twice)
    recorded: bool = field(default=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False,
                                  compare=False)

    #: the counters, in the order they are shown
    FIELDS: ClassVar[tuple[str, ...]] = (
        "admitted", "waited", "split", "timed_out", "rolled_back", "degraded")

    def add(self, **counts: int) -> None:
        """Add to the named counters (unknown names raise ``TypeError``)."""
        with self._lock:
            for name, n in counts.items():
                if name not in self.FIELDS:
                    raise TypeError(f"unknown admission counter {name!r}")
                setattr(self, name, getattr(self, name) + n)

    def admit(self, n: int = 1) -> None:
        """Count ``n`` admitted requests (:meth:`add` without its name checks: the
        per-request path of a small file, ``axlpy.engines._stager.queue_io``)."""
        with self._lock:
            self.admitted += n

    def as_dict(self) -> dict[str, int]:
        """The counters by name, in :data:`FIELDS` order."""
        with self._lock:
            return {name: getattr(self, name) for name in self.FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def total(cls, events: Iterable[Mapping[str, Any]]) -> AdmissionStats:
        """The sum of every ``admission`` event in ``events`` (journal event rows); a
        detail that is not a JSON object of counters is skipped."""
        out = cls()
        for e in events:
            if e.get("event") != EVENT or not e.get("detail"):
                continue
            try:
                detail = json.loads(e["detail"])
            except ValueError:
                continue
            if isinstance(detail, dict):
                out.add(**{k: int(v) for k, v in detail.items()
                           if k in cls.FIELDS and isinstance(v, int)})
        return out


def timeout_from_env(default_us: int = DEFAULT_TIMEOUT_US) -> int:
    """``AXLPY_QUEUE_BACKOFF_TIMEOUT_US`` as an int, else ``default_us``.

    Raises:
        UsageError: the variable is set but is not a non-negative integer.
    """
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None or raw.strip() == "":
        return default_us
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{ENV_TIMEOUT}={raw!r} is not an integer") from None
    if value < 0:
        raise UsageError(f"{ENV_TIMEOUT}={raw!r} must be >= 0")
    return value


@runtime_checkable
class Admission(Protocol):
    """Counts in-flight requests against a depth; see the module doc for the rules."""

    @property
    def depth(self) -> int:
        """The most slots that can be held at once."""
        ...

    @property
    def in_use(self) -> int:
        """Slots held now."""
        ...

    @property
    def degraded(self) -> bool:
        """True while new reservations wait for outstanding ones to drain."""
        ...

    def reserve(self, n: int = 1) -> int:
        """Wait for ``n`` slots; return the ledger record holding them."""
        ...

    def try_reserve(self, n: int = 1) -> int | None:
        """Take ``n`` slots if free now; the record, or None without waiting."""
        ...

    def release(self, record: int, n: int | None = None) -> int:
        """Give back ``n`` (default: all remaining) slots of ``record``; return how many."""
        ...

    def holding(self, record: int) -> int:
        """Slots ``record`` still holds (0 once fully released)."""
        ...

    def mark_degraded(self) -> None:
        """Refuse new reservations until every held slot is released."""
        ...


class BoundedAdmission:
    """At most ``depth`` slots held at once, with a ledger of who holds what.

    Thread-safe. Args other than ``depth`` tune the backoff; ``clock`` and ``sleep`` are
    injected by tests (when ``sleep`` is given it replaces the condition-variable wait,
    so a fake clock can drive the timeout).

    Args:
        depth: slots available (>= 1).
        timeout_us: reservation timeout; None reads ``AXLPY_QUEUE_BACKOFF_TIMEOUT_US``.
        yield_rounds: phase one: how many times to yield the CPU before sleeping.
        min_sleep_us: phase two: the first sleep; it doubles up to ``max_sleep_us``.
        max_sleep_us: the longest single sleep.
    """

    def __init__(
        self,
        depth: int,
        *,
        timeout_us: int | None = None,
        yield_rounds: int = 8,
        min_sleep_us: int = 50,
        max_sleep_us: int = 2_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if depth < 1:
            raise UsageError(f"admission depth must be >= 1, got {depth}")
        self._depth = depth
        self.timeout_us = timeout_from_env() if timeout_us is None else timeout_us
        if self.timeout_us < 0:
            raise UsageError(f"timeout_us must be >= 0, got {self.timeout_us}")
        self._yield_rounds = yield_rounds
        self._min_sleep = min_sleep_us / 1e6
        self._max_sleep = max_sleep_us / 1e6
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._in_use = 0
        self._ledger: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._degraded = False
        #: how many reservations timed out (for stats and tests)
        self.timeouts = 0

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def degraded(self) -> bool:
        with self._cond:
            return self._degraded

    @property
    def outstanding(self) -> int:
        """Ledger records still holding slots."""
        with self._cond:
            return len(self._ledger)

    def holding(self, record: int) -> int:
        with self._cond:
            return self._ledger.get(record, 0)

    def try_reserve(self, n: int = 1) -> int | None:
        self._check_n(n)
        with self._cond:
            return self._take(n)

    def reserve(self, n: int = 1) -> int:
        """Wait (bounded) for ``n`` free slots and return the record holding them.

        Raises:
            UsageError: ``n`` is not in ``1..depth`` (split larger batches).
            AdmissionTimeoutError: no room within the timeout; nothing was reserved.
        """
        self._check_n(n)
        deadline = self._clock() + self.timeout_us / 1e6
        rounds = 0
        delay = self._min_sleep
        with self._cond:
            while True:
                record = self._take(n)
                if record is not None:
                    return record
                left = deadline - self._clock()
                if left <= 0:
                    self.timeouts += 1
                    why = "degraded, draining" if self._degraded else "full"
                    raise AdmissionTimeoutError(
                        f"IO queue {why}: {self._in_use}/{self._depth} slots held, "
                        f"{n} wanted, waited {self.timeout_us} us"
                    )
                if rounds < self._yield_rounds:
                    rounds += 1
                    self._cond.release()
                    try:
                        os.sched_yield()
                    finally:
                        self._cond.acquire()
                    continue
                step = min(delay, left)
                delay = min(delay * 2, self._max_sleep)
                if self._sleep is None:
                    self._cond.wait(step)
                else:
                    self._cond.release()
                    try:
                        self._sleep(step)
                    finally:
                        self._cond.acquire()

    def release(self, record: int, n: int | None = None) -> int:
        """Give back ``n`` slots of ``record`` (all it holds by default).

        Raises:
            UsageError: the record holds fewer than ``n`` slots, or (``n`` omitted) holds
                none: a double release. Nothing is released. ``n=0`` is always a no-op.
        """
        with self._cond:
            held = self._ledger.get(record, 0)
            count = held if n is None else n
            if count < 0 or count > held or (n is None and record not in self._ledger):
                raise UsageError(
                    f"admission record {record} holds {held} slots, cannot release {count}"
                )
            if count == 0:
                return 0
            if count == held:
                del self._ledger[record]
            else:
                self._ledger[record] = held - count
            self._in_use -= count
            assert self._in_use >= 0, self._in_use
            if self._in_use == 0:
                self._degraded = False  # drained: recovered
            self._cond.notify_all()
            return count

    def mark_degraded(self) -> None:
        with self._cond:
            if self._in_use:
                self._degraded = True

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self._depth:
            raise UsageError(f"cannot reserve {n} slots of {self._depth}; split the batch")

    def _take(self, n: int) -> int | None:
        if self._degraded or self._in_use + n > self._depth:
            return None
        self._in_use += n
        assert self._in_use <= self._depth, self._in_use
        record = next(self._ids)
        self._ledger[record] = n
        return record


class UnlimitedAdmission:
    """Never waits and never refuses; still keeps the ledger, so leaks show up."""

    def __init__(self, depth: int = 2**31 - 1) -> None:
        self._depth = depth
        self._lock = threading.Lock()
        self._ledger: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._in_use = 0

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def degraded(self) -> bool:
        return False

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._ledger)

    def holding(self, record: int) -> int:
        with self._lock:
            return self._ledger.get(record, 0)

    def reserve(self, n: int = 1) -> int:
        record = self.try_reserve(n)
        assert record is not None
        return record

    def try_reserve(self, n: int = 1) -> int | None:
        if n < 1:
            raise UsageError(f"cannot reserve {n} slots")
        with self._lock:
            record = next(self._ids)
            self._ledger[record] = n
            self._in_use += n
            return record

    def release(self, record: int, n: int | None = None) -> int:
        with self._lock:
            held = self._ledger.get(record, 0)
            count = held if n is None else n
            if count < 0 or count > held or (n is None and record not in self._ledger):
                raise UsageError(
                    f"admission record {record} holds {held} slots, cannot release {count}"
                )
            if count == held:
                self._ledger.pop(record, None)
            else:
                self._ledger[record] = held - count
            self._in_use -= count
            return count

    def mark_degraded(self) -> None:
        pass


def get_admission(depth: int | None, *, timeout_us: int | None = None) -> Admission:
    """``BoundedAdmission(depth)``, or ``UnlimitedAdmission()`` for ``None`` or 0."""
    if not depth:
        return UnlimitedAdmission()
    return BoundedAdmission(depth, timeout_us=timeout_us)


@contextmanager
def reserved(admission: Admission, n: int = 1) -> Iterator[int]:
    """Hold ``n`` slots for the ``with`` block; whatever is still held is released on
    exit, normal or not (slots released inside the block are not released twice)."""
    record = admission.reserve(n)
    try:
        yield record
    finally:
        if admission.holding(record):
            admission.release(record)


class AdmittedIOQueue(IOQueue):
    """An IO queue behind admission control; the engine's one entry point to a queue.

    ``prep`` only records requests (any number); ``submit`` hands them to ``queue`` in
    chunks of at most ``min(queue.depth, admission.depth)``, reserving each chunk first
    and, while waiting for room, reaping ``queue`` itself so a single thread cannot
    deadlock on its own in-flight requests. Each completion releases exactly its slot.

    If ``queue.submit()`` fails part-way (:class:`SubmitError`), the slots of the
    requests it dropped are released, the requests not yet handed over are not
    submitted (they never held slots), the admission is marked degraded until what is in
    flight drains, and a ``SubmitError`` naming every request that did not go is raised.

    Args:
        queue: the queue to feed (owned: ``close()`` closes it).
        admission: shared between queues to bound them together; by default a
            ``BoundedAdmission(queue.depth)``.
        stats: counters to add to (shared by every queue of a transfer run); by default
            a fresh :class:`AdmissionStats` of this queue's own.
    """

    name = "admitted"

    def __init__(self, queue: IOQueue, admission: Admission | None = None,
                 stats: AdmissionStats | None = None) -> None:
        self.queue = queue
        self.admission: Admission = admission or BoundedAdmission(queue.depth)
        self.stats = stats if stats is not None else AdmissionStats()
        self._pending: list[IORequest] = []
        self._records: dict[IORequest, int] = {}
        self._early: list[Completion] = []
        self._closed = False

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        return False

    @property
    def depth(self) -> int:
        return min(self.queue.depth, self.admission.depth)

    @property
    def in_flight(self) -> int:
        return len(self._pending) + len(self._records) + len(self._early)

    def accepts(self, request: IORequest) -> bool:
        return self.queue.accepts(request)

    def prep(self, request: IORequest) -> None:
        if self._closed:
            raise ValueError("IO queue is closed")
        self._pending.append(request)

    def submit(self) -> int:
        if self._closed:
            raise ValueError("IO queue is closed")
        todo, self._pending = self._pending, []
        step = self.depth
        taken = 0
        if len(todo) > step:
            self.stats.add(split=1)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            rest = todo[start + step :]
            record = self._reserve(len(chunk))
            prepared: list[IORequest] = []
            try:
                for req in chunk:
                    self.queue.prep(req)
                    self._records[req] = record
                    prepared.append(req)
                n = self.queue.submit()
                taken += n
                self.stats.add(admitted=n)
            except SubmitError as exc:
                self.stats.add(admitted=exc.taken)
                self._rollback(record, exc.dropped)
                raise SubmitError(
                    exc.errno or 5,
                    f"submission failed part-way: {exc}",
                    taken=taken + exc.taken,
                    dropped=list(exc.dropped) + rest,
                ) from exc
            except BaseException as exc:
                # Our bookkeeping, not the mechanism (a queue closed or filled behind our
                # back): what was prepared goes out if it can, the rest holds no slot.
                if prepared and len(prepared) < len(chunk):
                    try:
                        self.queue.submit()
                    except BaseException:
                        self._rollback(record, prepared)
                        raise exc from None
                else:
                    self._rollback(record, prepared)
                self._rollback(record, [])
                exc.add_note(f"{len(chunk) - len(prepared) + len(rest)} requests not submitted")
                raise
        return taken

    def reap(self, min_complete: int = 1, timeout: float | None = None) -> list[Completion]:
        out, self._early = self._early, []
        need = max(0, min(min_complete, len(self._records) + len(out)) - len(out))
        if self._records:
            out += self._release_all(self.queue.reap(need, timeout if need else 0))
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Whatever is still in flight is abandoned with the queue: give its slots back.
        for req, record in list(self._records.items()):
            self._records.pop(req)
            self.admission.release(record, 1)
        self._pending.clear()
        self.queue.close()

    def _reserve(self, n: int) -> int:
        """Reserve ``n`` slots, reaping our own completions while the queue is full."""
        record = self.admission.try_reserve(n)
        if record is not None:
            return record
        self.stats.add(waited=1)
        try:
            return self._wait(n)
        except AdmissionTimeoutError:
            self.stats.add(timed_out=1)
            raise

    def _wait(self, n: int) -> int:
        timeout_us = getattr(self.admission, "timeout_us", DEFAULT_TIMEOUT_US)
        deadline = time.monotonic() + timeout_us / 1e6
        while True:
            record = self.admission.try_reserve(n)
            if record is not None:
                return record
            if not self._records:
                # Nothing of ours to wait for: the slots are held by other queues sharing
                # the admission, so its bounded wait decides.
                return self.admission.reserve(n)
            left = max(0.0, deadline - time.monotonic())
            reaped = self._release_all(self.queue.reap(1, min(0.01, left)))
            self._early += reaped
            if not reaped and time.monotonic() >= deadline:
                raise AdmissionTimeoutError(
                    f"IO queue {self.queue.name} stayed full for {timeout_us} us "
                    f"({len(self._records)} of our requests in flight)"
                )

    def _release_all(self, completions: list[Completion]) -> list[Completion]:
        for c in completions:
            record = self._records.pop(c.request)
            self.admission.release(record, 1)
        return completions

    def _rollback(self, record: int, unsent: list[IORequest]) -> None:
        rolled = 0
        for req in unsent:
            if self._records.pop(req, None) is not None:
                self.admission.release(record, 1)
                rolled += 1
        # Requests never prepared on the queue still hold their share of the chunk.
        rolled += self.admission.release(
            record, self.admission.holding(record) - self._live(record))
        was = self.admission.degraded
        self.admission.mark_degraded()
        self.stats.add(rolled_back=rolled,
                       degraded=int(not was and self.admission.degraded))

    def _live(self, record: int) -> int:
        return sum(1 for r in self._records.values() if r == record)


def submit_batch(
    queue: IOQueue, requests: list[IORequest], admission: Admission | None = None
) -> AdmittedIOQueue:
    """Submit ``requests`` (any number) to ``queue`` under ``admission``; return the
    :class:`AdmittedIOQueue` to reap them from. A convenience for one-shot batches."""
    admitted = AdmittedIOQueue(queue, admission)
    for req in requests:
        admitted.prep(req)
    admitted.submit()
    return admitted
