"""axlpy.mpi under a real ``mpiexec -n 2`` / ``-n 4`` / ``-n 8`` (the pip-installed MPICH).

Each test launches ``mpi_prog.py`` as a real MPI job in a subprocess with a timeout, then
checks what every rank reported and what is on disk: the commit marker, the checkpoint
files against their sources, the rank journals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import axlpy
from axlpy import _manifest, mpi as amp

PROG = Path(__file__).with_name("mpi_prog.py")
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _have_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.requires_mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install axlpy[mpi])"),
    pytest.mark.skipif(not _have_mpi4py(), reason="mpi4py not installed (axlpy[mpi])"),
]


def run(n: int, *args: str, expect_ok: bool = True,
        host: str | None = None) -> dict[int, dict[str, Any]]:
    """Run ``mpiexec -n n python mpi_prog.py args``; return each rank's result. ``host``
    is the node identity every rank reports (``AXLPY_HOST_ID``): a re-run with another
    one is a restart on other nodes."""
    work = Path(args[1])
    for old in work.glob("result-*.json"):
        old.unlink()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AXLPY_CRASH") and k != "AXLPY_HOST_ID"}
    if host is not None:
        env["AXLPY_HOST_ID"] = host
    assert MPIEXEC is not None
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, str(PROG), *args],
                       capture_output=True, text=True, timeout=60 + 20 * n, env=env)
    results = {}
    for f in work.glob("result-*.json"):
        d = json.loads(f.read_text())
        results[d["rank"]] = d
    if expect_ok:
        assert p.returncode == 0, p.stdout + p.stderr
        assert sorted(results) == list(range(n)), p.stdout + p.stderr
    else:
        assert p.returncode != 0, p.stdout + p.stderr
    return results


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "w"
    w.mkdir(mode=0o700)
    return w


def ckpt(w: Path) -> Path:
    return w / "shared" / "ckpt"


def assert_checkpoint_matches_sources(w: Path, n: int) -> None:
    """A valid marker, verified by CRC32C, listing exactly every source file of every rank,
    each byte-identical to its source."""
    res = _manifest.check_checkpoint(ckpt(w), verify=True)
    assert res.valid, res.problems
    assert res.manifest is not None
    assert res.manifest.nranks == n
    assert res.manifest.meta == {"step": 7}
    listed = {e.path for e in res.manifest.entries if e.kind == "file"}
    expected = set()
    for r in range(n):
        src = w / "src" / f"rank-{r}"
        for f in src.rglob("*"):
            if f.is_file():
                rel = f"rank-{r}/{f.relative_to(src)}"
                expected.add(rel)
                assert (ckpt(w) / rel).read_bytes() == f.read_bytes()
    assert listed == expected
    assert {e.rank for e in res.manifest.entries} == set(range(n))


@pytest.mark.parametrize(("n", "ttype"), [(2, "sync"), (2, "default"), (4, "pthread"),
                                         (8, "pthread")])
def test_all_ranks_succeed_commit_marker(work: Path, n: int, ttype: str) -> None:
    results = run(n, "ok", str(work), "--type", ttype)
    assert all(r["ok"] and r["state"] == "COMPLETED" for r in results.values())
    assert_checkpoint_matches_sources(work, n)
    latest = _manifest.latest_valid_checkpoint(work / "shared", verify=True)
    assert latest is not None and latest.path == str(ckpt(work))
    # free() after the commit removed each rank's transfer from its own journal
    for r in range(n):
        with axlpy.Journal(amp.journal_path(work / "journals", r), create=False) as j:
            assert j.names() == []


@pytest.mark.parametrize(("n", "scenario", "policy"), [
    (2, "missing", "keep"),     # add() of a source that does not exist
    (4, "vanish", "cancel"),    # a source deleted between add() and dispatch()
])
def test_one_rank_source_missing_no_marker_error_everywhere(
        work: Path, n: int, scenario: str, policy: str) -> None:
    bad = n - 1
    results = run(n, scenario, str(work), "--bad-rank", str(bad), "--policy", policy)
    for r in results.values():
        assert not r["ok"]
        assert r["error"] == "CollectiveError" and r["op"] == "dispatch"
        assert list(r["failures"]) == [str(bad)]
        assert "BadSourceError" in r["failures"][str(bad)]
        assert f"rank {bad}: BadSourceError" in r["message"]
        assert f"policy '{policy}'" in r["message"]
    assert not (ckpt(work) / _manifest.MARKER).exists()
    assert _manifest.latest_valid_checkpoint(work / "shared") is None
    if policy == "cancel":
        # A rank that finished before the failure was agreed stays COMPLETED (the state
        # table has no way back) but discards its files; the failed rank is CANCELLED.
        assert {r["state"] for r in results.values()} <= {"CANCELLED", "COMPLETED"}
        assert results[bad]["state"] == "CANCELLED"
        # every rank removed what it had published: no file is left in the checkpoint
        assert [p for p in ckpt(work).rglob("*") if p.is_file()] == []
    else:
        assert results[bad]["state"] == "CREATED"


def test_cancel_policy_rank_that_completes_while_being_cancelled_discards(work: Path) -> None:
    # Rank 1's copy is held at its first chunk until the policy has looked at its state
    # (DISPATCHED) and calls cancel(); it then finishes before the cancel reaches it. Its
    # transfer is COMPLETED, so it must discard its files like a rank that was done earlier
    # (was: cancel raised InvalidTransitionError, "this rank's cancel failed", files left).
    results = run(4, "vanish", str(work), "--bad-rank", "3", "--policy", "cancel",
                  "--late-rank", "1")
    late = results[1]
    assert late["seen_at_cancel"] == ["DISPATCHED", "COMPLETED"]
    assert late["state"] == "COMPLETED" and "mpi.discard" in late["events"]
    for r in results.values():
        assert not r["ok"] and r["op"] == "dispatch"
        assert "every rank cancelled its transfer" in r["message"], r["message"]
    assert results[3]["state"] == "CANCELLED"
    assert [p for p in ckpt(work).rglob("*") if p.is_file()] == []
    assert not (ckpt(work) / _manifest.MARKER).exists()


def test_keep_policy_then_fix_and_resume_commits(work: Path) -> None:
    n, bad = 4, 2
    results = run(n, "vanish", str(work), "--bad-rank", str(bad))
    assert all(not r["ok"] for r in results.values())
    assert results[bad]["state"] == "CREATED"
    assert not (ckpt(work) / _manifest.MARKER).exists()
    # restore the vanished source (same bytes: the generator is seeded), re-run the job
    lost = work / "src" / f"rank-{bad}" / "part-0.bin"
    import random

    lost.write_bytes(random.Random(bad * 1000).randbytes(256 << 10))
    results = run(n, "resume", str(work))
    assert all(r["ok"] for r in results.values()), results
    assert results[bad]["before"] == "CREATED"
    assert_checkpoint_matches_sources(work, n)


@pytest.mark.parametrize("n", [2, 8])
def test_keep_policy_failed_add_is_replayed_when_the_job_reruns(work: Path, n: int) -> None:
    """A rank whose add() failed (source missing) is CREATED with no files; after the
    source is restored, re-running the job replays its recorded add and commits."""
    bad = n - 1
    results = run(n, "missing", str(work), "--bad-rank", str(bad), "--policy", "keep")
    assert all(not r["ok"] for r in results.values())
    assert results[bad]["state"] == "CREATED"
    # the source appears (same bytes as the rank's usual sources), the job is re-run
    shutil.copytree(work / "src" / f"rank-{bad}", work / "src" / "no-such-dir")
    results = run(n, "resume", str(work))
    assert all(r["ok"] for r in results.values()), results
    assert results[bad]["before"] == "CREATED"
    assert "mpi.replay_add" in results[bad]["events"]
    assert_checkpoint_matches_sources(work, n)


def _age_leases(w: Path, n: int, seconds: float) -> None:
    """Make every rank's owner lease ``seconds`` older (what time does on a real
    cluster while the dead job's nodes are gone), written into the journals."""
    import sqlite3

    for r in range(n):
        c = sqlite3.connect(amp.journal_path(w / "journals", r))
        with c:
            c.execute("UPDATE transfers SET owner_heartbeat_ns = owner_heartbeat_ns - ?",
                      (int(seconds * 1e9),))
        c.close()


