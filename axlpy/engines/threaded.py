"""PTHREAD (AXL_XFER_PTHREAD): worker threads in the background, several files in flight,
each file's chunks pipelined.

Each worker copies one file at a time with two chunk buffers, allocated once when the
worker starts and reused for every chunk of every file it copies (the host reclaims freed
memory, so re-allocating per chunk would cost page faults on every chunk). While the
worker's writer thread writes chunk ``k`` from one buffer, the worker checksums it and
reads chunk ``k + 1`` into the other: source reads, CRC32C and destination writes overlap,
and all three release the GIL (``os.preadv``/``os.pwritev``, io_uring waits in
``poll(2)``, ``crc32c`` on large buffers).

Each thread has its own IO queue (``StageContext.open_queue()``): :func:`queue_io` waits
for its own request, so one request at a time per queue. Every read and write runs under
the transfer's retry policy (``StageContext.retry``); each attempt is "this chunk at this
offset", so a retry is idempotent.

On disk if this raises, is cancelled or the process dies: as for every engine (see
``_base``), temps hold a prefix of their data; extents journaled so far were fdatasynced
first. Closing the generator (the driver does, on error or cancel) stops every worker
within about one chunk, joins every thread and closes every fd and queue it opened.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue as _queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .._errors import TransferCancelledError
from ..io import IOQueue
from ._base import Engine, StageContext, StageResult, StageTask, nfiles_of
from ._stager import FileStager, name_file

__all__ = ["PthreadEngine", "default_workers"]

#: most worker threads a transfer starts (each also has a writer thread)
MAX_WORKERS = 16
#: how often a waiting generator looks at the cancel flag, seconds
_POLL = 0.05
#: most staged results waiting for the consumer (each holds its file's row): two of the
#: driver's publish groups, so the workers stage the next group while it publishes one
#: (its syncfs, renames, directory fsyncs and commits) instead of waiting for it
_MAX_UNTAKEN = 512


def default_workers(nfiles: int, requested: int = 0, max_open_files: int | None = None) -> int:
    """Workers for ``nfiles`` files: ``requested`` if > 0, else min(files, cores x 2, 16);
    never more than there are files or than ``max_open_files`` (each worker has one file
    open, the transfer's fd budget), never fewer than one."""
    cap = nfiles if max_open_files is None else min(nfiles, max_open_files)
    if requested > 0:
        return max(1, min(requested, cap))
    return max(1, min(cap, (os.cpu_count() or 1) * 2, MAX_WORKERS))


class _Stop(Exception):
    """A worker was told to stop (cancel, or another worker failed)."""


class _Writer:
    """A helper thread that runs one write at a time for its worker."""

    def __init__(self, name: str) -> None:
        self._jobs: _queue.SimpleQueue[Callable[[], int] | None] = _queue.SimpleQueue()
        self._results: _queue.SimpleQueue[tuple[bool, Any]] = _queue.SimpleQueue()
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._results.put((True, job()))
            except BaseException as exc:
                self._results.put((False, exc))

    def start(self, job: Callable[[], int]) -> None:
        assert not self._busy, "one write at a time"
        self._busy = True
        self._jobs.put(job)

    def join(self) -> int:
        """Wait for the running write; return its result or raise its error."""
        if not self._busy:
            return 0
        ok, value = self._results.get()
        self._busy = False
        if not ok:
            raise value
        return int(value)

    def drain(self) -> None:
        """Wait for a running write, dropping its result (we are already failing)."""
        if self._busy:
            self._results.get()
            self._busy = False

    def close(self) -> None:
        self.drain()
        self._jobs.put(None)
        self._thread.join()


def copy_file_pipelined(st: FileStager, rq: IOQueue, wq: IOQueue,
                        bufs: tuple[bytearray, bytearray], writer: _Writer,
                        should_stop: Callable[[], bool]) -> StageResult:
    """Copy one opened file into its temp, reading and checksumming chunk k+1 while chunk
    k is written; return its result once the stager made the temp durable.

    Each full extent is committed (fdatasync, then journal) as soon as it is written.
    Raises :class:`_Stop` between chunks when ``should_stop()``.
    """
    size = st.size
    chunk = len(bufs[0])

    def read(buf: bytearray, off: int) -> memoryview:
        mv = memoryview(buf)[:st.read_len(off, chunk)]
        st.read(rq, mv, off)
        return mv

    cur = 0
    offset = st.task.resume_from  # next byte to write (all before it is written)
    data = read(bufs[cur], offset) if offset < size else None
    try:
        while data is not None:
            if should_stop():
                raise _Stop
            writer.start(functools.partial(st.write, wq, data, offset))
            # While the write runs: checksum what it writes, read the next chunk.
            st.chunk(offset, data)
            n = data.nbytes
            nxt = None
            if offset + n < size and not should_stop():
                nxt = read(bufs[1 - cur], offset + n)
            writer.join()
            for ext in st.written(offset, n):
                st.commit(ext)
            offset += n
            cur = 1 - cur
            data = nxt
            if data is None and offset < size:
                raise _Stop  # told to stop before the next read
    finally:
        writer.drain()
    return st.finish()


_DONE = object()


class PthreadEngine(Engine):
    """Worker threads copy files in the background; ``dispatch()`` returns at once.

    Workers: ``StageContext.workers`` (the ``workers`` option) if > 0, else
    min(files, cores x 2, 16). Each worker has a writer thread, two chunk buffers and two
    IO queues (one per thread), all released when it exits.
    """

    name = "pthread"
    background = True

    def stage(self, tasks: Iterable[StageTask], ctx: StageContext
              ) -> Generator[StageResult, None, None]:
        todo = iter(tasks)  # taken one at a time, in order, under the lock
        first = next(todo, None)
        if first is None:
            return
        nworkers = default_workers(nfiles_of(tasks, ctx), ctx.workers, ctx.max_open_files)
        todo = itertools.chain((first,), todo)
        lock = threading.Lock()
        stop = threading.Event()
        results: _queue.SimpleQueue[object] = _queue.SimpleQueue()

        def should_stop() -> bool:
            return stop.is_set() or ctx.cancel.is_set()

        # Results not yet taken by the consumer are bounded: a worker takes a task only
        # when fewer than _MAX_UNTAKEN results wait, so a slow consumer (the driver
        # publishing a group) does not make the rows in memory grow (issue 14.4). The
        # bound is a queue of _MAX_UNTAKEN tokens: a worker takes one per task, the
        # consumer gives it back per result taken (a C-level queue: a Python semaphore's
        # Condition cost more per small file than its copy's own Python).
        tokens: _queue.SimpleQueue[None] = _queue.SimpleQueue()
        for _ in range(_MAX_UNTAKEN):
            tokens.put(None)

        def next_task() -> StageTask | None:
            while True:
                try:
                    tokens.get(timeout=_POLL)
                    break
                except _queue.Empty:
                    if should_stop():
                        return None
            with lock:
                task = None if should_stop() else next(todo, None)
            if task is None:
                tokens.put(None)
            return task

        def work(i: int) -> None:
            queues: list[IOQueue] = []
            writer: _Writer | None = None
            try:
                queues.append(ctx.open_queue())
                queues.append(ctx.open_queue())
                writer = _Writer(f"axlpy-pthread-w{i}")
                bufs = (bytearray(ctx.chunk_size), bytearray(ctx.chunk_size))
                while (task := next_task()) is not None:
                    st = FileStager(task, ctx)
                    try:
                        if st.fits(len(bufs[0])):
                            # Below one chunk: read, checksum and write on this thread,
                            # no hand-off to the writer (docs/engines.md).
                            res = st.copy_small(queues[0], bufs[0])
                        else:
                            res = copy_file_pipelined(st.open(), queues[0], queues[1],
                                                      bufs, writer, should_stop)
                    except _Stop:
                        return
                    except BaseException as exc:
                        stop.set()
                        results.put(name_file(exc, task))
                        return
                    finally:
                        st.close()
                    results.put(res)
            except BaseException as exc:  # opening a queue or starting a thread failed
                stop.set()
                results.put(exc)
            finally:
                if writer is not None:
                    writer.close()
                for q in queues:
                    q.close()
                results.put(_DONE)

        threads = [threading.Thread(target=work, args=(i,), name=f"axlpy-pthread-{i}",
                                    daemon=True) for i in range(nworkers)]
        started: list[threading.Thread] = []
        try:
            for t in threads:
                t.start()
                started.append(t)
            # Each worker puts its results, then _DONE when the tasks ran out (or it
            # stopped): all results are in once every worker is done.
            live = len(started)
            while live:
                if ctx.cancel.is_set():
                    raise TransferCancelledError("transfer cancelled while copying")
                try:
                    item = results.get(timeout=_POLL)
                except _queue.Empty:
                    continue
                if item is _DONE:
                    live -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, StageResult)
                tokens.put(None)
                yield item
            if ctx.cancel.is_set():
                raise TransferCancelledError("transfer cancelled while copying")
        finally:
            stop.set()
            for t in started:
                t.join()
