"""What a script and a person can trust in the CLI's output (issue 12): the exit code is
0 only for a COMPLETED transfer, names never reach the terminal raw, and errors say
what to do (which journal, which flag) and never advise a resume that cannot work."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from axlpy import Transfer
from tests.cli.clitools import child_env, run_runner, run_sub

BACKGROUND = ["default", "pthread", "uring"]


def _unwritable_dst(tmp_path: Path) -> Path:
    """A destination whose parent is a regular file: add() accepts it, and the copy fails
    when it creates the parent directory, before writing any byte (also as root)."""
    (tmp_path / "afile").write_bytes(b"")
    return tmp_path / "afile" / "sub" / "dst"


@pytest.fixture
def worker_ends_first(monkeypatch):
    """dispatch()/resume() return only once the background worker has ended: the order
    that, racing, made `cp` miss the failure (it waited only `if t.running`)."""
    for meth in ("dispatch", "resume"):
        orig = getattr(Transfer, meth)

        def gated(self, *a, _orig=orig, **kw):
            _orig(self, *a, **kw)
            assert self._done.wait(120), "the worker did not end"

        monkeypatch.setattr(Transfer, meth, gated)


# -- item 1: exit codes --------------------------------------------------------------------


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_cp_of_a_transfer_that_fails_before_writing_exits_1_with_the_error(
        jpath, tmp_path, worker_ends_first, ttype):
    src = tmp_path / "src"
    src.write_bytes(b"payload\n")
    dst = _unwritable_dst(tmp_path)
    r = run_runner(jpath, "cp", "--type", ttype, "--name", "f", src, dst)
    assert r.code == 1, (r.code, r.err)
    assert "Not a directory" in r.err  # the stored error, not only a summary line
    assert "COMPLETED" not in r.err
    st = json.loads(run_runner(jpath, "status", "--json", "f").out)["transfer"]
    assert st["state"] == "FAILED" and "Not a directory" in st["error"]
    assert src.read_bytes() == b"payload\n"


@pytest.mark.parametrize("ttype", BACKGROUND)
def test_resume_that_fails_again_exits_1_with_the_error(jpath, tmp_path, worker_ends_first,
                                                        ttype):
    src = tmp_path / "src"
    src.write_bytes(b"payload\n")
    dst = _unwritable_dst(tmp_path)
    assert run_runner(jpath, "cp", "--type", ttype, "--name", "f", src, dst).code == 1
    r = run_runner(jpath, "resume", "f")
    assert r.code == 1, (r.code, r.err)
    assert "Not a directory" in r.err
    # fixed cause: resume completes, exit 0
    (tmp_path / "afile").unlink()
    r = run_runner(jpath, "resume", "f")
    assert r.code == 0, r.err
    assert dst.read_bytes() == b"payload\n"


def test_cp_and_rm_script_is_safe(jpath, tmp_path):
    """`axlpy cp a b && rm -rf a` as a real shell line keeps the source on failure."""
    src = tmp_path / "a"
    src.mkdir()
    (src / "f").write_bytes(b"keep me")
    dst = _unwritable_dst(tmp_path)
    import subprocess

    p = subprocess.run(["sh", "-c", f'"{sys.executable}" -m axlpy cp "$1" "$2" && rm -rf "$1"',
                        "sh", str(src), str(dst)], env=child_env(jpath), capture_output=True)
    assert p.returncode == 1, p.stderr
    assert (src / "f").read_bytes() == b"keep me"