@pytest.mark.parametrize(("n", "how"), [(2, "force"), (4, "expiry"), (8, "force")])
def test_restart_on_other_nodes_takes_over_by_force_or_lease_expiry(
        work: Path, n: int, how: str) -> None:
    bad = n - 1
    run(n, "crash", str(work), "--bad-rank", str(bad), "--crash-at", "stage.after_write",
        "--files", "4", "--size", str(1 << 20), expect_ok=False, host="node-a")
    # the job restarts on other nodes, soon: the dead rank's lease is still fresh
    results = run(n, "resume", str(work), host="node-b")
    for r in results.values():
        assert not r["ok"] and r["error"] == "CollectiveError", r
        assert "OwnershipError" in r["failures"][str(bad)]
        assert "on host node-a" in r["failures"][str(bad)]
    assert not (ckpt(work) / _manifest.MARKER).exists()
    if how == "force":
        results = run(n, "resume", str(work), "--force", host="node-b")
    else:
        _age_leases(work, n, 301)  # the default lease is 300 s
        results = run(n, "resume", str(work), host="node-b")
    assert all(r["ok"] for r in results.values()), results
    why = "forced" if how == "force" else "lease expired"
    assert any(f"node-a ({why})" in d for d in results[bad]["takeovers"])
    assert_checkpoint_matches_sources(work, n)


