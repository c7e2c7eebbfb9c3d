"""The ``axlpy`` click group: shared options, exit codes, error handling, journal
access and the entry point. Every command module registers on :data:`cli`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from .._config import default_journal_path
from .._errors import (
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
from .._state import FileState, TransferState
from ._render import _UNSAFE, _escape_char, _safe, _safe_lines, _say, _show

if TYPE_CHECKING:
    from .._driver import Progress
    from .._transfer import Journal, Transfer

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
    from .._transfer import Journal  # imported by the commands that open a journal only

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


#: the order ``axlpy --help`` lists the commands in (the command modules register them)
COMMAND_ORDER = ("cp", "ls", "status", "resume", "cancel", "free", "drain", "verify",
                 "latest", "prune", "gc", "mpi")

#: the module (in this package) that registers each command on :data:`cli`: a command
#: line imports only its command's module (start-up time), ``axlpy --help`` all of them
COMMAND_MODULES = {
    "cp": "transfers", "resume": "transfers", "cancel": "transfers", "free": "transfers",
    "ls": "status", "status": "status", "drain": "drain", "verify": "verify",
    "latest": "checkpoints", "prune": "checkpoints", "gc": "gc", "mpi": "mpi",
}


def load_commands() -> None:
    """Import every command module (each registers its commands on :data:`cli`)."""
    for module in dict.fromkeys(COMMAND_MODULES.values()):
        importlib.import_module(f"{__package__}.{module}")


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # in COMMAND_ORDER, then any other in the order it was registered; not sorted
        if self is cli:
            load_commands()
        known = [c for c in COMMAND_ORDER if c in self.commands]
        return known + [c for c in self.commands if c not in COMMAND_ORDER]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name) if self is cli else None
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__package__}.{module}")
        return super().get_command(ctx, cmd_name)


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


#: the arguments of this process's command, for advice that says "run it again"
_ARGV: list[str] = []


def main(argv: list[str] | None = None) -> None:
    """The ``axlpy`` console script (and ``python -m axlpy``)."""
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    cli.main(args=argv, prog_name="axlpy")
