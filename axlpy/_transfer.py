"""The Pythonic API: ``Journal`` holds transfers; ``Transfer`` is create/add/dispatch/
test/wait/cancel/resume/free.

Each public operation's docstring says what is on disk if it raises or the process dies
during it. The short version: a destination path holds either what it held before or the
complete, verified file, and ``Journal(path).open(name).resume()`` or ``.cancel()`` in a
new process finishes the job from the journal alone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._boundary import ErrorContext, public_api
from ._cancel import CancelReport
from ._config import Options, default_journal_path, effective_options
from ._errors import (
    AxlError,
    InvalidTransitionError,
    StalledError,
    TransferCancelledError,
    UsageError,
)
from ._journal import DispatchRow, FileDispatch, FileRow, JournalDB, LinkDispatch, TransferRow
from ._lease import HEARTBEAT, Owner
from ._retry import InterventionController, RetryPolicy, call_persistently
from ._sources import DST, KIND, ROOT, SRC, Limits, walk_source
from ._stall import EV_ABANDON, EV_STALL, EV_STALL_CLEARED, StallInfo, Watchdog
from ._state import FileState, TransferState, TransferType

if TYPE_CHECKING:
    # The engines, IO queues and the driver are imported by the calls that run a
    # transfer, not by a program that only reads the journal (``axlpy ls``: issue 14.5).
    from ._admission import AdmissionStats
    from ._driver import Driver, Progress
    from ._verify import VerifyReport
    from .engines import Engine
    from .io import IOQueue

#: builds the IO queue of one engine thread from the queue depth (tests, embedders)
QueueFactory = Callable[[int], "IOQueue"]

__all__ = ["FileStatus", "Journal", "Options", "Owner", "Transfer", "TransferStatus",
           "TransferType"]

_T = TransferState


@dataclass(frozen=True)
class TransferStatus:
    """A snapshot of one transfer, from the journal (and live counters if running here)."""

    name: str
    type: str
    state: TransferState
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate: float
    error: str | None
    owner: str | None
    created_ns: int
    updated_ns: int
    running: bool
    #: set while the transfer is STALLED (no progress past its ``stall_timeout``)
    stall: StallInfo | None = None
    #: the owner as journaled (``owner`` is its ``pid@host``); None: nobody owns it
    owner_process: Owner | None = None
    #: move mode: sources are deleted once every file is published
    move: bool = False

    @property
    def live(self) -> bool:
        """Is some process (possibly on another host) working on the transfer now?"""
        if self.state.is_final or self.owner_process is None:
            return False
        return self.owner_process.alive() is not False


@dataclass(frozen=True)
class FileStatus:
    """One journal file row, for status displays."""

    kind: str
    src: str
    dst: str
    state: FileState
    size: int
    bytes_done: int
    crc32c: int | None
    error: str | None
    #: the destination directory the user named, and ``dst`` relative to it
    root: str = ""
    rel: str = ""
    #: the temp's full path (beside ``dst``) once dispatch assigned it, else None
    tmp: str | None = None
    #: a symlink's target
    link: str | None = None

    @classmethod
    def from_row(cls, r: FileRow) -> FileStatus:
        tmp = os.path.join(os.path.dirname(r.dst), r.tmp) if r.tmp else None
        return cls(r.kind, os.fsdecode(r.src), os.fsdecode(r.dst), r.state, r.size,
                   r.size if r.state in (FileState.STAGED, FileState.PUBLISHED)
                   else r.bytes_done, r.crc32c, r.error, os.fsdecode(r.root),
                   os.fsdecode(r.rel), None if tmp is None else os.fsdecode(tmp),
                   None if r.link is None else os.fsdecode(r.link))


def _fs(p: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> bytes:
    b = os.fsencode(p)
    if b"\x00" in b:
        raise UsageError("path contains a NUL byte")
    return os.path.abspath(b)


# Transfers running in this process, by (journal, name): a second handle must not race.
_RUNNING: dict[tuple[str, str], Transfer] = {}
_RUNNING_LOCK = threading.Lock()


@public_api
class Journal:
    """One journal file holding many transfers.

    Opening checks the file: a non-SQLite file, a truncated or corrupt journal, a foreign
    or newer schema raise :class:`~axlpy.JournalError` and the file is left untouched. A
    missing file is created (mode 0600) unless ``create=False``; several processes may
    create it at once.

    Many processes and threads may use one journal at once (each write is one
    ``BEGIN IMMEDIATE`` transaction); a writer waits up to ``busy_timeout`` seconds
    (default ``$AXLPY_JOURNAL_BUSY_TIMEOUT``, else 30) for the others, then raises
    :class:`~axlpy.JournalBusyError` having changed nothing. No ``sqlite3`` or bare
    ``OSError`` escapes any method: each is mapped to an :class:`~axlpy.AxlError`
    (:class:`~axlpy.JournalFullError` when the journal's filesystem is full).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True,
                 allow_shared: bool | None = None, busy_timeout: float | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path) if path is not None
                                    else default_journal_path())
        self.busy_timeout = _busy_timeout(busy_timeout)
        if allow_shared is None:
            allow_shared = os.environ.get("AXLPY_ALLOW_SHARED_JOURNAL", "") == "1"
        self.db = JournalDB(self.path, create=create, allow_shared=allow_shared,
                            busy_timeout=self.busy_timeout)

    def _error_context(self, op: str) -> ErrorContext:
        return ErrorContext(getattr(self, "path", "?"), getattr(self, "busy_timeout", None),
                            op=op)

    def create(self, name: str, type: TransferType | str = TransferType.DEFAULT, *,
               on_progress: Callable[[Progress], None] | None = None,
               queue_factory: QueueFactory | None = None,
               step: int | None = None,
               **options: Any) -> Transfer:
        """Create an empty transfer named ``name`` (unique in this journal).

        ``step`` (the application's step) is recorded with the options and becomes the
        checkpoint's step when :func:`axlpy.commit_checkpoint` commits it.

        ``options`` override :func:`axlpy.config` defaults: ``move``, ``metadata``,
        ``mkdirs``, ``symlinks`` (copy/follow/refuse), ``follow_dst_symlinks``,
        ``chunk_size``, ``extent_size``, ``workers``, ``queue``, ``verify_published``,
        ``hard_links`` (default True: names of one source inode become hard links of one
        copy), ``retry`` (a table of ``retry.*`` keys, see docs/retry.md).
        ``on_progress(progress)`` is called from the engine's threads as bytes and files
        are done (at most every 0.1 s for bytes). ``queue_factory(depth)`` overrides the
        IO queue of every engine thread in this process (not journaled: a resume
        elsewhere uses the ``queue`` option). On disk: one committed row, state CREATED.
        """
        if not name or "\x00" in name:
            raise UsageError("a transfer name must be a non-empty string without NUL")
        from .engines import check_type

        ttype = _type_name(type)
        check_type(ttype)  # an unknown type fails now, not at dispatch
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise UsageError(f"step must be an integer, not {step!r}")
        opts = effective_options(options, step=step)
        # os.urandom is what secrets.token_hex reads; secrets imports hashlib and hmac,
        # which load OpenSSL (start-up time)
        tid = self.db.create_transfer(name, ttype, os.urandom(4).hex(), opts)
        return Transfer(self, self.db.transfer_by_id(tid), on_progress, queue_factory)

    def open(self, name: str, *,
             on_progress: Callable[[Progress], None] | None = None,
             queue_factory: QueueFactory | None = None) -> Transfer:
        """Open an existing transfer by name, whatever its type (read from the journal)."""
        row = self.db.transfer(name)
        if row is None:
            raise UsageError(f"no transfer named {name!r} in journal {self.path!r}")
        with _RUNNING_LOCK:
            live = _RUNNING.get((self.path, name))
        if live is not None:
            return live
        return Transfer(self, row, on_progress, queue_factory)

    def transfers(self) -> list[TransferStatus]:
        """Every transfer in the journal, oldest first."""
        return [Transfer(self, r).status() for r in self.db.transfers()]

    def names(self) -> list[str]:
        return [r.name for r in self.db.transfers()]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _busy_timeout(value: float | None) -> float:
    if value is None:
        env = os.environ.get("AXLPY_JOURNAL_BUSY_TIMEOUT", "")
        if not env:
            return 30.0
        try:
            value = float(env)
        except ValueError:
            raise UsageError(
                f"AXLPY_JOURNAL_BUSY_TIMEOUT={env!r} is not a number of seconds"
            ) from None
    if not value >= 0:
        raise UsageError(f"busy_timeout must be >= 0 seconds, not {value!r}")
    return float(value)


