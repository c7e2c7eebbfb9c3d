"""The checkpoint lifecycle under a real ``mpiexec``: step order when an older flush
commits last, and the MPI example pruning to ``--keep-last`` with a correct pointer."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import axlpy
from axlpy import _lifecycle, _manifest

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

pytestmark = [
    pytest.mark.requires_mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install axlpy[mpi])"),
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                       reason="mpi4py not installed (axlpy[mpi])"),
]
EXAMPLE = HERE.parents[1] / "examples" / "mpi_checkpoint.py"


def mpirun(n: int, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_CRASH")}
    assert MPIEXEC is not None
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *cmd], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_older_pending_flush_committed_last_does_not_move_latest_back(
        tmp_path: Path) -> None:
    w = tmp_path / "w"
    w.mkdir(mode=0o700)
    mpirun(2, str(HERE / "lifecycle_prog.py"), str(w))
    results = [json.loads((w / f"result-{r}.json").read_text()) for r in range(2)]
    shared = w / "shared"
    m10 = _manifest.read_manifest(shared / "step-000010")
    m20 = _manifest.read_manifest(shared / "step-000020")
    assert (m10.step, m20.step) == (10, 20)
    assert m10.committed_ns > m20.committed_ns  # the older step really committed last
    for r in results:
        assert (r["name"], r["step"]) == ("step-000020", 20)
        assert r["files"] == [str(shared / "step-000020" / f"rank-{r['rank']}" / "state.bin")]
    ptr = _lifecycle.read_pointer(shared)
    assert ptr is not None and (ptr.checkpoint, ptr.step) == ("step-000020", 20)
    from click.testing import CliRunner

    from axlpy.cli import cli

    doc = json.loads(CliRunner().invoke(cli, ["latest", "--json", str(shared)]).stdout)
    assert (doc["step"], doc["committed_ns"]) == (20, m20.committed_ns)
    assert doc["pointer"]["state"] == "current"


def test_example_keep_last_3_ends_with_3_checkpoints_and_latest(tmp_path: Path) -> None:
    w = tmp_path / "demo"
    args = [str(EXAMPLE), "--workdir", str(w), "--every", "5", "--keep-last", "3",
            "--size-mib", "1", "--type", "pthread"]
    p = mpirun(2, *args, "--steps", "50")
    assert "done at step 50" in p.stdout, p.stdout + p.stderr
    shared = w / "shared"
    assert sorted(os.listdir(shared)) == [_lifecycle.POINTER, "step-000040", "step-000045",
                                          "step-000050"]
    for s in (40, 45, 50):
        res = _manifest.check_checkpoint(shared / f"step-{s:06d}", verify=True)
        assert res.valid and res.manifest is not None and res.manifest.step == s
    ptr = _lifecycle.read_pointer(shared)
    assert ptr is not None and (ptr.checkpoint, ptr.step) == ("step-000050", 50)
    rp = axlpy.restore_point(shared, "crc")
    assert rp is not None and ptr.names(rp.manifest, rp.name)
    # The restart goes through restore_point: corrupt the newest, restart with crc.
    victim = shared / "step-000050" / "rank-1" / "state.bin"
    with open(victim, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    p = mpirun(2, *args, "--steps", "55", "--verify", "crc")
    assert f"restarting from {shared / 'step-000045'} (step 45)" in p.stdout, p.stdout
    assert "done at step 55" in p.stdout
    names = sorted(os.listdir(shared))
    assert names == [_lifecycle.POINTER, "step-000045", "step-000050", "step-000055"], names
    assert _lifecycle.read_pointer(shared).checkpoint == "step-000055"  # type: ignore[union-attr]
