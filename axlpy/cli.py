"""The ``axlpy`` command line: copy, inspect, resume, cancel, verify and clean up transfers.

Every command reads or writes one journal: ``--journal PATH``, else ``$AXLPY_JOURNAL``,
else ``~/.local/state/axlpy/journal.db`` (see :func:`axlpy.default_journal_path`). Read
commands (``ls``, ``status``, ``verify``, ``gc``, ``latest``) never write to the journal
or to the files they look at, except ``gc --delete``, which removes only the temp files it
listed. ``--json`` output is versioned (``"version": 1``) and documented in docs/cli.md.

Exit codes (also in ``axlpy --help``): 0 success; 1 failure (a transfer failed, verify
found a mismatch, a journal or filesystem error); 2 usage error (bad arguments, unknown
transfer name, an operation the transfer's state does not allow); 3 interrupted but
resumable (Ctrl-C during ``cp`` or ``resume``, or ``status --watch`` saw the owner die):
the journal and the temps are intact, and the printed ``axlpy resume`` finishes the job.

On disk if this process dies at any moment: exactly what the library guarantees (see
docs/design.md); the command line adds no state of its own besides the journal.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import functools
import json
import logging
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, NoReturn, TypeVar

import click

from ._config import default_journal_path
from ._driver import Progress
from ._errors import (
    AxlError,
    BackendUnavailableError,
    JournalBusyError,
    JournalError,
    JournalFullError,
    OwnershipError,
    SecurityError,
    TransferError,
    UsageError,
)
from ._gc import TempFile, gc as collect_temps
from ._lease import host_id
from ._state import FileState, TransferState
from ._transfer import FileStatus, Journal, Owner, Transfer, TransferStatus, TransferType
from ._verify import Mismatch, verify_checkpoint

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "JSON_VERSION",
    "cli",
    "main",
]

log = logging.getLogger("axlpy.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3

#: bumped only when a field of the ``--json`` output changes meaning or disappears
JSON_VERSION = 1

_T = TransferState
_F = FileState

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  failure: a transfer failed, verify found a mismatch, journal or I/O error
  2  usage error: bad arguments, unknown transfer, state does not allow it
  3  interrupted but resumable: run the printed `axlpy resume` command
"""

F = TypeVar("F", bound=Callable[..., Any])


# -- settings shared by the group and every command ----------------------------------------


@dataclass
class _Settings:
    journal: str | None = None
    allow_shared: bool = False
    verbose: int = 0
    debug: bool = False


def _settings() -> _Settings:
    ctx = click.get_current_context()
    root = ctx.find_root()
    s = root.meta.get("axlpy.settings")
    if not isinstance(s, _Settings):
        s = _Settings()
        root.meta["axlpy.settings"] = s
    return s


