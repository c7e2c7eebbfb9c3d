"""A FUSE filesystem that simulates power loss.

A ``kill -9`` cannot find durability bugs: the page cache survives the process.  ``powerfs``
passes every operation through to a backing directory but remembers, separately, what has been
made *durable*.  On :meth:`PowerLossFS.power_cut` it throws away everything else, leaves the
backing directory holding exactly the durable state, and detaches the mount.  Remounting then
lets recovery code run on what a machine would find after the power came back.

Usage::

    with PowerLossFS(backing, mountpoint) as fs:
        run_worker(mountpoint)         # real files, real fsync, real SQLite
        fs.power_cut()                 # un-synced data and directory entries are gone
        fs.remount()
        recover(mountpoint)            # sees only what was made durable

or from a shell::

    python -m fault_injection.powerfs mount BACKING MOUNTPOINT --state STATE &
    python -m fault_injection.powerfs powercut STATE

The durability model (see ``docs/powerfs.md``):

* A file's *data* (contents and size) becomes durable only by ``fsync``/``fdatasync`` on that
  file.  On a cut each file reverts to its content at its last fsync; a file created since the
  mount and never fsynced is empty.
* A *directory entry* (create, mkdir, symlink, link, unlink, rmdir, both sides of a rename)
  becomes durable only by ``fsync`` of the directory that holds it.  Each directory's durable
  entry list is the snapshot taken at its last fsync, independently of every other directory.
  fsync of a file never makes its name durable.
* Everything on disk when the filesystem is mounted counts as durable.
* An inode keeps its inode number and its ctime across a cut, as on a real filesystem: the
  ctime of its last durable state (its last fsync, or the mount for an untouched inode).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar

__all__ = [
    "PowerFSError",
    "PowerLossFS",
    "fuse_unavailable_reason",
    "main",
    "power_cut",
    "send_command",
    "serve",
]

log = logging.getLogger("fault_injection.powerfs")

# Some facts about power loss, fsync and directories (Linux, ext4/xfs-like, POSIX wording):
#
# - write(2) only reaches the page cache.  fsync(fd)/fdatasync(fd) makes that file's data and
#   size durable.  fdatasync may skip mtime, but never the size, so both count the same here.
# - A name lives in its directory.  Creating, linking, unlinking or renaming a name changes the
#   directory, and POSIX only promises that change once the *directory* is fsynced.  ext4 often
#   commits it earlier (fsync of a new file commits the journal that holds its create), xfs too;
#   we do not, so a missing directory fsync shows up on every run instead of on some kernels.
# - rename(2) across directories changes two directories.  A journaling fs commits both halves
#   at once; we keep one durable snapshot per directory, so if only the destination is fsynced
#   the file has both names after a cut, and if only the source is fsynced it has neither.
#   Renames inside one directory (temp file next to final name) are atomic either way.
# - FUSE never sees sync(2)/syncfs(2) (the kernel sends FUSE_SYNCFS to virtiofs only), so they
#   make nothing durable here.  O_SYNC/O_DSYNC writes work: the kernel follows each one with an
#   fsync request (generic_write_sync).
# - Mode, owner, mtime/atime and xattrs are passed through but not modelled.  Inode numbers
#   and ctimes are: the mount uses ``use_ino`` and reports a number per inode that survives a
#   cut, and a ctime that stays that of the inode's last durable state until its next change
#   (a cut rebuilds the backing tree, which gives the backing files new ctimes and the
#   fsynced copies new inode numbers; ``_DURABLE_ATTRS`` in the state dir carries both over).
# - The kernel keeps no dirty pages for us: without the writeback_cache option every write(2)
#   and every dirtied mmap page is sent to this process before the syscall returns or before
#   msync/munmap/fsync completes, so "what this process has seen" is "what the disk has seen".

_ROOT_INO: Final = 1
_DIR_FH_BASE: Final = 1 << 40  # directory handles never collide with backing file descriptors
_COPY_CHUNK: Final = 1 << 20
_RENAME_NOREPLACE: Final = 1
_CONTROL_NAME: Final = "control.sock"
_DURABLE_ATTRS: Final = "durable-attrs.json"  # {path: [st_ino, st_ctime_ns]} across a cut
_INO_SHIFT: Final = 1 << 40  # moves a backing inode number off one already reported

Kind = Literal["file", "dir", "symlink"]

P = ParamSpec("P")
R = TypeVar("R")


class PowerFSError(RuntimeError):
    """The powerfs daemon could not be started, reached or stopped.

    Raised by :class:`PowerLossFS` and :func:`send_command`.  It is not raised for errors of the
    code under test: those come back as ``OSError`` from the mounted filesystem (after a power
    cut, any operation on a file that was open at the time fails with ``EIO`` or ``ENOTCONN``).
    """


@dataclasses.dataclass
class _Node:
    """One inode.  ``ino`` numbers (the keys) are ours; ``st_ino`` is what ``stat`` reports."""

    kind: Kind
    mode: int  # permission bits at creation or at the last fsync
    preexisting: bool  # on disk at mount (or sync); its durable content is that content
    st_ino: int = 0  # reported inode number: kept across cuts (use_ino)
    ctime: int | None = None  # reported ctime_ns until the next change, else the backing one
    saved_ctime: int | None = None  # reported ctime_ns at the last fsync (with ``saved``)
    saved: bool = False  # objects/<ino> holds the content of the last fsync
    dirty: bool = False  # data written since the last fsync (for status only)
    links: int = 0  # live directory entries pointing here
    target: str = ""  # symlink target


@dataclasses.dataclass
class _Handle:
    fd: int
    ino: int


def _op(func: Callable[Concatenate[_PowerOps, P], R]) -> Callable[Concatenate[_PowerOps, P], R]:
    """Serialise FUSE callbacks and fail them all once the power is cut."""

    @functools.wraps(func)
    def wrapper(self: _PowerOps, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._hold(func.__name__, args)  # outside the mutex: other operations go on
        with self.mutex:
            if self.dead:
                raise OSError(errno.EIO, "powerfs: power was cut")
            return func(self, *args, **kwargs)

    return wrapper


class _PowerOps:
    """The filesystem: passthrough to ``backing`` plus the durable-state model.

    Method names are the ``mfusepy.Operations`` callback names; mfusepy installs exactly the
    callbacks that exist on this object.  Everything else is private (underscore) or
    ``mutex``/``dead``, which are no callback names.
    """

    use_ns = True  # mfusepy: timestamps as integer nanoseconds

    def __init__(self, backing: Path, state: Path) -> None:
        self.mutex = threading.RLock()
        self.dead = False
        # Stall simulation: callbacks named in _held wait until released (block/release).
        self._gate = threading.Condition()
        self._held: set[str] = set()
        self._waiting: list[tuple[str, str]] = []
        self._backing = backing
        self._objects = state / "objects"
        self._rebuild = state / "rebuild"
        for sub in (self._objects, self._rebuild):
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir(parents=True)
        self._nodes: dict[int, _Node] = {}
        self._live: dict[int, dict[str, int]] = {}
        self._durable: dict[int, dict[str, int]] = {}
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, int] = {}
        self._next_ino = _ROOT_INO
        self._next_dir_fh = _DIR_FH_BASE
        self._attrs_file = state / _DURABLE_ATTRS
        self._taken: set[int] = set()  # reported inode numbers in use
        self._scan()

    # -- stalls ------------------------------------------------------------------------------

    def _hold(self, op: str, args: tuple[Any, ...]) -> None:
        """Block this callback while ``op`` is held, like a server that stopped answering."""
        with self._gate:
            if op not in self._held:
                return
            entry = (op, str(args[0]) if args and isinstance(args[0], str) else "")
            self._waiting.append(entry)
            self._gate.notify_all()
            self._gate.wait_for(lambda: op not in self._held)
            self._waiting.remove(entry)

    def _block(self, ops: Sequence[str]) -> None:
        with self._gate:
            self._held.update(ops)

    def _release_held(self) -> None:
        with self._gate:
            self._held.clear()
            self._gate.notify_all()

    def _wait_blocked(self, timeout: float) -> list[tuple[str, str]]:
        """Wait until some callback is held; the (op, path) of each one held now."""
        with self._gate:
            self._gate.wait_for(lambda: bool(self._waiting), timeout)
            return list(self._waiting)

    # -- model -------------------------------------------------------------------------------

    def _new_node(self, kind: Kind, mode: int, *, preexisting: bool, target: str = "") -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._nodes[ino] = _Node(kind, stat.S_IMODE(mode), preexisting, target=target)
        if kind == "dir":
            self._live[ino] = {}
        return ino

    def _scan(self) -> None:
        """Everything already in ``backing`` is durable.

        Inode numbers and ctimes come from the table the last cut or clean unmount left in the
        state dir (read once, then removed), else from the backing filesystem.
        """
        attrs = self._load_attrs()
        self._taken.update(ino for ino, _ in attrs.values())
        root_st = os.lstat(self._backing)
        root = self._new_node("dir", root_st.st_mode, preexisting=True)
        self._nodes[root].links = 1
        self._set_attrs(root, root_st, attrs.get(""))
        by_inode: dict[tuple[int, int], int] = {}
        stack = [(root, self._backing)]
        while stack:
            dir_ino, dir_path = stack.pop()
            with os.scandir(dir_path) as it:
                entries = list(it)
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                key = (st.st_dev, st.st_ino)
                if key in by_inode and not stat.S_ISDIR(st.st_mode):
                    ino = by_inode[key]  # a hard link: one node, several names
                elif stat.S_ISDIR(st.st_mode):
                    ino = self._new_node("dir", st.st_mode, preexisting=True)
                    stack.append((ino, Path(entry.path)))
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    ino = self._new_node("symlink", st.st_mode, preexisting=True, target=target)
                else:
                    ino = self._new_node("file", st.st_mode, preexisting=True)
                if key not in by_inode:
                    rel = os.path.relpath(entry.path, self._backing)
                    self._set_attrs(ino, st, attrs.get(rel))
                by_inode[key] = ino
                self._live[dir_ino][entry.name] = ino
                self._nodes[ino].links += 1
        self._durable = {d: dict(entries) for d, entries in self._live.items()}

    def _load_attrs(self) -> dict[str, tuple[int, int]]:
        try:
            raw = json.loads(self._attrs_file.read_text())
        except FileNotFoundError:
            return {}
        self._attrs_file.unlink()  # valid for this backing tree only: not after a later change
        return {str(rel): (int(v[0]), int(v[1])) for rel, v in raw.items()}

    def _set_attrs(self, ino: int, st: os.stat_result, kept: tuple[int, int] | None) -> None:
        """Give a node its reported inode number (and ctime, if kept across a cut)."""
        node = self._nodes[ino]
        if kept is not None:
            node.st_ino, node.ctime = kept
            return
        number = st.st_ino
        while number in self._taken:  # a number kept for another inode: never report it twice
            number += _INO_SHIFT
        self._taken.add(number)
        node.st_ino = number

    def _changed(self, *inos: int) -> None:
        """These inodes' ctime moves (data, attribute or link change): report the backing one."""
        for ino in inos:
            self._nodes[ino].ctime = None

    def _ctime_of(self, ino: int, st: os.stat_result) -> int:
        kept = self._nodes[ino].ctime
        return st.st_ctime_ns if kept is None else kept

    def _write_attrs(self, table: dict[str, tuple[int, int]]) -> None:
        tmp = self._attrs_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({rel: list(v) for rel, v in table.items()}))
        os.replace(tmp, self._attrs_file)

    def _live_attrs(self) -> dict[str, tuple[int, int]]:
        """Every live name's reported inode number and ctime (a clean unmount keeps them)."""
        table = {"": (self._nodes[_ROOT_INO].st_ino,
                      self._ctime_of(_ROOT_INO, os.lstat(self._backing)))}
        stack = [(_ROOT_INO, "")]
        while stack:
            dir_ino, prefix = stack.pop()
            for name, ino in self._live.get(dir_ino, {}).items():
                rel = f"{prefix}/{name}" if prefix else name
                with contextlib.suppress(OSError):
                    st = os.lstat(self._real(rel))
                    table[rel] = (self._nodes[ino].st_ino, self._ctime_of(ino, st))
                if self._nodes[ino].kind == "dir":
                    stack.append((ino, rel))
        return table

    def _checkpoint(self) -> None:
        """Make everything durable, as a sync followed by a clean remount would."""
        referenced = {h.ino for h in self._handles.values()}
        referenced.update(self._dir_handles.values())
        for ino in list(self._nodes):
            node = self._nodes[ino]
            if node.links == 0 and ino not in referenced:
                del self._nodes[ino]
                continue
            node.preexisting, node.saved, node.dirty = True, False, False
        shutil.rmtree(self._objects)
        self._objects.mkdir()
        self._durable = {d: dict(entries) for d, entries in self._live.items()}

    def _real(self, path: str) -> str:
        return os.path.join(self._backing, path.lstrip("/"))

    def _lookup(self, path: str) -> int:
        ino = _ROOT_INO
        for part in path.strip("/").split("/"):
            if not part:
                continue
            entries = self._live.get(ino)
            if entries is None or part not in entries:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            ino = entries[part]
        return ino

    def _parent(self, path: str) -> tuple[int, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if parent not in self._live:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return parent, name

    def _ino_of(self, path: str | None, fh: int | None) -> int:
        if fh is not None and fh in self._handles:
            return self._handles[fh].ino
        if path is None:
            raise OSError(errno.EBADF, "powerfs: no path and no open handle")
        return self._lookup(path)

    def _save(self, ino: int, *, fd: int | None = None, path: str | None = None) -> None:
        """Copy the current content of ``ino`` to objects/<ino>: it is now durable."""
        node = self._nodes[ino]
        tmp = self._objects / f"{ino}.tmp"
        with contextlib.suppress(OSError):  # the ctime a cut keeps: the one reported now
            st = os.fstat(fd) if fd is not None else os.lstat(self._real(path or "/"))
            node.saved_ctime = self._ctime_of(ino, st)
        if fd is not None:
            try:
                self._copy_out(fd, tmp)
            except OSError as exc:
                # A write-only descriptor (O_RDWR was refused): read through the name instead.
                if exc.errno != errno.EBADF or path is None:
                    raise
                fd = None
        if fd is None:
            if path is None:
                raise OSError(errno.EBADF, "powerfs: nothing to copy from")
            own = os.open(self._real(path), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                self._copy_out(own, tmp)
            finally:
                os.close(own)
        node.mode = stat.S_IMODE(os.stat(tmp).st_mode)
        os.replace(tmp, self._objects / str(ino))
        node.saved, node.dirty = True, False

    @staticmethod
    def _copy_out(fd: int, dest: Path) -> None:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(out, mode)
            offset = 0
            while chunk := os.pread(fd, _COPY_CHUNK, offset):
                os.write(out, chunk)  # a regular file on a local fs: never short
                offset += len(chunk)
        finally:
            os.close(out)

    def _preserve(self, ino: int, path: str | None) -> None:
        """Keep mount-time content of ``ino`` before it is changed or loses its last name."""
        node = self._nodes[ino]
        if node.kind == "file" and node.preexisting and not node.saved:
            self._save(ino, path=path)

    def _before_data_change(self, ino: int, path: str | None) -> None:
        self._preserve(ino, path)
        self._nodes[ino].dirty = True
        self._changed(ino)

    def _drop_link(self, parent: int, name: str, path: str) -> int:
        """Remove a live entry; the caller does the backing operation afterwards."""
        ino = self._live[parent][name]
        if self._nodes[ino].links == 1:
            self._preserve(ino, path)
        return ino

    def _forget_link(self, parent: int, name: str, *, removed: bool) -> None:
        """Drop a live entry; ``removed`` when the inode goes too (not when it is renamed)."""
        ino = self._live[parent].pop(name)
        self._nodes[ino].links -= 1
        self._changed(ino, parent)
        if removed and self._nodes[ino].kind == "dir":
            del self._live[ino]  # rmdir'ed or replaced, so empty; its durable snapshot stays

    def _add_link(self, parent: int, name: str, ino: int) -> None:
        self._live[parent][name] = ino
        self._nodes[ino].links += 1
        self._changed(ino, parent)

    def _pending(self) -> dict[str, int]:
        dirty_dirs = sum(
            1 for d, entries in self._live.items() if self._durable.get(d, {}) != entries
        )
        dirty_files = sum(1 for n in self._nodes.values() if n.dirty and n.kind == "file")
        return {"dirty_dirs": dirty_dirs, "dirty_files": dirty_files}

    # -- power cut ---------------------------------------------------------------------------

    def _live_paths(self) -> dict[int, str]:
        paths: dict[int, str] = {}
        stack = [(_ROOT_INO, "")]
        while stack:
            dir_ino, prefix = stack.pop()
            for name, ino in self._live.get(dir_ino, {}).items():
                rel = f"{prefix}/{name}"
                paths.setdefault(ino, rel)
                if self._nodes[ino].kind == "dir":
                    stack.append((ino, rel))
        return paths

    def _durable_ctime(self, ino: int, live_path: str | None) -> int | None:
        """The ctime a cut keeps: at the last fsync, else the one reported now."""
        node = self._nodes[ino]
        if node.saved:
            return node.saved_ctime
        if live_path is None:
            return node.ctime
        try:
            return self._ctime_of(ino, os.lstat(self._real(live_path)))
        except OSError:
            return node.ctime

    def _materialize(self, dest: Path) -> dict[str, tuple[int, int]]:
        """Build the durable tree in ``dest`` (an empty directory); return each name's kept
        inode number and ctime (relative path: ``st_ino``, ``st_ctime_ns``)."""
        live_paths = self._live_paths()
        placed: dict[int, Path] = {}
        seen_dirs = {_ROOT_INO}
        table: dict[str, tuple[int, int]] = {}
        root_ctime = self._durable_ctime(_ROOT_INO, "")
        if root_ctime is not None:
            table[""] = (self._nodes[_ROOT_INO].st_ino, root_ctime)

        def build(dir_ino: int, dir_path: Path) -> None:
            for name, ino in sorted(self._durable.get(dir_ino, {}).items()):
                node = self._nodes[ino]
                target = dir_path / name
                ctime = self._durable_ctime(ino, live_paths.get(ino))
                if ctime is not None and not (node.kind == "dir" and ino in seen_dirs):
                    table[str(target.relative_to(dest))] = (node.st_ino, ctime)
                if node.kind == "dir":
                    # After a cross-directory rename with only one side fsynced a directory can
                    # have two durable names; a directory cannot be hard-linked, so the first
                    # name in sorted walk order wins.
                    if ino in seen_dirs:
                        continue
                    seen_dirs.add(ino)
                    target.mkdir(mode=node.mode)
                    build(ino, target)
                elif node.kind == "symlink":
                    os.symlink(node.target, target)
                elif ino in placed:
                    os.link(placed[ino], target)
                else:
                    if node.saved:
                        shutil.move(self._objects / str(ino), target)
                        os.chmod(target, node.mode)
                    elif node.preexisting and ino in live_paths:
                        # Untouched since mount: the live file *is* the durable content.
                        shutil.move(self._real(live_paths[ino]), target)
                    else:
                        if node.preexisting:
                            log.error("powerfs: lost track of inode %d (%s)", ino, target)
                        target.touch(mode=node.mode, exist_ok=False)
                    placed[ino] = target

        build(_ROOT_INO, dest)
        return table

    def cut_power(self) -> dict[str, int]:
        """Drop everything not durable and leave only durable state in the backing dir."""
        with self.mutex:
            pending = self._pending()
            self.dead = True
            for handle in self._handles.values():
                with contextlib.suppress(OSError):
                    os.close(handle.fd)
            self._handles.clear()
            shutil.rmtree(self._rebuild, ignore_errors=True)
            self._rebuild.mkdir()
            table = self._materialize(self._rebuild)
            for entry in os.scandir(self._backing):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            for entry in os.scandir(self._rebuild):
                shutil.move(entry.path, os.path.join(self._backing, entry.name))
            self._write_attrs(table)  # before the answer: the next mount reads it
            return pending

    def sync_all(self) -> dict[str, int]:
        with self.mutex:
            if self.dead:
                raise OSError(errno.EIO, "powerfs: power was cut")
            pending = self._pending()
            self._checkpoint()
            return pending

    def status(self) -> dict[str, int]:
        with self.mutex:
            return self._pending()

    def cleanup(self) -> None:
        with self.mutex:
            if not self.dead:  # a clean unmount keeps inode numbers and ctimes too
                with contextlib.suppress(OSError):
                    self._write_attrs(self._live_attrs())
            for handle in self._handles.values():
                with contextlib.suppress(OSError):
                    os.close(handle.fd)
            self._handles.clear()
            shutil.rmtree(self._objects, ignore_errors=True)
            shutil.rmtree(self._rebuild, ignore_errors=True)

    # -- FUSE callbacks: metadata --------------------------------------------------------------

    @_op
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        if fh is not None and fh in self._handles:
            ino = self._handles[fh].ino
            st = os.fstat(self._handles[fh].fd)
        elif path is not None:
            ino = self._lookup(path)  # the model, not the backing dir, decides what exists
            st = os.lstat(self._real(path))
        else:
            raise OSError(errno.EBADF, "powerfs: no path and no open handle")
        return {
            "st_mode": st.st_mode,
            "st_ino": self._nodes[ino].st_ino,
            "st_nlink": st.st_nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": self._ctime_of(ino, st),
        }

    @_op
    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    @_op
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._backing)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        result = {key: int(getattr(sv, key)) for key in keys}
        result.update(f_favail=sv.f_favail, f_flag=sv.f_flag, f_namemax=sv.f_namemax)
        return result

    @_op
    def chmod(self, path: str | None, mode: int) -> int:
        if path is not None:
            os.chmod(self._real(path), stat.S_IMODE(mode))
            self._changed(self._lookup(path))
        return 0

    @_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is not None:
            os.lchown(self._real(path), uid, gid)
            self._changed(self._lookup(path))
        return 0

    @_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        if path is not None:
            if times is None:
                os.utime(self._real(path), follow_symlinks=False)
            else:
                os.utime(self._real(path), ns=(int(times[0]), int(times[1])), follow_symlinks=False)
            self._changed(self._lookup(path))
        return 0

    # -- FUSE callbacks: namespace (durable after fsync of the parent directory) ---------------

    @_op
    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        os.mkdir(self._real(path), stat.S_IMODE(mode))
        ino = self._new_node("dir", mode, preexisting=False)
        self._set_attrs(ino, os.lstat(self._real(path)), None)
        self._add_link(parent, name, ino)
        return 0

    @_op
    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        if name not in self._live[parent]:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        os.rmdir(self._real(path))
        self._forget_link(parent, name, removed=True)
        return 0

    @_op
    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        if name not in self._live[parent]:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self._drop_link(parent, name, path)
        os.unlink(self._real(path))
        self._forget_link(parent, name, removed=True)
        return 0

    @_op
    def symlink(self, target: str, source: str) -> int:
        # mfusepy: ``target`` is the new name, ``source`` what it points to.
        parent, name = self._parent(target)
        os.symlink(source, self._real(target))
        ino = self._new_node("symlink", 0o777, preexisting=False, target=source)
        self._set_attrs(ino, os.lstat(self._real(target)), None)
        self._add_link(parent, name, ino)
        return 0

    @_op
    def link(self, target: str, source: str) -> int:
        # mfusepy: ``target`` is the new name, ``source`` the existing one.
        ino = self._lookup(source)
        parent, name = self._parent(target)
        os.link(self._real(source), self._real(target), follow_symlinks=False)
        self._add_link(parent, name, ino)
        return 0

    @_op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & ~_RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "powerfs: only RENAME_NOREPLACE is supported")
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        ino = self._live[old_parent].get(old_name)
        if ino is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), old)
        replaced = self._live[new_parent].get(new_name)
        if replaced is not None and flags & _RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), new)
        if replaced == ino:
            os.rename(self._real(old), self._real(new))  # two names of one inode: a no-op
            return 0
        if replaced is not None:
            self._drop_link(new_parent, new_name, new)
        os.rename(self._real(old), self._real(new))
        if replaced is not None:
            self._forget_link(new_parent, new_name, removed=True)
        self._forget_link(old_parent, old_name, removed=False)
        self._add_link(new_parent, new_name, ino)
        return 0

    # -- FUSE callbacks: directories -----------------------------------------------------------

    @_op
    def opendir(self, path: str) -> int:
        ino = self._lookup(path)
        if ino not in self._live:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dir_handles[fh] = ino
        return fh

    @_op
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        ino = self._dir_handles.get(fh)
        if ino is None:
            if path is None:
                raise OSError(errno.EBADF, "powerfs: unknown directory handle")
            ino = self._lookup(path)
        entries = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        kind_bits = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
        for name, child in sorted(self._live.get(ino, {}).items()):
            node = self._nodes[child]
            entries.append((name, {"st_mode": kind_bits[node.kind], "st_ino": node.st_ino}, 0))
        return entries

    @_op
    def releasedir(self, path: str | None, fh: int) -> int:
        self._dir_handles.pop(fh, None)
        return 0

    @_op
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        ino = self._dir_handles.get(fh)
        if ino is None:
            if path is None:
                raise OSError(errno.EBADF, "powerfs: unknown directory handle")
            ino = self._lookup(path)
        # The directory's entries, as they are now, are what survives a cut.  The entries'
        # targets keep their own durability: a new subdirectory comes back empty unless it was
        # fsynced itself, a file with the content of its own last fsync.
        self._durable[ino] = dict(self._live.get(ino, {}))
        return 0

    # -- FUSE callbacks: file data (durable after fsync of the file) ---------------------------

    def _open_backing(self, real: str, flags: int, mode: int = 0) -> int:
        # Drop O_APPEND: the kernel already turned it into offsets.  Ask for read access too so
        # fsync can copy the content through the same descriptor after an unlink.
        flags &= ~(os.O_APPEND | os.O_NOCTTY)
        if flags & os.O_ACCMODE == os.O_WRONLY:
            try:
                return os.open(real, (flags & ~os.O_ACCMODE) | os.O_RDWR, mode)
            except PermissionError:
                pass
        return os.open(real, flags, mode)

    @_op
    def create(self, path: str, mode: int, flags: int) -> int:
        parent, name = self._parent(path)
        existing = self._live[parent].get(name)
        if existing is not None and flags & os.O_TRUNC:
            self._before_data_change(existing, path)
        fd = self._open_backing(self._real(path), flags | os.O_CREAT, stat.S_IMODE(mode))
        if existing is None:
            existing = self._new_node("file", mode, preexisting=False)
            self._set_attrs(existing, os.fstat(fd), None)
            self._add_link(parent, name, existing)
        self._handles[fd] = _Handle(fd, existing)
        return fd

    @_op
    def open(self, path: str, flags: int) -> int:
        ino = self._lookup(path)
        if flags & os.O_TRUNC:
            self._before_data_change(ino, path)
        fd = self._open_backing(self._real(path), flags & ~(os.O_CREAT | os.O_EXCL))
        self._handles[fd] = _Handle(fd, ino)
        return fd

    @_op
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self._handles[fh].fd, size, offset)

    @_op
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        handle = self._handles[fh]
        self._before_data_change(handle.ino, path)
        return os.pwrite(handle.fd, data, offset)

    @_op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        ino = self._ino_of(path, fh)
        self._before_data_change(ino, path)
        if fh is not None and fh in self._handles:
            os.ftruncate(self._handles[fh].fd, length)
        elif path is not None:
            os.truncate(self._real(path), length)
        return 0

    @_op
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        # fdatasync counts as fsync: both make the data and the size durable, neither the name.
        handle = self._handles[fh]
        self._save(handle.ino, fd=handle.fd, path=path)
        return 0

    @_op
    def release(self, path: str | None, fh: int) -> int:
        handle = self._handles.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)
        return 0


