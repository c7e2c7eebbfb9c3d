"""The on-disk procedures of a dispatched transfer: run, recover (resume) and cancel.

This is where the order of writes, fsyncs, renames and journal commits lives, once for
every engine; ``docs/design.md`` is its contract. In short, for a batch of files:

1. the engine writes each temp, checksums what it read, fsyncs the temp (batched
   durability, on a local filesystem: one ``syncfs`` per batch instead, then the new
   directories' parents fsynced and recorded);
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
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ._admission import EVENT as ADMISSION_EVENT, AdmissionStats
from ._cancel import CancelReport
from ._checksum import crc32c, file_crc32c
from ._config import Options
from ._crashpoints import crash_point
from ._durable import expected_of, rename_verified
from ._errors import (
    AxlError,
    BadSourceError,
    PublishError,
    SecurityError,
    SourceChangedError,
    TransferCancelledError,
    TransferError,
    UsageError,
)
from ._fdbudget import fd_budget
from ._groupsync import GroupSync
from ._identity import changes as identity_changes, check_unchanged
from ._journal import DispatchRow, FileDispatch, FileRow, JournalDB, LinkDispatch, TransferRow
from ._metadata import apply_dir, apply_link
from ._planted import planted
from ._retry import RetryEvent
from ._staging import (
    DirCache,
    current_umask,
    fsync_dir,
    fsync_fd,
    temp_name,
    unlink_quiet,
)
from ._state import FileState, TransferState
from .engines import Engine, StageContext, StageResult, StageTask, stage_chunk_size
from .io import IOQueue

__all__ = ["Driver", "Progress", "dispatch_rows"]

_F = FileState
_T = TransferState

#: path components a journal row's relative path must not have
_BAD_PARTS = frozenset((b"", b".", b".."))

#: publish a group of staged files when it holds this many, or this much time has passed
_GROUP_FILES = 256
_GROUP_SECONDS = 0.1
#: record empty directories created in batches of this many (docs/design.md)
_GROUP_DIRS = 1024


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
    #: current rate: bytes per second over the last window of >= 0.5 s
    current_rate: float = 0.0
    _win_t: float = field(default_factory=time.monotonic, repr=False)
    _win_b: int = 0
    #: monotonic time of the last progress of any kind (the stall watchdog reads it)
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        """Something durable happened (an extent or file committed, an fsync returned)."""
        self.last_beat = time.monotonic()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.last_beat = time.monotonic()
            self.bytes_done += n
            now = time.monotonic()
            if now - self._win_t >= 0.5:
                self.current_rate = (self.bytes_done - self._win_b) / (now - self._win_t)
                self._win_t, self._win_b = now, self.bytes_done
        self._notify()

    def add_files(self, n: int) -> None:
        with self._lock:
            self.last_beat = time.monotonic()
            self.files_done += n
        self._notify(force=True)

    @property
    def rate(self) -> float:
        """Bytes per second since the transfer (or this resume) started."""
        dt = time.monotonic() - self.started
        return self.bytes_done / dt if dt > 0 else 0.0

    def _notify(self, force: bool = False) -> None:
        # Called from several engine threads: the throttle check-and-set is atomic.
        if self.callback is None:
            return
        with self._lock:
            now = time.monotonic()
            due = force or now - self._last_cb > 0.1
            if due:
                self._last_cb = now
        if due:
            self.callback(self)


def _dir_and_name(rel: bytes) -> tuple[bytes, bytes]:
    d, n = os.path.split(rel)
    return d, n


class Driver:
    """Runs the on-disk side of one transfer; the journal connection is shared."""

    def __init__(self, jdb: JournalDB, trow: TransferRow, engine: Engine,
                 open_queue: Callable[[], IOQueue], progress: Progress,
                 cancel: threading.Event | None = None,
                 retry: Callable[[Callable[[], int], str], int] | None = None, *,
                 admission: AdmissionStats | None = None) -> None:
        #: set when the run is abandoned (cancel of a stalled transfer): every later
        #: journal write, rename, unlink and directory step of this driver raises instead
        self.fence = threading.Event()
        self.jdb = cast(JournalDB, _Fenced(jdb, self.fence, trow.name))
        self.t = trow
        self.engine = engine
        self.opts = trow.options
        #: the state this driver last committed or read: every transition it makes is a
        #: compare-and-set against it, so a change by anyone else is caught, not overwritten
        self._seen = trow.state
        self.open_queue = open_queue
        self.progress = progress
        self.cancel_event = cancel or threading.Event()
        self.retry = retry
        #: counters of the queues ``open_queue`` returns, journaled when staging ends
        self.admission = admission
        #: the hard-link groups, read once per driver (:meth:`_source_groups`)
        self._groups: dict[int, int] | None = None
        self._owners: tuple[int, ...] | None = None
        # Destination roots that passed _check_inside_roots' root checks (they hold for
        # every row with that root, and the recorded roots do not change after dispatch).
        self._normal_roots: set[bytes] = set()
        self._recorded_roots: set[bytes] = set()
        #: descriptors this run may hold (from RLIMIT_NOFILE, see ``axlpy._fdbudget``)
        self.fds = fd_budget()
        #: batched durability of the running :meth:`run` (None: per-file fsync)
        self._gs: GroupSync | None = None
        #: the running run's directory cache (its new directories are recorded in batches)
        self._run_dirs: DirCache | None = None
        #: device of each destination directory (root, rel) a batch touched
        self._dev_of: dict[tuple[bytes, bytes], int] = {}

    # -- helpers ------------------------------------------------------------------------

    def _state(self) -> TransferState:
        """The state committed in the journal now; transitions compare against it."""
        self._seen = self.jdb.transfer_by_id(self.t.id).state
        return self._seen

    def _move(self, to: TransferState, event: str, **kw: Any) -> None:
        """Commit ``to`` if the journal still holds the state this driver last saw;
        JournalError (nothing written) if someone else moved the transfer meanwhile."""
        self.jdb.set_state(self.t.id, self._seen, to, event=event, name=self.t.name, **kw)
        self._seen = to

    def on_pause(self, event: RetryEvent) -> None:
        """Journal PAUSED (the retry policy waits for an operator). Called from engine
        threads, so several may race: the first one journals it, the others do nothing."""
        if self.jdb.pause(self.t.id, f"{event.what}: {event.error}", name=self.t.name):
            self._seen = _T.PAUSED

    def on_resume(self, event: RetryEvent) -> None:
        """Journal DISPATCHED again (an operator said continue); once, like
        :meth:`on_pause`."""
        if self.jdb.unpause(self.t.id, event.what, name=self.t.name):
            self._seen = _T.DISPATCHED

    def _dirs(self, rows: Sequence[FileRow] = (), batched: bool = False) -> DirCache:
        # The copy of a source directory is created with its final group and other bits
        # (masked by the umask) plus owner rwx, so that we can fill it and it is never
        # wider than its source, even if a crash keeps it from being recorded as ours;
        # its exact mode comes after its contents (_publish_dirs).
        umask = current_umask()
        # ``batched``: a directory's parent fsync and its created_dirs record wait for
        # the batch (_make_durable), one per parent and one transaction per batch.
        return DirCache(mkdirs=self.opts.mkdirs, follow_symlinks=self.opts.follow_dst_symlinks,
                        max_open=self.fds.dirs, on_mkdir=self._record_mkdir,
                        modes={r.dst: (r.mode & 0o777 & ~umask) | 0o700
                               for r in rows if r.kind == "dir"},
                        defer_mkdir_sync=batched)

    def _record_mkdir(self, path: bytes, st: os.stat_result) -> None:
        # Cancel removes it later only if it is still this inode and empty.
        self.jdb.record_created_dir(self.t.id, path, st.st_dev, st.st_ino)

    def _check_inside_roots(self, row: FileRow) -> None:
        """A journal row must not escape the destination roots recorded at create time.

        Whoever edits the journal chooses what a resume writes, so every row is checked
        before anything is written for it: its root is one recorded by ``add()``, absolute
        and normalised; ``rel`` is relative with no empty, ``.`` or ``..`` component;
        ``dst`` is exactly ``root/rel``; its temp name is the one this transfer assigns
        (a basename, never a path). Symlinked parents below the root are refused when the
        directories are opened (:class:`DirCache`). Raises :class:`SecurityError`.
        """
        rel, root = row.rel, row.root
        # _RowName(row): the message's row name, made only if one is raised (a resume
        # checks every row, 100k+, before it starts).
        parts = rel.split(b"/") if rel else []
        if (rel.startswith(b"/") or not _BAD_PARTS.isdisjoint(parts)
                or (row.kind != "dir" and not parts)):
            raise SecurityError(f"{_RowName(row)} escapes its destination root (relative path "
                                f"{os.fsdecode(rel)!r}); refusing to write")
        if root not in self._normal_roots:
            if not root.startswith(b"/") or os.path.normpath(root) != root:
                raise SecurityError(f"{_RowName(row)} has a destination root that is not an "
                                    "absolute normalised path; refusing to write")
            self._normal_roots.add(root)
        # root is absolute and normalised: os.path.join(root, rel) without its overhead
        expect = (root + rel if root.endswith(b"/") else root + b"/" + rel) if rel else root
        if expect != row.dst:
            raise SecurityError(f"{_RowName(row)} does not match its root and relative path; "
                                "refusing to write")
        if root not in self._recorded_roots:
            if os.fsdecode(root) not in self.opts.roots:
                raise SecurityError(f"{_RowName(row)} is outside the destination roots recorded "
                                    "at create time; refusing to write")
            self._recorded_roots.add(root)
        if (row.kind != "dir" and row.tmp is not None
                and row.tmp != temp_name(parts[-1], self.t.token, self.t.id, row.id)):
            raise SecurityError(f"{_RowName(row)} has a temp name that is not the one this "
                                "transfer assigns; refusing to write")

    # -- run ------------------------------------------------------------------------------

    def run(self, resume_info: dict[int, tuple[int, int, int]] | None = None,
            ready: Sequence[FileRow] = (), renamed: Sequence[FileRow] = ()) -> None:
        """From DISPATCHED: stage, publish, RENAMED, delete sources (move), COMPLETED.

        ``resume_info`` maps file id -> (verified bytes, their CRC, next extent) for temps
        kept by a resume; ``ready`` are STAGED rows whose temps were verified; ``renamed``
        are STAGED rows whose rename happened but was not journaled. The PENDING rows are
        read from the journal in batches as the engine takes them (:meth:`_pending_tasks`):
        the run holds the rows in flight and the directory rows, never all 100k rows.
        Dispatch and resume have checked every row (:meth:`_check_inside_roots`) before
        this; each row read here is checked again before anything is written for it.
        On error: the transfer is journaled FAILED (resumable), temps stay for resume.
        """
        with self._failing():
            self._run(resume_info or {}, ready, renamed)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """An error inside journals the transfer FAILED (resumable) and is re-raised
        (wrapped in a TransferError unless it is an AxlError)."""
        try:
            yield
        except TransferCancelledError:
            raise  # the canceller cleans up and journals CANCELLED (also _Abandoned)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) or self.fence.is_set():
                raise
            msg = str(exc) if isinstance(exc, AxlError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                # Against the state this run last saw: if someone else moved the
                # transfer meanwhile, their state stands (the compare-and-set fails).
                state = self._seen
                if _T.FAILED in _transitions_from(state):
                    self._move(_T.FAILED, "fail", error=msg, owner=None)
            if isinstance(exc, AxlError):
                raise
            raise TransferError(f"transfer {self.t.name!r} failed: {msg}",
                                transfer=self.t.name) from exc

    def _dir_rows(self) -> list[FileRow]:
        """The transfer's directory rows (held for the whole run: their modes are set
        after their contents), each checked against the recorded roots."""
        rows = [r for batch in self.jdb.file_batches(self.t.id, kind="dir") for r in batch]
        for r in rows:
            self._check_inside_roots(r)
        return rows

    def _run(self, resume_info: dict[int, tuple[int, int, int]],
             ready: Sequence[FileRow], renamed: Sequence[FileRow]) -> None:
        dir_rows = self._dir_rows()
        # The syncfs fds are opened before this run's first write (docs/design.md,
        # "Batched durability").
        with self._dirs(dir_rows, batched=True) as dirs, self._batched(dirs):
            if renamed:
                for key in {(r.root, _dir_and_name(r.rel)[0]) for r in renamed}:
                    fsync_dir(dirs.open(*key))
                crash_point("publish.after_dir_fsync")
                self.jdb.set_files(self.t.id, [(r, _F.PUBLISHED, {}) for r in renamed],
                                   "published")
                crash_point("publish.after_commit")
                self.progress.add_files(sum(r.kind == "file" for r in renamed))
            if ready:
                results = [StageResult(self._task(dirs, r), r.crc32c or 0, r.size, 0)
                           for r in ready]
                self._publish(results, already_staged=True)
            later = self._link_groups()
            self._stage_and_publish(self._pending_tasks(dirs, resume_info, later),
                                    *self.jdb.max_pending_size(self.t.id))
            if later:
                copy = self._publish_hard_links(dirs, later)
                if copy:  # links impossible there: copied like any file
                    self._stage_and_publish([self._task(dirs, r) for r in copy], len(copy),
                                            max(r.size for r in copy))
            for links in self.jdb.file_batches(self.t.id, state=_F.PENDING, kind="symlink"):
                for r in links:
                    self._check_inside_roots(r)
                self._publish([self._stage_link(dirs, r) for r in links])
            self._publish_dirs(dirs, dir_rows)
            self._make_durable([], dirs)  # directories created by nothing published yet
        self._move(_T.RENAMED, "renamed")
        crash_point("renamed.after_commit")
        self.finish()

    def _pending_tasks(self, dirs: DirCache, resume_info: dict[int, tuple[int, int, int]],
                       later: Mapping[int, int]) -> Iterator[StageTask]:
        """A task per PENDING regular file (not the later names of hard-link groups),
        read from the journal a batch at a time as the engine takes them (several engine
        threads may pull: the engine serialises)."""
        for batch in self.jdb.file_batches(self.t.id, state=_F.PENDING, kind="file"):
            for r in batch:
                self._check_inside_roots(r)
            for r in batch:
                if r.id not in later:
                    yield self._task(dirs, r, resume_info.get(r.id))

    @contextlib.contextmanager
    def _batched(self, dirs: DirCache) -> Iterator[None]:
        """Batched durability for one run: a :class:`GroupSync` on the filesystems of the
        destination roots (its fds opened now, before the run's first write); if the run
        fails, the directories it created are still recorded (quietly)."""
        with GroupSync(os.fsencode(r) for r in self.opts.roots) as gs:
            self._gs, self._run_dirs = gs, dirs
            try:
                yield
            except BaseException:
                self._record_mkdirs_quietly(dirs)
                raise
            finally:
                self._gs = self._run_dirs = None

    def _task(self, dirs: DirCache, r: FileRow,
              info: tuple[int, int, int] | None = None) -> StageTask:
        # The directory is opened (created) when the engine creates the temp, not here:
        # a transfer keeps only its fd budget's worth of directories open.
        assert r.tmp is not None, "temp names are assigned at dispatch"
        t = StageTask(r, dirs, r.tmp)
        if info:
            t.resume_from, t.resume_crc, t.next_extent = info
        return t

    def _stage_and_publish(self, tasks: Iterable[StageTask], nfiles: int,
                           biggest: int) -> None:
        """Stage ``tasks`` (about ``nfiles`` files of at most ``biggest`` bytes) and
        publish them in groups."""
        if not nfiles:
            return
        ctx = StageContext(
            chunk_size=stage_chunk_size(self.opts.chunk_size, biggest),
            extent_size=self.opts.extent_size,
            copy_metadata=self.opts.metadata,
            open_queue=self.open_queue,
            commit_extents=self._commit_extents,
            on_bytes=self.progress.add_bytes,
            cancel=self.cancel_event,
            workers=self.opts.workers,
            max_open_files=self.fds.files,
            defer_fsync=self._gs is not None and self._gs.active,
            files_hint=nfiles,
        )
        if self.retry is not None:
            ctx.retry = self.retry
        group: list[StageResult] = []
        last = time.monotonic()
        gen = self.engine.stage(tasks, ctx)
        ok = False
        try:
            for res in gen:
                group.append(res)
                now = time.monotonic()
                if len(group) >= _GROUP_FILES or now - last >= _GROUP_SECONDS:
                    self._publish(group, synced=not ctx.defer_fsync)
                    group = []
                    last = time.monotonic()
            self._publish(group, synced=not ctx.defer_fsync)
            ok = True
        finally:
            gen.close()
            self._record_admission(quiet=not ok)

    def _record_admission(self, quiet: bool) -> None:
        """Journal this run's admission counters as one ``admission`` event (nothing if
        no queue admitted anything). ``quiet``: the run is failing already, so a journal
        error here must not replace that error."""
        stats = self.admission
        if stats is None or stats.recorded or not any(stats.as_dict().values()):
            return
        try:
            self.jdb.record_event(self.t.id, ADMISSION_EVENT, stats.to_json())
        except Exception:
            if not quiet:
                raise
            return
        stats.recorded = True
        crash_point("stage.after_admission_commit")

    def _commit_extents(self, ext: Sequence[tuple[int, int, int, int, int]]) -> None:
        dirs = self._run_dirs
        if dirs is not None and dirs.pending:
            # A directory is recorded before the first commit about a file inside it
            # (a large file's extents come long before its batch): cancel removes it.
            self._record_mkdirs(dirs.take_pending(), dirs, set())
        self.jdb.add_extents(ext)
        self.progress.beat()  # the extent's fdatasync returned

    def _check_fence(self) -> None:
        if self.fence.is_set():
            raise _Abandoned(self.t.name)

    def _link_groups(self) -> dict[int, int]:
        """``{later name's id: first name's id}`` of the transfer's hard-link groups
        (empty with the ``hard_links`` option off); docs/design.md, "Hard links"."""
        return self._source_groups() if self.opts.hard_links else {}

    def _source_groups(self) -> dict[int, int]:
        """The names of one source inode, linked or not (:meth:`JournalDB.link_groups`),
        queried once per driver: a resume's check, its run and a move's source deletion
        share it (one GROUP BY over every row: ~75 ms for 100k files). The groups are
        the identities journaled at dispatch, which nothing changes after it, and a
        driver is made after dispatch committed."""
        if self._groups is None:
            self._groups = self.jdb.link_groups(self.t.id)
        return self._groups

    def _publish_hard_links(self, dirs: DirCache, later: dict[int, int]) -> list[FileRow]:
        """Publish each PENDING later name of a hard-link group as a link to its group's
        published first name (temp link, then the ordinary STAGED, rename, dir fsync,
        PUBLISHED, in groups). Returns the rows that cannot be links there (to copy).
        The rows are read a batch at a time; only the groups' first names are held."""
        firsts = set(later.values())
        by_id = {r.id: r for batch in self.jdb.file_batches(self.t.id, kind="file")
                 for r in batch if r.id in firsts}
        copy: list[FileRow] = []
        group: list[StageResult] = []
        for batch in self.jdb.file_batches(self.t.id, state=_F.PENDING, kind="file"):
            for r in batch:
                if r.id not in later:
                    continue
                self._check_inside_roots(r)
                res = self._stage_hard_link(dirs, r, by_id[later[r.id]])
                if res is None:
                    copy.append(r)
                    continue
                group.append(res)
                if len(group) >= _GROUP_FILES:
                    self._publish(group)
                    group = []
        self._publish(group)
        return copy

    def _stage_hard_link(self, dirs: DirCache, r: FileRow,
                         first: FileRow) -> StageResult | None:
        """``link(2)`` the published first name to ``r``'s temp and check the temp is
        that regular file of the journaled size; None if the filesystem cannot link it
        here (EXDEV, EMLINK, EPERM, EOPNOTSUPP: copy it instead). Raises PublishError
        (the temp removed) if the first name is not the published file any more. On
        disk if the process dies: the temp, a second name of the published file."""
        self._check_fence()
        dst = os.fsdecode(r.dst)
        if first.state is not _F.PUBLISHED or first.crc32c is None:
            raise PublishError(f"hard link {dst!r}: its first name "
                               f"{os.fsdecode(first.dst)!r} is not published",
                               transfer=self.t.name, path=dst)
        t = self._task(dirs, r)
        fdir, fname = _dir_and_name(first.rel)
        with dirs.pinned(first.root, fdir) as ffd, t.dir() as dfd:
            unlink_quiet(dfd, t.tmp)
            try:
                os.link(fname, t.tmp, src_dir_fd=ffd, dst_dir_fd=dfd,
                        follow_symlinks=False)
            except FileNotFoundError as exc:
                raise PublishError(f"hard link {dst!r}: its first name "
                                   f"{os.fsdecode(first.dst)!r} is gone",
                                   transfer=self.t.name, path=dst) from exc
            except OSError as exc:
                if exc.errno in (_errno.EXDEV, _errno.EMLINK, _errno.EPERM,
                                 _errno.EOPNOTSUPP):
                    return None
                raise
            crash_point("link.after_temp")
            st = os.stat(t.tmp, dir_fd=dfd, follow_symlinks=False)
            fst = os.stat(fname, dir_fd=ffd, follow_symlinks=False)
            # The same inode; where inode numbers are not stable per inode (FUSE without
            # use_ino) the temp's bytes must have the first name's journaled CRC32C.
            if (not stat.S_ISREG(st.st_mode) or st.st_size != first.size
                    or ((st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino)
                        and not expected_of(first).matches(dfd, t.tmp))):
                unlink_quiet(dfd, t.tmp)
                raise PublishError(f"hard link {dst!r}: its first name "
                                   f"{os.fsdecode(first.dst)!r} is not the published file "
                                   "any more; not linked", transfer=self.t.name, path=dst)
        self.progress.add_bytes(r.size)
        return StageResult(t, first.crc32c, first.size, 0)

    def _stage_link(self, dirs: DirCache, r: FileRow) -> StageResult:
        self._check_fence()
        t = self._task(dirs, r)
        assert r.link is not None
        try:
            with t.dir() as dir_fd:
                unlink_quiet(dir_fd, t.tmp)
                os.symlink(r.link, t.tmp, dir_fd=dir_fd)
                crash_point("stage.after_create_temp")
                if self.opts.metadata:
                    apply_link(dir_fd, t.tmp, r)
        except FileExistsError as exc:
            raise SecurityError(f"temp name {os.fsdecode(t.tmp)!r} was recreated by someone "
                                "else while being replaced; refusing to use it") from exc
        return StageResult(t, crc32c(r.link), len(r.link), len(r.link))

    def _publish(self, group: Sequence[StageResult], already_staged: bool = False,
                 synced: bool = True) -> None:
        """(batched: syncfs) -> new directories recorded -> STAGED commit -> renames ->
        directory fsyncs -> PUBLISHED commit. ``synced``: the engine fsynced each temp
        (else :meth:`_make_durable` does, for the whole batch)."""
        if not group:
            return
        bad_order = planted("commit_after_step")
        late_sync = not synced and planted("rename_before_syncfs")
        self._check_fence()
        if not late_sync:
            self._make_durable([] if synced else [r for r in group if not r.synced],
                               group[0].task.dirs)
        if not already_staged and not bad_order:
            self._commit_staged(group)
        touched: dict[tuple[bytes, bytes], None] = {}
        owners = self._temp_owners()
        with contextlib.ExitStack() as pin:
            # One pin of a directory's fd for each run of files in it (not one per file).
            key: tuple[bytes, bytes] | None = None
            dir_fd = -1
            for res in group:
                t = res.task
                d, name = _dir_and_name(t.row.rel)
                self._check_fence()
                if (t.row.root, d) != key:
                    pin.close()
                    key = (t.row.root, d)
                    dir_fd = pin.enter_context(t.dirs.pinned(*key))
                    touched[key] = None
                self._publish_one(res, dir_fd, name, owners)
        if bad_order:
            self._commit_staged(group)
        self._check_fence()
        dirs = group[0].task.dirs
        for key in touched:
            # Reopened if the fd budget closed it meanwhile: fsync of any fd of the
            # directory makes its entries durable.
            with dirs.pinned(*key) as fd:
                fsync_dir(fd)
        crash_point("publish.after_dir_fsync")
        if late_sync:  # the planted bug: renamed (and named durably) before the syncfs
            self._make_durable(group, dirs)
        self.jdb.set_files(self.t.id, [(r.task.row, _F.PUBLISHED, {}) for r in group],
                           "published")
        crash_point("publish.after_commit")
        self.progress.add_files(sum(r.task.row.kind == "file" for r in group))

    def _make_durable(self, group: Sequence[StageResult], dirs: DirCache) -> None:
        """The batch's durability step, before its STAGED commit (``docs/design.md``,
        "Batched durability"): one ``syncfs`` per filesystem of the batch's temps and of
        the directories created since the last batch; each temp no ``syncfs`` covered
        (another filesystem, or the call failed) reopened and fsynced by itself, which
        names the file an error belongs to; each parent of a new directory not covered
        fsynced once; the new directories committed to ``created_dirs`` in one
        transaction. ``group`` holds the temps not fsynced by the engine (may be empty).

        Raises TransferError naming the file whose fsync failed (nothing of the batch is
        journaled or renamed); the temps stay for resume or cancel."""
        pending = dirs.take_pending()  # taken before the syncfs: it must cover them
        if not group and not pending:
            return
        self._check_fence()
        by_dev: dict[int, list[StageResult]] = {}
        for res in group:
            by_dev.setdefault(self._dev(res.task), []).append(res)
        gs = self._gs
        done: set[int] = set()
        if gs is not None and gs.active:
            failed = set(gs.failed)
            done = gs.sync([*by_dev, *(st.st_dev for *_, st in pending)])
            if done:
                crash_point("stage.after_syncfs")
            for dev in set(gs.failed) - failed:
                self.jdb.record_event(self.t.id, "syncfs-failed",
                                      f"syncfs of device {dev:#x} failed: {gs.failed[dev]}; "
                                      "each file is fsynced by itself from now on")
        for dev, results in by_dev.items():
            if dev not in done:
                for res in results:
                    self._fsync_temp(res)
        self._record_mkdirs(pending, dirs, done)

    def _record_mkdirs(self, pending: Sequence[tuple[bytes, bytes, bytes, os.stat_result]],
                       dirs: DirCache, done: set[int]) -> None:
        """Make directories created since the last batch durable in their parents (once
        per parent; not on a device in ``done``, just synced whole) and record them in
        ``created_dirs`` in one transaction. Thread-safe (engine threads call it before
        an extent commit)."""
        if not pending:
            return
        for key in {(root, prel) for root, prel, _, st in pending if st.st_dev not in done}:
            with dirs.pinned(*key) as fd:
                fsync_dir(fd)
        crash_point("stage.after_mkdir_fsync")
        self.jdb.record_created_dirs(self.t.id, [(path, st.st_dev, st.st_ino)
                                                 for _, _, path, st in pending])

    def _record_mkdirs_quietly(self, dirs: DirCache) -> None:
        """A failing run still records the directories it created (so cancel removes
        them), if the disk and the journal let it; never in place of the run's error."""
        if self.fence.is_set() or not dirs.pending:
            return
        with contextlib.suppress(Exception):
            self._make_durable([], dirs)

    def _dev(self, t: StageTask) -> int:
        """The device of ``t``'s destination directory (where its temp lives)."""
        key = (t.row.root, _dir_and_name(t.row.rel)[0])
        dev = self._dev_of.get(key)
        if dev is None:
            with t.dir() as fd:
                dev = self._dev_of[key] = os.fstat(fd).st_dev
        return dev

    def _fsync_temp(self, res: StageResult) -> None:
        """fsync one staged temp by itself (reopened by name in its directory)."""
        t = res.task
        try:
            with t.dir() as dir_fd:
                fd = os.open(t.tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
                try:
                    fsync_fd(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            dst = os.fsdecode(t.row.dst)
            raise TransferError(
                f"cannot make the staged copy of {dst!r} durable: fsync of its temp "
                f"failed: {exc.strerror or exc}", transfer=self.t.name, path=dst) from exc

    def _publish_one(self, res: StageResult, dir_fd: int, name: bytes,
                     owners: tuple[int, ...]) -> None:
        """Rename one staged temp over its final name (checked before and after)."""
        t = res.task
        try:
            # The temp must still be ours (not swapped for a symlink or another file)
            # just before the rename, and the final name must be that inode after it.
            rename_verified(dir_fd, t.tmp, name, kind=t.row.kind, size=res.size,
                            link=t.row.link, owners=owners)
        except SecurityError as exc:
            exc.add_note(f"transfer {self.t.name!r}, file {os.fsdecode(t.row.dst)!r}")
            raise
        except OSError as exc:
            raise PublishError(
                f"cannot rename staged file into {os.fsdecode(t.row.dst)!r}: "
                f"{exc.strerror}", transfer=self.t.name, path=os.fsdecode(t.row.dst)
            ) from exc
        if planted("rename_before_fsync") and t.row.kind == "file":
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                fsync_fd(fd)
            finally:
                os.close(fd)
        crash_point("publish.after_rename")

    def _temp_owners(self) -> tuple[int, ...]:
        """Who may own a staged temp: us, or (metadata copy as root) the source's owner."""
        me = os.geteuid()
        if not self.opts.metadata or me != 0:
            return (me,)
        if self._owners is None:
            self._owners = (me, *self.jdb.distinct_uids(self.t.id))
        return self._owners

    def _commit_staged(self, group: Sequence[StageResult]) -> None:
        self.jdb.set_files(
            self.t.id,
            [(r.task.row, _F.STAGED, {"crc32c": r.crc32c, "bytes_done": r.size})
             for r in group],
            "staged",
        )
        self.progress.beat()  # the temps' fsyncs returned
        crash_point("stage.after_commit")

    def _publish_dirs(self, dirs: DirCache, rows: list[FileRow]) -> None:
        """Create directories (empty ones included) and give them their final attributes
        (``axlpy._metadata``), deepest first and after their contents, so neither a
        child's creation nor a rename disturbs a directory's mtime afterwards. Without
        metadata copy only the directories this transfer created get their mode (an
        existing one keeps its own, like ``cp -r``); that chmod is not fsynced: lost in a
        power cut, the directory keeps its creation mode (never wider for group and
        others, owner rwx). If the process dies here, the
        rows are not PUBLISHED yet and a resume applies every directory's attributes again."""
        todo = [r for r in rows if r.state is not _F.PUBLISHED]
        if not todo:
            return
        self._check_fence()
        meta = self.opts.metadata
        umask = current_umask()
        todo.sort(key=lambda r: r.rel.count(b"/") if r.rel else -1, reverse=True)
        for r in todo:  # create the empty ones first (journaled in created_dirs)
            dirs.open(r.root, r.rel)
            if len(dirs.pending) >= _GROUP_DIRS:
                self._make_durable([], dirs)
        self._make_durable([], dirs)
        created = {} if meta else {p: (dev, ino) for p, dev, ino
                                   in self.jdb.created_dirs(self.t.id)}
        gs = self._gs
        later: dict[int, list[FileRow]] = {}  # batched: one syncfs per device at the end
        for r in todo:
            fd = dirs.open(r.root, r.rel)
            if meta:
                apply_dir(fd, r, metadata=True, umask=umask)
                crash_point("dirs.after_meta")
                dev = os.fstat(fd).st_dev if gs is not None and gs.active else -1
                if gs is not None and gs.covers(dev):
                    later.setdefault(dev, []).append(r)
                else:
                    fsync_dir(fd)
            elif r.dst in created:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == created[r.dst]:
                    apply_dir(fd, r, metadata=False, umask=umask)
                    crash_point("dirs.after_meta")
        if later and gs is not None:
            done = gs.sync(later)
            if done:
                crash_point("stage.after_syncfs")
            for dev, rs in later.items():
                if dev not in done:  # the syncfs failed: each directory by itself
                    for r in rs:
                        fsync_dir(dirs.open(r.root, r.rel))
        self.jdb.set_files(self.t.id, [(r, _F.PUBLISHED, {}) for r in todo], "dirs-published")

    # -- after RENAMED --------------------------------------------------------------------

    def finish(self, rows: list[FileRow] | None = None) -> None:
        """From RENAMED: delete sources (move mode), then COMPLETED. Idempotent.
        ``rows``: the transfer's rows if the caller holds them (else read)."""
        self._check_fence()
        if self.opts.move:
            self._delete_sources(rows)
        self._move(_T.COMPLETED, "complete", owner=None)
        crash_point("complete.after_commit")

    def _delete_sources(self, rows: list[FileRow] | None = None) -> None:
        """Unlink each source (only if unchanged since dispatch), remove the emptied source
        directories, fsync their parents.

        Every unlink and rmdir is relative to a directory fd: the directory of a source
        the user named is opened by path (symlinks there are the user's), directories
        below a source tree's root are opened with O_NOFOLLOW, so a source directory
        swapped for a symlink cannot make this delete elsewhere; that source is kept and
        an event says why. A followed symlink's target (symlink policy ``follow``) lies
        outside the tree the user named and is never deleted. A row naming a source no
        ``add()`` recorded raises :class:`SecurityError` before anything is deleted.
        """
        if rows is None:
            rows = self.jdb.files(self.t.id)
        adds = _recorded_adds(self.opts)
        lg = self._source_groups()  # names of one source inode, linked or not
        grouped = set(lg) | set(lg.values())
        by_path: dict[bytes, int] = {}
        touched: dict[int, None] = {}
        with DirCache(mkdirs=False) as tree_dirs:
            try:
                places = [(r, self._source_place(r, adds, tree_dirs, by_path)) for r in rows]
                for r, where in places:
                    if r.kind == "dir" or where is None:
                        continue
                    dfd, name = where
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted before a crash
                    same_kind = (stat.S_ISREG(st.st_mode) if r.kind == "file"
                                 else stat.S_ISLNK(st.st_mode))
                    if not same_kind or (r.kind == "file" and identity_changes(r, st)
                                         and not self._only_sibling_unlinked(
                                             r, st, dfd, name, grouped)):
                        # Changed after it was copied: deleting it would lose data.
                        self.jdb.record_event(self.t.id, "move-kept-changed-source",
                                              _show(r.src), r.id)
                        continue
                    os.unlink(name, dir_fd=dfd)
                    touched[dfd] = None
                    crash_point("move.after_unlink")
                # Remove the (now empty) source directories of a moved tree, deepest first.
                dirs = sorted(((r, w) for r, w in places if r.kind == "dir" and w is not None),
                              key=lambda rw: rw[0].src.count(b"/"), reverse=True)
                for _, where in dirs:
                    assert where is not None
                    dfd, name = where
                    try:
                        os.rmdir(name, dir_fd=dfd)
                    except OSError as exc:
                        if exc.errno in (_errno.ENOENT, _errno.ENOTEMPTY, _errno.EEXIST,
                                         _errno.ENOTDIR):
                            continue
                        raise
                    touched[dfd] = None
                for fd in touched:
                    fsync_dir(fd)
            finally:
                for fd in by_path.values():
                    os.close(fd)
        crash_point("move.after_dir_fsync")

    @staticmethod
    def _only_sibling_unlinked(r: FileRow, st: os.stat_result, dfd: int, name: bytes,
                               grouped: set[int]) -> bool:
        """A source with other names in this transfer (a hard-link group) whose only
        identity change is its ctime: deleting another name of the inode moved it. True
        if its bytes still have the journaled CRC32C (re-read), so deleting it loses
        nothing; any other change keeps it."""
        if r.id not in grouped or r.crc32c is None:
            return False
        if [w for w, _ in identity_changes(r, st)] != ["ctime"]:
            return False
        return expected_of(r).matches(dfd, name)

    def _source_place(self, r: FileRow, adds: _Adds | None, tree_dirs: DirCache,
                      by_path: dict[bytes, int]) -> tuple[int, bytes] | None:
        """(directory fd, name) of ``r``'s source, or None to keep it (event recorded)."""
        def named(path: bytes) -> tuple[int, bytes] | None:
            # A path the user named in add(): its directory is opened by path.
            parent, name = os.path.split(path)
            fd = by_path.get(parent)
            if fd is None:
                try:
                    fd = os.open(parent or b"/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                by_path[parent] = fd
            return fd, name

        if adds is None:  # a journal from before add() recorded its sources
            return named(r.src)
        trees, singles = adds
        if r.kind != "dir" and singles.get(r.dst) == r.src:
            return named(r.src)
        src_root = trees.get(r.root)
        if src_root is None:
            raise SecurityError(f"journal row {r.id} names source {_show(r.src)} that no "
                                "add() recorded; refusing to delete it")
        if r.src != (os.path.join(src_root, r.rel) if r.rel else src_root):
            self.jdb.record_event(self.t.id, "move-kept-source", f"{_show(r.src)} is "
                                  "outside the source tree named in add() (a followed "
                                  "symlink's target); not deleted", r.id)
            return None
        if not r.rel:
            return named(src_root)
        d, name = _dir_and_name(r.rel)
        try:
            return tree_dirs.open(src_root, d), name
        except (FileNotFoundError, NotADirectoryError):
            return None
        except SecurityError as exc:
            self.jdb.record_event(self.t.id, "move-kept-source",
                                  f"{_show(r.src)} not deleted: {exc}", r.id)
            return None

    # -- resume ---------------------------------------------------------------------------

    def recover(self, *, recheck_source: bool = True) -> None:
        """Verify what is on disk against the journal, redo what cannot be trusted, and run
        to COMPLETED. The caller has claimed ownership and journaled the takeover.

        Before a temp's verified prefix is kept, its source must still be the file
        dispatch recorded (size, mtime, ctime, inode: :mod:`axlpy._identity`) and, with
        ``recheck_source``, the source's bytes of every kept extent must have the CRC32C
        the journal holds for them; otherwise :class:`SourceChangedError` (naming what
        changed) fails the transfer before anything is published or removed.
        """
        state = self._state()
        if state is _T.RENAMED:
            if not self.opts.move and self._cancel_died_after_renamed():
                # Published files may be gone: never COMPLETED over them. The run's
                # owner (Transfer._start) finishes the cancel on this error.
                raise CancelFinishedOnResume(
                    f"transfer {self.t.name!r} was being cancelled when a process died; "
                    "resume finished the cancel", transfer=self.t.name)
            self.finish()
            return
        with self._failing():
            self._recover(recheck_source)

    def _cancel_died_after_renamed(self) -> bool:
        """Did a cancel begin (``cancel-begin``) after the transfer was RENAMED?"""
        last = {"renamed": -1, "cancel-begin": -1}
        for i, e in enumerate(self.jdb.events(self.t.id)):
            if e["event"] in last:
                last[e["event"]] = i
        return last["cancel-begin"] > last["renamed"]

    def _recover(self, recheck_source: bool) -> None:
        jdb, tid = self.jdb, self.t.id
        # Every PENDING file's source is checked before anything on disk is touched.
        for batch in jdb.file_batches(tid, state=_F.PENDING, kind="file"):
            for r in batch:
                try:
                    st = os.stat(r.src)
                except FileNotFoundError:
                    raise SourceChangedError(
                        f"source {os.fsdecode(r.src)!r} vanished since dispatch; nothing "
                        "of it is published", path=os.fsdecode(r.src),
                        changed=("inode",)) from None
                if not stat.S_ISREG(st.st_mode):  # kind first, as the stager checks it
                    raise BadSourceError(f"source {os.fsdecode(r.src)!r} is no longer a "
                                         "regular file; nothing of it is published")
                check_unchanged(r, st, "since dispatch", "nothing of it is published "
                                "(cancel the transfer, or put the source back)")
        # One pass over the rows, a batch at a time: only the STAGED rows (at most the
        # groups in flight at the crash) and the kept prefixes stay for the run.
        ready: list[FileRow] = []
        renamed: list[FileRow] = []
        info: dict[int, tuple[int, int, int]] = {}
        buf = bytearray(4 << 20)
        verify = self.opts.verify_published
        progress = self.progress
        # Hard-link groups: a first name copied again (reset) makes its later names
        # (higher ids, so in this batch or a later one) links to be made again.
        later = self._link_groups()
        again: set[int] = set()
        with self._dirs() as dirs:
            for batch in jdb.file_batches(tid):
                # One query per batch, not one per PENDING file: which have extents
                extended = jdb.files_with_extents(
                    [r.id for r in batch if r.state is _F.PENDING and r.kind == "file"])
                reset: list[FileRow] = []
                done_bytes = done_files = 0
                last_dir: tuple[bytes, bytes] | None = None
                dfd = -1
                for r in batch:
                    self._check_inside_roots(r)
                    if r.kind == "dir":
                        continue
                    d, _, name = r.rel.rpartition(b"/")
                    if (r.root, d) != last_dir:
                        # The fd stays valid until the next dirs.open (the cache evicts
                        # only when it opens another directory).
                        last_dir = (r.root, d)
                        try:
                            dfd = dirs.open(r.root, d)
                        except (FileNotFoundError, NotADirectoryError):
                            dfd = -1
                    if r.state is _F.PENDING:
                        if dfd >= 0 and r.tmp:
                            kept = (self._verify_extents(r, dfd, buf, recheck_source)
                                    if r.kind == "file" and r.id in extended else None)
                            if kept:
                                info[r.id] = kept
                            elif unlink_quiet(dfd, r.tmp):
                                crash_point("resume.after_remove_temp")
                    elif r.state is _F.STAGED:
                        if dfd >= 0 and r.tmp and self._matches(dfd, r.tmp, r, buf):
                            ready.append(r)
                            progress.add_bytes(r.size)
                        elif dfd >= 0 and self._matches(dfd, name, r, buf):
                            if r.tmp:
                                unlink_quiet(dfd, r.tmp)
                            renamed.append(r)
                            progress.add_bytes(r.size)
                        else:
                            if dfd >= 0 and r.tmp:
                                unlink_quiet(dfd, r.tmp)
                            reset.append(r)
                    elif r.state is _F.PUBLISHED and (
                        not verify or (dfd >= 0 and _published_matches(dfd, name, r, buf))
                    ):
                        # Verified work counts as done, so progress reaches 100%.
                        if r.kind == "file":
                            done_bytes += r.size
                            done_files += 1
                    elif r.state is _F.PUBLISHED:
                        reset.append(r)
                    if later:
                        self._relink_later(r, later, again, ready, renamed, reset)
                if done_files:
                    progress.add_bytes(done_bytes)
                    progress.add_files(done_files)
                if reset:
                    # Committed per batch: the next batch is a new query, so it sees them
                    # PENDING, and the run stages them.
                    jdb.set_files(tid, [(r, _F.PENDING, {"bytes_done": 0}) for r in reset],
                                  "resume-reset")
                    crash_point("resume.after_reset_file")
        self.run(info, ready, renamed)

    @staticmethod
    def _relink_later(r: FileRow, later: Mapping[int, int], again: set[int],
                      ready: list[FileRow], renamed: list[FileRow],
                      reset: list[FileRow]) -> None:
        """After resume looked at ``r``: a later name of a hard-link group whose first
        name is copied again must be linked to the new copy (reset to PENDING, not
        renamed or kept); a reset first name is remembered in ``again``."""
        was_reset = bool(reset) and reset[-1] is r
        if (not was_reset and r.state is not _F.PENDING and later.get(r.id) in again):
            if ready and ready[-1] is r:
                ready.pop()
            elif renamed and renamed[-1] is r:
                renamed.pop()
            reset.append(r)
            was_reset = True
        if was_reset:
            again.add(r.id)

    def _verify_extents(self, r: FileRow, dfd: int, buf: bytearray,
                        recheck_source: bool = True) -> tuple[int, int, int] | None:
        """Keep the prefix of a temp whose journaled extents verify; never trust a byte
        past the last verified extent. Returns (bytes kept, their CRC, next extent).
        With ``recheck_source`` the source's bytes of each kept extent are re-read and
        must match the journaled CRC32C too (SourceChangedError otherwise)."""
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
        if recheck_source:
            self._recheck_source_extents(r, extents[:nxt], buf)
        self.progress.add_bytes(kept)
        return kept, crc, nxt

    def _recheck_source_extents(self, r: FileRow, extents: Sequence[tuple[int, int, int]],
                                buf: bytearray) -> None:
        """The source's bytes of each extent must still have its journaled CRC32C: a
        source rewritten in place with its mtime (and, on a coarse filesystem, ctime)
        unchanged is caught here, before its old prefix is kept."""
        name = os.fsdecode(r.src)
        fd = os.open(r.src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            start = 0
            for idx, length, ecrc in extents:
                got, n = file_crc32c(fd, length, start=start, buf=buf)
                if n != length or got != ecrc:
                    raise SourceChangedError(
                        f"source {name!r} changed since extent {idx} (bytes {start}-"
                        f"{start + length - 1}) was copied: its CRC32C is now {got:#010x}, "
                        f"the journal holds {ecrc:#010x}; the copied prefix is not trusted "
                        "and nothing of it is published", path=name, changed=("content",))
                start += length
        finally:
            os.close(fd)

    def _matches(self, dfd: int, name: bytes, r: FileRow, buf: bytearray) -> bool:
        """Does ``name`` in ``dfd`` hold exactly the bytes journaled for ``r``?"""
        return r.crc32c is not None and expected_of(r).matches(dfd, name, buf=buf)

    # -- cancel ---------------------------------------------------------------------------

    def cancel_on_disk(self) -> CancelReport:
        """Remove every temp the transfer owns, every file it staged or published (verified
        to be still its own) and every directory it created that is empty, fsync the
        directories, then journal what was removed and kept (and why) with CANCELLED.
        Sources are never touched. Idempotent: a crash part-way is finished by cancelling
        again. Returns the :class:`CancelReport`."""
        self._check_fence()
        state = self._state()
        if state is _T.RENAMED and self.opts.move:
            raise UsageError(
                f"transfer {self.t.name!r} already published every file and is deleting "
                "its sources (move mode); cancel would lose data — resume it to finish")
        from ._staging import temp_name

        report = CancelReport(self.t.name)
        report.resumed_attempt = any(e["event"] == "cancel-begin"
                                     for e in self.jdb.events(self.t.id))
        self.jdb.record_event(self.t.id, "cancel-begin", state.value)
        rows = self.jdb.files(self.t.id)
        events: list[tuple[str, str | None, int | None]] = []
        buf = bytearray(4 << 20)
        touched: dict[tuple[bytes, bytes], None] = {}
        skipped: set[tuple[bytes, bytes]] = set()
        # Directories are opened like a run opens them (below each root with O_NOFOLLOW),
        # never created: a directory swapped for a symlink is refused, not followed.
        with DirCache(mkdirs=False, follow_symlinks=self.opts.follow_dst_symlinks,
                      max_open=self.fds.dirs) as dirs:
            for r in rows:
                if r.kind == "dir" or r.state is _F.CANCELLED:
                    continue
                self._check_inside_roots(r)
                d, name = _dir_and_name(r.rel)
                if (r.root, d) in skipped:
                    continue
                try:
                    dfd = dirs.open(r.root, d)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # its directory is gone: nothing of ours is left there
                except SecurityError as exc:
                    # A run never follows that symlink either, so nothing of ours is
                    # behind it: skip it (said in the event log), do not follow it.
                    skipped.add((r.root, d))
                    self.jdb.record_event(self.t.id, "cancel-skipped-symlink", str(exc))
                    continue
                touched[(r.root, d)] = None
                # A temp name lost with the end of the journal is recomputed: the token
                # is random per transfer, so the name is still unmistakably ours.
                tmp = r.tmp or temp_name(name, self.t.token, self.t.id, r.id)
                if unlink_quiet(dfd, tmp):
                    where = os.path.join(os.path.dirname(r.dst), tmp)
                    report.removed_temps.append(os.fsdecode(where))
                    events.append(("cancel-removed-temp", _show(where), r.id))
                    crash_point("cancel.after_unlink_temp")
                why = self._keep_reason(dfd, name, r, buf)
                if why is None:
                    unlink_quiet(dfd, name)
                    report.removed.append(os.fsdecode(r.dst))
                    events.append(("cancel-removed", _show(r.dst), r.id))
                    crash_point("cancel.after_unlink_final")
                elif why:
                    report.kept[os.fsdecode(r.dst)] = why
                    events.append(("cancel-kept", f"{_show(r.dst)}: {why}", r.id))
            for key in self._remove_created_dirs(dirs, report, events):
                touched[key] = None
            for key in touched:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    fsync_dir(dirs.open(*key))
            crash_point("cancel.after_dir_fsync")
        self.jdb.record_events(self.t.id, events)
        self.jdb.set_files(self.t.id, [(r, _F.CANCELLED, {}) for r in rows
                                       if r.state is not _F.CANCELLED], "cancel-files")
        self._move(_T.CANCELLED, "cancel", owner=None, detail=report.summary())
        crash_point("cancel.after_commit")
        return report

    def _keep_reason(self, dfd: int, name: bytes, r: FileRow, buf: bytearray) -> str | None:
        """None: the final name holds this transfer's bytes (remove it); "": nothing there;
        else why the file under the final name is kept."""
        try:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return ""
        if r.state in (_F.STAGED, _F.PUBLISHED) and r.crc32c is not None:
            if self._matches(dfd, name, r, buf):
                return None
            if r.state is _F.PUBLISHED:
                return ("its content differs from what this transfer wrote (changed after "
                        "it was published); not removed")
            return ("its content differs from what this transfer staged (the rename had "
                    "not happened, or it was changed since); not removed")
        return ("the journal has no checksum for it (never staged as far as the journal "
                "knows), so it cannot be told from a file that was there before; "
                "not removed")

    def _remove_created_dirs(self, dirs: DirCache, report: CancelReport,
                             events: list[tuple[str, str | None, int | None]]
                             ) -> list[tuple[bytes, bytes]]:
        """rmdir each directory recorded in ``created_dirs`` that is empty and still the
        inode that was created, deepest first; returns the parents to fsync."""
        roots = [os.fsencode(r) for r in self.opts.roots]
        parents: list[tuple[bytes, bytes]] = []
        created = self.jdb.created_dirs(self.t.id)
        for path, dev, ino in sorted(created, key=lambda c: c[0].count(b"/"), reverse=True):
            place = _created_dir_place(path, roots)
            show = _show(path)
            if place is None:
                # Only the journal can name such a path: never act on it.
                events.append(("cancel-kept-dir", f"{show}: outside the recorded "
                               "destination roots; not removed", None))
                report.kept_dirs[os.fsdecode(path)] = "outside the recorded destination roots"
                continue
            root, prel, name = place
            try:
                pfd = dirs.open(root, prel)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue  # already gone
            except SecurityError as exc:
                events.append(("cancel-kept-dir", f"{show}: {exc}", None))
                report.kept_dirs[os.fsdecode(path)] = str(exc)
                continue
            why = None
            if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISDIR(st.st_mode):
                why = "replaced since this transfer created it; not removed"
            else:
                try:
                    os.rmdir(name, dir_fd=pfd)
                except OSError as exc:
                    if exc.errno == _errno.ENOENT:
                        continue
                    if exc.errno not in (_errno.ENOTEMPTY, _errno.EEXIST):
                        raise
                    why = "not empty (it holds entries this cancel did not remove)"
            if why is not None:
                events.append(("cancel-kept-dir", f"{show}: {why}", None))
                report.kept_dirs[os.fsdecode(path)] = why
                continue
            report.removed_dirs.append(os.fsdecode(path))
            events.append(("cancel-removed-dir", show, None))
            crash_point("cancel.after_rmdir")
            parents.append((root, prel))
        return parents


def _created_dir_place(path: bytes, roots: Sequence[bytes]
                       ) -> tuple[bytes, bytes, bytes] | None:
    """``(root, parent rel, name)`` to reach created directory ``path``: below a recorded
    root it is walked from that root (O_NOFOLLOW); a recorded root or one of its
    ancestors (created because the user named it) is reached from its parent by path,
    as the run created it. None for any other path (refused)."""
    if not path.startswith(b"/") or os.path.normpath(path) != path or path == b"/":
        return None
    parent, name = os.path.split(path)
    for root in roots:
        if root == path or root.startswith(path + b"/"):
            return parent, b"", name
    for root in sorted(roots, key=len, reverse=True):
        if path.startswith(root + b"/"):
            return root, os.path.dirname(path[len(root) + 1:]), name
    return None


#: how a resume opens a published file to verify it: never following a symlink, never
#: blocking on a FIFO swapped in under the name
_VERIFY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _published_matches(dfd: int, name: bytes, r: FileRow, buf: bytearray) -> bool:
    """``Expected.matches`` for a PUBLISHED row, with the syscalls a resume over 100k
    files can afford: a regular file is opened (not followed, not blocking on a FIFO)
    and checked on its fd (kind, size, CRC32C); a symlink goes the general way."""
    if r.kind != "file":
        return r.crc32c is not None and expected_of(r).matches(dfd, name, buf=buf)
    if r.crc32c is None:
        return False
    try:
        fd = os.open(name, _VERIFY_FLAGS, dir_fd=dfd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != r.size:
            return False
        got, n = file_crc32c(fd, r.size, buf=buf)
    except OSError:
        return False
    finally:
        os.close(fd)
    return n == r.size and got == r.crc32c


class CancelFinishedOnResume(TransferCancelledError):
    """Resume found a cancel that died after RENAMED: the run's owner finishes the cancel
    and reports this error (resume did not complete the transfer)."""


class _Abandoned(TransferCancelledError):
    """Raised in an abandoned run at its next step: it must write nothing more."""

    def __init__(self, name: str) -> None:
        super().__init__(f"transfer {name!r}: this run was abandoned (stalled and "
                         "cancelled); it stopped before its next step", transfer=name)


class _Fenced:
    """The journal as one driver writes it: each write checks the driver's fence first,
    so an abandoned run cannot commit anything once its stuck call returns."""

    _WRITES = frozenset({"set_state", "set_files", "record_event", "add_extents", "claim",
                         "pause", "unpause", "record_created_dirs"})

    def __init__(self, jdb: JournalDB, fence: threading.Event, name: str) -> None:
        self._jdb = jdb
        self._fence = fence
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._jdb, attr)
        if attr not in self._WRITES:
            return value

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self._fence.is_set():
                raise _Abandoned(self._name)
            return value(*args, **kwargs)

        return guarded


class _RowName:
    """``journal row <id> ('<dst>')`` for messages, formatted only when one is made."""

    __slots__ = ("row",)

    def __init__(self, row: FileRow) -> None:
        self.row = row

    def __str__(self) -> str:
        return f"journal row {self.row.id} ({os.fsdecode(self.row.dst)!r})"


#: (tree adds: destination root -> source root, single adds: destination -> source)
_Adds = tuple[dict[bytes, bytes], dict[bytes, bytes]]


def _recorded_adds(opts: Options) -> _Adds | None:
    """The sources each ``add()`` named, as recorded in the transfer's options."""
    recorded = opts.adds
    if recorded is None:
        return None
    trees: dict[bytes, bytes] = {}
    singles: dict[bytes, bytes] = {}
    for src, dst, kind in recorded:
        # The first add wins: a later entry for the same destination is one whose rows
        # were rejected (or never committed, after a crash).
        (trees if kind == "dir" else singles).setdefault(os.fsencode(dst), os.fsencode(src))
    return trees, singles


def _show(p: bytes) -> str:
    """A path for messages and events: quoted, any byte sequence kept printable and
    encodable (an invalid UTF-8 byte shows as ``\\udcXX``), so SQLite and JSON take it."""
    return repr(os.fsdecode(p))


def _transitions_from(state: TransferState) -> Iterable[TransferState]:
    from ._state import TRANSITIONS

    return TRANSITIONS[state]


def dispatch_rows(rows: Sequence[DispatchRow], token: str, tid: int
                  ) -> tuple[list[FileDispatch], list[LinkDispatch]]:
    """What dispatch journals of a batch of rows, in one pass: for each regular file its
    source's identity as of dispatch (one ``stat``: size, mtime, mode, ctime, inode,
    device; :mod:`axlpy._identity`) and its temp name, for each symlink its temp name.
    Raises BadSourceError naming a source that vanished or changed kind since add().
    Temp names are bytearray: sqlite3 binds that without the adapter lookup it makes
    for each bytes value (stored as the same BLOB)."""
    from ._errors import BadSourceError

    files: list[FileDispatch] = []
    links: list[LinkDispatch] = []
    isreg = stat.S_ISREG
    for fid, kind, src, rel in rows:
        if kind == "dir":
            continue
        if type(src) is not bytes or type(rel) is not bytes:  # a row edited by hand
            src, rel = os.fsencode(src), os.fsencode(rel)
        tmp = bytearray(temp_name(rel.rpartition(b"/")[2], token, tid, fid))
        if kind != "file":
            links.append((tmp, fid))
            continue
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise BadSourceError(f"source {os.fsdecode(src)!r} vanished before "
                                 "dispatch") from None
        if not isreg(st.st_mode):
            raise BadSourceError(f"source {os.fsdecode(src)!r} is no longer a file")
        files.append((st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ctime_ns,
                      st.st_ino, st.st_dev, tmp, fid))
    return files, links