def _set_journal(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _settings().journal = value


def _set_allow_shared(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _settings().allow_shared = True


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        _settings().verbose = max(_settings().verbose, value)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _settings().debug = True


def _common_options(f: F) -> F:
    """``--journal``, ``-v`` and ``--debug``, accepted before or after the command name."""
    f = click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
        help="Show a full traceback on errors.",
    )(f)
    f = click.option(
        "-v", "--verbose", count=True, expose_value=False, is_eager=True,
        callback=_set_verbose, help="Log what happens (-vv: debug detail) on stderr.",
    )(f)
    f = click.option(
        "--journal", metavar="PATH", expose_value=False, is_eager=True,
        callback=_set_journal,
        help="Journal file [default: $AXLPY_JOURNAL or ~/.local/state/axlpy/journal.db].",
    )(f)
    f = click.option(
        "--allow-shared-journal", is_flag=True, expose_value=False, is_eager=True,
        callback=_set_allow_shared, help="Accept a journal in a directory other users can "
        "write (e.g. /tmp); they could redirect writes [env: AXLPY_ALLOW_SHARED_JOURNAL=1].",
    )(f)
    return f


def _journal_path() -> str:
    s = _settings()
    return os.path.abspath(s.journal if s.journal else default_journal_path())


def _journal_arg() -> str:
    """``--journal PATH`` for a printed command, unless the journal is the built-in
    default (so the command also works in a shell without $AXLPY_JOURNAL)."""
    path = _journal_path()
    saved = os.environ.pop("AXLPY_JOURNAL", None)
    try:
        builtin = os.path.abspath(default_journal_path())
    finally:
        if saved is not None:
            os.environ["AXLPY_JOURNAL"] = saved
    return "" if path == builtin else f" --journal {_quote(path)}"


def _quote(arg: str) -> str:
    """One shell word, pasteable into bash: ``shlex.quote``, or ``$'...'`` with escapes
    when ``arg`` holds control characters (which must never reach the terminal raw)."""
    if not _UNSAFE.search(arg):
        return shlex.quote(arg)
    body = _UNSAFE.sub(_escape_char, arg.replace("\\", "\\\\").replace("'", "\\'"))
    return f"$'{body}'"


def _cmd(verb: str, name: str) -> str:
    return f"axlpy {verb}{_journal_arg()} {_quote(name)}"


# -- logging and errors --------------------------------------------------------------------


class _EchoHandler(logging.Handler):
    """Writes log records through click (so CliRunner captures them) to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _say(f"axlpy: {record.levelname.lower()}: {self.format(record)}", err=True)
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


def _setup_logging(verbose: int) -> None:
    logger = logging.getLogger("axlpy")
    for h in list(logger.handlers):
        if isinstance(h, _EchoHandler):
            logger.removeHandler(h)
    if verbose <= 0:
        logger.setLevel(logging.WARNING)
    else:
        logger.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


class CliError(click.ClickException):
    """One line on stderr, ``axlpy: error: ...``; exit code 1 (failure)."""

    exit_code = EXIT_FAILURE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(_safe_lines(f"axlpy: error: {self.format_message()}"), err=True,
                   file=file)


class CliUsageError(CliError):
    """Like :class:`CliError`, exit code 2: the command cannot be done as asked."""

    exit_code = EXIT_USAGE


def _hint(exc: BaseException) -> str:
    """What to do next, for the errors a person can act on."""
    if isinstance(exc, OwnershipError):
        return ("wait for it (axlpy status --watch NAME), or until its owner's lease "
                "expires (a dead owner on another node stops renewing it); --force takes "
                "over a transfer whose owner is on another host and known dead")
    if isinstance(exc, SecurityError | JournalBusyError):
        return ""  # the message already says what to do
    if isinstance(exc, JournalFullError):
        then = (f"`{_cmd('resume', exc.transfer)}`" if exc.resumable and exc.transfer
                else f"run `{shlex.join(['axlpy', *_ARGV])}` again" if _ARGV
                else "run the same command again")
        return f"free space on {exc.mount}, then {then}"
    if isinstance(exc, JournalError):
        msg, path = str(exc), _journal_path()
        if "--journal" in msg:
            return ""
        where = "" if path in msg else f"the journal is {_safe(path)}; "
        return f"{where}{_WHERE} to use another"
    if isinstance(exc, BackendUnavailableError) or isinstance(exc.__cause__, ImportError):
        # Not resumable here: the same engine would fail the same way.
        return ("this machine lacks what that transfer type needs: install it, or copy "
                "with another --type (see docs/backends.md)")
    if isinstance(exc, TransferError) and exc.transfer:
        return (f"fix the cause, then `{_cmd('resume', exc.transfer)}`, "
                f"or undo it with `{_cmd('cancel', exc.transfer)}`")
    return ""


def _one_line(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, JournalFullError) else str(exc)
    msg = " ".join(text.split()) or type(exc).__name__
    hint = _hint(exc)
    return f"{msg}; {hint}" if hint else msg


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else ""
    if isinstance(where, bytes):
        where = _show(where)
    return f"{what}: {where!s}" if where else what


def _handle_errors(f: F) -> F:
    """Turn library errors into one line on stderr and the documented exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        s = _settings()
        _setup_logging(s.verbose)
        log.debug("journal %s", _journal_path())
        try:
            return f(*args, **kwargs)
        except click.ClickException:
            raise
        except UsageError as exc:
            if s.debug:
                raise
            raise CliUsageError(_one_line(exc)) from exc
        except AxlError as exc:
            if s.debug:
                raise
            raise CliError(_one_line(exc)) from exc
        except OSError as exc:
            if s.debug:
                raise
            raise CliError(_os_error_line(exc)) from exc

    return wrapper  # type: ignore[return-value]


# -- formatting ----------------------------------------------------------------------------


#: what must not reach a terminal raw: C0/C1 controls and DEL (escape sequences, \\n that
#: splits a row, \\r that overwrites it), line/paragraph separators, and bidi overrides
#: that reorder what is displayed
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _safe(text: str) -> str:
    """Text for a terminal, as ``ls -b`` shows names: control characters become visible
    escapes (``\\n``, ``\\x1b``, ``\\u202e``). Human output only; JSON stays exact."""
    return _UNSAFE.sub(_escape_char, text)


def _safe_lines(text: str) -> str:
    """:func:`_safe` for each line of a multi-line message (its own newlines stay)."""
    return "\n".join(_safe(line) for line in text.split("\n"))


def _say(text: str = "", *, err: bool = False) -> None:
    """Print human-readable output. Every field was escaped where it was formatted; this
    is the last guard for anything that was not (an error text, a log line)."""
    click.echo(_safe_lines(text), err=err)


def _show(p: bytes | str) -> str:
    """A path for people: bytes that are not UTF-8 are shown as ``\\xNN``, control
    characters escaped (see :func:`_safe`)."""
    b = os.fsencode(p) if isinstance(p, str) else p
    return _safe(b.decode("utf-8", "backslashreplace"))


def _path_fields(key: str, p: bytes | None) -> dict[str, Any]:
    """``{key: str}`` for JSON, plus ``{key}_b64`` with the raw bytes when they are not
    valid UTF-8 (the str then holds ``\\udcNN`` escapes, Python's surrogateescape)."""
    if p is None:
        return {key: None}
    out: dict[str, Any] = {key: os.fsdecode(p)}
    try:
        p.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(p).decode("ascii")
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _human_duration(sec: float) -> str:
    sec = max(0, int(sec))
    if sec < 3600:
        return f"{sec // 60}:{sec % 60:02d}"
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


def _human_age(sec: float) -> str:
    sec = max(0.0, sec)
    if sec < 60:
        return f"{sec:.0f}s"
    if sec < 3600:
        return f"{sec / 60:.0f}m"
    if sec < 86400:
        return f"{sec / 3600:.1f}h"
    return f"{sec / 86400:.1f}d"


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC).isoformat(timespec="milliseconds")


def _crc_hex(v: int | None) -> str | None:
    return None if v is None else f"{v & 0xFFFFFFFF:08x}"


def _emit_json(obj: Any) -> None:
    # ensure_ascii: a path with undecodable bytes becomes "\udcNN", never invalid output
    click.echo(json.dumps(obj, ensure_ascii=True, sort_keys=False))


def _table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[_safe(c) for c in r] for r in rows]  # a \\n in a name must not split a row
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


# -- journal access ------------------------------------------------------------------------


_WHERE = "pass --journal PATH or set $AXLPY_JOURNAL"
_SHARED_CLI = "--allow-shared-journal (or AXLPY_ALLOW_SHARED_JOURNAL=1)"


def _open_journal(*, create: bool) -> Journal:
    """The journal the command works on; every error says which file and how to choose
    another one (``--journal`` / ``$AXLPY_JOURNAL``)."""
    path = _journal_path()
    if os.path.isdir(path):
        raise UsageError(f"journal {_safe(path)} is a directory; --journal takes the journal "
                         f"file (e.g. {_safe(os.path.join(path, 'journal.db'))})")
    if not create and not os.path.exists(path):
        raise UsageError(f"no journal at {_safe(path)} (nothing was copied with it yet); "
                         f"{_WHERE}")
    s = _settings()
    try:
        return Journal(path, create=create, allow_shared=True if s.allow_shared else None)
    except SecurityError as exc:
        # The library's advice names the Python option; say the command line's words.
        msg = str(exc)
        cli_msg = msg.replace("Journal(..., allow_shared=True) (or "
                              "AXLPY_ALLOW_SHARED_JOURNAL=1)", _SHARED_CLI)
        if cli_msg == msg and "allow_shared" in msg:
            cli_msg = f"{msg}; on the command line: {_SHARED_CLI}"
        raise SecurityError(cli_msg) from exc
    except OSError as exc:
        raise CliError(f"cannot open the journal {_safe(path)}: {_os_error_line(exc)}; "
                       f"{_WHERE} to use another file") from exc


