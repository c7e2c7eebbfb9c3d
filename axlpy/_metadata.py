"""What a copy keeps of its source besides the bytes: permission bits, and with metadata
copy mode, owner, mtime, xattrs and POSIX ACLs (see docs/design.md, "Metadata").

Without metadata copy a copy is never wider than its source, like ``cp -r``: files and
the directories the transfer created get the source's permission bits masked by the
umask, set-id and sticky bits dropped; a directory is created with those bits plus owner
rwx and gets its exact mode only after its contents are published. Directories that
already existed keep their mode.

With metadata copy (``cp -a``): owner and group (given away only by root; otherwise the
group when we are a member of it), xattrs in the ``user.*`` and ``trusted.*`` (root
lists them) namespaces and the POSIX ACLs ``system.posix_acl_access`` and
``system.posix_acl_default``, then the mode with its set-id bits, then the mtime (atime
is set to it). Symlinks get owner, mtime and, where the filesystem allows, xattrs.
Other namespaces (``security.*``) are not copied. xattrs are read from the source when
they are applied (the source is still there: sources are deleted only after RENAMED);
an xattr the destination filesystem does not support is skipped, like ``cp -a`` does.

Each function changes only the inode it is given; the caller fsyncs (files) and
journals. If one raises or the process dies, the entry keeps whatever subset was applied
and is not yet journaled as done, so a resume applies everything again.
"""

from __future__ import annotations

import errno as _errno
import os

from ._journal import FileRow

__all__ = ["KEPT_XATTR_PREFIXES", "apply_dir", "apply_file", "apply_link"]

#: xattr namespaces copied with metadata copy mode
KEPT_XATTR_PREFIXES = ("user.", "trusted.")
_ACLS = ("system.posix_acl_access", "system.posix_acl_default")
#: the destination cannot hold this xattr (filesystem, or a symlink's user.*)
_UNSUPPORTED = {_errno.ENOTSUP, _errno.EOPNOTSUPP, _errno.EPERM}

_Target = int | str


def _kept(name: str) -> bool:
    return name.startswith(KEPT_XATTR_PREFIXES) or name in _ACLS


def _read_xattrs(src: _Target, follow: bool = True) -> dict[str, bytes]:
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return {}
        raise
    out = {}
    for n in names:
        if not _kept(n):
            continue
        try:
            out[n] = os.getxattr(src, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != _errno.ENODATA:  # removed meanwhile
                raise
    return out


def _copy_xattrs(src: _Target, dst: _Target, *, follow: bool = True,
                 is_dir: bool = False) -> None:
    """Set the kept xattrs of ``src`` on ``dst``; an ACL the source lacks is removed from
    ``dst`` (it may have inherited a default ACL from its parent), as ``cp -a`` does."""
    xs = _read_xattrs(src, follow)
    for n, v in xs.items():
        try:
            os.setxattr(dst, n, v, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    for acl in _ACLS if is_dir else _ACLS[:1]:
        if acl not in xs:
            try:
                os.removexattr(dst, acl, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (_errno.ENODATA, *_UNSUPPORTED):
                    raise


def _chown(target: int | bytes, row: FileRow, *, dir_fd: int | None = None) -> None:
    """Owner and group like ``cp -a``: both when allowed (root), else the group alone
    (allowed when we are a member of it), else neither. ``target`` is an fd, or a name in
    ``dir_fd`` (never followed)."""
    for uid in (row.uid, -1):
        try:
            if isinstance(target, int):
                os.fchown(target, uid, row.gid)
            else:
                os.chown(target, uid, row.gid, dir_fd=dir_fd, follow_symlinks=False)
            return
        except PermissionError:
            continue


def apply_file(fd: int, src_fd: int, row: FileRow, *, metadata: bool, umask: int) -> None:
    """Give a staged temp (``fd``) its final attributes, read from ``row`` and the
    source (``src_fd``, for xattrs)."""
    if not metadata:
        os.fchmod(fd, row.mode & 0o777 & ~umask)
        return
    _chown(fd, row)
    _copy_xattrs(src_fd, fd)
    os.fchmod(fd, row.mode & 0o7777)
    os.utime(fd, ns=(row.mtime_ns, row.mtime_ns))


def apply_dir(fd: int, row: FileRow, *, metadata: bool, umask: int) -> None:
    """Give a destination directory (``fd``, its contents already published) its final
    attributes. Without metadata copy only the mode, and the caller calls this only for
    directories the transfer created."""
    if not metadata:
        os.fchmod(fd, row.mode & 0o777 & ~umask)
        return
    _chown(fd, row)
    try:
        src_fd = os.open(row.src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        from ._errors import SourceChangedError

        raise SourceChangedError(
            f"source directory {os.fsdecode(row.src)!r} cannot be opened to copy its "
            f"xattrs ({exc.strerror})", path=os.fsdecode(row.src)) from exc
    try:
        _copy_xattrs(src_fd, fd, is_dir=True)
    finally:
        os.close(src_fd)
    os.fchmod(fd, row.mode & 0o7777)
    os.utime(fd, ns=(row.mtime_ns, row.mtime_ns))


def apply_link(dir_fd: int, name: bytes, row: FileRow) -> None:
    """Owner, xattrs (where the filesystem allows them on a symlink) and mtime of a
    staged symlink ``name`` in ``dir_fd`` (metadata copy only; never follows it)."""
    _chown(name, row, dir_fd=dir_fd)
    # No *xattr call takes a dir_fd: the fd's /proc entry names the directory itself, so
    # a parent swapped after it was opened cannot redirect this.
    path = f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"
    _copy_xattrs(os.fsdecode(row.src), path, follow=False)
    os.utime(name, ns=(row.mtime_ns, row.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
