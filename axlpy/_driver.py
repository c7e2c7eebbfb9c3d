"""The on-disk procedures of a dispatched transfer: run, recover (resume) and cancel.

This is where the order of writes, fsyncs, renames and journal commits lives, once for
every engine; ``docs/design.md`` is its contract. In short, for a batch of files:

1. the engine writes each temp, checksums what it read, fsyncs the temp;
2. commit the batch STAGED with size and CRC32C            (write-ahead of the rename)
3. rename each temp over its final name;
4. fsync each directory touched;
5. commit the batch PUBLISHED;
then commit the transfer RENAMED, delete sources (move mode) and fsync their
directories, then commit COMPLETED.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._checksum import crc32c, file_crc32c
from ._crashpoints import crash_point
from ._errors import (
    AxlError,
    PublishError,
    SecurityError,
    TransferCancelledError,
    TransferError,
    UsageError,
)
from ._journal import FileRow, JournalDB, TransferRow
from ._planted import planted
from ._staging import DirCache, fsync_dir, fsync_fd, unlink_quiet
from ._state import FileState, TransferState
from .engines import Engine, StageContext, StageResult, StageTask
from .io import IOQueue

__all__ = ["Driver", "Progress", "assign_temps", "restat_sources"]

_F = FileState
_T = TransferState

#: publish a group of staged files when it holds this many, or this much time has passed
_GROUP_FILES = 256
_GROUP_SECONDS = 0.1


@dataclass
class Progress:
    """Live counters of one transfer (thread-safe enough: ints under a lock)."""

    bytes_total: int = 0
    bytes_done: int = 0
    files_total: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)
    callback: Callable[[Progress], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_cb: float = 0.0

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
        self._notify()

    def add_files(self, n: int) -> None:
        with self._lock:
            self.files_done += n
        self._notify(force=True)

    @property
    def rate(self) -> float:
        """Bytes per second since the transfer (or this resume) started."""
        dt = time.monotonic() - self.started
        return self.bytes_done / dt if dt > 0 else 0.0

    def _notify(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self._last_cb > 0.1:
            self._last_cb = now
            self.callback(self)


def _dir_and_name(rel: bytes) -> tuple[bytes, bytes]:
    d, n = os.path.split(rel)
    return d, n


class Driver:
    """Runs the on-disk side of one transfer; the journal connection is shared."""

    def __init__(self, jdb: JournalDB, trow: TransferRow, engine: Engine,
                 open_queue: Callable[[], IOQueue], progress: Progress,
                 cancel: threading.Event | None = None,
                 retry: Callable[[Callable[[], int], str], int] | None = None) -> None:
        self.jdb = jdb
        self.t = trow
        self.engine = engine
        self.opts = trow.options
        self.open_queue = open_queue
        self.progress = progress
        self.cancel_event = cancel or threading.Event()
        self.retry = retry

    # -- helpers ------------------------------------------------------------------------

    def _state(self) -> TransferState:
        return self.jdb.transfer_by_id(self.t.id).state

    def _move(self, to: TransferState, event: str, **kw: Any) -> None:
        frm = self._state()
        self.jdb.set_state(self.t.id, frm, to, event=event, name=self.t.name, **kw)

    def _dirs(self) -> DirCache:
        return DirCache(mkdirs=bool(self.opts.get("mkdirs", True)),
                        follow_symlinks=bool(self.opts.get("follow_dst_symlinks", False)))

    def _check_inside_roots(self, row: FileRow) -> None:
        """A journal row must not escape the destination roots recorded at create time."""
        rel = row.rel
        if rel.startswith(b"/") or b".." in rel.split(b"/"):
            raise SecurityError(f"journal row for {os.fsdecode(row.dst)!r} escapes its "
                                "destination root; refusing to write")
        expect = os.path.join(row.root, rel) if rel else row.root
        if expect != row.dst:
            raise SecurityError(f"journal row for {os.fsdecode(row.dst)!r} does not match "
                                "its root and relative path; refusing to write")
        roots = self.opts.get("roots")
        if roots is not None and os.fsdecode(row.root) not in roots:
            raise SecurityError(f"journal row for {os.fsdecode(row.dst)!r} is outside the "
                                "destination roots recorded at create time")

    # -- run ------------------------------------------------------------------------------

    def run(self, resume_info: dict[int, tuple[int, int, int]] | None = None,
            ready: Sequence[FileRow] = (), renamed: Sequence[FileRow] = ()) -> None:
        """From DISPATCHED: stage, publish, RENAMED, delete sources (move), COMPLETED.

        ``resume_info`` maps file id -> (verified bytes, their CRC, next extent) for temps
        kept by a resume; ``ready`` are STAGED rows whose temps were verified; ``renamed``
        are STAGED rows whose rename happened but was not journaled.
        On error: the transfer is journaled FAILED (resumable), temps stay for resume.
        """
        try:
            self._run(resume_info or {}, ready, renamed)
        except TransferCancelledError:
            raise  # the canceller cleans up and journals CANCELLED
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            msg = str(exc) if isinstance(exc, AxlError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                state = self._state()
                if _T.FAILED in _transitions_from(state):
                    self._move(_T.FAILED, "fail", error=msg, owner=None)
            if isinstance(exc, AxlError):
                raise
            raise TransferError(f"transfer {self.t.name!r} failed: {msg}",
                                transfer=self.t.name) from exc

    def _run(self, resume_info: dict[int, tuple[int, int, int]],
             ready: Sequence[FileRow], renamed: Sequence[FileRow]) -> None:
        rows = self.jdb.files(self.t.id)
        for r in rows:
            self._check_inside_roots(r)
        with self._dirs() as dirs:
            if renamed:
                touched = {dirs.open(r.root, _dir_and_name(r.rel)[0]) for r in renamed}
                for fd in touched:
                    fsync_dir(fd)
                crash_point("publish.after_dir_fsync")
                self.jdb.set_files(self.t.id, [(r, _F.PUBLISHED, {}) for r in renamed],
                                   "published")
                crash_point("publish.after_commit")
                self.progress.add_files(len(renamed))
            if ready:
                results = [StageResult(self._task(dirs, r), r.crc32c or 0, r.size, 0)
                           for r in ready]
                self._publish(results, already_staged=True)
            tasks = [self._task(dirs, r, resume_info.get(r.id)) for r in rows
                     if r.kind == "file" and r.state is _F.PENDING]
            links = [r for r in rows if r.kind == "symlink" and r.state is _F.PENDING]
            self._stage_and_publish(tasks)
            if links:
                self._publish([self._stage_link(dirs, r) for r in links])
            self._publish_dirs(dirs, [r for r in rows if r.kind == "dir"])
        self._move(_T.RENAMED, "renamed")
        crash_point("renamed.after_commit")
        self.finish()

    def _task(self, dirs: DirCache, r: FileRow,
              info: tuple[int, int, int] | None = None) -> StageTask:
        d, _ = _dir_and_name(r.rel)
        dfd = dirs.open(r.root, d)
        assert r.tmp is not None, "temp names are assigned at dispatch"
        t = StageTask(r, dfd, r.tmp)
        if info:
            t.resume_from, t.resume_crc, t.next_extent = info
        return t

    def _stage_and_publish(self, tasks: list[StageTask]) -> None:
        ctx = StageContext(
            chunk_size=int(self.opts.get("chunk_size", 8 << 20)),
            extent_size=int(self.opts.get("extent_size", 64 << 20)),
            copy_metadata=bool(self.opts.get("metadata", False)),
            open_queue=self.open_queue,
            commit_extents=self.jdb.add_extents,
            on_bytes=self.progress.add_bytes,
            cancel=self.cancel_event,
            workers=int(self.opts.get("workers", 0) or 0),
        )
        if self.retry is not None:
            ctx.retry = self.retry
        group: list[StageResult] = []
        last = time.monotonic()
        gen = self.engine.stage(tasks, ctx)
        try:
            for res in gen:
                group.append(res)
                now = time.monotonic()
                if len(group) >= _GROUP_FILES or now - last >= _GROUP_SECONDS:
                    self._publish(group)
                    group = []
                    last = time.monotonic()
            self._publish(group)
        finally:
            gen.close()

    def _stage_link(self, dirs: DirCache, r: FileRow) -> StageResult:
        t = self._task(dirs, r)
        assert r.link is not None
        unlink_quiet(t.dir_fd, t.tmp)
        os.symlink(r.link, t.tmp, dir_fd=t.dir_fd)
        crash_point("stage.after_create_temp")
        return StageResult(t, crc32c(r.link), len(r.link), len(r.link))

    def _publish(self, group: Sequence[StageResult], already_staged: bool = False) -> None:
        """STAGED commit -> renames -> directory fsyncs -> PUBLISHED commit."""
        if not group:
            return
        bad_order = planted("commit_after_step")
        if not already_staged and not bad_order:
            self._commit_staged(group)
        touched: dict[int, None] = {}
        for res in group:
            t = res.task
            _, name = _dir_and_name(t.row.rel)
            try:
                os.rename(t.tmp, name, src_dir_fd=t.dir_fd, dst_dir_fd=t.dir_fd)
            except OSError as exc:
                raise PublishError(
                    f"cannot rename staged file into {os.fsdecode(t.row.dst)!r}: "
                    f"{exc.strerror}", transfer=self.t.name, path=os.fsdecode(t.row.dst)
                ) from exc
            if planted("rename_before_fsync") and t.row.kind == "file":
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=t.dir_fd)
                try:
                    fsync_fd(fd)
                finally:
                    os.close(fd)
            crash_point("publish.after_rename")
            touched[t.dir_fd] = None
        if bad_order:
            self._commit_staged(group)
        for fd in touched:
            fsync_dir(fd)
        crash_point("publish.after_dir_fsync")
        self.jdb.set_files(self.t.id, [(r.task.row, _F.PUBLISHED, {}) for r in group],
                           "published")
        crash_point("publish.after_commit")
        self.progress.add_files(len(group))

    def _commit_staged(self, group: Sequence[StageResult]) -> None:
        self.jdb.set_files(
            self.t.id,
            [(r.task.row, _F.STAGED, {"crc32c": r.crc32c, "bytes_done": r.size})
             for r in group],
            "staged",
        )
        crash_point("stage.after_commit")

    def _publish_dirs(self, dirs: DirCache, rows: list[FileRow]) -> None:
        """Create directories (empty ones included) and apply their metadata, deepest
        first so a child's creation does not disturb its parent's mtime afterwards."""
        todo = [r for r in rows if r.state is not _F.PUBLISHED]
        if not todo:
            return
        meta = bool(self.opts.get("metadata", False))
        for r in sorted(todo, key=lambda r: r.rel.count(b"/") if r.rel else -1,
                        reverse=True):
            fd = dirs.open(r.root, r.rel)
            if meta:
                os.fchmod(fd, r.mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, r.uid, r.gid)
                os.utime(fd, ns=(r.mtime_ns, r.mtime_ns))
                fsync_dir(fd)
        self.jdb.set_files(self.t.id, [(r, _F.PUBLISHED, {}) for r in todo], "dirs-published")

    # -- after RENAMED --------------------------------------------------------------------

    def finish(self) -> None:
        """From RENAMED: delete sources (move mode), then COMPLETED. Idempotent."""
        if self.opts.get("move"):
            self._delete_sources()
        self._move(_T.COMPLETED, "complete", owner=None)
        crash_point("complete.after_commit")

    def _delete_sources(self) -> None:
        rows = self.jdb.files(self.t.id)
        parents: set[bytes] = set()
        for r in rows:
            if r.kind == "dir":
                continue
            try:
                st = os.lstat(r.src)
            except FileNotFoundError:
                continue  # deleted before a crash
            if r.kind == "file" and (st.st_size != r.size or st.st_mtime_ns != r.mtime_ns):
                # Changed after it was copied: deleting it would lose data. Keep it.
                self.jdb.record_event(self.t.id, "move-kept-changed-source",
                                      os.fsdecode(r.src), r.id)
                continue
            os.unlink(r.src)
            parents.add(os.path.dirname(r.src))
            crash_point("move.after_unlink")
        # Remove the (now empty) source directories of a moved tree, deepest first.
        for r in sorted((r for r in rows if r.kind == "dir"),
                        key=lambda r: r.src.count(b"/"), reverse=True):
            try:
                os.rmdir(r.src)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (_errno.ENOTEMPTY, _errno.EEXIST):
                    continue
                raise
            parents.add(os.path.dirname(r.src))
        for p in parents:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    fsync_dir(fd)
                finally:
                    os.close(fd)
        crash_point("move.after_dir_fsync")

    # -- resume ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Verify what is on disk against the journal, redo what cannot be trusted, and run
        to COMPLETED. The caller has claimed ownership and journaled the takeover."""
        state = self._state()
        if state is _T.RENAMED:
            self.finish()
            return
        rows = self.jdb.files(self.t.id)
        reset: list[FileRow] = []
        ready: list[FileRow] = []
        renamed: list[FileRow] = []
        info: dict[int, tuple[int, int, int]] = {}
        buf = bytearray(4 << 20)
        with self._dirs() as dirs:
            for r in rows:
                self._check_inside_roots(r)
                if r.kind == "dir":
                    continue
                d, name = _dir_and_name(r.rel)
                try:
                    dfd = dirs.open(r.root, d)
                except FileNotFoundError:
                    dfd = -1
                if r.state is _F.PENDING:
                    if dfd >= 0 and r.tmp:
                        kept = self._verify_extents(r, dfd, buf) if r.kind == "file" else None
                        if kept:
                            info[r.id] = kept
                        elif unlink_quiet(dfd, r.tmp):
                            crash_point("resume.after_remove_temp")
                elif r.state is _F.STAGED:
                    if dfd >= 0 and r.tmp and self._matches(dfd, r.tmp, r, buf):
                        ready.append(r)
                    elif dfd >= 0 and self._matches(dfd, name, r, buf):
                        if r.tmp:
                            unlink_quiet(dfd, r.tmp)
                        renamed.append(r)
                    else:
                        if dfd >= 0 and r.tmp:
                            unlink_quiet(dfd, r.tmp)
                        reset.append(r)
                elif r.state is _F.PUBLISHED and (
                    not self.opts.get("verify_published", True)
                    or (dfd >= 0 and self._matches(dfd, name, r, buf))
                ):
                    self.progress.add_files(1)
                elif r.state is _F.PUBLISHED:
                    reset.append(r)
        if reset:
            self.jdb.set_files(self.t.id, [(r, _F.PENDING, {"bytes_done": 0}) for r in reset],
                               "resume-reset")
            crash_point("resume.after_reset_file")
        self.run(info, ready, renamed)

    def _verify_extents(self, r: FileRow, dfd: int,
                        buf: bytearray) -> tuple[int, int, int] | None:
        """Keep the prefix of a temp whose journaled extents verify; never trust a byte
        past the last verified extent. Returns (bytes kept, their CRC, next extent)."""
        assert r.tmp is not None
        extents = self.jdb.extents(r.id)
        if not extents:
            return None
        try:
            fd = os.open(r.tmp, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            return None
        kept = crc = 0
        nxt = 0
        try:
            for idx, length, ecrc in extents:
                if idx != nxt:
                    break
                got, n = file_crc32c(fd, length, start=kept, buf=buf)
                if n != length or got != ecrc:
                    break
                crc, _ = file_crc32c(fd, length, start=kept, value=crc, buf=buf)
                kept += length
                nxt += 1
        finally:
            os.close(fd)
        if kept == 0:
            return None
        self.progress.add_bytes(kept)
        return kept, crc, nxt

    def _matches(self, dfd: int, name: bytes, r: FileRow, buf: bytearray) -> bool:
        """Does ``name`` in ``dfd`` hold exactly the bytes journaled for ``r``?"""
        if r.crc32c is None:
            return False
        if r.kind == "symlink":
            try:
                return crc32c(os.readlink(name, dir_fd=dfd)) == r.crc32c
            except OSError:
                return False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size != r.size:
                return False
            got, n = file_crc32c(fd, r.size, buf=buf)
            return n == r.size and got == r.crc32c
        finally:
            os.close(fd)

    # -- cancel ---------------------------------------------------------------------------

    def cancel_on_disk(self) -> None:
        """Remove every temp the transfer owns and every file it published (verified to be
        still its own), fsync the directories, then commit CANCELLED. Sources are never
        touched. Idempotent: a crash part-way is finished by cancelling again."""
        state = self._state()
        if state is _T.RENAMED and self.opts.get("move"):
            raise UsageError(
                f"transfer {self.t.name!r} already published every file and is deleting "
                "its sources (move mode); cancel would lose data — resume it to finish")
        rows = self.jdb.files(self.t.id)
        buf = bytearray(4 << 20)
        touched: dict[bytes, int] = {}
        try:
            for r in rows:
                if r.kind == "dir" or r.state is _F.CANCELLED:
                    continue
                self._check_inside_roots(r)
                d, name = _dir_and_name(r.rel)
                key = os.path.join(r.root, d) if d else r.root
                if key not in touched:
                    try:
                        touched[key] = os.open(key, os.O_RDONLY | os.O_DIRECTORY
                                               | os.O_NOFOLLOW)
                    except OSError:
                        touched[key] = -1
                dfd = touched[key]
                if dfd < 0:
                    continue
                if r.tmp and unlink_quiet(dfd, r.tmp):
                    crash_point("cancel.after_unlink_temp")
                if (r.state in (_F.STAGED, _F.PUBLISHED)
                        and self._matches(dfd, name, r, buf)):
                    unlink_quiet(dfd, name)
                    crash_point("cancel.after_unlink_temp")
            for fd in touched.values():
                if fd >= 0:
                    fsync_dir(fd)
            crash_point("cancel.after_dir_fsync")
        finally:
            for fd in touched.values():
                if fd >= 0:
                    os.close(fd)
        self.jdb.set_files(self.t.id, [(r, _F.CANCELLED, {}) for r in rows
                                       if r.state is not _F.CANCELLED], "cancel-files")
        self._move(_T.CANCELLED, "cancel", owner=None)
        crash_point("cancel.after_commit")


def _transitions_from(state: TransferState) -> Iterable[TransferState]:
    from ._state import TRANSITIONS

    return TRANSITIONS[state]


def assign_temps(rows: Iterable[FileRow], token: str, tid: int) -> list[tuple[str, Sequence[Any]]]:
    """SQL to record each file's temp name (inside the DISPATCHED transaction)."""
    from ._staging import temp_name

    out: list[tuple[str, Sequence[Any]]] = []
    for r in rows:
        if r.kind == "dir":
            continue
        tmp = temp_name(_dir_and_name(r.rel)[1], token, tid, r.id)
        out.append(("UPDATE files SET tmp = ? WHERE id = ?", (tmp, r.id)))
    return out


def restat_sources(rows: Iterable[FileRow]) -> list[tuple[str, Sequence[Any]]]:
    """SQL to record each source's size and mtime as of dispatch; raises BadSourceError
    naming a source that vanished or changed kind since add()."""
    from ._errors import BadSourceError

    out: list[tuple[str, Sequence[Any]]] = []
    for r in rows:
        if r.kind != "file":
            continue
        try:
            st = os.stat(r.src)
        except FileNotFoundError:
            raise BadSourceError(f"source {os.fsdecode(r.src)!r} vanished before "
                                 "dispatch") from None
        if not os.path.isfile(r.src):
            raise BadSourceError(f"source {os.fsdecode(r.src)!r} is no longer a file")
        out.append(("UPDATE files SET size = ?, mtime_ns = ?, mode = ? WHERE id = ?",
                    (st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, r.id)))
    return out

