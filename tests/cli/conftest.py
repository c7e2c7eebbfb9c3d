"""Fixtures for the CLI tests: a private journal and a small source tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.clitools import Result, reap_started, run_runner, run_sub


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """No process a test started outlives it (even when the test fails)."""
    yield
    reap_started()


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d / "journal.db"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ckpt"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.bin").write_bytes(os.urandom(200_000))
    (root / "sub" / "b.txt").write_bytes(b"hello\n")
    (root / "sub" / "deep" / "c").write_bytes(b"")
    os.symlink("a.bin", root / "link")
    return root


@pytest.fixture(params=["runner", "subprocess"])
def axl(request: pytest.FixtureRequest, jpath: Path):
    """Run ``axlpy ARGS`` through CliRunner and, in a second run, as a real process."""

    def run(*args: str | os.PathLike[str] | bytes) -> Result:
        if request.param == "runner":
            return run_runner(jpath, *args)
        return run_sub(jpath, *args)

    run.mode = request.param  # type: ignore[attr-defined]
    return run


@pytest.fixture
def axr(jpath: Path):
    """Run ``axlpy ARGS`` through CliRunner only (for cases a real process adds nothing to)."""

    def run(*args: str | os.PathLike[str] | bytes) -> Result:
        return run_runner(jpath, *args)

    return run
