"""Engines: who drives the IO queues, on which threads. Chosen by transfer type.

============  =====================================  ==============================
type          engine                                 IO queue when none is named
============  =====================================  ==============================
``sync``      :class:`SyncEngine` (caller's thread)  ``posix``
``pthread``   :class:`PthreadEngine` (workers)       ``posix``
``uring``     :class:`UringEngine` (one thread)      ``uring``
``default``   chosen by :func:`get_engine` from the  ``default`` (io_uring with POSIX
              transfer's size (docs/engines.md)      fallback), else ``posix``
============  =====================================  ==============================
"""

from __future__ import annotations

from collections.abc import Iterable

from .._errors import UsageError
from ._base import Engine, StageContext, StageResult, StageTask

__all__ = [
    "ENGINE_TYPES",
    "Engine",
    "StageContext",
    "StageResult",
    "StageTask",
    "check_type",
    "get_engine",
    "is_background",
    "stage_chunk_size",
]

#: every transfer type name that has an engine
ENGINE_TYPES = ("default", "sync", "pthread", "uring")

#: DEFAULT stages inline (the SYNC engine's code on the transfer's background thread: no
#: worker threads, no ring, no io_uring probe) when the transfer is at most this many
#: files of at most INLINE_MAX_BYTES in all ... (docs/engines.md: chosen by measurement,
#: not by preference; several small files on a disk gain from overlapping their fsyncs)
INLINE_MAX_FILES = 1
INLINE_MAX_BYTES = 8 << 20
#: ... or when every destination root is on a filesystem with no device behind it
#: (tmpfs, ramfs), where fsync is free and threads only add per-file overhead
INLINE_ON_MEMORY_FS = True

#: the smallest IO buffer an engine is given (one page)
MIN_CHUNK = 4096


def check_type(type_name: str) -> None:
    """Raise :class:`~axlpy.UsageError` unless ``type_name`` has an engine (no probing)."""
    if type_name not in ENGINE_TYPES:
        raise UsageError(f"transfer type {type_name!r} has no engine in this axlpy")


def is_background(type_name: str) -> bool:
    """Does ``dispatch()`` of this type return at once (every type but ``"sync"``)?"""
    check_type(type_name)
    return type_name != "sync"


def get_engine(type_name: str, *, files: int | None = None, nbytes: int | None = None,
               roots: Iterable[str | bytes] = ()) -> Engine:
    """The engine for a transfer type name (see :class:`axlpy.TransferType`).

    ``"default"`` is chosen here and nowhere else, by measurement (docs/engines.md), from
    what the transfer holds (``files`` regular files, ``nbytes`` bytes, destination
    ``roots``): a transfer of at most :data:`INLINE_MAX_FILES` file of at most
    :data:`INLINE_MAX_BYTES`, or one whose destinations are all on tmpfs/ramfs, is staged
    inline — the SYNC engine's code on the transfer's
    background thread, with no worker threads, no ring and no io_uring probe; anything
    else gets the threaded engine (PTHREAD), measured fastest on this disk for small and
    large files alike. Without ``files``/``nbytes`` (nothing known yet) it is PTHREAD.
    Every DEFAULT engine runs in the background (``dispatch()`` returns at once).
    ``"uring"`` asks for io_uring itself: a transfer fails at dispatch with
    :class:`~axlpy.BackendUnavailableError` where it cannot run.
    """
    check_type(type_name)
    if type_name == "sync":
        from .sync import SyncEngine

        return SyncEngine()
    if type_name == "uring":
        from .uring import UringEngine

        return UringEngine("uring")
    if type_name == "default" and files is not None and nbytes is not None:
        from ._fs import all_memory_backed

        if (files <= INLINE_MAX_FILES and nbytes <= INLINE_MAX_BYTES) or (
                INLINE_ON_MEMORY_FS and all_memory_backed(roots)):
            from .sync import BackgroundSyncEngine

            return BackgroundSyncEngine()
    from .threaded import PthreadEngine

    return PthreadEngine()


def stage_chunk_size(chunk_size: int, tasks: Iterable[StageTask] | int) -> int:
    """The IO buffer size for staging ``tasks`` (or files of at most ``tasks`` bytes): the
    configured ``chunk_size``, halved while the biggest file (what is left of it) still
    fits in one buffer, not below :data:`MIN_CHUNK` — so a 3-byte copy allocates pages,
    not the configured megabytes — with one byte of room past the biggest file (see
    ``FileStager.copy_small``). Halving keeps it a divisor of ``chunk_size`` (and so of
    ``extent_size``)."""
    # One byte of room past the biggest file, so that it is below one chunk and staged
    # in one step (FileStager.copy_small).
    if isinstance(tasks, int):
        need = tasks + 1
    else:
        need = max((t.row.size - t.resume_from for t in tasks), default=0) + 1
    size = chunk_size
    while size % 2 == 0 and size // 2 >= max(need, MIN_CHUNK):
        size //= 2
    return size
