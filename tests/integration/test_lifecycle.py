"""Checkpoint lifecycle on real files and real journals: step order, restore_point, the
latest pointer, prune (retention), trash left by a crash, prune racing a commit."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import axlpy
from axlpy import _lifecycle, _manifest
from axlpy._checksum import crc32c
from axlpy._lifecycle import POINTER, TRASH_PREFIX, RetentionPolicy
from axlpy.cli import cli


@pytest.fixture
def ckdir(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    return d


def commit(journal: axlpy.Journal, ckdir: Path, step: int, *, name: str | None = None,
           size: int = 5000, **kw: Any) -> Path:
    """A real single-process checkpoint: sources -> transfer -> commit_checkpoint."""
    name = name or f"step-{step:06d}"
    src = ckdir.parent / "src" / name
    src.mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(size))
    (src / "sub").mkdir()
    (src / "sub" / "b.bin").write_bytes(os.urandom(size // 2 + 1))
    t = journal.create(name, "sync", step=step)
    t.add(src, ckdir / name / "rank-0")
    t.dispatch()
    t.wait()
    axlpy.commit_checkpoint(ckdir / name, t, **kw)
    t.free()
    return ckdir / name


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def flip_byte(p: Path) -> None:
    with open(p, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0xFF]))


# -- step order (issue 16 item 4) ----------------------------------------------------------


def test_latest_orders_by_step_not_commit_time(ckdir: Path) -> None:
    """An older flush committed after a newer one (a resumed pending flush) must not make
    latest go back in time. Uses the meta {"step": N} convention that markers have always
    carried, so it fails on the commit-time ordering it replaces."""
    for n, step in (("step-20", 20), ("step-10", 10)):  # 10 commits last
        (ckdir / n).mkdir()
        (ckdir / n / "f").write_bytes(b"x" * step)
        e = _manifest.ManifestEntry("f", 0, "file", step, crc32c(b"x" * step))
        _manifest.write_manifest(ckdir / n, _manifest.build_manifest(n, 1, [e],
                                                                     {"step": step}))
    got = _manifest.latest_valid_checkpoint(ckdir)
    assert got is not None and got.path.endswith("step-20")
    rp = axlpy.restore_point(ckdir)
    assert rp is not None and rp.step == 20 and rp.name == "step-20"


def test_step_in_marker_and_ties_by_commit_time(journal: axlpy.Journal, ckdir: Path) -> None:
    commit(journal, ckdir, 7, name="b")
    commit(journal, ckdir, 7, name="a")  # same step, committed later: wins the tie
    commit(journal, ckdir, 3, name="z")
    raw = json.loads((ckdir / "b" / _manifest.MARKER).read_text())
    assert raw["step"] == 7
    rp = axlpy.restore_point(ckdir)
    assert rp is not None and rp.name == "a"
    r = CliRunner().invoke(cli, ["latest", "--json", str(ckdir)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["name"], doc["step"]) == ("a", 7)
    assert doc["committed_ns"] == rp.committed_ns and doc["committed"]
    assert doc["pointer"]["state"] == "current"


def test_step_must_be_an_integer(journal: axlpy.Journal) -> None:
    with pytest.raises(axlpy.UsageError, match="step must be an integer"):
        journal.create("t", "sync", step="10")  # type: ignore[arg-type]
    assert journal.names() == []


# -- restore_point ---------------------------------------------------------------------------


def test_restore_point_crc_skips_corrupted_newest(journal: axlpy.Journal, ckdir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    commit(journal, ckdir, 10)
    newest = commit(journal, ckdir, 20)
    flip_byte(newest / "rank-0" / "a.bin")  # same size: only a CRC check sees it
    assert axlpy.restore_point(ckdir, "marker").step == 20  # type: ignore[union-attr]
    rp = axlpy.restore_point(ckdir, verify="crc")
    assert rp is not None and rp.step == 10
    assert [p for p, _ in rp.skipped] == [str(newest)]
    assert "CRC32C" in rp.skipped[0][1]
    assert any("skipping checkpoint" in r.message for r in caplog.records)
    assert sorted(rp.rank_files(0)) == sorted(
        str(p) for p in (ckdir / "step-000010" / "rank-0").rglob("*") if p.is_file())
    r = CliRunner().invoke(cli, ["latest", "--check", "crc", "--json", str(ckdir)])
    assert json.loads(r.stdout)["step"] == 10


def test_restore_point_ignores_uncommitted_and_trash(journal: axlpy.Journal,
                                                    ckdir: Path) -> None:
    commit(journal, ckdir, 5)
    (ckdir / "step-000099").mkdir()  # being written: no marker
    done = commit(journal, ckdir, 50)
    os.rename(done, ckdir / f"{TRASH_PREFIX}step-000050.abcd")  # a prune was here
    rp = axlpy.restore_point(ckdir, "none")
    assert rp is not None and rp.step == 5
    with pytest.raises(axlpy.UsageError, match="verify must be one of"):
        axlpy.restore_point(ckdir, "sha")


# -- the latest pointer ------------------------------------------------------------------------


def test_pointer_follows_commits_and_never_goes_back(journal: axlpy.Journal,
                                                     ckdir: Path) -> None:
    commit(journal, ckdir, 20)
    ptr = _lifecycle.read_pointer(ckdir)
    assert ptr is not None and (ptr.checkpoint, ptr.step) == ("step-000020", 20)
    commit(journal, ckdir, 10)  # an older flush committed later
    ptr = _lifecycle.read_pointer(ckdir)
    assert ptr is not None and ptr.checkpoint == "step-000020"
    assert not [n for n in names(ckdir) if n.startswith("." + POINTER)]


def test_latest_repair_after_a_crash_before_the_pointer_update(journal: axlpy.Journal,
                                                               ckdir: Path) -> None:
    commit(journal, ckdir, 1)
    old = (ckdir / POINTER).read_bytes()
    commit(journal, ckdir, 2)
    (ckdir / POINTER).write_bytes(old)  # as if killed between marker and pointer
    (ckdir / ("." + POINTER + ".axlpy-dead0001")).write_bytes(b"{torn")
    r = CliRunner().invoke(cli, ["latest", "--json", str(ckdir)])
    assert json.loads(r.stdout)["pointer"]["state"] == "stale"
    r = CliRunner().invoke(cli, ["latest", "--repair", "--json", str(ckdir)])
    doc = json.loads(r.stdout)
    assert doc["pointer"]["repaired"] and doc["pointer"]["checkpoint"] == "step-000002"
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000002"  # type: ignore[union-attr]
    assert not [n for n in names(ckdir) if n.startswith("." + POINTER)]
    (ckdir / POINTER).write_bytes(b'{"format": "axlpy-latest/1"')  # torn
    with pytest.raises(_manifest.InvalidCheckpointError):
        _lifecycle.read_pointer(ckdir)
    assert _lifecycle.update_pointer(ckdir)[1]


# -- prune -------------------------------------------------------------------------------------


def test_prune_keeps_last_n_and_every_k(journal: axlpy.Journal, ckdir: Path) -> None:
    for s in range(5, 55, 5):
        commit(journal, ckdir, s)
    (ckdir / "scratch").mkdir()  # no marker: never touched without --uncommitted
    r = CliRunner().invoke(cli, ["prune", str(ckdir), "--keep-last", "3", "--keep-every",
                                 "20", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dry_run"] and doc["summary"]["deletable"] == 6
    before = names(ckdir)
    assert len(before) == 12  # 10 checkpoints, scratch, the pointer: dry run kept all
    rep = axlpy.prune(ckdir, RetentionPolicy(3, keep_every=20))
    assert names(ckdir) == [POINTER, "scratch", "step-000020", "step-000040",
                            "step-000045", "step-000050"]
    assert sorted(i.name for i in rep.deleted) == [
        "step-000005", "step-000010", "step-000015", "step-000025", "step-000030",
        "step-000035"]
    assert all(i.action == "deleted" for i in rep.deleted)
    assert not [n for n in names(ckdir) if n.startswith(TRASH_PREFIX)]
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000050"  # type: ignore[union-attr]


def test_prune_never_removes_the_only_valid_checkpoint(journal: axlpy.Journal,
                                                      ckdir: Path) -> None:
    good = commit(journal, ckdir, 1)
    for s in (2, 3, 4):
        flip_byte(commit(journal, ckdir, s) / "rank-0" / "a.bin")
    rep = axlpy.prune(ckdir, RetentionPolicy(1))  # verify="crc"
    kept = {i.name: i.reason for i in rep.items if i.action == "keep"}
    assert set(kept) == {"step-000004", good.name}, kept
    assert "passes verify=crc" in kept[good.name]
    assert axlpy.restore_point(ckdir, "crc").name == good.name  # type: ignore[union-attr]
    # only one committed checkpoint at all: kept, whatever keep_last
    solo = ckdir.parent / "solo"
    solo.mkdir()
    commit(journal, solo, 9)
    assert not axlpy.prune(solo, RetentionPolicy(1)).deleted
    assert (solo / "step-000009" / _manifest.MARKER).exists()


def test_prune_uncommitted_only_when_asked_old_and_not_live(journal: axlpy.Journal,
                                                            ckdir: Path) -> None:
    commit(journal, ckdir, 1)
    src = ckdir.parent / "src-live"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    live = journal.create("live", "sync")  # CREATED: a flush not dispatched yet
    live.add(src, ckdir / "step-000002" / "rank-0")
    (ckdir / "step-000002").mkdir()
    (ckdir / "abandoned").mkdir()
    (ckdir / "abandoned" / "junk").write_bytes(b"j")
    pol = RetentionPolicy(1, uncommitted=True, min_age=0)
    rep = axlpy.prune(ckdir, RetentionPolicy(1))
    assert not rep.deleted
    rep = axlpy.prune(ckdir, pol, journals=[journal.path])
    assert [i.name for i in rep.deleted] == ["abandoned"]
    kept = {i.name: i.reason for i in rep.items}
    assert "live" in kept["step-000002"] and "CREATED" in kept["step-000002"]
    young = RetentionPolicy(1, uncommitted=True, min_age=3600)
    (ckdir / "fresh").mkdir()
    assert not axlpy.prune(ckdir, young).deleted  # modified just now: may be written


def test_prune_finishes_trash_left_by_a_crash_and_gc_does_too(journal: axlpy.Journal,
                                                               ckdir: Path) -> None:
    for s in (1, 2):
        commit(journal, ckdir, s)
    t1 = ckdir / f"{TRASH_PREFIX}step-000000.0001"
    (t1 / "rank-0" / "sub").mkdir(parents=True)
    (t1 / "rank-0" / "sub" / "x").write_bytes(b"x" * 100)
    os.symlink("/etc", t1 / "rank-0" / "link")  # never followed
    rep = axlpy.prune(ckdir, RetentionPolicy(5))
    assert [os.path.basename(p) for p, _ in rep.trash] == [t1.name]
    assert not t1.exists() and os.path.isdir("/etc")
    t2 = ckdir / f"{TRASH_PREFIX}step-000001.0002"
    t2.mkdir()
    (t2 / "y").write_bytes(b"y")
    r = CliRunner().invoke(cli, ["--journal", journal.path, "gc", str(ckdir.parent),
                                 "--json"])
    assert json.loads(r.stdout)["trash"][0]["action"] == "delete" and t2.exists()
    r = CliRunner().invoke(cli, ["--journal", journal.path, "gc", str(ckdir.parent),
                                 "--delete", "--json"])
    assert json.loads(r.stdout)["trash"][0]["action"] == "deleted", r.output
    assert not t2.exists()


def test_retention_policy_validates() -> None:
    with pytest.raises(axlpy.UsageError, match="keep_last"):
        RetentionPolicy(0)
    with pytest.raises(axlpy.UsageError, match="keep_every"):
        RetentionPolicy(1, keep_every=0)
    with pytest.raises(axlpy.UsageError, match="verify"):
        RetentionPolicy(1, verify="md5")
    p = RetentionPolicy(2, 10, "marker", True, 5.0)
    assert RetentionPolicy.from_json(p.to_json()) == p


# -- prune while a flush commits ---------------------------------------------------------------


def test_prune_while_a_flush_commits(journal: axlpy.Journal, ckdir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune is stopped (gated) right after renaming its first victim to trash, holding
    the directory lock; meanwhile a flush commits a newer checkpoint: its marker lands,
    its pointer update waits for the lock, then names the new checkpoint. Nothing the
    flush wrote is touched, and the pointer never names a trashed checkpoint."""
    for s in (1, 2, 3):
        commit(journal, ckdir, s)
    at_gate, release = threading.Event(), threading.Event()
    committer_locking = threading.Event()
    real_cp = _lifecycle.crash_point
    real_locked = _lifecycle._locked

    def gated(name: str) -> None:
        real_cp(name)
        if name == "prune.after_trash_rename" and threading.current_thread().name == "prune":
            at_gate.set()
            assert release.wait(60)

    @contextlib.contextmanager
    def locked(directory: str) -> Iterator[int]:
        if threading.current_thread().name == "flush":
            committer_locking.set()
        with real_locked(directory) as fd:
            yield fd

    monkeypatch.setattr(_lifecycle, "crash_point", gated)
    monkeypatch.setattr(_lifecycle, "_locked", locked)
    out: dict[str, Any] = {}

    def run_prune() -> None:
        out["prune"] = axlpy.prune(ckdir, RetentionPolicy(1))

    def run_flush() -> None:
        out["flush"] = commit(journal, ckdir, 4)

    tp = threading.Thread(target=run_prune, name="prune")
    tp.start()
    assert at_gate.wait(60)
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000003"  # type: ignore[union-attr]
    tf = threading.Thread(target=run_flush, name="flush")
    tf.start()
    assert committer_locking.wait(60)  # marker written; its pointer update is at the lock
    assert (ckdir / "step-000004" / _manifest.MARKER).exists()
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000003"  # type: ignore[union-attr]
    release.set()
    tp.join(60)
    tf.join(60)
    assert not tp.is_alive() and not tf.is_alive()
    assert sorted(i.name for i in out["prune"].deleted) == ["step-000001", "step-000002"]
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000004"  # type: ignore[union-attr]
    assert _manifest.check_checkpoint(ckdir / "step-000004", verify=True).valid
    assert _manifest.check_checkpoint(ckdir / "step-000003", verify=True).valid
    assert names(ckdir) == [POINTER, "step-000003", "step-000004"]