@pytest.mark.parametrize(("n", "bad", "point", "hit"), [
    (2, 1, "publish.after_rename", 1),
    (4, 3, "stage.after_write", 2),
    (8, 5, "stage.after_write", 1),
])
def test_rank_sigkilled_mid_transfer_then_job_rerun_resumes(
        work: Path, n: int, bad: int, point: str, hit: int) -> None:
    run(n, "crash", str(work), "--bad-rank", str(bad), "--crash-at", point,
        "--crash-hit", str(hit), "--files", "4", "--size", str(1 << 20), expect_ok=False)
    # the job died (hydra kills the other ranks): no marker, nothing valid to restart from
    assert not (ckpt(work) / _manifest.MARKER).exists()
    assert _manifest.latest_valid_checkpoint(work / "shared") is None
    with axlpy.Journal(amp.journal_path(work / "journals", bad), create=False) as j:
        assert j.open("ckpt").state is axlpy.TransferState.DISPATCHED

    results = run(n, "resume", str(work))
    assert all(r["ok"] for r in results.values()), results
    assert results[bad]["before"] == "DISPATCHED"
    assert "takeover" in results[bad]["events"]
    for r in results.values():
        if r["before"] == "COMPLETED":  # finished ranks do nothing but agree
            assert not {"resume", "takeover"} & set(r["events"])
            assert r["events"][-2:] == ["complete", "mpi.commit"]
    assert_checkpoint_matches_sources(work, n)

    # Every rank COMPLETED but the marker lost (the job died between the last COMPLETED
    # and the rename of the marker): a re-run does no copying and writes the marker.
    (ckpt(work) / _manifest.MARKER).unlink()
    results = run(n, "resume", str(work))
    assert {r["before"] for r in results.values()} == {"COMPLETED"}
    assert all(r["ok"] for r in results.values())
    assert_checkpoint_matches_sources(work, n)


