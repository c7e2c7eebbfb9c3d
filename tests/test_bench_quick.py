"""The benchmark's quick mode still runs every tool and writes its report (no timings)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import axlpy
from axlpy.engines import get_engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A private scratch directory on tmpfs (/dev/shm) when there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    d = Path(tempfile.mkdtemp(prefix="axlpy-bench-test-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_quick_mode_reports_every_tool(tmp_path: Path, tmpfs_dir: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (.ci/bootstrap installs it)")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--disk-dir", str(tmp_path / "disk"), "--tmpfs-dir", str(tmpfs_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())

    # Every transfer type with an engine here runs, unless the bench said why it could not.
    engines = []
    for t in axlpy.TransferType:
        try:
            get_engine(t.value)
        except axlpy.AxlError:
            continue
        engines.append(f"axlpy-{t.value}")
    ran = set(result["tools"])
    assert {"axlpy-sync", "cp -r", "rsync -a", "copytree"} <= ran
    for name in engines:
        assert name in ran or name.removeprefix("axlpy-") in result["skipped_types"], name
    assert [s["name"] for s in result["scenarios"]] == [
        "1 x 8 MiB", "64 x 64 KiB", "300 x 4 KiB (tmpfs)", "200 x 1 KiB", "100 empty dirs"]
    dirs = next(s for s in result["scenarios"] if s["name"] == "100 empty dirs")
    assert (dirs["nfiles"], dirs["empty_dirs"]) == (0, 100)
    for s in result["scenarios"]:
        assert set(s["summary"]) == ran, s["name"]
        for name, v in s["summary"].items():
            assert v["n"] == 1 and v["median_s"] > 0, (s["name"], name)
        assert s["ratios_vs_cp"]["cp -r"]["ratio"] == pytest.approx(1.0)
        # ratios against each peer come from the same run's medians
        assert set(s["ratios_vs_copytree"]) == ran
        assert s["ratios_vs_copytree"]["copytree"]["ratio"] == pytest.approx(1.0)
        for name in ran:
            assert s["ratios_vs_copytree"][name]["ratio"] == pytest.approx(
                s["summary"]["copytree"]["median_s"] / s["summary"][name]["median_s"])
        for name in ran:
            if name.startswith("axlpy-"):
                assert "journal_commit_share_median" in s["summary"][name]
                assert s["summary"][name]["rss_max_kib"] > 0
    assert result["resume"]["runs"][0]["startup_s"] > 0
    assert result["machine"]["nproc"] == os.cpu_count()
    md = (out / "bench.md").read_text()
    assert "ratio vs copytree" in md
    for name in ran:
        assert f"| {name} |" in md
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    # The scratch trees are cleaned up.
    assert not (tmp_path / "disk" / "quick").exists()
    assert not (tmpfs_dir / "quick").exists()
