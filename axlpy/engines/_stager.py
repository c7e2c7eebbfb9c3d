"""Stage one file: source -> private temp beside the destination, checksummed and fsynced.

Every engine stages every file through one :class:`FileStager`; an engine only decides
which thread calls it and when (SYNC: the caller's thread, one chunk at a time; PTHREAD:
a worker with its writer thread, chunk ``k + 1`` read while chunk ``k`` is written;
URING: one thread with many chunks in flight, fsyncs on sync threads). The stager owns
everything that makes a temp trustworthy, so it is written and proven once:

1. :meth:`~FileStager.open`: the source is opened without following a final symlink or
   blocking on a FIFO and checked against what dispatch recorded; the temp is created
   (O_EXCL, 0600; crash point ``stage.after_create_temp``) or, on a resume, reopened and
   cut back to its verified prefix;
2. :meth:`~FileStager.read_len`: how much to read at an offset — a read never crosses an
   extent boundary, so extent CRCs stay chunk-aligned;
3. :meth:`~FileStager.read` / :meth:`~FileStager.write`: one read or write through an IO
   queue under the transfer's retry policy (a short read means the source shrank);
4. :meth:`~FileStager.chunk`: CRC32C of the whole file and of the current extent, in
   file order (chunks may be *written* in any order, never *checksummed* out of order);
5. :meth:`~FileStager.written`: a chunk's bytes are in the temp (crash point
   ``stage.after_write``, progress); for a large file, every few MiB, writeback of the
   temp's new pages is started (``_writeback``: never waited for, durability stays the
   fsync's); returns the extents now fully written, in order;
6. :meth:`~FileStager.commit`: an extent's bytes are fdatasynced, then its CRC journaled
   (the journal never vouches for bytes that are not durable). Never retried: after a
   failed fsync the kernel may have dropped the dirty pages, so a retry would lie;
7. :meth:`~FileStager.finish`: the source is re-checked (not grown, truncated or
   rewritten), the final mode (and with metadata copy owner, xattrs and mtime) applied, the temp
   fsynced (planted bugs ``rename_before_fsync``/``fsync_noop`` skip it; crash point
   ``stage.after_fsync``), and both fds closed. The result is the file's CRC32C. On the
   batched path (``StageContext.defer_fsync``, local filesystems) the temp is closed
   without an fsync: the driver's one ``syncfs`` per batch covers it before anything
   is journaled or renamed (``docs/design.md``, "Batched durability") — except a large
   file (at least two write-behind steps), fsynced all the same, then its pages dropped; its
   result says so (``StageResult.synced``) and the batch leaves it out.

A file below one chunk (:meth:`~FileStager.fits`) is staged in one step instead,
:meth:`~FileStager.copy_small`, on the calling thread: open the source, read it whole
with one read of ``size`` bytes (none for an empty file), fstat it once — still the
regular file recorded at dispatch, of the recorded size (so it did not grow: no probe
read past the end), not rewritten while read (ctime) — and only then create the temp,
write it, set its mode, fsync it and close both fds: 9 system calls per file (8 for
an empty one), and no hand-off between threads (docs/engines.md, "Small files").

Sparse sources: :meth:`~FileStager.open` maps the source's data regions with
``SEEK_DATA``/``SEEK_HOLE``; :meth:`~FileStager.read_len` never crosses a data/hole
boundary, and a chunk in a hole is neither read (:meth:`~FileStager.read` fills zeros)
nor written (:meth:`~FileStager.write` skips it), so the temp keeps the hole while the
CRC32C covers the logical bytes; :meth:`~FileStager.finish` extends the temp to its size
with ``ftruncate``. :meth:`~FileStager.copy_small` reads a sparse small file whole but
writes only its data regions, then calls ``ftruncate``. Engines need only
:meth:`~FileStager.is_hole` when they bypass ``read``/``write`` (URING submits its own
reads and writes).

On disk if a step raises or the process dies: the temp holds a prefix of the data
(extents journaled so far were fdatasynced before being journaled); nothing is under the
final name; the source is never written. :meth:`~FileStager.close` releases the fds.
"""

from __future__ import annotations

