"""Write-behind and source read-ahead hints for large files (issue 14.2).

While a large file is copied, :class:`~axlpy.engines._stager.FileStager` asks the kernel
to start writing the temp's dirty pages every :data:`WriteBehind.step` bytes
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that by the time the file's fsync runs
most of its pages are already on their way to the device and several files' writeback
overlaps the copying of the next ones. The source may in addition be read with
``POSIX_FADV_SEQUENTIAL`` (larger read-ahead) and its pages dropped once checksummed
(``POSIX_FADV_DONTNEED``), and the temp's pages dropped one step after their writeback
was started (``POSIX_FADV_DONTNEED`` drops only clean pages, so pages still being
written stay), and all of them once the temp is fsynced (``FileStager.seal``). Which
of these pay was measured (docs/benchmarks.md, "Write-behind"); the defaults are what
helped there.

Some facts this relies on:

- ``SYNC_FILE_RANGE_WRITE`` alone starts writeback of the range's dirty pages and
  returns; it never waits and, unlike the ``WAIT_*`` flags, never checks or consumes the
  file's writeback error (errseq), so a write error is still reported by the final
  fsync. It makes nothing durable (no metadata, no device cache flush): durability stays
  the fsync's, and the journal never vouches for bytes because of a hint.
- So a failing hint is ignored (the fsync that follows is the authority), and where the
  call does not exist (not Linux, no ``sync_file_range`` in libc) it is skipped.
- ``posix_fadvise`` is advice: it changes what stays in the page cache, never what a
  read returns.

Settings (read once per process, documented in docs/engines.md):
``AXLPY_WRITE_BEHIND`` = bytes between two write-behind calls (suffix K/M/G allowed;
``0`` turns it off); ``AXLPY_FADVISE`` = comma-separated ``source-sequential``,
``source-dontneed``, ``temp-dontneed``, or ``none``. Nothing here touches disk beyond these hints.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["WriteBehind", "behind", "drop_pages", "settings", "start_writeback"]

#: SYNC_FILE_RANGE_WRITE from <fcntl.h>
_SFR_WRITE = 2
#: bytes between two write-behind calls unless AXLPY_WRITE_BEHIND says otherwise
DEFAULT_STEP = 8 << 20
#: source hints unless AXLPY_SOURCE_FADVISE says otherwise
DEFAULT_FADVISE: frozenset[str] = frozenset({"source-dontneed", "temp-dontneed"})
_FADVISE_NAMES = frozenset({"source-sequential", "source-dontneed", "temp-dontneed"})


@dataclass(frozen=True)
class WriteBehind:
    """What to do for a large file: ``step`` bytes between write-behind calls (0: none);
    ``sequential``/``dontneed``: the source hints; ``drop_temp``: drop the temp's pages
    written back (one step behind the write-behind, so only with ``step``)."""

    step: int = DEFAULT_STEP
    sequential: bool = "source-sequential" in DEFAULT_FADVISE
    dontneed: bool = "source-dontneed" in DEFAULT_FADVISE
    drop_temp: bool = "temp-dontneed" in DEFAULT_FADVISE

    def large(self, size: int) -> bool:
        """Is a file of ``size`` bytes worth the hints (at least two steps)?"""
        return size >= 2 * (self.step or DEFAULT_STEP)


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    num = text[:-1] if mult != 1 else text
    value = int(num) * mult
    if value < 0:
        raise ValueError(text)
    return value


@cache
def settings() -> WriteBehind:
    """The process's settings, from the environment (bad values raise ValueError naming
    the variable)."""
    step = DEFAULT_STEP
    raw = os.environ.get("AXLPY_WRITE_BEHIND")
    if raw:
        try:
            step = _parse_size(raw)
        except ValueError:
            raise ValueError(f"AXLPY_WRITE_BEHIND={raw!r}: expected a byte count such as "
                             "8M, or 0 to turn write-behind off") from None
    hints = set(DEFAULT_FADVISE)
    raw = os.environ.get("AXLPY_FADVISE")
    if raw is not None:
        hints = {h.strip().lower() for h in raw.split(",") if h.strip()} - {"none"}
        if not hints <= _FADVISE_NAMES:
            raise ValueError(f"AXLPY_FADVISE={raw!r}: expected a comma-separated list of "
                             f"{', '.join(sorted(_FADVISE_NAMES))}, or none")
    return WriteBehind(step, "source-sequential" in hints, "source-dontneed" in hints,
                       "temp-dontneed" in hints)


@cache
def _sync_file_range() -> Any:
    """libc's sync_file_range, or None where there is none."""
    try:
        # the process's own symbols, libc's among them (ctypes.util.find_library would
        # import subprocess and run ldconfig in a child process)
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writeback of ``fd``'s dirty pages in ``[offset, offset + nbytes)`` and return
    without waiting (the GIL is released meanwhile). Errors are ignored: the file's fsync
    reports them."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, nbytes, _SFR_WRITE)


def drop_pages(fd: int, offset: int, nbytes: int) -> None:
    """Tell the kernel ``fd``'s ``[offset, offset + nbytes)`` will not be read again: its
    clean pages are dropped (dirty ones, and pages being written, stay)."""
    try:
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def behind(fd: int, start: int, end: int, drop_from: int | None) -> None:
    """One write-behind step: start writeback of ``fd``'s ``[start, end)``, then (with
    ``drop_from``) drop the pages of the previous step, ``[drop_from, start)``, whose
    writeback was started one step earlier (mostly clean by now)."""
    start_writeback(fd, start, end - start)
    if drop_from is not None:
        drop_pages(fd, drop_from, start - drop_from)
