"""Tests for axlpy._retry: classification, backoff, limits, intervention, config.

Nothing here really sleeps: backoff goes to a fake clock. Intervention tests block on
threading events that another thread sets, and the flag-file tests poll every 10 ms.
"""

from __future__ import annotations

import errno
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from axlpy._errors import (
    AdmissionTimeoutError,
    BadSourceError,
    ChecksumMismatchError,
    IOBackendError,
    JournalError,
    PublishError,
    RetriesExhaustedError,
    SecurityError,
    SourceChangedError,
    TransferCancelledError,
    UsageError,
)
from axlpy._retry import (
    Disposition,
    InterventionController,
    RetryEvent,
    RetryPolicy,
    call_persistently,
    classify,
    disposition,
)

WAIT = 10.0  # seconds a test waits for another thread before it is declared hung


class FakeClock:
    """monotonic() that only moves when sleep() (or advance()) is called. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def make_policy(clock: FakeClock, **kw: object) -> RetryPolicy:
    kw.setdefault("rng", random.Random(1234))
    return RetryPolicy(clock=clock, **kw)  # type: ignore[arg-type]


class Flaky:
    """Raises the given errors in order, then returns ``result``. Counts calls."""

    def __init__(self, errors: Sequence[BaseException], result: object = "ok") -> None:
        self._lock = threading.Lock()
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
        return self.result


def oserr(code: int) -> OSError:
    return OSError(code, f"fake {errno.errorcode[code]}")


def _with_cause(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


# --------------------------------------------------------------------------------------
# Classification


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (oserr(errno.EINTR), True),
        (oserr(errno.EAGAIN), True),
        (oserr(errno.EWOULDBLOCK), True),
        (oserr(errno.ETIMEDOUT), True),
        (oserr(errno.EIO), True),
        (oserr(errno.ECONNRESET), True),
        (oserr(errno.ESTALE), True),
        (oserr(errno.EBUSY), True),
        (AdmissionTimeoutError("queue full"), True),
        (InterruptedError(), True),  # no errno: sorted by its class
        (BlockingIOError(), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (IOBackendError("pwrite", errno=errno.EIO), True),
        (IOBackendError("pwrite", errno=errno.ESTALE), True),
        (_with_cause(IOBackendError("pwrite"), oserr(errno.ETIMEDOUT)), True),
        (oserr(errno.EACCES), False),
        (oserr(errno.EPERM), False),
        (oserr(errno.ENOENT), False),
        (oserr(errno.ENOSPC), False),
        (oserr(errno.EDQUOT), False),
        (oserr(errno.EROFS), False),
        (oserr(errno.EBADF), False),
        (oserr(errno.EINVAL), False),
        (oserr(errno.EXDEV), False),  # unknown to the table: not retried
        (OSError("no errno at all"), False),
        (PermissionError(), False),
        (FileNotFoundError(), False),
        (IOBackendError("pwrite", errno=errno.EACCES), False),
        (IOBackendError("pwrite", errno=errno.ENOSPC), False),
        (IOBackendError("pwrite"), False),
        (_with_cause(IOBackendError("pwrite"), oserr(errno.EROFS)), False),
        (SourceChangedError("src changed"), False),
        (ChecksumMismatchError("crc"), False),
        (TransferCancelledError("cancelled"), False),
        (RetriesExhaustedError("gave up", attempts=3), False),
        (_with_cause(PublishError("rename"), oserr(errno.EIO)), False),
        (SecurityError("symlink"), False),  # a PermissionError without errno
        (UsageError("bad"), False),
        (BadSourceError("fifo"), False),
        (JournalError("corrupt"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
        (TypeError("bug"), False),
        (AssertionError("bug"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_classify(exc, expected):
    assert classify(exc) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (oserr(errno.EIO), Disposition.RETRY),
        (AdmissionTimeoutError("full"), Disposition.RETRY),
        (oserr(errno.ENOSPC), Disposition.OPERATOR),
        (oserr(errno.EDQUOT), Disposition.OPERATOR),
        (IOBackendError("pwrite", errno=errno.ENOSPC), Disposition.OPERATOR),
        (oserr(errno.EACCES), Disposition.FAIL),
        (ChecksumMismatchError("crc"), Disposition.FAIL),
        (ZeroDivisionError(), Disposition.FAIL),
    ],
)
def test_disposition(exc, expected):
    assert disposition(exc) is expected


# --------------------------------------------------------------------------------------
# Backoff


@pytest.mark.parametrize(
    ("retry", "expected"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (6, 1.0), (10_000, 1.0)],
)
def test_backoff_cap_grows_and_is_capped(retry, expected):
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, multiplier=2.0, jitter="none")
    assert policy.backoff_cap(retry) == pytest.approx(expected)
    assert policy.backoff(retry) == pytest.approx(expected)


def test_backoff_cap_rejects_retry_zero():
    with pytest.raises(UsageError):
        RetryPolicy().backoff_cap(0)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.floats(0, 100, allow_nan=False))
    return RetryPolicy(
        base_delay=base,
        max_delay=draw(st.floats(base, 1000, allow_nan=False)),
        multiplier=draw(st.floats(1, 10, allow_nan=False)),
        jitter=draw(st.sampled_from(["full", "equal", "none"])),
        rng=random.Random(draw(st.integers(0, 2**32))),
    )


@given(policy=policies(), retry=st.integers(1, 2000))
def test_backoff_delay_within_jitter_bounds(policy, retry):
    cap = policy.backoff_cap(retry)
    delay = policy.backoff(retry)
    assert 0 <= cap <= policy.max_delay
    if policy.jitter == "full":
        assert 0 <= delay <= cap
    elif policy.jitter == "equal":
        assert cap / 2 <= delay <= cap
    else:
        assert delay == cap


@given(policy=policies(), retry=st.integers(1, 2000))
def test_backoff_cap_is_monotone_non_decreasing(policy, retry):
    assert policy.backoff_cap(retry) <= policy.backoff_cap(retry + 1) <= policy.max_delay


@given(seed=st.integers(0, 2**32))
def test_seeded_rng_gives_reproducible_delays(seed):
    a = RetryPolicy(rng=random.Random(seed))
    b = RetryPolicy(rng=random.Random(seed))
    assert [a.backoff(n) for n in range(1, 20)] == [b.backoff(n) for n in range(1, 20)]


def test_policies_differing_only_in_clock_and_rng_are_equal():
    assert RetryPolicy(rng=random.Random(1)) == RetryPolicy(rng=random.Random(2))
    assert hash(RetryPolicy(clock=FakeClock())) == hash(RetryPolicy())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"max_total_seconds": 0}, "max_total_seconds"),
        ({"base_delay": -1}, "base_delay"),
        ({"base_delay": 2, "max_delay": 1}, "max_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "half"}, "jitter"),
        ({"mode": "forever"}, "mode"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
def test_policy_rejects_bad_values(kwargs, expected):
    with pytest.raises(UsageError, match=expected):
        RetryPolicy(**kwargs)


# --------------------------------------------------------------------------------------
# The loop, fail mode


def test_success_first_time_does_not_sleep():
    clock = FakeClock()
    assert call_persistently(lambda a, b: a + b, 2, 3, policy=make_policy(clock)) == 5
    fn = Flaky([], result=5)
    assert call_persistently(fn, policy=make_policy(clock)) == 5
    assert clock.sleeps == []
    assert fn.calls == 1


def test_transient_errors_are_retried_then_succeed():
    clock = FakeClock()
    fn = Flaky([oserr(errno.EIO), oserr(errno.EAGAIN)], result=42)
    events: list[RetryEvent] = []
    policy = make_policy(clock, base_delay=1.0, max_delay=10.0, jitter="none")
    result = call_persistently(fn, policy=policy, what="w", on_retry=events.append)
    assert result == 42
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    assert [(e.what, e.attempt, e.delay, e.round) for e in events] == [
        ("w", 1, 1.0, 1),
        ("w", 2, 2.0, 1),
    ]
    assert events[0].error.errno == errno.EIO  # type: ignore[attr-defined]


def test_attempt_limit_raises_retries_exhausted_from_last_error():
    clock = FakeClock()
    errors = [oserr(errno.EIO) for _ in range(10)]
    fn = Flaky(errors)
    policy = make_policy(clock, max_attempts=4, max_total_seconds=None)
    with pytest.raises(RetriesExhaustedError) as info:
        call_persistently(fn, policy=policy, what="fsync x", transfer="t1", path="x")
    assert fn.calls == 4
    assert info.value.attempts == 4
    assert info.value.__cause__ is errors[3]  # the last attempt's error, not the first
    assert (info.value.transfer, info.value.path) == ("t1", "x")
    assert "fsync x" in str(info.value)
    assert len(clock.sleeps) == 3  # no pointless sleep after the last attempt


def test_exhaustion_cause_is_the_last_error_object():
    clock = FakeClock()
    errors = [oserr(errno.ETIMEDOUT) for _ in range(3)]
    last = errors[-1]
    with pytest.raises(RetriesExhaustedError) as info:
        call_persistently(Flaky(errors), policy=make_policy(clock, max_attempts=3))
    assert info.value.__cause__ is last


def test_max_attempts_one_means_no_retry():
    clock = FakeClock()
    fn = Flaky([oserr(errno.EIO)])
    with pytest.raises(RetriesExhaustedError) as info:
        call_persistently(fn, policy=make_policy(clock, max_attempts=1))
    assert (fn.calls, info.value.attempts, clock.sleeps) == (1, 1, [])


def test_total_time_limit_stops_before_sleeping_past_the_deadline():
    clock = FakeClock()

    def slow_failure() -> None:
        clock.advance(10.0)  # each attempt takes 10 s of fake time
        raise oserr(errno.ETIMEDOUT)

    policy = make_policy(
        clock, max_attempts=100, max_total_seconds=25.0, base_delay=1.0, jitter="none"
    )
    start = clock.monotonic()
    with pytest.raises(RetriesExhaustedError) as info:
        call_persistently(slow_failure, policy=policy)
    # t=10 fail, sleep 1 -> 11; t=21 fail, sleep 2 would end at 23 <= 25 -> 23;
    # t=33 fail: past the limit, give up without sleeping.
    assert info.value.attempts == 3
    assert clock.sleeps == [1.0, 2.0]
    assert clock.monotonic() - start == pytest.approx(33.0)


def test_total_time_limit_gives_up_when_backoff_would_cross_it():
    clock = FakeClock()
    policy = make_policy(
        clock,
        max_attempts=100,
        max_total_seconds=5.0,
        base_delay=4.0,
        max_delay=4.0,
        jitter="none",
    )
    fn = Flaky([oserr(errno.EIO) for _ in range(10)])
    with pytest.raises(RetriesExhaustedError) as info:
        call_persistently(fn, policy=policy)
    assert (info.value.attempts, clock.sleeps) == (2, [4.0])


def test_non_retryable_propagates_unchanged_at_once():
    clock = FakeClock()
    err = oserr(errno.EACCES)
    fn = Flaky([err])
    with pytest.raises(PermissionError) as info:
        call_persistently(fn, policy=make_policy(clock))
    assert info.value is err
    assert fn.calls == 1
    assert clock.sleeps == []


def test_bug_in_operation_propagates_unchanged():
    clock = FakeClock()
    err = KeyError("oops")
    with pytest.raises(KeyError) as info:
        call_persistently(Flaky([err]), policy=make_policy(clock))
    assert info.value is err
    assert clock.sleeps == []


def test_non_retryable_after_retryable_propagates_unchanged():
    clock = FakeClock()
    err = ChecksumMismatchError("crc")
    fn = Flaky([oserr(errno.EIO), err])
    with pytest.raises(ChecksumMismatchError) as info:
        call_persistently(fn, policy=make_policy(clock))
    assert info.value is err
    assert fn.calls == 2
    assert len(clock.sleeps) == 1


def test_enospc_in_fail_mode_propagates_unchanged_without_retry():
    clock = FakeClock()
    err = oserr(errno.ENOSPC)
    fn = Flaky([err])
    with pytest.raises(OSError, match="ENOSPC") as info:
        call_persistently(fn, policy=make_policy(clock))
    assert info.value is err
    assert (fn.calls, clock.sleeps) == (1, [])


def test_keyboard_interrupt_is_not_caught():
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        call_persistently(Flaky([KeyboardInterrupt()]), policy=make_policy(clock))


def test_cancelled_controller_stops_before_the_next_attempt():
    clock = FakeClock()
    controller = InterventionController()
    fn = Flaky([oserr(errno.EIO)] * 5)
    calls_before_cancel = 2

    def on_retry(event: RetryEvent) -> None:
        if event.attempt == calls_before_cancel:
            controller.cancel()

    with pytest.raises(TransferCancelledError) as info:
        call_persistently(fn, policy=make_policy(clock), controller=controller, on_retry=on_retry)
    assert fn.calls == calls_before_cancel
    assert isinstance(info.value.__cause__, OSError)  # the error it was backing off from
    fn2 = Flaky([])
    with pytest.raises(TransferCancelledError):
        call_persistently(fn2, policy=make_policy(clock), controller=controller)
    assert fn2.calls == 0


def test_intervention_mode_needs_a_way_to_resume():
    with pytest.raises(UsageError, match="intervention"):
        call_persistently(lambda: None, policy=RetryPolicy(mode="intervention"))


# --------------------------------------------------------------------------------------
# Intervention mode


class PausedCall:
    """Runs call_persistently in a worker thread; records pause/resume hook calls."""

    def __init__(
        self,
        fn: Callable[[], object],
        policy: RetryPolicy,
        controller: InterventionController,
        **kw: Any,
    ) -> None:
        self.paused = threading.Event()
        self.pause_events: list[RetryEvent] = []
        self.resume_events: list[RetryEvent] = []
        self._pool = ThreadPoolExecutor(max_workers=1)

        def run() -> object:
            return call_persistently(
                fn,
                policy=policy,
                controller=controller,
                on_pause=self._on_pause,
                on_resume=self.resume_events.append,
                **kw,
            )

        self.future = self._pool.submit(run)

    def _on_pause(self, event: RetryEvent) -> None:
        self.pause_events.append(event)
        self.paused.set()

    def wait_paused(self) -> None:
        assert self.paused.wait(WAIT), "call did not pause"

    def result(self) -> object:
        try:
            return self.future.result(WAIT)
        finally:
            self._pool.shutdown()


def test_intervention_pauses_once_then_resume_continues_and_succeeds():
    clock = FakeClock()
    controller = InterventionController()
    fn = Flaky([oserr(errno.EIO)] * 3, result="done")  # round 1 (3 attempts) all fail
    policy = make_policy(clock, max_attempts=3, mode="intervention")
    call = PausedCall(fn, policy, controller, what="pwrite")
    call.wait_paused()
    assert controller.paused_calls == 1
    assert fn.calls == 3
    assert controller.resume() == 1
    assert call.result() == "done"
    assert len(call.pause_events) == 1
    pause = call.pause_events[0]
    assert (pause.what, pause.attempt, pause.round) == ("pwrite", 3, 1)
    assert [e.round for e in call.resume_events] == [1]
    assert fn.calls == 4
    assert controller.paused_calls == 0
    assert len(clock.sleeps) == 2  # no backoff across the pause


def test_continue_starts_a_fresh_round_of_attempts():
    clock = FakeClock()
    controller = InterventionController()
    fn = Flaky([oserr(errno.EIO)] * 4, result="done")  # round 1: 2 fail; round 2: 2 fail
    policy = make_policy(clock, max_attempts=2, mode="intervention")
    call = PausedCall(fn, policy, controller)
    call.wait_paused()
    call.paused.clear()
    controller.resume()
    call.wait_paused()  # round 2 exhausted too: paused again, hook called again
    controller.resume()
    assert call.result() == "done"
    assert [(e.attempt, e.round) for e in call.pause_events] == [(2, 1), (2, 2)]
    assert fn.calls == 5


def test_cancel_while_paused_raises_transfer_cancelled_from_last_error():
    clock = FakeClock()
    controller = InterventionController()
    errors = [oserr(errno.ESTALE) for _ in range(2)]
    policy = make_policy(clock, max_attempts=2, mode="intervention")
    call = PausedCall(Flaky(errors), policy, controller, transfer="t", path="p")
    call.wait_paused()
    controller.cancel()
    with pytest.raises(TransferCancelledError) as info:
        call.result()
    assert info.value.__cause__ is errors[-1]
    assert (info.value.transfer, info.value.path) == ("t", "p")
    assert call.resume_events == []
    assert controller.cancelled
    assert controller.paused_calls == 0


def test_enospc_in_intervention_mode_pauses_at_once():
    clock = FakeClock()
    controller = InterventionController()
    fn = Flaky([oserr(errno.ENOSPC)], result="written")
    policy = make_policy(clock, max_attempts=5, mode="intervention")
    call = PausedCall(fn, policy, controller)
    call.wait_paused()
    assert fn.calls == 1
    assert clock.sleeps == []  # waiting does not free space: no backoff first
    controller.resume()
    assert call.result() == "written"
    assert call.pause_events[0].error.errno == errno.ENOSPC  # type: ignore[attr-defined]


def test_resume_before_a_pause_does_not_pre_approve_it():
    clock = FakeClock()
    controller = InterventionController()
    assert controller.resume() == 0
    policy = make_policy(clock, max_attempts=1, mode="intervention")
    fn = Flaky([oserr(errno.EIO)])
    call = PausedCall(fn, policy, controller)
    call.wait_paused()
    assert not call.future.done()
    assert controller.paused_calls == 1
    controller.resume()
    assert call.result() == "ok"


def test_pause_hook_error_propagates_and_unregisters_the_pause():
    clock = FakeClock()
    controller = InterventionController()
    policy = make_policy(clock, max_attempts=1, mode="intervention")

    def on_pause(event: RetryEvent) -> None:
        raise JournalError("cannot journal PAUSED")

    with pytest.raises(JournalError):
        call_persistently(
            Flaky([oserr(errno.EIO)]), policy=policy, controller=controller, on_pause=on_pause
        )
    assert controller.paused_calls == 0


def test_one_controller_shared_by_several_workers():
    clock = FakeClock()
    controller = InterventionController()
    policy = make_policy(clock, max_attempts=2, mode="intervention")
    workers = 6
    all_paused = threading.Barrier(workers + 1)
    released = threading.Event()

    paused: list[str] = []
    attempts: list[int] = []

    def on_pause(event: RetryEvent) -> None:
        paused.append(event.what)
        all_paused.wait(WAIT)

    def extent(i: int) -> int:
        # Fails until the operator said continue; then writes "extent" i.
        attempts.append(i)
        if not released.is_set():
            raise oserr(errno.EIO)
        return i

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(
                call_persistently,  # type: ignore[arg-type]  # mypy: TypeVarTuple via submit
                extent,
                i,
                policy=policy,
                controller=controller,
                on_pause=on_pause,
                what=f"extent {i}",
            )
            for i in range(workers)
        ]
        all_paused.wait(WAIT)
        assert controller.paused_calls == workers
        released.set()
        assert controller.resume() == workers
        assert sorted(f.result(WAIT) for f in futures) == list(range(workers))
    assert controller.paused_calls == 0
    assert len(paused) == workers
    assert len(attempts) == workers * 3
    assert len(clock.sleeps) == workers


def test_cancel_reaches_every_paused_worker():
    clock = FakeClock()
    controller = InterventionController()
    policy = make_policy(clock, max_attempts=1, mode="intervention")
    workers = 4
    all_paused = threading.Barrier(workers + 1)

    def on_pause(event: RetryEvent) -> None:
        all_paused.wait(WAIT)

    def failing() -> None:
        raise oserr(errno.EBUSY)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(
                lambda: call_persistently(
                    failing, policy=policy, controller=controller, on_pause=on_pause
                )
            )
            for _ in range(workers)
        ]
        all_paused.wait(WAIT)
        controller.cancel()
        for f in futures:
            with pytest.raises(TransferCancelledError):
                f.result(WAIT)


# --------------------------------------------------------------------------------------
# Flag file (real files)


def _write_flag(path: Path, text: str) -> None:
    # The protocol asks writers to write then rename, so a poll never sees half a word.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("continue\n", "continue"), ("  CONTINUE  ", "continue"), ("cancel", "cancel")],
)
def test_check_flag_file_consumes_a_command(tmp_path, text, expected):
    flag = tmp_path / "flag"
    controller = InterventionController(flag)
    flag.write_text(text)
    assert controller.check_flag_file() == expected
    assert not flag.exists()
    assert (tmp_path / "flag.consumed").read_text() == text
    assert controller.cancelled is (expected == "cancel")
    assert controller.check_flag_file() is None  # consumed: acted on once


@pytest.mark.parametrize(("text"), ["", "go", "continue please", "c" * 100, "continue" + " " * 80])
def test_check_flag_file_leaves_non_commands_alone(tmp_path, text):
    flag = tmp_path / "flag"
    flag.write_text(text)
    controller = InterventionController(flag)
    assert controller.check_flag_file() is None
    assert flag.read_text() == text
    assert not controller.cancelled


def test_check_flag_file_without_file_or_path(tmp_path):
    assert InterventionController().check_flag_file() is None
    assert InterventionController(tmp_path / "absent").check_flag_file() is None


def test_unreadable_flag_file_is_ignored(tmp_path):
    flag = tmp_path / "flag"
    flag.mkdir()  # reading a directory fails with IsADirectoryError
    assert InterventionController(flag).check_flag_file() is None


def test_flag_file_continue_written_by_another_thread_resumes(tmp_path):
    clock = FakeClock()
    flag = tmp_path / "retry.flag"
    policy = make_policy(
        clock, max_attempts=2, mode="intervention", flag_file=str(flag), poll_interval=0.01
    )
    fn = Flaky([oserr(errno.EIO)] * 2, result="done")
    # No controller passed: call_persistently makes one from policy.flag_file.
    paused = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        future = pool.submit(
            lambda: call_persistently(fn, policy=policy, on_pause=lambda e: paused.set())
        )
        assert paused.wait(WAIT)
        writer = pool.submit(_write_flag, flag, "continue\n")
        writer.result(WAIT)
        assert future.result(WAIT) == "done"
    assert not flag.exists()
    assert (tmp_path / "retry.flag.consumed").read_text() == "continue\n"


def test_flag_file_cancel_cancels(tmp_path):
    clock = FakeClock()
    flag = tmp_path / "retry.flag"
    controller = InterventionController(flag, poll_interval=0.01)
    policy = make_policy(clock, max_attempts=1, mode="intervention")
    call = PausedCall(Flaky([oserr(errno.EIO)]), policy, controller)
    call.wait_paused()
    _write_flag(flag, "cancel")
    with pytest.raises(TransferCancelledError):
        call.result()
    assert controller.cancelled
    assert not flag.exists()


def test_flag_file_garbage_is_ignored_until_a_command_arrives(tmp_path):
    clock = FakeClock()
    flag = tmp_path / "retry.flag"
    controller = InterventionController(flag, poll_interval=0.01)
    policy = make_policy(clock, max_attempts=1, mode="intervention")
    call = PausedCall(Flaky([oserr(errno.EIO)]), policy, controller)
    call.wait_paused()
    flag.write_text("")  # what a poll may see while a careless writer is half way
    # Let the poller see the empty file a few times; it must neither act nor delete it.
    for _ in range(3):
        assert controller.check_flag_file() is None
    assert not call.future.done()
    assert flag.exists()
    _write_flag(flag, "continue")
    assert call.result() == "ok"


def test_from_policy_copies_flag_file_and_poll_interval(tmp_path):
    policy = RetryPolicy(flag_file=str(tmp_path / "f"), poll_interval=0.5)
    controller = InterventionController.from_policy(policy)
    assert (controller.flag_file, controller.poll_interval) == (str(tmp_path / "f"), 0.5)


def test_controller_rejects_bad_poll_interval():
    with pytest.raises(UsageError):
        InterventionController(poll_interval=0)


# --------------------------------------------------------------------------------------
# Config


def test_from_config_defaults():
    assert RetryPolicy.from_config({}, {}) == RetryPolicy()


def test_from_config_dotted_keys():
    policy = RetryPolicy.from_config(
        {
            "retry.max_attempts": "7",
            "retry.max_seconds": 60,
            "retry.base_delay": "0.5",
            "retry.max_delay": 8,
            "retry.multiplier": "3",
            "retry.jitter": "Equal",
            "retry.mode": "intervention",
            "retry.flag_file": "/run/axlpy.flag",
            "retry.poll_interval": "2",
            "journal.path": "ignored: not a retry key",
        },
        {},
    )
    assert policy == RetryPolicy(
        max_attempts=7,
        max_total_seconds=60.0,
        base_delay=0.5,
        max_delay=8.0,
        multiplier=3.0,
        jitter="equal",
        mode="intervention",
        flag_file="/run/axlpy.flag",
        poll_interval=2.0,
    )


def test_from_config_nested_table_and_env_override():
    policy = RetryPolicy.from_config(
        {"retry": {"max_attempts": 3, "mode": "fail"}},
        {
            "AXLPY_RETRY_MAX_ATTEMPTS": "9",
            "AXLPY_RETRY_MAX_SECONDS": "none",
            "AXLPY_RETRY_FLAG_FILE": "",
            "PATH": "/usr/bin",
        },
    )
    assert (policy.max_attempts, policy.max_total_seconds, policy.flag_file) == (9, None, None)


def test_from_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("AXLPY_RETRY_MODE", "intervention")
    assert RetryPolicy.from_config().mode == "intervention"


def test_from_config_injects_clock_and_rng():
    clock, rng = FakeClock(), random.Random(5)
    policy = RetryPolicy.from_config({}, {}, clock=clock, rng=rng)
    assert policy.clock is clock
    assert policy.rng is rng


@pytest.mark.parametrize(
    ("mapping", "env", "expected"),
    [
        ({"retry.max_attemps": 3}, {}, "unknown config key 'retry.max_attemps'"),
        ({}, {"AXLPY_RETRY_MAXATTEMPTS": "3"}, "AXLPY_RETRY_MAXATTEMPTS"),
        ({"retry.max_attempts": "three"}, {}, "expected an integer"),
        ({"retry.max_attempts": 2.5}, {}, "expected an integer"),
        ({"retry.max_attempts": True}, {}, "expected an integer"),
        ({"retry.base_delay": "soon"}, {}, "expected a number"),
        ({"retry.base_delay": [1]}, {}, "expected a number"),
        ({"retry.base_delay": False}, {}, "expected a number"),
        ({"retry.flag_file": 3}, {}, "expected a path"),
        ({"retry.mode": 1}, {}, "expected a string"),
        ({"retry.mode": "sometimes"}, {}, "mode"),
        ({}, {"AXLPY_RETRY_MAX_ATTEMPTS": "0"}, "max_attempts"),
        ({"retry": "fast"}, {}, "must be a table"),
        ({"retry": {"mode": "fail"}, "retry.mode": "fail"}, {}, "given twice"),
    ],
)
def test_from_config_rejects(mapping, env, expected):
    with pytest.raises(UsageError, match=expected):
        RetryPolicy.from_config(mapping, env)
