"""The durability primitives (axlpy._durable): expected entries, atomic publish, verified
unlink — on real files, and through the callers that use them (cancel)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
from axlpy._checksum import crc32c
from axlpy._durable import Expected, publish_atomic, unlink_verified
from axlpy._state import TransferState as T


@pytest.fixture
def d(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _file(tmp_path: Path, name: str, data: bytes) -> Expected:
    (tmp_path / name).write_bytes(data)
    return Expected("file", len(data), crc32c(data))


def test_expected_file_matches_only_its_bytes(tmp_path: Path, d: int) -> None:
    e = _file(tmp_path, "f", b"hello world")
    assert e.matches(d, b"f")
    (tmp_path / "f").write_bytes(b"hello WORLD")  # same size, other bytes
    m = e.check(d, b"f")
    assert m is not None and m.problem == "crc32c"
    assert m.actual_crc32c == crc32c(b"hello WORLD")
    assert e.check(d, b"f", content=False) is None  # kind and size only
    (tmp_path / "f").write_bytes(b"short")
    m = e.check(d, b"f", content=False)
    assert m is not None and (m.problem, m.actual_size) == ("size", 5)
    os.unlink(tmp_path / "f")
    m = e.check(d, b"f")
    assert m is not None and m.problem == "missing"


def test_expected_without_crc_never_matches(tmp_path: Path, d: int) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert not Expected("file", 1, None).matches(d, b"f")


def test_expected_kind_is_checked_without_following(tmp_path: Path, d: int) -> None:
    e = _file(tmp_path, "real", b"data")
    os.symlink("real", tmp_path / "link")
    m = e.check(d, b"link")  # a symlink to the right bytes is not the file
    assert m is not None and m.problem == "wrong-type"
    os.mkdir(tmp_path / "dir")
    assert Expected("dir").matches(d, b"dir")
    assert not Expected("dir").matches(d, b"real")


def test_expected_fifo_never_blocks_and_never_matches(tmp_path: Path, d: int) -> None:
    # An empty file's size and CRC are those of any empty thing: a FIFO planted under
    # the name must still not count as the file (nor block the check on open).
    os.mkfifo(tmp_path / "p")
    m = Expected("file", 0, crc32c(b"")).check(d, b"p")
    assert m is not None and m.problem == "wrong-type"


def test_expected_symlink_by_target_or_crc(tmp_path: Path, d: int) -> None:
    os.symlink("target-a", tmp_path / "l")
    assert Expected("symlink", link=b"target-a").matches(d, b"l")
    assert Expected("symlink", crc32c=crc32c(b"target-a")).matches(d, b"l")
    m = Expected("symlink", link=b"target-b").check(d, b"l")
    assert m is not None and (m.problem, m.actual_target) == ("link-target", b"target-a")
    assert not Expected("symlink", crc32c=crc32c(b"target-b")).matches(d, b"l")


def test_check_path_missing_directory(tmp_path: Path) -> None:
    m = Expected("file", 1, 0).check_path(os.fsencode(tmp_path / "no" / "f"))
    assert m is not None and m.problem == "missing"


def test_publish_atomic_writes_durably_and_leaves_no_temp(tmp_path: Path, d: int) -> None:
    (tmp_path / "m").write_bytes(b"old")
    publish_atomic(d, b"m", b"new contents", b".m.tmp", mode=0o640)
    assert (tmp_path / "m").read_bytes() == b"new contents"
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_publish_atomic_failure_keeps_old_entry(tmp_path: Path, d: int) -> None:
    os.mkdir(tmp_path / "m")
    (tmp_path / "m" / "inside").write_bytes(b"keep")
    with pytest.raises(IsADirectoryError):
        publish_atomic(d, b"m", b"data", b".m.tmp")  # cannot rename a file over a dir
    assert (tmp_path / "m" / "inside").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["m"]  # the temp was removed


def test_unlink_verified_by_content(tmp_path: Path, d: int) -> None:
    e = _file(tmp_path, "f", b"ours")
    (tmp_path / "f").write_bytes(b"THEI")  # replaced by someone else's bytes
    assert unlink_verified(d, b"f", e) is False
    assert (tmp_path / "f").read_bytes() == b"THEI"
    (tmp_path / "f").write_bytes(b"ours")
    assert unlink_verified(d, b"f", e) is True
    assert not (tmp_path / "f").exists()
    assert unlink_verified(d, b"f", e) is False  # already gone


def test_unlink_verified_by_inode(tmp_path: Path, d: int) -> None:
    (tmp_path / "f").write_bytes(b"x")
    st = os.lstat(tmp_path / "f")
    os.rename(tmp_path / "f", tmp_path / "g")
    (tmp_path / "f").write_bytes(b"x")  # same bytes, another inode
    assert unlink_verified(d, b"f", st) is False
    assert (tmp_path / "f").exists()
    assert unlink_verified(d, b"g", st) is True
    assert not (tmp_path / "g").exists()


CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", "sync")
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
""")


def test_cancel_leaves_a_fifo_planted_over_a_published_empty_file(tmp_path: Path) -> None:
    """Cancel removes published files only if still ours: a FIFO that replaced a published
    empty file has its size (0) and CRC32C (0) but is not ours, and stays."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "full").write_bytes(b"payload")
    dst = tmp_path / "dst"
    jpath = tmp_path / "j.db"
    env = dict(os.environ, AXLPY_CRASH_AT="renamed.after_commit")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(jpath), str(src), str(dst)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert (dst / "empty").exists() and (dst / "full").read_bytes() == b"payload"
    os.unlink(dst / "empty")
    os.mkfifo(dst / "empty")
    with axlpy.Journal(jpath) as j:
        t = j.open("x")
        assert t.state is T.RENAMED
        t.cancel()
        assert t.state is T.CANCELLED
    assert not (dst / "full").exists()  # ours: removed
    assert (dst / "empty").is_fifo()  # not ours: kept


def test_no_engine_imports_another_engine() -> None:
    """Engines only schedule: each stages through engines._stager, none imports a
    sibling engine."""
    engines = Path(axlpy.__file__).parent / "engines"
    names = {"sync", "threaded", "uring"}
    for name in names:
        tree = ast.parse((engines / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        assert imported & names == set(), f"engines/{name}.py imports {imported & names}"
        assert "_stager" in imported, f"engines/{name}.py does not stage through _stager"
