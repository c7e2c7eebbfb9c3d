"""The URING engine on large files (issue 14, items 1 and 6): what made it 3x slower
than PTHREAD on one 2 GiB file, pinned by behaviour rather than by timing.

Real io_uring (gated), real files, a real journal. docs/engines.md, "URING on large
files", has the measurements; these tests check the three properties they led to:

- one request per chunk (``op_size_for``, tests/engines/test_engines.py);
- the page-cache calls (``sync_file_range`` write-behind, ``POSIX_FADV_DONTNEED`` of
  source and temp pages) run on the file's sync thread, never on the thread that keeps
  the ring full;
- the ring keeps copying while the driver publishes a group on the transfer's thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import axlpy
from axlpy import _driver
from axlpy.engines import _stager, _writeback
from axlpy.engines._writeback import WriteBehind
from tests.conftest import requires_uring

pytestmark = requires_uring

MiB = 1 << 20


def test_page_cache_calls_run_on_sync_threads(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every write-behind and DONTNEED call ran on the one thread driving the
    ring (up to 46 ms each when the device queue was full), stalling every request."""
    threads: list[tuple[str, str]] = []
    real_wb, real_drop = _writeback.start_writeback, _writeback.drop_pages

    def start(fd: int, off: int, n: int) -> None:
        threads.append(("wb", threading.current_thread().name))
        real_wb(fd, off, n)

    def drop(fd: int, off: int, n: int) -> None:
        threads.append(("drop", threading.current_thread().name))
        real_drop(fd, off, n)

    monkeypatch.setattr(_writeback, "settings",
                        lambda: WriteBehind(step=2 * MiB, dontneed=True, drop_temp=True))
    monkeypatch.setattr(_writeback, "start_writeback", start)
    monkeypatch.setattr(_writeback, "drop_pages", drop)
    src = tmp_path / "src"
    src.mkdir()
    data = {f"f{i}": os.urandom(9 * MiB + i) for i in range(3)}
    for name, blob in data.items():
        (src / name).write_bytes(blob)
    t = axlpy.Journal(tmp_path / "j.db").create("t", "uring", chunk_size=MiB,
                                                extent_size=4 * MiB)
    t.add(src, tmp_path / "dst")
    t.dispatch()
    t.wait(timeout=300)
    for name, blob in data.items():
        assert (tmp_path / "dst" / name).read_bytes() == blob
    kinds = {k for k, _ in threads}
    assert kinds == {"wb", "drop"}, threads
    wrong = sorted({name for _, name in threads if not name.startswith("axlpy-uring-sync")})
    assert not wrong, f"page-cache calls on {wrong}, not on the sync threads"


def test_ring_keeps_copying_while_the_driver_publishes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """The driver publishes a group (syncfs, renames, journal commits: tens of ms each
    on a busy disk) on the transfer's thread. Before, that thread was also the one
    driving the ring, so no read or write was submitted meanwhile. Here the first
    publish is held until every file is staged: that must happen while it is held.

    ``queue_depth`` 4 gave the old engine 8 slots and so at most 8 files open: with 20
    files, 12 could never be staged while the publish was held (the wait timed out)."""
    nfiles = 20
    monkeypatch.setattr(_driver, "_GROUP_FILES", 1)
    staged = threading.Semaphore(0)
    real_finish = _stager.FileStager.finish

    def finish(self: _stager.FileStager) -> Any:
        res = real_finish(self)
        staged.release()
        return res

    monkeypatch.setattr(_stager.FileStager, "finish", finish)
    held: list[bool] = []
    real_publish = _driver.Driver._publish

    def publish(self: _driver.Driver, group: Sequence[Any], *args: Any, **kw: Any) -> Any:
        if group and not held:
            # Gate: every file staged while this first publish waits (a generous bound
            # so a loaded machine passes; the old engine never got there).
            deadline = time.monotonic() + 120
            got = 0
            while got < nfiles and staged.acquire(timeout=max(0, deadline - time.monotonic())):
                got += 1
            held.append(got == nfiles)
        return real_publish(self, group, *args, **kw)

    monkeypatch.setattr(_driver.Driver, "_publish", publish)
    src = tmp_path / "src"
    src.mkdir()
    data = {f"f{i:02d}": os.urandom(2 * MiB + i) for i in range(nfiles)}
    for name, blob in data.items():
        (src / name).write_bytes(blob)
    t = axlpy.Journal(tmp_path / "j.db").create("t", "uring", chunk_size=MiB,
                                                extent_size=4 * MiB, queue_depth=4)
    t.add(src, tmp_path / "dst")
    t.dispatch()
    t.wait(timeout=600)
    assert held == [True], "files stopped being staged while the driver published"
    for name, blob in data.items():
        assert (tmp_path / "dst" / name).read_bytes() == blob
