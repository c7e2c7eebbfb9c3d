"""A truncated journal (issue 12 item 10): refused with a JournalError naming it, and left
byte-for-byte untouched (main file and ``-wal``), whether the main file was cut before or
after a checkpoint. The one exception, documented in docs/design.md: a ``-wal`` that holds
a valid copy of every missing page (what a checkpoint interrupted by a full disk leaves)
is recovered by SQLite to exactly the last committed state.

The journal is written by a child process that exits without closing it (as a crash
does), so its ``-wal`` stays behind; nothing here depends on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from axlpy import JournalError

ROOT = Path(__file__).resolve().parents[2]

# Write ``n`` transfers (each with ``files`` rows), then run ``sql`` (a checkpoint or
# nothing), then write ``after`` more transfers, and die without closing the journal.
_WRITER = textwrap.dedent("""
    import os, sys
    import axlpy
    journal, n, files, sql, after, first = sys.argv[1:7]
    src = os.path.join(os.path.dirname(journal), "..", f"src{files}")
    j = axlpy.Journal(journal)
    def make(i):
        j.create(f"t{i}").add(src, f"/tmp/axlpy-never-written/{i}")
    for i in range(int(first), int(first) + int(n)):
        make(i)
    if sql:
        j.db.conn.execute(sql).fetchall()
    for i in range(int(first) + int(n), int(first) + int(n) + int(after)):
        make(i)
    os._exit(0)
""")


def _write(journal: Path, n: int, *, files: int = 5, sql: str = "", after: int = 0,
           first: int = 0) -> None:
    src = journal.parent.parent / f"src{files}"  # a directory of ``files`` files
    if not src.exists():
        src.mkdir()
        for k in range(files):
            (src / f"file-{k:04d}").write_bytes(b"x" * 100)
    r = subprocess.run([sys.executable, "-c", _WRITER, str(journal), str(n), str(files),
                        sql, str(after), str(first)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr


def _snapshot(journal: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for suffix in ("", "-wal"):
        p = Path(f"{journal}{suffix}")
        out[suffix] = p.read_bytes() if p.exists() else None
    return out


def _truncate_half(journal: Path) -> None:
    size = journal.stat().st_size
    with open(journal, "r+b") as f:
        f.truncate(size // 2)


def _assert_refused_untouched(journal: Path) -> None:
    before = _snapshot(journal)
    with pytest.raises(JournalError, match="truncated") as ei:
        axlpy.Journal(journal)
    assert str(journal) in str(ei.value)
    assert "left untouched" in str(ei.value)
    assert _snapshot(journal) == before
    # The CLI says the same in one line, and changes nothing either.
    r = subprocess.run([sys.executable, "-m", "axlpy", "ls"], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                           AXLPY_JOURNAL=str(journal)))
    assert r.returncode == 1
    assert "truncated" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(journal) == before


def test_truncated_before_a_checkpoint_is_refused(journal_path):
    """Main file cut while the -wal holds commits not yet checkpointed."""
    _write(journal_path, 40, sql="PRAGMA wal_checkpoint(TRUNCATE)", after=2)
    assert os.path.getsize(f"{journal_path}-wal") > 0  # un-checkpointed commits
    _truncate_half(journal_path)
    _assert_refused_untouched(journal_path)


@pytest.mark.parametrize("mode", ["PASSIVE", "TRUNCATE"])
def test_truncated_after_a_checkpoint_is_refused(journal_path, mode):
    """Main file cut after a checkpoint copied the -wal into it (PASSIVE keeps the
    frames in the -wal, TRUNCATE empties it); the earlier pages are only in the main
    file, so the cut loses them."""
    _write(journal_path, 40)
    axlpy.Journal(journal_path).close()  # clean close: all in the main file, no -wal
    _write(journal_path, 2, sql=f"PRAGMA wal_checkpoint({mode})", first=100)
    _truncate_half(journal_path)
    _assert_refused_untouched(journal_path)


def test_truncated_after_a_clean_close_is_refused(journal_path):
    _write(journal_path, 40)
    axlpy.Journal(journal_path).close()
    assert not os.path.exists(f"{journal_path}-wal")
    _truncate_half(journal_path)
    _assert_refused_untouched(journal_path)


def test_wal_holding_every_missing_page_recovers_exactly(journal_path):
    """The state a checkpoint interrupted by a full disk leaves: SQLite's recovery from
    the -wal gives exactly the last committed journal, so it is not refused."""
    axlpy.Journal(journal_path).close()
    size0 = journal_path.stat().st_size
    # Few enough commits that the -wal never wraps (no auto-checkpoint at 1000 frames).
    _write(journal_path, 10, files=30, sql="PRAGMA wal_checkpoint(PASSIVE)")
    assert journal_path.stat().st_size > size0
    # Cut exactly the pages the checkpoint added: each has a valid frame in the -wal.
    with open(journal_path, "r+b") as f:
        f.truncate(size0)
    with axlpy.Journal(journal_path) as j:
        assert j.names() == [f"t{i}" for i in range(10)]
        assert all(len(j.open(f"t{i}").files()) == 31 for i in range(10))
