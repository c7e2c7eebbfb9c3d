"""Progress display of a copy running in this process, and Ctrl-C handling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, NoReturn

import click

from .._errors import AxlError
from ._app import _T, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CliError, _cmd, _settings
from ._render import _admission_text, _human_bytes, _human_duration, _isatty, _plural, _safe, _say

if TYPE_CHECKING:
    from .._driver import Progress
    from .._transfer import Transfer


class _Reporter:
    """Shows a transfer's progress on stderr: a redrawn bar on a terminal, a quiet line
    every ``interval`` seconds otherwise, and a summary at the end."""

    def __init__(self, name: str, mode: str, stream: IO[str] | None = None,
                 baseline: int = 0, published: int = 0) -> None:
        self.name = _safe(name)
        #: bytes of files published before this run: a resume verifies them but does not
        #: count them in its Progress, so the display adds them
        self.published = published
        #: bytes already durable before this run (a resume): not counted in the rate
        self.baseline = baseline
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "lines"
        self.mode = mode
        self.interval = float(os.environ.get("AXLPY_PROGRESS_INTERVAL", "10"))
        self.started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self._drawn = False
        self.last: Progress | None = None

    def __call__(self, p: Progress) -> None:
        self.last = p
        now = time.monotonic()
        with self._lock:
            if self.mode == "bar":
                if now - self._last >= 0.1 or p.files_done == p.files_total:
                    self._last = now
                    self._draw(p)
            elif self.mode == "lines" and now - self._last >= self.interval:
                if self._last or now - self.started >= self.interval:
                    self._write(f"axlpy: {self.name}: {self._text(p)}\n")
                self._last = now

    def _text(self, p: Progress) -> str:
        rate = p.rate
        done = min(p.bytes_total, p.bytes_done + self.published)
        left = max(0, p.bytes_total - done)
        eta = _human_duration(left / rate) if rate > 0 else "--:--"
        pct = 100.0 * done / p.bytes_total if p.bytes_total else 100.0
        return (f"{pct:3.0f}% {_human_bytes(done)}/{_human_bytes(p.bytes_total)}"
                f"  {p.files_done}/{p.files_total} files  {_human_bytes(rate)}/s"
                f"  ETA {eta}")

    def _draw(self, p: Progress) -> None:
        text = self._text(p)
        cols = shutil.get_terminal_size((80, 24)).columns
        width = max(0, min(30, cols - len(text) - 4))
        bar = ""
        if width >= 5:
            done = min(p.bytes_total, p.bytes_done + self.published)
            frac = done / p.bytes_total if p.bytes_total else 1.0
            fill = int(width * min(1.0, frac))
            bar = "[" + "#" * fill + "-" * (width - fill) + "] "
        self._write(f"\r{bar}{text}\x1b[K")
        self._drawn = True

    def _write(self, s: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(s)
            self.stream.flush()

    def end_line(self) -> None:
        """Leave the bar's line so the next message starts on its own line."""
        with self._lock:
            if self._drawn:
                self._write("\n")
                self._drawn = False

    def finish(self, t: Transfer) -> None:
        st = t.status()
        with self._lock:
            if self.mode == "bar" and self.last is not None:
                self._draw(self.last)
        self.end_line()
        if self.mode == "none":
            return
        dt = time.monotonic() - self.started
        copied = max(0, st.bytes_done - self.baseline)
        extra = f" ({_human_bytes(copied)} copied now)" if self.baseline else ""
        self._write(f"axlpy: {self.name}: {st.state.value}: {_plural(st.files_done, 'file')}, "
                    f"{_human_bytes(st.bytes_done)}{extra} in {dt:.1f}s "
                    f"({_human_bytes(copied / dt if dt > 0 else 0)}/s)\n")
        if _settings().verbose:
            counts = t.admission_stats().as_dict()
            self._write(f"axlpy: {self.name}: admission: {_admission_text(counts)}\n")


def _run_transfer(t: Transfer, reporter: _Reporter, start: Callable[[], None]) -> None:
    """Run ``start`` (dispatch or resume) to the end; on Ctrl-C stop cleanly and exit 3.
    Returns only if the transfer is COMPLETED; otherwise prints why and exits non-zero,
    so ``axlpy cp a b && rm -rf a`` is safe.

    SYNC copies in this thread, so Ctrl-C raises KeyboardInterrupt inside the copy: what
    is committed stays committed, the transfer stays DISPATCHED owned by this process, and
    once this process has exited any other can take it over and resume. Background types
    are asked to stop at the next chunk and waited for (their threads never take the
    signal themselves, see ``axlpy._transfer``)."""
    try:
        start()
        # Always wait, even if the worker already ended: a background transfer that
        # failed before this line raises its stored error only here.
        t.wait()
    except KeyboardInterrupt:
        reporter.end_line()
        _stop_background(t)
        _interrupted(t)
    except AxlError:
        reporter.end_line()
        raise
    reporter.finish(t)
    state = t.state
    if state is not _T.COMPLETED:
        # wait() raised nothing, yet the transfer did not complete (cancelled meanwhile,
        # or its error was already taken): the journal has the reason.
        error = t.status().error
        why = f": {error}" if error else ""
        hint = (f"; `{_cmd('resume', t.name)}` finishes it" if state is not _T.CANCELLED
                else "")
        raise CliError(f"transfer {_safe(t.name)} ended {state.value}, not COMPLETED"
                       f"{_safe(why)}{hint}")


def _stop_background(t: Transfer) -> None:
    # Stop the worker at its next chunk without undoing anything; the journal keeps its
    # last committed state. A second Ctrl-C here ends the process at once (still safe:
    # that is a crash, which resume handles).
    with contextlib.suppress(TimeoutError, AxlError):
        t.interrupt(timeout=60)


def _interrupted(t: Transfer) -> NoReturn:
    err = sys.stderr
    state = t.state
    if state is _T.COMPLETED:
        _say(f"axlpy: {_safe(t.name)}: interrupted, but the copy had already completed",
                   err=True)
        raise click.exceptions.Exit(EXIT_OK)
    if state is _T.CREATED:
        with contextlib.suppress(AxlError):
            t.free()
        _say(f"axlpy: {_safe(t.name)}: interrupted before copying started; nothing was "
                   "written and the transfer was removed from the journal", err=True)
        raise click.exceptions.Exit(EXIT_FAILURE)
    st = t.status()
    err.write(
        f"axlpy: {_safe(t.name)}: interrupted ({state.value}, {st.files_done}/{st.files_total} "
        f"files, {_human_bytes(st.bytes_done)}/{_human_bytes(st.bytes_total)} safe in the "
        "journal). Nothing half-written is under a final name.\n"
        f"  to finish it:  {_cmd('resume', t.name)}\n"
        f"  to undo it:    {_cmd('cancel', t.name)}\n"
    )
    err.flush()
    raise click.exceptions.Exit(EXIT_INTERRUPTED)


_PROGRESS_HELP = ("auto: a bar if stderr is a terminal, else a line every 10 s; "
                  "bar; lines; none.")
