"""A staged temp is created 0600 (masked by the umask) and gets its final mode before it
is made durable; when that final mode is the creation mode already (a 0600 source, or any
source under umask 077), the chmod is not made again: one system call per file fewer,
the same modes on disk (docs/engines.md, "Small files")."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy

NFILES = 20


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("ttype", ["sync", "pthread", "default"])
@pytest.mark.parametrize(("mask", "src_mode", "final", "chmods"), [
    (0o077, 0o644, 0o600, 0),      # umask 077: every copy is 0600, as created
    (0o022, 0o600, 0o600, 0),      # a private source stays private
    (0o022, 0o644, 0o644, NFILES),  # wider than the temp: chmodded before it is durable
    (0o027, 0o640, 0o640, NFILES),
])
def test_temp_mode_chmod_only_when_it_differs(journal: axlpy.Journal, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, umask: None,
                                              ttype: str, mask: int, src_mode: int,
                                              final: int, chmods: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(NFILES):
        p = src / f"f{i:02d}"
        p.write_bytes(os.urandom(100 + i))
        p.chmod(src_mode)
    os.umask(mask)
    calls: list[int] = []
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(mode)
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    t = journal.create("m", ttype)
    t.add(src, tmp_path / "dst")
    t.dispatch()
    t.wait()
    assert t.state is axlpy.TransferState.COMPLETED
    modes = {stat.S_IMODE((tmp_path / "dst" / f"f{i:02d}").stat().st_mode)
             for i in range(NFILES)}
    assert modes == {final}
    assert len(calls) == chmods, calls
    assert all(m == final for m in calls)
