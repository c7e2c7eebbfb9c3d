"""One retry policy for every backend operation: backoff, limits, and operator intervention.

Everything that may fail transiently (an extent read or write, an fsync, a rename, an
admission wait) goes through :func:`call_persistently`. It tries the operation, sorts the
error with :func:`disposition` (the only place errors are classified), and then:

- **retry**: sleeps an exponential, jittered backoff and tries again, until
  ``max_attempts`` attempts were made or the next attempt would start after
  ``max_total_seconds``;
- **fail**: re-raises the error unchanged, at once, without sleeping;
- **operator**: the error is one that waiting does not fix but a person can (the disk is
  full, a quota is reached). In ``"fail"`` mode it is re-raised unchanged like any other
  non-retryable error; in ``"intervention"`` mode the call pauses at once.

When the retries are exhausted, mode ``"fail"`` raises
:class:`~axlpy._errors.RetriesExhaustedError` from the last error. Mode ``"intervention"``
pauses instead: it calls ``on_pause`` (the transfer journals ``PAUSED``), then blocks until
an operator says *continue* (a fresh round of attempts starts) or *cancel*
(:class:`~axlpy._errors.TransferCancelledError`). The operator speaks through an
:class:`InterventionController`: its :meth:`~InterventionController.resume` and
:meth:`~InterventionController.cancel` methods, or a flag file (protocol in the class
docstring and in ``docs/retry.md``).

Each attempt must be idempotent: callers pass extent-level operations (``pwrite`` of one
extent at its offset, ``fsync`` of one fd, a rename that is checked before it is redone),
never "append the next chunk", because an attempt that raised may still have had an effect.

Nothing in this module touches a checkpoint file; the only file it touches is the flag
file, which it renames to ``<flag>.consumed`` once acted on.
"""

from __future__ import annotations

import enum
import errno as _errno
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, TypeVarTuple

from ._errors import (
    AdmissionTimeoutError,
    AxlError,
    IOBackendError,
    RetriesExhaustedError,
    TransferCancelledError,
    UsageError,
)

__all__ = [
    "OPERATOR_ERRNOS",
    "RETRYABLE_ERRNOS",
    "SYSTEM_CLOCK",
    "Clock",
    "Disposition",
    "InterventionController",
    "RetryEvent",
    "RetryPolicy",
    "SystemClock",
    "call_persistently",
    "classify",
    "disposition",
]

log = logging.getLogger("axlpy.retry")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

Mode = Literal["fail", "intervention"]
Jitter = Literal["full", "equal", "none"]


# --------------------------------------------------------------------------------------
# Clock


class Clock(Protocol):
    """Where :func:`call_persistently` reads time and sleeps between attempts.

    Tests pass a fake whose ``sleep`` advances ``monotonic`` instead of blocking.
    """

    def monotonic(self) -> float:
        """Return seconds from an arbitrary, never-decreasing origin."""
        ...  # pragma: no cover

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (never negative)."""
        ...  # pragma: no cover


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Call :func:`time.sleep`."""
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


# --------------------------------------------------------------------------------------
# Classification: the one table


class Disposition(enum.Enum):
    """What :func:`call_persistently` does with an error."""

    RETRY = "retry"
    """Transient: back off and try again."""
    OPERATOR = "operator"
    """Not fixed by waiting but by a person: pause in intervention mode, else propagate."""
    FAIL = "fail"
    """Permanent or a bug: propagate unchanged at once."""


RETRYABLE_ERRNOS: frozenset[int] = frozenset(
    {
        _errno.EINTR,  # interrupted by a signal: the call simply did not run to the end
        _errno.EAGAIN,  # == EWOULDBLOCK on Linux: resource momentarily unavailable
        _errno.EWOULDBLOCK,
        _errno.ETIMEDOUT,  # a network/parallel filesystem server did not answer in time
        # EIO on NFS, Lustre, GPFS, BeeGFS is very often a transient server or network
        # hiccup; on a local disk it is usually permanent, but max_attempts bounds the cost.
        _errno.EIO,
        _errno.ECONNRESET,  # a storage server connection dropped; a new one may work
        _errno.ESTALE,  # NFS handle went stale: an attempt that reopens by path succeeds
        _errno.EBUSY,  # device or file busy (e.g. being unmounted/locked) for a moment
    }
)
"""errno values retried with backoff."""

