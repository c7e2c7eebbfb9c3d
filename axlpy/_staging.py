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
- ``renameat2(2)`` with ``RENAME_NOREPLACE`` fails (EEXIST) instead of replacing an
  entry; with ``RENAME_EXCHANGE`` it swaps two entries atomically, so the entry a rename
  would have destroyed is still there (under the other name) until it is unlinked. Both
  need Linux >= 3.15 (tmpfs 3.17) and a filesystem that takes them (ext4, xfs, btrfs,
  tmpfs do; NFS and many FUSE filesystems answer EINVAL). Python's :mod:`os` has no
  ``renameat2``: it is called through libc (ctypes), errno checked.
- Every path operation here is relative to a directory file descriptor, opened per
  destination directory (again if the fd budget closed it meanwhile) and walked with
  O_NOFOLLOW below the root the user named, so a directory swapped for a symlink after
  the check cannot redirect a write.

Nothing here touches the journal: the caller commits before and after each step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from ._crashpoints import crash_point
from ._errors import SecurityError
from ._planted import planted

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "TEMP_PATTERN",
    "DirCache",
    "check_staged",
    "create_temp",
    "current_umask",
    "fsync_dir",
    "fsync_fd",
    "rename2",
    "same_entry",
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


#: ``renameat2`` flags (``linux/fs.h``)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: errnos meaning "this kernel or filesystem does not take renameat2 flags"
RENAME2_UNSUPPORTED = frozenset({_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP})
_renameat2: Callable[..., int] | None = None


def _no_renameat2(*_: object) -> int:
    ctypes.set_errno(_errno.ENOSYS)
    return -1


def _load_renameat2() -> Callable[..., int]:
    global _renameat2
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # the process's own libc
    except AttributeError:  # a libc without it (glibc < 2.28): as if unsupported
        _renameat2 = _no_renameat2
        return _no_renameat2
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint)
    fn.restype = ctypes.c_int
    _renameat2 = fn
    return fn


