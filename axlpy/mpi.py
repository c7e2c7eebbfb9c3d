"""Collective transfers over an MPI communicator, with one all-or-nothing global commit.

Like C AXL's ``AXL_*_comm``: every rank transfers its own files with its own journal
(``<journal_dir>/rank-<r>.db``; never one SQLite file shared by ranks; by default
``journal_dir`` is node-local, :func:`default_journal_dir`), and each
collective call returns the *agreement* of all ranks: it succeeds everywhere or raises
:class:`CollectiveError` everywhere, naming each failed rank and its error.

The checkpoint directory becomes valid only when every rank's transfer is COMPLETED: then
``Barrier``, every rank's file list (from its journal: size, CRC32C) is gathered to rank 0,
rank 0 writes the commit marker (:mod:`axlpy._manifest`: temp, fsync, rename, directory
fsync), the outcome is broadcast, ``Barrier``. ``docs/mpi.md`` is the full protocol.

``mpi4py`` is imported only when no communicator is passed (for ``COMM_WORLD``);
``import axlpy`` never imports it. The communicator is only used from the calling thread.

Failure policy (``on_failure``, stored in every rank's journal at create):

- ``"keep"`` (default): no marker; each rank lets its transfer settle (finish or fail)
  and leaves it resumable. A later ``CommTransfer.open(...).resume()`` (or
  :func:`finish`) completes the failed ranks, skips the finished ones, and commits. Every
  :meth:`CommTransfer.add` is recorded in the rank's journal *before* it runs, so a rank
  whose ``add()`` failed (a missing source) replays its recorded adds on resume: fix the
  source and re-run the job.
- ``"cancel"``: no marker; every rank cancels (temps and the files it published removed,
  each verified to be still its own by size and CRC32C). A cancelled checkpoint is gone.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import AxlError, InvalidTransitionError, UsageError
from ._lifecycle import RetentionPolicy
from ._manifest import (
    MARKER,
    CheckResult,
    InvalidCheckpointError,
    Manifest,
    ManifestEntry,
    build_manifest,
    check_checkpoint,
    latest_valid_checkpoint,
    read_manifest,
    write_manifest,
)
from ._sources import Limits
from ._state import FileState, TransferState
from ._transfer import FileStatus, Journal, Transfer, TransferType

__all__ = [
    "MARKER",
    "CheckResult",
    "CollectiveError",
    "CommTransfer",
    "InvalidCheckpointError",
    "Manifest",
    "RankCountError",
    "RetentionPolicy",
    "StragglerTimeoutError",
    "check_checkpoint",
    "default_journal_dir",
    "finish",
    "journal_path",
    "latest_valid_checkpoint",
    "pending_names",
    "read_manifest",
]

_T = TransferState
_R = TypeVar("_R")
#: An ``mpi4py.MPI.Comm`` (typed loosely so this module needs no MPI to type-check).
Comm = Any
ON_FAILURE = ("keep", "cancel")
_RANK_FILE = re.compile(r"^rank-(\d+)\.db$")
_EV_COMMIT = "mpi.commit"
_EV_DISCARD = "mpi.discard"


class CollectiveError(AxlError):
    """A collective call failed on at least one rank; raised on **every** rank.

    ``failures`` maps each failed rank to its error (``"Type: message"``); ``op`` is the
    call. On the rank that failed, ``__cause__`` is the original exception. No commit
    marker was written; what each rank's transfer holds then depends on the failure
    policy, which the message states.
    """

    def __init__(self, op: str, failures: Mapping[int, str], size: int,
                 note: str = "") -> None:
        self.op = op
        self.failures = dict(failures)
        lines = "; ".join(f"rank {r}: {m}" for r, m in sorted(self.failures.items()))
        super().__init__(f"{op} failed on {len(self.failures)} of {size} ranks: {lines}"
                         + (f". {note}" if note else ""))


class StragglerTimeoutError(AxlError, TimeoutError):
    """A collective :meth:`CommTransfer.wait` timed out; raised on every rank.

    ``slow_ranks`` lists the ranks whose transfer was still running, ``progress`` their
    ``(bytes_done, bytes_total)``. Nothing was stopped: the transfers keep running, and
    ``wait()``, ``test()`` or ``cancel()`` may be called again (collectively).
    """

    def __init__(self, slow: Mapping[int, tuple[int, int]], timeout: float, size: int) -> None:
        self.slow_ranks = sorted(slow)
        self.progress = dict(slow)
        self.timeout = timeout
        detail = ", ".join(f"rank {r} ({d}/{t} bytes)" for r, (d, t) in sorted(slow.items()))
        super().__init__(f"{len(slow)} of {size} ranks still transferring after "
                         f"{timeout}s: {detail}")


class RankCountError(UsageError):
    """A transfer created by a job of ``recorded`` ranks was opened by ``current`` ranks.

    Nothing was changed. Re-run with ``recorded`` ranks, or finish it from one process
    with :func:`axlpy.mpi.finish` (journal directory and transfer name).
    """

    def __init__(self, name: str, recorded: int, current: int, journal_dir: str) -> None:
        self.recorded = recorded
        self.current = current
        super().__init__(
            f"transfer {name!r} was created by {recorded} ranks but this job has {current}; "
            f"re-run with {recorded} ranks, or finish it from one process: "
            f"axlpy.mpi.finish({journal_dir!r}, {name!r}) "
            f"(python -m axlpy.mpi finish {journal_dir} {name})")


def default_journal_dir() -> str:
    """Where rank journals go when no ``journal_dir`` is given: ``$AXLPY_MPI_JOURNAL_DIR``,
    else node-local ``${TMPDIR:-/tmp}/axlpy-<uid>/mpi``. Node-local is the safe default
    for SQLite (docs/mpi.md, "Where the journals go"); a job that must resume on other
    nodes passes a shared ``journal_dir`` instead (then each journal is held by one
    process at a time, see :mod:`axlpy._fstype`)."""
    env = os.environ.get("AXLPY_MPI_JOURNAL_DIR")
    if env:
        return os.path.abspath(env)
    import tempfile

    base = os.path.join(tempfile.gettempdir(), f"axlpy-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        st = os.lstat(base)
        # In a shared /tmp, only a private directory of ours may hold our journals.
        if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.getuid() \
                or st.st_mode & 0o077:
            raise UsageError(f"{base!r} is not a private directory of uid {os.getuid()}; "
                             "pass journal_dir= or set AXLPY_MPI_JOURNAL_DIR") from None
    return os.path.join(base, "mpi")


def journal_path(journal_dir: str | os.PathLike[str] | None, rank: int) -> str:
    """The journal file of ``rank``: ``<journal_dir>/rank-<rank>.db`` (``journal_dir``
    None: :func:`default_journal_dir`)."""
    d = default_journal_dir() if journal_dir is None else os.fspath(journal_dir)
    return os.path.join(os.path.abspath(d), f"rank-{rank}.db")


def _world(comm: Comm | None) -> Comm:
    if comm is not None:
        return comm
    from mpi4py import MPI  # lazy: only a caller that wants COMM_WORLD needs mpi4py

    return MPI.COMM_WORLD


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _agree(comm: Comm, fn: Callable[[], _R]) -> tuple[_R | None, dict[int, str],
                                                      Exception | None]:
    """Run ``fn`` here, then agree: returns (result, {rank: error} for every rank, local
    exception). Every rank takes part even if ``fn`` raised, so none is left waiting."""
    result: _R | None = None
    err: Exception | None = None
    try:
        result = fn()
    except Exception as exc:  # any error must reach the other ranks, not hang them
        err = exc
    msgs = comm.allgather(None if err is None else _describe(err))
    return result, {r: m for r, m in enumerate(msgs) if m is not None}, err


@dataclass(frozen=True)
class _Local:
    """One rank's answer to a poll."""

    status: str  # "done" | "running" | "failed"
    error: str | None
    bytes_done: int
    bytes_total: int
    expired: bool = False


