"""Which filesystem a journal is on, by ``statfs(2)`` magic, and whether SQLite's WAL is
safe there.

Some facts about SQLite journals on shared filesystems:

- WAL mode keeps its index in a ``-shm`` file that every connection ``mmap``s; on a
  network or parallel filesystem (NFS, Lustre, GPFS, BeeGFS, CephFS, SMB, most FUSE
  filesystems) the pages of that mapping are not coherent between nodes, so two nodes can
  read different indexes of the same WAL: SQLite's documentation says WAL "does not work
  over a network filesystem".
- With ``PRAGMA locking_mode=EXCLUSIVE`` set before the first access, SQLite never creates
  or maps the ``-shm`` file (the index lives in the process's heap) and holds the
  database lock until the connection closes. The file format, the WAL and its fsyncs are
  the same, so commits stay durable exactly as in normal WAL mode (``synchronous=FULL``).
  The price: one process at a time per journal (others wait, then get "database is
  locked").
- That lock is still an ``fcntl`` lock. Lustre mounted without ``flock``/``localflock``
  refuses it (ENOSYS/EIO), and an NFS lock of a crashed client is held until the server's
  lock recovery (NFSv4 lease, ~90 s) frees it.

So :class:`axlpy._journal.JournalDB` asks :func:`detect` about the journal's directory and,
on a shared filesystem, applies the policy ``$AXLPY_JOURNAL_ON_SHARED_FS``:
``exclusive`` (default: EXCLUSIVE locking, see above), ``refuse`` (raise with advice) or
``wal`` (the operator asserts the filesystem is node-local, e.g. a local FUSE). Tests
inject a magic through :data:`FAKE_MAGIC_ENV` or by replacing :func:`statfs_magic`.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

__all__ = ["SHARED_FS", "FsInfo", "detect", "policy", "statfs_magic"]

#: statfs ``f_type`` of the filesystems where a WAL index cannot be shared between nodes
SHARED_FS: dict[int, str] = {
    0x6969: "NFS",
    0x0BD00BD0: "Lustre",
    0x47504653: "GPFS",
    0x19830326: "BeeGFS",
    0x00C36400: "CephFS",
    0x65735546: "FUSE",
    0x517B: "SMB",
    0xFF534D42: "CIFS",
    0xFE534D42: "SMB2",
    0x01021997: "9P",
    0x013111A8: "IBRIX",
    0x5346414F: "AFS",
}
FAKE_MAGIC_ENV = "AXLPY_FAKE_FS_MAGIC"  # tests only: pretend every path is on this magic
POLICY_ENV = "AXLPY_JOURNAL_ON_SHARED_FS"
POLICIES = ("exclusive", "refuse", "wal")

_libc: ctypes.CDLL | None = None


def statfs_magic(path: str) -> int | None:
    """``f_type`` of the filesystem holding ``path`` (None if statfs is unavailable)."""
    global _libc
    fake = os.environ.get(FAKE_MAGIC_ENV)
    if fake:
        return int(fake, 0)
    if _libc is None:
        # The process's own symbols (libc's among them): ctypes.util.find_library would
        # run ``ldconfig -p`` in a child process on every start-up (issue 14.5).
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    # f_type is the first member, a native long (__fsword_t)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


@dataclass(frozen=True)
class FsInfo:
    magic: int | None
    name: str  # "NFS", ..., or "local"
    shared: bool


def detect(path: str) -> FsInfo:
    """The filesystem of ``path`` (a directory that exists)."""
    magic = statfs_magic(path)
    name = SHARED_FS.get(magic or -1)
    return FsInfo(magic, name or "local", name is not None)


def policy() -> str:
    p = os.environ.get(POLICY_ENV, "exclusive").strip().lower() or "exclusive"
    if p not in POLICIES:
        from ._errors import UsageError

        raise UsageError(f"{POLICY_ENV} must be one of {POLICIES}, not {p!r}")
    return p
