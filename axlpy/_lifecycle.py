"""The life of committed checkpoints: the newest one to restore from, the ``latest``
pointer beside them, and retention (prune) that never loses the last good one.

A *checkpoints directory* holds one subdirectory per checkpoint, each committed by its
marker (:mod:`axlpy._manifest`). This module adds two kinds of names beside them:

- ``_AXLPY_LATEST.json``, the pointer: a small JSON file naming the newest committed
  checkpoint (by step, ties by commit time). Written as temp
  ``._AXLPY_LATEST.json.axlpy-<token>`` (O_EXCL, fsync), renamed over the pointer, then
  the directory fsynced, and only ever after the marker of the checkpoint it names is
  durable. A reader that follows it therefore never reaches an uncommitted checkpoint.
- ``.axlpy-trash.<name>.<token>``, prune's trash: a checkpoint being deleted is first
  renamed to this hidden name (and the directory fsynced), then emptied and removed. A
  crash part-way leaves either the whole checkpoint under its name or a trash directory,
  which no reader treats as a checkpoint and the next prune (or ``axlpy gc``) finishes.

Writers of the pointer and prune's plan-and-rename take an exclusive ``flock`` on the
checkpoints directory itself, so a commit's pointer update and a prune never interleave
(the pointer cannot go back to an older step, and prune never removes the checkpoint the
pointer names). ``docs/lifecycle.md`` has the on-disk states of every step.

Some facts about rename(2) and directory fsync that this relies on: a rename within one
directory is atomic (a reader sees the old or the new entry, never neither); it is durable
only once the directory is fsynced; a kill -9 (not a power loss) after the rename returns
leaves the rename in place even without the fsync.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._crashpoints import crash_point
from ._durable import publish_atomic, seal_json, sealed_crc, unseal_json
from ._errors import UsageError
from ._manifest import (
    InvalidCheckpointError,
    Manifest,
    check_checkpoint,
    is_hidden,
    order_key,
    read_manifest,
)
from ._staging import fsync_dir, unlink_quiet
from ._transfer import Transfer

__all__ = [
    "POINTER",
    "POINTER_FORMAT",
    "TRASH_PREFIX",
    "VERIFY",
    "Pointer",
    "PruneItem",
    "PruneReport",
    "RestorePoint",
    "RetentionPolicy",
    "after_commit",
    "commit_checkpoint",
    "finish_trash",
    "finish_trash_under",
    "live_checkpoints",
    "pointer_status",
    "prune",
    "read_pointer",
    "restore_point",
    "update_pointer",
]

log = logging.getLogger("axlpy.lifecycle")

#: The pointer's file name in a checkpoints directory.
POINTER = "_AXLPY_LATEST.json"
#: The ``format`` field of every pointer this axlpy writes.
POINTER_FORMAT = "axlpy-latest/1"
_POINTER_TEMP = "." + POINTER + ".axlpy-"
#: Prefix of prune's trash directories (hidden: never listed as checkpoints).
TRASH_PREFIX = ".axlpy-trash."
#: The checks :func:`restore_point` can apply.
VERIFY = ("none", "marker", "crc")


# -- finding the newest checkpoint ----------------------------------------------------------


@dataclass(frozen=True)
class RestorePoint:
    """The checkpoint to restart from.

    ``files`` maps every rank to the absolute paths of its files and symlinks (from the
    marker, in marker order); ``skipped`` lists the newer checkpoints that failed the
    check, as ``(path, reason)``.
    """

    path: str
    name: str
    step: int | None
    committed_ns: int
    manifest: Manifest
    files: Mapping[int, tuple[str, ...]]
    verify: str
    skipped: tuple[tuple[str, str], ...] = ()

    def rank_files(self, rank: int) -> tuple[str, ...]:
        """The files of ``rank`` (empty if it wrote none)."""
        return self.files.get(rank, ())


def _committed(directory: str) -> list[tuple[str, Manifest | None, str]]:
    """Every non-hidden subdirectory as ``(path, marker or None, why not)``, the ones with
    a readable marker newest first (:func:`axlpy._manifest.order_key`), then the rest."""
    out: list[tuple[str, Manifest | None, str]] = []
    for n in sorted(os.listdir(directory)):
        p = os.path.join(directory, n)
        if is_hidden(n) or not os.path.isdir(p) or os.path.islink(p):
            continue
        try:
            out.append((p, read_manifest(p), ""))
        except InvalidCheckpointError as exc:
            out.append((p, None, str(exc)))
    with_m = [t for t in out if t[1] is not None]
    with_m.sort(key=lambda t: order_key(t[1], t[0]) if t[1] else (False, 0, 0, ""),
                reverse=True)
    return with_m + [t for t in out if t[1] is None]


def _check(path: str, verify: str) -> tuple[Manifest | None, str]:
    """(manifest, "") if ``path`` passes ``verify``, else (None, the first reason)."""
    if verify == "none":
        try:
            return read_manifest(path), ""
        except InvalidCheckpointError as exc:
            return None, str(exc)
    r = check_checkpoint(path, verify=verify == "crc")
    if r.valid and r.manifest is not None:
        return r.manifest, ""
    extra = f" (and {len(r.problems) - 1} more)" if len(r.problems) > 1 else ""
    return None, (r.problems[0] if r.problems else "invalid") + extra


def _check_verify(verify: str) -> None:
    if verify not in VERIFY:
        raise UsageError(f"verify must be one of {VERIFY}, not {verify!r}")


def restore_point(directory: str | os.PathLike[str], verify: str = "marker"
                  ) -> RestorePoint | None:
    """The newest checkpoint under ``directory`` that passes ``verify``, or None.

    Newest is by the step in the marker, ties by commit time (then name). ``verify``:
    ``"none"`` needs a readable, intact marker; ``"marker"`` also every listed path
    present with its kind and size; ``"crc"`` also every file's CRC32C (reads every byte
    of each checkpoint tried). A checkpoint that fails is skipped, logged (logger
    ``axlpy.lifecycle``, WARNING) and listed in ``skipped``; only as many checkpoints as
    needed are read. Directories without a marker and hidden ones (trash, temps) are
    never candidates. Reads only.

    Raises:
        UsageError: ``verify`` is not one of :data:`VERIFY`, or ``directory`` is not a
            directory.
    """
    _check_verify(verify)
    d = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(d):
        raise UsageError(f"{d!r} is not a directory")
    skipped: list[tuple[str, str]] = []
    for p, m, _ in _committed(d):
        if m is None:
            continue
        got, why = _check(p, verify)
        if got is None:
            log.warning("skipping checkpoint %s (verify=%s): %s", p, verify, why)
            skipped.append((p, why))
            continue
        files: dict[int, list[str]] = {}
        for e in got.entries:
            if e.kind != "dir":
                files.setdefault(e.rank, []).append(os.path.join(p, e.path))
        return RestorePoint(p, os.path.basename(p), got.step, got.committed_ns, got,
                            {r: tuple(v) for r, v in sorted(files.items())}, verify,
                            tuple(skipped))
    return None


# -- the directory lock ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[int]:
    """Exclusive flock on ``directory`` (its own fd, yielded) for the duration. Where the
    filesystem has no flock (some Lustre mounts), proceed unlocked, logged."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("no flock on %s (%s): pointer and prune run unlocked", directory,
                        exc.strerror)
        yield dfd
    finally:
        os.close(dfd)  # closing the fd releases the flock


