"""The journal: one SQLite file holding many transfers (created with sqlite-utils, then
read and written with plain :mod:`sqlite3` on one connection).

Tables (schema version :data:`SCHEMA_VERSION` in ``PRAGMA user_version``, axlpy's
``PRAGMA application_id`` :data:`APPLICATION_ID`):

- ``transfers``: one row per transfer: unique ``name``, ``type``, ``state``, options (JSON),
  the destination roots recorded at create time, owner (pid, host, process start time)
  and its lease (last heartbeat, length; :mod:`axlpy._lease`).
- ``files``: one row per file, directory or symlink: ``src``, ``dst`` (BLOB: any byte
  sequence a POSIX name can hold), the temp basename, size, mtime_ns, mode, CRC32C, state,
  and the source's identity at dispatch (ctime_ns, inode, device: :mod:`axlpy._identity`).
- ``extents``: the CRC32C of each fixed-size extent of a file's temp as it became durable.
- ``events``: append-only, one row per transition with a timestamp, so ``sqlite3 journal.db
  "select * from events"`` answers "what happened to this transfer".
- ``created_dirs``: each destination directory a run created (path, device, inode), which
  cancel removes once empty (schema 3).

Every state change is one ``BEGIN IMMEDIATE`` transaction, committed (``synchronous=FULL``
in WAL mode, so a commit is durable when it returns) **before** the side effect it permits.
If the process dies inside a transaction, SQLite rolls it back: the journal holds the
previous state. Opening never recreates or overwrites an existing file that is not a valid
journal, and refuses a main file shorter than its own header says (truncated). An
older schema is migrated on open (:mod:`axlpy._migrations`, one transaction); a newer one
is refused.

Many processes and threads share one journal. A write transaction takes the write lock
when it begins (``BEGIN IMMEDIATE``), waiting up to the busy timeout for it: a deferred
``BEGIN`` that reads first cannot wait, because SQLite cannot upgrade a WAL read snapshot
that another writer made stale (it fails at once with "database is locked"). A new
journal is built complete in a private temp and hard-linked into place, so processes
opening it for the first time at once find nothing or a whole journal, never a half-made
one. sqlite3 errors leave this module raw; the public API maps them
(:mod:`axlpy._boundary`).
"""

from __future__ import annotations

import array
import itertools
import json
import os
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from . import _fstype
from ._config import Options
from ._crashpoints import crash_point
from ._errors import JournalError, OwnershipError, SecurityError
from ._imports import sqlite_utils as _sqlite_utils
from ._lease import DEFAULT_LEASE_S, Owner, now_ns
from ._migrations import SCHEMA_VERSION, apply_steps, migrate
from ._planted import planted
from ._state import (
    FILE_TRANSITIONS,
    FileState,
    TransferState,
    check_file_transition,
    check_transition,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "DispatchRow", "FileDispatch", "FileRow",
           "JournalDB", "LinkDispatch", "Owner", "TransferRow"]

APPLICATION_ID = 0x41584C50  # "AXLP"
_SQLITE_MAGIC = b"SQLite format 3\x00"

#: ``AXLPY_PROFILE_JOURNAL=1`` (off by default): time spent inside journal transactions,
#: BEGIN to durable COMMIT, summed over the process (read by ``bench/``)
_PROFILE = os.environ.get("AXLPY_PROFILE_JOURNAL", "") == "1"
PROFILE_STATS: dict[str, float] = {"seconds": 0.0, "count": 0}


@dataclass
class TransferRow:
    id: int
    name: str
    type: str
    state: TransferState
    token: str
    options: Options
    created_ns: int
    updated_ns: int
    owner: Owner | None
    error: str | None


@dataclass(slots=True)
class FileRow:
    id: int
    kind: str  # "file" | "dir" | "symlink"
    src: bytes
    dst: bytes
    root: bytes  # the destination directory the user named; rel = dst below it
    rel: bytes
    tmp: bytes | None  # temp basename in dst's directory
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    link: bytes | None
    crc32c: int | None
    state: FileState
    bytes_done: int
    error: str | None
    #: the source's identity recorded at dispatch (None: dispatched before schema 4)
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None


#: A row as dispatch reads it: ``(file id, kind, src, rel)``.
DispatchRow = tuple[int, str, bytes, bytes]
#: What dispatch journals of a regular file: its source's identity as of dispatch
#: (:mod:`axlpy._identity`) and its temp basename, ``(size, mtime_ns, mode, ctime_ns,
#: ino, dev, tmp, file id)``.
FileDispatch = tuple[int, int, int, int, int, int, bytes | bytearray, int]
#: What dispatch journals of a symlink: ``(tmp, file id)``.
LinkDispatch = tuple[bytes | bytearray, int]


#: rows per :meth:`JournalDB.file_batches` list: the rows a dispatch, run or resume holds
FILE_BATCH = 1024
#: rows per insert into ``add_files``' private spool (the add's rows held at once)
_SPOOL_BATCH = 256

_FILE_COLS = (
    "id, kind, src, dst, root, rel, tmp, size, mtime_ns, mode, uid, gid, link, crc32c, "
    "state, bytes_done, error, src_ctime_ns, src_ino, src_dev"
)


def _schema_1(conn: sqlite3.Connection) -> None:
    """Create the schema-1 tables and indexes the migrations build on, with sqlite-utils
    (imported here only: creating a journal is the one thing it is needed for; every other
    read and write is plain :mod:`sqlite3`, issue 14.5). Runs inside the caller's
    transaction: if the process dies, the journal file holds no tables and the next open
    creates them again."""
    db = _sqlite_utils().Database(conn, execute_plugins=False)  # no third-party plugins
    db.table("transfers").create(
        {
            "id": int, "name": str, "type": str, "state": str, "token": str,
            "options": str, "created_ns": int, "updated_ns": int,
            "owner_pid": int, "owner_host": str, "owner_start": str, "error": str,
        },
        pk="id", not_null={"name", "type", "state", "token", "options"},
    )
    db.table("transfers").create_index(["name"], unique=True)
    db.table("files").create(
        {
            "id": int, "transfer_id": int, "kind": str, "src": bytes, "dst": bytes,
            "root": bytes, "rel": bytes, "tmp": bytes, "size": int, "mtime_ns": int,
            "mode": int, "uid": int, "gid": int, "link": bytes, "crc32c": int,
            "state": str, "bytes_done": int, "error": str,
        },
        pk="id", foreign_keys=[("transfer_id", "transfers", "id")],
        not_null={"transfer_id", "kind", "src", "dst", "root", "rel", "state"},
        defaults={"bytes_done": 0},
    )
    db.table("files").create_index(["transfer_id", "dst"], unique=True)
    db.table("files").create_index(["transfer_id", "state"])
    db.table("extents").create(
        {"file_id": int, "idx": int, "length": int, "crc32c": int},
        pk=("file_id", "idx"), foreign_keys=[("file_id", "files", "id")],
    )
    db.table("events").create(
        {
            "id": int, "transfer_id": int, "file_id": int, "ts_ns": int,
            "event": str, "from_state": str, "to_state": str, "detail": str,
            "pid": int,
        },
        pk="id", not_null={"transfer_id", "ts_ns", "event"},
    )
    db.table("events").create_index(["transfer_id"])