class CommTransfer:
    """One rank's part of a collective transfer. Make it with :meth:`create` or
    :meth:`open` on every rank of ``comm``; every method except :meth:`add` and
    :meth:`local_status` is collective (call it on every rank, in the same order).

    ``transfer`` is this rank's :class:`axlpy.Transfer`, ``journal`` its journal.
    """

    def __init__(self, comm: Comm, journal: Journal, transfer: Transfer,
                 checkpoint_dir: str, on_failure: str, meta: Mapping[str, Any]) -> None:
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.journal = journal
        self.transfer = transfer
        self.checkpoint_dir = checkpoint_dir
        self.on_failure = on_failure
        self.meta = dict(meta)
        self.manifest: Manifest | None = None
        self._deferred: Exception | None = None
        self._error: str | None = None  # sticky: test() raises a transfer error only once

    @property
    def name(self) -> str:
        return self.transfer.name

    # -- create / open ---------------------------------------------------------------------

    @classmethod
    def create(cls, comm: Comm | None, name: str,
               type: TransferType | str = TransferType.DEFAULT, *,
               journal_dir: str | os.PathLike[str] | None = None,
               checkpoint_dir: str | os.PathLike[str], on_failure: str = "keep",
               meta: Mapping[str, Any] | None = None,
               on_progress: Callable[[Any], None] | None = None,
               step: int | None = None, retention: RetentionPolicy | None = None,
               **options: Any) -> CommTransfer:
        """Collective: create transfer ``name`` in every rank's own journal.

        Every file a rank adds must land inside ``checkpoint_dir`` (the same path on every
        rank, on the shared filesystem). ``meta`` (JSON) is copied into the commit marker.
        ``step`` (the application's step) is written into the marker and orders
        checkpoints (``latest``, :func:`axlpy.restore_point`, prune). After the commit,
        rank 0 moves the ``_AXLPY_LATEST.json`` pointer in the checkpoint's parent
        directory and, with ``retention``, prunes it (:func:`axlpy.prune`; the rank
        journals in ``journal_dir`` are consulted for live transfers). Step and retention
        are recorded in every rank's journal, so a resumed flush commits the same way.
        ``options`` are those of :meth:`axlpy.Journal.create`.
        ``journal_dir`` defaults to the node-local :func:`default_journal_dir`; pass a
        directory on the shared filesystem if a restart on other nodes must resume.

        On disk: one CREATED row per rank journal, holding the rank, the rank count, the
        checkpoint directory and the failure policy. If any rank fails, the ranks that
        created theirs free it again and :class:`CollectiveError` is raised everywhere;
        a job that dies part-way leaves CREATED rows that :meth:`open` + :meth:`cancel`
        or :meth:`free` clean up.
        """
        comm = _world(comm)
        rank, size = comm.Get_rank(), comm.Get_size()
        ckpt = os.path.abspath(os.fspath(checkpoint_dir))
        jdir = os.path.dirname(journal_path(journal_dir, rank))
        views = comm.allgather((name, ckpt))

        def local() -> tuple[Journal, Transfer]:
            if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
                raise UsageError(f"step must be an integer, not {step!r}")
            if on_failure not in ON_FAILURE:
                raise UsageError(f"on_failure must be one of {ON_FAILURE}, not {on_failure!r}")
            if len(set(views)) != 1:
                raise UsageError(f"ranks disagree on (name, checkpoint_dir): {sorted(set(views))}")
            j = Journal(journal_path(jdir, rank))
            try:
                t = j.create(name, type, on_progress=on_progress, **options)
                t.set_options(t.options.replace(mpi={
                    "rank": rank, "size": size, "checkpoint_dir": ckpt,
                    "on_failure": on_failure, "meta": dict(meta or {}), "step": step,
                    "retention": None if retention is None else retention.to_json()}))
            except BaseException:
                j.close()
                raise
            return j, t

        made, failures, err = _agree(comm, local)
        if failures:
            if made is not None:
                made[1].free()
                made[0].close()
            raise CollectiveError("create", failures, size) from err
        assert made is not None
        return cls(comm, made[0], made[1], ckpt, on_failure, meta or {})

    @classmethod
    def open(cls, comm: Comm | None, name: str, *,
             journal_dir: str | os.PathLike[str] | None = None,
             on_progress: Callable[[Any], None] | None = None) -> CommTransfer:
        """Collective: open ``name`` in every rank's journal (for resume, cancel, free).

        Reads only. Raises :class:`RankCountError` on every rank if the transfer was
        created by a different number of ranks, :class:`CollectiveError` if a rank's
        journal or transfer is missing.
        """
        comm = _world(comm)
        rank, size = comm.Get_rank(), comm.Get_size()
        jdir = os.path.dirname(journal_path(journal_dir, rank))

        def local() -> tuple[Journal, Transfer, Mapping[str, Any]]:
            j = Journal(journal_path(jdir, rank), create=False)
            try:
                t = j.open(name, on_progress=on_progress)
                info = t.options.mpi
                if info is None:
                    raise UsageError(f"transfer {name!r} in {j.path!r} was not created "
                                     "through axlpy.mpi")
            except BaseException:
                j.close()
                raise
            return j, t, info

        got, failures, err = _agree(comm, local)
        recorded = comm.allgather(None if got is None else int(got[2]["size"]))
        wrong = {r for r in recorded if r is not None and r != size}
        if wrong:
            if got is not None:
                got[0].close()
            raise RankCountError(name, min(wrong), size, jdir) from err
        if failures:
            if got is not None:
                got[0].close()
            raise CollectiveError("open", failures, size) from err
        assert got is not None
        j, t, info = got
        if int(info["rank"]) != rank:
            raise UsageError(f"{j.path} holds rank {info['rank']}'s transfer, not {rank}'s")
        return cls(comm, j, t, str(info["checkpoint_dir"]), str(info["on_failure"]),
                   info.get("meta") or {})

    # -- add (local) ------------------------------------------------------------------------

    def add(self, src: str | os.PathLike[str] | bytes, dst: str | os.PathLike[str] | bytes,
            *, limits: Limits | None = None) -> int:
        """Local (not collective): add a file or tree of this rank; ``dst`` must be inside
        the checkpoint directory.

        An error here is *not* raised: it is remembered and raised by the next
        :meth:`dispatch` on every rank (as :class:`CollectiveError` naming this rank), so
        no rank is left waiting in a collective. Returns the number of entries added
        (0 after an error). On disk: the add (source, destination, limits) is first
        recorded in this rank's journal, then as :meth:`axlpy.Transfer.add`; an add that
        failed stays recorded, and :meth:`resume` replays it (so re-running the job after
        fixing the source completes the checkpoint).
        """
        if self._deferred is not None:
            return 0
        try:
            d = os.path.abspath(os.fsdecode(dst))
            if os.path.commonpath([d, self.checkpoint_dir]) != self.checkpoint_dir:
                raise UsageError(f"destination {d!r} is outside the checkpoint directory "
                                 f"{self.checkpoint_dir!r}")
            if d == os.path.join(self.checkpoint_dir, MARKER):
                raise UsageError(f"{MARKER} is reserved for the commit marker")
            lim = limits or Limits()
            _record_add(self.transfer, os.path.abspath(os.fsdecode(src)), d, lim)
            return self.transfer.add(src, dst, limits=lim)
        except Exception as exc:
            self._deferred = exc
            return 0

    # -- running this rank's part ---------------------------------------------------------

    def _start(self, body: Callable[[], None]) -> None:
        """Run ``body`` (dispatch or resume): every type but SYNC copies in the
        background, so the collective calls stay non-blocking; SYNC copies here."""
        self._error = None
        body()

    def _settle(self) -> None:
        """Block (locally) until this rank's transfer is no longer running."""
        while self.transfer.running:
            time.sleep(0.01)

    def local_status(self) -> _Local:
        """Local, never blocks: this rank's status ("done", "running", "failed")."""
        st = self.transfer.status()
        if self._error is None:
            try:
                if self.transfer.test():
                    return _Local("done", None, st.bytes_total, st.bytes_total)
            except Exception as exc:
                self._error = _describe(exc)
        if self._error is not None:
            return _Local("failed", self._error, st.bytes_done, st.bytes_total)
        if self.transfer.running:
            return _Local("running", None, st.bytes_done, st.bytes_total)
        state = self.transfer.state
        if state is _T.COMPLETED:
            return _Local("done", None, st.bytes_total, st.bytes_total)
        why = f"transfer is {state.value} and not running" + (
            f" ({st.error})" if st.error else "")
        return _Local("failed", why, st.bytes_done, st.bytes_total)

    # -- dispatch / resume --------------------------------------------------------------------

    def dispatch(self) -> None:
        """Collective: every rank dispatches its transfer.

        Background types return at once (``test``/``wait`` commit); SYNC returns when
        this rank's copy is done. On disk: as :meth:`axlpy.Transfer.dispatch` per rank.
        If any rank fails (including an error remembered by :meth:`add`), the failure
        policy is applied and :class:`CollectiveError` is raised on every rank.
        """
        def local() -> None:
            if self._deferred is not None:
                raise self._deferred
            self._start(self.transfer.dispatch)

        _, failures, err = _agree(self.comm, local)
        if failures:
            self._fail("dispatch", failures, err)

    def resume(self, *, force: bool = False) -> None:
        """Collective: finish after a crash or failure, from each rank's journal.

        A rank whose transfer is COMPLETED does nothing; CREATED replays the recorded
        adds that did not happen (an ``add()`` that failed) and is dispatched; anything
        else resumes (verifying what it finds, see :meth:`axlpy.Transfer.resume`). Then
        call :meth:`wait`, which commits once all ranks agree. A checkpoint already
        committed is left as it is; one that was cancelled raises everywhere.

        Ownership: a rank's transfer whose owner is dead (gone on this node, or its lease
        expired wherever it ran) is taken over; one owned by a process on another node
        whose lease is still fresh raises ``OwnershipError`` (inside the CollectiveError)
        unless ``force`` — pass it when the job that owned it is known dead (the
        scheduler ended it) and this job restarts on other nodes.
        """
        def local() -> None:
            self._check_not_discarded()
            state = self.transfer.state
            if state is _T.COMPLETED:
                return
            if state is _T.CANCELLED:
                raise InvalidTransitionError(f"resume transfer {self.name!r}", state.value,
                                             "resumed (it was cancelled)")
            if state is _T.CREATED:
                _replay_adds(self.transfer)
                self._start(self.transfer.dispatch)
            else:
                self._start(lambda: self.transfer.resume(force=force))

        _, failures, err = _agree(self.comm, local)
        if failures:
            self._fail("resume", failures, err)

    def _check_not_discarded(self) -> None:
        if any(e["event"] == _EV_DISCARD for e in self.transfer.events()):
            raise InvalidTransitionError(f"resume transfer {self.name!r}", "COMPLETED",
                                         "resumed (its files were discarded by a cancel)")

    # -- test / wait / commit -----------------------------------------------------------------

    def test(self) -> bool:
        """Collective, never blocks: True once every rank COMPLETED and the commit marker
        is written (this call writes it when the last rank is done). False while any rank
        is still running. If a rank failed, applies the failure policy and raises
        :class:`CollectiveError` everywhere."""
        if self.manifest is not None:
            return True
        return self._round(expired=False)

    def wait(self, timeout: float | None = None, *, poll: float = 0.05) -> Manifest:
        """Collective, may block: wait until every rank COMPLETED, commit, return the
        manifest now on disk.

        Polls this rank's transfer without blocking and agrees with the others every
        ``poll`` seconds, so a slow rank cannot hang the rest: after ``timeout`` seconds
        :class:`StragglerTimeoutError` is raised on every rank naming the ranks still
        running (which keep running). A rank failure applies the failure policy and
        raises :class:`CollectiveError` everywhere; no marker is written.
        """
        if self.manifest is not None:
            return self.manifest
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            expired = deadline is not None and time.monotonic() >= deadline
            if self._round(expired=expired, timeout=timeout):
                assert self.manifest is not None
                return self.manifest
            time.sleep(poll)

    def _round(self, *, expired: bool, timeout: float | None = None) -> bool:
        me = self.local_status()
        me = _Local(me.status, me.error, me.bytes_done, me.bytes_total, expired)
        everyone: list[_Local] = self.comm.allgather(me)
        failed = {r: s.error or "failed" for r, s in enumerate(everyone) if s.status == "failed"}
        if failed:
            self._fail("transfer", failed, None)
        if all(s.status == "done" for s in everyone):
            self._commit()
            return True
        if any(s.expired for s in everyone):
            slow = {r: (s.bytes_done, s.bytes_total) for r, s in enumerate(everyone)
                    if s.status != "done"}
            raise StragglerTimeoutError(slow, timeout or 0.0, self.size)
        return False

    def _entries(self) -> list[ManifestEntry]:
        return rank_entries(self.journal, self.transfer, self.rank, self.checkpoint_dir)

    def _commit(self) -> None:
        """Barrier; gather every rank's entries to rank 0; rank 0 writes the marker;
        broadcast the outcome; Barrier. Raises CollectiveError everywhere if it failed."""
        comm = self.comm
        comm.Barrier()
        try:
            mine: list[ManifestEntry] | str = self._entries()
        except Exception as exc:
            mine = _describe(exc)
        gathered = comm.gather(mine, root=0)
        outcome: tuple[str, Any]
        if self.rank == 0:
            bad = {r: g for r, g in enumerate(gathered) if isinstance(g, str)}
            if bad:
                outcome = ("failed", bad)
            else:
                try:
                    info = self.transfer.options.mpi or {}
                    m = build_manifest(self.name, self.size,
                                       (e for g in gathered for e in g), self.meta,
                                       step=info.get("step"))
                    outcome = ("ok", write_manifest(self.checkpoint_dir, m))
                except Exception as exc:
                    outcome = ("failed", {0: f"writing the commit marker: {_describe(exc)}"})
                else:
                    _after_commit(self.checkpoint_dir, info,
                                  os.path.dirname(self.journal.path))
        else:
            outcome = ("", None)
        outcome = comm.bcast(outcome, root=0)
        comm.Barrier()
        if outcome[0] != "ok":
            # Every transfer is COMPLETED; only the marker is missing: wait() again (or
            # finish()) retries the commit.
            raise CollectiveError("commit", outcome[1], self.size,
                                  "every rank COMPLETED but no commit marker was written; "
                                  "wait() again to retry the commit")
        self.manifest = outcome[1]
        self.transfer.record_event(_EV_COMMIT, os.path.join(self.checkpoint_dir, MARKER))

    # -- failure policy / cancel / free -------------------------------------------------------

    def _fail(self, op: str, failures: Mapping[int, str], cause: BaseException | None) -> None:
        """Apply the failure policy on this rank, then raise CollectiveError (everywhere:
        every rank calls this with the same ``failures``)."""
        if self.on_failure == "cancel":
            try:
                self._cancel_local()
                note = "policy 'cancel': every rank cancelled its transfer; no marker"
            except Exception as exc:
                note = (f"policy 'cancel': this rank's cancel failed ({_describe(exc)}); "
                        "call cancel() again")
        else:
            self._settle()
            self.local_status()  # collect a background error so it is not raised later
            note = ("policy 'keep': no marker; transfers left resumable "
                    f"(CommTransfer.open(comm, {self.name!r}, journal_dir=...).resume())")
        raise CollectiveError(op, failures, self.size, note) from cause

    def _cancel_local(self) -> None:
        state = self.transfer.state
        if state is _T.COMPLETED:
            self._discard_completed()
        elif state is not _T.CANCELLED:
            try:
                self.transfer.cancel()
            except InvalidTransitionError:
                # It finished publishing before it saw the cancel: discard it like any
                # other COMPLETED rank's transfer.
                if self.transfer.state is not _T.COMPLETED:
                    raise
                self._discard_completed()
        self._error = None

    def _discard_completed(self) -> None:
        """Remove the files a COMPLETED transfer published that are still its own (size
        and CRC32C), fsync their directories, journal the discard. The transfer stays
        COMPLETED (the state table has no way back), and resume refuses it."""
        from ._durable import Expected, unlink_verified
        from ._errors import SecurityError
        from ._staging import DirCache, fsync_dir

        rows = [r for r in self.transfer.files()
                if r.state is FileState.PUBLISHED and r.kind != "dir"]
        buf = bytearray(4 << 20)
        touched: dict[int, None] = {}
        removed = 0
        # Through directory fds walked with O_NOFOLLOW below each recorded root, like the
        # driver's cancel: a directory swapped for a symlink cannot redirect an unlink.
        with DirCache(mkdirs=False) as dirs:
            for r in rows:
                parent, name = os.path.split(os.fsencode(r.rel))
                try:
                    dfd = dirs.open(os.fsencode(r.root), parent)
                    link = None if r.link is None else os.fsencode(r.link)
                    ok = unlink_verified(dfd, name, Expected(r.kind, r.size, r.crc32c, link),
                                         buf=buf)
                except (OSError, SecurityError):
                    continue
                if ok:
                    removed += 1
                    touched[dfd] = None
            for dfd in touched:
                fsync_dir(dfd)
        self.transfer.record_event(_EV_DISCARD, f"{removed} of {len(rows)} files removed")

    def _marker_exists(self) -> bool:
        exists = None
        if self.rank == 0:
            exists = os.path.exists(os.path.join(self.checkpoint_dir, MARKER))
        return bool(self.comm.bcast(exists, root=0))

    def cancel(self) -> None:
        """Collective: stop and undo the whole checkpoint on every rank.

        Refused everywhere (UsageError) once the commit marker exists: a committed
        checkpoint is deleted by removing its directory, not cancelled. Otherwise every
        rank cancels its transfer (temps and published files removed, verified) or, if it
        had COMPLETED, removes its published files the same way. A crash part-way:
        cancel again.
        """
        if self._marker_exists():
            raise UsageError(f"checkpoint {self.checkpoint_dir!r} is committed; delete the "
                             "directory instead of cancelling")
        _, failures, err = _agree(self.comm, self._cancel_local)
        if failures:
            raise CollectiveError("cancel", failures, self.size) from err

    def free(self) -> None:
        """Collective: remove the transfer from every rank's journal and close it.

        Only once committed (marker written) or cancelled: a COMPLETED but uncommitted
        transfer is what :func:`finish` needs, so it is never forgotten silently.
        """
        committed = self.manifest is not None or self._marker_exists()

        def local() -> None:
            state = self.transfer.state
            if state is _T.COMPLETED and not committed and not any(
                    e["event"] == _EV_DISCARD for e in self.transfer.events()):
                raise InvalidTransitionError(f"free transfer {self.name!r}", state.value,
                                             "freed before the global commit")
            self.transfer.free()

        _, failures, err = _agree(self.comm, local)
        if failures:
            raise CollectiveError("free", failures, self.size) from err
        self.journal.close()

    def statuses(self) -> list[_Local]:
        """Collective: every rank's :meth:`local_status`, by rank."""
        result: list[_Local] = self.comm.allgather(self.local_status())
        return result