# -- the latest pointer ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    """The content of ``_AXLPY_LATEST.json``: the checkpoint's name (a subdirectory of
    the checkpoints directory), its step, its marker's commit time and body CRC32C."""

    checkpoint: str
    step: int | None
    committed_ns: int
    marker_crc32c: int
    updated_ns: int = field(default_factory=time.time_ns)

    def body(self) -> dict[str, Any]:
        return {"format": POINTER_FORMAT, "checkpoint": self.checkpoint, "step": self.step,
                "committed_ns": self.committed_ns, "marker_crc32c": self.marker_crc32c,
                "updated_ns": self.updated_ns}

    def names(self, m: Manifest, name: str) -> bool:
        """Does this pointer name checkpoint ``name`` with marker ``m``?"""
        return (self.checkpoint, self.committed_ns, self.marker_crc32c) == (
            name, m.committed_ns, _marker_crc(m))


def _marker_crc(m: Manifest) -> int:
    return sealed_crc(m.body())


def read_pointer(directory: str | os.PathLike[str]) -> Pointer | None:
    """The pointer of ``directory``, or None if there is none.

    Raises:
        InvalidCheckpointError: the pointer is unreadable, torn or of a foreign format
            (``axlpy latest --repair`` rewrites it).
    """
    path = os.path.join(os.fspath(directory), POINTER)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidCheckpointError(f"cannot read {path!r}: {exc}") from exc
    try:
        doc = unseal_json(raw, POINTER_FORMAT, "pointer")
        name = str(doc["checkpoint"])
        if not name or "/" in name or is_hidden(name):
            raise ValueError(f"checkpoint {name!r} is not a plain name")
        step = doc.get("step")
        return Pointer(name, None if step is None else int(step), int(doc["committed_ns"]),
                       int(doc["marker_crc32c"]), int(doc["updated_ns"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCheckpointError(f"latest pointer {path!r} is invalid: {exc}") from exc


def _write_pointer(dfd: int, ptr: Pointer) -> None:
    """temp (O_EXCL, fsync) -> rename over the pointer -> fsync the directory. Called
    with the directory lock held, so any pointer temp present is a dead writer's: gone
    first."""
    for n in os.listdir(dfd):
        if n.startswith(_POINTER_TEMP):
            unlink_quiet(dfd, os.fsencode(n))
    body = ptr.body()
    data = seal_json(body)
    tmp = (_POINTER_TEMP + secrets.token_hex(4)).encode()
    publish_atomic(dfd, POINTER.encode(), data, tmp, mode=0o644, after=_pointer_step)


def _pointer_step(step: str) -> None:
    """The crash points of a pointer publish (see :func:`publish_atomic`)."""
    if step == "temp":
        crash_point("latest.after_temp")
    elif step == "rename":
        crash_point("latest.after_rename")
    else:
        crash_point("latest.after_dir_fsync")


def _repair_locked(d: str, dfd: int, verify: str) -> tuple[Pointer | None, bool]:
    target = restore_point(d, verify)
    if target is None:
        return None, False
    try:
        cur = read_pointer(d)
    except InvalidCheckpointError:
        cur = None
    if cur is not None and cur.names(target.manifest, target.name):
        return cur, False
    ptr = Pointer(target.name, target.step, target.committed_ns,
                  _marker_crc(target.manifest))
    # The marker's rename is durable only once its directory is fsynced; its writer did
    # that, but a concurrent writer may be between its rename and its fsync.
    cfd = os.open(target.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_dir(cfd)
    finally:
        os.close(cfd)
    _write_pointer(dfd, ptr)
    return ptr, True


def update_pointer(directory: str | os.PathLike[str], *, verify: str = "marker"
                   ) -> tuple[Pointer | None, bool]:
    """Point ``_AXLPY_LATEST.json`` at the newest checkpoint that passes ``verify``.

    Called after a commit (the marker is already durable) and by
    ``axlpy latest --repair``; a no-op if the pointer already names it. Holds the
    directory lock, so a concurrent commit or prune cannot move the pointer back.
    Returns ``(pointer now on disk or None if there is no valid checkpoint, whether it
    was rewritten)``; with no valid checkpoint an existing pointer is left alone.

    On disk if the process dies: the old pointer (or none) and possibly a hidden temp
    ``._AXLPY_LATEST.json.axlpy-*`` (removed by the next update), or the new pointer;
    never a torn one. A crash after the commit and before this call leaves the old
    pointer, naming an older but committed checkpoint: the next commit or
    ``axlpy latest --repair`` moves it.
    """
    _check_verify(verify)
    d = os.path.abspath(os.fspath(directory))
    with _locked(d) as dfd:
        return _repair_locked(d, dfd, verify)


def pointer_status(directory: str | os.PathLike[str], found: RestorePoint | None
                   ) -> dict[str, Any]:
    """The pointer of ``directory`` judged against ``found`` (what :func:`restore_point`
    returned), for ``axlpy latest``: ``state`` is ``current`` (names ``found``),
    ``stale`` (names another checkpoint), ``missing``, ``invalid`` (unreadable), or
    ``none`` (no pointer and nothing to point at). Reads only."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), POINTER)
    doc: dict[str, Any] = {"path": path, "checkpoint": None, "step": None}
    try:
        cur = read_pointer(directory)
    except InvalidCheckpointError as exc:
        return dict(doc, state="invalid", detail=str(exc))
    if cur is None:
        return dict(doc, state="none" if found is None else "missing",
                    detail="no pointer" if found is None else
                    f"no pointer, newest is {found.name}")
    doc.update(checkpoint=cur.checkpoint, step=cur.step)
    if found is not None and cur.names(found.manifest, found.name):
        return dict(doc, state="current", detail=f"names {found.name}")
    return dict(doc, state="stale", detail=f"names {cur.checkpoint}, newest is "
                + (found.name if found is not None else "none"))


# -- trash ----------------------------------------------------------------------------------


def _trash_names(dfd: int) -> list[str]:
    return sorted(n for n in os.listdir(dfd) if n.startswith(TRASH_PREFIX))


def _delete_tree(dfd: int, name: str) -> int:
    """Remove ``name`` (a trash directory in ``dfd``) bottom-up through directory fds,
    symlinks never followed; returns the bytes freed. Entries already gone (another
    prune finishing the same trash) are not an error."""
    freed = 0
    # Bottom-up, deleting while walking: fwalk closes each directory fd once its
    # entries have been yielded. A vanished trash (another prune finished it) yields
    # nothing.
    for _root, dirs, files, rfd in os.fwalk(name, topdown=False, dir_fd=dfd,
                                            follow_symlinks=False):
        for n in files:
            with contextlib.suppress(FileNotFoundError):
                freed += os.stat(n, dir_fd=rfd, follow_symlinks=False).st_size
                os.unlink(n, dir_fd=rfd)
                crash_point("prune.after_unlink")
        for n in dirs:
            try:
                os.rmdir(n, dir_fd=rfd)
            except FileNotFoundError:
                pass
            except NotADirectoryError:  # a symlink to a directory: fwalk lists it here
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n, dir_fd=rfd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dfd)
        crash_point("prune.after_rmdir")
    return freed


def finish_trash(directory: str | os.PathLike[str], *, dry_run: bool = False
                 ) -> list[tuple[str, int]]:
    """Delete what a crashed prune left: every ``.axlpy-trash.*`` directory in
    ``directory`` (a checkpoint already committed to deletion). Returns ``(path, bytes)``
    per trash directory (bytes freed, or to be freed with ``dry_run``). A crash part-way
    leaves less of the same trash; run it again."""
    d = os.path.abspath(os.fspath(directory))
    out: list[tuple[str, int]] = []
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for n in _trash_names(dfd):
            if dry_run:
                out.append((os.path.join(d, n), _tree_bytes(os.path.join(d, n))))
            else:
                out.append((os.path.join(d, n), _delete_tree(dfd, n)))
        if out and not dry_run:
            fsync_dir(dfd)
            crash_point("prune.after_dir_fsync")
    finally:
        os.close(dfd)
    return out


def finish_trash_under(top: str | os.PathLike[str], *, dry_run: bool = False
                       ) -> list[tuple[str, int]]:
    """:func:`finish_trash` for every directory below ``top`` (symlinks not followed)
    that holds prune trash; for ``axlpy gc``."""
    parents: list[str] = []
    for dp, dns, _fns in os.walk(os.fspath(top), followlinks=False):
        if any(n.startswith(TRASH_PREFIX) for n in dns):
            parents.append(dp)
        dns[:] = [n for n in dns if not n.startswith(TRASH_PREFIX)]
    return [t for p in parents for t in finish_trash(p, dry_run=dry_run)]


def _tree_bytes(path: str) -> int:
    total = 0
    for dp, _d, fns in os.walk(path):
        for fn in fns:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dp, fn)).st_size
    return total


# -- retention ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    """What :func:`prune` keeps.

    ``keep_last`` (>= 1): the newest N committed checkpoints by step. ``keep_every``:
    also every checkpoint whose step is a multiple of K. ``verify``: the check the newest
    kept-for-safety checkpoint must pass (the newest that passes it is never deleted).
    ``uncommitted``: also delete directories without a valid marker, but only those whose
    every entry is older than ``min_age`` seconds and that no live transfer in the given
    journals writes to.
    """

    keep_last: int
    keep_every: int | None = None
    verify: str = "crc"
    uncommitted: bool = False
    min_age: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise UsageError(f"keep_last must be an integer >= 1, not {self.keep_last!r}")
        if self.keep_every is not None and (not isinstance(self.keep_every, int)
                                            or self.keep_every < 1):
            raise UsageError(f"keep_every must be an integer >= 1, not {self.keep_every!r}")
        _check_verify(self.verify)
        if self.min_age < 0:
            raise UsageError(f"min_age must be >= 0, not {self.min_age!r}")

    def to_json(self) -> dict[str, Any]:
        return {"keep_last": self.keep_last, "keep_every": self.keep_every,
                "verify": self.verify, "uncommitted": self.uncommitted,
                "min_age": self.min_age}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RetentionPolicy:
        return cls(int(d["keep_last"]), None if d.get("keep_every") is None
                   else int(d["keep_every"]), str(d.get("verify", "crc")),
                   bool(d.get("uncommitted", False)), float(d.get("min_age", 24 * 3600.0)))


@dataclass
class PruneItem:
    """One subdirectory's verdict: ``action`` is ``keep``, ``delete`` (dry run),
    ``deleted``, or ``error``; ``reason`` says why."""

    name: str
    path: str
    step: int | None
    committed_ns: int | None
    action: str
    reason: str
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "step": self.step,
                "committed_ns": self.committed_ns, "action": self.action,
                "reason": self.reason, "bytes": self.bytes}


@dataclass
class PruneReport:
    """What :func:`prune` did (or, dry run, would do). ``trash``: leftovers of an earlier
    crashed prune finished first, as ``(path, bytes)``."""

    directory: str
    policy: RetentionPolicy
    dry_run: bool
    items: list[PruneItem]
    trash: list[tuple[str, int]]
    pointer: str | None

    @property
    def deleted(self) -> list[PruneItem]:
        return [i for i in self.items if i.action in ("delete", "deleted")]

    def to_json(self) -> dict[str, Any]:
        return {"dir": self.directory, "dry_run": self.dry_run,
                "policy": self.policy.to_json(), "pointer": self.pointer,
                "checkpoints": [i.to_json() for i in self.items],
                "trash": [{"path": p, "bytes": b} for p, b in self.trash],
                "summary": {
                    "kept": sum(i.action == "keep" for i in self.items),
                    "deletable": sum(i.action == "delete" for i in self.items),
                    "deleted": sum(i.action == "deleted" for i in self.items),
                    "errors": sum(i.action == "error" for i in self.items),
                    "bytes": sum(i.bytes for i in self.deleted)}}


_TERMINAL = ("COMPLETED", "CANCELLED")


def _journal_files(journals: Iterable[str | os.PathLike[str]]) -> list[str]:
    out: list[str] = []
    for j in journals:
        p = os.fspath(j)
        if os.path.isdir(p):
            out += sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".db"))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise UsageError(f"journal {p!r} does not exist")
    return out


def live_checkpoints(directory: str, journals: Iterable[str | os.PathLike[str]]
                     ) -> dict[str, str]:
    """``{checkpoint name: why}`` for every subdirectory of ``directory`` that a transfer
    not COMPLETED or CANCELLED in one of ``journals`` writes to (its MPI checkpoint
    directory, or any destination inside it). Reads the journals only."""
    from ._transfer import Journal

    d = os.fsencode(os.path.abspath(directory))
    live: dict[str, str] = {}

    def note(path: bytes, why: str) -> None:
        rel = os.path.relpath(os.path.abspath(path), d)
        if rel != b"." and not rel.startswith(b".."):
            live.setdefault(os.fsdecode(rel.split(b"/")[0]), why)

    for jp in _journal_files(journals):
        with Journal(jp, create=False) as j:
            for name in j.names():
                t = j.open(name)
                state = t.state
                if state.value in _TERMINAL:
                    continue
                why = f"transfer {name!r} in {jp} is {state.value}"
                info = t.options.mpi
                if info and info.get("checkpoint_dir"):
                    note(os.fsencode(str(info["checkpoint_dir"])), why)
                for f in t.files():
                    note(os.fsencode(f.dst), why)
    return live


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    for dp, dns, fns in os.walk(path):
        for n in dns + fns:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dp, n)).st_mtime)
    return newest


def _plan(d: str, policy: RetentionPolicy, live: Mapping[str, str],
          pointer: str | None, now: float) -> list[PruneItem]:
    found = _committed(d)
    committed = [(p, m) for p, m, _ in found if m is not None]
    keep: dict[str, str] = {}
    for p, _m in committed[:policy.keep_last]:
        keep.setdefault(p, f"among the newest {policy.keep_last}")
    if policy.keep_every:
        for p, cm in committed:
            if cm.step is not None and cm.step % policy.keep_every == 0:
                keep.setdefault(p, f"step is a multiple of {policy.keep_every}")
    for p, _m in committed:  # the newest that passes the check is never deleted
        got, why = _check(p, policy.verify)
        if got is not None:
            keep[p] = f"newest checkpoint that passes verify={policy.verify}"
            break
        log.warning("checkpoint %s fails verify=%s: %s", p, policy.verify, why)
    items: list[PruneItem] = []
    for p, m, why_not in found:
        n = os.path.basename(p)
        step, cns = (m.step, m.committed_ns) if m is not None else (None, None)
        if n in live:
            items.append(PruneItem(n, p, step, cns, "keep", f"live: {live[n]}"))
        elif p in keep:
            items.append(PruneItem(n, p, step, cns, "keep", keep[p]))
        elif n == pointer:
            items.append(PruneItem(n, p, step, cns, "keep", "named by the latest pointer"))
        elif m is not None:
            items.append(PruneItem(n, p, step, cns, "delete", "older than the retained"))
        elif not policy.uncommitted:
            items.append(PruneItem(n, p, None, None, "keep",
                                   f"no valid marker ({why_not}); --uncommitted not given"))
        else:
            age = now - _newest_mtime(p)
            if age < policy.min_age:
                items.append(PruneItem(n, p, None, None, "keep",
                                       f"no valid marker, but modified {age:.0f}s ago "
                                       f"(< {policy.min_age:.0f}s): may be being written"))
            else:
                items.append(PruneItem(n, p, None, None, "delete",
                                       f"no valid marker, untouched for {age:.0f}s"))
    return items


def prune(directory: str | os.PathLike[str], policy: RetentionPolicy, *,
          journals: Sequence[str | os.PathLike[str]] = (), dry_run: bool = False
          ) -> PruneReport:
    """Apply ``policy`` to the checkpoints under ``directory``.

    Steps: finish any trash left by a crashed prune; under the directory lock, repair the
    latest pointer, plan (see :class:`RetentionPolicy`; never deleted: the newest
    checkpoint that passes ``policy.verify``, the one the pointer names, any checkpoint a
    live transfer in ``journals`` (files or directories of ``*.db``) writes to, any
    directory without a marker unless ``policy.uncommitted``), then rename each victim to
    ``.axlpy-trash.<name>.<token>`` and fsync the directory; release the lock; delete the
    trash directories and fsync the directory. ``dry_run`` only plans.

    On disk if the process dies: every checkpoint is either whole under its own name or
    (renamed) a hidden trash directory, possibly partly emptied, which the next prune or
    ``axlpy gc`` deletes. The pointer names a committed checkpoint throughout.

    Raises:
        UsageError: ``directory`` is not a directory, or a journal is missing.
        OSError: a rename or delete failed; checkpoints not yet renamed are untouched.
    """
    d = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(d):
        raise UsageError(f"{d!r} is not a directory")
    live = live_checkpoints(d, journals)
    trash = finish_trash(d, dry_run=dry_run)
    renamed: list[tuple[PruneItem, str]] = []
    with _locked(d) as dfd:
        if dry_run:
            try:
                cur = read_pointer(d)
            except InvalidCheckpointError:
                cur = None
            target = restore_point(d, "marker")
            pointer = target.name if target is not None else (cur.checkpoint if cur
                                                              else None)
        else:
            ptr, _ = _repair_locked(d, dfd, "marker")
            pointer = ptr.checkpoint if ptr is not None else None
        items = _plan(d, policy, live, pointer, time.time())
        for it in items:
            if it.action != "delete":
                continue
            it.bytes = _tree_bytes(it.path)
            if dry_run:
                continue
            tname = f"{TRASH_PREFIX}{it.name}.{secrets.token_hex(4)}"
            try:
                os.rename(it.name, tname, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                it.action, it.reason = "error", f"rename to trash failed: {exc.strerror}"
                continue
            crash_point("prune.after_trash_rename")
            renamed.append((it, tname))
        if renamed:
            fsync_dir(dfd)
            crash_point("prune.after_trash_fsync")
    if renamed:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for it, tname in renamed:
                try:
                    _delete_tree(dfd, tname)
                    it.action = "deleted"
                except OSError as exc:
                    it.action = "error"
                    it.reason = (f"renamed to trash {tname} but deleting failed "
                                 f"({exc.strerror}); the next prune or gc finishes it")
            fsync_dir(dfd)
            crash_point("prune.after_dir_fsync")
        finally:
            os.close(dfd)
    for it in items:
        if it.action in ("deleted", "delete"):
            log.info("prune %s: %s %s (%s)", d, it.action, it.name, it.reason)
    return PruneReport(d, policy, dry_run, items, trash, pointer)


# -- after a commit -------------------------------------------------------------------------


def after_commit(checkpoint_dir: str | os.PathLike[str],
                 retention: RetentionPolicy | None = None, *,
                 journals: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """Run once a checkpoint's marker is durable: move the latest pointer of its parent
    directory, then (with ``retention``) prune the parent. Never raises for a lifecycle
    failure: the checkpoint is committed whatever happens here; each failure is logged
    (WARNING) and returned as a message, and the next commit or ``axlpy latest --repair``
    / ``axlpy prune`` redoes it."""
    parent = os.path.dirname(os.path.abspath(os.fspath(checkpoint_dir)))
    problems: list[str] = []
    # Any error: this runs inside the MPI commit on rank 0 between the marker and the
    # broadcast of the outcome; raising here would leave the other ranks waiting.
    try:
        update_pointer(parent)
    except Exception as exc:
        problems.append(f"updating the latest pointer in {parent}: "
                        f"{type(exc).__name__}: {exc}")
    if retention is not None and not problems:
        try:
            rep = prune(parent, retention, journals=journals)
            problems += [f"prune {i.name}: {i.reason}" for i in rep.items
                         if i.action == "error"]
        except Exception as exc:
            problems.append(f"pruning {parent}: {type(exc).__name__}: {exc}")
    for p in problems:
        log.warning("after commit of %s: %s", checkpoint_dir, p)
    return problems


def commit_checkpoint(checkpoint_dir: str | os.PathLike[str],
                      transfers: Transfer | Sequence[Transfer], *,
                      step: int | None = None, meta: Mapping[str, Any] | None = None,
                      retention: RetentionPolicy | None = None,
                      journals: Sequence[str | os.PathLike[str]] = ()) -> Manifest:
    """Single process: commit ``checkpoint_dir`` from COMPLETED ``transfers`` (every file
    they published must be inside it), as the MPI commit does for one rank.

    ``step`` defaults to the step recorded at :meth:`axlpy.Journal.create` (``step=N``)
    of the first transfer that has one. Writes the marker (temp, fsync, rename, directory
    fsync), then :func:`after_commit` (pointer, and prune with ``retention``; the
    transfers' own journals are always consulted for live transfers).

    Raises:
        UsageError: a transfer is not COMPLETED or published outside ``checkpoint_dir``;
            no marker is written.
        OSError: writing the marker failed; no marker (or the old one) is on disk.
    """
    from ._manifest import build_manifest, write_manifest
    from .mpi import rank_entries

    ckpt = os.path.abspath(os.fspath(checkpoint_dir))
    ts = [transfers] if isinstance(transfers, Transfer) else list(transfers)
    if not ts:
        raise UsageError("commit_checkpoint needs at least one transfer")
    if step is None:
        step = next((s for t in ts if (s := t.options.step) is not None), None)
    entries = [e for t in ts for e in rank_entries(t.journal, t, 0, ckpt)]
    m = write_manifest(ckpt, build_manifest(os.path.basename(ckpt), 1, entries, meta,
                                            step=step))
    after_commit(ckpt, retention,
                 journals=[*journals, *sorted({t.journal.path for t in ts})])
    return m
