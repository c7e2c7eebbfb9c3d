"""``axlpy drain`` after a real ``mpiexec`` job died: the checkpoint is finished across
every rank journal and committed (the marker written) from one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from axlpy import _manifest
from tests.cli.clitools import run_sub
from tests.mpi.test_mpi import assert_checkpoint_matches_sources, ckpt, pytestmark, run

__all__ = ["pytestmark"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "w"
    w.mkdir(mode=0o700)
    return w


@pytest.mark.parametrize(("n", "bad", "point"), [(2, 1, "stage.after_write"),
                                                 (4, 2, "publish.after_rename")])
def test_drain_commits_a_dead_jobs_checkpoint(work: Path, n: int, bad: int,
                                              point: str) -> None:
    run(n, "crash", str(work), "--bad-rank", str(bad), "--crash-at", point,
        "--files", "4", "--size", str(1 << 20), expect_ok=False)
    assert not (ckpt(work) / _manifest.MARKER).exists()
    jdir = work / "journals"
    r = run_sub(jdir / "rank-0.db", "drain", str(jdir), "--json")
    assert r.code == 0, r.out + r.err
    items = json.loads(r.out)["items"]
    assert len(items) == 1, items
    (item,) = items
    assert item["kind"] == "checkpoint" and item["name"] == "ckpt"
    assert item["result"] == "committed" and item["ranks"] == list(range(n))
    assert_checkpoint_matches_sources(work, n)
    # Committed: a second drain finds nothing to do.
    r = run_sub(jdir / "rank-0.db", "drain", str(jdir), "--json")
    assert r.code == 0 and json.loads(r.out)["items"] == [], r.out
