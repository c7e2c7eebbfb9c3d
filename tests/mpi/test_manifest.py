"""The commit marker on real files (no MPI needed): write, read, validate, pick latest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from axlpy import _manifest
from axlpy._checksum import crc32c
from axlpy._manifest import MARKER, ManifestEntry, build_manifest, write_manifest


def make_ckpt(root: Path, name: str, files: dict[str, bytes], *, commit: bool = True,
              committed_ns: int | None = None) -> Path:
    d = root / name
    entries = []
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        entries.append(ManifestEntry(rel, 0, "file", len(data), crc32c(data)))
    if commit:
        m = build_manifest(name, 1, entries, {"step": name})
        if committed_ns is not None:
            m = _manifest.Manifest(m.name, m.nranks, m.entries, committed_ns, m.meta)
        write_manifest(d, m)
    return d


def test_roundtrip_and_no_temp_left(tmp_path: Path) -> None:
    d = make_ckpt(tmp_path, "c1", {"a": b"x" * 10, "sub/b": b"yz"})
    m = _manifest.read_manifest(d)
    assert [e.path for e in m.entries] == ["a", "sub/b"]
    assert m.total_bytes == 12 and m.meta == {"step": "c1"}
    assert sorted(os.listdir(d)) == sorted([MARKER, "a", "sub"])


def test_rewrite_with_same_files_keeps_the_existing_marker(tmp_path: Path) -> None:
    d = make_ckpt(tmp_path, "c1", {"a": b"x"})
    old = _manifest.read_manifest(d)
    again = write_manifest(d, build_manifest("c1", 1, old.entries))
    assert again.committed_ns == old.committed_ns == _manifest.read_manifest(d).committed_ns


def test_never_picks_a_directory_without_marker(tmp_path: Path) -> None:
    make_ckpt(tmp_path, "old", {"a": b"1"}, committed_ns=1)
    make_ckpt(tmp_path, "newer-uncommitted", {"a": b"2"}, commit=False)
    # a stale marker temp (a writer died before its rename) is not a marker
    (tmp_path / "newer-uncommitted" / f".{MARKER}.axlpy-deadbeef").write_text("{}")
    latest = _manifest.latest_valid_checkpoint(tmp_path)
    assert latest is not None and latest.path == str(tmp_path / "old")
    listed = _manifest.list_checkpoints(tmp_path)
    assert [(Path(r.path).name, r.valid) for r in listed] == [
        ("old", True), ("newer-uncommitted", False)]
    assert "never committed" in listed[1].problems[0]


def test_latest_is_by_commit_time(tmp_path: Path) -> None:
    make_ckpt(tmp_path, "b", {"a": b"1"}, committed_ns=2)
    make_ckpt(tmp_path, "a", {"a": b"2"}, committed_ns=3)
    latest = _manifest.latest_valid_checkpoint(tmp_path)
    assert latest is not None and Path(latest.path).name == "a"


@pytest.mark.parametrize(("damage", "caught_without_verify"), [
    ("flip", False),      # same size, one byte changed: only the CRC32C catches it
    ("truncate", True),   # size differs: caught by the cheap check too
    ("delete", True),
])
def test_damaged_file_is_invalid_and_latest_falls_back(
        tmp_path: Path, damage: str, caught_without_verify: bool) -> None:
    make_ckpt(tmp_path, "good", {"a": b"g" * 100}, committed_ns=1)
    bad = make_ckpt(tmp_path, "bad", {"a": b"b" * 100, "c": b"ok"}, committed_ns=2)
    f = bad / "a"
    if damage == "flip":
        f.write_bytes(b"b" * 50 + b"X" + b"b" * 49)
    elif damage == "truncate":
        f.write_bytes(b"b" * 99)
    else:
        f.unlink()
    res = _manifest.check_checkpoint(bad, verify=True)
    assert not res.valid and res.problems[0].startswith("a: ")
    assert _manifest.check_checkpoint(bad).valid is not caught_without_verify
    latest = _manifest.latest_valid_checkpoint(tmp_path, verify=True)
    assert latest is not None and Path(latest.path).name == "good"


@pytest.mark.parametrize("corrupt", [
    lambda doc: doc.update(total_bytes=doc["total_bytes"] + 1),   # body CRC no longer matches
    lambda doc: doc.update(format="something-else/9"),
    lambda doc: doc["files"].append({"path": "../escape", "rank": 0, "kind": "file",
                                     "size": 0, "crc32c": 0}),
])
def test_tampered_marker_is_invalid(tmp_path: Path,
                                    corrupt: Callable[[dict[str, Any]], None]) -> None:
    d = make_ckpt(tmp_path, "c", {"a": b"1"})
    doc = json.loads((d / MARKER).read_text())
    corrupt(doc)
    (d / MARKER).write_text(json.dumps(doc))
    with pytest.raises(_manifest.InvalidCheckpointError):
        _manifest.read_manifest(d)
    assert _manifest.latest_valid_checkpoint(tmp_path) is None


def test_torn_marker_is_invalid(tmp_path: Path) -> None:
    d = make_ckpt(tmp_path, "c", {"a": b"1"})
    raw = (d / MARKER).read_bytes()
    (d / MARKER).write_bytes(raw[: len(raw) // 2])
    assert not _manifest.check_checkpoint(d).valid


def test_two_ranks_writing_one_path_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 0 and rank 1"):
        build_manifest("x", 2, [ManifestEntry("f", 0, "file", 1, 1),
                                ManifestEntry("f", 1, "file", 1, 1)])
    # a directory named by several ranks is fine
    m = build_manifest("x", 2, [ManifestEntry("d", 0, "dir"), ManifestEntry("d", 1, "dir")])
    assert len(m.entries) == 1


def test_import_axlpy_and_axlpy_mpi_do_not_import_mpi4py() -> None:
    code = ("import sys, axlpy, axlpy.mpi; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_cli_check_reports_problems(tmp_path: Path) -> None:
    d = make_ckpt(tmp_path, "c", {"a": b"abc"})
    (d / "a").write_bytes(b"abd")
    p = subprocess.run([sys.executable, "-m", "axlpy", "verify", "--manifest", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "MISMATCH" in p.stdout and "CRC32C" in p.stdout
    p = subprocess.run([sys.executable, "-m", "axlpy", "latest", str(tmp_path), "--check",
                        "crc"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "no valid checkpoint" in p.stderr
    # python -m axlpy.mpi is `axlpy mpi`: its old checkpoint commands are gone (usage, 2)
    p = subprocess.run([sys.executable, "-m", "axlpy.mpi", "check", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "No such command 'check'" in p.stderr
