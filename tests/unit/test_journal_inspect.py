"""The `sqlite-utils` commands docs/operators-guide.md gives for looking inside a journal
run as written on a real journal and show what it holds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import axlpy
from tests.conftest import write_tree

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operators-guide.md"
BIN = Path(sys.executable).parent


def _block() -> list[str]:
    text = GUIDE.read_text()
    m = re.search(r"^```sh\n(J=~/\.local/state/axlpy/journal\.db.*?)^```", text, re.S | re.M)
    assert m, "the sqlite-utils block is missing from docs/operators-guide.md"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


@pytest.mark.skipif(not (BIN / "sqlite-utils").exists() and not shutil.which("sqlite-utils"),
                    reason="the sqlite-utils command is not installed")
def test_operator_sqlite_utils_commands_read_a_journal(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    src = tmp_path / "src"
    write_tree(src, {"a.bin": b"a" * 5000, "sub/b.bin": b"b" * 300})
    jpath = home / ".local" / "state" / "axlpy" / "journal.db"
    with axlpy.Journal(jpath) as j:
        done = j.create("done", "sync", move=False)
        done.add(src, tmp_path / "out")
        done.dispatch()
        pending = j.create("pending", "sync")
        pending.add(src, tmp_path / "later")
    before = jpath.read_bytes()

    lines = _block()
    assert lines[0].startswith("J=")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    outs = []
    for cmd in lines[1:]:
        p = subprocess.run(["bash", "--noprofile", "--norc", "-c", f"{lines[0]}\n{cmd}"],
                           cwd=home, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"{cmd!r}: {p.stderr}"
        outs.append(p.stdout)
    tables, transfers, by_state, unpublished, events, options = outs
    assert re.search(r"transfers\s+2", tables) and re.search(r"events\s+\d+", tables)
    assert re.search(r"done\s+sync\s+COMPLETED", transfers)
    assert re.search(r"pending\s+sync\s+CREATED", transfers)
    assert re.search(r"done\s+PUBLISHED\s+4\s+5300", by_state)  # 2 dirs + 2 files
    assert re.search(r"pending\s+PENDING\s+4\s+5300", by_state)
    assert str(tmp_path / "later" / "a.bin") in unpublished
    assert str(tmp_path / "out") not in unpublished
    assert re.search(r"done\s+dispatch\s+CREATED\s+DISPATCHED", events)
    assert re.search(r"done\s+complete\s+RENAMED\s+COMPLETED", events)
    row = next(ln for ln in options.splitlines() if ln.startswith("done"))
    assert json.dumps([str(tmp_path / "out")]) in row
    # Read only: the journal is byte-for-byte what it was (a WAL checkpoint aside, which
    # a reader does not run), and axlpy still opens it.
    with axlpy.Journal(jpath, create=False) as j:
        assert j.open("done").state.value == "COMPLETED"
    assert len(jpath.read_bytes()) == len(before)