# -- helpers shared with finish() -------------------------------------------------------------

def _after_commit(checkpoint_dir: str, info: Mapping[str, Any], journal_dir: str) -> None:
    """Rank 0, marker durable: pointer, then the recorded retention (never raises)."""
    from ._lifecycle import after_commit

    r = info.get("retention")
    after_commit(checkpoint_dir, RetentionPolicy.from_json(r) if isinstance(r, dict)
                 else None, journals=[journal_dir])


def rank_entries(journal: Journal, transfer: Transfer, rank: int,
                 checkpoint_dir: str) -> list[ManifestEntry]:
    """The manifest entries of one rank's COMPLETED transfer, from its journal alone."""
    state = transfer.state
    if state is not _T.COMPLETED:
        raise UsageError(f"rank {rank}: transfer {transfer.name!r} is {state.value}")
    root = os.fsencode(checkpoint_dir)
    out = []
    for r in transfer.files():
        out_e = _entry(r, rank, root)
        if out_e is not None:
            out.append(out_e)
    return out


def _entry(r: FileStatus, rank: int, root: bytes) -> ManifestEntry | None:
    if r.state is not FileState.PUBLISHED:
        raise UsageError(f"rank {rank}: {r.dst!r} is {r.state.value}")
    rel = os.path.relpath(os.fsencode(r.dst), root)
    if rel == b".":
        return None
    if rel.startswith(b"../") or rel == b"..":
        raise UsageError(f"rank {rank}: {r.dst!r} is outside the checkpoint")
    return ManifestEntry(os.fsdecode(rel), rank, r.kind,
                         r.size if r.kind == "file" else 0,
                         None if r.kind == "dir" else r.crc32c)


