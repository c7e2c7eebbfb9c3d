"""Issue 15.2: sparse sources arrive sparse, with the same logical content.

Holes found with SEEK_DATA/SEEK_HOLE are not written; the temp is extended to its size
with ftruncate, so they stay holes. The CRC32C covers the logical bytes (a hole's zeros
included), so ``verify`` and resume work as for any file. Real sparse files on the
test's filesystem; skipped where it does not keep holes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from axlpy._checksum import file_crc32c
from axlpy.engines import ENGINE_TYPES
from tests.cli.clitools import child_env, run_sub
from tests.conftest import copy_completed, resume_completed, type_params

GIB = 1 << 30
MIB = 1 << 20
#: data written into the sparse source: (offset, length)
DATA_AT = ((0, 4096), (300 * MIB + 8192, 4096), (700 * MIB, 64 * 1024),
           (GIB + GIB // 2 - 4096, 4096))
SIZE = GIB + GIB // 2


def _holes_supported(d: Path) -> str | None:
    probe = d / "probe"
    with open(probe, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(32 * MIB)
        f.write(b"x")
    try:
        st = os.stat(probe)
        with open(probe, "rb") as f:
            first = os.lseek(f.fileno(), 0, os.SEEK_DATA)
    except OSError as exc:
        return f"SEEK_DATA unsupported here: {exc}"
    finally:
        probe.unlink()
    if st.st_blocks * 512 > 1 * MIB or first == 0:
        return "this filesystem does not keep holes"
    return None


@pytest.fixture
def sparse_src(tmp_path: Path) -> Path:
    why = _holes_supported(tmp_path)
    if why:
        pytest.skip(why)
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as f:
        f.truncate(SIZE)
        for off, n in DATA_AT:
            f.seek(off)
            f.write(os.urandom(n))
    assert os.stat(src).st_blocks * 512 < 1 * MIB
    return src


def _crc(p: Path) -> int:
    fd = os.open(p, os.O_RDONLY)
    try:
        crc, n = file_crc32c(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert n == os.stat(p).st_size
    return crc


def _data_map(p: Path) -> list[tuple[int, int]]:
    out = []
    fd = os.open(p, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            off = end
    finally:
        os.close(fd)
    return out


def _assert_sparse_copy(src: Path, dst: Path) -> None:
    s, d = os.stat(src), os.stat(dst)
    assert d.st_size == s.st_size
    extents = len(_data_map(src))
    # allocated size within one block per extent of the source's
    assert d.st_blocks * 512 <= s.st_blocks * 512 + extents * d.st_blksize, (
        d.st_blocks, s.st_blocks, extents)
    assert _crc(dst) == _crc(src)


@pytest.mark.parametrize("ttype", type_params(ENGINE_TYPES))
def test_sparse_file_arrives_sparse(sparse_src, tmp_path, journal_path, ttype):
    dst = tmp_path / "out" / "sparse.bin"
    copy_completed(journal_path, "s", ttype, sparse_src, dst)
    _assert_sparse_copy(sparse_src, dst)
    r = run_sub(journal_path, "verify", "s")
    assert r.code == 0 and r.out.startswith("OK"), r.out + r.err


def test_sparse_file_killed_and_resumed_midway(sparse_src, tmp_path, journal_path):
    dst = tmp_path / "out" / "sparse.bin"
    child = textwrap.dedent("""
        import sys
        import axlpy
        j = axlpy.Journal(sys.argv[1])
        t = j.create("k", "sync", chunk_size=8 << 20, extent_size=64 << 20)
        t.add(sys.argv[2], sys.argv[3])
        t.dispatch()
    """)
    # 64 MiB extents: the 10th is journaled at 640 MiB, before the data at 700 MiB
    env = dict(child_env(journal_path), AXLPY_CRASH_AT="stage.after_extent_commit",
               AXLPY_CRASH_HIT="10")
    p = subprocess.run([sys.executable, "-c", child, str(journal_path), str(sparse_src),
                        str(dst)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr
    temps = [q for q in dst.parent.iterdir() if q.name.startswith(".")]
    assert len(temps) == 1
    # the killed run's temp is sparse too (nothing written for the holes)
    assert os.stat(temps[0]).st_blocks * 512 < 1 * MIB
    resume_completed(journal_path, "k")
    _assert_sparse_copy(sparse_src, dst)
    r = run_sub(journal_path, "verify", "k")
    assert r.code == 0, r.out + r.err


def test_file_ending_in_data_and_dense_file_unchanged(tmp_path, journal_path):
    """No holes: the copy is byte-identical (the data map is one segment)."""
    src = tmp_path / "dense"
    src.write_bytes(os.urandom(3 * MIB + 17))
    dst = tmp_path / "out" / "dense"
    copy_completed(journal_path, "d", "sync", src, dst, chunk_size=MIB, extent_size=MIB)
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("ttype", type_params(ENGINE_TYPES))
@pytest.mark.parametrize("chunk", [MIB, 8 * MIB], ids=["chunked", "small-file"])
def test_file_ending_in_a_hole(tmp_path, journal_path, ttype, chunk):
    """A 6 MiB file with 4 KiB of data at 1 MiB and a hole up to its end: the chunked
    path (1 MiB chunks) extends the temp at the seal, the one-step small-file path
    (a file below the 8 MiB chunk) writes only the data; both keep the holes."""
    why = _holes_supported(tmp_path)
    if why:
        pytest.skip(why)
    src = tmp_path / "tail-hole"
    with open(src, "wb") as f:
        f.truncate(6 * MIB)
        f.seek(MIB)
        f.write(os.urandom(4096))
    dst = tmp_path / "out" / "tail-hole"
    copy_completed(journal_path, "h", ttype, src, dst, chunk_size=chunk, extent_size=chunk)
    _assert_sparse_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