def test_single_process_commit_prunes_with_retention(journal: axlpy.Journal,
                                                     ckdir: Path) -> None:
    for s in range(1, 6):
        commit(journal, ckdir, s, retention=RetentionPolicy(2, verify="marker"))
    assert names(ckdir) == [POINTER, "step-000004", "step-000005"]
    m = _manifest.read_manifest(ckdir / "step-000005")
    assert m.step == 5 and m.nranks == 1


def test_a_lifecycle_failure_never_fails_the_commit(journal: axlpy.Journal, ckdir: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The marker is durable before the pointer and prune run: a broken journal given to
    prune (or any error there) is logged, and the commit still returns its manifest."""
    commit(journal, ckdir, 1)
    bad = ckdir.parent / "baddir"
    bad.mkdir(mode=0o700)
    (bad / "rank-0.db").write_bytes(b"not a sqlite file" * 10)
    commit(journal, ckdir, 2, retention=RetentionPolicy(1), journals=[bad])
    assert (ckdir / "step-000002" / _manifest.MARKER).exists()
    assert (ckdir / "step-000001").exists()  # prune did not run
    assert any("pruning" in r.message for r in caplog.records)
    assert _lifecycle.read_pointer(ckdir).checkpoint == "step-000002"  # type: ignore[union-attr]
