"""The engine seam: who moves the bytes of staged files, and on which threads.

An engine gets a list of :class:`StageTask` (one per regular file to copy into its temp
name) and yields a :class:`StageResult` for each file as it becomes durable in its temp
(written, checksummed, fsynced). It never touches the journal's transfer state, never
renames and never publishes: the transfer's driver does that, in one place, for every
engine. So a new engine plugs in without touching the journal or the publish protocol.

On disk if an engine raises or the process dies: temp files (private, recognisably named,
recorded in the journal at dispatch) hold some prefix of their data; nothing is under a
final name. Resume verifies or removes them; cancel removes them.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Sequence, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import ClassVar

from .._journal import FileRow
from .._staging import DirCache, current_umask
from ..io import IOQueue

__all__ = ["Engine", "StageContext", "StageResult", "StageTask", "nfiles_of"]


@dataclass(slots=True)
class StageTask:
    """Copy ``row.src`` into temp ``tmp`` in the destination directory of ``row``.

    The directory's fd comes from ``dirs`` (shared by the transfer, bounded by its fd
    budget) and is valid only inside ``with task.dir() as dir_fd:``: engines hold it just
    while they create or open the temp, so a transfer over many directories keeps only a
    few directory fds open.
    ``resume_from`` bytes of an existing temp were verified against journaled extents and
    are kept (``resume_crc`` is their CRC32C, ``next_extent`` the next extent index);
    0 means start a fresh temp.
    """

    row: FileRow
    dirs: DirCache
    tmp: bytes
    resume_from: int = 0
    resume_crc: int = 0
    next_extent: int = 0

    def dir(self) -> AbstractContextManager[int]:
        """The destination directory's fd, kept open for the ``with`` block."""
        return self.dirs.pinned(self.row.root, os.path.dirname(self.row.rel))


@dataclass(slots=True)
class StageResult:
    task: StageTask
    crc32c: int
    size: int
    #: bytes actually copied in this run (less than size after a verified mid-file resume)
    copied: int
    #: the engine fsynced the temp itself although the batch's ``syncfs`` would have
    #: covered it (a large file: ``FileStager.seal``), so the batch need not cover it
    synced: bool = False


@dataclass
class StageContext:
    """What every engine needs from the transfer, and nothing of its journal state."""

    chunk_size: int
    extent_size: int
    copy_metadata: bool
    open_queue: Callable[[], IOQueue]
    #: journal verified extents ``(file_id, idx, length, crc32c, bytes_done)`` durably
    commit_extents: Callable[[Sequence[tuple[int, int, int, int, int]]], None]
    #: called with a byte count as data is written (thread-safe)
    on_bytes: Callable[[int], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    #: the process umask when the transfer (re)started: final modes are ``mode & ~umask``
    umask: int = field(default_factory=current_umask)
    workers: int = 1
    #: most files an engine may have open at once (2 fds each; see ``axlpy._fdbudget``)
    max_open_files: int = 64
    #: batched durability: the driver's ``syncfs`` per batch makes each temp durable, so
    #: the stager seals a temp without fsyncing it, a large one excepted
    #: (``StageResult.synced``; ``docs/design.md``)
    defer_fsync: bool = False
    #: how many tasks ``stage`` is given, when they come as an iterator (for sizing the
    #: engine only: an engine stops when the iterator ends, not after this many)
    files_hint: int | None = None
    #: how to call one operation under the retry policy: ``retry(fn, what)``
    retry: Callable[[Callable[[], int], str], int] = field(
        default=lambda fn, what: fn()
    )


class Engine(ABC):
    """Base of every engine."""

    #: the transfer type name this engine serves ("sync", "pthread", "uring")
    name: ClassVar[str] = ""
    #: does the transfer run on a background thread (dispatch returns at once)?
    background: ClassVar[bool] = False
    #: the IO queue opened when the transfer names none ("default": fastest with fallback)
    queue_name: str = "posix"

    @abstractmethod
    def stage(
        self, tasks: Iterable[StageTask], ctx: StageContext
    ) -> Generator[StageResult, None, None]:
        """Stage every task; yield each result once its temp is durable.

        ``tasks`` may be an iterator (the driver reads them from the journal a batch at a
        time): an engine takes the next task only when it can start it, so it holds the
        tasks in flight, not all of them (issue 14.4). The iterator may raise (a journal
        row refused); that error ends ``stage`` like a failed file.

        Stops early (raising :class:`~axlpy.TransferCancelledError`) when ``ctx.cancel``
        is set, within about one chunk. Closing the iterator stops all work and releases
        every thread, fd and buffer it holds.
        """
        raise NotImplementedError  # pragma: no cover


def nfiles_of(tasks: Iterable[StageTask], ctx: StageContext) -> int:
    """How many tasks there are, for sizing an engine: ``len(tasks)`` of a list, else
    ``ctx.files_hint`` (1 if unknown)."""
    if isinstance(tasks, Sized):
        return len(tasks)
    return ctx.files_hint if ctx.files_hint is not None else 1
