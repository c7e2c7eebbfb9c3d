"""Every code block in README.md and docs/*.md runs as written (issue 12, item 9).

Each fenced block is classified below: Python blocks run in a fresh interpreter, shell
blocks marked safe run in bash, and every other block is either not code (sample output,
diagrams, generated signatures) or listed in NOT_RUN with the reason it is not run here
(those Python blocks are still compiled). A block nobody classified fails the test, so a
new snippet cannot slip in untested. Every run happens in a private temporary directory
that is also $HOME, with $AXLPY_JOURNAL unset (the default journal) unless said.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: info strings of blocks that are not code: sample output, JSON shapes, diagrams
NOT_CODE = {"", "text", "json"}


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int
    lang: str
    code: str

    @property
    def key(self) -> str:
        first = next(ln for ln in self.code.splitlines() if ln.strip())
        return f"{self.file}: {first.strip()}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _blocks() -> list[Block]:
    out = []
    for f in DOC_FILES:
        text = f.read_text()
        # a fence may be indented (a block inside a list item): same indent closes it
        for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
            out.append(Block(str(f.relative_to(ROOT)), text[:m.start()].count("\n") + 1,
                             m.group(2), textwrap.dedent(m.group(3))))
    return out


BLOCKS = _blocks()

#: blocks that are code but are not run here, by Block.key prefix, with the reason
NOT_RUN: dict[str, str] = {
    "README.md: bash .ci/demo": "runs the demo and the whole test suite (minutes); "
    "CI runs both",
    "README.md: axlpy cp ckpt/ /pfs/ckpt-1": "a cheat sheet with placeholders (NAME, DIR) "
    "and heavy commands (the full fault sweep, the benchmark); each command is run by "
    "its own test",
    "docs/benchmarks.md: .venv/bin/python -m bench": "the full benchmark takes ~30 min and "
    "rewrites docs/bench; tests/test_bench_quick.py runs the quick tier",
    "docs/fault-injection.md: python -m fault_injection ci": "minutes per tier; .ci/run "
    "runs the ci tier",
    "docs/fault-injection.md: from fault_injection.powerfs import PowerLossFS": "an "
    "outline (start_worker, run_recovery are the caller's); needs FUSE; "
    "tests/fault/test_powerfs.py runs the real thing",
    "docs/powerfs.md: from fault_injection.powerfs import PowerLossFS": "an outline "
    "(start_worker, run_recovery are the caller's); needs FUSE; tests/fault/"
    "test_powerfs.py runs the real thing",
    "docs/fault-injection.md: python -m fault_injection.powerfs mount": "placeholders "
    "(BACKING, MOUNTPOINT, STATE) and a FUSE daemon; tests/fault/test_powerfs.py",
    "docs/powerfs.md: python -m fault_injection.powerfs mount": "placeholders (BACKING, "
    "MOUNTPOINT, STATE) and a FUSE daemon; tests/fault/test_powerfs.py",
    "docs/fault-injection.md: .venv/bin/python -m pytest": "a test file of this suite; "
    "the suite runs it",
    "docs/powerfs.md: .venv/bin/python -m pytest": "a test file of this suite; the suite "
    "runs it",
    "docs/mpi.md: pip install": "installs from the network; tests/mpi runs the example "
    "under mpiexec",
    "docs/mpi.md: from mpi4py import MPI": "an API listing for N MPI ranks (needs "
    "mpiexec); examples/mpi_checkpoint.py, run by tests/mpi, is the runnable form",
    "docs/mpi.md: .venv/bin/mpiexec -n 4 .venv/bin/python tests/mpi/bench_flush.py": "a "
    "benchmark (minutes)",
    "docs/mpi.md: $ export PATH=$PWD/.venv/bin:$PATH": "transcript: the restart-on-other-"
    "nodes walkthrough's first run, real output (pids, lease ages, times are that run's; "
    "fixed workdir /tmp/c16demo shared by anyone running it; which ranks reach step 20 "
    "before mpiexec kills them depends on scheduling); tests/mpi/test_mpi.py::"
    "test_restart_on_other_nodes_takes_over_by_force_or_lease_expiry runs the same "
    "kill, refusal (OwnershipError) and takeover under mpiexec",
    "docs/mpi.md: $ AXLPY_HOST_ID=node-b ": "transcript: the same walkthrough's "
    "`axlpy ls` and restarts from node-b (needs the first run's killed journals; pids and "
    "ages are that run's); tests/mpi/test_mpi.py::"
    "test_restart_on_other_nodes_takes_over_by_force_or_lease_expiry runs the refusal "
    "and the forced takeover, test_finish_from_another_node_needs_force_before_lease_"
    "expiry the same from one process",
    "docs/quickstart.md: $ python3 -m venv ~/axlpy-venv": "creates a venv and installs "
    "axlpy into it (minutes); the other quickstart blocks run with this checkout's venv",
    "docs/lifecycle.md: $ axlpy prune /pfs/job/ckpt --keep-last 3 [--keep-every": "a "
    "synopsis ([optional] flags, placeholder paths); tests/integration/test_lifecycle.py "
    "runs prune",
    "docs/retry.md: echo continue > /run/axlpy/job42.flag.tmp": "writes the flag of a "
    "paused job at that job's path (/run/axlpy is the operator's); tests/unit/"
    "test_retry.py::test_flag_file_continue_written_by_another_thread_resumes writes a "
    "flag the same way (temp, then rename) and checks it resumes the call",
    "docs/operators-guide.md: $": "a recorded session (pids, times and sizes in the "
    "output are that run's); the same commands run from quickstart.md",
}

#: blocks run by a scenario test below (keys), so not by the generic runner
SCENARIOS = {
    "README.md: import time",          # job, then crash
    "README.md: import axlpy",         # ... then the "after a crash" block
    "docs/quickstart.md: $ mkdir -p ~/demo/ckpt && cd ~/demo",
    "docs/quickstart.md: $ axlpy cp --name first ckpt pfs/ckpt-1",
    "docs/quickstart.md: $ AXLPY_CRASH_AT=stage.after_write axlpy cp --name demo ckpt "
    "pfs/ckpt-2",
    "docs/quickstart.md: $ ls -a pfs/ckpt-2",
    "docs/quickstart.md: $ axlpy resume demo",
    "docs/index.md: $ axlpy cp --name job42-step100 scratch/job42/step-100 pfs/run/",
    # tests/unit/test_journal_inspect.py runs it on real journals
    "docs/operators-guide.md: J=~/.local/state/axlpy/journal.db",
}


def _not_run_reason(b: Block) -> str | None:
    return next((why for k, why in NOT_RUN.items() if b.key.startswith(k)), None)


def _is_api_signature(b: Block) -> bool:
    # docs/api.md is generated (scripts/gen_api_docs.py, checked by test_docs.py): its
    # python blocks are signatures, not statements
    return b.file == "docs/api.md" and b.lang == "python"


CODE = [b for b in BLOCKS if b.lang not in NOT_CODE and not _is_api_signature(b)]
RUNNABLE_PY = [b for b in CODE if b.lang == "python" and _not_run_reason(b) is None
               and not any(b.key.startswith(k) for k in SCENARIOS)]


def test_every_code_block_is_run_or_says_why_not():
    unclassified = [f"{b} ({b.key})" for b in CODE
                    if b.lang != "python" and _not_run_reason(b) is None
                    and not any(b.key.startswith(k) for k in SCENARIOS)]
    assert not unclassified, ("shell blocks nobody runs; run them in a scenario or add "
                              f"them to NOT_RUN with the reason: {unclassified}")
    used = {k for k in NOT_RUN if any(b.key.startswith(k) for b in CODE)}
    assert used == set(NOT_RUN), f"stale NOT_RUN entries: {set(NOT_RUN) - used}"
    found = {k for k in SCENARIOS if any(b.key.startswith(k) for b in CODE)}
    assert found == SCENARIOS, f"scenario blocks no longer in the docs: {SCENARIOS - found}"


@pytest.mark.parametrize("block", [b for b in CODE if b.lang == "python"], ids=str)
def test_python_blocks_compile(block):
    compile(block.code, str(block), "exec")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AXLPY_") and k != "XDG_STATE_HOME"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def _tree(root: Path, files: int = 3, size: int = 300_000) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / ("sub" if i % 2 else "") / f"rank{i}.bin").write_bytes(os.urandom(size))


def _py(code: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=home, env=_env(home, **extra),
                          capture_output=True, text=True, timeout=600)


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(
        _same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.mark.parametrize("block", RUNNABLE_PY, ids=str)
def test_python_block_runs(block, tmp_path):
    home = _home(tmp_path)
    _tree(home / "scratch" / "job42" / "step-100")  # docs/index.md copies it
    r = _py(block.code, home)
    assert r.returncode == 0, f"{block} failed:\n{r.stderr}"


def test_readme_example_survives_a_crash_and_the_after_crash_lines_finish_the_copy(
        tmp_path):
    job, after = (b for b in CODE if b.file == "README.md" and b.lang == "python")
    home = _home(tmp_path)
    _tree(home / "local" / "ckpt-100", files=4, size=3 << 20)
    # The job dies part-way: the process SIGKILLs itself after the first chunk is
    # written, exactly as a crash would.
    r = _py(job.code, home, AXLPY_CRASH_AT="stage.after_write", AXLPY_CHUNK_SIZE="65536")
    assert r.returncode == -9, r.stderr
    assert not _same_tree(home / "local" / "ckpt-100", home / "pfs" / "ckpt-100") \
        if (home / "pfs" / "ckpt-100").exists() else True
    r = _py(after.code, home)  # "in any new process"
    assert r.returncode == 0, r.stderr
    assert _same_tree(home / "local" / "ckpt-100", home / "pfs" / "ckpt-100")


def _console(blocks: list[Block]) -> str:
    """The commands of ``$ `` console blocks, as one bash script that prints each
    command's exit status."""
    lines = []
    for b in blocks:
        for ln in b.code.splitlines():
            if ln.startswith("$ "):
                cmd = ln[2:]
                lines.append(f"{cmd}\necho \"__rc=$? {len(lines)}\"")
    return "\n".join(lines) + "\n"


