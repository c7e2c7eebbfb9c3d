"""Scenarios: small source trees and transfer options that reach every code path.

A scenario is built into a fresh case directory::

    <case>/src/...        sources (or <mount>/src for power-loss move mode)
    <case>/dst/...        destinations (created by axlpy)
    <case>/journal/j.db   the journal (directory 0700)
    <case>/ack            written (fsynced) by the child once an operation returned success

Sizes are chosen around the small ``chunk_size`` (64 KiB) and ``extent_size`` (128 KiB)
options, so a few hundred KiB reach the multi-chunk and multi-extent paths quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHUNK",
    "EXTENT",
    "SCENARIOS",
    "Layout",
    "Manifest",
    "Scenario",
    "available_types",
    "build",
]

CHUNK = 64 << 10
EXTENT = 128 << 10


@dataclass(frozen=True)
class Scenario:
    """What to copy and how. ``tree``: add one directory tree; else add file by file."""

    name: str
    files: tuple[tuple[str, int], ...]
    empty_dirs: tuple[str, ...] = ()
    tree: bool = True
    move: bool = False
    metadata: bool = False
    #: (later name, first name): hard links among the sources (issue 15.3)
    links: tuple[tuple[str, str], ...] = ()

    def options(self) -> dict[str, Any]:
        return {"chunk_size": CHUNK, "extent_size": EXTENT, "move": self.move,
                "metadata": self.metadata}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        # 0 B, 1 B, exactly one chunk, several chunks and extents; added one at a time.
        Scenario("files", (("zero", 0), ("one", 1), ("chunk", CHUNK),
                           ("multi", 2 * EXTENT + CHUNK + 17)), tree=False),
        # nested tree with empty directories, added as one tree.
        # nested tree with empty directories and a hard-link pair, added as one tree.
        Scenario("tree", (("top", 1000), ("a/b/c/deep", CHUNK + 1), ("a/b/zero", 0),
                          ("a/x", 3 * CHUNK)), empty_dirs=("empty", "a/b/empty2/e3"),
                 links=(("a/b/x-link", "a/x"),)),
        Scenario("move", (("m1", 2 * EXTENT + 5), ("sub/m2", 10), ("sub/m0", 0)),
                 empty_dirs=("sub/emptydir",), move=True, links=(("sub/m1-link", "m1"),)),
        Scenario("metadata", (("exec", 5000), ("ro/private", CHUNK + 3)),
                 empty_dirs=("ro/e",), metadata=True),
    )
}


def available_types() -> list[str]:
    """Every :class:`axlpy.TransferType` with an engine that can run here (its IO queue
    passes :func:`axlpy.io.probe_queue`), one per engine class (so a type mapping to the
    same engine as an earlier one is skipped). DEFAULT is asked as for the sweeps' small
    transfers (it chooses by size, see docs/engines.md): inline SYNC staging on a
    background thread, a class of its own."""
    import axlpy
    from axlpy._errors import AxlError
    from axlpy.engines import get_engine
    from axlpy.io import probe_queue

    seen: dict[str, str] = {}
    order = sorted(axlpy.TransferType, key=lambda t: (t.value != "sync", t.value))
    for t in order:
        try:
            eng = get_engine(t.value, files=1, nbytes=1)
        except (AxlError, ImportError, OSError):
            continue
        # The same real probe the tests use: an engine whose own queue cannot run here
        # (URING without liburing or io_uring) is not a type we can test. "default"
        # falls back to POSIX by itself.
        if eng.queue_name != "default" and probe_queue(eng.queue_name) is not None:
            continue
        key = f"{type(eng).__module__}.{type(eng).__qualname__}"
        seen.setdefault(key, t.value)
    return list(seen.values())


Manifest = dict[str, Any]


@dataclass
class Layout:
    """Paths of one built case (all absolute)."""

    root: str
    src: str
    dst: str
    journal: str
    ack: str
    trace: str
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def spec(self, scen: Scenario, ttype: str, op: str, **extra: Any) -> dict[str, Any]:
        """The JSON spec for :mod:`fault_injection.child`."""
        d: dict[str, Any] = {
            "journal": self.journal, "name": "xfer", "type": ttype,
            "options": scen.options(), "pairs": self.pairs, "op": op, "ack": self.ack,
        }
        d.update(extra)
        return d


def _data(rel: str, size: int, seed: int) -> bytes:
    rng = random.Random(f"{seed}:{rel}")
    return rng.randbytes(size)


def build(scen: Scenario, root: str, *, src_root: str | None = None,
          dst_root: str | None = None, journal_dir: str | None = None,
          seed: int = 0) -> tuple[Layout, Manifest]:
    """Create the sources of ``scen`` under ``root`` (or ``src_root``); return the layout
    and a manifest of what every destination must hold (sha256, size, mode, mtime; a
    hard link's later name holds what its first name holds, and ``links`` pairs them)."""
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o700)
    src = src_root or os.path.join(root, "src")
    dst = dst_root or os.path.join(root, "dst")
    jdir = journal_dir or os.path.join(root, "journal")
    os.makedirs(src, exist_ok=True)
    os.makedirs(jdir, mode=0o700, exist_ok=True)
    os.chmod(jdir, 0o700)
    files: dict[str, dict[str, Any]] = {}
    for i, (rel, size) in enumerate(scen.files):
        p = os.path.join(src, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        data = _data(rel, size, seed)
        with open(p, "wb") as f:
            f.write(data)
        mode = 0o644
        if scen.metadata:
            mode = (0o750, 0o600, 0o640)[i % 3]
            os.chmod(p, mode)
            os.utime(p, ns=(1_600_000_000_000_000_000 + i * 1_000_000_007,) * 2)
        st = os.stat(p)
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": size,
                      "mode": st.st_mode & 0o7777, "mtime_ns": st.st_mtime_ns}
    for rel, first in scen.links:
        os.link(os.path.join(src, first), os.path.join(src, rel))
        files[rel] = dict(files[first])
    for rel in scen.empty_dirs:
        os.makedirs(os.path.join(src, rel), exist_ok=True)
    dirs = sorted({d for rel in list(files) + list(scen.empty_dirs)
                   for d in _parents(rel, include_self=rel in scen.empty_dirs)})
    # One private directory per tree (issue 15.1: a copy is never wider than its source).
    dir_modes: dict[str, dict[str, int]] = {}
    if scen.tree:
        for k, rel in enumerate(dirs):
            p = os.path.join(src, rel)
            if k == len(dirs) // 2:
                os.chmod(p, 0o700)
        for rel in reversed(dirs):  # deepest first: a chmod does not move mtimes
            st = os.stat(os.path.join(src, rel))
            dir_modes[rel] = {"mode": st.st_mode & 0o7777, "mtime_ns": st.st_mtime_ns}
    if scen.tree:
        pairs = [(src, dst)]
    else:
        pairs = [(os.path.join(src, rel), os.path.join(dst, rel)) for rel, _ in scen.files]
    lay = Layout(root, src, dst, os.path.join(jdir, "j.db"), os.path.join(root, "ack"),
                 os.path.join(root, "trace"), pairs)
    man: Manifest = {"files": files, "dirs": dirs if scen.tree else [],
                     "move": scen.move, "metadata": scen.metadata, "dir_modes": dir_modes,
                     "links": [list(pair) for pair in scen.links]}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(man, f)
    return lay, man


def _parents(rel: str, include_self: bool) -> Iterable[str]:
    parts = rel.split("/")
    n = len(parts) if include_self else len(parts) - 1
    for i in range(1, n + 1):
        yield "/".join(parts[:i])