# -- daemon ------------------------------------------------------------------------------------


def _unix_address(path: Path) -> tuple[str, int | None]:
    """A sun_path for ``path``, going through /proc/self/fd when it is too long."""
    if len(os.fsencode(path)) < 100:
        return str(path), None
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{dir_fd}/{path.name}", dir_fd


def send_command(control: str | os.PathLike[str], command: str, timeout: float = 30.0) -> Any:
    """Send one command to a running daemon's control socket and return its JSON answer.

    Args:
        control: the daemon's control socket (``STATE/control.sock``) or its state directory.
        command: ``"status"``, ``"sync"`` or ``"powercut"``.
        timeout: seconds to wait for the answer.

    Raises:
        PowerFSError: the daemon is not reachable or reported an error.
    """
    path = Path(control)
    if path.is_dir():
        path = path / _CONTROL_NAME
    address, dir_fd = _unix_address(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise PowerFSError(f"powerfs control socket {path}: {exc}") from exc
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    if not data:
        raise PowerFSError(f"powerfs control socket {path}: no answer to {command!r}")
    answer = json.loads(data)
    if not answer.get("ok"):
        raise PowerFSError(f"powerfs {command}: {answer.get('error')}")
    return answer


def power_cut(control: str | os.PathLike[str], timeout: float = 30.0) -> dict[str, int]:
    """Cut the power of the daemon behind ``control`` (socket or state dir).

    Returns what was pending at the cut (``dirty_files``, ``dirty_dirs``).  When it returns, the
    backing directory holds only durable state, the mount is detached and the daemon is exiting.
    """
    answer = send_command(control, "powercut", timeout)
    return {k: int(v) for k, v in answer["pending"].items()}


class _ControlServer(threading.Thread):
    def __init__(self, ops: _PowerOps, path: Path, mountpoint: Path) -> None:
        super().__init__(name="powerfs-control", daemon=True)
        self._ops = ops
        self._mountpoint = mountpoint
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, dir_fd = _unix_address(path)
        try:
            self._sock.bind(address)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        self._sock.listen(4)

    def run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed on shutdown
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        command = data.decode().strip()
        try:
            if command == "status":
                answer: dict[str, Any] = {"ok": True, "pending": self._ops.status()}
            elif command == "sync":
                answer = {"ok": True, "pending": self._ops.sync_all()}
            elif command == "powercut":
                answer = {"ok": True, "pending": self._ops.cut_power()}
            elif command.startswith("block "):
                self._ops._block(command.split()[1:])
                answer = {"ok": True}
            elif command == "release":
                self._ops._release_held()
                answer = {"ok": True}
            elif command.startswith("wait-blocked "):
                held = self._ops._wait_blocked(float(command.split()[1]))
                answer = {"ok": True, "blocked": [list(h) for h in held]}
            else:
                answer = {"ok": False, "error": f"unknown command {command!r}"}
        except Exception as exc:
            log.exception("powerfs: %s failed", command)
            answer = {"ok": False, "error": repr(exc)}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(answer).encode() + b"\n")
        if command == "powercut" and answer["ok"]:
            # Detach, then die: closing /dev/fuse aborts the connection, so processes still
            # holding files on the mount get errors instead of hanging.  The lazy unmount can
            # end the FUSE loop at once; serve() then waits for us instead of exiting.
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self._mountpoint)], check=False, capture_output=True
            )
            self._ops.cleanup()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def serve(
    backing: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    state: str | os.PathLike[str],
    *,
    debug: bool = False,
) -> None:
    """Mount powerfs in the foreground; return after unmount (fusermount3 -u, SIGTERM).

    ``state`` (created if missing) receives the durable copies and ``control.sock``.  A clean
    unmount keeps everything in ``backing``; only a power cut drops anything.
    """
    import mfusepy

    class _FUSE(mfusepy.FUSE):  # type: ignore[misc]  # mfusepy ships no stubs
        # mfusepy drops the flags of rename and the handle of truncate; we need both.
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return int(self.operations.rename(os.fsdecode(old), os.fsdecode(new), flags))

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            name = None if path is None else os.fsdecode(path)
            return int(self.operations.truncate(name, length, fh))

    backing_path = Path(backing).resolve()
    mount_path = Path(mountpoint).resolve()
    state_path = Path(state).resolve()
    for inner, what in ((state_path, "state"), (mount_path, "mountpoint")):
        if inner == backing_path or backing_path in inner.parents:
            raise PowerFSError(f"the {what} directory {inner} must not be inside {backing_path}")
    state_path.mkdir(parents=True, exist_ok=True)
    mount_path.mkdir(parents=True, exist_ok=True)
    os.umask(0)  # the kernel already applied the caller's umask
    ops = _PowerOps(backing_path, state_path)
    server = _ControlServer(ops, state_path / _CONTROL_NAME, mount_path)
    server.start()
    try:
        _FUSE(
            ops,
            str(mount_path),
            foreground=True,
            debug=debug,
            fsname="powerfs",
            subtype="powerfs",
            hard_remove=True,  # unlink really unlinks; no .fuse_hidden renames in our model
            use_ino=True,  # report our st_ino, which survives a power cut, not the node ids
            default_permissions=True,
        )
    finally:
        if ops.dead:
            server.join(60)  # it exits the process once the cut is complete
        server.close()
        ops.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (state_path / _CONTROL_NAME).unlink()


