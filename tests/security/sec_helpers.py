"""Helpers for the hostile-filesystem tests: crash a transfer in a child process, edit its
journal with plain sqlite3, snapshot directories that must not change."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from axlpy._staging import TEMP_PATTERN

#: a child that creates transfer "x" from argv (paths hex-encoded: any bytes survive) and
#: dispatches it; armed with AXLPY_CRASH_AT it dies by SIGKILL at that point.
CHILD = textwrap.dedent("""
    import json, os, sys
    import axlpy
    jpath, src, dst, opts = sys.argv[1:5]
    opts = json.loads(opts)
    depth = opts.pop("max_depth", None)
    j = axlpy.Journal(jpath)
    t = j.create("x", "sync", **opts)
    t.add(bytes.fromhex(src), bytes.fromhex(dst),
          limits=axlpy.Limits(max_depth=depth) if depth else axlpy.Limits())
    t.dispatch()
""")


def run_child(journal: Path, src: bytes | Path, dst: bytes | Path, *, crash_at: str | None,
              hit: int = 1, timeout: float = 60, **opts: Any) -> subprocess.CompletedProcess[str]:
    """Run :data:`CHILD`; with ``crash_at``, assert it was SIGKILLed there."""
    import json

    env = dict(os.environ)
    env.pop("AXLPY_CRASH_AT", None)
    if crash_at:
        env.update(AXLPY_CRASH_AT=crash_at, AXLPY_CRASH_HIT=str(hit))
    opts.setdefault("chunk_size", 65536)
    opts.setdefault("extent_size", 65536)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(journal), os.fsencode(src).hex(),
         os.fsencode(dst).hex(), json.dumps(opts)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    if crash_at:
        assert proc.returncode == -9, f"child did not die at {crash_at}: {proc.stderr}"
    return proc


def edit_journal(journal: Path, sql: str, params: tuple[Any, ...] = ()) -> int:
    """Run one UPDATE on the journal as an attacker with write access would: plain
    sqlite3, no axlpy. Returns the number of rows changed."""
    conn = sqlite3.connect(journal)
    try:
        cur = conn.execute(sql, params)
        conn.commit()
        return cur.rowcount
    finally:
        conn.close()


def walk(root: Path | bytes) -> list[tuple[bytes, os.stat_result]]:
    """Every entry below ``root`` as (path, lstat), never following a symlink.
    Iterative: a tree thousands of levels deep does not hit the recursion limit."""
    out = []
    stack = [os.fsencode(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                out.append((e.path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return out


def make_deep(root: Path | bytes, depth: int, files: dict[bytes, bytes]) -> bytes:
    """``root/d/d/.../d`` (``depth`` levels) holding ``files``; returns the leaf path.
    Built through dir fds: os.makedirs recurses once per level."""
    top = os.fsencode(root)
    os.makedirs(top, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(b"d", dir_fd=fd)
            nfd = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        for name, data in files.items():
            f = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, data)
            os.close(f)
    finally:
        os.close(fd)
    return os.path.join(top, *([b"d"] * depth))


def remove_tree(root: Path | bytes) -> None:
    """Remove a tree of any depth (shutil.rmtree recurses once per level)."""
    top = os.fsencode(root)
    if not os.path.lexists(top):
        return
    entries = walk(top)
    for p, st in sorted(entries, key=lambda e: e[0].count(b"/"), reverse=True):
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(p)
        else:
            os.unlink(p)
    os.rmdir(top)


def snapshot(root: Path | bytes) -> dict[bytes, tuple[str, bytes | None, int]]:
    """Every entry under ``root`` without following symlinks: kind, content (files and
    link targets) and mode. Compare two snapshots to prove nothing changed."""
    out: dict[bytes, tuple[str, bytes | None, int]] = {}
    top = os.fsencode(root)
    for p, st in walk(top):
        rel = os.path.relpath(p, top)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), 0)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", None, st.st_mode & 0o7777)
        else:
            with open(p, "rb") as f:
                out[rel] = ("file", f.read(), st.st_mode & 0o7777)
    return out


def final_files(root: Path | bytes) -> dict[bytes, bytes]:
    """Everything under a final (non-temp) name below ``root`` that is not a directory:
    regular files by content, symlinks as ``b"<symlink>"`` so a test can refuse them."""
    out: dict[bytes, bytes] = {}
    if not os.path.lexists(os.fsencode(root)):
        return out
    for p, st in walk(root):
        if TEMP_PATTERN.search(os.path.basename(p)) or stat.S_ISDIR(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode):
            out[p] = b"<symlink>"
            continue
        with open(p, "rb") as f:
            out[p] = f.read()
    return out


def temps(root: Path | bytes) -> list[bytes]:
    """axlpy temp names anywhere below ``root`` (files or anything planted there)."""
    if not os.path.lexists(os.fsencode(root)):
        return []
    return [p for p, _ in walk(root) if TEMP_PATTERN.search(os.path.basename(p))]


@contextmanager
def recursion_headroom(frames: int) -> Iterator[int]:
    """Lower the recursion limit to the current stack depth plus ``frames``; yield a
    tree depth comfortably above it. Code that recursed once per directory level would
    raise RecursionError on such a tree; iterative code does not notice. Keeps deep-tree
    tests fast (hundreds of levels, not thousands)."""
    depth = 0
    f = sys._getframe()
    while f is not None:
        depth += 1
        f = f.f_back  # type: ignore[assignment]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield frames * 2
    finally:
        sys.setrecursionlimit(old)