def _record_add(transfer: Transfer, src: str, dst: str, limits: Limits) -> None:
    """Record an add in the rank's journal before it runs (one commit)."""
    opts = transfer.options
    if opts.mpi is None:
        return
    add = {"src": src, "dst": dst, "max_entries": limits.max_entries,
           "max_depth": limits.max_depth}
    transfer.set_options(opts.replace(mpi={**opts.mpi,
                                           "adds": [*opts.mpi.get("adds", []), add]}))


def _replay_adds(transfer: Transfer) -> int:
    """Add again every recorded add of a CREATED transfer that left no rows (it failed,
    or the job died before it ran), in the recorded order; returns how many."""
    opts = transfer.options
    info = opts.mpi or {}
    done = {os.path.abspath(a[1]) for a in opts.adds or ()}
    n = 0
    for a in info.get("adds", []):
        if os.path.abspath(a["dst"]) in done:
            continue
        transfer.add(a["src"], a["dst"], limits=Limits(a["max_entries"], a["max_depth"]))
        transfer.record_event("mpi.replay_add", a["dst"])
        n += 1
    return n


def _rank_journals(journal_dir: str) -> dict[int, str]:
    found = {}
    for n in os.listdir(journal_dir):
        m = _RANK_FILE.match(n)
        if m:
            found[int(m.group(1))] = os.path.join(journal_dir, n)
    return found