def _type_name(t: TransferType | str) -> str:
    try:
        return TransferType(str(t).lower()).value
    except ValueError:
        raise UsageError(
            f"unknown transfer type {t!r}; choose from {[x.value for x in TransferType]}"
        ) from None


#: signals a terminal or a job scheduler sends to the whole process (SIGINT is Ctrl-C)
_ASYNC_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                            signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM})


@contextlib.contextmanager
def _async_signals_blocked() -> Iterator[None]:
    """Block process-directed signals in this thread while the block runs; threads
    started inside inherit the block for their whole life.

    Why: CPython runs signal handlers only in the main thread, but the kernel may hand a
    process-directed signal to any thread that does not block it. When a busy worker
    thread takes SIGINT, the C-level handler only sets a flag; the main thread, asleep
    in ``wait()``, is never woken (no EINTR) and raises KeyboardInterrupt only once the
    copy has ended. With the workers blocking these signals, the kernel must deliver them
    to the main thread, whose wait is interrupted at once.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@public_api
class Transfer:
    """One transfer. Obtain it from :meth:`Journal.create` or :meth:`Journal.open`."""

    def __init__(self, journal: Journal, row: TransferRow,
                 on_progress: Callable[[Progress], None] | None = None,
                 queue_factory: QueueFactory | None = None) -> None:
        self.journal = journal
        self._row = row
        self._on_progress = on_progress
        self._queue_factory = queue_factory
        self._controller: InterventionController | None = None
        self._progress: Progress | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        # Set (with _cancel) by interrupt(): stop at the next chunk but undo nothing.
        self._interrupted = False
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._engine: Engine | None = None
        #: admission counters of the run started last in this process
        self._admission: AdmissionStats | None = None
        #: what the transfer's own thread removed and kept when it was cancelled live
        self._cancel_report: CancelReport | None = None
        # Stall handling: the current stall (None when moving), the running driver, and
        # one condition that both the end of the run and a stall notify.
        self._stall: StallInfo | None = None
        self._run_driver: Driver | None = None
        self._run_ended: threading.Event | None = None
        self._watchdog: Watchdog | None = None
        self._cond = threading.Condition()
        self._abandoned = False

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._row.name

    @property
    def type(self) -> str:
        return self._row.type

    @property
    def state(self) -> TransferState:
        """The state as committed in the journal now."""
        return self.journal.db.transfer_by_id(self._row.id).state

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _error_context(self, op: str) -> ErrorContext:
        def resumable() -> bool:
            state = self.journal.db.transfer_by_id(self._row.id).state
            return state not in (_T.CREATED, _T.COMPLETED, _T.CANCELLED)

        journal = getattr(self, "journal", None)
        row = getattr(self, "_row", None)
        return ErrorContext(getattr(journal, "path", "?"), getattr(journal, "busy_timeout", None),
                            row.name if row is not None else None, resumable, op)

    @property
    def options(self) -> Options:
        """The transfer's options as stored in the journal now."""
        return self._refresh().options

    def set_options(self, options: Options) -> None:
        """Replace the stored options (one durable transaction). Only while CREATED: a
        dispatched transfer's options are what a resume relies on."""
        row = self._refresh()
        if row.state is not _T.CREATED:
            raise InvalidTransitionError(f"set options of transfer {self.name!r}",
                                         row.state.value, "changed (only while CREATED)")
        self.journal.db.set_options(row.id, options)

    def record_event(self, event: str, detail: str | None = None) -> None:
        """Append ``event`` (with ``detail``) to the transfer's event log (durable)."""
        self.journal.db.record_event(self._row.id, event, detail)

    def _refresh(self) -> TransferRow:
        self._row = self.journal.db.transfer_by_id(self._row.id)
        return self._row

    # -- add ------------------------------------------------------------------------------

    def add(self, src: str | os.PathLike[str] | bytes, dst: str | os.PathLike[str] | bytes,
            *, limits: Limits | None = None) -> int:
        """Add a file, a symlink or a directory tree (empty directories included).

        ``dst`` is the full destination path (for a directory: the directory to create or
        fill). Returns the number of entries added. On disk: nothing but one committed
        transaction of PENDING rows and the destination root — all of this add's entries
        or none of them (so after :class:`~axlpy.JournalFullError` nothing was added).
        Raises :class:`~axlpy.BadSourceError` for a missing, unreadable or special source,
        a source equal to (or containing) its destination, or a file whose destination is
        an existing directory; :class:`~axlpy.UsageError` for a destination added twice.
        """
        row = self._refresh()
        if row.state is not _T.CREATED:
            raise InvalidTransitionError(f"add to transfer {self.name!r}", row.state.value,
                                         "add (only while CREATED)")
        s, d = _fs(src), _fs(dst)
        opts = row.options
        walk = walk_source(s, d, symlinks=opts.symlinks, limits=limits or Limits())
        first = next(walk)
        # Record the destination root (resume never writes outside the recorded roots)
        # and what this add named (move mode deletes only inside it) in the same
        # transaction as the rows: all of it or nothing.
        root = os.fsdecode(first[ROOT])
        add = (os.fsdecode(first[SRC]), os.fsdecode(first[DST]), first[KIND])
        new = opts.replace(roots=opts.roots if root in opts.roots else (*opts.roots, root),
                           adds=(*(opts.adds or ()), add))
        # The rest of the walk is streamed into the insert: its rows are never all held
        # (issue 14.4).
        return self.journal.db.add_files(row.id, itertools.chain((first,), walk),
                                         options=new)

    # -- dispatch -------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Start copying. SYNC returns when done; background types return at once.

        First, in one transaction: record each source's size and mtime, assign each file
        its temp name, set the owner, and commit DISPATCHED. Then stage and publish (see
        docs/design.md). If the process dies at any point after that commit, the journal
        and the temps are enough to resume or cancel; no partial file is ever under a
        final name. A source that vanished since add() raises BadSourceError and leaves
        the transfer CREATED. A failure while copying journals FAILED (resumable).
        """
        row = self._refresh()
        if row.state is not _T.CREATED:
            raise InvalidTransitionError(f"transfer {self.name!r}", row.state.value,
                                         _T.DISPATCHED.value)
        if not self.journal.db.count_files(row.id):
            raise UsageError(f"transfer {self.name!r} has no files; add() some first")
        from ._driver import dispatch_rows

        def prepare(batch: list[DispatchRow]) -> tuple[list[FileDispatch],
                                                       list[LinkDispatch]]:
            # Each batch of rows read inside the dispatch transaction gets its dispatch
            # stat and temp names; the run reads them back a batch at a time, so 100k
            # rows are never held (issue 14.4).
            return dispatch_rows(batch, row.token, row.id)  # stats now, raises now

        self.journal.db.dispatch(row.id, owner=Owner.me(row.options.lease_timeout),
                                 name=self.name, prepare=prepare)
        from ._crashpoints import crash_point

        crash_point("dispatch.after_commit")
        self._start(lambda d: d.run())

    def _driver(self) -> Driver:
        from ._admission import AdmissionStats, AdmittedIOQueue, BoundedAdmission
        from ._driver import Driver, Progress
        from .engines import get_engine
        from .io import open_default_queue, open_queue

        row = self._refresh()
        _, bt, _, ft = self.journal.db.progress(row.id)
        # DEFAULT's engine is chosen here only, from what is measured to matter
        engine = get_engine(row.type, files=ft, nbytes=bt,
                            roots=row.options.roots)
        self._engine = engine
        self._progress = Progress(bytes_total=bt, files_total=ft,
                                  callback=self._on_progress)
        qname = row.options.queue or engine.queue_name
        depth = row.options.queue_depth
        factory = self._queue_factory
        stats = self._admission = AdmissionStats()

        def make_queue() -> IOQueue:
            # Every queue an engine uses submits through admission control: at most
            # the queue's depth in flight, bigger batches split, failed submissions
            # rolled back (docs/backends.md). Its counters are this run's ``stats``.
            if factory is not None:
                inner = factory(depth)
            elif qname == "default":
                inner = open_default_queue(depth)
            else:
                inner = open_queue(qname, depth=depth)
            return AdmittedIOQueue(inner, BoundedAdmission(inner.depth), stats)

        driver = Driver(self.journal.db, row, engine, make_queue, self._progress,
                        self._cancel, admission=stats)
        driver.retry = self._make_retry(row, driver)
        return driver

    def _make_retry(self, row: TransferRow,
                    driver: Driver) -> Callable[[Callable[[], int], str], int]:
        """Every engine read and write runs under the transfer's retry policy; a pause
        and its end are journaled by the driver (:meth:`Driver.on_pause`)."""
        policy = RetryPolicy.from_config({"retry": dict(row.options.retry)})
        controller = InterventionController.from_policy(policy)
        self._controller = controller
        name = self.name

        def retry(fn: Callable[[], int], what: str) -> int:
            return call_persistently(fn, policy=policy, what=what, controller=controller,
                                     on_pause=driver.on_pause, on_resume=driver.on_resume,
                                     transfer=name)

        return retry

    def intervene(self, action: str) -> None:
        """Answer a transfer paused by the retry policy (intervention mode).

        ``"continue"`` starts a fresh round of attempts for every paused operation (the
        failing chunk is redone at its offset; verified work is kept); ``"cancel"`` is
        :meth:`cancel`. Never blocks for ``"continue"``. From another process, write the
        word to the flag file (``retry.flag_file``) instead.
        """
        if action == "cancel":
            self.cancel()
            return
        if action != "continue":
            raise UsageError(f"intervene() takes 'continue' or 'cancel', not {action!r}")
        if self._controller is None or not self.running:
            raise UsageError(f"transfer {self.name!r} is not running in this process")
        self._controller.resume()

    def _start(self, body: Callable[[Driver], None]) -> None:
        driver = self._driver()
        key = (self.journal.path, self.name)
        with _RUNNING_LOCK:
            if key in _RUNNING and _RUNNING[key] is not self:
                raise UsageError(f"transfer {self.name!r} is already running in this "
                                 "process")
            _RUNNING[key] = self
        self._cancel.clear()
        self._interrupted = False
        self._done.clear()
        self._error = None
        self._stall = None
        self._abandoned = False
        self._run_driver = driver
        ended = self._run_ended = threading.Event()
        watchdog = self._watchdog = Watchdog(
            self.name, self._row.options.stall_timeout,
            lambda: driver.progress.last_beat, self._watched_paths, ended, self._on_stall)

        # Renew this process's lease while the transfer runs here (docs/design.md).
        owner = self._row.owner if self._row.owner == Owner.me() else None

        def target() -> None:
            if owner is not None:
                HEARTBEAT.hold(self.journal.db, self._row.id, owner)
            try:
                try:
                    body(driver)
                except TransferCancelledError as cancelled:
                    # cancel(), or an operator's "cancel" through the flag file: this
                    # thread owns the transfer, so it undoes it on disk itself (unless
                    # the run was abandoned: then the reaper does, once this has ended).
                    if (self.state is not _T.CANCELLED and not self._interrupted
                            and not driver.fence.is_set()):
                        self._cancel_report = driver.cancel_on_disk()
                    from ._driver import CancelFinishedOnResume

                    if isinstance(cancelled, CancelFinishedOnResume):
                        self._error = cancelled  # resume() / wait() must not look done
            except BaseException as exc:
                if not driver.fence.is_set():
                    self._error = exc
            finally:
                ended.set()
                watchdog.join()  # no thread of this run outlives it
                HEARTBEAT.drop(self.journal.db, self._row.id)
                with _RUNNING_LOCK:
                    _RUNNING.pop(key, None)
                with self._cond:
                    # An abandoned run does not end the transfer: the reaper does.
                    if not self._abandoned:
                        self._done.set()
                    self._cond.notify_all()

        watchdog.start()

        if driver.engine.background:
            self._thread = threading.Thread(target=target, name=f"axlpy:{self.name}",
                                            daemon=True)
            with _async_signals_blocked():
                self._thread.start()  # it, and every thread it starts, inherit the mask
        else:
            target()
            if driver.fence.is_set():
                raise TransferCancelledError(f"transfer {self.name!r} was cancelled while "
                                             "stalled; this run was abandoned",
                                             transfer=self.name)
            self._raise_error()

    def _watched_paths(self) -> list[str]:
        """Where this transfer's files are: destination roots and added sources."""
        opts = self._row.options
        return [*opts.roots, *(a[0] for a in opts.adds or ())]

    def _on_stall(self, info: StallInfo | None) -> None:
        """From the watchdog: journal the change, wake wait() and cancel()."""
        with self._cond:
            self._stall = info
            self._cond.notify_all()
        try:
            if info is None:
                self.journal.db.record_event(self._row.id, EV_STALL_CLEARED, None)
            else:
                self.journal.db.record_event(self._row.id, EV_STALL, info.to_json())
        except AxlError:
            pass  # the report is best effort; the condition above is what callers see

    def _stalled_error(self, info: StallInfo) -> StalledError:
        return StalledError(f"transfer {self.name!r} is stalled: {info.describe()}",
                            transfer=self.name, op=info.op, path=info.path,
                            seconds=info.seconds)

    def _raise_error(self) -> None:
        """Raise the background error exactly once (it is cleared before raising)."""
        err, self._error = self._error, None
        if err is not None:
            raise err

    # -- test / wait ----------------------------------------------------------------------

    def test(self) -> bool:
        """Never blocks. True once COMPLETED; False while running (or not started).

        Raises the error that ended the transfer, exactly once (then returns False; the
        journal says FAILED). Raises TransferCancelledError if it was cancelled.
        """
        if not self._done.is_set():
            return False
        self._raise_error()
        state = self.state
        if state is _T.CANCELLED:
            raise TransferCancelledError(f"transfer {self.name!r} was cancelled",
                                         transfer=self.name)
        return state is _T.COMPLETED

    def wait(self, timeout: float | None = None, *, raise_on_stall: bool = False) -> None:
        """Block until the transfer ends, or raise TimeoutError after ``timeout`` seconds
        (the transfer keeps running). Raises the transfer's error exactly once; returns
        quietly for a CANCELLED transfer (unlike C AXL, so ``stop()`` works). Ctrl-C
        (KeyboardInterrupt) ends the wait at once, even while the copy is busy: the
        transfer's threads block process-directed signals, so the main thread gets them.

        With ``raise_on_stall``, raise :class:`~axlpy.StalledError` (op, path, seconds)
        as soon as the transfer is stalled — no progress for its ``stall_timeout`` —
        instead of blocking on; the transfer keeps running and nothing is written but the
        journal's ``stall`` event. ``cancel()`` then returns at once."""
        if raise_on_stall:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                with self._cond:
                    if not self._cond.wait_for(
                            lambda: self._done.is_set() or self._stall is not None, left):
                        raise TimeoutError(f"transfer {self.name!r} still running after "
                                           f"{timeout}s")
                if self._done.is_set():
                    break
                # Name what is blocked *now* (the watchdog's report may be a beat old);
                # moving again means the watchdog is about to clear it: wait on.
                dog = self._watchdog
                fresh = dog.check() if dog is not None else self._stall
                if fresh is not None:
                    raise self._stalled_error(fresh)
                with self._cond:
                    self._cond.wait_for(lambda: self._done.is_set() or self._stall is None,
                                        dog.timeout / 4 if dog is not None else None)
        if not self._done.wait(timeout):
            raise TimeoutError(f"transfer {self.name!r} still running after {timeout}s")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_error()
        state = self.state
        if state in (_T.DISPATCHED, _T.RENAMED, _T.CREATED, _T.PAUSED):
            raise UsageError(f"transfer {self.name!r} is {state.value} and not running in "
                             "this process; resume() it")

    def interrupt(self, timeout: float | None = None) -> None:
        """Stop a transfer running in this process at its next chunk, undoing nothing
        (what Ctrl-C does in ``axlpy cp``); blocks until it stopped (TimeoutError after
        ``timeout`` seconds). A no-op when it is not running here.

        On disk: as after a crash at that point. The journal keeps its last committed
        state (DISPATCHED, owned by this process), temps keep their verified prefix, and
        no partial file is under a final name. ``resume()`` (here, or in any process once
        this one has exited) finishes it; ``cancel()`` undoes it. A transfer that was
        already publishing its last files may complete instead.
        """
        if not self.running:
            return
        self._interrupted = True
        self._cancel.set()
        if not self._done.wait(timeout):
            raise TimeoutError(f"transfer {self.name!r} still running after {timeout}s")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None and not isinstance(err, TransferCancelledError):
            raise err

    # -- resume / cancel / free -----------------------------------------------------------

    def resume(self, *, force: bool = False, recheck_source: bool = True) -> None:
        """Finish a transfer after a crash or failure, from the journal alone.

        Takes ownership (OwnershipError if another live process owns it; ``force`` takes
        over one whose owner runs on another host), verifies every staged and published
        file against its journaled size and CRC32C, redoes what it cannot trust (keeping
        temps whose journaled extents verify), finishes renames and completes. A source
        changed since dispatch (size, mtime, ctime, inode or device) fails the transfer
        with :class:`SourceChangedError` naming the file and what changed, before
        anything of it is published. With ``recheck_source`` (the default) the source's
        bytes of every extent a kept temp prefix holds are re-read and compared with the
        journaled CRC32C too, which catches a rewrite that left even the ctime unchanged
        (coarse timestamps); ``False`` skips that read and trusts the identity check.
        Returns like dispatch: SYNC when done, background types at once. A COMPLETED
        transfer is left alone. If this fails or the process dies, the journal and the
        temps are as before (FAILED or DISPATCHED; resume or cancel again).
        """
        row = self._refresh()
        if row.state is _T.COMPLETED:
            return
        if row.state in (_T.CREATED, _T.CANCELLED):
            raise InvalidTransitionError(f"resume transfer {self.name!r}", row.state.value,
                                         "resumed (dispatch it first)"
                                         if row.state is _T.CREATED else "resumed")
        if self.running:
            raise UsageError(f"transfer {self.name!r} is running; wait() for it")
        self.journal.db.claim(row.id, self.name, force=force)
        if row.state in (_T.FAILED, _T.PAUSED):
            self.journal.db.set_state(row.id, row.state, _T.DISPATCHED, event="resume",
                                      name=self.name)
        else:
            self.journal.db.record_event(row.id, "resume", row.state.value)
        from ._crashpoints import crash_point

        crash_point("resume.after_takeover")
        self._start(lambda d: d.recover(recheck_source=recheck_source))

    def cancel(self, *, force: bool = False) -> CancelReport:
        """Stop the transfer and undo it on disk; idempotent, safe after a crash.

        Stops a running transfer here within about one chunk, then removes every temp
        file it owns, every file it published (only if still byte-for-byte its own) and
        every directory it created that is now empty, fsyncs the directories and commits
        CANCELLED with one event per entry removed or kept. Sources are never touched.
        Once a move-mode transfer is RENAMED (sources being deleted) cancel is refused:
        resume it. If the process dies part-way, cancel again (or resume) finishes the
        job (what the dead attempt removed is not listed again).

        Returns:
            A :class:`CancelReport`: what was removed, what was kept and why (empty for a
            transfer that was already CANCELLED).
        """
        self._cancel_report = None
        row = self._refresh()
        if row.state is _T.CANCELLED:
            return CancelReport(self.name)
        if row.state is _T.COMPLETED:
            raise InvalidTransitionError(f"cancel transfer {self.name!r}", row.state.value,
                                         _T.CANCELLED.value)
        if self.running:
            self._cancel.set()
            if self._controller is not None:
                self._controller.cancel()  # wakes operations paused or in backoff
            with self._cond:
                self._cond.wait_for(lambda: self._done.is_set() or self._stall is not None
                                    or self._abandoned)
                if not self._done.is_set():
                    # Stalled: the cleanup runs once the stuck call returned (reaper);
                    # its report is then what wait() ends with. Nothing removed yet.
                    self._abandon()
                    return CancelReport(self.name)
            self._done.wait()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
            err, self._error = self._error, None
            if err is not None and not isinstance(err, TransferCancelledError):
                # It failed on its own before noticing the cancel; cancel still applies.
                pass
        row = self._refresh()
        if row.state is _T.CANCELLED:
            return self._cancel_report or CancelReport(self.name)
        if row.state is _T.CREATED and not self.journal.db.count_files(row.id):
            self.journal.db.set_state(row.id, _T.CREATED, _T.CANCELLED, event="cancel",
                                      name=self.name)
            return CancelReport(self.name)
        if row.state is _T.COMPLETED:
            raise InvalidTransitionError(f"cancel transfer {self.name!r}", row.state.value,
                                         _T.CANCELLED.value)
        # CREATED with rows too: a journal whose last commits were lost (a cut WAL) may
        # say CREATED while temps and files of the run are on disk.
        self.journal.db.claim(row.id, self.name, force=force)
        return self._driver().cancel_on_disk()

    def _abandon(self) -> None:
        """Cancel of a stalled run (called holding ``_cond``): fence the stuck run, journal
        ``abandon`` and leave the cleanup to a reaper thread that first waits for the run
        to end. The transfer stays owned by this process until then (docs/design.md)."""
        if self._abandoned:
            return
        driver, info = self._run_driver, self._stall
        assert driver is not None
        driver.fence.set()
        self._abandoned = True
        detail = info.describe() if info else "stalled"
        self.journal.db.record_event(self._row.id, EV_ABANDON,
                                     f"stuck thread abandoned by cancel: {detail}")
        ended = self._run_ended
        assert ended is not None

        def reap() -> None:
            try:
                ended.wait()  # the stuck call returned and the fence stopped the run
                if self.state not in (_T.CANCELLED, _T.COMPLETED):
                    self._cancel_report = self._driver().cancel_on_disk()
            except BaseException as exc:
                self._error = exc
            finally:
                with self._cond:
                    self._done.set()
                    self._cond.notify_all()

        self._thread = threading.Thread(target=reap, name=f"axlpy-reaper:{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel if running or unfinished, wait, and free. For AXL_Stop. A transfer that
        another handle already freed is left alone."""
        if self.journal.db.transfer(self.name) is None:
            return
        state = self.state
        if state not in (_T.COMPLETED, _T.CANCELLED):
            self.cancel()
        self.free()

    def free(self) -> None:
        """Remove the transfer's rows from the journal. Only when COMPLETED or CANCELLED
        (or never dispatched); otherwise InvalidTransitionError, so a resumable transfer
        is never forgotten."""
        row = self._refresh()
        if self.running:
            raise UsageError(f"transfer {self.name!r} is running; wait() or cancel() first")
        if row.state not in (_T.COMPLETED, _T.CANCELLED, _T.CREATED):
            raise InvalidTransitionError(f"free transfer {self.name!r}", row.state.value,
                                         "freed (only COMPLETED, CANCELLED or CREATED)")
        self.journal.db.delete_transfer(row.id)

    # -- inspection -----------------------------------------------------------------------

    def admission_stats(self) -> AdmissionStats:
        """What admission control did for this transfer: the counters of every run
        recorded in the journal (one ``admission`` event per run, written when its
        staging ends), plus those of a run still staging in this process."""
        from ._admission import AdmissionStats

        total = AdmissionStats.total(self.journal.db.events(self._row.id))
        live = self._admission
        if live is not None and not live.recorded:
            total.add(**live.as_dict())
        return total

    def status(self) -> TransferStatus:
        """A snapshot: state and progress (live counters when running here)."""
        row = self._refresh()
        b, bt, f, ft = self.journal.db.progress(row.id)
        rate = 0.0
        p = self._progress
        if p is not None and self.running:
            b, f, rate = max(b, p.bytes_done), max(f, p.files_done), p.rate
        owner = f"{row.owner.pid}@{row.owner.host}" if row.owner else None
        return TransferStatus(row.name, row.type, row.state, f, ft, b, bt, rate, row.error,
                              owner, row.created_ns, row.updated_ns, self.running,
                              self._stall if self.running else None, row.owner,
                              row.options.move)

    def files(self, states: Iterable[FileState] | None = None) -> list[FileStatus]:
        """Per-file detail from the journal (only rows in ``states`` if given)."""
        return [FileStatus.from_row(r) for r in self.journal.db.files(self._row.id, states)]

    def iter_files(self, states: Iterable[FileState] | None = None,
                   limit: int | None = None) -> Iterator[FileStatus]:
        """Like :meth:`files`, at most ``limit``, read from the journal in batches as the
        caller iterates (a 100,000-file transfer is streamed, not held in memory). Do not
        change the transfer through this journal until the iterator is exhausted."""
        for r in self.journal.db.iter_files(self._row.id, states, limit):
            yield FileStatus.from_row(r)

    def count_files(self, states: Iterable[FileState] | None = None) -> int:
        """How many entries (files, directories, symlinks) the transfer has, only those
        in ``states`` if given."""
        return self.journal.db.count_files(self._row.id, states)

    def summary(self, problems: int = 5) -> dict[str, Any]:
        """Aggregates for a status display, whatever the number of files: ``states``
        (state name -> count), ``kinds`` (kind -> count), ``errors`` (how many entries have
        an error recorded), ``problems`` (the first ``problems`` of them, as
        :class:`FileStatus`) and ``dispatched_ns`` (when the transfer was first
        dispatched, or None)."""
        agg = self.journal.db.file_summary(self._row.id, problems)
        return {"states": agg["states"], "kinds": agg["kinds"], "errors": agg["errors"],
                "problems": [FileStatus.from_row(r) for r in agg["problems"]],
                "dispatched_ns": self.journal.db.first_event_ns(self._row.id, "dispatch")}

    def verify(self) -> VerifyReport:
        """Re-read every file this transfer published and compare it with the journal's
        size, CRC32C, kind and symlink target (see :class:`~axlpy.VerifyReport`). Reads
        only; changes nothing."""
        from ._verify import verify_transfer

        return verify_transfer(self)

    @property
    def owner(self) -> Owner | None:
        """The process journaled as working on the transfer now (None: nobody)."""
        return self._refresh().owner

    def events(self) -> list[dict[str, Any]]:
        """The transfer's event log (oldest first)."""
        return self.journal.db.events(self._row.id)

    def __repr__(self) -> str:
        return f"<Transfer {self.name!r} {self._row.type} {self._row.state.value}>"


def wait_all(transfers: list[Transfer], timeout: float | None = None) -> None:
    """Wait for several transfers; raise the first error after all have ended."""
    deadline = None if timeout is None else time.monotonic() + timeout
    first: AxlError | None = None
    for t in transfers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            t.wait(left)
        except AxlError as exc:
            first = first or exc
    if first is not None:
        raise first
