"""Temp names, directory handles and the durable filesystem steps of a publish.

Some facts about rename(2) and directory fsync, which this module is built on:

- rename(2) within one directory (or one filesystem) is atomic: a reader sees the old file
  or the new one, never a mix. That is why temp files live beside their destination.
- rename(2) is *not* durable by itself. The new directory entry reaches the disk only when
  the directory is fsynced; after a power loss without it the old name may come back.
  The same holds for mkdir(2), unlink(2) and for the entry of a newly created file: an
  fsync of the file makes its data durable, not its name.
- fsync of the temp file must come before the rename, or a power loss can leave the
  final name pointing at a file whose data never reached the disk (zero length, or holes).
- Every path operation here is relative to a directory file descriptor, opened once per
  destination directory and walked with O_NOFOLLOW below the root the user named, so a
  directory swapped for a symlink after the check cannot redirect a write.

Nothing here touches the journal: the caller commits before and after each step.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from ._crashpoints import crash_point
from ._errors import SecurityError
from ._planted import planted

__all__ = [
    "TEMP_PATTERN",
    "DirCache",
    "create_temp",
    "fsync_dir",
    "fsync_fd",
    "temp_name",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOFOLLOW_DIR = _DIR_FLAGS | os.O_NOFOLLOW
_MAX_NAME = 255

#: A temp file name: ``.<base>.axlpy-<token>-<transfer id>-<file id>`` (see :func:`temp_name`).
TEMP_PATTERN = re.compile(rb"\.axlpy-([0-9a-f]{8})-(\d+)-(\d+)$")


def temp_name(final: bytes, token: str, transfer_id: int, file_id: int) -> bytes:
    """The temp name for ``final`` (a basename): hidden, recognisably axlpy's, traceable to
    its transfer by ``token`` (8 hex digits, unique per transfer) and ids, and no longer
    than NAME_MAX."""
    suffix = f".axlpy-{token}-{transfer_id}-{file_id}".encode()
    room = _MAX_NAME - len(suffix) - 1
    base = final[:room]
    return b"." + base + suffix


def fsync_fd(fd: int) -> None:
    """fsync a staged file (the planted bug ``fsync_noop`` skips it)."""
    if planted("fsync_noop"):
        return
    os.fsync(fd)


def fsync_dir(dir_fd: int) -> None:
    """fsync a directory so its entries (renames, creates, unlinks) are durable."""
    if planted("no_dir_fsync"):
        return
    os.fsync(dir_fd)


def create_temp(dir_fd: int, name: bytes, *, replace_stale: bool = True) -> int:
    """Create and open ``name`` in ``dir_fd`` for writing: O_CREAT|O_EXCL|O_NOFOLLOW, 0600.

    A stale temp of ours (left by a crash) or anything planted under our name is removed
    and the create retried once; unlinking a planted symlink removes the link, not its
    target. Returns the fd. On error nothing is left behind under ``name``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        if not replace_stale:
            raise
        os.unlink(name, dir_fd=dir_fd)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)


def unlink_quiet(dir_fd: int, name: bytes) -> bool:
    """Remove ``name`` from ``dir_fd``; return False if it was not there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


class DirCache:
    """Open directory fds for destination directories, each resolved once.

    ``root`` is a directory the user named: it is opened by path (symlinks the user passed
    are theirs to pass). Components below it are opened one at a time with O_NOFOLLOW
    relative to their parent's fd, and created (then the parent fsynced) when missing and
    ``mkdirs`` is set. A symlink below the root is refused with :class:`SecurityError`
    unless ``follow_symlinks`` is set.
    """

    def __init__(self, *, mkdirs: bool = True, follow_symlinks: bool = False) -> None:
        self._fds: dict[bytes, int] = {}
        self.mkdirs = mkdirs
        self.follow_symlinks = follow_symlinks
        #: directories created by this cache, in creation order (for the journal's events)
        self.created: list[bytes] = []

    def open(self, root: bytes, rel: bytes = b"") -> int:
        """The fd of ``root/rel`` (``rel`` may be empty or a relative path)."""
        key = os.path.join(root, rel) if rel else root
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        if not rel:
            fd = self._open_root(root)
        else:
            parent, name = os.path.split(rel)
            pfd = self.open(root, parent)
            fd = self._open_child(pfd, name, key)
        self._fds[key] = fd
        return fd

    def _open_root(self, root: bytes) -> int:
        try:
            return os.open(root, _DIR_FLAGS)
        except FileNotFoundError:
            if not self.mkdirs:
                raise
        parent, name = os.path.split(root.rstrip(b"/"))
        pfd = self.open(parent or b".")
        return self._open_child(pfd, name, root, explicit=True)

    def _open_child(self, pfd: int, name: bytes, key: bytes, *, explicit: bool = False) -> int:
        flags = _DIR_FLAGS if (self.follow_symlinks or explicit) else _NOFOLLOW_DIR
        try:
            return os.open(name, flags, dir_fd=pfd)
        except FileNotFoundError:
            if not self.mkdirs:
                raise
        except OSError as exc:
            if exc.errno in (_errno.ELOOP, _errno.ENOTDIR):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise SecurityError(
                        f"refusing to follow symlink {os.fsdecode(key)!r} in a destination "
                        "path (pass follow_symlinks=True to allow it)"
                    ) from exc
            raise
        try:
            os.mkdir(name, 0o777, dir_fd=pfd)
        except FileExistsError:
            pass  # created meanwhile by someone else: open it like any other
        else:
            self.created.append(key)
            crash_point("stage.after_mkdir")
            fsync_dir(pfd)
            crash_point("stage.after_mkdir_fsync")
        return os.open(name, flags, dir_fd=pfd)

    def close(self) -> None:
        """Close every fd. Idempotent."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> DirCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_dir_quiet(path: bytes) -> Iterator[int | None]:
    """An fd for ``path`` if it is a directory that exists, else None (for cleanup paths)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)
