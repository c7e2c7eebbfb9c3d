"""Stage one file: source -> private temp beside the destination, checksummed and fsynced.

Shared by every engine that copies a file at a time; the bytes move through an IO queue.

On disk if this raises or the process dies: the temp holds a prefix of the data (extents
journaled so far were fdatasynced before being journaled); the source is never written.
"""

from __future__ import annotations

import errno as _errno
import os
import stat

from .._checksum import crc32c
from .._crashpoints import crash_point
from .._errors import (
    BadSourceError,
    IOBackendError,
    SourceChangedError,
    TransferCancelledError,
)
from .._planted import planted
from .._staging import create_temp, fsync_fd
from ..io import IOQueue
from ._base import StageContext, StageResult, StageTask

__all__ = ["apply_metadata", "open_source", "queue_io", "stage_file"]

_SRC_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def open_source(task: StageTask) -> int:
    """Open the source read-only without following a final symlink or blocking on a FIFO,
    and check it is still the regular file recorded at dispatch."""
    row = task.row
    name = os.fsdecode(row.src)
    try:
        fd = os.open(row.src, _SRC_FLAGS)
    except FileNotFoundError as exc:
        raise SourceChangedError(f"source {name!r} vanished after dispatch",
                                 path=name) from exc
    except OSError as exc:
        if exc.errno == _errno.ELOOP:
            raise SourceChangedError(f"source {name!r} became a symlink after dispatch",
                                     path=name) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadSourceError(f"source {name!r} is no longer a regular file")
        if st.st_size != row.size or st.st_mtime_ns != row.mtime_ns:
            raise SourceChangedError(
                f"source {name!r} changed since dispatch (size {row.size} -> {st.st_size}, "
                f"mtime_ns {row.mtime_ns} -> {st.st_mtime_ns}); not copied", path=name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_source_unchanged(fd: int, task: StageTask) -> None:
    """After the copy: the source must not have grown, been truncated or rewritten."""
    row = task.row
    name = os.fsdecode(row.src)
    st = os.fstat(fd)
    extra = os.pread(fd, 1, row.size)
    if st.st_size != row.size or st.st_mtime_ns != row.mtime_ns or extra:
        raise SourceChangedError(
            f"source {name!r} changed while being copied (size {row.size} -> "
            f"{st.st_size}); the partial copy was not published", path=name)


def queue_io(queue: IOQueue, write: bool, fd: int, buf: memoryview, offset: int,
             what: str, path: str) -> int:
    """One read or write through ``queue``, waited for; raises IOBackendError on -errno."""
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


def apply_metadata(fd: int, task: StageTask, copy_metadata: bool, umask: int) -> None:
    """Give the temp its final mode (and, with metadata copy, owner and mtime); ``umask``
    is the transfer's, read once (``StageContext.umask``), not once per file."""
    row = task.row
    if copy_metadata:
        try:
            os.fchown(fd, row.uid, row.gid)
        except PermissionError:
            pass  # only root may give files away; mode and mtime still apply
        os.fchmod(fd, row.mode & 0o7777)
        os.utime(fd, ns=(row.mtime_ns, row.mtime_ns))
    else:
        os.fchmod(fd, row.mode & 0o777 & ~umask)


def stage_file(task: StageTask, ctx: StageContext, queue: IOQueue,
               buf: bytearray) -> StageResult:
    """Copy one file into its temp; return its CRC32C once the temp is durable."""
    row = task.row
    path = os.fsdecode(row.dst)
    src_fd = open_source(task)
    tmp_fd = -1
    try:
        if task.resume_from:
            with task.dir() as dir_fd:
                tmp_fd = os.open(task.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=dir_fd)
            os.ftruncate(tmp_fd, task.resume_from)
        else:
            with task.dir() as dir_fd:
                tmp_fd = create_temp(dir_fd, task.tmp)
            crash_point("stage.after_create_temp")
        mv = memoryview(buf)
        offset = task.resume_from
        crc = task.resume_crc
        ext_idx = task.next_extent
        ext_crc = 0
        ext_start = offset
        while offset < row.size:
            if ctx.cancel.is_set():
                raise TransferCancelledError(f"cancelled while copying {path!r}", path=path)
            want = min(len(buf), row.size - offset, ext_start + ctx.extent_size - offset)
            chunk = mv[:want]
            # The lambdas run at once (under the retry policy): binding by default
            # arguments only keeps the linter sure of it.
            n = ctx.retry(lambda c=chunk, o=offset: queue_io(  # type: ignore[misc]
                queue, False, src_fd, c, o, "read", os.fsdecode(row.src)), "read")
            if n < want:
                raise SourceChangedError(
                    f"source {os.fsdecode(row.src)!r} shrank while being copied",
                    path=os.fsdecode(row.src))
            crc = crc32c(chunk, crc)
            ext_crc = crc32c(chunk, ext_crc)
            ctx.retry(lambda c=chunk, o=offset: queue_io(  # type: ignore[misc]
                queue, True, tmp_fd, c, o, "write", path), "write")
            crash_point("stage.after_write")
            offset += n
            ctx.on_bytes(n)
            if offset - ext_start == ctx.extent_size and offset < row.size:
                # The extent's bytes must be durable before the journal vouches for them.
                os.fdatasync(tmp_fd)
                ctx.commit_extents([(row.id, ext_idx, ctx.extent_size, ext_crc, offset)])
                ext_idx += 1
                ext_crc = 0
                ext_start = offset
        check_source_unchanged(src_fd, task)
        apply_metadata(tmp_fd, task, ctx.copy_metadata, ctx.umask)
        if not planted("rename_before_fsync"):
            fsync_fd(tmp_fd)
        crash_point("stage.after_fsync")
        return StageResult(task, crc, row.size, row.size - task.resume_from)
    finally:
        os.close(src_fd)
        if tmp_fd >= 0:
            os.close(tmp_fd)