def _transfer(j: Journal, name: str,
              on_progress: Callable[[Progress], None] | None = None) -> Transfer:
    """The transfer ``name``; UsageError naming the journal's last transfers if none."""
    names = j.names()
    if name not in names:
        more = f"; transfers in it: {', '.join(names[-5:])}" if names else " (it is empty)"
        raise UsageError(f"no transfer named {name!r} in journal {j.path!r}{more}")
    return j.open(name, on_progress=on_progress)


def _owner_info(o: Owner | None) -> dict[str, Any] | None:
    if o is None:
        return None
    age = o.lease_age_s()
    return {"pid": o.pid, "host": o.host, "alive": o.alive(),
            "lease_age_s": None if age is None else round(age, 3),
            "lease_s": None if o.lease_ns is None else o.lease_ns / 1e9}


def _owner_text(info: dict[str, Any] | None) -> str:
    if info is None:
        return "-"
    alive = {True: "alive", False: "dead", None: "other host"}[info["alive"]]
    if info.get("lease_age_s") is not None and info["host"] != host_id():
        # from another node, the lease is what liveness rests on
        alive += f", lease renewed {info['lease_age_s']:.0f}s ago"
    return f"{info['pid']}@{info['host']} ({alive})"


def _next_steps(st: TransferStatus) -> list[str]:
    """What an operator should run next, for a transfer in this state."""
    n = st.name
    s = st.state
    if s is _T.COMPLETED:
        return [_cmd("verify", n), _cmd("free", n)]
    if s is _T.CANCELLED:
        return [_cmd("free", n)]
    if s is _T.CREATED:
        return [_cmd("free", n)]
    if st.live:
        return [_cmd("status --watch", n)]
    return [_cmd("resume", n), _cmd("cancel", n)]


def _transfer_info(st: TransferStatus) -> dict[str, Any]:
    now = time.time_ns()
    owner = _owner_info(st.owner_process)
    return {
        "name": st.name,
        "type": st.type,
        "state": st.state.value,
        "live": st.live,
        "files_done": st.files_done,
        "files_total": st.files_total,
        "bytes_done": st.bytes_done,
        "bytes_total": st.bytes_total,
        "created": _iso(st.created_ns),
        "updated": _iso(st.updated_ns),
        "age_seconds": round((now - st.created_ns) / 1e9, 3),
        "owner": owner,
        "move": st.move,
        "error": st.error,
        "next": _next_steps(st),
    }


def _file_info(r: FileStatus) -> dict[str, Any]:
    done = r.size if r.state in (_F.STAGED, _F.PUBLISHED) and r.kind == "file" else r.bytes_done
    return {
        "kind": r.kind,
        **_path_fields("src", os.fsencode(r.src)),
        **_path_fields("dst", os.fsencode(r.dst)),
        **_path_fields("tmp", None if r.tmp is None else os.fsencode(r.tmp)),
        "state": r.state.value,
        "size": r.size if r.kind != "dir" else 0,
        "bytes_done": done if r.kind == "file" else 0,
        "crc32c": _crc_hex(r.crc32c),
        "error": r.error,
    }


# -- progress ------------------------------------------------------------------------------


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