def test_different_rank_count_is_refused_then_finish_from_one_process(work: Path) -> None:
    run(4, "crash", str(work), "--bad-rank", "1", "--crash-at", "publish.after_rename",
        "--files", "4", "--size", str(1 << 20), expect_ok=False)
    results = run(2, "resume", str(work))
    for r in results.values():
        assert not r["ok"] and r["error"] == "RankCountError"
        assert "created by 4 ranks but this job has 2" in r["message"]
        assert "axlpy.mpi.finish" in r["message"]
    assert not (ckpt(work) / _manifest.MARKER).exists()

    # this pytest process is not an MPI job: finish() over all four rank journals
    m = amp.finish(work / "journals", "ckpt")
    assert m.nranks == 4
    assert_checkpoint_matches_sources(work, 4)
    # the CLI answers the reader question
    p = subprocess.run([sys.executable, "-m", "axlpy", "latest", str(work / "shared"),
                        "--check", "crc"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == str(ckpt(work))


def test_finish_refuses_when_a_rank_journal_is_missing(work: Path) -> None:
    run(2, "crash", str(work), "--bad-rank", "0", "--crash-at", "stage.after_write",
        expect_ok=False)
    os.rename(amp.journal_path(work / "journals", 1), work / "elsewhere.db")
    with pytest.raises(axlpy.UsageError, match=r"ranks \[1\] are missing"):
        amp.finish(work / "journals", "ckpt")
    assert not (ckpt(work) / _manifest.MARKER).exists()


@pytest.mark.parametrize("n", [2, 4])
def test_straggler_timeout_names_the_slow_rank(work: Path, n: int) -> None:
    bad = n - 1
    results = run(n, "straggler", str(work), "--bad-rank", str(bad), "--timeout", "0.3")
    for r in results.values():
        assert r["ok"] and r["timed_out"]
        assert r["slow_ranks"] == [bad]
        assert f"rank {bad} (" in r["message"] and "still transferring" in r["message"]
    # the slow rank was released and the second wait() committed
    assert_checkpoint_matches_sources(work, n)


@pytest.mark.parametrize("cleanup", ["gc", "next-commit"])
def test_commit_killed_between_marker_temp_and_rename(work: Path, cleanup: str) -> None:
    """Rank 0 dies after the marker's temp is fsynced, before its rename: no marker, a
    hidden temp; ``axlpy gc`` finds and removes it, and so does the next commit."""
    from click.testing import CliRunner

    from axlpy.cli import cli

    run(2, "crash", str(work), "--bad-rank", "0", "--crash-at", "marker.after_temp_fsync",
        expect_ok=False)
    assert not (ckpt(work) / _manifest.MARKER).exists()
    temps = sorted(p.name for p in ckpt(work).glob("._AXLPY_COMMIT.json.axlpy-*"))
    assert len(temps) == 1
    assert _manifest.latest_valid_checkpoint(work / "shared") is None
    env = {"AXLPY_JOURNAL": str(work / "no-journal" / "j.db")}
    r = CliRunner().invoke(cli, ["gc", "--min-age", "0", "--json", str(work / "shared")],
                           env=env)
    assert r.exit_code == 0, r.output
    found = [t for t in json.loads(r.output)["temps"] if t["class"] == "marker"]
    assert [Path(t["path"]).name for t in found] == temps
    assert found[0]["action"] == "delete"
    if cleanup == "gc":
        r = CliRunner().invoke(cli, ["gc", "--min-age", "0", "--delete", str(work / "shared")],
                               env=env)
        assert r.exit_code == 0 and "1 deleted" in r.output, r.output
        assert not list(ckpt(work).glob("._AXLPY_COMMIT.json.axlpy-*"))
    results = run(2, "resume", str(work))
    assert all(r["ok"] for r in results.values()), results
    assert_checkpoint_matches_sources(work, 2)
    assert not list(ckpt(work).glob("._AXLPY_COMMIT.json.axlpy-*"))


def test_default_journal_dir_is_node_local_and_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("AXLPY_MPI_JOURNAL_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    d = amp.default_journal_dir()
    assert d == str(tmp_path / f"axlpy-{os.getuid()}" / "mpi")
    assert os.stat(os.path.dirname(d)).st_mode & 0o777 == 0o700
    os.chmod(os.path.dirname(d), 0o777)
    with pytest.raises(axlpy.UsageError, match="not a private directory"):
        amp.default_journal_dir()
    monkeypatch.setenv("AXLPY_MPI_JOURNAL_DIR", str(tmp_path / "shared-j"))
    assert amp.journal_path(None, 3) == str(tmp_path / "shared-j" / "rank-3.db")


def test_finish_from_another_node_needs_force_before_lease_expiry(work: Path) -> None:
    run(2, "crash", str(work), "--bad-rank", "1", "--crash-at", "stage.after_write",
        expect_ok=False, host="node-a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env["AXLPY_HOST_ID"] = "node-b"
    cmd = [sys.executable, "-m", "axlpy.mpi", "finish", str(work / "journals"), "ckpt"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    # exit code 1, as `axlpy resume` of a transfer a live owner holds
    assert p.returncode == 1 and "OwnershipError" not in p.stdout, p.stdout + p.stderr
    assert "on host node-a" in p.stderr and "force" in p.stderr, p.stderr
    assert not (ckpt(work) / _manifest.MARKER).exists()
    p = subprocess.run([*cmd, "--force"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("committed ckpt: ")
    assert_checkpoint_matches_sources(work, 2)