import bisect
import errno as _errno
import functools
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from .._admission import AdmittedIOQueue
from .._checksum import crc32c
from .._crashpoints import crash_point
from .._errors import (
    AxlError,
    BadSourceError,
    IOBackendError,
    SourceChangedError,
    TransferError,
)
from .._identity import check_unchanged
from .._metadata import apply_file
from .._planted import planted
from .._staging import create_temp, fsync_fd
from ..io import IOQueue, PosixIOQueue
from . import _writeback
from ._base import StageContext, StageResult, StageTask

__all__ = ["Extent", "FileStager", "name_file", "open_source", "queue_io"]

_SRC_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class Extent(NamedTuple):
    """A fully written extent, ready to be made durable and journaled."""

    idx: int
    length: int
    crc32c: int
    end: int  # bytes of the file done once it is committed


def open_source(task: StageTask, check: bool = True) -> int:
    """Open the source read-only without following a final symlink or blocking on a FIFO,
    and (``check``) check it is still the regular file recorded at dispatch
    (:meth:`FileStager.copy_small` checks after its one read instead)."""
    row = task.row
    try:
        fd = os.open(row.src, _SRC_FLAGS)
    except FileNotFoundError as exc:
        name = os.fsdecode(row.src)
        raise SourceChangedError(f"source {name!r} vanished after dispatch",
                                 path=name, changed=("inode",)) from exc
    except OSError as exc:
        if exc.errno == _errno.ELOOP:
            name = os.fsdecode(row.src)
            raise SourceChangedError(f"source {name!r} became a symlink after dispatch",
                                     path=name, changed=("inode",)) from exc
        raise
    if not check:
        return fd
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadSourceError(f"source {os.fsdecode(row.src)!r} is no longer a regular "
                                 "file")
        check_unchanged(row, st, "since dispatch", "not copied")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain_posix(queue: IOQueue) -> bool:
    """Is ``queue`` the transfer's own admitted POSIX queue, idle? Then one request
    through it is exactly one ``preadv``/``pwritev`` loop on this thread (its admission
    is its own, one slot per request), so :func:`queue_io` makes the call itself."""
    if (type(queue) is not AdmittedIOQueue or queue._closed or queue._pending
            or queue._records or queue._early):  # closed, or requests in flight
        return False
    inner = queue.queue
    return type(inner) is PosixIOQueue and not inner._reopen_direct and not inner._closed


def queue_io(queue: IOQueue, write: bool, fd: int, buf: memoryview, offset: int,
             what: str, path: str) -> int:
    """One read or write through ``queue``, waited for; raises IOBackendError on -errno.

    On the transfer's own POSIX queue the call is made here, with the queue's effect
    (the same system calls, a short write continued, a read stopping at end of file,
    the admission counted) but not its per-request bookkeeping: a small file's two
    requests cost about as much Python as its system calls (docs/engines.md)."""
    if _plain_posix(queue):
        want = buf.nbytes
        done = 0
        try:
            if write:
                while done < want:
                    n = os.pwritev(fd, [buf[done:] if done else buf], offset + done)
                    if n == 0:  # pragma: no cover - pwrite never returns 0 for len > 0
                        raise OSError(_errno.EIO, "pwrite wrote nothing")
                    done += n
            else:
                while done < want:
                    n = os.preadv(fd, [buf[done:] if done else buf], offset + done)
                    if n == 0:
                        break  # end of file
                    done += n
        except OSError as exc:
            err = exc.errno or _errno.EIO
            raise IOBackendError(
                f"{what} of {path!r} failed: {os.strerror(err)}", errno=err, path=path
            ) from OSError(err, os.strerror(err), path)
        assert isinstance(queue, AdmittedIOQueue)
        queue.stats.admit()
        return done
    if write:
        queue.prep_write(fd, buf, offset)
    else:
        queue.prep_read(fd, buf, offset)
    queue.submit()
    got: list[int] = []
    while not got:
        for c in queue.reap(1):
            got.append(c.result)
    res = got[0]
    if res < 0:
        err = -res
        raise IOBackendError(
            f"{what} of {path!r} failed: {os.strerror(err)}", errno=err, path=path
        ) from OSError(err, os.strerror(err), path)
    return res