OPERATOR_ERRNOS: frozenset[int] = frozenset({_errno.ENOSPC, _errno.EDQUOT})
"""errno values that waiting does not fix but an operator can (free space, raise quota)."""

# Subclasses that Python picks for these errnos; also used when such an error is raised
# bare (``TimeoutError()``) and so has no errno.
_RETRYABLE_OSERROR_TYPES: tuple[type[OSError], ...] = (
    InterruptedError,
    BlockingIOError,
    TimeoutError,
    ConnectionResetError,
)


def _errno_disposition(code: int) -> Disposition:
    if code in RETRYABLE_ERRNOS:
        return Disposition.RETRY
    if code in OPERATOR_ERRNOS:
        return Disposition.OPERATOR
    # EACCES, EPERM, ENOENT, EROFS, EBADF, EINVAL, and every errno not listed: waiting
    # will not change them, and retrying an unknown error only delays its report.
    return Disposition.FAIL


def disposition(exc: BaseException) -> Disposition:
    """Sort an error into retry, operator or fail. The only classification in axlpy.

    Args:
        exc: The error an attempt raised.

    Returns:
        :attr:`Disposition.RETRY` for the transient errnos in :data:`RETRYABLE_ERRNOS`
        and for :class:`~axlpy._errors.AdmissionTimeoutError`;
        :attr:`Disposition.OPERATOR` for :data:`OPERATOR_ERRNOS` (ENOSPC, EDQUOT);
        :attr:`Disposition.FAIL` for everything else: other errnos, a changed source or
        checksum mismatch, cancellation, any other axlpy error and any non-``OSError``
        (a bug in our code is not fixed by running it again).
        An :class:`~axlpy._errors.IOBackendError` is sorted by its ``errno`` attribute,
        or by its ``__cause__`` when it has none.
    """
    # Checked before OSError: AdmissionTimeoutError is a TimeoutError, which is an OSError.
    if isinstance(exc, AdmissionTimeoutError):
        return Disposition.RETRY
    if isinstance(exc, IOBackendError):
        if exc.errno is not None:
            return _errno_disposition(exc.errno)
        if exc.__cause__ is not None and exc.__cause__ is not exc:
            return disposition(exc.__cause__)
        return Disposition.FAIL
    # SourceChangedError, ChecksumMismatchError, TransferCancelledError,
    # RetriesExhaustedError (never retry a retry), SecurityError (a PermissionError),
    # UsageError, JournalError ...: all permanent.
    if isinstance(exc, AxlError):
        return Disposition.FAIL
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return _errno_disposition(exc.errno)
        if isinstance(exc, _RETRYABLE_OSERROR_TYPES):
            return Disposition.RETRY
    return Disposition.FAIL


def classify(exc: BaseException) -> bool:
    """Return whether ``exc`` is retried with backoff (see :func:`disposition`).

    Args:
        exc: The error an attempt raised.

    Returns:
        True only for :attr:`Disposition.RETRY`. ENOSPC/EDQUOT return False: backoff does
        not fix them (intervention mode pauses on them instead).
    """
    return disposition(exc) is Disposition.RETRY


