"""verify in the library (issue 13.6): Transfer.verify() and axlpy.verify_checkpoint()
re-read real files and report every mismatch; the CLI only renders these reports."""

from __future__ import annotations

import os

import pytest

import axlpy
from tests.conftest import write_tree


def _by_path(report: axlpy.VerifyReport, root) -> dict[str, axlpy.Mismatch]:
    return {os.path.relpath(os.fsdecode(m.path), root): m for m in report.mismatches}


def test_transfer_verify_reports_every_kind_of_mismatch(journal, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_tree(src, {"a.bin": os.urandom(70_000), "sub/b.txt": b"hello\n", "c": b"c"})
    os.symlink("a.bin", src / "link")
    t = journal.create("v", "sync")
    t.add(src, out)
    t.dispatch()
    ok = t.verify()
    assert (ok.ok, ok.complete, ok.mismatches, ok.not_published) == (True, True, (), 0)
    assert ok.checked == 6 and ok.state is axlpy.TransferState.COMPLETED  # 2 dirs
    data = bytearray((out / "a.bin").read_bytes())
    data[1000] ^= 1
    (out / "a.bin").write_bytes(bytes(data))
    (out / "sub" / "b.txt").write_bytes(b"hello, longer\n")
    (out / "c").unlink()
    (out / "link").unlink()
    os.symlink("elsewhere", out / "link")
    rep = t.verify()
    assert not rep.ok and rep.complete
    got = _by_path(rep, out)
    assert {k: m.problem for k, m in got.items()} == {
        "a.bin": "crc32c", "sub/b.txt": "size", "c": "missing", "link": "link-target"}
    assert got["a.bin"].expected_crc32c != got["a.bin"].actual_crc32c
    assert (got["sub/b.txt"].expected_size, got["sub/b.txt"].actual_size) == (6, 14)
    assert (got["link"].expected_target, got["link"].actual_target) == (b"a.bin",
                                                                        b"elsewhere")


def test_verify_checkpoint_checks_the_marker_entries(journal, tmp_path):
    src, ckpt = tmp_path / "src", tmp_path / "ckpts" / "step-1"
    write_tree(src, {"r0": b"a" * 10, "r1": b"b" * 5})
    t = journal.create("c", "sync")
    t.add(src, ckpt)
    t.dispatch()
    axlpy.commit_checkpoint(ckpt, t)
    rep = axlpy.verify_checkpoint(ckpt)
    assert rep.ok and rep.complete and rep.checked >= 2 and rep.nranks == 1
    (ckpt / "r0").write_bytes(b"z" * 10)
    rep = axlpy.verify_checkpoint(ckpt)
    assert not rep.ok
    (m,) = rep.mismatches
    assert (m.problem, m.rank, os.path.basename(m.path)) == ("crc32c", 0, b"r0")
    nomark = tmp_path / "ckpts" / "step-2"
    nomark.mkdir()
    rep = axlpy.verify_checkpoint(nomark)
    assert not rep.ok and not rep.complete and rep.mismatches[0].problem == "marker"
    with pytest.raises(axlpy.UsageError, match="is not a directory"):
        axlpy.verify_checkpoint(tmp_path / "nope")
