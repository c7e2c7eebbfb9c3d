"""Source identity: what dispatch records of each source file, and how a later check tells
that it changed.

Size and mtime alone are no identity: anyone who can write a file can put its mtime back
(``touch -d``, ``utime(2)``). A file's ``st_ctime_ns`` is set by the kernel on every
change of its data or inode and cannot be set by a user; ``st_ino``/``st_dev`` tell a
file replaced by a rename (or another filesystem mounted over it) — a device number
alone may change across a remount, so it counts only together with another difference.
So dispatch records all five; the stager compares them when it opens a source and when
it has read the last byte, resume compares them before it trusts anything, and move mode
before it deletes a source. A file whose ctime did not move although its data did (a
coarse-timestamp filesystem, a change within one clock tick of dispatch, a journal
written before identity was recorded) is still caught on resume by re-reading the source
extents the journal vouches for (``Driver.recover``). Nothing here touches disk beyond
``stat``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._errors import SourceChangedError

if TYPE_CHECKING:
    from ._journal import FileRow

__all__ = ["changes", "check_unchanged"]


def changes(row: FileRow, st: os.stat_result) -> list[tuple[str, str]]:
    """What differs between ``st`` and the identity recorded for ``row``: a list of
    ``(what, "recorded -> now")`` with ``what`` one of size, mtime, ctime, inode.
    Identity fields the journal does not hold (rows dispatched before schema 4) are
    not compared."""
    out: list[tuple[str, str]] = []
    if st.st_size != row.size:
        out.append(("size", f"{row.size} -> {st.st_size}"))
    if st.st_mtime_ns != row.mtime_ns:
        out.append(("mtime", f"mtime_ns {row.mtime_ns} -> {st.st_mtime_ns}"))
    if row.ctime_ns is not None and st.st_ctime_ns != row.ctime_ns:
        out.append(("ctime", f"ctime_ns {row.ctime_ns} -> {st.st_ctime_ns}"))
    # A device number alone may change across a remount or reboot (anonymous devices:
    # NFS, btrfs, FUSE; renumbered block devices): with the same inode number and the
    # same ctime to the nanosecond it is the same file, mounted again.
    remounted = st.st_dev != row.dev and st.st_ctime_ns == row.ctime_ns
    if row.ino is not None and (st.st_ino != row.ino
                                or (st.st_dev != row.dev and not remounted)):
        out.append(("inode", f"device/inode {row.dev}/{row.ino} -> "
                              f"{st.st_dev}/{st.st_ino}"))
    return out


def check_unchanged(row: FileRow, st: os.stat_result, when: str, consequence: str) -> None:
    """Raise :class:`SourceChangedError` naming what changed if ``st`` is not the
    source recorded for ``row``; ``when`` says since when ("since dispatch"),
    ``consequence`` what was not done ("not copied")."""
    diff = changes(row, st)
    if diff:
        name = os.fsdecode(row.src)
        raise SourceChangedError(
            f"source {name!r} changed {when} ({', '.join(f'{w} {d}' for w, d in diff)}); "
            f"{consequence}", path=name, changed=tuple(w for w, _ in diff))