def pending_names(comm: Comm | None,
                  journal_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Collective: names of axlpy.mpi transfers still in any rank's journal (not freed),
    sorted; for a restarted job to resume (or cancel) before it starts new ones."""
    comm = _world(comm)
    path = journal_path(journal_dir, comm.Get_rank())
    mine: list[str] = []
    if os.path.exists(path):
        with Journal(path, create=False) as j:
            mine = [n for n in j.names() if j.open(n).options.mpi is not None]
    return sorted({n for names in comm.allgather(mine) for n in names})


def finish(journal_dir: str | os.PathLike[str], name: str, *,
           on_progress: Callable[[Any], None] | None = None,
           force: bool = False) -> Manifest:
    """Single process, no MPI: finish transfer ``name`` of every rank journal in
    ``journal_dir`` and write the commit marker.

    For a job that died and cannot be re-run with the same rank count. Each rank's
    transfer is resumed in turn (ranks already COMPLETED are only read), then the marker is
    written exactly as the collective commit does. Needs every rank's journal
    (``rank-0.db`` .. ``rank-<n-1>.db``) and every rank's sources still readable from here.
    A rank whose ``add()`` failed replays its recorded adds. ``force`` takes over ranks
    whose owner runs on another node with a fresh lease (see :meth:`CommTransfer.resume`).

    Raises:
        UsageError: a rank journal is missing, or the transfer was cancelled.
        axlpy.AxlError: a rank's resume failed; the other ranks' progress is kept and
            ``finish`` can be called again. No marker is written unless every rank
            COMPLETED.
    """
    jdir = os.path.abspath(os.fspath(journal_dir))
    paths = _rank_journals(jdir)
    journals: list[Journal] = []
    try:
        transfers: dict[int, Transfer] = {}
        size = None
        ckpt = ""
        meta: Mapping[str, Any] = {}
        info: Mapping[str, Any] = {}
        for rank, p in sorted(paths.items()):
            j = Journal(p, create=False)
            journals.append(j)
            if name not in j.names():
                continue
            t = j.open(name, on_progress=on_progress)
            info = t.options.mpi or {}
            size = int(info.get("size", 0))
            ckpt, meta = str(info["checkpoint_dir"]), info.get("meta") or {}
            transfers[rank] = t
        if size is None:
            raise UsageError(f"no rank journal in {jdir!r} holds transfer {name!r}")
        missing = sorted(set(range(size)) - set(transfers))
        if missing:
            raise UsageError(f"transfer {name!r} was created by {size} ranks; the journals of "
                             f"ranks {missing} are missing from {jdir!r}")
        entries: list[ManifestEntry] = []
        for rank, t in sorted(transfers.items()):
            if any(e["event"] == _EV_DISCARD for e in t.events()):
                raise UsageError(f"rank {rank}: transfer {name!r} was cancelled")
            state = t.state
            if state is _T.CANCELLED:
                raise UsageError(f"rank {rank}: transfer {name!r} was cancelled")
            if state is _T.CREATED:
                _replay_adds(t)
                t.dispatch()
                t.wait()
            elif state is not _T.COMPLETED:
                t.resume(force=force)
                t.wait()
            entries += rank_entries(journals[rank], t, rank, ckpt)
        m = write_manifest(ckpt, build_manifest(name, size, entries, meta,
                                                step=info.get("step")))
        for t in transfers.values():
            t.record_event(_EV_COMMIT, os.path.join(ckpt, MARKER))
        _after_commit(ckpt, info, jdir)
        return m
    finally:
        for j in journals:
            j.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m axlpy.mpi ARGS``: the same as ``axlpy mpi ARGS`` (``finish``; see
    docs/cli.md), with the same exit codes as every ``axlpy`` command. Exits."""
    import sys

    from .cli import main as cli_main

    cli_main(["mpi", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    main()
