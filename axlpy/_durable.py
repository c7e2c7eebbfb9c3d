"""The durability primitives, once: what a name should hold, an atomic publish of a small
file, and an unlink that removes only what was verified to be ours.

Every caller that asks "does this name still hold the file we expect" (resume, cancel,
MPI discard, the commit manifest, ``axlpy verify``), publishes a small file atomically
(the commit marker) or removes a file only if it is still the one it checked (cancel,
MPI discard, ``axlpy gc``) goes through here, so the rules are written and proven once:

- an expected entry is a kind (``file``, ``symlink``, ``dir``), a size, a CRC32C and, for
  a symlink, its target (or the CRC32C of it); a name *matches* when the entry there,
  looked up relative to a directory fd without following a final symlink, has that kind,
  size and content. A file is opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO planted under
  the name never blocks the check) and must be a regular file;
- an atomic publish is: private temp beside the name (O_EXCL, 0600), write, fsync,
  rename over the name, fsync the directory. A reader sees the old file or the new one;
- a verified unlink re-checks the entry right before removing it, relative to the same
  directory fd, and reports whether it removed anything. It does not fsync the
  directory: callers batch that per directory (see each caller's crash points);
- a sealed JSON document (the commit marker, the latest pointer) is its body plus
  ``body_crc32c``, the CRC32C of the body's canonical JSON (sorted keys, no spaces),
  written indented with sorted keys and a final newline; reading it checks its
  ``format`` and that CRC, so a torn or bit-rotted copy is refused.

On disk if a call here raises or the process dies: :meth:`Expected.check` only reads;
:func:`publish_atomic` leaves the old entry (or none) under the name and at most a hidden
temp; :func:`unlink_verified` has removed the entry or not, never anything else;
:func:`seal_json`, :func:`unseal_json` and :func:`sealed_crc` touch nothing on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._checksum import crc32c, file_crc32c
from ._crashpoints import crash_point
from ._errors import SecurityError
from ._staging import (
    RENAME2_UNSUPPORTED,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    check_staged,
    create_temp,
    fsync_dir,
    fsync_fd,
    rename2,
    same_entry,
    unlink_quiet,
)

__all__ = [
    "Expected",
    "Mismatch",
    "expected_of",
    "publish_atomic",
    "rename_verified",
    "seal_json",
    "sealed_crc",
    "unlink_verified",
    "unseal_json",
]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Mismatch:
    """Why a name does not hold the expected entry.

    ``problem`` is one of ``missing``, ``unreadable``, ``wrong-type``, ``size``,
    ``crc32c``, ``link-target``; the ``actual_*`` fields say what was found (None where
    not known), ``detail`` the OS error text for ``missing``/``unreadable``.
    """

    problem: str
    detail: str | None = None
    actual_size: int | None = None
    actual_crc32c: int | None = None
    actual_target: bytes | None = None


def _os_mismatch(exc: OSError) -> Mismatch:
    """A failed lookup: the name (or a directory above it) is missing, or unreadable."""
    gone = isinstance(exc, (FileNotFoundError, NotADirectoryError))
    return Mismatch("missing" if gone else "unreadable", detail=exc.strerror)


@dataclass(frozen=True)
class Expected:
    """What a name should hold: ``kind`` ("file", "symlink" or "dir"), a file's ``size``
    and ``crc32c`` (of its bytes; of its target for a symlink), a symlink's ``link``.

    A symlink is checked against ``link`` when known, else against ``crc32c`` of its
    target. An expected file or symlink with no CRC32C recorded never matches.
    """

    kind: str
    size: int = 0
    crc32c: int | None = None
    link: bytes | None = None

    def check(self, dir_fd: int, name: bytes, *, content: bool = True,
              buf: bytearray | None = None) -> Mismatch | None:
        """Compare the entry ``name`` in ``dir_fd`` (not followed) with this one; None if it
        matches. ``content=False`` checks kind and size only (no bytes read)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            return _os_mismatch(exc)
        if self.kind == "dir":
            return None if stat.S_ISDIR(st.st_mode) else Mismatch("wrong-type")
        if self.kind == "symlink":
            if not stat.S_ISLNK(st.st_mode):
                return Mismatch("wrong-type")
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                return Mismatch("unreadable", detail=exc.strerror)
            if self.link is not None:
                ok = target == self.link
            else:
                ok = self.crc32c is not None and crc32c(target) == self.crc32c
            return None if ok else Mismatch("link-target", actual_target=target)
        if not stat.S_ISREG(st.st_mode):
            return Mismatch("wrong-type")
        if st.st_size != self.size:
            return Mismatch("size", actual_size=st.st_size)
        if not content:
            return None
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            return Mismatch("unreadable", detail=exc.strerror)
        try:
            # Checked again on the open fd: the name may have been swapped since the stat.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Mismatch("wrong-type")
            if st.st_size != self.size:
                return Mismatch("size", actual_size=st.st_size)
            got, n = file_crc32c(fd, self.size, buf=buf)
        except OSError as exc:
            return Mismatch("unreadable", detail=exc.strerror)
        finally:
            os.close(fd)
        if n != self.size:
            return Mismatch("size", actual_size=n)
        if self.crc32c is None or got != self.crc32c:
            return Mismatch("crc32c", actual_crc32c=got)
        return None

    def matches(self, dir_fd: int, name: bytes, *, buf: bytearray | None = None) -> bool:
        """Does ``name`` in ``dir_fd`` hold exactly this entry (kind, size, content)?"""
        return self.check(dir_fd, name, buf=buf) is None

    def check_path(self, path: bytes, *, content: bool = True,
                   buf: bytearray | None = None) -> Mismatch | None:
        """:meth:`check` for a path: its parent is opened (following symlinks the caller's
        path holds, like ``lstat`` on the path would), its last component is not."""
        parent, name = os.path.split(path)
        try:
            dfd = os.open(parent or b".", _DIR_FLAGS)
        except OSError as exc:
            return _os_mismatch(exc)
        try:
            return self.check(dfd, name, content=content, buf=buf)
        finally:
            os.close(dfd)


