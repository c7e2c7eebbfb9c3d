"""Issue 12 item 5: every engine stays within a file-descriptor budget derived from
RLIMIT_NOFILE, so a many-file, many-directory transfer runs under ``ulimit -n 64``.

Each transfer runs in a child process whose soft and hard RLIMIT_NOFILE are 64 (set with
``resource.setrlimit`` before axlpy opens anything). The tree has more files and more
directories than 64, so a transfer that holds every directory, or one file per io_uring
slot, open at once fails with EMFILE ("Too many open files").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from axlpy._fdbudget import FIXED_FDS, fd_budget
from axlpy.engines import ENGINE_TYPES
from tests.conftest import temp_files, tree_bytes, type_params

pytestmark = pytest.mark.timeout(600)

TYPES = type_params(ENGINE_TYPES)
NFILES = 2000
NDIRS = 100  # two levels: 10 x 10

LIMIT = 64

#: the child: lower RLIMIT_NOFILE first, then run one verb on the transfer
_CHILD = r"""
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (@LIMIT@, @LIMIT@))
import axlpy
journal, verb, ttype, src, dst = sys.argv[1:6]
j = axlpy.Journal(journal)
out = {}
try:
    if verb == "copy":
        t = j.create("x", ttype)
        t.add(src, dst)
        t.dispatch()
    else:
        t = j.open("x")
        getattr(t, verb)()
    if verb != "cancel":
        t.wait()
    out["state"] = t.state.value
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
""".replace("@LIMIT@", str(LIMIT))


def _tree(src: Path) -> None:
    for i in range(NFILES):
        d = src / f"a{i % 10}" / f"b{(i // 10) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"%d\n" % i * (1 + i % 7))


def _child(tmp: Path, verb: str, ttype: str, env: dict[str, str] | None = None,
           limit: bool = True) -> dict[str, str]:
    code = _CHILD if limit else _CHILD.replace("resource.setrlimit", "(lambda *a: 0)")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp / "j" / "journal.db"), verb, ttype,
         str(tmp / "src"), str(tmp / "dst")],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
        cwd=Path(__file__).parents[2])
    if not proc.stdout.strip():
        return {"killed": str(proc.returncode), "stderr": proc.stderr[-2000:]}
    out: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture
def area(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o700)
    (tmp_path / "j").mkdir(mode=0o700)
    _tree(tmp_path / "src")
    return tmp_path


@pytest.mark.parametrize("ttype", TYPES)
def test_many_files_and_dirs_under_ulimit_64(area: Path, ttype: str) -> None:
    out = _child(area, "copy", ttype)
    assert out == {"state": "COMPLETED"}, out
    assert tree_bytes(area / "dst") == tree_bytes(area / "src")
    assert temp_files(area / "dst") == []


@pytest.mark.parametrize("verb", ["resume", "cancel"])
def test_resume_and_cancel_under_ulimit_64(area: Path, verb: str) -> None:
    # The first run (no limit) dies after its second published batch; the recovery runs
    # under the limit and must open every directory of the tree again.
    crashed = _child(area, "copy", "default", limit=False,
                     env={"AXLPY_CRASH_AT": "publish.after_rename", "AXLPY_CRASH_HIT": "300"})
    assert "killed" in crashed, crashed
    out = _child(area, verb, "default")
    assert out == {"state": "COMPLETED" if verb == "resume" else "CANCELLED"}, out
    assert temp_files(area / "dst") == []
    if verb == "resume":
        assert tree_bytes(area / "dst") == tree_bytes(area / "src")
    else:
        files = [f for _, _, fs in os.walk(area / "dst") for f in fs]
        assert files == []


@pytest.mark.parametrize(("limit", "in_use", "dirs", "files"), [
    (64, 10, 6, 8),        # (64 - 10) // 2 = 27: a quarter for directories
    (1024, 10, 126, 188),
    (1 << 20, 10, 256, 382),  # capped at 1024 descriptors per transfer
    (12, 10, 2, 1),        # nearly nothing free: one file at a time
])
def test_budget_split(limit: int, in_use: int, dirs: int, files: int) -> None:
    b = fd_budget(limit, in_use)
    assert (b.dirs, b.files) == (dirs, files)
    if b.total >= 2 + FIXED_FDS + 2:
        assert b.dirs + 2 * b.files + FIXED_FDS <= b.total


def test_dircache_bounds_open_fds_and_never_closes_a_pinned_one(tmp_path: Path) -> None:
    from axlpy._staging import DirCache

    root = os.fsencode(tmp_path)
    for i in range(20):
        (tmp_path / f"d{i}").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    with DirCache(mkdirs=False, max_open=3) as dirs:
        with dirs.pinned(root, b"d0") as fd0:
            for i in range(1, 20):
                with dirs.pinned(root, b"d%d" % i) as fd:
                    assert os.fstat(fd).st_ino == os.stat(tmp_path / f"d{i}").st_ino
                assert len(os.listdir("/proc/self/fd")) - before <= 3
            # d0 was pinned the whole time: still open, still d0.
            assert os.fstat(fd0).st_ino == os.stat(tmp_path / "d0").st_ino
        # Closed ones are walked to again on demand.
        assert os.fstat(dirs.open(root, b"d1")).st_ino == os.stat(tmp_path / "d1").st_ino
    assert len(os.listdir("/proc/self/fd")) == before


def test_dircache_pin_is_released_when_the_block_raises(tmp_path: Path) -> None:
    """A block that raises still unpins its directory (nested pins counted), so the fd
    budget can close it afterwards; the error propagates unchanged."""
    from axlpy._staging import DirCache

    root = os.fsencode(tmp_path)
    for i in range(6):
        (tmp_path / f"d{i}").mkdir()
    with DirCache(mkdirs=False, max_open=2) as dirs:
        with pytest.raises(KeyError, match="boom"), dirs.pinned(root, b"d0") as fd0:
            with dirs.pinned(root, b"d0") as again:
                assert again == fd0
            for i in range(1, 6):  # d0 stays pinned by the outer block
                with dirs.pinned(root, b"d%d" % i):
                    pass
            assert os.fstat(fd0).st_ino == os.stat(tmp_path / "d0").st_ino
            raise KeyError("boom")
        assert dirs._pins == {}
        for i in range(1, 6):  # d0 unpinned: evicted like any other
            dirs.open(root, b"d%d" % i)
        assert os.path.join(root, b"d0") not in dirs._fds
        assert len(dirs._fds) <= 2
