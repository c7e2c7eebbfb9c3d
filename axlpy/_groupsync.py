"""Batched durability: one ``syncfs(2)`` per filesystem per batch of staged files.

Some facts about ``syncfs``, which the batched path (``docs/design.md``, "Batched
durability") is built on:

- ``syncfs(fd)`` writes back every dirty page and inode of the filesystem holding ``fd``
  and, on ext4, xfs and btrfs, commits the journal (log, transaction) and flushes the
  device cache before it returns. So every file whose ``write`` returned before the call
  is then as durable as after its own fsync, and so is every directory entry created
  before it.
- Since Linux 5.8 it reports a writeback error (EIO, ENOSPC) raised on that filesystem
  since the fd was *opened* (``sb->s_wb_err`` sampled at open); each call advances the
  fd's mark. So the fd is opened before the first write it must cover and kept open.
- The error names no file. A file's own fsync reports the file's writeback error
  (``mapping->wb_err``, which ``syncfs`` does not consume), even on a descriptor opened
  after the error if nobody has seen it yet: that is how the caller attributes it.
- On NFS, Lustre, GPFS and other network or parallel filesystems ``syncfs`` flushes the
  whole client's dirty data for that mount — other users' too — and may take minutes;
  FUSE does not pass it to the server (only virtiofs gets ``FUSE_SYNCFS``). So it is used
  only where the ``statfs`` magic says ext4, xfs or btrfs (tmpfs and ramfs too: both
  calls are no-ops there), unless ``AXLPY_SYNCFS`` says otherwise.
- Python 3.11's :mod:`os` has no ``syncfs``: it is called through libc (ctypes), errno
  checked.

Nothing here touches the journal or renames anything: the driver calls :meth:`GroupSync.sync`
where ``docs/design.md`` puts it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from ._fstype import statfs_magic
from ._planted import planted

__all__ = ["LOCAL_FS", "MODE_ENV", "GroupSync", "mode", "syncfs"]

#: statfs ``f_type`` of the filesystems where one syncfs is cheap and complete
LOCAL_FS: dict[int, str] = {
    0xEF53: "ext4",  # also ext2/ext3
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
}
MODE_ENV = "AXLPY_SYNCFS"
MODES = ("auto", "off", "on")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_libc: ctypes.CDLL | None = None


def syncfs(fd: int) -> None:
    """``syncfs(2)`` on the filesystem of ``fd``; raises OSError with the kernel's errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc, no lookup
    if _libc.syncfs(ctypes.c_int(fd)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def mode() -> str:
    """``$AXLPY_SYNCFS``: ``auto`` (local filesystems only, the default), ``off`` (always
    fsync each file) or ``on`` (every filesystem). The planted bugs of the per-file path
    (``fsync_noop``, ``rename_before_fsync``) select it, so the sweeps still see them."""
    m = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if m not in MODES:
        from ._errors import UsageError

        raise UsageError(f"{MODE_ENV} must be one of {MODES}, not {m!r}")
    if planted("fsync_noop") or planted("rename_before_fsync"):
        return "off"
    return m


def _existing_ancestor(path: bytes) -> bytes:
    """``path`` or its nearest ancestor that exists (a root not created yet will be
    created in that ancestor's filesystem)."""
    cur = path
    while not os.path.isdir(cur):
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    return cur or b"/"


class GroupSync:
    """One directory fd per filesystem of the destination roots, opened before the run's
    first write, and the ``syncfs`` of a batch on each.

    ``devs`` maps a device (``st_dev``) to its fd; a device whose ``syncfs`` failed once
    is dropped (:attr:`failed`): its files are fsynced one by one from then on. Not
    thread-safe: the driver thread calls it. :meth:`close` releases the fds.
    """

    def __init__(self, roots: Iterable[bytes]) -> None:
        self.devs: dict[int, int] = {}
        self.failed: dict[int, str] = {}
        m = mode()
        if m == "off":
            return
        for root in dict.fromkeys(roots):
            where = _existing_ancestor(root)
            if m == "auto" and statfs_magic(os.fsdecode(where)) not in LOCAL_FS:
                continue
            try:
                fd = os.open(where, _DIR_FLAGS)
            except OSError:
                continue  # not readable (mode --x): its files are fsynced one by one
            dev = os.fstat(fd).st_dev
            if dev in self.devs:
                os.close(fd)
            else:
                self.devs[dev] = fd

    @property
    def active(self) -> bool:
        """Does any filesystem of the roots take the batched path?"""
        return bool(self.devs)

    def covers(self, dev: int) -> bool:
        """Will :meth:`sync` make files on device ``dev`` durable?"""
        return dev in self.devs

    def sync(self, devs: Iterable[int]) -> set[int]:
        """One ``syncfs`` on each of ``devs`` this object covers; returns the devices it
        made durable. A device whose call failed is not returned, is recorded in
        :attr:`failed` (with the error) and never covered again in this run."""
        done: set[int] = set()
        for dev in dict.fromkeys(devs):
            fd = self.devs.get(dev)
            if fd is None:
                continue
            if not planted("syncfs_skipped"):
                try:
                    syncfs(fd)
                except OSError as exc:
                    self.failed[dev] = exc.strerror or str(exc)
                    os.close(self.devs.pop(dev))
                    continue
            done.add(dev)
        return done

    def close(self) -> None:
        """Close every fd. Idempotent."""
        devs, self.devs = self.devs, {}
        for fd in devs.values():
            os.close(fd)

    def __enter__(self) -> GroupSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
