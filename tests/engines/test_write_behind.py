"""Issue 14.2: write-behind and page-cache hints for large files (``axlpy.engines._writeback``).

Real files, every engine type: a counting hook around the real ``start_writeback`` /
``drop_pages`` sees which ranges of which fd get them; one test traces a child with
strace to see the ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` calls themselves, and
that ``AXLPY_WRITE_BEHIND=0`` turns them off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import axlpy
from axlpy.engines import ENGINE_TYPES, _writeback
from axlpy.engines._writeback import WriteBehind
from tests.conftest import type_params

TYPES = type_params(ENGINE_TYPES)
MiB = 1 << 20


def _copy(tmp_path: Path, typ: str, data: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(data)
    (src / "small").write_bytes(b"tiny")
    t = axlpy.Journal(tmp_path / "j.db").create("t", type=typ, chunk_size=MiB,
                                                extent_size=4 * MiB)
    t.add(src, tmp_path / "dst")
    t.dispatch()
    t.wait()
    assert (tmp_path / "dst" / "big").read_bytes() == data
    assert (tmp_path / "dst" / "small").read_bytes() == b"tiny"
    return tmp_path / "dst"


@pytest.mark.parametrize("typ", TYPES)
def test_write_behind_covers_the_file_in_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               typ: str) -> None:
    size = 9 * MiB + 123
    calls: list[tuple[str, int, int, int]] = []
    real_wb, real_drop = _writeback.start_writeback, _writeback.drop_pages

    def start(fd: int, off: int, n: int) -> None:
        calls.append(("wb", os.readlink(f"/proc/self/fd/{fd}"), off, n))
        real_wb(fd, off, n)

    def drop(fd: int, off: int, n: int) -> None:
        calls.append(("drop", os.readlink(f"/proc/self/fd/{fd}"), off, n))
        real_drop(fd, off, n)

    monkeypatch.setattr(_writeback, "settings",
                        lambda: WriteBehind(step=2 * MiB, dontneed=True, drop_temp=True))
    monkeypatch.setattr(_writeback, "start_writeback", start)
    monkeypatch.setattr(_writeback, "drop_pages", drop)
    _copy(tmp_path, typ, os.urandom(size))

    wb = [(path, off, n) for kind, path, off, n in calls if kind == "wb"]
    assert wb, "no write-behind for a 9 MiB file with a 2 MiB step"
    assert all(".big.axlpy-" in path for path, _, _ in wb)  # the temp, never the source
    # contiguous from 0, each at least a step, up to within a step of the end
    ends = 0
    for _, off, n in wb:
        assert off == ends and n >= 2 * MiB
        ends = off + n
    assert size - 2 * MiB < ends <= size
    # the source's pages are dropped once checksummed: all of it, in file order
    src = [(off, n) for kind, path, off, n in calls if kind == "drop" and path.endswith("/big")]
    assert sum(n for _, n in src) == size
    assert [off for off, _ in src] == sorted(off for off, _ in src)
    # the temp's pages one step behind the write-behind
    tmp = [(off, n) for kind, path, off, n in calls if kind == "drop" and ".axlpy-" in path]
    assert tmp and tmp[0][0] == 0 and all(o + n <= ends for o, n in tmp)
    # nothing for the small file
    assert not any("small" in path for _, path, _, _ in calls)


@pytest.mark.parametrize("typ", TYPES)
def test_write_behind_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typ: str) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_writeback, "settings", lambda: WriteBehind(step=0))
    monkeypatch.setattr(_writeback, "start_writeback", lambda fd, off, n: calls.append(n))
    monkeypatch.setattr(_writeback, "drop_pages", lambda fd, off, n: calls.append(n))
    _copy(tmp_path, typ, os.urandom(9 * MiB))
    assert calls == []


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _writeback.settings.cache_clear()
    try:
        monkeypatch.setenv("AXLPY_WRITE_BEHIND", "4M")
        monkeypatch.setenv("AXLPY_FADVISE", "source-sequential, temp-dontneed")
        assert _writeback.settings() == WriteBehind(4 * MiB, True, False, True)
        _writeback.settings.cache_clear()
        monkeypatch.setenv("AXLPY_FADVISE", "none")
        monkeypatch.setenv("AXLPY_WRITE_BEHIND", "0")
        assert _writeback.settings() == WriteBehind(0, False, False, False)
        _writeback.settings.cache_clear()
        monkeypatch.setenv("AXLPY_WRITE_BEHIND", "lots")
        with pytest.raises(ValueError, match="AXLPY_WRITE_BEHIND='lots'"):
            _writeback.settings()
        monkeypatch.setenv("AXLPY_WRITE_BEHIND", "8M")
        monkeypatch.setenv("AXLPY_FADVISE", "dontneed")
        with pytest.raises(ValueError, match="AXLPY_FADVISE='dontneed'"):
            _writeback.settings()
    finally:
        _writeback.settings.cache_clear()


_CHILD = r"""
import sys, axlpy
t = axlpy.Journal(sys.argv[3]).create("t", type="sync", chunk_size=1 << 20)
t.add(sys.argv[1], sys.argv[2]); t.dispatch(); t.wait()
"""


@pytest.mark.requires_strace
@pytest.mark.parametrize("step", ["1M", "0"])
def test_sync_file_range_issued(tmp_path: Path, step: str) -> None:
    """The real system call, seen by strace in a child: SYNC_FILE_RANGE_WRITE only (never
    a WAIT flag, which would consume the writeback error the fsync must report)."""
    if shutil.which("strace") is None:
        pytest.skip("strace missing")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(8 * MiB))
    out = tmp_path / "trace.txt"
    env = dict(os.environ, AXLPY_WRITE_BEHIND=step, AXLPY_FADVISE="none")
    r = subprocess.run(["strace", "-f", "-e", "trace=sync_file_range", "-o", str(out),
                        sys.executable, "-c", _CHILD, str(src), str(tmp_path / "dst"),
                        str(tmp_path / "j.db")], env=env, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dst" / "big").read_bytes() == (src / "big").read_bytes()
    calls = [line for line in out.read_text().splitlines() if "sync_file_range(" in line]
    if step == "0":
        assert calls == []
    else:
        assert len(calls) == 7, calls  # 8 MiB in 1 MiB steps; the fsync covers the last
        assert all(line.rstrip().endswith("SYNC_FILE_RANGE_WRITE) = 0") for line in calls)