def name_file(exc: BaseException, task: StageTask) -> BaseException:
    """Make sure an error raised while staging ``task`` names its file.

    A TransferError without a path gets one; an error outside axlpy's tree (an OSError
    from open, say) is wrapped in a TransferError naming the file, the original chained
    as ``__cause__``. Other axlpy errors (SecurityError, ...) are returned unchanged.
    """
    dst = os.fsdecode(task.row.dst)
    if isinstance(exc, TransferError):
        if exc.path is None:
            exc.path = dst
        return exc
    if isinstance(exc, AxlError) or not isinstance(exc, Exception):
        return exc
    err = TransferError(f"copying {os.fsdecode(task.row.src)!r} to {dst!r} failed: "
                        f"{type(exc).__name__}: {exc}", path=dst)
    err.__cause__ = exc
    return err


class FileStager:
    """Stages one file into its temp (see the module docstring for the steps).

    Not thread-safe by itself: an engine calls :meth:`chunk` in file order from one
    thread at a time, and :meth:`written`/:meth:`commit`/:meth:`finish` from one thread
    at a time (they may be a different thread from :meth:`chunk`'s, as in URING).
    """

    def __init__(self, task: StageTask, ctx: StageContext) -> None:
        self.task = task
        self.ctx = ctx
        row = task.row
        self.size = row.size
        self.src = os.fsdecode(row.src)
        self.dst = os.fsdecode(row.dst)
        self.src_fd = -1
        self.tmp_fd = -1
        self.crc = task.resume_crc
        #: next offset to checksum (every byte before it is checksummed)
        self.crc_off = task.resume_from
        #: bytes written by this run (the kept prefix of a resume not counted)
        self.done_bytes = 0
        self._ext = ctx.extent_size
        self._ext_idx = task.next_extent  # the extent being checksummed
        self._ext_start = task.resume_from
        self._ext_crc = 0
        #: checksummed extents not yet committed: idx -> (crc, start)
        self._ext_crcs: dict[int, tuple[int, int]] = {}
        #: bytes written per extent not yet committed
        self._written: dict[int, int] = {}
        self._commit_idx = task.next_extent
        #: data regions ``(start, end)`` of a sparse source from the resume point on,
        #: and their starts (for bisect); None: every byte is data
        self._data: list[tuple[int, int]] | None = None
        self._starts: list[int] = []
        #: write-behind and source hints, for a large file only (``_writeback``)
        wb = _writeback.settings()
        self._wb = wb if wb.large(self.size - task.resume_from) else None
        #: the temp's bytes before this offset had their writeback started (those before
        #: ``_wb_prev`` a step earlier)
        self._wb_off = self._wb_hi = self._wb_prev = task.resume_from
        #: who runs the page-cache system calls (write-behind, dropping pages): None =
        #: the thread calling :meth:`chunk`/:meth:`written`; URING hands them to the
        #: file's sync thread, so its ring thread never blocks in them (docs/engines.md)
        self.run_behind: Callable[[Callable[[], None]], None] | None = None

    # -- open -----------------------------------------------------------------------------

    def open(self) -> FileStager:
        """Open (and check) the source, then create the temp or reopen a resumed one.
        On error nothing stays open; a temp created is left for cancel/resume."""
        task = self.task
        src_fd = open_source(task)
        try:
            self._map_data(src_fd)
            if task.resume_from:
                # Keep the verified prefix; anything past it is cut off, never trusted.
                with task.dir() as dir_fd:
                    tmp_fd = os.open(task.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     dir_fd=dir_fd)
                try:
                    os.ftruncate(tmp_fd, task.resume_from)
                except BaseException:
                    os.close(tmp_fd)
                    raise
            else:
                with task.dir() as dir_fd:
                    tmp_fd = create_temp(dir_fd, task.tmp)
                self.tmp_fd = tmp_fd
                crash_point("stage.after_create_temp")
        except BaseException:
            os.close(src_fd)
            if self.tmp_fd >= 0:
                os.close(self.tmp_fd)
                self.tmp_fd = -1
            raise
        self.src_fd, self.tmp_fd = src_fd, tmp_fd
        if self._wb is not None and self._wb.sequential:
            os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return self

    # -- a file below one chunk, in one step ----------------------------------------------

    def fits(self, room: int) -> bool:
        """Can this file be staged by :meth:`copy_small` with a buffer of ``room`` bytes?
        (A fresh temp, and one byte of room past the end to prove the end of file.)"""
        return self.task.resume_from == 0 and self.size < room

    def copy_small(self, queue: IOQueue, buf: bytearray) -> StageResult:
        """Stage a file below one chunk (:meth:`fits`) in one step on this thread: read,
        check the source, checksum, create the temp, write, seal (:meth:`finish`).

        The same checks as the chunked path, in fewer system calls: the source is read
        whole before it is checked, so one fstat afterwards covers "still the file
        recorded at dispatch", "not rewritten while being copied" (ctime, mtime) and
        "did not grow" (its size is still the recorded one, so the ``size`` bytes read
        are all of it; no probe read past the end). The temp is created only once the
        source passed (a changed source leaves no temp).
        On error nothing stays open; a temp created is left for cancel/resume.
        """
        task, size = self.task, self.size
        name = self.src
        self.src_fd = open_source(task, False)
        data = memoryview(buf)[:size]
        try:
            n = self.ctx.retry(
                lambda: queue_io(queue, False, self.src_fd, data, 0, "read", name),
                f"read {name!r} @0+{size}") if size else 0
        except BaseException:
            st = os.fstat(self.src_fd)
            if not stat.S_ISREG(st.st_mode):  # a FIFO or a directory now: say so
                raise BadSourceError(f"source {name!r} is no longer a regular file"
                                     ) from None
            raise
        st = os.fstat(self.src_fd)
        row = task.row
        if not stat.S_ISREG(st.st_mode):
            raise BadSourceError(f"source {name!r} is no longer a regular file")
        check_unchanged(row, st, "since dispatch", "not copied")  # ctime, inode too
        if n != size:  # shorter than its (unchanged) size: it shrank and grew back
            raise SourceChangedError(
                f"source {name!r} changed since dispatch (size {row.size} -> {n}); not "
                "copied", path=name, changed=("size",))
        if st.st_blocks * 512 < size:
            self._map_data(self.src_fd, st)  # sparse: write its data regions only
        if not self.ctx.copy_metadata:  # with metadata copy its xattrs are read below
            os.close(self.src_fd)
            self.src_fd = -1
        self.crc = crc32c(data)
        self.crc_off = size
        with task.dir() as dir_fd:
            self.tmp_fd = create_temp(dir_fd, task.tmp)
        crash_point("stage.after_create_temp")
        if size:
            if self._data is None:
                self.write(queue, data, 0)
            else:
                for beg, end in self._data:
                    self.write(queue, data[beg:end], beg)
                os.ftruncate(self.tmp_fd, size)
            self.written(0, size)
        self.apply_metadata()
        synced = self.seal()
        self.close()
        return StageResult(task, self.crc, size, size, synced)

    def _map_data(self, fd: int, st: os.stat_result | None = None) -> None:
        """Map the data regions of a sparse source (one ``fstat`` for a dense one, none
        if ``st`` is given); a filesystem without SEEK_DATA support is all data."""
        start = self.task.resume_from
        if st is None:
            st = os.fstat(fd)
        if self.size - start <= 0 or st.st_blocks * 512 >= self.size:
            return
        regions: list[tuple[int, int]] = []
        off = start
        try:
            while off < self.size:
                try:
                    beg = os.lseek(fd, off, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == _errno.ENXIO:
                        break  # nothing but a hole up to the end
                    raise
                if beg >= self.size:
                    break
                end = min(os.lseek(fd, beg, os.SEEK_HOLE), self.size)
                regions.append((beg, end))
                off = end
        except OSError as exc:
            if exc.errno in (_errno.EINVAL, _errno.EOPNOTSUPP):
                return
            raise
        if regions != [(start, self.size)]:
            self._data = regions
            self._starts = [r[0] for r in regions]

    def _region(self, offset: int) -> tuple[bool, int]:
        """``(in a hole, end of the region)`` for the byte at ``offset``."""
        if self._data is None:
            return False, self.size
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self._data[i][1]:
            return False, self._data[i][1]
        return True, self._starts[i + 1] if i + 1 < len(self._starts) else self.size

    def is_hole(self, offset: int) -> bool:
        """Is the chunk at ``offset`` (as cut by :meth:`read_len`) in a hole of the
        source? Its bytes are zeros; it is not read and not written."""
        return self._data is not None and self._region(offset)[0]

    # -- bytes ----------------------------------------------------------------------------

    def read_len(self, offset: int, room: int) -> int:
        """Bytes to read at ``offset`` into a buffer of ``room``: never past the end of
        the file, across an extent boundary (extents count from the resume point) or
        across a data/hole boundary of a sparse source."""
        start = self.task.resume_from
        ext_end = start + ((offset - start) // self._ext + 1) * self._ext
        return max(0, min(room, self.size - offset, ext_end - offset,
                          self._region(offset)[1] - offset))

    def read(self, queue: IOQueue, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` from the source at ``offset`` under the retry policy; a short read
        means the source shrank (SourceChangedError). A hole's chunk is zeros, not read."""
        want = buf.nbytes
        if self.is_hole(offset):
            buf[:] = bytes(want)
            return want
        n = self.ctx.retry(
            lambda: queue_io(queue, False, self.src_fd, buf, offset, "read", self.src),
            f"read {self.src!r} @{offset}+{want}")
        if n < want:
            raise SourceChangedError(f"source {self.src!r} shrank while being copied",
                                     path=self.src, changed=("size",))
        return n

    def write(self, queue: IOQueue, data: memoryview, offset: int) -> int:
        """Write ``data`` to the temp at ``offset`` under the retry policy; a hole's chunk
        is not written (the temp keeps the hole)."""
        if self.is_hole(offset):
            return data.nbytes
        return self.ctx.retry(
            lambda: queue_io(queue, True, self.tmp_fd, data, offset, "write", self.dst),
            f"write {self.dst!r} @{offset}+{data.nbytes}")

    def chunk(self, offset: int, data: memoryview) -> None:
        """Checksum the chunk at ``offset``; chunks come in file order."""
        assert offset == self.crc_off, "chunks are checksummed in file order"
        self.crc = crc32c(data, self.crc)
        self._ext_crc = crc32c(data, self._ext_crc)
        self.crc_off += data.nbytes
        if self._wb is not None and self._wb.dontneed:
            if self.run_behind is None:
                _writeback.drop_pages(self.src_fd, offset, data.nbytes)
            else:
                self.run_behind(functools.partial(_writeback.drop_pages, self.src_fd,
                                                  offset, data.nbytes))
        if self.crc_off - self._ext_start == self._ext or self.crc_off == self.size:
            self._ext_crcs[self._ext_idx] = (self._ext_crc, self._ext_start)
            self._ext_idx += 1
            self._ext_crc = 0
            self._ext_start = self.crc_off

    def written(self, offset: int, n: int) -> list[Extent]:
        """``n`` bytes at ``offset`` are in the temp (not yet durable). Returns, in order,
        the extents now checksummed and fully written; each is to be :meth:`commit`-ted in
        that order. The last extent is never returned: :meth:`finish` covers it."""
        crash_point("stage.after_write")
        self.ctx.on_bytes(n)
        self.done_bytes += n
        ext = self._ext
        idx = self.task.next_extent + (offset - self.task.resume_from) // ext
        self._written[idx] = self._written.get(idx, 0) + n
        if self._wb is not None and self._wb.step:
            self._write_behind(offset + n)
        ready: list[Extent] = []
        while (self._commit_idx in self._ext_crcs
               and self._written.get(self._commit_idx, 0) == ext):
            ecrc, start = self._ext_crcs[self._commit_idx]
            end = start + ext
            if end >= self.size:
                break  # the last extent: the final fsync and STAGED commit cover it
            del self._ext_crcs[self._commit_idx]
            del self._written[self._commit_idx]
            ready.append(Extent(self._commit_idx, ext, ecrc, end))
            self._commit_idx += 1
        return ready

    def _write_behind(self, end: int) -> None:
        """Start writeback of what was written since the last call, every ``step`` bytes
        (writes may complete out of order: pages not yet written are simply not dirty,
        and the final fsync covers them); not at the end of the file, where the fsync
        follows at once."""
        assert self._wb is not None
        self._wb_hi = max(self._wb_hi, end)
        if self._wb.step <= self._wb_hi - self._wb_off and self._wb_hi < self.size:
            job = functools.partial(_writeback.behind, self.tmp_fd, self._wb_off,
                                    self._wb_hi, self._wb_prev if self._wb.drop_temp else None)
            self._wb_prev, self._wb_off = self._wb_off, self._wb_hi
            if self.run_behind is None:
                job()
            else:
                self.run_behind(job)

    @property
    def all_written(self) -> bool:
        """Has every byte this run must copy been written?"""
        return self.done_bytes == self.size - self.task.resume_from

    def commit(self, ext: Extent) -> None:
        """Make an extent's bytes durable (fdatasync), then journal its CRC."""
        os.fdatasync(self.tmp_fd)
        self.ctx.commit_extents([(self.task.row.id, ext.idx, ext.length, ext.crc32c,
                                  ext.end)])

    # -- finish ---------------------------------------------------------------------------

    def finish(self) -> StageResult:
        """Every byte is written: re-check the source, apply metadata, fsync the temp,
        close both fds; the result carries the file's CRC32C."""
        task = self.task
        self.check_source_unchanged()
        if self._data is not None:
            os.ftruncate(self.tmp_fd, self.size)  # a trailing hole: the file's full size
        self.apply_metadata()
        synced = self.seal()
        self.close()
        return StageResult(task, self.crc, self.size, self.size - task.resume_from, synced)

    def seal(self) -> bool:
        """Make the finished temp durable: fsync it, or on the batched path
        (``StageContext.defer_fsync``) leave that to the batch's ``syncfs`` — except a
        large file (at least two write-behind steps), fsynced here all the
        same: most of it is written back already, and a ``syncfs`` while other large
        temps are being written flushes their pages under their writers
        (docs/design.md, "Batched durability"). Once fsynced, a large temp's pages are
        clean and dropped (``temp-dontneed``), so the next files reuse them. Returns
        whether the temp was fsynced on the batched path (``StageResult.synced``: its
        batch need not cover it)."""
        own = self.ctx.defer_fsync and self._wb is not None
        if (not self.ctx.defer_fsync or own) and not planted("rename_before_fsync"):
            fsync_fd(self.tmp_fd)
            if self._wb is not None and self._wb.drop_temp:
                _writeback.drop_pages(self.tmp_fd, 0, 0)
        crash_point("stage.after_fsync")
        return own

    def check_source_unchanged(self) -> None:
        """After the copy: the source must not have grown, been truncated or rewritten
        (size, mtime, ctime: :mod:`axlpy._identity`), and its path must still name the
        file that was read (inode)."""
        row = self.task.row
        why = "the partial copy was not published"
        check_unchanged(row, os.fstat(self.src_fd), "while being copied", why)
        if os.pread(self.src_fd, 1, row.size):
            raise SourceChangedError(
                f"source {self.src!r} grew while being copied; {why}", path=self.src,
                changed=("size",))
        try:
            now = os.stat(row.src, follow_symlinks=False)
        except FileNotFoundError:
            raise SourceChangedError(f"source {self.src!r} was removed while being "
                                     f"copied; {why}", path=self.src,
                                     changed=("inode",)) from None
        check_unchanged(row, now, "while being copied", why)

    def apply_metadata(self) -> None:
        """Give the temp its final mode (and, with metadata copy, owner, xattrs and ACLs
        read from the source, and mtime: ``axlpy._metadata``); the umask is the
        transfer's, read once (``StageContext.umask``), not once per file. A temp this
        run created (0600 masked by the umask) whose final mode is that already is not
        chmodded again (one system call per file fewer, e.g. under umask 077)."""
        ctx = self.ctx
        if (not ctx.copy_metadata and not self.task.resume_from
                and self.task.row.mode & 0o777 & ~ctx.umask == 0o600 & ~ctx.umask):
            return
        apply_file(self.tmp_fd, self.src_fd, self.task.row, metadata=self.ctx.copy_metadata,
                   umask=self.ctx.umask)

    def close(self) -> None:
        """Close the source and temp fds. Idempotent."""
        for fd in (self.src_fd, self.tmp_fd):
            if fd >= 0:
                os.close(fd)
        self.src_fd = self.tmp_fd = -1
