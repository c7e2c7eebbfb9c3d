"""The durability primitives (axlpy._durable): expected entries, atomic publish, verified
unlink — on real files, and through the callers that use them (cancel)."""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
from axlpy import _durable
from axlpy._checksum import crc32c
from axlpy._durable import Expected, publish_atomic, rename_verified, unlink_verified
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


def _staged(tmp_path: Path, data: bytes = b"new bytes") -> dict[str, object]:
    (tmp_path / ".t").write_bytes(data)
    return {"kind": "file", "size": len(data), "link": None, "owners": (os.geteuid(),)}


@pytest.mark.parametrize("old", [None, b"old", "symlink"])
def test_rename_verified_publishes_and_leaves_no_temp(tmp_path: Path, d: int,
                                                      old: bytes | str | None) -> None:
    if old == "symlink":
        os.symlink("elsewhere", tmp_path / "f")
    elif old is not None:
        (tmp_path / "f").write_bytes(old)
    rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert (tmp_path / "f").read_bytes() == b"new bytes"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_rename_verified_over_a_directory_fails_and_keeps_both(tmp_path: Path,
                                                                 d: int) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "inside").write_bytes(b"keep")
    with pytest.raises(IsADirectoryError):
        rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert (tmp_path / "f" / "inside").read_bytes() == b"keep"
    assert (tmp_path / ".t").read_bytes() == b"new bytes"  # the temp stays (resume)


def _swap_after_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The attacker's turn comes between the pre-rename check and the rename."""
    real = _durable.check_staged

    def check_then_swap(dir_fd: int, tmp: bytes, **kw: object) -> os.stat_result:
        st = real(dir_fd, tmp, **kw)  # type: ignore[arg-type]
        os.symlink("/etc/passwd", tmp_path / ".evil")
        os.rename(tmp_path / ".evil", tmp_path / os.fsdecode(tmp))
        return st

    monkeypatch.setattr(_durable, "check_staged", check_then_swap)


def test_rename_verified_swapped_after_check_keeps_the_previous_file(
        tmp_path: Path, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"previous copy")
    _swap_after_check(monkeypatch, tmp_path)
    with pytest.raises(axlpy.SecurityError, match="holds what it held before"):
        rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert (tmp_path / "f").read_bytes() == b"previous copy"
    assert not (tmp_path / "f").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["f"]  # the foreign symlink is gone


def test_rename_verified_swapped_after_check_leaves_a_new_name_empty(
        tmp_path: Path, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _swap_after_check(monkeypatch, tmp_path)
    with pytest.raises(axlpy.SecurityError, match="foreign file was removed"):
        rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_rename_verified_swapped_twice_never_keeps_a_foreign_entry(
        tmp_path: Path, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker also wins the turn between the exchange and the exchange back: the
    final name's previous file is then lost (the attacker replaced it under the temp
    name), but the final name never keeps the attacker's entry."""
    (tmp_path / "f").write_bytes(b"previous copy")
    _swap_after_check(monkeypatch, tmp_path)
    real = _durable.rename2
    calls: list[int] = []

    def rename2(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
        calls.append(flags)
        if len(calls) == 3:  # NOREPLACE, EXCHANGE, now the exchange back
            os.symlink("/etc/shadow", tmp_path / ".evil2")
            os.rename(tmp_path / ".evil2", tmp_path / os.fsdecode(old))
        real(dir_fd, old, new, flags)

    monkeypatch.setattr(_durable, "rename2", rename2)
    with pytest.raises(axlpy.SecurityError, match="foreign file was removed"):
        rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert calls == [1, 2, 2]
    assert os.listdir(tmp_path) == []


def test_rename_verified_where_renameat2_flags_are_unsupported(
        tmp_path: Path, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS and many FUSE filesystems answer EINVAL: a plain rename over the name."""
    def einval(dir_fd: int, old: bytes, new: bytes, flags: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_durable, "rename2", einval)
    (tmp_path / "f").write_bytes(b"old")
    rename_verified(d, b".t", b"f", **_staged(tmp_path))  # type: ignore[arg-type]
    assert (tmp_path / "f").read_bytes() == b"new bytes"
    assert sorted(os.listdir(tmp_path)) == ["f"]


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
