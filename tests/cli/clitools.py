"""Helpers for the CLI tests: run ``axlpy`` through click's CliRunner or as a real
``python -m axlpy`` process, with a private journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from axlpy.cli import cli

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str


def child_env(journal: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AXLPY_")}
    env["AXLPY_JOURNAL"] = str(journal)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A shell that started the test runner in the background may have left SIGINT
    # ignored, and children inherit that; the Ctrl-C tests need the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_sub(journal: Path, *args: str | os.PathLike[str] | bytes,
            env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """``python -m axlpy ARGS`` as a real process; stdout and stderr captured apart."""
    p = subprocess.run(
        [sys.executable, "-m", "axlpy", *map(os.fsdecode, args)],
        capture_output=True, env=env or child_env(journal), timeout=timeout, cwd=REPO,
    )
    return Result(p.returncode, p.stdout.decode("utf-8", "surrogateescape"),
                  p.stderr.decode("utf-8", "surrogateescape"))


def start_sub(journal: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None,
              **kw: object) -> subprocess.Popen[bytes]:
    p: subprocess.Popen[bytes] = subprocess.Popen(
        [sys.executable, "-m", "axlpy", *map(os.fsdecode, args)],
        env=env or child_env(journal), cwd=REPO, preexec_fn=_default_sigint,
        **kw,  # type: ignore[call-overload]
    )
    STARTED.append(p)
    return p


#: processes started by start_sub, reaped after each test (see conftest)
STARTED: list[subprocess.Popen[bytes]] = []


def reap_started() -> None:
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
        p.communicate()


def run_runner(journal: Path, *args: str | os.PathLike[str] | bytes) -> Result:
    """The same command through click's CliRunner, in this process."""
    runner = CliRunner()
    r = runner.invoke(cli, [os.fsdecode(a) for a in args],
                      env={"AXLPY_JOURNAL": str(journal)}, catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


Runner = Callable[..., Result]


def wait_for(pred: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def temps_under(root: Path) -> list[Path]:
    from axlpy._staging import TEMP_PATTERN

    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if TEMP_PATTERN.search(os.fsencode(n)):
                out.append(Path(dirpath) / n)
    return out


def temp_bytes(root: Path) -> int:
    total = 0
    for p in temps_under(root):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def big_file(path: Path, size: int) -> bytes:
    data = os.urandom(1 << 20) * (size >> 20)
    path.write_bytes(data)
    return data


SLOW_ENV = {"AXLPY_CHUNK_SIZE": "1024", "AXLPY_EXTENT_SIZE": "1048576"}


def lines(s: str) -> Sequence[str]:
    return [ln for ln in s.splitlines() if ln.strip()]