def publish_atomic(dir_fd: int, name: bytes, data: bytes, tmp: bytes, *,
                   mode: int = 0o644, after: Callable[[str], None] | None = None) -> None:
    """Put ``data`` under ``name`` in ``dir_fd`` atomically and durably: create ``tmp``
    (O_EXCL, 0600, a stale one replaced), write, chmod ``mode``, fsync, rename over
    ``name``, fsync the directory.

    ``after`` is called with ``"temp"`` (temp written and fsynced), ``"rename"`` (renamed,
    directory not fsynced) and ``"dir_fsync"`` (durable): the caller's crash points.

    Raises OSError if a step fails: the temp is removed and the old entry (or none) is
    still under ``name``. If the process dies instead: at most ``tmp`` is left, or (after
    the rename, before the directory fsync) a power loss may bring the old entry back.
    """
    fd = create_temp(dir_fd, tmp)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fsync_fd(fd)
        finally:
            os.close(fd)
        if after is not None:
            after("temp")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_quiet(dir_fd, tmp)
        raise
    if after is not None:
        after("rename")
    fsync_dir(dir_fd)
    if after is not None:
        after("dir_fsync")


def rename_verified(dir_fd: int, tmp: bytes, name: bytes, *, kind: str, size: int,
                    link: bytes | None, owners: tuple[int, ...]) -> None:
    """Rename the staged ``tmp`` over ``name`` in ``dir_fd``, only if ``tmp`` is still what
    was staged (:func:`~axlpy._staging.check_staged`: kind, size or link target, owner),
    and check that ``name`` then holds that very inode. The directory is not fsynced:
    the caller fsyncs each directory once per batch of renames.

    The check and the rename are two calls: whoever can write the directory may swap the
    temp between them. So the entry ``name`` held is never destroyed before the check
    after the rename says the swap is ours (``docs/design.md``, "The order of writes"):
    ``RENAME_NOREPLACE`` where nothing is there; where something is, ``RENAME_EXCHANGE``
    (the old entry goes under ``tmp``), and only once ``name`` is our inode is the old
    entry unlinked — else the two are exchanged back. Where the filesystem takes neither
    flag (EINVAL: NFS, many FUSE filesystems) a plain ``rename``, as before.

    Raises :class:`~axlpy.SecurityError` if something else took the temp's place (nothing
    renamed), or was swapped in between the check and the rename (the foreign entry is
    removed from the final name, and what the final name held before is there again);
    OSError if the rename fails (nothing renamed; e.g. IsADirectoryError: ``name`` is a
    directory). If the process dies between the exchange and the unlink, ``name`` holds
    the staged file and ``tmp`` what ``name`` held before (resume and cancel remove it
    like any temp of ours).
    """
    st = check_staged(dir_fd, tmp, kind=kind, size=size, link=link, owners=owners)
    old = _rename_keeping_old(dir_fd, tmp, name)
    if old is None:  # nothing was under name, or a plain rename replaced it
        if same_entry(dir_fd, name, st):
            return
        unlink_quiet(dir_fd, name)
        raise SecurityError(
            f"temp {os.fsdecode(tmp)!r} was replaced by someone else while being "
            "published; the foreign file was removed from the final name")
    if same_entry(dir_fd, name, st):
        crash_point("publish.after_exchange")
        unlink_quiet(dir_fd, tmp)  # what name held before (its data goes, as in a rename)
        return
    # A foreign entry was exchanged into name: put the old one back, drop the foreign one.
    with contextlib.suppress(OSError):  # tmp gone meanwhile: name is cleared below
        rename2(dir_fd, tmp, name, RENAME_EXCHANGE)
    kept = same_entry(dir_fd, name, old)
    if not kept:  # swapped again meanwhile: a foreign entry never stays under name
        unlink_quiet(dir_fd, name)
    with contextlib.suppress(OSError):
        unlink_quiet(dir_fd, tmp)
    raise SecurityError(
        f"temp {os.fsdecode(tmp)!r} was replaced by someone else while being published; "
        + ("the final name holds what it held before" if kept else
           "the foreign file was removed from the final name"))


