"""Shared fixtures: a private journal directory, source trees on real files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
from axlpy.io import IOQueue, IORequest, PosixIOQueue, probe_queue

# Each capability probe runs once (probe_queue is cached; io_uring is probed in a child).
URING_UNAVAILABLE = probe_queue("uring")
#: marks for anything that needs a working io_uring (use as ``marks=`` or ``pytestmark``)
requires_uring = [
    pytest.mark.requires_uring,
    pytest.mark.skipif(URING_UNAVAILABLE is not None,
                       reason=f"io_uring unavailable: {URING_UNAVAILABLE}"),
]


def type_params(types):
    """Transfer types as pytest params, the ``uring`` one gated on io_uring."""
    return [pytest.param(t, marks=requires_uring if t == "uring" else ()) for t in types]


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A journal path in a private (0700) directory, as axlpy requires."""
    d = tmp_path / "journal"
    d.mkdir(mode=0o700)
    return d / "journal.db"


@pytest.fixture
def journal(journal_path: Path) -> Iterator[axlpy.Journal]:
    j = axlpy.Journal(journal_path)
    yield j
    j.close()


def write_tree(root: Path, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ()) -> None:
    """Create ``files`` (relative path -> content) and empty directories under ``root``."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for d in empty_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)


def tree_bytes(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: files -> content, directories -> None."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def temp_files(root: Path) -> list[str]:
    """axlpy temp files anywhere under ``root``."""
    from axlpy._staging import TEMP_PATTERN

    found = []
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            if TEMP_PATTERN.search(os.fsencode(f)):
                found.append(os.path.join(dirpath, f))
    return found


class PosixWrapperQueue(IOQueue):
    """A real POSIX queue behind a hook: subclasses override ``prep`` to count, gate or
    pace requests and then call ``super().prep``. Built as ``queue_factory(depth)``."""

    name = "posix-wrapper"
    thread_safe = True

    def __init__(self, depth: int) -> None:
        self.inner = PosixIOQueue(depth)

    def prep(self, request: IORequest) -> None:
        self.inner.prep(request)

    def submit(self) -> int:
        return self.inner.submit()

    def reap(self, min_complete=1, timeout=None):
        return self.inner.reap(min_complete, timeout)

    @property
    def depth(self) -> int:
        return self.inner.depth

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    def close(self) -> None:
        self.inner.close()
