"""Issue 14.3: system calls per small file, counted by ``strace -f -c`` on a real transfer.

2,000 files of 4 KiB on a tmpfs (DEFAULT stages them inline there, as in the note and
docs/engines.md "Small files"), journal on the test's disk. A child process creates the
transfer and adds the tree, then waits; ``strace -f -c -p`` attaches and the child goes
on: every system call of every thread from ``dispatch()`` to ``wait()`` returning is
counted — the dispatch stat, the staging, the renames and their checks, the directory
fsync and the journal's share (SQLite's writes, locks and syncs) — and divided by the
number of files. Issue 14's target is 12; what is left above it is in docs/engines.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.requires_strace, pytest.mark.timeout(300)]

#: the bound asserted (measured 14.9 before the read of ``size + 1`` bytes was cut, 12.85-13.0
#: since batched durability; docs/engines.md "Small files" has the table)
MAX_PER_FILE = 13.5
NFILES = 2000

_CHILD = r"""
import os, sys
import axlpy
from axlpy import _driver
src, dst, jpath = sys.argv[1:4]
# A group is published at 256 files or after 0.1 s. Under strace (each call trapped) on a
# loaded machine the 0.1 s closes groups early, and each extra group adds its journal
# commits: the count would depend on time. The time limit is a latency bound, not a cost
# per file: groups here close by count only, as on a fast machine.
_driver._GROUP_SECONDS = float("inf")
t = axlpy.Journal(jpath).create("t")
t.add(src, dst)
print(os.getpid(), flush=True)
sys.stdin.readline()
t.dispatch()
t.wait()
"""


def _strace_reason() -> str | None:
    if shutil.which("strace") is None:
        return "strace missing"
    r = subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {r.stderr.strip()}"
    return None


def count_copy_phase(src: Path, dst: Path, journal: Path, out: Path) -> dict[str, int]:
    """Syscalls (name -> calls) of every thread of a child from dispatch() to wait()."""
    with subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(dst), str(journal)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            pid = int(child.stdout.readline())
            with subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-p", str(pid)],
                                  stderr=subprocess.PIPE, text=True) as tracer:
                assert tracer.stderr is not None
                line = tracer.stderr.readline()  # "strace: Process N attached": the gate
                assert "attached" in line, line
                child.stdin.write("\n")
                child.stdin.flush()
                assert child.wait(timeout=240) == 0
                tracer.wait(timeout=60)
        finally:
            child.kill()
    counts: dict[str, int] = {}
    for row in out.read_text().splitlines():
        parts = row.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


def test_small_file_syscalls(tmp_path: Path, make_tmpfs: Callable[[str], Path]) -> None:
    reason = _strace_reason()
    if reason:
        pytest.skip(reason)
    mnt = make_tmpfs("64m")
    src = mnt / "src"
    src.mkdir()
    for i in range(NFILES):
        (src / f"f{i:05d}").write_bytes(os.urandom(4096))
    counts = count_copy_phase(src, mnt / "dst", tmp_path / "j.db", tmp_path / "strace.txt")
    assert sorted(p.name for p in (mnt / "dst").iterdir()) == sorted(
        p.name for p in src.iterdir())
    # the per-file ones that must be there, once each: nothing skipped to win the count
    # (a rename is renameat2 with RENAME_NOREPLACE where the filesystem takes it)
    assert counts.get("renameat", 0) + counts.get("renameat2", 0) >= NFILES, counts
    for name in ("pwritev2", "fchmod"):
        assert counts.get(name, 0) >= NFILES, (name, counts)
    # durable: an fsync per file, or (batched durability on a local filesystem, tmpfs
    # included: docs/design.md) one syncfs per batch of at most 256 files
    assert (counts.get("fsync", 0) >= NFILES
            or counts.get("syncfs", 0) >= -(-NFILES // 256)), counts
    per_file = sum(counts.values()) / NFILES
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    assert per_file <= MAX_PER_FILE, f"{per_file:.2f} system calls per file: {top}"
