"""Turn ``add(src, dst)`` into journal rows: a file, a symlink, or a whole tree.

Walks iteratively (no recursion), with limits on entries and depth, and refuses what
cannot be copied safely: FIFOs, sockets, devices, a source equal to or containing its
destination. Symlinks follow the transfer's policy: ``copy`` (recreate the link),
``follow`` (copy what it points to) or ``refuse``. Nothing is written to disk here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ._errors import BadSourceError, UsageError

__all__ = ["Limits", "SourceRow", "walk_source"]

SYMLINK_POLICIES = ("copy", "follow", "refuse")

S_ISREG = stat.S_ISREG
#: how a source directory is opened to stat its entries by name
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """Bounds on what one ``add()`` may enumerate (documented in docs/security.md)."""

    max_entries: int = 2_000_000
    max_depth: int = 512


#: A ``walk_source`` row, in the column order :meth:`JournalDB.add_files` inserts:
#: ``(kind, src, dst, root, rel, size, mtime_ns, mode, uid, gid, link)``. A tuple, not a
#: dict: a 100k-file add makes 100k of them (issue 14.4).
SourceRow = tuple[str, bytes, bytes, bytes, bytes, int, int, int, int, int, bytes | None]

#: Indexes into a :data:`SourceRow`.
KIND: Final = 0
SRC: Final = 1
DST: Final = 2
ROOT: Final = 3


def _row(kind: str, src: bytes, dst: bytes, root: bytes, rel: bytes, st: os.stat_result,
         link: bytes | None = None) -> SourceRow:
    size = st.st_size if kind == "file" else (len(link) if link is not None else 0)
    return (kind, src, dst, root, rel, size, st.st_mtime_ns, st.st_mode & 0o7777,
            st.st_uid, st.st_gid, link)


def _follow(link: bytes) -> tuple[bytes, os.stat_result]:
    """Resolve a source symlink under the ``follow`` policy: its target's real path (sources
    are opened with O_NOFOLLOW, so the copy reads the target itself) and stat."""
    try:
        st = os.stat(link)
    except OSError as exc:
        raise BadSourceError(f"source {os.fsdecode(link)!r} is a dangling symlink") from exc
    return os.path.realpath(link), st


def _check_name(p: bytes, what: str) -> None:
    if b"\x00" in p:
        raise UsageError(f"{what} path contains a NUL byte")
    if not p:
        raise UsageError(f"{what} path is empty")


def _kind(st: os.stat_result, src: bytes) -> str:
    m = st.st_mode
    if stat.S_ISREG(m):
        return "file"
    if stat.S_ISDIR(m):
        return "dir"
    if stat.S_ISLNK(m):
        return "symlink"
    what = ("FIFO" if stat.S_ISFIFO(m) else "socket" if stat.S_ISSOCK(m)
            else "device file" if (stat.S_ISCHR(m) or stat.S_ISBLK(m)) else "special file")
    raise BadSourceError(f"source {os.fsdecode(src)!r} is a {what}; only regular files, "
                         "directories and symlinks can be transferred")


def walk_source(src: bytes, dst: bytes, *, symlinks: str = "copy",
                limits: Limits = Limits()) -> Iterator[SourceRow]:
    """Yield journal rows for ``src`` -> ``dst`` (paths as bytes, absolute).

    Raises :class:`BadSourceError` for a missing, unreadable or special source, a
    destination that is an existing directory when the source is a file, or a destination
    inside the source tree.
    """
    _check_name(src, "source")
    _check_name(dst, "destination")
    if symlinks not in SYMLINK_POLICIES:
        raise UsageError(f"symlinks must be one of {SYMLINK_POLICIES}, not {symlinks!r}")
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        raise BadSourceError(f"source {os.fsdecode(src)!r} does not exist") from None
    except OSError as exc:
        raise BadSourceError(f"source {os.fsdecode(src)!r}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        if symlinks == "refuse":
            raise BadSourceError(f"source {os.fsdecode(src)!r} is a symlink and the "
                                 "symlink policy is 'refuse'")
        if symlinks == "follow":
            src, st = _follow(src)
    kind = _kind(st, src)
    _check_not_same(src, dst, kind)
    root, base = os.path.split(dst)
    if kind == "file":
        _check_readable(src)
        if os.path.isdir(dst):
            raise BadSourceError(
                f"destination {os.fsdecode(dst)!r} is an existing directory; name the file "
                "to create inside it (e.g. dst/name)")
        yield _row("file", src, dst, root, base, st)
        return
    if kind == "symlink":
        yield _row("symlink", src, dst, root, base, st, os.readlink(src))
        return
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise BadSourceError(f"destination {os.fsdecode(dst)!r} exists and is not a "
                             "directory, but the source is a directory")
    yield from _walk_tree(src, dst, st, symlinks, limits)


def _check_readable(src: bytes) -> None:
    if not os.access(src, os.R_OK):
        raise BadSourceError(f"source {os.fsdecode(src)!r} is not readable (permission "
                             "denied)")


def _check_not_same(src: bytes, dst: bytes, kind: str) -> None:
    rs, rd = os.path.realpath(src), os.path.realpath(dst)
    if rs == rd or (os.path.exists(dst) and os.path.samefile(src, dst)):
        raise BadSourceError(f"source and destination are the same: {os.fsdecode(src)!r}")
    if kind == "dir" and (rd + b"/").startswith(rs + b"/"):
        raise BadSourceError(f"destination {os.fsdecode(dst)!r} is inside the source "
                             f"directory {os.fsdecode(src)!r}")


def _walk_tree(src: bytes, dst: bytes, st: os.stat_result, symlinks: str,
               limits: Limits) -> Iterator[SourceRow]:
    count = 0
    seen = {(st.st_dev, st.st_ino)}
    # (source dir, relative path below the destination root, depth, dir stat)
    stack: list[tuple[bytes, bytes, int, os.stat_result]] = [(src, b"", 0, st)]
    # Paths joined by concatenation (os.path.join per entry cost ~1.4 us of a 100k-file
    # add): a name from scandir has no slash, and rel never ends with one.
    dprefix = dst if dst.endswith(b"/") else dst + b"/"
    while stack:
        sdir, rel, depth, dst_st = stack.pop()
        if depth > limits.max_depth:
            raise BadSourceError(f"source tree {os.fsdecode(src)!r} is nested deeper than "
                                 f"{limits.max_depth} levels")
        yield _row("dir", sdir, dprefix + rel if rel else dst, dst, rel, dst_st)
        try:
            # Each entry is stat'ed and checked by name through this fd: the directory's
            # path is resolved once, not once per entry (0.5 us of a 100k-file add).
            dfd = os.open(sdir, _DIR_FLAGS)
        except OSError as exc:
            raise BadSourceError(f"cannot list source directory {os.fsdecode(sdir)!r}: "
                                 f"{exc.strerror}") from exc
        try:
            entries: list[os.DirEntry[bytes]] = []
            try:
                with os.scandir(sdir) as it:
                    for e in it:
                        # Counted while listing: one directory with millions of entries
                        # is refused before its listing fills memory.
                        if count + len(entries) >= limits.max_entries:
                            raise BadSourceError(
                                f"source tree {os.fsdecode(src)!r} has more than "
                                f"{limits.max_entries} entries (Limits.max_entries)")
                        entries.append(e)
            except OSError as exc:
                raise BadSourceError(f"cannot list source directory "
                                     f"{os.fsdecode(sdir)!r}: {exc.strerror}") from exc
            # Taken from the end of a reversed sort: each entry is dropped as its row is
            # made, so a 100k-entry directory is not held twice.
            entries.sort(key=lambda e: e.name, reverse=True)
            subdirs = []
            while entries:
                e = entries.pop()
                count += 1
                if count > limits.max_entries:
                    raise BadSourceError(f"source tree {os.fsdecode(src)!r} has more than "
                                         f"{limits.max_entries} entries (Limits.max_entries)")
                name = e.name
                path = e.path
                erel = rel + b"/" + name if rel else name
                est = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                m = est.st_mode
                if S_ISREG(m):  # the common case, inline: _kind, _check_readable, _row
                    if not os.access(name, os.R_OK, dir_fd=dfd):
                        raise BadSourceError(f"source {os.fsdecode(path)!r} is not readable "
                                             "(permission denied)")
                    yield ("file", path, dprefix + erel, dst, erel, est.st_size,
                           est.st_mtime_ns, m & 0o7777, est.st_uid, est.st_gid, None)
                    continue
                if stat.S_ISLNK(m):
                    if symlinks == "refuse":
                        raise BadSourceError(f"source {os.fsdecode(path)!r} is a symlink "
                                             "and the symlink policy is 'refuse'")
                    if symlinks == "copy":
                        yield _row("symlink", path, dprefix + erel, dst, erel, est,
                                   os.readlink(path))
                        continue
                    path, est = _follow(path)
                k = _kind(est, path)
                if k == "dir":
                    key = (est.st_dev, est.st_ino)
                    if key in seen:
                        raise BadSourceError(f"symlink loop at {os.fsdecode(path)!r}")
                    seen.add(key)
                    subdirs.append((path, erel, depth + 1, est))
                else:
                    _check_readable(path)
                    yield _row("file", path, dprefix + erel, dst, erel, est)
        finally:
            os.close(dfd)
        stack.extend(reversed(subdirs))