def _admission_text(counts: dict[str, int]) -> str:
    """``admitted 12, waited 3, ...``: admission counters in a fixed order."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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


# -- the command group ---------------------------------------------------------------------


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined, not sorted


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 88},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(package_name="axlpy", prog_name="axlpy")
@_common_options
def cli() -> None:
    """Crash-safe, resumable copies of checkpoint files, with a SQLite journal.

    A copy never leaves a half-written file under its final name. If it dies (Ctrl-C,
    kill -9, node crash), `axlpy ls` shows it, `axlpy resume NAME` finishes it and
    `axlpy cancel NAME` undoes it, from the journal alone.
    """


# -- cp ------------------------------------------------------------------------------------


def _plan_copy(srcs: list[bytes], dst: bytes) -> list[tuple[bytes, bytes]]:
    """``cp -r`` rules: into DST/basename(SRC) when DST is an existing directory, ends
    in '/', or there are several sources; otherwise SRC becomes DST."""
    into = len(srcs) > 1 or dst.endswith(b"/") or os.path.isdir(dst)
    if len(srcs) > 1 and os.path.exists(dst) and not os.path.isdir(dst):
        raise click.UsageError(f"target {_show(dst)!r} is not a directory (several "
                               "sources are copied into a directory)")
    if not into:
        return [(srcs[0], dst)]
    out = []
    for s in srcs:
        base = os.path.basename(os.path.normpath(os.path.abspath(s)))
        if not base:
            raise click.UsageError(f"cannot copy {_show(s)!r} into a directory: it has "
                                   "no name (name the destination instead)")
        out.append((s, os.path.join(dst, base)))
    return out


def _default_name() -> str:
    return f"cp-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


_PROGRESS_HELP = ("auto: a bar if stderr is a terminal, else a line every 10 s; "
                  "bar; lines; none.")


@cli.command(epilog=EXIT_CODES_HELP)
@click.option("--type", "ttype", type=click.Choice([t.value for t in TransferType]),
              default=TransferType.DEFAULT.value, show_default=True,
              help="How bytes move (see docs/backends.md).")
@click.option("--move", is_flag=True, help="Delete each source once every file is "
              "published (sources are deleted only after the whole copy is durable).")
@click.option("--metadata", is_flag=True, help="Copy mode, owner and mtime too.")
@click.option("--name", help="Transfer name (unique in the journal) [default: "
              "cp-<date>-<time>-<pid>, printed].")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]),
              default="auto", show_default=True, help=_PROGRESS_HELP)
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@_common_options
@_handle_errors
def cp(ttype: str, move: bool, metadata: bool, name: str | None, progress: str,
       paths: tuple[str, ...]) -> None:
    """Copy files and directory trees, like `cp -r`, crash-safely.

    One SRC and a DST that is not an existing directory: SRC is copied to DST. Otherwise
    each SRC is copied to DST/basename(SRC) (DST is created if needed).

    Each file is written to a hidden temp beside its destination, fsynced, checksummed
    (CRC32C) and only then renamed into place. Ctrl-C stops cleanly and prints the
    commands to resume or cancel (exit code 3).
    """
    if len(paths) < 2:
        raise click.UsageError("give at least one SRC and a DST")
    srcs = [os.fsencode(p) for p in paths[:-1]]
    dst = os.fsencode(paths[-1])
    plan = _plan_copy(srcs, dst)
    name = name or _default_name()
    reporter = _Reporter(name, progress)
    with _open_journal(create=True) as j:
        t = j.create(name, ttype, on_progress=reporter,
                     move=True if move else None, metadata=True if metadata else None)
        _say(f"axlpy: transfer {_safe(name)} ({t.type}) in journal {_safe(j.path)}",
             err=True)
        try:
            for s, d in plan:
                n = t.add(s, d)
                log.info("added %s -> %s (%d entries)", _show(s), _show(d), n)
        except BaseException:
            # Nothing was written yet: forget the transfer so it does not linger in `ls`.
            with contextlib.suppress(AxlError):
                t.free()
            raise
        _run_transfer(t, reporter, t.dispatch)


# -- ls ------------------------------------------------------------------------------------


@cli.command(name="ls", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def ls_cmd(as_json: bool) -> None:
    """List the transfers in the journal: name, type, state, files, bytes, age, owner."""
    path = _journal_path()
    infos: list[dict[str, Any]] = []
    if os.path.exists(path):
        with _open_journal(create=False) as j:
            infos = [_transfer_info(st) for st in j.transfers()]
    if as_json:
        _emit_json({"version": JSON_VERSION, "journal": path, "transfers": infos})
        return
    if not infos:
        _say(f"no transfers in {_safe(path)}")
        return
    rows = [[i["name"], i["type"], i["state"], f"{i['files_done']}/{i['files_total']}",
             f"{_human_bytes(i['bytes_done'])}/{_human_bytes(i['bytes_total'])}",
             _human_age(i["age_seconds"]), _owner_text(i["owner"])] for i in infos]
    _say(_table(rows, ["NAME", "TYPE", "STATE", "FILES", "BYTES", "AGE", "OWNER"]))


# -- status --------------------------------------------------------------------------------


def _status_doc(j: Journal, t: Transfer, states: set[str], limit: int | None,
                events: bool) -> dict[str, Any]:
    files = [r for r in t.files() if not states or r.state.value in states]
    shown = files if limit is None else files[:limit]
    st = t.status()
    info = _transfer_info(st)
    info["admission"] = t.admission_stats().as_dict()
    doc: dict[str, Any] = {
        "version": JSON_VERSION,
        "journal": j.path,
        "transfer": info,
        "files": [_file_info(r) for r in shown],
        "files_omitted": len(files) - len(shown),
        "stalled": _stall_doc(t, st),
    }
    if events:
        doc["events"] = [
            {"time": _iso(e["ts_ns"]), "event": e["event"], "from": e["from_state"],
             "to": e["to_state"], "file_id": e["file_id"], "detail": e["detail"],
             "pid": e["pid"]}
            for e in t.events()
        ]
    return doc


def _stall_doc(t: Transfer, st: TransferStatus) -> dict[str, Any] | None:
    """STALLED: the owner is alive and its latest stall event is ``stall``."""
    from ._stall import stall_from_events

    if st.state not in (_T.DISPATCHED, _T.RENAMED, _T.PAUSED) or not st.live:
        return None
    info = stall_from_events(t.events())
    if info is None:
        return None
    return {"op": info.op, "path": info.path, "thread": info.thread,
            "since": _iso(info.since_ns), "seconds": round(info.seconds, 3)}


def _print_status(doc: dict[str, Any]) -> None:
    i = doc["transfer"]
    pct = 100.0 * i["bytes_done"] / i["bytes_total"] if i["bytes_total"] else 100.0
    lines = [
        f"transfer  {_safe(i['name'])}",
        f"journal   {_safe(doc['journal'])}",
        f"type      {i['type']}" + ("  (move)" if i["move"] else ""),
        f"state     {i['state']}" + ("  (running)" if i["live"] else ""),
        f"owner     {_owner_text(i['owner'])}",
        f"progress  {i['files_done']}/{i['files_total']} files, "
        f"{_human_bytes(i['bytes_done'])}/{_human_bytes(i['bytes_total'])} ({pct:.0f}%)",
        f"created   {i['created']}  ({_human_age(i['age_seconds'])} ago)",
        f"updated   {i['updated']}",
    ]
    if i["error"]:
        lines.append(f"error     {_safe(i['error'])}")
    if any(i["admission"].values()):
        lines.append(f"admission {_admission_text(i['admission'])}")
    st = doc.get("stalled")
    if st:
        what = (f"{st['op']} of {_show(st['path'])} blocked" if st["op"] and st["path"]
                else "no blocked system call on its files found")
        lines.append(f"STALLED   no progress for {_human_duration(st['seconds'])} ({what}); "
                     "`cancel` abandons the stuck thread")
    for k, step in enumerate(i["next"]):
        lines.append(f"{'next' if k == 0 else '':<9} {step}")
    _say("\n".join(lines))
    if doc["files"]:
        rows = []
        for f in doc["files"]:
            size = "-" if f["kind"] == "dir" else _human_bytes(f["size"])
            done = ("-" if f["kind"] != "file" else
                    f"{100.0 * f['bytes_done'] / f['size']:.0f}%" if f["size"] else "100%")
            dst = _show(os.fsencode(f["dst"]))
            if f["error"]:
                dst += f"  ({_safe(f['error'])})"
            rows.append([f["state"], f["kind"], size, done, dst])
        _say()
        _say(_table(rows, ["STATE", "KIND", "SIZE", "DONE", "DESTINATION"]))
    if doc["files_omitted"]:
        _say(f"... {doc['files_omitted']} more (use --limit)")
    for e in doc.get("events", []):
        arrow = f" {e['from'] or ''}->{e['to']}" if e["to"] else ""
        detail = f" {_safe(e['detail'])}" if e["detail"] else ""
        _say(f"{e['time']}  pid {e['pid']}  {_safe(e['event'])}{arrow}{detail}")


def _watch(j: Journal, name: str, interval: float, as_json: bool) -> int:
    """Poll the journal (never writing it) until the transfer ends or its owner dies."""
    err = sys.stderr
    tty = _isatty(err) and not as_json
    last_bytes, last_t = -1, time.monotonic()
    rate = 0.0
    last_line = ""
    while True:
        info = _transfer_info(_transfer(j, name).status())
        now = time.monotonic()
        if last_bytes >= 0 and now > last_t:
            rate = max(0.0, (info["bytes_done"] - last_bytes) / (now - last_t))
        last_bytes, last_t = info["bytes_done"], now
        info["rate"] = round(rate, 1)
        ended = not info["live"]
        if as_json:
            _emit_json({"version": JSON_VERSION, "journal": j.path, "transfer": info})
        else:
            p = Progress(bytes_total=info["bytes_total"], bytes_done=info["bytes_done"],
                         files_total=info["files_total"], files_done=info["files_done"])
            left = max(0, p.bytes_total - p.bytes_done)
            eta = _human_duration(left / rate) if rate > 0 else "--:--"
            pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
            line = (f"{_safe(name)}: {info['state']} {pct:3.0f}% {_human_bytes(p.bytes_done)}/"
                    f"{_human_bytes(p.bytes_total)}  {p.files_done}/{p.files_total} files"
                    f"  {_human_bytes(rate)}/s  ETA {eta}")
            if tty:
                err.write(f"\r{line}\x1b[K")
                err.flush()
            elif line != last_line:
                _say(line)
            last_line = line
        if ended:
            break
        time.sleep(interval)
    if tty:
        err.write("\n")
    state = _T(info["state"])
    if state is _T.COMPLETED:
        return EXIT_OK
    if state in (_T.DISPATCHED, _T.RENAMED, _T.PAUSED):
        if not as_json:
            _say(f"{_safe(name)}: no process is running it any more; "
                       f"`{_cmd('resume', name)}` finishes it")
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in FileState]),
              help="Only files in this state (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Show at most this many files.")
@click.option("--events", is_flag=True, help="Also show the transfer's event log.")
@click.option("--watch", is_flag=True, help="Follow a transfer running in another "
              "process until it ends (polls the journal, never writes it); exit code: "
              "0 completed, 1 failed or cancelled, 3 its process died (resumable).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0,
              show_default=True, help="Seconds between polls with --watch.")
@_common_options
@_handle_errors
def status(name: str, as_json: bool, states: tuple[str, ...], limit: int | None,
           events: bool, watch: bool, interval: float) -> None:
    """Show one transfer: state, owner, progress, what to run next, and every file."""
    with _open_journal(create=False) as j:
        if watch:
            code = _watch(j, name, interval, as_json)
            if not as_json:
                _print_status(_status_doc(j, _transfer(j, name), set(states), limit,
                                          events))
            raise click.exceptions.Exit(code)
        doc = _status_doc(j, _transfer(j, name), set(states), limit, events)
    if as_json:
        _emit_json(doc)
    else:
        _print_status(doc)


# -- resume / cancel / free ----------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--force", is_flag=True, help="Take over a transfer whose owner runs on "
              "another host before its lease expires (only if you know that process is "
              "dead).")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]),
              default="auto", show_default=True, help=_PROGRESS_HELP)
@_common_options
@_handle_errors
def resume(name: str, force: bool, progress: str) -> None:
    """Finish an interrupted or failed transfer, from the journal alone.

    Takes ownership (refused while the owner is alive), verifies every staged and
    published file against its journaled size and CRC32C, keeps verified parts of temps,
    recopies what it cannot trust and completes. Ctrl-C stops cleanly (exit code 3).
    """
    with _open_journal(create=False) as j:
        st = _transfer(j, name).status()
        if st.state is _T.COMPLETED:
            _say(f"axlpy: {_safe(name)}: already COMPLETED; nothing to do", err=True)
            return
        if st.state is _T.CREATED:
            raise UsageError(f"transfer {name!r} was never dispatched: nothing was copied, "
                             f"so there is nothing to resume; `{_cmd('free', name)}` "
                             "forgets it, then copy again")
        published = sum(r.size for r in j.open(name).files([_F.PUBLISHED])
                        if r.kind == "file")
        reporter = _Reporter(name, progress, baseline=st.bytes_done, published=published)
        t = j.open(name, on_progress=reporter)
        _say(f"axlpy: resuming {_safe(name)} ({st.state.value})", err=True)
        _run_transfer(t, reporter, functools.partial(t.resume, force=force))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--force", is_flag=True, help="Take over a transfer whose owner runs on "
              "another host before its lease expires (only if you know that process is "
              "dead).")
@_common_options
@_handle_errors
def cancel(name: str, force: bool) -> None:
    """Undo a transfer: remove its temps, the files it published and the empty
    directories it created; keep sources.

    A published file is removed only if it is still byte-for-byte what this transfer
    wrote (CRC32C); prints what was removed and each file or directory kept, and why
    (the journal's events list every entry). Refused while another live process owns
    the transfer, and for a move that is already deleting its sources (resume it
    instead). Safe to repeat.
    """
    with _open_journal(create=False) as j:
        report = _transfer(j, name).cancel(force=force)
        lines = report.lines(limit=20)
        _say(f"cancelled {_safe(name)}: {_safe(lines[0])}; sources untouched. "
             f"`{_cmd('free', name)}` forgets it.")
        for line in lines[1:]:
            _say(f"  {_safe(line)}")


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@_common_options
@_handle_errors
def free(name: str) -> None:
    """Forget a COMPLETED, CANCELLED or never-dispatched transfer (journal rows only).

    Refused for a transfer that could still be resumed, so nothing resumable is lost.
    Files on disk are not touched.
    """
    with _open_journal(create=False) as j:
        _transfer(j, name).free()
        _say(f"freed {_safe(name)}")


# -- drain ---------------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("paths", nargs=-1, metavar="[JOURNAL|DIR]...")
@click.option("--parallel", "-P", type=click.IntRange(min=1), default=4, show_default=True,
              help="Transfers resumed at the same time.")
@click.option("--force", is_flag=True, help="Take over transfers whose owner runs on "
              "another host (only if you know those processes are dead).")
@click.option("--dry-run", is_flag=True, help="Only list what would be finished.")
@click.option("--progress", type=click.Choice(["lines", "none"]), default="lines",
              show_default=True, help="A line on stderr as each transfer starts and ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@_common_options
@_handle_errors
def drain(paths: tuple[str, ...], parallel: int, force: bool, dry_run: bool, progress: str,
          as_json: bool) -> None:
    """Finish every unfinished transfer after a job ended (SCR's post-stage).

    Looks in each JOURNAL file, and in every *.db file directly in each DIR (for example
    an axlpy.mpi journal directory); with no path, in the journal of --journal. Resumes
    every DISPATCHED, RENAMED, FAILED or PAUSED transfer, PARALLEL at a time, and reports
    each one. An axlpy.mpi checkpoint is finished across all its rank journals and its
    commit marker written (as `python -m axlpy.mpi finish`), only once every rank's
    files are published. Never-dispatched and cancelled transfers are listed as skipped.
    Exit code 1 if any transfer failed; running drain again continues where it stopped.
    """
    from ._drain import drain as run_drain, find_unfinished

    items = find_unfinished(list(paths) or [_journal_path()])
    todo = [i for i in items if i.result == "pending"]
    total = sum(i.bytes_total for i in todo)
    done_bytes = [0]
    finished = [0]
    say = progress != "none" and not dry_run

    def label(i: Any) -> str:
        return f"{i.journal}:{i.name}" if i.kind != "checkpoint" else \
            f"{i.journal} checkpoint {i.name} (ranks {len(i.ranks)})"

    def on_item(i: Any) -> None:
        finished[0] += 1
        if say:
            extra = f": {_one_line_text(i.detail)}" if i.detail else ""
            click.echo(f"axlpy drain: [{finished[0]}/{len(todo)}] {i.result} {label(i)} "
                       f"({_human_bytes(done_bytes[0])}/{_human_bytes(total)}){extra}",
                       err=True)

    def on_bytes(n: int) -> None:
        done_bytes[0] += n

    if say:
        click.echo(f"axlpy drain: {len(todo)} to finish ({_human_bytes(total)}), "
                   f"{parallel} at a time", err=True)
    if not dry_run:
        run_drain(items, parallel=parallel, force=force, on_item=on_item,
                  on_bytes=on_bytes)
    failed = [i for i in items if i.result == "failed"]
    if as_json:
        _emit_json({"version": JSON_VERSION, "dry_run": dry_run, "ok": not failed,
                    "items": [i.as_dict() for i in items]})
    else:
        rows = [[i.kind, i.journal, i.name or "-", i.state, i.result,
                 _one_line_text(i.detail or "")] for i in items]
        if rows:
            click.echo(_table(rows, ["KIND", "JOURNAL", "NAME", "WAS", "RESULT", "DETAIL"]))
        else:
            click.echo("nothing to drain: every transfer is finished")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _one_line_text(s: str) -> str:
    return " ".join(s.split())


# -- verify --------------------------------------------------------------------------------


def _mismatch_doc(m: Mismatch) -> dict[str, Any]:
    """A :class:`~axlpy.Mismatch` as the JSON ``verify`` prints."""
    out: dict[str, Any] = {"kind": m.kind, **_path_fields("path", m.path), "problem": m.problem}
    if m.problem in ("unreadable", "marker"):
        out["detail"] = m.detail
    elif m.problem == "link-target":
        if m.expected_target is not None:
            out.update(_path_fields("expected_target", m.expected_target))
        out.update(_path_fields("actual_target", m.actual_target))
    elif m.problem == "size":
        out.update(expected_size=m.expected_size, actual_size=m.actual_size)
    elif m.problem == "crc32c":
        out.update(expected_crc32c=_crc_hex(m.expected_crc32c),
                   actual_crc32c=_crc_hex(m.actual_crc32c))
    if m.rank is not None:
        out["rank"] = m.rank
    return out


def _verify_transfer(j: Journal, name: str) -> dict[str, Any]:
    t = _transfer(j, name)
    rep = t.verify()
    assert rep.state is not None
    return {
        "version": JSON_VERSION,
        "journal": j.path,
        "transfer": name,
        "state": rep.state.value,
        "complete": rep.complete,
        "checked": rep.checked,
        "not_published": rep.not_published,
        "mismatches": [_mismatch_doc(m) for m in rep.mismatches],
        "ok": rep.ok,
    }


def _verify_manifest(d: bytes) -> dict[str, Any]:
    """Check every entry of ``d``'s commit marker (size and CRC32C), like a transfer."""
    rep = verify_checkpoint(d)
    return {"version": JSON_VERSION, **_path_fields("dir", d), "name": rep.name,
            "committed": _iso(rep.committed_ns), "nranks": rep.nranks,
            "complete": rep.complete, "checked": rep.checked,
            "mismatches": [_mismatch_doc(m) for m in rep.mismatches], "ok": rep.ok}


def _mismatch_text(m: dict[str, Any]) -> str:
    path = _show(os.fsencode(m["path"]))
    p = m["problem"]
    if p == "size":
        return f"{path}: size {m['actual_size']}, expected {m['expected_size']}"
    if p == "crc32c":
        return (f"{path}: CRC32C {m['actual_crc32c']}, expected {m['expected_crc32c']} "
                "(content differs)")
    if p == "link-target":
        want = m.get("expected_target")
        return (f"{path}: symlink points to {_show(os.fsencode(m['actual_target']))}"
                + (f", expected {_show(os.fsencode(want))}" if want is not None else
                   ", not what was committed"))
    if p == "wrong-type":
        return f"{path}: is no longer a {m['kind']}"
    if p == "unreadable":
        return f"{path}: cannot be read ({_safe(str(m.get('detail')))})"
    if p == "marker":
        return _safe(f"{m.get('detail')}")
    return f"{path}: {p}"


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name", required=False)
@click.option("--manifest", "manifest_dir", metavar="DIR", default=None,
              help="Verify the checkpoint directory DIR against its MPI commit marker "
              "(_AXLPY_COMMIT.json) instead of a journal transfer.")
@click.option("--partial", is_flag=True, help="Succeed for a transfer that is not "
              "finished yet if every file published so far matches.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def verify(name: str | None, manifest_dir: str | None, partial: bool,
           as_json: bool) -> None:
    """Re-read published files and compare them with the journal's sizes and CRC32C.

    Reports every mismatch (missing, wrong size, wrong content, wrong type, symlink
    target). Exit code 0 only if the transfer is COMPLETED (or --partial) and every file
    matches; 1 otherwise. Reads files and journal only; changes nothing.
    """
    if (name is None) == (manifest_dir is None):
        raise click.UsageError("give a transfer NAME or --manifest DIR (not both)")
    if manifest_dir is not None:
        doc = _verify_manifest(os.fsencode(manifest_dir))
        what = _show(os.fsencode(manifest_dir))
    else:
        with _open_journal(create=False) as j:
            doc = _verify_transfer(j, name or "")
        if not doc["complete"] and not partial:
            doc["ok"] = False
        what = _safe(name or "")
    if as_json:
        _emit_json(doc)
    else:
        for m in doc["mismatches"]:
            _say(f"MISMATCH {_mismatch_text(m)}")
        note = ""
        if doc.get("not_published"):
            note = f"; {doc['not_published']} not published yet ({doc['state']})"
        verdict = ("OK" if doc["ok"] else "FAILED" if doc["mismatches"]
                   or doc.get("state") == _T.CANCELLED.value else "INCOMPLETE")
        _say(f"{verdict}: {what}: {doc['checked']} checked, "
                   f"{len(doc['mismatches'])} mismatches{note}")
        if "state" in doc and not doc["complete"] and not doc["mismatches"]:
            if doc["state"] == _T.CANCELLED.value:
                _say("the transfer was cancelled: there is nothing to verify")
            elif doc["state"] == _T.CREATED.value:
                _say("the transfer was never dispatched: nothing was copied "
                     f"(`{_cmd('free', doc['transfer'])}` forgets it)")
            elif not partial:
                _say(f"the transfer is {doc['state']}, not COMPLETED (resume it, or "
                           "pass --partial to check only what is published)")
    raise click.exceptions.Exit(EXIT_OK if doc["ok"] else EXIT_FAILURE)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--verify", "check_crc", is_flag=True, help="Same as --check crc.")
@click.option("--check", "check", type=click.Choice(["none", "marker", "crc"]),
              default=None, help="What a checkpoint must pass: an intact marker (none), "
              "also every listed file present with its size (marker, the default), also "
              "every file's CRC32C (crc, reads every byte). One that fails is skipped for "
              "the next older one.")
@click.option("--repair", is_flag=True, help="Point DIR/_AXLPY_LATEST.json at the "
              "checkpoint found (after a crash between a commit and its pointer update).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def latest(directory: str, check_crc: bool, check: str | None, repair: bool,
           as_json: bool) -> None:
    """Print the newest checkpoint under DIR that has a valid MPI commit marker.

    Looks at each subdirectory of DIR: only one whose marker (_AXLPY_COMMIT.json) is
    intact and passes --check counts, newest step first (ties: newest commit). Exit code
    1 if there is none. Reads only, unless --repair (which rewrites the pointer).
    """
    from . import _lifecycle

    if not os.path.isdir(directory):
        raise UsageError(f"{directory!r} is not a directory")
    verify = check or ("crc" if check_crc else "marker")
    found = _lifecycle.restore_point(directory, verify)
    repaired = False
    if repair and found is not None:
        _ptr, repaired = _lifecycle.update_pointer(directory, verify=verify)
    ptr_doc = _lifecycle.pointer_status(directory, found)
    path = os.fsencode(found.path) if found is not None else None
    if as_json:
        m = found.manifest if found is not None else None
        _emit_json({
            "version": JSON_VERSION, **_path_fields("dir", os.fsencode(directory)),
            **_path_fields("latest", path),
            "name": m.name if m else None,
            "step": found.step if found is not None else None,
            "committed": _iso(m.committed_ns) if m else None,
            "committed_ns": m.committed_ns if m else None,
            "nranks": m.nranks if m else None,
            "files": len(m.entries) if m else None,
            "bytes": m.total_bytes if m else None,
            "check": verify,
            "verified": found is not None and verify == "crc",
            "skipped": [{"path": p, "reason": r} for p, r in
                        (found.skipped if found is not None else ())],
            "pointer": dict(ptr_doc, repaired=repaired),
        })
    elif path is not None:
        _say(_show(path))
        if ptr_doc["state"] != "current" and not repaired:
            _say(f"axlpy: the latest pointer is {ptr_doc['state']}: "
                 f"{_safe(str(ptr_doc['detail']))} (axlpy latest --repair "
                 f"{_quote(directory)})", err=True)
    else:
        _say(f"axlpy: no valid checkpoint under {_show(directory)}", err=True)
    raise click.exceptions.Exit(EXIT_OK if found is not None else EXIT_FAILURE)


# -- prune ---------------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--keep-last", type=click.IntRange(min=1), required=True,
              help="Keep the newest N committed checkpoints (by step).")
@click.option("--keep-every", type=click.IntRange(min=1), default=None,
              help="Also keep every checkpoint whose step is a multiple of K.")
@click.option("--verify", type=click.Choice(["none", "marker", "crc"]), default="crc",
              show_default=True, help="The check the newest checkpoint kept for safety "
              "must pass (the newest one that passes it is never deleted).")
@click.option("--uncommitted", is_flag=True, help="Also delete directories without a "
              "valid commit marker that are older than --min-age and that no live "
              "transfer in the journals writes to.")
@click.option("--min-age", type=click.FloatRange(min=0), default=86400.0, show_default=True,
              help="Seconds since anything in an uncommitted directory was modified.")
@click.option("--journal-dir", "journals", multiple=True, metavar="PATH",
              help="A journal file, or a directory of *.db journals (rank journals), "
              "whose live transfers protect the checkpoints they write to (the --journal "
              "journal is always consulted if it exists). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def prune(directory: str, keep_last: int, keep_every: int | None, verify: str,
          uncommitted: bool, min_age: float, journals: tuple[str, ...], dry_run: bool,
          as_json: bool) -> None:
    """Delete old checkpoints under DIR, keeping the newest --keep-last.

    Never deleted: the newest checkpoint that passes --verify, the one the latest pointer
    names, any that a live transfer (not COMPLETED or CANCELLED) in the --journal or
    --journal-dir journals writes to, and any directory without a commit marker unless
    --uncommitted. Each victim is renamed to a hidden
    trash name (durably) before it is deleted; trash a crash left is finished first.
    Exit code 1 if a deletion failed.
    """
    from . import _lifecycle

    policy = _lifecycle.RetentionPolicy(keep_last, keep_every, verify, uncommitted, min_age)
    own = _journal_path()
    rep = _lifecycle.prune(directory, policy, dry_run=dry_run,
                           journals=[*journals, *([own] if os.path.exists(own) else [])])
    doc = rep.to_json()
    if as_json:
        _emit_json({"version": JSON_VERSION, **doc})
    else:
        for p, b in rep.trash:
            _say(f"{'TRASH' if dry_run else 'FINISHED'} {_show(p)} ({_human_bytes(b)}; "
                 "left by an interrupted prune)")
        for it in rep.items:
            step = "-" if it.step is None else str(it.step)
            _say(f"{it.action.upper():<7} {_show(it.name)}  step {step}  "
                 f"({_safe(it.reason)})")
        sm = doc["summary"]
        verb = "can be deleted" if dry_run else "deleted"
        n = sm["deletable"] if dry_run else sm["deleted"]
        _say(f"{len(rep.items)} checkpoints, {sm['kept']} kept, {n} {verb} "
             f"({_human_bytes(sm['bytes'])})"
             + ("; run without --dry-run to delete them" if dry_run and n else ""))
    raise click.exceptions.Exit(EXIT_FAILURE if doc["summary"]["errors"] else EXIT_OK)


# -- gc ------------------------------------------------------------------------------------


def _gc_reason(t: TempFile, min_age: float, journal: str) -> str:
    """Why gc keeps or removes ``t``, and what happened if it changed meanwhile."""
    age = _human_age(t.age)
    if t.cls == "live":
        why = f"transfer {t.transfer} is running in pid {t.owner}"
    elif t.cls == "open":
        why = "a process on this host has it open"
    elif t.cls == "recent" and not t.token:
        why = (f"commit marker temp modified {age} ago (< --min-age {min_age:g}s): a "
               "commit may be writing it")
    elif t.cls == "recent":
        why = (f"not in this journal and modified {age} ago (< --min-age {min_age:g}s): "
               "may belong to a running transfer of another journal")
    elif t.cls == "marker":
        why = f"temp of a commit marker whose commit never renamed it; modified {age} ago"
    elif t.cls == "unknown":
        why = f"not in journal {journal} (freed, or its journal is gone); modified {age} ago"
    elif t.cls == "finished":
        assert t.state is not None
        why = f"transfer {t.transfer} is {t.state.value}"
    else:
        assert t.state is not None
        assert t.transfer is not None
        why = (f"transfer {t.transfer} is {t.state.value} with no live owner: "
               f"`{_cmd('resume', t.transfer)}` uses it, `{_cmd('cancel', t.transfer)}` "
               "removes it")
    if t.changed is not None:
        why += f"; {t.changed} while gc ran, kept"
    if t.error is not None:
        why += f"; unlink failed: {t.error}"
    return why


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--delete", "do_delete", is_flag=True,
              help="Remove the listed temp files (default: only list them).")