# --------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry: immutable, so any number of threads may share one.

    The delay before retry ``n`` (``n = 1`` after the first failed attempt) has the cap
    ``min(max_delay, base_delay * multiplier ** (n - 1))`` and, with

    - ``jitter="full"``: is uniform in ``[0, cap]``. Spreads many workers that failed
      together the most (they hit the same server); a delay may be close to zero.
    - ``jitter="equal"``: is uniform in ``[cap / 2, cap]``. Always waits at least half.
    - ``jitter="none"``: is exactly ``cap``. Deterministic; for tests and single workers.

    Attributes:
        max_attempts: Attempts per round, the first included (>= 1).
        max_total_seconds: Per round, no attempt starts later than this many seconds
            after the round's first one; a backoff that would end later gives up at
            once instead of sleeping. None: no time limit.
        base_delay: Cap of the first backoff, seconds (>= 0).
        max_delay: Largest cap, seconds (>= base_delay).
        multiplier: Growth of the cap per retry (>= 1).
        jitter: ``"full"``, ``"equal"`` or ``"none"``, see above.
        mode: ``"fail"`` raises RetriesExhaustedError when a round is exhausted;
            ``"intervention"`` pauses for an operator.
        flag_file: Flag file for :meth:`InterventionController.from_policy`.
        poll_interval: Seconds between flag file checks while paused (> 0).
        clock: Time source and sleeper, injected by tests. Not compared.
        rng: Source of jitter, injected (seeded) by tests. Not compared.
    """

    max_attempts: int = 5
    max_total_seconds: float | None = 300.0
    base_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    mode: Mode = "fail"
    flag_file: str | None = None
    poll_interval: float = 1.0
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False, repr=False)
    # random.Random is safe to share between threads in CPython (random() is one C call).
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"RetryPolicy.{name}={getattr(self, name)!r}: {why}")

        # bool is an int; True attempts is a config mistake, not 1.
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise bad("max_attempts", "must be an int")
        if self.max_attempts < 1:
            raise bad("max_attempts", "must be >= 1")
        if self.max_total_seconds is not None and not self.max_total_seconds > 0:
            raise bad("max_total_seconds", "must be > 0 or None")
        if not (0 <= self.base_delay < math.inf):
            raise bad("base_delay", "must be finite and >= 0")
        if not (self.base_delay <= self.max_delay < math.inf):
            raise bad("max_delay", "must be finite and >= base_delay")
        if not (1 <= self.multiplier < math.inf):
            raise bad("multiplier", "must be finite and >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise bad("jitter", "must be 'full', 'equal' or 'none'")
        if self.mode not in ("fail", "intervention"):
            raise bad("mode", "must be 'fail' or 'intervention'")
        if not (0 < self.poll_interval < math.inf):
            raise bad("poll_interval", "must be finite and > 0")

    def backoff_cap(self, retry: int) -> float:
        """Return the largest delay before retry number ``retry`` (1-based).

        Args:
            retry: 1 for the delay after the first failed attempt, and so on.

        Returns:
            ``min(max_delay, base_delay * multiplier ** (retry - 1))``; never decreases
            as ``retry`` grows and never exceeds ``max_delay``.
        """
        if retry < 1:
            raise UsageError(f"retry must be >= 1, got {retry}")
        try:
            raw = self.base_delay * self.multiplier ** (retry - 1)
        except OverflowError:
            raw = math.inf
        return min(self.max_delay, raw)

    def backoff(self, retry: int) -> float:
        """Return the jittered delay before retry ``retry``, drawn from :attr:`rng`.

        Args:
            retry: 1 for the delay after the first failed attempt, and so on.

        Returns:
            A delay in ``[0, cap]`` (full), ``[cap / 2, cap]`` (equal) or ``cap`` (none),
            where ``cap = backoff_cap(retry)``.
        """
        cap = self.backoff_cap(retry)
        if self.jitter == "none":
            return cap
        if self.jitter == "equal":
            return min(cap, cap / 2 + self.rng.random() * (cap / 2))
        return min(cap, self.rng.random() * cap)

    @classmethod
    def from_config(
        cls,
        mapping: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> RetryPolicy:
        """Build a policy from ``retry.*`` config keys, overridden by ``AXLPY_RETRY_*``.

        Keys (config / environment variable / field):

        ==========================  =============================  =====================
        ``retry.max_attempts``      ``AXLPY_RETRY_MAX_ATTEMPTS``   ``max_attempts``
        ``retry.max_seconds``       ``AXLPY_RETRY_MAX_SECONDS``    ``max_total_seconds``
        ``retry.base_delay``        ``AXLPY_RETRY_BASE_DELAY``     ``base_delay``
        ``retry.max_delay``         ``AXLPY_RETRY_MAX_DELAY``      ``max_delay``
        ``retry.multiplier``        ``AXLPY_RETRY_MULTIPLIER``     ``multiplier``
        ``retry.jitter``            ``AXLPY_RETRY_JITTER``         ``jitter``
        ``retry.mode``              ``AXLPY_RETRY_MODE``           ``mode``
        ``retry.flag_file``         ``AXLPY_RETRY_FLAG_FILE``      ``flag_file``
        ``retry.poll_interval``     ``AXLPY_RETRY_POLL_INTERVAL``  ``poll_interval``
        ==========================  =============================  =====================

        ``mapping`` holds dotted keys (``{"retry.mode": "fail"}``) or a nested table
        (``{"retry": {"mode": "fail"}}``, as TOML gives); other top-level keys are
        ignored. ``retry.max_seconds`` and ``retry.flag_file`` accept ``""`` or ``"none"``
        for "not set". Unset keys keep the defaults.

        Args:
            mapping: Config values (strings or already-typed values).
            env: Environment; ``None`` reads :data:`os.environ`. Pass ``{}`` to ignore it.
            clock: Injected clock (default: the system clock).
            rng: Injected random source (default: a fresh unseeded one).

        Returns:
            The validated policy.

        Raises:
            UsageError: An unknown ``retry.*`` key or ``AXLPY_RETRY_*`` variable (a typo
                would otherwise be ignored silently), a value of the wrong type, or a
                value out of range.
        """
        # field -> (raw value, where it came from); environment wins over the mapping.
        values: dict[str, tuple[object, str]] = {}
        for key, value in _retry_items(mapping or {}):
            values[_field_for(key, f"config key 'retry.{key}'")] = (value, f"retry.{key}")
        environ = os.environ if env is None else env
        for name, text in environ.items():
            if name.startswith(_ENV_PREFIX):
                key = name[len(_ENV_PREFIX) :].lower()
                values[_field_for(key, f"environment variable {name}")] = (text, name)
        kwargs: dict[str, object] = {
            fname: _convert(fname, value, source) for fname, (value, source) in values.items()
        }
        if clock is not None:
            kwargs["clock"] = clock
        if rng is not None:
            kwargs["rng"] = rng
        return cls(**kwargs)  # type: ignore[arg-type]


_ENV_PREFIX = "AXLPY_RETRY_"

# config key (after "retry.") -> dataclass field
_CONFIG_KEYS: dict[str, str] = {
    "max_attempts": "max_attempts",
    "max_seconds": "max_total_seconds",
    "base_delay": "base_delay",
    "max_delay": "max_delay",
    "multiplier": "multiplier",
    "jitter": "jitter",
    "mode": "mode",
    "flag_file": "flag_file",
    "poll_interval": "poll_interval",
}


def _retry_items(mapping: Mapping[str, object]) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    nested = mapping.get("retry")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise UsageError(f"config key 'retry' must be a table, got {nested!r}")
        items.extend((str(k), v) for k, v in nested.items())
    for key, value in mapping.items():
        if key.startswith("retry."):
            short = key[len("retry.") :]
            if any(k == short for k, _ in items):
                raise UsageError(f"config key {key!r} is given twice (dotted and nested)")
            items.append((short, value))
    return items


def _field_for(key: str, what: str) -> str:
    try:
        return _CONFIG_KEYS[key]
    except KeyError:
        known = ", ".join(f"retry.{k}" for k in _CONFIG_KEYS)
        raise UsageError(f"unknown {what}; known keys: {known}") from None


def _convert(fname: str, value: object, source: str) -> object:
    def bad(why: str) -> UsageError:
        return UsageError(f"{source}={value!r}: {why}")

    if fname in ("max_total_seconds", "flag_file") and (
        value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))
    ):
        return None
    if fname == "max_attempts":
        if isinstance(value, bool):
            raise bad("expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad("expected an integer") from None
        raise bad("expected an integer")
    if fname in ("max_total_seconds", "base_delay", "max_delay", "multiplier", "poll_interval"):
        if isinstance(value, bool):
            raise bad("expected a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad("expected a number") from None
        raise bad("expected a number")
    if fname == "flag_file":
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        raise bad("expected a path")
    # jitter, mode: validated against their choices by RetryPolicy.__post_init__
    if isinstance(value, str):
        return value.strip().lower()
    raise bad("expected a string")


# --------------------------------------------------------------------------------------
# Intervention


@dataclass(frozen=True)
class RetryEvent:
    """What ``on_retry``, ``on_pause`` and ``on_resume`` hooks are told.

    Attributes:
        what: The ``what`` given to :func:`call_persistently`.
        attempt: Attempts made in this round so far (>= 1).
        error: The error of the last attempt.
        delay: For ``on_retry``, the backoff about to be slept; else 0.
        round: 1 for the first round, +1 after each operator "continue".
    """

    what: str
    attempt: int
    error: BaseException
    delay: float
    round: int


_CONTINUE = "continue"
_CANCEL = "cancel"
_FLAG_MAX_BYTES = 64


class InterventionController:
    """Lets an operator continue or cancel calls paused by an intervention-mode policy.

    Thread-safe: any number of worker threads may pause on one controller, and any thread
    may call :meth:`resume` or :meth:`cancel`.

    - :meth:`resume` releases every call paused *at that moment*; each starts a fresh
      round of attempts. It is consumed: a call that pauses later waits for a new one.
    - :meth:`cancel` is sticky: every paused call, and every later call or attempt made
      with this controller, raises :class:`~axlpy._errors.TransferCancelledError`.

    Flag file protocol (when ``flag_file`` is set). While at least one call is paused,
    the paused threads check the file every ``poll_interval`` seconds. The file must
    contain the single word ``continue`` or ``cancel`` (case and surrounding whitespace
    ignored); the controller then renames it to ``<flag_file>.consumed`` (replacing an
    old one) and acts as if :meth:`resume` or :meth:`cancel` was called. The rename is
    what consumes it: if it fails (another process consumed it first) the flag is not
    acted on here. Anything else in the file (an empty file, as seen while a writer is
    half way; another word; more than 64 bytes) is left alone and read again at the
    next poll, so write it atomically: ``echo continue > F.tmp && mv F.tmp F``.
    A file already present when a pause starts is acted on at once, so an operator may
    pre-arm ``cancel``. Use one flag file per process: of several processes polling one
    file, only one consumes each command.

    Args:
        flag_file: Path of the flag file, or None for API-only control.
        poll_interval: Seconds between flag file checks while paused (real time: the
            wait is a :class:`threading.Condition` wait, woken at once by
            :meth:`resume`/:meth:`cancel`).
    """

    def __init__(
        self, flag_file: str | os.PathLike[str] | None = None, poll_interval: float = 1.0
    ) -> None:
        if not (0 < poll_interval < math.inf):
            raise UsageError(f"poll_interval={poll_interval!r}: must be finite and > 0")
        self.flag_file: str | None = None if flag_file is None else os.fspath(flag_file)
        self.poll_interval = poll_interval
        self._cond = threading.Condition()
        self._generation = 0
        self._cancelled = False
        self._paused = 0

    @classmethod
    def from_policy(cls, policy: RetryPolicy) -> InterventionController:
        """Return a controller with ``policy``'s ``flag_file`` and ``poll_interval``."""
        return cls(policy.flag_file, policy.poll_interval)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called (or a ``cancel`` flag consumed)."""
        with self._cond:
            return self._cancelled

    @property
    def paused_calls(self) -> int:
        """How many calls are paused right now, waiting for an operator."""
        with self._cond:
            return self._paused

    def resume(self) -> int:
        """Let every call paused right now start a fresh round of attempts.

        Returns:
            How many calls were paused (and so are released); 0 means it had no effect.
        """
        with self._cond:
            released = self._paused
            self._generation += 1
            self._cond.notify_all()
        log.info("retry: operator continue, %d paused call(s) released", released)
        return released

    def cancel(self) -> None:
        """Cancel every paused call and every later call made with this controller.

        Calls in a backoff sleep notice it when the sleep ends (at most ``max_delay``).
        """
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        log.warning("retry: operator cancel")

    def check_flag_file(self) -> Literal["continue", "cancel"] | None:
        """Read the flag file once; if it holds a command, consume it and act on it.

        Called by paused threads every ``poll_interval``; callable directly too.

        Returns:
            ``"continue"`` or ``"cancel"`` when this call consumed and acted on a flag,
            else None (no flag file configured, none present, not a command yet, or
            another process consumed it first).
        """
        path = self.flag_file
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                raw = f.read(_FLAG_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # An unreadable flag must not kill the paused transfer; the operator still
            # has the API, and a later poll may succeed.
            log.warning("retry: cannot read flag file %s: %s", path, exc)
            return None
        word = raw.decode("utf-8", "replace").strip().lower()
        if len(raw) > _FLAG_MAX_BYTES or word not in (_CONTINUE, _CANCEL):
            return None
        try:
            os.replace(path, path + ".consumed")
        except OSError:
            return None  # someone else consumed it (or it vanished): not ours to act on
        if word == _CANCEL:
            self.cancel()
            return "cancel"
        self.resume()
        return "continue"

    def _raise_if_cancelled(
        self, what: str, transfer: str | None, path: str | None, last: BaseException | None
    ) -> None:
        # Read without the lock (once per engine read and write; a flag set under it is
        # seen at once, and a cancel right after this check is seen by the next one).
        if self._cancelled:
            raise TransferCancelledError(
                f"{what}: cancelled", transfer=transfer, path=path
            ) from last

    def _begin_pause(self) -> int:
        # Registered before on_pause runs, so a resume() issued as soon as the operator
        # sees PAUSED is never lost.
        with self._cond:
            self._paused += 1
            return self._generation

    def _end_pause(self) -> None:
        with self._cond:
            self._paused -= 1

    def _wait(self, generation: int) -> Literal["continue", "cancel"]:
        while True:
            with self._cond:
                if self._cancelled:
                    return "cancel"
                if self._generation != generation:
                    return "continue"
            self.check_flag_file()
            with self._cond:
                if not self._cancelled and self._generation == generation:
                    self._cond.wait(self.poll_interval)


# --------------------------------------------------------------------------------------
# The loop


def call_persistently(
    fn: Callable[[*Ts], T],
    *args: *Ts,
    policy: RetryPolicy,
    what: str = "operation",
    on_retry: Callable[[RetryEvent], None] | None = None,
    on_pause: Callable[[RetryEvent], None] | None = None,
    on_resume: Callable[[RetryEvent], None] | None = None,
    controller: InterventionController | None = None,
    transfer: str | None = None,
    path: str | None = None,
) -> T:
    """Call ``fn(*args)`` until it succeeds, fails permanently, or the policy gives up.

    ``fn`` must be idempotent: it may run several times, and an attempt that raised may
    have had part of its effect. Pass extent-level operations (write *this* extent at
    *this* offset; reopen by path, so ESTALE can heal), never "write the next chunk".

    Each attempt's error is sorted by :func:`disposition`. A non-retryable error
    propagates unchanged at once, with no sleep. A retryable one is followed by
    ``on_retry(event)`` and a ``policy.backoff()`` sleep on ``policy.clock``, unless the
    round is out of attempts or the sleep would end past ``max_total_seconds``.

    A round is exhausted then. In mode ``"fail"`` that raises RetriesExhaustedError. In
    mode ``"intervention"``, and at once for ENOSPC/EDQUOT, the call pauses:
    ``on_pause(event)`` runs (journal PAUSED there), the thread blocks on the controller,
    and on "continue" ``on_resume(event)`` runs and a fresh round starts (attempt and time
    limits reset); on "cancel" TransferCancelledError is raised from the last error.
    When several workers pause, each call runs its own hooks: keep them idempotent.

    If the process dies during this call, what is on disk is whatever the attempts in
    flight left: hence idempotent attempts. This function writes nothing itself except
    renaming a consumed flag file.

    Args:
        fn: The operation.
        *args: Positional arguments for ``fn`` (use :func:`functools.partial` for more).
        policy: Limits, backoff, mode, clock and random source.
        what: Short description for messages and logs (``"pwrite ckpt.3 @4096+1MiB"``).
        on_retry: Called before each backoff sleep.
        on_pause: Called when the call pauses for an operator, before it blocks.
        on_resume: Called when an operator says continue, before the next round.
        controller: Operator control. Optional in mode ``"fail"``
            (then only :meth:`~InterventionController.cancel` matters); in mode
            ``"intervention"`` without one, a private one is made from
            ``policy.flag_file``, which must then be set.
        transfer: Transfer name for the errors raised here.
        path: File name for the errors raised here.

    Returns:
        What ``fn`` returned.

    Raises:
        RetriesExhaustedError: Mode ``"fail"``, a round exhausted; ``attempts`` is the
            number of attempts made and ``__cause__`` the last error.
        TransferCancelledError: The controller was cancelled (before an attempt, or while
            paused; then ``__cause__`` is the last error).
        UsageError: Mode ``"intervention"`` with neither a controller nor a flag file.
        Exception: Any error :func:`disposition` does not retry, unchanged, and in mode
            ``"fail"`` an ENOSPC/EDQUOT error, unchanged.
    """
    if controller is None and policy.mode == "intervention":
        if policy.flag_file is None:
            raise UsageError(
                f"{what}: retry mode 'intervention' needs a controller or retry.flag_file; "
                "nobody could resume a paused call"
            )
        controller = InterventionController.from_policy(policy)
    clock = policy.clock
    round_no = 1
    last: Exception | None = None
    while True:
        attempt = 0
        started = clock.monotonic()
        while True:
            if controller is not None:
                controller._raise_if_cancelled(what, transfer, path, last)
            attempt += 1
            try:
                return fn(*args)
            except Exception as exc:
                verdict = disposition(exc)
                if verdict is Disposition.FAIL or (
                    verdict is Disposition.OPERATOR and policy.mode == "fail"
                ):
                    raise
                last = exc
            if verdict is Disposition.OPERATOR:
                log.warning("retry: %s: %r needs an operator", what, last)
                break
            if attempt >= policy.max_attempts:
                break
            delay = policy.backoff(attempt)
            if (
                policy.max_total_seconds is not None
                and clock.monotonic() + delay - started > policy.max_total_seconds
            ):
                break
            log.info(
                "retry: %s: attempt %d failed with %r; retrying in %.3fs",
                what,
                attempt,
                last,
                delay,
            )
            if on_retry is not None:
                on_retry(RetryEvent(what, attempt, last, delay, round_no))
            clock.sleep(delay)

        event = RetryEvent(what, attempt, last, 0.0, round_no)
        if policy.mode == "fail":
            elapsed = clock.monotonic() - started
            raise RetriesExhaustedError(
                f"{what}: gave up after {attempt} attempt(s) in {elapsed:.3f}s: {last!r}",
                attempts=attempt,
                transfer=transfer,
                path=path,
            ) from last
        assert controller is not None  # made above for intervention mode
        decision = _pause(controller, event, on_pause)
        if decision == "cancel":
            raise TransferCancelledError(
                f"{what}: cancelled by the operator while paused after {attempt} "
                f"attempt(s): {last!r}",
                transfer=transfer,
                path=path,
            ) from last
        if on_resume is not None:
            on_resume(event)
        round_no += 1


def _pause(
    controller: InterventionController,
    event: RetryEvent,
    on_pause: Callable[[RetryEvent], None] | None,
) -> Literal["continue", "cancel"]:
    generation = controller._begin_pause()
    try:
        log.warning(
            "retry: %s: paused after %d attempt(s) (%r); waiting for the operator%s",
            event.what,
            event.attempt,
            event.error,
            f" (flag file {controller.flag_file})" if controller.flag_file else "",
        )
        if on_pause is not None:
            on_pause(event)
        return controller._wait(generation)
    finally:
        controller._end_pause()
