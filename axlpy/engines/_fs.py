"""Which filesystem a destination is on, for choosing DEFAULT's engine (docs/engines.md).

Read-only: looks at ``/proc/self/mountinfo`` and ``realpath``; never raises (unknown means
"not memory-backed", the choice that is right for real devices).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["MEMORY_FILESYSTEMS", "all_memory_backed"]

#: filesystems with no device behind them: fsync costs nothing, per-file overhead is all
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def _mounts() -> list[tuple[str, str]]:
    """``(mount point, fs type)`` for every mount this process sees."""
    out: list[tuple[str, str]] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if len(fields) >= 5 and rfields:
                    mnt = fields[4].replace("\\040", " ").replace("\\011", "\t")
                    out.append((mnt.replace("\\012", "\n").replace("\\134", "\\"),
                                rfields[0]))
    except OSError:
        pass
    return out


def _fs_type(path: str, mounts: list[tuple[str, str]]) -> str:
    real = os.path.realpath(path)
    best, typ = "", ""
    for mnt, t in mounts:  # the last mount on a point wins, as the kernel stacks them
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, typ = mnt, t
    return typ


def all_memory_backed(paths: Iterable[str | bytes]) -> bool:
    """Are all ``paths`` (destination roots; the nearest existing parent counts for one
    not made yet) on tmpfs or ramfs? False for none, or when it cannot be told."""
    mounts = _mounts()
    seen = False
    for p in paths:
        path = os.fsdecode(p)
        while path and not os.path.exists(path):
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        if _fs_type(path or "/", mounts) not in MEMORY_FILESYSTEMS:
            return False
        seen = True
    return seen
