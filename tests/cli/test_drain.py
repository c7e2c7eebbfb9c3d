"""``axlpy drain``: after a job ended, finish every unfinished transfer in some journals
(real processes killed mid-copy, a real ``python -m axlpy drain``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import axlpy
from tests.cli.clitools import child_env, run_sub
from tests.conftest import temp_files

T = axlpy.TransferState

# One transfer per run, killed at a crash point (or run to the end with no point armed).
CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create(sys.argv[2], "sync", chunk_size=65536, extent_size=65536)
    t.add(sys.argv[3], sys.argv[4])
    t.dispatch()
""")


def _child(journal: Path, name: str, src: Path, dst: Path, point: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    if point:
        env.update(AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT="1")
    p = subprocess.run([sys.executable, "-c", CHILD, str(journal), name, str(src), str(dst)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == (-9 if point else 0), p.stderr


def _sources(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        s = root / f"src{i}"
        s.mkdir(parents=True)
        for k in range(3):
            (s / f"f{k}").write_bytes(os.urandom(3 * 65536 + i * 1000 + k))
        out.append(s)
    return out


def _same(a: Path, b: Path) -> bool:
    return sorted((p.relative_to(a), p.read_bytes()) for p in a.rglob("*") if p.is_file()) \
        == sorted((p.relative_to(b), p.read_bytes()) for p in b.rglob("*") if p.is_file())


def test_drain_directory_finishes_every_unfinished_transfer(tmp_path: Path) -> None:
    jdir = tmp_path / "journals"
    jdir.mkdir(mode=0o700)
    srcs = _sources(tmp_path / "s", 5)
    dsts = [tmp_path / "d" / f"out{i}" for i in range(5)]
    # Two journals, several transfers each, killed at different points of the protocol.
    plan = [("a.db", "t0", "stage.after_write"), ("a.db", "t1", "publish.after_rename"),
            ("b.db", "t2", "stage.after_commit"), ("b.db", "t3", None),
            ("b.db", "t4", "stage.after_extent_commit")]
    for i, (jf, name, point) in enumerate(plan):
        _child(jdir / jf, name, srcs[i], dsts[i], point)
    with axlpy.Journal(jdir / "a.db") as j:  # never dispatched: listed, left alone
        j.create("idle", "sync").add(srcs[0], tmp_path / "d" / "idle")

    r = run_sub(jdir / "a.db", "drain", str(jdir), "--parallel", "2", "--json")
    assert r.code == 0, r.out + r.err
    doc = json.loads(r.out)
    assert doc["ok"] is True and doc["version"] == 1
    got = {i["name"]: i for i in doc["items"]}
    assert set(got) == {"t0", "t1", "t2", "t4", "idle"}  # t3 had completed: not listed
    for name in ("t0", "t1", "t2", "t4"):
        assert got[name]["result"] == "completed", got[name]
        assert got[name]["state"] == "DISPATCHED"
    assert got["idle"]["result"] == "skipped" and "never dispatched" in got["idle"]["detail"]
    for s, d in zip(srcs, dsts, strict=True):
        assert _same(s, d)
    assert temp_files(tmp_path / "d") == []
    assert "[4/4]" in r.err  # the progress display: one line per finished transfer
    for jf in ("a.db", "b.db"):
        with axlpy.Journal(jdir / jf) as j:
            states = {t.name: t.state for t in j.transfers()}
            assert all(s is T.COMPLETED for n, s in states.items() if n != "idle")

    # Run again: nothing left but the idle transfer.
    r = run_sub(jdir / "a.db", "drain", str(jdir))
    assert r.code == 0 and "skipped" in r.out and "completed" not in r.out, r.out


def test_drain_reports_a_failed_transfer_and_finishes_the_others(tmp_path: Path) -> None:
    journal = tmp_path / "j" / "journal.db"
    journal.parent.mkdir(mode=0o700)
    srcs = _sources(tmp_path / "s", 2)
    dsts = [tmp_path / "d0", tmp_path / "d1"]
    _child(journal, "bad", srcs[0], dsts[0], "stage.after_write")
    _child(journal, "good", srcs[1], dsts[1], "stage.after_write")
    (srcs[0] / "f2").write_bytes(b"changed since dispatch")  # resume must refuse it
    r = run_sub(journal, "drain", "--json", env=child_env(journal))
    assert r.code == 1, r.out + r.err
    got = {i["name"]: i for i in json.loads(r.out)["items"]}
    assert got["good"]["result"] == "completed" and _same(srcs[1], dsts[1])
    assert got["bad"]["result"] == "failed"
    assert "changed since dispatch" in got["bad"]["detail"]
    assert not (dsts[0] / "f2").exists() or (dsts[0] / "f2").read_bytes() != b"changed"


def test_drain_dry_run_and_bad_paths(tmp_path: Path) -> None:
    journal = tmp_path / "j" / "journal.db"
    journal.parent.mkdir(mode=0o700)
    srcs = _sources(tmp_path / "s", 1)
    _child(journal, "x", srcs[0], tmp_path / "d", "stage.after_write")
    r = run_sub(journal, "drain", "--dry-run", str(journal))
    assert r.code == 0 and "x" in r.out and "pending" in r.out, r.out + r.err
    with axlpy.Journal(journal) as j:
        assert j.open("x").state is T.DISPATCHED  # dry run wrote nothing
    r = run_sub(journal, "drain", str(tmp_path / "nope"))
    assert r.code == 2 and "no such journal or directory" in r.err, r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_sub(journal, "drain", str(empty))
    assert r.code == 2 and "no journal (*.db)" in r.err, r.err