def rename2(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
    """``renameat2(dir_fd, old, dir_fd, new, flags)``. Raises OSError with the kernel's
    errno: FileExistsError for ``RENAME_NOREPLACE`` onto an existing ``new``, an errno in
    :data:`RENAME2_UNSUPPORTED` where the kernel or filesystem does not take ``flags``."""
    fn = _renameat2 or _load_renameat2()
    if fn(dir_fd, old, dir_fd, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(old), None, os.fsdecode(new))


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
    except FileNotFoundError as exc:
        # The kernel refuses new entries in a removed directory: ours was removed, or an
        # empty one we had just made was replaced by a rename, while we held its fd.
        if os.fstat(dir_fd).st_nlink == 0:
            raise FileNotFoundError(
                _errno.ENOENT, "its destination directory was removed or replaced while "
                "this transfer held it open; nothing was written there", name) from exc
        raise
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecurityError(f"temp name {os.fsdecode(name)!r} is taken by something that "
                            f"cannot be removed ({exc.strerror}); refusing to write") from exc
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError as exc:
        # Recreated between our unlink and create: someone is racing for this name.
        raise SecurityError(f"temp name {os.fsdecode(name)!r} was recreated by someone else "
                            "while being replaced; refusing to write through it") from exc


def unlink_quiet(dir_fd: int, name: bytes) -> bool:
    """Remove ``name`` from ``dir_fd``; return False if it was not there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def check_staged(dir_fd: int, tmp: bytes, *, kind: str, size: int, link: bytes | None,
                 owners: tuple[int, ...]) -> os.stat_result:
    """Just before a rename: the entry under ``tmp`` must still be what was staged.

    A regular file of ``size`` bytes owned by one of ``owners`` (or, for ``kind``
    "symlink", our symlink to ``link``), looked up without following a symlink. Returns
    its stat so the caller can check, after the rename, that the final name holds this
    very inode (:func:`same_entry`). Raises :class:`SecurityError` if something else took
    the temp's place (nothing has been renamed then); FileNotFoundError if it is gone.
    """
    st = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
    if kind == "symlink":
        ok = stat.S_ISLNK(st.st_mode) and os.readlink(tmp, dir_fd=dir_fd) == link
    else:
        ok = stat.S_ISREG(st.st_mode) and st.st_size == size
    if not ok or st.st_uid not in owners:
        raise SecurityError(f"temp {os.fsdecode(tmp)!r} was replaced by someone else "
                            "before it was published; refusing to rename it into place")
    return st


def same_entry(dir_fd: int, name: bytes, st: os.stat_result) -> bool:
    """Is ``name`` in ``dir_fd`` (not followed) the inode described by ``st``?"""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


class _Pinned:
    """:meth:`DirCache.pinned`: the directory's fd, pinned from ``__enter__`` to
    ``__exit__``. A class, not a generator: entered once per small file, the generator's
    machinery cost more than the pin itself."""

    __slots__ = ("_cache", "_key", "_rel", "_root")

    def __init__(self, cache: DirCache, root: bytes, rel: bytes) -> None:
        self._cache = cache
        self._root = root
        self._rel = rel
        self._key = b""

    def __enter__(self) -> int:
        cache, root, rel = self._cache, self._root, self._rel
        with cache._lock:
            fd = cache.open(root, rel)
            key = self._key = os.path.join(root, rel) if rel else root
            cache._pins[key] = cache._pins.get(key, 0) + 1
        return fd

    def __exit__(self, *exc: object) -> None:
        cache, key = self._cache, self._key
        with cache._lock:
            n = cache._pins[key] - 1
            if n:
                cache._pins[key] = n
            else:
                del cache._pins[key]
                cache._evict()


class DirCache:
    """Open directory fds for destination directories, at most ``max_open`` at a time.

    ``root`` is a directory the user named: it is opened by path (symlinks the user passed
    are theirs to pass). Components below it are opened one at a time with O_NOFOLLOW
    relative to their parent's fd, and created (then the parent fsynced) when missing and
    ``mkdirs`` is set. A symlink below the root is refused with :class:`SecurityError`
    unless ``follow_symlinks`` is set.

    With ``max_open`` set, the least recently used fds beyond it are closed and reopened
    (walked again the same way) when next needed; an fd in use by :meth:`pinned` is never
    closed, so several threads may share one cache. :meth:`open` returns an fd that stays
    valid only until the next call into the cache: single-threaded callers only.
    ``on_mkdir(path, stat)`` is called (under the cache's lock) after each directory this
    cache created is durable in its parent, so the journal can record it. With
    ``defer_mkdir_sync`` a directory created below a root is neither fsynced in its parent
    nor reported: it joins :attr:`pending` until the caller takes it
    (:meth:`take_pending`), fsyncs each parent once (or syncs the filesystem) and records
    the batch (``docs/design.md``, "Batched durability"); an ancestor the user named is
    still fsynced and reported at once.
    A directory whose path is in ``modes`` is created with that mode (the copy of a
    source directory: its final group and other bits plus owner rwx, so it is never
    wider than its source meanwhile, and gets its exact mode after its contents); others
    (ancestors the user named) 0777, all masked by the umask.
    """

    def __init__(self, *, mkdirs: bool = True, follow_symlinks: bool = False,
                 max_open: int | None = None,
                 on_mkdir: Callable[[bytes, os.stat_result], None] | None = None,
                 modes: Mapping[bytes, int] | None = None,
                 defer_mkdir_sync: bool = False) -> None:
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self._pins: dict[bytes, int] = {}
        self._lock = threading.RLock()
        self.mkdirs = mkdirs
        self.follow_symlinks = follow_symlinks
        self.max_open = max_open
        self.on_mkdir = on_mkdir
        self.modes = modes or {}
        #: directories created by this cache, in creation order
        self.created: list[bytes] = []
        #: most fds this cache held at once (for tests and measurements)
        self.peak = 0
        self.defer_mkdir_sync = defer_mkdir_sync
        #: directories created, not yet fsynced in their parent nor reported:
        #: ``(root, parent rel, path, stat)``, in creation order (``defer_mkdir_sync``)
        self.pending: list[tuple[bytes, bytes, bytes, os.stat_result]] = []

    def open(self, root: bytes, rel: bytes = b"") -> int:
        """The fd of ``root/rel`` (``rel`` may be empty or a relative path).

        Iterative (no recursion per component), so a destination tree thousands of levels
        deep opens like a shallow one. Raises :class:`SecurityError` for a symlink below
        ``root`` (unless ``follow_symlinks``) or a ``.``/``..``/empty component in ``rel``;
        FileNotFoundError for a missing directory when ``mkdirs`` is off.
        """
        with self._lock:
            key = os.path.join(root, rel) if rel else root
            fd = self._fds.get(key)
            if fd is not None:
                self._fds.move_to_end(key)
                return fd
            fd = self._walk(root, rel, key)
            self._evict(keep=key)
            return fd

    def pinned(self, root: bytes, rel: bytes = b"") -> _Pinned:
        """The fd of ``root/rel`` (as :meth:`open`), never closed while inside the block."""
        return _Pinned(self, root, rel)

    def _evict(self, keep: bytes | None = None) -> None:
        """Close least recently used unpinned fds while more than ``max_open`` are open."""
        self.peak = max(self.peak, len(self._fds))
        if self.max_open is None or len(self._fds) <= self.max_open:
            return
        for k in list(self._fds):
            if len(self._fds) <= self.max_open:
                break
            if k != keep and k not in self._pins:
                os.close(self._fds.pop(k))

    def _walk(self, root: bytes, rel: bytes, key: bytes) -> int:
        parts = rel.split(b"/") if rel else []
        if any(p in (b"", b".", b"..") for p in parts):
            raise SecurityError(f"destination path {os.fsdecode(key)!r} has an empty, '.' "
                                "or '..' component below its root; refusing to open it")
        keys = [root]
        for p in parts:
            keys.append(os.path.join(keys[-1], p))
        # The deepest directory already open; open each missing component below it.
        i = len(keys) - 1
        while i >= 0 and keys[i] not in self._fds:
            i -= 1
        if i < 0:
            self._fds[root] = self._open_root(root)
            i = 0
        for j in range(i + 1, len(keys)):
            self._fds[keys[j]] = self._open_child(self._fds[keys[j - 1]], parts[j - 1],
                                                  keys[j], parent=(root, b"/".join(parts[:j - 1])))
        return self._fds[key]

    def take_pending(self) -> list[tuple[bytes, bytes, bytes, os.stat_result]]:
        """The directories created since the last call, not yet fsynced in their parent
        nor reported (``defer_mkdir_sync``); the caller now owns making them durable."""
        with self._lock:
            out, self.pending = self.pending, []
        return out

    def _open_root(self, root: bytes) -> int:
        try:
            return os.open(root, _DIR_FLAGS)
        except FileNotFoundError:
            if not self.mkdirs:
                raise
        # Create the missing ancestors the user named (explicit: any symlink among them
        # is the user's own), from the deepest one that exists downwards.
        missing: list[tuple[bytes, bytes]] = []
        cur = root.rstrip(b"/")
        while True:
            parent, name = os.path.split(cur)
            missing.append((cur, name))
            try:
                pfd = os.open(parent or b".", _DIR_FLAGS)
                break
            except FileNotFoundError:
                if not parent or parent == cur:
                    raise
                cur = parent
        try:
            for key, name in reversed(missing):
                fd = self._open_child(pfd, name, key, explicit=True)
                os.close(pfd)
                pfd = fd
        except BaseException:
            os.close(pfd)
            raise
        return pfd

    def _open_child(self, pfd: int, name: bytes, key: bytes, *, explicit: bool = False,
                    parent: tuple[bytes, bytes] | None = None) -> int:
        nofollow = not (self.follow_symlinks or explicit)
        flags = _NOFOLLOW_DIR if nofollow else _DIR_FLAGS
        try:
            return self._open_at(pfd, name, flags, key, nofollow)
        except FileNotFoundError:
            if not self.mkdirs:
                raise
        try:
            os.mkdir(name, self.modes.get(key, 0o777), dir_fd=pfd)
        except FileExistsError:
            pass  # created meanwhile by someone else: open it like any other
        else:
            self.created.append(key)
            crash_point("stage.after_mkdir")
            if self.defer_mkdir_sync and parent is not None:
                fd = self._open_at(pfd, name, flags, key, nofollow)
                self.pending.append((*parent, key, os.fstat(fd)))
                return fd
            fsync_dir(pfd)
            crash_point("stage.after_mkdir_fsync")
            if self.on_mkdir is not None:
                self.on_mkdir(key, os.stat(name, dir_fd=pfd, follow_symlinks=False))
        # Opened again with the same flags: a directory swapped for a symlink between the
        # mkdir and this open is refused, not followed.
        return self._open_at(pfd, name, flags, key, nofollow)

    @staticmethod
    def _open_at(pfd: int, name: bytes, flags: int, key: bytes, nofollow: bool) -> int:
        try:
            return os.open(name, flags, dir_fd=pfd)
        except OSError as exc:
            # With O_NOFOLLOW, ELOOP means the last component is a symlink (whatever it
            # points to); ENOTDIR may be a symlink to a non-directory on some kernels.
            link = nofollow and exc.errno == _errno.ELOOP
            if nofollow and exc.errno == _errno.ENOTDIR:
                with contextlib.suppress(OSError):
                    link = stat.S_ISLNK(os.stat(name, dir_fd=pfd, follow_symlinks=False)
                                        .st_mode)
            if link:
                raise SecurityError(
                    f"refusing to follow symlink {os.fsdecode(key)!r} in a destination "
                    "path below the directory you named (create the transfer with "
                    "follow_dst_symlinks=True to allow it)"
                ) from exc
            raise

    def close(self) -> None:
        """Close every fd. Idempotent."""
        with self._lock:
            fds, self._fds = self._fds, OrderedDict()
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


def current_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask(0)`` then restoring it would leave the umask 0 for an instant in which
    another engine thread's mkdir or create gets a world-writable mode; Linux >= 4.7
    shows the umask in /proc/self/status, so read it there (the swap is the fallback).
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # a restrictive stand-in for the instant of the swap
    os.umask(umask)
    return umask
