"""Issue 14.7 (resume start-up): a resume reads the transfer's hard-link groups once.

The groups query (``JournalDB.link_groups``: a GROUP BY over every file row of the
transfer) costs about 75 ms for 100k files; resume needs it to reset the later names of a
first name it copies again, and the run after it to publish them as links. Counted with
an sqlite3 trace callback on the real journal connection; the transfer is really killed
(crash point) after its first names were published, then resumed in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from axlpy import TransferState as T
from tests.cli.clitools import child_env

_CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", "sync", move=sys.argv[4] == "move")
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
    t.wait()
""")

#: the one statement link_groups runs (see axlpy/_journal.py)
_GROUPS_SQL = "GROUP BY src_dev, src_ino HAVING COUNT(*) > 1"


def _tree(root: Path) -> Path:
    """src/ with a pair (a, sub/b), a group of three (s, t, sub/u) and a lone file."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"first name")
    os.link(src / "a", src / "sub" / "b")
    (src / "s").write_bytes(b"small group")
    os.link(src / "s", src / "t")
    os.link(src / "s", src / "sub" / "u")
    (src / "lone").write_bytes(b"alone")
    return src


def _ino(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_resume_reads_the_hard_link_groups_once(tmp_path: Path, journal_path: Path,
                                                mode: str) -> None:
    src = _tree(tmp_path)
    dst = tmp_path / "dst"
    # Killed after the first names' PUBLISHED commit: the later names are still PENDING.
    env = dict(child_env(journal_path), AXLPY_CRASH_AT="publish.after_commit",
               AXLPY_CRASH_HIT="1")
    p = subprocess.run([sys.executable, "-c", _CHILD, str(journal_path), str(src),
                        str(dst), mode], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -9, p.stderr
    statements: list[str] = []
    with axlpy.Journal(journal_path) as j:
        j.db.conn.set_trace_callback(statements.append)
        t = j.open("x")
        t.resume()
        t.wait()
        assert t.state is T.COMPLETED
        j.db.conn.set_trace_callback(None)
    assert sum(_GROUPS_SQL in s for s in statements) == 1, [
        s for s in statements if _GROUPS_SQL in s]
    # and the groups were used: every name arrived, linked as in the source
    assert _ino(dst / "a") == _ino(dst / "sub" / "b")
    assert _ino(dst / "s") == _ino(dst / "t") == _ino(dst / "sub" / "u")
    assert (dst / "lone").read_bytes() == b"alone"
    assert (src / "a").exists() is (mode == "copy")