# -- client ------------------------------------------------------------------------------------


def fuse_unavailable_reason() -> str | None:
    """Why powerfs cannot run here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy is not usable: {exc}"
    return None


class PowerLossFS:
    """Run powerfs over ``backing`` at ``mountpoint`` in a child process.

    ``mount()`` (or ``with``) starts the daemon and returns once the mount answers;
    ``power_cut()`` drops all un-synced state and detaches; ``remount()`` mounts the post-cut
    backing directory again; ``unmount()`` is a clean shutdown that keeps everything.

    Args:
        backing: directory holding the files (created if missing).  After ``power_cut()`` it
            holds exactly the durable state; after ``unmount()`` everything that was written.
        mountpoint: where the filesystem appears (created if missing).
        state: scratch directory for durable copies, the control socket and ``daemon.log``;
            a fresh temporary directory, removed by ``unmount()``/``close()``, if omitted.
        timeout: seconds to wait for mount, unmount and control answers.
        debug: run libfuse with ``-d`` (requests are logged to ``daemon.log``).
    """

    def __init__(
        self,
        backing: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        state: str | os.PathLike[str] | None = None,
        timeout: float = 20.0,
        debug: bool = False,
    ) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).resolve()
        self._own_state = state is None
        self.state = Path(tempfile.mkdtemp(prefix="powerfs-")) if state is None else Path(state)
        self.timeout = timeout
        self.debug = debug
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state / "daemon.log"

    @property
    def control(self) -> Path:
        return self.state / _CONTROL_NAME

    @property
    def mounted(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def mount(self) -> None:
        """Start the daemon and wait until ``mountpoint`` is served by it.

        Raises:
            PowerFSError: already mounted, or the daemon died or did not mount in time.
        """
        if self.mounted:
            raise PowerFSError(f"{self.mountpoint} is already mounted by this PowerLossFS")
        if os.path.ismount(self.mountpoint):
            raise PowerFSError(f"{self.mountpoint} is already a mount point")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "fault_injection.powerfs", "mount"]
        cmd += [str(self.backing), str(self.mountpoint), "--state", str(self.state)]
        if self.debug:
            cmd.append("--debug")
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
            )
        deadline = time.monotonic() + self.timeout
        while not (os.path.ismount(self.mountpoint) and self.control.exists()):
            if self._proc.poll() is not None:
                raise PowerFSError(
                    f"powerfs daemon exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise PowerFSError(f"powerfs did not mount in {self.timeout}s:\n{self._log_tail()}")
            time.sleep(0.01)

    def status(self) -> dict[str, int]:
        """What a power cut would drop now: ``dirty_files``, ``dirty_dirs``."""
        answer = send_command(self.control, "status", self.timeout)
        return {k: int(v) for k, v in answer["pending"].items()}

    def sync(self) -> dict[str, int]:
        """Make everything durable now, as if the whole tree had been fsynced."""
        answer = send_command(self.control, "sync", self.timeout)
        return {k: int(v) for k, v in answer["pending"].items()}

    def block(self, *ops: str) -> None:
        """Make every later call of these operations (FUSE callback names: ``write``,
        ``fsync``, ``rename``, ...) wait until :meth:`release`, as a hung server would.
        Other operations go on; a blocked ``fsync`` also stands for ``fdatasync``."""
        send_command(self.control, "block " + " ".join(ops), self.timeout)

    def release(self) -> None:
        """Let every blocked and every later call through."""
        send_command(self.control, "release", self.timeout)

    def wait_blocked(self) -> list[tuple[str, str]]:
        """Wait (up to ``timeout``) until a call is blocked; ``(op, path)`` of each one
        blocked now (the path inside the mount). Empty if none got blocked in time."""
        answer = send_command(self.control, f"wait-blocked {self.timeout}",
                              self.timeout + 5)
        return [(op, path) for op, path in answer["blocked"]]

    def power_cut(self) -> dict[str, int]:
        """Lose everything not yet durable, like a power failure, and detach the mount.

        Afterwards ``backing`` holds only durable state, file descriptors that were open on the
        mount fail (``EIO``/``ENOTCONN``), and the daemon has exited.  Call :meth:`remount` to
        run recovery on the result.

        Returns:
            What was pending at the cut: ``dirty_files``, ``dirty_dirs``.
        """
        if not self.mounted:
            raise PowerFSError("power_cut() needs a mounted filesystem")
        try:
            pending = power_cut(self.control, self.timeout)
        except PowerFSError as exc:
            raise PowerFSError(f"{exc}\n{self._log_tail()}") from exc
        self._wait_exit()
        return pending

    def remount(self) -> None:
        """Mount again over the backing directory (after a power cut or unmount)."""
        if self.mounted:
            self.unmount(keep_state=True)
        self.mount()

    def unmount(self, *, keep_state: bool = False) -> None:
        """Clean unmount: keeps all data, as a clean shutdown would.  Idempotent.

        Falls back to a lazy unmount and killing the daemon if the mount stays busy.
        """
        if self._proc is not None and self._proc.poll() is None:
            done = subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True
            )
            if done.returncode != 0:
                # Busy: detach, and end the FUSE loop with SIGTERM (libfuse's handler), which
                # closes /dev/fuse so the remaining open files fail instead of pinning us.
                log.warning("powerfs: clean unmount failed: %s", done.stderr.decode().strip())
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(self.mountpoint)],
                    check=False,
                    capture_output=True,
                )
                self._proc.send_signal(signal.SIGTERM)
            self._wait_exit()
        if self._own_state and not keep_state:
            shutil.rmtree(self.state, ignore_errors=True)

    close = unmount

    def _wait_exit(self) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise PowerFSError(
                f"powerfs daemon did not exit in {self.timeout}s:\n{self._log_tail()}"
            ) from None
        if os.path.ismount(self.mountpoint):  # daemon killed before it could unmount
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
            )

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
        )

    def __enter__(self) -> PowerLossFS:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fault_injection.powerfs {mount,powercut,sync,status} ...``."""
    parser = argparse.ArgumentParser(prog="python -m fault_injection.powerfs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="serve BACKING at MOUNTPOINT in the foreground")
    mount.add_argument("backing")
    mount.add_argument("mountpoint")
    mount.add_argument("--state", help="scratch dir for durable copies and control.sock")
    mount.add_argument("--debug", action="store_true", help="libfuse -d request log")
    for name, text in (
        ("powercut", "drop all un-synced state, detach the mount, stop the daemon"),
        ("sync", "make everything durable now"),
        ("status", "print what a power cut would drop"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("state", help="the daemon's --state directory or its control.sock")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "mount":
        state = args.state or tempfile.mkdtemp(prefix="powerfs-")
        print(json.dumps({"control": str(Path(state).resolve() / _CONTROL_NAME)}), flush=True)
        # libfuse's own SIGTERM/SIGINT/SIGHUP handlers end the loop and unmount cleanly.
        serve(args.backing, args.mountpoint, state, debug=args.debug)
        if not args.state:
            shutil.rmtree(state, ignore_errors=True)
        return 0
    answer = send_command(args.state, args.command)
    print(json.dumps(answer["pending"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