def _blob(v: Any) -> bytes:
    # Paths are BLOBs; a row edited by hand (sqlite3 CLI, ``||``) may hold TEXT instead.
    return os.fsencode(v) if isinstance(v, str) else bytes(v)


_STATE_OF = {s.value: s for s in FileState}
_STATE_TEXT = {s: s.value for s in FileState}


def _file_row(r: Sequence[Any]) -> FileRow:
    # A resume builds 100k of these before it starts: the common case (BLOB paths, a
    # known state) without a function call per column.
    src, dst, root, rel, tmp, link = r[2], r[3], r[4], r[5], r[6], r[12]
    if type(src) is not bytes or type(dst) is not bytes:
        src, dst = _blob(src), _blob(dst)
    if type(root) is not bytes or type(rel) is not bytes:
        root, rel = _blob(root), _blob(rel)
    if tmp is not None and type(tmp) is not bytes:
        tmp = _blob(tmp)
    if link is not None and type(link) is not bytes:
        link = _blob(link)
    state = _STATE_OF.get(r[14]) or FileState(r[14])
    return FileRow(r[0], r[1], src, dst, root, rel, tmp, r[7], r[8], r[9], r[10], r[11],
                   link, r[13], state, r[15], r[16], r[17], r[18], r[19])


class JournalDB:
    """A connection to one journal file, safe to share between threads (one lock).

    Raises :class:`JournalError` (naming the file) for a file that is not an SQLite
    database, is truncated or corrupt, has a foreign schema or a newer one. Creates the
    file, mode 0600, only when ``path`` does not exist and ``create`` is set.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 allow_shared: bool = False, busy_timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._spools = itertools.count(1)  # add_files' TEMP table names
        #: schema versions this open migrated the journal through (empty: none)
        self.migrated: list[int] = []
        #: the filesystem the journal is on; on a shared one, ``exclusive`` says whether
        #: this connection holds the journal alone (:mod:`axlpy._fstype`)
        self.fs = self._placement()
        self.exclusive = self.fs.shared and _fstype.policy() == "exclusive"
        fresh = self._prepare_file(create, allow_shared)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        self.conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}").fetchall()
            if self.exclusive:
                # Before the first read: then SQLite never maps a -shm file.
                got = conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchone()[0]
                if str(got).lower() != "exclusive":
                    raise JournalError(f"journal {self.path!r}: locking_mode=EXCLUSIVE "
                                       f"not applied (got {got!r})")
            # Check before configuring: turning WAL on rewrites the file header, and a
            # file that is not ours must be left byte-for-byte untouched.
            empty = fresh or self._is_empty()
            if not empty:
                version = self._check_schema()
            else:
                self._create_schema()  # unless another process just did
            self._configure()
            if empty:
                version = self._check_schema()
            if version < SCHEMA_VERSION:
                with self._lock:
                    self.migrated = migrate(self.conn)
        except BaseException:
            # sqlite3 errors are mapped to JournalError & co. by the public API boundary
            conn.close()
            raise

    # -- opening --------------------------------------------------------------------------

    def _placement(self) -> _fstype.FsInfo:
        """Where the journal is; refuse a shared filesystem if the policy says so."""
        d = os.path.dirname(os.path.abspath(self.path))
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            d = os.path.dirname(d)
        fs = _fstype.detect(d)
        if fs.shared and _fstype.policy() == "refuse":
            raise JournalError(
                f"journal {self.path!r} is on {fs.name} (statfs magic {fs.magic:#x}), a "
                "network or parallel filesystem where SQLite's WAL index cannot be shared "
                "between nodes; put the journal on a node-local disk (AXLPY_JOURNAL, or "
                "axlpy.mpi's journal_dir), or set AXLPY_JOURNAL_ON_SHARED_FS=exclusive to "
                "use it from one process at a time (docs/operators-guide.md)")
        return fs

    def _prepare_file(self, create: bool, allow_shared: bool) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not create:
                raise JournalError(f"journal {self.path!r} does not exist") from None
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, mode=0o700, exist_ok=True)
            _check_private(parent, "directory of journal", allow_shared)
            self._create_file(parent)
            st = os.stat(self.path)
        _check_private(os.path.dirname(os.path.abspath(self.path)), "directory of journal",
                       allow_shared)
        _check_private(self.path, "journal", allow_shared, st)
        if st.st_size == 0:
            # An empty file is what our own create leaves if we died before SQLite wrote;
            # only then (no -wal beside it) is it safe to initialise.
            if os.path.exists(self.path + "-wal"):
                raise JournalError(f"journal {self.path!r} is empty but has a WAL file")
            return True
        with open(self.path, "rb") as f:
            head = f.read(100)
        if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
            raise JournalError(
                f"{self.path!r} is not an SQLite journal (bad header); it was left untouched"
            )
        self._check_length(head, st.st_size)
        return False

    def _create_file(self, parent: str) -> None:
        """Build a complete journal in a private temp beside ``path`` and hard-link it to
        ``path`` (fails if the name exists): ``path`` never names a half-made journal,
        so processes opening a new journal at the same time all find either nothing or a
        whole one; the losers of the race drop their temp and open the winner's."""
        tmp = os.path.join(parent, f".{os.path.basename(self.path)}.new-{os.getpid()}-"
                                   f"{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        try:
            JournalDB(tmp, create=False, allow_shared=True,
                      busy_timeout=self.busy_timeout).close()
            try:
                os.link(tmp, self.path, follow_symlinks=False)
            except FileExistsError:
                return  # another process created it meanwhile: check it like any other
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
                with suppress(FileNotFoundError):
                    os.unlink(leftover)

    def _check_length(self, head: bytes, size: int) -> None:
        """Refuse a main file shorter than the page count in its own header, unless its
        ``-wal`` holds a valid copy of every missing page.

        SQLite would zero-fill the missing pages (reading garbage as the journal) and
        write its next checkpoint over them: it would silently rewrite a damaged
        journal. When the ``-wal`` holds them all, the file is what an interrupted
        checkpoint leaves and SQLite's recovery gives exactly the last committed state.

        The header count is valid when the change counter (offset 24) equals
        version-valid-for (offset 92), always so since SQLite 3.7.0; every commit that
        grows the file updates it, and in WAL mode a checkpoint copies page 1 into the
        main file (first: it copies in page order) with the pages it counts.
        """
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(head[28:32], "big")
        if not pages or head[24:28] != head[92:96] or page < 512:
            return
        if size >= pages * page:
            return
        wal = _wal_pages(self.path + "-wal", page)
        if wal is not None and all(p in wal[1] for p in range(size // page + 1, wal[0] + 1)):
            # What an interrupted checkpoint leaves (the filesystem filled up while it
            # copied pages in page order: page 1 first, the file's growth later): the
            # -wal holds a valid copy of every missing page, and SQLite finishes the job.
            return
        raise JournalError(
            f"journal {self.path!r} is truncated: {size} bytes, but its header counts "
            f"{pages} pages of {page} bytes ({pages * page} bytes) and its -wal does not "
            "hold the rest; it was left untouched — restore it (together with its -wal "
            "file, if any) or point --journal elsewhere"
        )

    def _configure(self) -> None:
        # A PRAGMA that fails does not raise until its result is fetched: read each back.
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {self.path!r}: cannot enable WAL (got {mode!r})")
        level = "NORMAL" if planted("sync_normal") else "FULL"
        self.conn.execute(f"PRAGMA synchronous={level}").fetchall()
        got = self.conn.execute("PRAGMA synchronous").fetchone()[0]
        if got != (1 if level == "NORMAL" else 2):
            raise JournalError(f"journal {self.path!r}: synchronous={level} not applied")
        self.conn.execute("PRAGMA foreign_keys=ON").fetchall()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (:attr:`conn`), what :meth:`transaction` yields."""
        return self.conn

    def _table_names(self) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}

    def _is_empty(self) -> bool:
        app = self.conn.execute("PRAGMA application_id").fetchone()[0]
        ver = self.conn.execute("PRAGMA user_version").fetchone()[0]
        return app == 0 and ver == 0 and not self._table_names()

    def _create_schema(self) -> None:
        with self.transaction() as db:
            # Under the write lock: another process may have created it meanwhile.
            if not self._is_empty():
                return
            _schema_1(db)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            # The tables above are schema 1; the migrations build the rest in this same
            # transaction, so a fresh journal and an upgraded one are the same schema.
            apply_steps(self.conn, 1)

    def _check_schema(self) -> int:
        app = self.conn.execute("PRAGMA application_id").fetchone()[0]
        ver = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if app != APPLICATION_ID:
            raise JournalError(
                f"{self.path!r} is an SQLite database but not an axlpy journal "
                f"(application_id {app:#x}); it was left untouched"
            )
        if ver > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path!r} has schema version {ver}, newer than this axlpy "
                f"understands ({SCHEMA_VERSION}); upgrade axlpy"
            )
        if ver < 1:
            raise JournalError(f"journal {self.path!r} has unknown old schema {ver}")
        bad = self.conn.execute("PRAGMA quick_check").fetchall()
        if bad != [("ok",)]:
            raise JournalError(
                f"journal {self.path!r} is corrupt: {'; '.join(str(r[0]) for r in bad[:3])}"
            )
        need = {"transfers", "files", "extents", "events"} | (
            {"created_dirs"} if ver >= 3 else set())
        missing = need - self._table_names()
        if missing:
            raise JournalError(f"journal {self.path!r} lacks tables {sorted(missing)}")
        return int(ver)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable write transaction (under the connection lock), begun with
        ``BEGIN IMMEDIATE`` so it waits up to the busy timeout for other writers instead
        of failing on its first write. Nested, it is a savepoint of the outer one.
        On any error it is rolled back: the journal holds what it held before."""
        with self._lock:
            if self.conn.in_transaction:
                with self._savepoint():
                    yield self.conn
                return
            # Timed from holding the lock to the durable COMMIT, so waits for the lock
            # by other threads are not counted twice.
            t0 = time.perf_counter() if _PROFILE else 0.0
            try:
                with self._immediate():
                    yield self.conn
            finally:
                if _PROFILE:
                    PROFILE_STATS["seconds"] += time.perf_counter() - t0
                    PROFILE_STATS["count"] += 1

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) may or may not have ended the transaction;
            # a failing ROLLBACK must not hide the error that caused it.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A savepoint inside the open transaction: on an error only its own writes are
        undone, and the error propagates."""
        name = f"axlpy_{os.urandom(8).hex()}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            # Some errors end the whole transaction (SQLite rolls back on SQLITE_FULL,
            # for one): then there is no savepoint left to roll back to.
            if self.conn.in_transaction:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.conn.execute(f"RELEASE SAVEPOINT {name}")

    def _event(self, tid: int, event: str, *, file_id: int | None = None,
               frm: str | None = None, to: str | None = None, detail: str | None = None,
               ts: int | None = None) -> None:
        self.conn.execute(
            "INSERT INTO events (transfer_id, file_id, ts_ns, event, from_state, to_state,"
            " detail, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (tid, file_id, ts or time.time_ns(), event, frm, to, detail, os.getpid()),
        )

    # -- transfers ------------------------------------------------------------------------

    def create_transfer(self, name: str, type_: str, token: str, options: Options) -> int:
        now = time.time_ns()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM transfers WHERE name = ?", (name,)).fetchone():
                raise JournalError(f"a transfer named {name!r} already exists in {self.path!r}")
            cur = db.execute(
                "INSERT INTO transfers (name, type, state, token, options, created_ns,"
                " updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, type_, TransferState.CREATED.value, token,
                 _options_json(options), now, now),
            )
            tid = int(cur.lastrowid or 0)
            self._event(tid, "create", to=TransferState.CREATED.value, detail=type_, ts=now)
        crash_point("create.after_commit")
        return tid

    def transfer(self, name: str) -> TransferRow | None:
        with self._lock:
            r = self.conn.execute(
                f"SELECT {_TRANSFER_COLS} FROM transfers WHERE name = ?", (name,),
            ).fetchone()
        return _transfer_row(r) if r else None

    def transfer_by_id(self, tid: int) -> TransferRow:
        with self._lock:
            r = self.conn.execute(
                f"SELECT {_TRANSFER_COLS} FROM transfers WHERE id = ?", (tid,),
            ).fetchone()
        if r is None:
            raise JournalError(f"transfer id {tid} vanished from journal {self.path!r}")
        return _transfer_row(r)

    def transfers(self) -> list[TransferRow]:
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_TRANSFER_COLS} FROM transfers ORDER BY id"
            ).fetchall()
        return [_transfer_row(r) for r in rows]

    def set_state(self, tid: int, frm: TransferState, to: TransferState, *,
                  event: str, detail: str | None = None, error: str | None = None,
                  owner: Owner | bool | None = False, name: str = "") -> None:
        """Move transfer ``tid`` from ``frm`` to ``to`` in one durable transaction
        (compare-and-set: ``frm`` is the state the caller last saw).

        ``owner`` False leaves the owner as is, None clears it, an Owner sets it.
        Raises JournalError if the journal no longer holds ``frm`` (someone else moved
        it); then nothing was written.
        """
        check_transition(frm, to, name)
        with self.transaction():
            self._set_state(tid, frm, to, event=event, detail=detail, error=error,
                            owner=owner, name=name)

    def _set_state(self, tid: int, frm: TransferState, to: TransferState, *, event: str,
                   detail: str | None, error: str | None, owner: Owner | bool | None,
                   name: str) -> None:
        """:meth:`set_state` inside the caller's transaction."""
        now = time.time_ns()
        db = self.conn
        sets = "state = ?, updated_ns = ?, error = ?"
        args: list[Any] = [to.value, now, error]
        if owner is None:
            sets += (", owner_pid = NULL, owner_host = NULL, owner_start = NULL,"
                     " owner_heartbeat_ns = NULL, owner_lease_ns = NULL")
        elif isinstance(owner, Owner):
            sets += (", owner_pid = ?, owner_host = ?, owner_start = ?,"
                     " owner_heartbeat_ns = ?, owner_lease_ns = ?")
            args += [owner.pid, owner.host, owner.start, now_ns(),
                     owner.lease_ns or int(DEFAULT_LEASE_S * 1e9)]
        cur = db.execute(
            f"UPDATE transfers SET {sets} WHERE id = ? AND state = ?",
            (*args, tid, frm.value),
        )
        if cur.rowcount != 1:
            raise JournalError(
                f"transfer {name or tid!r} is no longer {frm.value} in {self.path!r}"
            )
        self._event(tid, event, frm=frm.value, to=to.value, detail=detail or error, ts=now)

    def dispatch(self, tid: int, *, owner: Owner, name: str,
                 prepare: Callable[[list[DispatchRow]], tuple[Iterable[FileDispatch],
                                                              Iterable[LinkDispatch]]]) -> int:
        """CREATED -> DISPATCHED in one durable transaction, with ``owner`` set, each
        file's temp basename and each source's identity as of dispatch. The rows are
        read inside the transaction :data:`FILE_BATCH` at a time, as :data:`DispatchRow`
        (the columns dispatch needs, no :class:`FileRow`), and ``prepare(batch)`` returns
        that batch's :data:`FileDispatch` and :data:`LinkDispatch` values: one pass,
        never all rows in memory. Returns how many rows there were. Raises JournalError
        if the transfer is no longer CREATED, or what ``prepare`` raises; then nothing
        was written."""
        check_transition(TransferState.CREATED, TransferState.DISPATCHED, name)
        n = 0
        # One row rewrite per file (its identity and temp name together), one per symlink
        # (its temp name). The transfer id is an int written into the statement: one
        # parameter tuple per row is then exactly what ``prepare`` made.
        tid = int(tid)
        set_file = ("UPDATE files SET size = ?, mtime_ns = ?, mode = ?, src_ctime_ns = ?,"
                    f" src_ino = ?, src_dev = ?, tmp = ? WHERE id = ? AND transfer_id = {tid}")
        set_link = f"UPDATE files SET tmp = ? WHERE id = ? AND transfer_id = {tid}"
        with self.transaction():
            self._set_state(tid, TransferState.CREATED, TransferState.DISPATCHED,
                            event="dispatch", detail=None, error=None, owner=owner,
                            name=name)
            conn = self.conn
            for batch in self._id_batches("id, kind, src, rel", "+transfer_id = ?", (tid,),
                                          FILE_BATCH):
                n += len(batch)
                files, links = prepare(batch)
                conn.executemany(set_file, files)
                conn.executemany(set_link, links)
        return n

    def pause(self, tid: int, detail: str, *, name: str = "") -> bool:
        """DISPATCHED -> PAUSED (the retry policy waits for an operator), durable. Returns
        False, writing nothing, if the transfer is not DISPATCHED (another worker paused
        it first, or it was cancelled meanwhile)."""
        return self._move_if(tid, TransferState.DISPATCHED, TransferState.PAUSED, "pause",
                             detail, name)

    def unpause(self, tid: int, detail: str, *, name: str = "") -> bool:
        """PAUSED -> DISPATCHED (an operator said continue), durable. Returns False,
        writing nothing, if the transfer is not PAUSED."""
        return self._move_if(tid, TransferState.PAUSED, TransferState.DISPATCHED,
                             "continue", detail, name)

    def _move_if(self, tid: int, frm: TransferState, to: TransferState, event: str,
                 detail: str, name: str) -> bool:
        check_transition(frm, to, name)
        with self.transaction():
            r = self.conn.execute("SELECT state FROM transfers WHERE id = ?", (tid,)).fetchone()
            if r is None or r[0] != frm.value:
                return False
            self._set_state(tid, frm, to, event=event, detail=detail, error=None,
                            owner=False, name=name)
        return True

    def set_options(self, tid: int, options: Options) -> None:
        """Replace the transfer's stored options (one durable transaction)."""
        with self.transaction() as db:
            db.execute("UPDATE transfers SET options = ? WHERE id = ?",
                       (_options_json(options), tid))

    def claim(self, tid: int, name: str, *, force: bool = False) -> Owner:
        """Make this process the owner of ``tid`` (durable), unless a live process owns it.

        Raises :class:`OwnershipError` naming the owner and its lease. A dead owner's
        transfer — its process gone on this host, or its lease expired wherever it runs
        (:mod:`axlpy._lease`) — or, with ``force``, one whose owner runs on another host
        with a fresh lease, is taken over and the takeover journaled as an event. A live
        owner on this host is never taken over. The new lease lasts the transfer's
        ``lease_timeout`` option (seconds).
        """
        with self.transaction() as db:
            r = db.execute(
                "SELECT owner_pid, owner_host, owner_start, owner_heartbeat_ns,"
                " owner_lease_ns, options FROM transfers WHERE id = ?", (tid,)
            ).fetchone()
            lease_s = DEFAULT_LEASE_S
            if r is not None:
                lease_s = float(json.loads(r[5]).get("lease_timeout") or DEFAULT_LEASE_S)
            me = Owner.me(lease_s)
            if r and r[0] is not None:
                cur = Owner(r[0], r[1], r[2] or "", r[3], r[4])
                if cur != me:
                    alive = cur.alive()
                    if alive or (alive is None and not force):
                        where = "" if alive else (
                            " (on another host; force=True takes over, or wait until "
                            "its lease expires)")
                        raise OwnershipError(
                            f"transfer {name!r} is owned by live process "
                            f"{cur.describe()}{where}")
                    why = ("lease expired" if cur.host != me.host and alive is False
                           else "forced" if alive is None else "owner dead")
                    self._event(tid, "takeover",
                                detail=f"from pid {cur.pid}@{cur.host} ({why})")
            db.execute(
                "UPDATE transfers SET owner_pid = ?, owner_host = ?, owner_start = ?,"
                " owner_heartbeat_ns = ?, owner_lease_ns = ? WHERE id = ?",
                (me.pid, me.host, me.start, me.heartbeat_ns, me.lease_ns, tid),
            )
        return me

    def renew(self, tid: int, owner: Owner) -> bool:
        """Renew ``owner``'s lease on ``tid`` (durable); False if it no longer owns it."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE transfers SET owner_heartbeat_ns = ? WHERE id = ? AND owner_pid = ?"
                " AND owner_host = ? AND owner_start = ?",
                (now_ns(), tid, owner.pid, owner.host, owner.start),
            )
            return cur.rowcount == 1

    def owner(self, tid: int) -> Owner | None:
        return self.transfer_by_id(tid).owner

    def release(self, tid: int) -> None:
        """Clear the owner (durable): any process may now resume or cancel."""
        me = Owner.me()
        with self.transaction() as db:
            db.execute(
                "UPDATE transfers SET owner_pid = NULL, owner_host = NULL, owner_start = NULL,"
                " owner_heartbeat_ns = NULL, owner_lease_ns = NULL"
                " WHERE id = ? AND owner_pid = ? AND owner_host = ?",
                (tid, me.pid, me.host),
            )

    def delete_transfer(self, tid: int) -> None:
        with self.transaction() as db:
            db.execute(
                "DELETE FROM extents WHERE file_id IN (SELECT id FROM files WHERE"
                " transfer_id = ?)", (tid,),
            )
            db.execute("DELETE FROM files WHERE transfer_id = ?", (tid,))
            db.execute("DELETE FROM events WHERE transfer_id = ?", (tid,))
            db.execute("DELETE FROM created_dirs WHERE transfer_id = ?", (tid,))
            db.execute("DELETE FROM transfers WHERE id = ?", (tid,))

    def record_event(self, tid: int, event: str, detail: str | None = None,
                     file_id: int | None = None) -> None:
        with self.transaction():
            self._event(tid, event, detail=detail, file_id=file_id)

    # -- directories a run created (cancel removes them when empty) --------------------

    def record_created_dir(self, tid: int, path: bytes, dev: int, ino: int) -> None:
        """Journal (durably) that this transfer created directory ``path``."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO created_dirs (transfer_id, path, dev, ino)"
                       " VALUES (?, ?, ?, ?)", (tid, path, dev, ino))
        crash_point("stage.after_mkdir_commit")

    def record_created_dirs(self, tid: int, dirs: Sequence[tuple[bytes, int, int]]) -> None:
        """Journal (durably, one transaction) that this transfer created each directory
        ``(path, dev, ino)`` of ``dirs`` (a batch, see ``docs/design.md``)."""
        if not dirs:
            return
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO created_dirs (transfer_id, path, dev, ino)"
                " VALUES (?, ?, ?, ?)", [(tid, *d) for d in dirs])
        crash_point("stage.after_mkdir_commit")

    def created_dirs(self, tid: int) -> list[tuple[bytes, int, int]]:
        """``(path, dev, ino)`` of every directory the transfer recorded creating."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT path, dev, ino FROM created_dirs WHERE transfer_id = ? ORDER BY path",
                (tid,)).fetchall()
        return [(bytes(r[0]), int(r[1]), int(r[2])) for r in rows]

    def record_events(self, tid: int,
                      events: Sequence[tuple[str, str | None, int | None]]) -> None:
        """Journal many ``(event, detail, file_id)`` in one transaction."""
        if not events:
            return
        now = time.time_ns()
        with self.transaction():
            for event, detail, file_id in events:
                self._event(tid, event, detail=detail, file_id=file_id, ts=now)

    def events(self, tid: int) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(
                "SELECT * FROM events WHERE transfer_id = ? ORDER BY id", (tid,))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur]

    # -- files ----------------------------------------------------------------------------

    def add_files(self, tid: int, rows: Iterable[Sequence[Any]],
                  options: Options | None = None) -> int:
        """Insert PENDING file rows for one ``add()`` in one transaction, together with
        the transfer's new ``options`` if given: all of it or nothing. Each row is a
        :data:`~axlpy._sources.SourceRow` (``walk_source``). Returns how many rows were
        added.

        The rows are never all held, and the walk that makes them runs outside the
        journal's write lock: they are spooled, :data:`_SPOOL_BATCH` at a time, into a TEMP
        table private to this connection (the connection lock is taken per batch, so
        this process's other threads, lease renewals among them, and other processes
        keep committing during a long walk); then one transaction copies them into
        ``files``. Whatever the walk raises propagates and nothing is added. If the
        process dies during the walk, the journal is unchanged (a TEMP table lives in a
        private temporary file that vanishes with the connection)."""
        pending = FileState.PENDING.value
        spool = f"temp.add_spool_{next(self._spools)}"
        cols = "kind, src, dst, root, rel, size, mtime_ns, mode, uid, gid, link"
        spooled = "kind, src, dst, root, rel, size, mtime_ns, mode, uid, gid, NULLIF(link, 0)"
        n = 0
        ba = bytearray
        try:
            with self._lock:
                self.conn.execute(f"CREATE TABLE {spool} ({cols})")
            it = iter(rows)
            while True:
                # Paths bound as bytearray, "no link" as 0 (NULL again when copied into
                # files): sqlite3 binds those as they are, where each bytes or None value
                # first goes through its adapter lookup (about 0.4 us per value; the
                # spool insert of a 100k-entry add went from 2.4 to 0.9 us per row).
                batch = [(r[0], ba(r[1]), ba(r[2]), ba(r[3]), ba(r[4]), r[5], r[6], r[7],
                          r[8], r[9], 0 if r[10] is None else ba(r[10]))
                         for r in itertools.islice(it, _SPOOL_BATCH)]
                if not batch:
                    break
                n += len(batch)
                with self._lock:
                    own = not self.conn.in_transaction
                    if own:
                        self.conn.execute("BEGIN")  # takes no lock on the journal file
                    try:
                        self.conn.executemany(
                            f"INSERT INTO {spool} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            batch)
                    except BaseException:
                        if own:
                            self.conn.execute("ROLLBACK")
                        raise
                    if own:
                        self.conn.execute("COMMIT")
                del batch  # before the next one is built: one batch alive at a time
            try:
                with self.transaction() as db:
                    if options is not None:
                        db.execute("UPDATE transfers SET options = ? WHERE id = ?",
                                   (_options_json(options), tid))
                    db.execute(
                        f"INSERT INTO files (transfer_id, {cols}, state)"
                        f" SELECT ?, {spooled}, ? FROM {spool}"
                        " ORDER BY rowid",
                        (tid, pending),
                    )
                    self._event(tid, "add", detail=f"{n} entries")
            except sqlite3.IntegrityError:
                # Rolled back. The only constraint a walk's row can break is the unique
                # (transfer_id, dst): a destination added twice, within this add or to
                # the transfer before.
                from ._errors import UsageError

                with self._lock:
                    dup = self.conn.execute(
                        f"SELECT dst FROM {spool} GROUP BY dst HAVING count(*) > 1"
                        f" UNION ALL SELECT s.dst FROM {spool} s JOIN files f"
                        f" ON f.transfer_id = ? AND f.dst = s.dst LIMIT 1", (tid,),
                    ).fetchone()
                name = os.fsdecode(bytes(dup[0])) if dup else "?"
                raise UsageError(f"destination {name!r} is added twice to this transfer"
                                 ) from None
        finally:
            with self._lock:
                self.conn.execute(f"DROP TABLE IF EXISTS {spool}")
        crash_point("add.after_commit")
        return n

    def files(self, tid: int, states: Iterable[FileState] | None = None) -> list[FileRow]:
        # Built from the cursor row by row (not fetchall()): 100k raw tuples and 100k
        # FileRows are never alive at once.
        with self._lock:
            if states is None:
                cur = self.conn.execute(
                    f"SELECT {_FILE_COLS} FROM files WHERE transfer_id = ? ORDER BY id", (tid,)
                )
            else:
                ss = [s.value for s in states]
                q = ",".join("?" * len(ss))
                cur = self.conn.execute(
                    f"SELECT {_FILE_COLS} FROM files WHERE transfer_id = ? AND state IN ({q})"
                    " ORDER BY id", (tid, *ss),
                )
            return [_file_row(r) for r in cur]

    def link_groups(self, tid: int) -> dict[int, int]:
        """Hard-link groups among the transfer's regular files: ``{later id: first id}``
        for every file row whose source had the same device and inode at dispatch as a
        row with a lower id (the group's first name). Rows dispatched before schema 4
        (no identity) are in no group. Grouped by SQLite, so only grouped rows reach
        Python."""
        with self._lock:
            cur = self.conn.execute(
                "SELECT f.id, g.first FROM files f JOIN (SELECT src_dev, src_ino,"
                " MIN(id) AS first FROM files WHERE transfer_id = ? AND kind = 'file'"
                " AND src_ino IS NOT NULL AND src_dev IS NOT NULL GROUP BY src_dev, src_ino"
                " HAVING COUNT(*) > 1) g ON f.src_dev = g.src_dev AND f.src_ino = g.src_ino"
                " WHERE f.transfer_id = ? AND f.kind = 'file' AND f.id != g.first",
                (tid, tid))
            return {r[0]: r[1] for r in cur}

    def file_batches(self, tid: int, *, state: FileState | None = None,
                     kind: str | None = None, batch: int | None = None
                     ) -> Iterator[list[FileRow]]:
        """The transfer's rows in id order (only ``state`` / ``kind`` if given), as lists
        of at most ``batch`` rows: each list is one short query that resumes after the
        last id seen (no cursor stays open), so the caller may write to the journal
        between batches, and holds ``batch`` rows, not 100,000 (issue 14.4). A row whose
        state changes before its batch is read is seen with its new state (or not at all,
        if ``state`` no longer matches)."""
        args: list[Any] = [tid]
        if state is not None:
            # (transfer_id, state) index: its entries are in id order within a state
            where = "transfer_id = ? AND state = ?"
            args.append(state.value)
        else:
            # the rowid range, not the (transfer_id, dst) index (that would sort each batch)
            where = "+transfer_id = ?"
        if kind is not None:
            where += " AND kind = ?"
            args.append(kind)
        return self._id_batches(_FILE_COLS, where, args, batch or FILE_BATCH, _file_row)

    def _id_batches(self, cols: str, where: str, args: Sequence[Any], batch: int,
                    make: Callable[[Any], Any] | None = None) -> Iterator[list[Any]]:
        """``SELECT cols FROM files WHERE where`` in id order (``id`` first in ``cols``),
        as lists of at most ``batch`` rows (each passed through ``make`` if given; the
        raw tuples are dropped first, so one list per batch is alive), each list one
        short query resuming after the last id seen (:meth:`file_batches`)."""
        q = f"SELECT {cols} FROM files WHERE {where} AND id > ? ORDER BY id LIMIT ?"
        last = -1
        while True:
            with self._lock:
                raw = self.conn.execute(q, (*args, last, batch)).fetchall()
            if not raw:
                return
            last = raw[-1][0]
            rows = raw if make is None else [make(r) for r in raw]
            del raw
            yield rows
            if len(rows) < batch:
                return

    def distinct_uids(self, tid: int) -> set[int]:
        """The owners (uid) of the transfer's file and symlink sources."""
        with self._lock:
            return {int(r[0]) for r in self.conn.execute(
                "SELECT DISTINCT uid FROM files WHERE transfer_id = ? AND kind != 'dir'",
                (tid,))}

    def max_pending_size(self, tid: int) -> tuple[int, int]:
        """``(count, biggest size)`` of the transfer's PENDING regular files."""
        with self._lock:
            r = self.conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(size), 0) FROM files WHERE transfer_id = ?"
                " AND state = ? AND kind = 'file'", (tid, FileState.PENDING.value)).fetchone()
        return int(r[0]), int(r[1])

    def iter_files(self, tid: int, states: Iterable[FileState] | None = None,
                   limit: int | None = None, batch: int = 2000) -> Iterator[FileRow]:
        """The transfer's files in id order (only ``states`` if given, at most ``limit``),
        fetched ``batch`` rows at a time from one query, so a caller can stream 100,000
        files without holding them all. For readers (``status``): the journal must not be
        written through this connection until the iterator is exhausted or closed."""
        ss = [s.value for s in states] if states is not None else []
        q = f"SELECT {_FILE_COLS} FROM files WHERE transfer_id = ?"
        if states is not None:
            q += f" AND state IN ({','.join('?' * len(ss))})"
        q += " ORDER BY id" + (" LIMIT ?" if limit is not None else "")
        args = (tid, *ss, *((limit,) if limit is not None else ()))
        with self._lock:
            cur = self.conn.execute(q, args)
        try:
            while True:
                with self._lock:
                    rows = cur.fetchmany(batch)
                if not rows:
                    return
                for r in rows:
                    yield _file_row(r)
        finally:
            cur.close()

    def count_files(self, tid: int, states: Iterable[FileState] | None = None) -> int:
        """How many files (in ``states`` if given) the transfer has."""
        ss = [s.value for s in states] if states is not None else None
        q = "SELECT COUNT(*) FROM files WHERE transfer_id = ?"
        if ss is not None:
            q += f" AND state IN ({','.join('?' * len(ss))})"
        with self._lock:
            return int(self.conn.execute(q, (tid, *(ss or ()))).fetchone()[0])

    def file_summary(self, tid: int, problems: int = 5) -> dict[str, Any]:
        """One pass of aggregates for ``status``: ``states`` (state -> count),
        ``kinds`` (kind -> count), ``errors`` (files with an error recorded) and
        ``problems``: the first ``problems`` such files, in id order."""
        states: dict[str, int] = {}
        kinds: dict[str, int] = {}
        errors = 0
        with self._lock:
            for state, kind, n, nerr in self.conn.execute(
                    "SELECT state, kind, COUNT(*), SUM(error IS NOT NULL) FROM files"
                    " WHERE transfer_id = ? GROUP BY state, kind", (tid,)):
                states[state] = states.get(state, 0) + n
                kinds[kind] = kinds.get(kind, 0) + n
                errors += int(nerr or 0)
            rows = self.conn.execute(
                f"SELECT {_FILE_COLS} FROM files WHERE transfer_id = ? AND error IS NOT NULL"
                " ORDER BY id LIMIT ?", (tid, problems)).fetchall()
        return {"states": states, "kinds": kinds, "errors": errors,
                "problems": [_file_row(r) for r in rows]}

    def first_event_ns(self, tid: int, event: str) -> int | None:
        """When the transfer's first ``event`` (e.g. "dispatch") was journaled."""
        with self._lock:
            r = self.conn.execute(
                "SELECT MIN(ts_ns) FROM events WHERE transfer_id = ? AND event = ?",
                (tid, event)).fetchone()
        return None if r is None or r[0] is None else int(r[0])

    def set_files(self, tid: int, changes: Sequence[tuple[FileRow, FileState, Mapping[str, Any]]],
                  event: str) -> None:
        """Move many files in one transaction (group commit): ``(row, to, values)``.

        ``values`` may set crc32c, size, mtime_ns, tmp, bytes_done, error. The in-memory
        rows are updated only after the commit succeeds.
        """
        if not changes:
            return
        for row, to, _ in changes:
            if to not in FILE_TRANSITIONS[row.state]:  # the path decoded only to say so
                check_file_transition(row.state, to, os.fsdecode(row.dst))
        now = time.time_ns()
        # One executemany per statement shape (the columns set): a group of 256 files is
        # one or two statements, not 256 (docs/benchmarks.md, journal cost per file).
        # States bound as plain str from a dict (the enum's ``.value`` property per row,
        # twice per file, cost more; a StrEnum member bound as is costs more still:
        # sqlite3 tries to adapt a str subclass).
        text = _STATE_TEXT
        shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row, to, values in changes:
            shapes.setdefault(tuple(values), []).append(
                (text[to], *values.values(), row.id, text[row.state]))
        with self.transaction() as db:
            conn = self.conn
            for keys, params in shapes.items():
                sets = ", ".join(["state = ?", *(f"{k} = ?" for k in keys)])
                cur = conn.executemany(
                    f"UPDATE files SET {sets} WHERE id = ? AND state = ?", params)
                if cur.rowcount != len(params):
                    self._stale_file(changes)
            resets = [(row.id,) for row, to, _ in changes if to is FileState.PENDING]
            if resets:
                conn.executemany("DELETE FROM extents WHERE file_id = ?", resets)
            if len(changes) == 1:
                row, to, values = changes[0]
                self._event(tid, event, file_id=row.id, frm=row.state.value, to=to.value,
                            detail=values.get("error"), ts=now)
            else:
                self._event(tid, event, detail=f"{len(changes)} files", ts=now)
            db.execute("UPDATE transfers SET updated_ns = ? WHERE id = ?", (now, tid))
        for row, to, values in changes:
            row.state = to
            for k, v in values.items():
                setattr(row, k, v)

    def _stale_file(self, changes: Sequence[tuple[FileRow, FileState, Mapping[str, Any]]]
                    ) -> None:
        """Raise JournalError naming the first file of ``changes`` whose journaled state
        is not the one the caller saw (inside the failing transaction: rolled back)."""
        for row, _, _ in changes:
            r = self.conn.execute("SELECT state FROM files WHERE id = ?", (row.id,)
                                  ).fetchone()
            if r is None or r[0] != row.state.value:
                break
        raise JournalError(f"file {os.fsdecode(row.dst)!r} is no longer {row.state.value}")

    def add_extents(self, extents: Sequence[tuple[int, int, int, int, int]]) -> None:
        """Journal verified extents ``(file_id, idx, length, crc32c, bytes_done)`` in one
        transaction (group commit; a crash may lose the last group, never corrupt one)."""
        if not extents:
            return
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO extents (file_id, idx, length, crc32c)"
                " VALUES (?, ?, ?, ?)", [(fid, idx, n, crc) for fid, idx, n, crc, _ in extents])
            self.conn.executemany("UPDATE files SET bytes_done = ? WHERE id = ?",
                                  [(done, fid) for fid, _, _, _, done in extents])
        crash_point("stage.after_extent_commit")

    def extents(self, file_id: int) -> list[tuple[int, int, int]]:
        """``(idx, length, crc32c)`` of the journaled extents of a file, in order."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT idx, length, crc32c FROM extents WHERE file_id = ? ORDER BY idx",
                (file_id,),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def files_with_extents(self, file_ids: Sequence[int]) -> set[int]:
        """Which of ``file_ids`` have journaled extents."""
        if not file_ids:
            return set()
        with self._lock:
            return {int(r[0]) for r in self.conn.execute(
                "SELECT DISTINCT file_id FROM extents WHERE file_id IN"
                f" ({','.join('?' * len(file_ids))})", file_ids)}

    def progress(self, tid: int) -> tuple[int, int, int, int]:
        """``(bytes_done, bytes_total, files_done, files_total)`` as journaled."""
        with self._lock:
            r = self.conn.execute(
                "SELECT COALESCE(SUM(CASE WHEN state IN ('STAGED','PUBLISHED') THEN size"
                " ELSE bytes_done END), 0), COALESCE(SUM(size), 0),"
                " SUM(state = 'PUBLISHED'), COUNT(*) FROM files"
                " WHERE transfer_id = ? AND kind = 'file'", (tid,),
            ).fetchone()
        return int(r[0]), int(r[1]), int(r[2] or 0), int(r[3])


_TRANSFER_COLS = (
    "id, name, type, state, token, options, created_ns, updated_ns, owner_pid, owner_host,"
    " owner_start, error, owner_heartbeat_ns, owner_lease_ns"
)


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = array.array("I", data)
    if big_endian != (sys.byteorder == "big"):
        words.byteswap()
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_pages(path: str, page: int) -> tuple[int, set[int]] | None:
    """``(pages in the database after the last valid commit, pages with a frame in a
    committed transaction)`` of the ``-wal`` file at ``path``, read the way SQLite's
    recovery reads it (header and cumulative frame checksums, salts); None if there is
    no such file or it holds no valid commit. Read-only."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < 32:
        return None
    magic, _, size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    if magic & 0xFFFFFFFE != 0x377F0682 or size != page:
        return None
    big = bool(magic & 1)
    s0, s1 = _wal_checksum(data[:24], 0, 0, big)
    if (s0, s1) != (c1, c2):
        return None
    committed: set[int] = set()
    pending: set[int] = set()
    npages = 0
    off = 32
    while off + 24 + page <= len(data):
        pgno, commit, f1, f2, fc1, fc2 = struct.unpack(">6I", data[off:off + 24])
        if (f1, f2) != (salt1, salt2) or pgno == 0:
            break
        s0, s1 = _wal_checksum(data[off:off + 8], s0, s1, big)
        s0, s1 = _wal_checksum(data[off + 24:off + 24 + page], s0, s1, big)
        if (s0, s1) != (fc1, fc2):
            break
        pending.add(pgno)
        if commit:
            committed |= pending
            pending = set()
            npages = commit
        off += 24 + page
    return (npages, committed) if npages else None