@click.option("--include-resumable", is_flag=True, help="Also remove temps of transfers "
              "that are interrupted but resumable (a later resume recopies those bytes).")
@click.option("--min-age", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds since a temp unknown to this journal was modified before it "
              "may be removed (it may belong to a transfer of another journal).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def gc(directory: str, do_delete: bool, include_resumable: bool, min_age: float,
       as_json: bool) -> None:
    """Find temp files left under DIR by transfers that are no longer alive.

    Temps are found by name (.NAME.axlpy-TOKEN-ID-FILEID) and matched to transfers in the
    journal; a commit marker's temp (._AXLPY_COMMIT.json.axlpy-*, left by a commit killed
    before its rename) is removable once older than --min-age. Never removed: a temp of a
    transfer whose owner is alive (or on another host), a temp some process has open, a
    temp unknown to the journal and younger than --min-age, and (unless
    --include-resumable) a temp a resume would reuse. Also finishes prune's trash
    directories (.axlpy-trash.*: checkpoints an interrupted prune had already renamed
    away for deletion). Dry run unless --delete.
    """
    if not os.path.isdir(os.fsencode(directory)):
        raise UsageError(f"{directory!r} is not a directory")
    path = _journal_path()
    j = _open_journal(create=False) if os.path.exists(path) else None
    try:
        report = collect_temps(directory, j, delete=do_delete,
                               include_resumable=include_resumable, min_age=min_age)
    finally:
        if j is not None:
            j.close()
    entries = [{
        **_path_fields("path", t.path), "size": t.size, "modified": _iso(t.mtime_ns),
        "class": t.cls, "action": t.action, "reason": _gc_reason(t, min_age, path),
        "token": t.token, "transfer_id": t.transfer_id, "file_id": t.file_id,
        "transfer": t.transfer, "state": t.state.value if t.state else None,
    } for t in report.temps]
    trash = [{**_path_fields("path", os.fsencode(p)), "bytes": b,
              "action": "deleted" if do_delete else "delete"} for p, b in report.trash]
    removable = [e for e in entries if e["action"] in ("delete", "deleted")]
    summary = {"found": len(entries), "kept": sum(e["action"] == "keep" for e in entries),
               "deletable": sum(e["action"] == "delete" for e in entries),
               "deleted": sum(e["action"] == "deleted" for e in entries),
               "errors": sum(e["action"] == "error" for e in entries),
               "bytes": sum(e["size"] for e in removable)}
    if as_json:
        _emit_json({"version": JSON_VERSION, "journal": path, "dir": directory,
                    "dry_run": not do_delete, "temps": entries, "summary": summary,
                    "trash": trash})
    else:
        for t in trash:
            _say(f"{t['action'].upper():<7} trash     {_show(os.fsencode(t['path']))}  "
                 f"({_human_bytes(t['bytes'])}; left by an interrupted prune)")
        for e in entries:
            _say(f"{e['action'].upper():<7} {e['class']:<9} "
                       f"{_show(os.fsencode(e['path']))}  ({_human_bytes(e['size'])}; "
                       f"{_safe(e['reason'])})")
        if do_delete:
            _say(f"{len(entries)} temp files found, {summary['deleted']} deleted "
                       f"({_human_bytes(summary['bytes'])}), {summary['kept']} kept")
        else:
            _say(f"{len(entries)} temp files found, {summary['deletable']} can be "
                       f"deleted ({_human_bytes(summary['bytes'])}), {summary['kept']} kept"
                       + ("; run with --delete to remove them" if summary["deletable"]
                          else ""))
    if summary["errors"]:
        raise click.exceptions.Exit(EXIT_FAILURE)


# -- entry point ---------------------------------------------------------------------------


#: the arguments of this process's command, for advice that says "run it again"
_ARGV: list[str] = []


def main(argv: list[str] | None = None) -> None:
    """The ``axlpy`` console script (and ``python -m axlpy``)."""
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    cli.main(args=argv, prog_name="axlpy")


if __name__ == "__main__":  # pragma: no cover
    main()

