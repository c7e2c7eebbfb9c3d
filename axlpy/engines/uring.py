"""URING: one background thread drives a deep queue, many chunks in flight across files.

The transfer's background thread (see ``Transfer._start``) runs :meth:`UringEngine.stage`
itself: it keeps up to ``slots`` reads and writes in flight on one IO queue, spread over
as many files as it takes to fill them (one big file gets every slot; small files get one
each), and reacts to completions in whatever order the kernel posts them.

Some facts this engine relies on:

- Completions arrive out of order. The whole-file CRC32C and the per-extent CRCs must be
  computed in file order, so a read that finishes early waits (in its slot) until every
  earlier chunk of its file has been checksummed; the write of a chunk is submitted right
  after its checksum, so an extent's CRC is known by the time its last write completes.
- The kernel reads into and writes from our buffers until each completion is posted, even
  after an error elsewhere. So on any exit (error, cancel, generator closed) the queue is
  closed first — ``UringIOQueue.close()`` waits for every request the kernel holds — and
  only then are fds closed and the slab dropped.
- Buffers: one slab of ``slots x op_size`` bytes, allocated once per ``stage()``, sliced
  into fixed slots that are reused for every chunk of every file.
- Every read and write that fails is redone under the transfer's retry policy
  (``StageContext.retry``) synchronously on a second queue of the same kind: the redo is
  "this chunk at this offset", idempotent; the main queue's other requests keep running
  in the kernel meanwhile. While the policy pauses for an operator (intervention mode)
  this thread waits, and so does the whole transfer.
- fdatasync/fsync block for as long as the device takes to write the file's dirty pages
  (milliseconds per small file, a good part of a second per 64 MiB extent), and the IO
  queue has no fsync operation. So they run on a few sync threads (``SYNC_THREADS``), each
  file always on the same one, in order: an extent's fdatasync then its journal commit,
  and, once every byte is written, the source check, metadata, fsync and the file's fd
  closes. This thread keeps the queue full meanwhile. They are never retried: after a
  failed fsync the kernel may have dropped the dirty pages, so a retry that succeeds
  would lie.

On disk if this raises, is cancelled or the process dies: as for every engine (see
``_base``): temps hold a prefix of their data; extents journaled were fdatasynced first.
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import queue as _queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from .._errors import IOBackendError, SourceChangedError, TransferCancelledError
from .._retry import Disposition, disposition
from ..io import Completion, IOOp, IOQueue, IORequest, SubmitError
from ._base import Engine, StageContext, StageResult, StageTask
from ._stager import FileStager, name_file, queue_io

__all__ = ["UringEngine", "op_size_for"]


#: bytes of chunk buffers in flight at once (slots x op size)
INFLIGHT_BYTES = 64 << 20
#: slots one file may hold while other files wait to be opened. Measured on 1 x 2 GiB
#: (docs/engines.md, "URING on large files"): 64 x 1 MiB requests in flight on one file
#: cost 4x the kernel CPU of a few 8 MiB ones for the same bytes (5.3 s against 1.3 s)
#: and ran 3x slower; and io_uring writes to one file one at a time, so several files
#: in flight write in parallel.
PER_FILE_SLOTS = 2
#: files open at once at most (also bounded by the transfer's fd budget)
MAX_OPEN_FILES = 64
#: how long one wait for completions may block before the cancel flag is looked at
_POLL = 0.1
#: while sync threads hold work, wait for IO completions in slices this short
_SLICE = 0.002
#: threads that run fdatasync/fsync (each file on one of them, in order)
SYNC_THREADS = 4


def op_size_for(chunk_size: int) -> int:
    """The read/write size: one chunk per request (never split: many small requests in
    flight on one file cost more kernel CPU than they gain, see :data:`INFLIGHT_BYTES`).
    Ops never cross an extent boundary, extents being multiples of chunks."""
    return chunk_size


@dataclass(eq=False)
class _File:
    """One file in flight: its stager, and what this engine schedules for it."""

    st: FileStager
    read_off: int  # next offset to read
    in_flight: int = 0
    #: reads finished out of order: offset -> (slot, length)
    ready: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: the sync thread that runs this file's fdatasyncs and fsync
    syncer: int = 0

    @property
    def task(self) -> StageTask:
        return self.st.task

    @property
    def size(self) -> int:
        return self.st.size

    def close(self) -> None:
        self.st.close()


@dataclass(frozen=True, eq=False)
class _Tag:
    file: _File
    slot: int
    want: int


def _hint(job: Callable[[], None]) -> None:
    """Run a page-cache call queued by :meth:`_Syncers.hint`: advice, so an OSError is
    ignored (any other error still ends the run, through the results)."""
    try:
        job()
    except OSError:
        pass


class _Syncers:
    """A few threads running blocking fdatasync/fsync jobs; each file on one, in order."""

    def __init__(self, n: int) -> None:
        self.jobs: list[_queue.SimpleQueue[tuple[_File, Callable[[], object]] | None]] = [
            _queue.SimpleQueue() for _ in range(n)]
        self.results: _queue.SimpleQueue[tuple[_File, object, BaseException | None]] = (
            _queue.SimpleQueue())
        self.pending = 0
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        for i in range(n):
            t = threading.Thread(target=self._loop, args=(self.jobs[i],),
                                 name=f"axlpy-uring-sync{i}", daemon=True)
            t.start()
            self.threads.append(t)
        self.next = 0

    def _loop(self, jobs: _queue.SimpleQueue[tuple[_File, Callable[[], object]] | None]
              ) -> None:
        while (item := jobs.get()) is not None:
            f, job = item
            quiet = job.func is _hint if isinstance(job, functools.partial) else False
            if self.stop.is_set():
                if not quiet:
                    self.results.put((f, None, TransferCancelledError("stopped")))
                continue
            try:
                value = job()
            except BaseException as exc:
                self.results.put((f, None, exc))
                continue
            if not quiet:
                self.results.put((f, value, None))

    def assign(self) -> int:
        self.next = (self.next + 1) % len(self.jobs)
        return self.next

    def put(self, f: _File, job: Callable[[], object]) -> None:
        self.pending += 1
        self.jobs[f.syncer].put((f, job))

    def hint(self, f: _File, job: Callable[[], None]) -> None:
        """Queue a page-cache call (write-behind, dropping pages) after the file's jobs
        so far: nothing comes back (those calls ignore their errors; the fsync is the
        authority), so the ring thread does not wake up for it."""
        self.jobs[f.syncer].put((f, functools.partial(_hint, job)))

    def get(self, timeout: float) -> tuple[_File, object, BaseException | None] | None:
        try:
            item = self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
        except _queue.Empty:
            return None
        self.pending -= 1
        return item

    def close(self) -> None:
        """Skip queued jobs, let running ones end, join every thread."""
        self.stop.set()
        for jobs in self.jobs:
            jobs.put(None)
        for t in self.threads:
            t.join()


class UringEngine(Engine):
    """One thread, one deep queue: the fast engine for large checkpoints.

    ``queue_name`` is the IO queue opened when the transfer names none: ``"uring"`` for
    the URING type, ``"default"`` (io_uring with POSIX fallback) for DEFAULT.
    """

    name = "uring"
    background = True

    def __init__(self, queue_name: str = "uring") -> None:
        self.queue_name = queue_name

    def stage(self, tasks: Iterable[StageTask], ctx: StageContext
              ) -> Generator[StageResult, None, None]:
        it = iter(tasks)
        first = next(it, None)
        if first is None:
            return
        run = _Run(first, it, ctx)
        out: _queue.SimpleQueue[object] = _queue.SimpleQueue()
        ring = threading.Thread(target=run.drive, args=(out,), name="axlpy-uring",
                                daemon=True)
        try:
            # The ring runs on a thread of its own: while the driver publishes a group on
            # this thread (syncfs, renames, journal commits), reads and writes go on.
            ring.start()
            while (item := _take(out, ctx)) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, StageResult)
                run.untaken.release()
                yield item
                if ctx.cancel.is_set():
                    raise TransferCancelledError("transfer cancelled while copying")
        finally:
            run.stop.set()
            if ring.ident is not None:
                ring.join()
            run.close()


_DONE = object()


def _take(out: _queue.SimpleQueue[object], ctx: StageContext) -> object:
    """The ring thread's next result, error or ``_DONE``; raises on a cancel."""
    while True:
        try:
            return out.get(timeout=_POLL)
        except _queue.Empty:
            if ctx.cancel.is_set():
                raise TransferCancelledError("transfer cancelled while copying") from None


