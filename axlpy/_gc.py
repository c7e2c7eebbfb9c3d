"""gc: find (and optionally remove) the temp files transfers that are no longer alive left
under a directory, and finish prune's trash.

Temps are found by name (``.NAME.axlpy-TOKEN-ID-FILEID``) and matched to transfers in a
journal; a commit marker's temp (``._AXLPY_COMMIT.json.axlpy-*``) belongs to no journal.
Never removed: a temp of a transfer whose owner is alive (or on another host with a fresh
lease), a temp some process on this host has open, a temp unknown to the journal or a
marker temp younger than ``min_age``, and (unless ``include_resumable``) a temp a resume
would reuse. Each removal re-checks the entry right before unlinking it through its
parent's directory fd, then fsyncs that directory: if the process dies part-way, every
temp is either still there or gone, and running gc again finishes the job. The CLI
(``axlpy gc``) only renders the :class:`GcReport`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import UsageError
from ._journal import TransferRow
from ._manifest import MARKER_TEMP_PREFIX
from ._staging import TEMP_PATTERN
from ._state import TransferState

if TYPE_CHECKING:
    from ._transfer import Journal

__all__ = ["GcReport", "TempFile", "gc"]


@dataclass(frozen=True)
class TempFile:
    """One temp file gc found, what it is and what gc did with it.

    ``cls``: ``live`` (its transfer's owner is alive), ``open`` (a process here has it
    open), ``recent`` (unknown to the journal, or a marker temp, modified less than
    ``min_age`` ago), ``unknown`` (not in the journal), ``finished`` (its transfer is
    COMPLETED or CANCELLED), ``resumable`` (a resume would reuse it), ``marker`` (a commit
    marker's temp whose commit never renamed it). ``action``: ``delete`` (dry run),
    ``deleted``, ``keep`` or ``error`` (the unlink failed: ``error``). ``changed``: it was
    deletable but changed (``"changed"``) or was replaced (``"replaced"``) while gc ran,
    so it was kept.
    """

    path: bytes
    size: int
    mtime_ns: int
    age: float
    cls: str
    action: str
    token: str
    transfer_id: int
    file_id: int
    #: the transfer it belongs to, if the journal has it
    transfer: str | None = None
    state: TransferState | None = None
    #: ``pid@host`` of a live owner
    owner: str | None = None
    changed: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc` found and did; ``trash`` lists prune's trash directories
    ``(path, bytes)`` it finished (or, in a dry run, would finish)."""

    temps: tuple[TempFile, ...]
    trash: tuple[tuple[str, int], ...]
    dry_run: bool

    @property
    def errors(self) -> int:
        return sum(t.action == "error" for t in self.temps)


def gc(directory: str | bytes | os.PathLike[str], journal: Journal | None, *,
       delete: bool = False, include_resumable: bool = False,
       min_age: float = 3600.0) -> GcReport:
    """Classify every temp under ``directory`` against ``journal`` (None: no journal, so
    every temp is unknown to it) and, with ``delete``, remove the deletable ones and
    finish prune's trash. Raises UsageError if ``directory`` is not a directory."""
    top = os.path.abspath(os.fsencode(directory))
    if not os.path.isdir(top):
        raise UsageError(f"{os.fsdecode(directory)!r} is not a directory")
    rows = journal.db.transfers() if journal is not None else []
    by_token = {r.token: r for r in rows}
    opened = open_inodes()
    now = time.time()
    temps = []
    for p, st, ident in find_temps(top):
        age = now - st.st_mtime
        token, tid, fid = ident or ("", 0, 0)
        is_open = (st.st_dev, st.st_ino) in opened
        if ident is None:
            cls, deletable, row = _classify_marker_temp(age, is_open, min_age)
        else:
            cls, deletable, row = _classify(token, tid, by_token, age, is_open, min_age,
                                            include_resumable)
        action = "delete" if deletable else "keep"
        changed = error = None
        if deletable and delete:
            if _still_deletable(p, st, token, tid, journal, cls):
                try:
                    if _unlink_same_inode(p, st):
                        action = "deleted"
                    else:
                        action, changed = "keep", "replaced"
                except OSError as exc:
                    action, error = "error", exc.strerror or str(exc)
            else:
                action, changed = "keep", "changed"
        owner = (f"{row.owner.pid}@{row.owner.host}" if row is not None and cls == "live"
                 and row.owner is not None else None)
        temps.append(TempFile(p, st.st_size, st.st_mtime_ns, age, cls, action, token, tid,
                              fid, row.name if row else None, row.state if row else None,
                              owner, changed, error))
    from ._lifecycle import finish_trash_under

    # prune's trash: checkpoints already committed to deletion by an interrupted prune
    trash = tuple(finish_trash_under(os.fsdecode(top), dry_run=not delete))
    return GcReport(tuple(temps), trash, not delete)


def open_inodes() -> set[tuple[int, int]]:
    """(device, inode) of every file some process on this host has open (those we may
    inspect): a temp that is open is being written, whatever any journal says."""
    out: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                out.add((st.st_dev, st.st_ino))
    return out


def find_temps(top: bytes) -> Iterator[tuple[bytes, os.stat_result,
                                            tuple[str, int, int] | None]]:
    """Every entry below ``top`` (symlinks not followed) named like an axlpy temp: a
    file's (with its token, transfer id, file id) or a commit marker's (None)."""
    for dirpath, _dirs, names in os.walk(top, followlinks=False):
        for n in names:
            m = TEMP_PATTERN.search(n)
            marker = n.startswith(MARKER_TEMP_PREFIX)
            if (m is None or not n.startswith(b".")) and not marker:
                continue
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if marker or m is None:
                yield p, st, None
            else:
                yield p, st, (m.group(1).decode(), int(m.group(2)), int(m.group(3)))


def _is_live(row: TransferRow) -> bool:
    """Is some process (possibly on another host) working on this transfer now?"""
    if row.state.is_final or row.owner is None:
        return False
    return row.owner.alive() is not False


def _classify_marker_temp(age: float, is_open: bool,
                          min_age: float) -> tuple[str, bool, None]:
    """A commit marker's temp belongs to no journal: a commit killed before its rename
    left it (readers ignore it); only a commit running now could still rename it."""
    if is_open:
        return "open", False, None
    if age < min_age:
        return "recent", False, None
    return "marker", True, None


def _classify(token: str, tid: int, by_token: dict[str, TransferRow], age: float,
              is_open: bool, min_age: float,
              include_resumable: bool) -> tuple[str, bool, TransferRow | None]:
    """(class, deletable, transfer row) for one temp file."""
    row = by_token.get(token)
    if row is not None and row.id != tid:
        row = None
    if row is not None and _is_live(row):
        return "live", False, row
    if is_open:
        return "open", False, row
    if row is None:
        if age < min_age:
            return "recent", False, None
        return "unknown", True, None
    if row.state.is_final:
        return "finished", True, row
    return "resumable", include_resumable, row


def _still_deletable(p: bytes, st: os.stat_result, token: str, tid: int,
                     j: Journal | None, cls: str) -> bool:
    """Re-check right before unlinking: same file, not opened, its transfer not live."""
    try:
        now = os.lstat(p)
    except FileNotFoundError:
        return False
    if (now.st_dev, now.st_ino, now.st_mtime_ns) != (st.st_dev, st.st_ino, st.st_mtime_ns):
        return False
    if (now.st_dev, now.st_ino) in open_inodes():
        return False
    if cls == "marker":
        return True
    if j is None:
        return cls == "unknown"
    row = next((r for r in j.db.transfers() if r.token == token and r.id == tid), None)
    if row is None:
        return cls == "unknown"
    return not _is_live(row)


def _unlink_same_inode(p: bytes, st: os.stat_result) -> bool:
    """Unlink ``p`` only if its name still holds the inode gc classified, through the
    parent's directory fd (a directory swapped for a symlink cannot redirect it), then
    fsync that directory. Returns False, removing nothing, if the entry changed."""
    from ._durable import unlink_verified
    from ._staging import fsync_dir

    parent, name = os.path.split(p)
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not unlink_verified(dfd, name, st):
            return False
        fsync_dir(dfd)
    finally:
        os.close(dfd)
    return True