def _transfer_row(r: Sequence[Any]) -> TransferRow:
    owner = Owner(r[8], r[9], r[10] or "", r[12], r[13]) if r[8] is not None else None
    try:
        stored = json.loads(r[5])
    except ValueError as exc:
        raise JournalError(f"transfer {r[1]!r}: stored options are not JSON ({exc})") from None
    opts = Options.from_json(stored, where=f"transfer {r[1]!r}")
    return TransferRow(r[0], r[1], r[2], TransferState(r[3]), r[4], opts, r[6], r[7], owner,
                       r[11])


def _options_json(options: Options) -> str:
    return json.dumps(options.to_json(), sort_keys=True)


def _check_private(path: str, what: str, allow_shared: bool,
                   st: os.stat_result | None = None) -> None:
    """Refuse a journal (or its directory) that other users can write: whoever can edit
    the journal chooses what a resume writes. Sticky world-writable dirs (like /tmp) are
    still refused for the journal's directory: another user could plant the file."""
    if allow_shared:
        return
    st = st or os.stat(path)
    if st.st_mode & 0o022:
        raise SecurityError(
            f"{what} {path!r} is writable by other users (mode {st.st_mode & 0o777:o}); "
            "anyone who can edit it can redirect writes. Use a private directory, or pass "
            "Journal(..., allow_shared=True) (or AXLPY_ALLOW_SHARED_JOURNAL=1) to accept "
            "the risk"
        )
    if st.st_uid not in (os.getuid(), 0):
        raise SecurityError(
            f"{what} {path!r} is owned by uid {st.st_uid}, not you (uid {os.getuid()})"
        )
