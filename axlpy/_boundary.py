"""The one boundary where errors from below (sqlite3, the OS) become axlpy errors.

Every public method and property of :class:`~axlpy.Journal` and :class:`~axlpy.Transfer`
runs inside :func:`public_api`'s wrapper, so no ``sqlite3.*`` error and no bare
``OSError`` (``PermissionError``, ``IsADirectoryError``, ...) reaches a caller of the
public API or the CLI: :func:`map_error` turns each into an :class:`~axlpy.AxlError`
subclass that names the journal (and the transfer), and keeps the original as
``__cause__``. A background failure that the driver wrapped in a ``TransferError`` is
mapped by its cause, so a full or busy journal says so wherever it was hit.

Nothing here writes; :func:`mount_point` and the free-space check only stat.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import (
    AxlError,
    BadSourceError,
    JournalBusyError,
    JournalError,
    JournalFullError,
    TransferError,
)

__all__ = ["ErrorContext", "map_error", "mount_point", "public_api"]

C = TypeVar("C", bound=type)

#: what counts as a full filesystem when SQLite reports only an I/O error (it does so
#: when the ``-shm`` or ``-wal`` file cannot grow): less than this many bytes free
_NEARLY_FULL = 1 << 20


@dataclass
class ErrorContext:
    """Who was doing what when an error crossed the boundary."""

    journal: str
    busy_timeout: float | None = None
    transfer: str | None = None
    #: re-read from the journal when needed: is the transfer dispatched (resumable)?
    resumable: Callable[[], bool] | None = None
    op: str = ""


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (its nearest existing parent)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    try:
        dev = os.stat(p).st_dev
        while p != os.path.dirname(p):
            up = os.path.dirname(p)
            if os.stat(up).st_dev != dev:
                break
            p = up
    except OSError:
        pass
    return p


def _nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or "/")
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < _NEARLY_FULL


def _full(cause: BaseException, ctx: ErrorContext) -> JournalFullError:
    mount = mount_point(ctx.journal)
    resumable = False
    if ctx.resumable is not None:
        try:
            resumable = ctx.resumable()
        except Exception:  # the journal is unreadable too: do not claim it is resumable
            resumable = False
    return JournalFullError(
        f"journal {ctx.journal!r}: no space left on {mount} ({_text(cause)}); nothing was "
        "half-written", mount=mount, transfer=ctx.transfer, resumable=resumable,
    )


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _map_sqlite(exc: sqlite3.Error, ctx: ErrorContext) -> AxlError:
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = _text(exc)
    path = ctx.journal
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in text:
        t = "" if ctx.busy_timeout is None else f" ({ctx.busy_timeout:g} s)"
        return JournalBusyError(
            f"journal {path!r} is busy: other users kept it locked for longer than the busy "
            f"timeout{t}; nothing was changed. Retry, or raise the timeout with "
            "$AXLPY_JOURNAL_BUSY_TIMEOUT (seconds)"
        )
    if code == sqlite3.SQLITE_FULL or (
            code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and _nearly_full(path)):
        return _full(exc, ctx)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return JournalError(
            f"journal {path!r} is not a usable axlpy journal ({text}); it was left "
            "untouched — restore it or point --journal elsewhere"
        )
    return JournalError(f"journal {path!r} cannot be used: {text}")


def _map_os(exc: OSError, ctx: ErrorContext) -> AxlError:
    where = exc.filename
    shown = os.fsdecode(where) if isinstance(where, (bytes, str)) else None
    what = f"{exc.strerror or _text(exc)}" + (f": {shown!r}" if shown else "")
    jdir = os.path.dirname(os.path.abspath(ctx.journal))
    on_journal = shown is None or os.path.abspath(shown).startswith(jdir) or (
        os.path.abspath(shown) == os.path.abspath(ctx.journal))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and on_journal:
        return _full(exc, ctx)
    if ctx.transfer is None:
        return JournalError(f"cannot use journal {ctx.journal!r}: {what}")
    if ctx.op == "add":
        return BadSourceError(f"cannot add to transfer {ctx.transfer!r}: {what}")
    return TransferError(f"transfer {ctx.transfer!r}: {what}", transfer=ctx.transfer,
                         path=shown)


def map_error(exc: BaseException, ctx: ErrorContext) -> BaseException:
    """The axlpy error for ``exc`` (``exc`` itself if it needs no mapping)."""
    if isinstance(exc, TransferError) and isinstance(exc.__cause__, sqlite3.Error):
        # A background failure wrapped by the driver: a full or busy journal is that.
        inner = _map_sqlite(exc.__cause__, ctx)
        return inner if isinstance(inner, (JournalBusyError, JournalFullError)) else exc
    if isinstance(exc, AxlError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return _map_sqlite(exc, ctx)
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return exc  # wait(timeout=...) ran out: an answer, not an error from below
    if isinstance(exc, OSError):
        return _map_os(exc, ctx)
    return exc


def _wrap(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return f(self, *args, **kwargs)
        except (AxlError, sqlite3.Error, OSError) as exc:
            mapped = map_error(exc, self._error_context(f.__name__))
            if mapped is exc:
                raise
            cause = exc.__cause__ if isinstance(exc, TransferError) else exc
            raise mapped from cause

    return wrapper


def public_api(cls: C) -> C:
    """Class decorator: run every public method and property of ``cls`` (and
    ``__init__``) behind :func:`map_error`. ``cls`` provides
    ``_error_context(op) -> ErrorContext``."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(attr, property) and attr.fget is not None:
            setattr(cls, name, property(_wrap(attr.fget), attr.fset, attr.fdel, attr.__doc__))
        elif inspect.isfunction(attr):
            setattr(cls, name, _wrap(attr))
    return cls