class _Run:
    """The state of one ``stage()`` call: built on the caller's thread, driven by the
    ring thread (:meth:`drive`), closed on the caller's thread after that returned."""

    def __init__(self, first: StageTask, tasks: Iterator[StageTask],
                 ctx: StageContext) -> None:
        self.ctx = ctx
        #: the tasks not opened yet: taken one at a time as files are opened, so only
        #: the files in flight are held (the driver reads them from the journal lazily)
        self.tasks: Iterator[StageTask] | None = tasks
        self.next_task: StageTask | None = first
        self.active: list[_File] = []
        self.done: list[StageResult] = []
        self.retry_q: IOQueue | None = None
        self.q = ctx.open_queue()
        self.op = op_size_for(ctx.chunk_size)
        # Up to twice the queue's depth in buffers: while the kernel holds ``depth``
        # requests, the next ones are prepared and wait in the queue's admission control
        # (which splits the batch and backs off by reaping) instead of in this loop.
        self.nslots = max(2, min(2 * self.q.depth, INFLIGHT_BYTES // self.op))
        self.slab = bytearray(self.nslots * self.op)
        mv = memoryview(self.slab)
        self.slots = [mv[i * self.op:(i + 1) * self.op] for i in range(self.nslots)]
        self.free = list(range(self.nslots))
        self.in_flight = 0
        self.syncers = _Syncers(SYNC_THREADS)
        #: files open at once (2 fds each: the transfer's fd budget caps it). Not tied to
        #: the slots: a file whose bytes are all written holds none while its sync
        #: thread finishes it, and the next files must not wait for that.
        self.max_files = max(1, min(MAX_OPEN_FILES, ctx.max_open_files))
        #: files opened whose result the driver has not taken yet (at most
        #: MAX_OPEN_FILES): rows in memory stay bounded while it publishes a group
        self.untaken = threading.BoundedSemaphore(MAX_OPEN_FILES)
        #: set when ``stage()`` ends (its generator closed, an error, a cancel)
        self.stop = threading.Event()

    # -- main loop (on the ring thread) --------------------------------------------------

    def drive(self, out: _queue.SimpleQueue[object]) -> None:
        """The ring thread: put each result, or the error that ended the run, then
        ``_DONE``. Stops (TransferCancelledError) once :attr:`stop` or the cancel flag is
        set; :meth:`close` runs after it returned."""
        try:
            for res in self.loop():
                out.put(res)
        except BaseException as exc:
            out.put(exc)
        finally:
            out.put(_DONE)

    def loop(self) -> Iterator[StageResult]:
        ctx, stop = self.ctx, self.stop
        while self.more() or self.active or self.done:
            if ctx.cancel.is_set() or stop.is_set():
                raise TransferCancelledError("transfer cancelled while copying")
            self.fill()
            while self.done:
                yield self.done.pop(0)
            if self.syncers.pending:
                self.sync_results(0 if self.in_flight else _POLL)
            if not self.in_flight:
                # Nothing to wait for but the driver taking results (too many untaken)?
                if (not self.active and not self.syncers.pending and self.more()
                        and self.untaken.acquire(timeout=_POLL)):
                    self.untaken.release()
                continue
            for c in self.q.reap(1, _SLICE if self.syncers.pending else _POLL):
                # after a cancel, completions only give their slots back (no new writes)
                self.complete(c)

    def sync_results(self, timeout: float) -> None:
        """Collect what the sync threads finished: results to yield, or their error."""
        item = self.syncers.get(timeout)
        while item is not None:
            f, value, exc = item
            if exc is not None:
                raise name_file(exc, f.task)
            if isinstance(value, StageResult):
                self.active.remove(f)
                self.done.append(value)
            item = self.syncers.get(0)

    def fill(self) -> None:
        """Give every free slot a read, opening more files as needed; then submit."""
        prepared = 0
        holes: dict[_File, None] = {}
        while self.free:
            f = next((f for f in self.active
                      if f.read_off < f.size and f.in_flight + len(f.ready) < PER_FILE_SLOTS),
                     None)
            if f is None:
                if (len(self.active) < self.max_files and self.more()
                        and self.untaken.acquire(blocking=False)):
                    self.open_next()
                    continue
                # No other file to start: the files in flight may take more slots.
                f = next((f for f in self.active if f.read_off < f.size), None)
                if f is None:
                    break
            slot = self.free.pop()
            # A read never crosses an extent boundary: extent CRCs stay op-aligned.
            want = f.st.read_len(f.read_off, self.op)
            if f.st.is_hole(f.read_off):
                # Not read: the stager fills the slot with the hole's zeros.
                f.st.read(self.q, self.slots[slot][:want], f.read_off)
                f.ready[f.read_off] = (slot, want)
                f.read_off += want
                holes[f] = None
                continue
            self.q.prep_read(f.st.src_fd, self.slots[slot][:want], f.read_off,
                             _Tag(f, slot, want))
            f.read_off += want
            f.in_flight += 1
            self.in_flight += 1
            prepared += 1
        if prepared:
            self.submit()
        for f in holes:
            self.checksum_and_write(f)

    def submit(self) -> None:
        """Submit what is prepared; requests the mechanism dropped are failed requests,
        redone under the retry policy like any other."""
        try:
            self.q.submit()
        except SubmitError as exc:
            for req in exc.dropped:
                self.complete(Completion(req, -(exc.errno or _errno.EIO)))

    def more(self) -> bool:
        """Is there a task not opened yet? (Reads the next one from the iterator.)"""
        if self.next_task is None and self.tasks is not None:
            self.next_task = next(self.tasks, None)
            if self.next_task is None:
                self.tasks = None
        return self.next_task is not None

    def open_next(self) -> None:
        task = self.next_task
        assert task is not None
        self.next_task = None
        try:
            st = FileStager(task, self.ctx).open()
        except BaseException as exc:
            raise name_file(exc, task)  # noqa: B904 (keeps its own __cause__)
        f = _File(st, task.resume_from)
        f.syncer = self.syncers.assign()
        # Write-behind (sync_file_range, dropping the temp's written-back pages) can
        # block for milliseconds when the device queue is full: on the file's sync
        # thread, in order with its extent commits, never on this one.
        st.run_behind = functools.partial(self.syncers.hint, f)
        self.active.append(f)
        if f.read_off >= f.size:
            self.finish(f)

    # -- completions --------------------------------------------------------------------

    def complete(self, c: Completion) -> None:
        tag = c.request.tag
        assert isinstance(tag, _Tag)
        f = tag.file
        self.in_flight -= 1
        f.in_flight -= 1
        try:
            res = c.result if c.ok else self.redo(c, f)
            if c.request.op is IOOp.READ:
                if res < tag.want:
                    raise SourceChangedError(
                        f"source {f.st.src!r} shrank while being copied", path=f.st.src)
                f.ready[c.request.offset] = (tag.slot, res)
                self.checksum_and_write(f)
            else:
                self.written(f, tag.slot, c.request.offset, res)
        except BaseException as exc:
            raise name_file(exc, f.task)  # noqa: B904 (keeps its own __cause__)

    def redo(self, c: Completion, f: _File) -> int:
        """Redo a failed read or write under the retry policy (first attempt: the failure
        already seen), synchronously on a queue of our own."""
        req: IORequest = c.request
        write = req.op is IOOp.WRITE
        path = f.st.dst if write else f.st.src
        err = c.errno or _errno.EIO
        what = f"{req.op.value} {path!r} @{req.offset}+{req.length}"
        # The failure seen counts as the first attempt, except one an operator fixes
        # (ENOSPC): several requests may have failed with it before the operator freed
        # space and said continue; each such stale failure is redone for real at once,
        # instead of pausing the transfer again for a problem already fixed.
        seen = [disposition(OSError(err, "")) is Disposition.OPERATOR]

        def attempt() -> int:
            if not seen[0]:
                seen[0] = True
                raise IOBackendError(f"{req.op.value} of {path!r} failed: "
                                     f"{os.strerror(err)}", errno=err, path=path
                                     ) from OSError(err, os.strerror(err), path)
            if self.retry_q is None:
                self.retry_q = self.ctx.open_queue()
            return queue_io(self.retry_q, write, req.fd, req.buf, req.offset, req.op.value,
                            path)

        return self.ctx.retry(attempt, what)

    def checksum_and_write(self, f: _File) -> None:
        """Checksum, in file order, every read that is ready; submit each one's write.

        Writes go to the queue in batches of at most its depth, and none is prepared once
        the cancel flag is set: after a cancel (or Ctrl-C) only the batch already handed
        to the queue is written (docs/engines.md, "How far URING writes after a cancel")."""
        depth = self.q.depth
        cancel = self.ctx.cancel
        prepared = 0
        while (off := f.st.crc_off) in f.ready:
            if cancel.is_set():
                break  # the loop raises TransferCancelledError; reads stay unwritten
            slot, n = f.ready.pop(off)
            mv = self.slots[slot][:n]
            f.st.chunk(off, mv)
            if f.st.is_hole(off):
                self.written(f, slot, off, n)  # not written: the temp keeps the hole
                continue
            self.q.prep_write(f.st.tmp_fd, mv, off, _Tag(f, slot, n))
            f.in_flight += 1
            self.in_flight += 1
            prepared += 1
            if prepared == depth:
                self.submit()
                prepared = 0
        if prepared:
            self.submit()

    def written(self, f: _File, slot: int, offset: int, n: int) -> None:
        self.free.append(slot)
        # Commit, in order, each full extent whose bytes are all written: on the file's
        # sync thread (fdatasync, then the journal).
        for ext in f.st.written(offset, n):
            self.syncers.put(f, functools.partial(f.st.commit, ext))
        if f.st.all_written and f.in_flight == 0:
            self.finish(f)

    def finish(self, f: _File) -> None:
        """Every byte is written: the stager checks the source, fsyncs and closes the file
        on its sync thread (after its extent jobs); the result comes back through
        :meth:`sync_results`."""
        self.syncers.put(f, f.st.finish)

    # -- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the kernel to let go of every buffer, then release everything."""
        try:
            self.q.close()
        finally:
            self.syncers.close()  # before the fds its jobs use are closed
            if self.retry_q is not None:
                self.retry_q.close()
            for f in self.active:
                f.close()
            self.active.clear()
            self.slots.clear()