def _rename_keeping_old(dir_fd: int, tmp: bytes, name: bytes) -> os.stat_result | None:
    """Rename ``tmp`` to ``name``; if ``name`` held an entry other than a directory,
    exchange the two instead and return that entry's stat (it is under ``tmp`` now).
    None: nothing was under ``name``, or the filesystem takes no ``renameat2`` flags and a
    plain ``rename`` replaced it. Raises OSError as ``rename`` would (nothing renamed)."""
    try:
        rename2(dir_fd, tmp, name, RENAME_NOREPLACE)
        return None
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in RENAME2_UNSUPPORTED:
            raise
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return None
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        old = None  # removed meanwhile: nothing to keep
    if old is not None and not stat.S_ISDIR(old.st_mode):
        try:
            rename2(dir_fd, tmp, name, RENAME_EXCHANGE)
            return old
        except OSError as exc:
            if exc.errno not in RENAME2_UNSUPPORTED and exc.errno != errno.ENOENT:
                raise
    # A directory (the rename fails, EISDIR, as it always did), an entry gone meanwhile,
    # or a filesystem without RENAME_EXCHANGE: a plain rename.
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return None


def sealed_crc(body: Mapping[str, Any]) -> int:
    """CRC32C of ``body``'s canonical JSON (sorted keys, no spaces)."""
    return crc32c(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def seal_json(body: Mapping[str, Any]) -> bytes:
    """A self-checked JSON document (commit marker, latest pointer): ``body`` plus
    ``body_crc32c`` (:func:`sealed_crc`), indented with sorted keys, newline-terminated.
    Published with :func:`publish_atomic`, a reader sees it whole or not at all; the CRC
    catches a torn or bit-rotted copy all the same."""
    return json.dumps(dict(body, body_crc32c=sealed_crc(body)), sort_keys=True,
                      indent=1).encode() + b"\n"


def unseal_json(raw: bytes, fmt: str, what: str) -> dict[str, Any]:
    """The body of what :func:`seal_json` wrote, its ``format`` field checked to be
    ``fmt``. Raises ValueError (not JSON, another format, CRC mismatch: "torn or damaged
    ``what``") or KeyError (no ``body_crc32c``)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ValueError(f"format is not {fmt!r}")
    want = doc.pop("body_crc32c")
    if sealed_crc(doc) != want:
        raise ValueError(f"body CRC32C does not match (torn or damaged {what})")
    return doc


def unlink_verified(dir_fd: int, name: bytes, expect: Expected | os.stat_result, *,
                    buf: bytearray | None = None) -> bool:
    """Remove ``name`` from ``dir_fd`` only if it still holds what the caller checked:
    the :class:`Expected` entry (kind, size, content), or the very inode of a stat result
    (device and inode, not followed). Returns whether it removed it; False if the entry
    is gone or is something else, which is left in place. The directory is not fsynced.
    """
    if isinstance(expect, Expected):
        ok = expect.matches(dir_fd, name, buf=buf)
    else:
        ok = same_entry(dir_fd, name, expect)
    return ok and unlink_quiet(dir_fd, name)


def expected_of(row: Any) -> Expected:
    """The entry a journal file row (or manifest entry) says its final name holds."""
    return Expected(row.kind, row.size, row.crc32c, getattr(row, "link", None))