def _run_console(script: str, home: Path) -> tuple[list[int], str]:
    p = subprocess.run(["bash", "--noprofile", "--norc"], input=script, cwd=home,
                       env=_env(home), capture_output=True, text=True, timeout=900)
    codes = [int(m.group(1)) for m in re.finditer(r"^__rc=(\d+) ", p.stdout, re.M)]
    return codes, p.stdout + p.stderr


def test_quickstart_runs_as_written(tmp_path):
    blocks = [b for b in CODE if b.file == "docs/quickstart.md" and b.lang == "console"
              and _not_run_reason(b) is None]
    home = _home(tmp_path)
    script = _console(blocks)
    codes, out = _run_console(script, home)
    cmds = [ln[2:] for b in blocks for ln in b.code.splitlines() if ln.startswith("$ ")]
    assert len(codes) == len(cmds), out
    for cmd, code in zip(cmds, codes, strict=True):
        want = 137 if cmd.startswith("AXLPY_CRASH_AT=") else 0  # 128 + SIGKILL
        assert code == want, f"{cmd!r} exited {code}:\n{out}"
    demo = home / "demo"
    assert _same_tree(demo / "ckpt", demo / "pfs" / "ckpt-1")
    assert _same_tree(demo / "ckpt", demo / "pfs" / "ckpt-2")
    assert "DISPATCHED" in out and "(dead)" in out  # what `axlpy ls` showed after the kill


def test_index_console_runs_as_written(tmp_path):
    (block,) = (b for b in CODE if b.file == "docs/index.md" and b.lang == "console")
    home = _home(tmp_path)
    _tree(home / "scratch" / "job42" / "step-100")
    codes, out = _run_console(_console([block]), home)
    assert codes == [0, 0, 0, 0], out
    assert _same_tree(home / "scratch" / "job42" / "step-100",
                      home / "pfs" / "run" / "step-100")
