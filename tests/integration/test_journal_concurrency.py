"""One journal, many concurrent users (issue 12 item 3).

The default journal is shared by every ``axlpy`` call of a user, so concurrency is the
normal case. Every worker is released by one gate (a barrier or a gate file), so the
writers collide as much as the machine allows; no test waits on the clock. Contention
must never surface as an error unless the busy timeout expires, and then only as a
one-line :class:`~axlpy.JournalBusyError` naming the journal.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import axlpy
from axlpy import JournalBusyError, JournalError

ROOT = Path(__file__).resolve().parents[2]

# A worker process: wait for the gate file, then create+add+dispatch N small transfers.
_WORKER = textwrap.dedent("""
    import json, os, sys, time
    import axlpy
    journal, src, dst, tag, n, gate, ttype = sys.argv[1:8]
    n = int(n)
    ready = gate + "." + tag
    open(ready, "w").close()
    while not os.path.exists(gate):  # the gate: every worker starts together
        time.sleep(0.001)
    t0 = time.monotonic()
    done = 0
    try:
        j = axlpy.Journal(journal)
        for i in range(n):
            t = j.create(f"{tag}-{i}", ttype)
            t.add(src, os.path.join(dst, f"{tag}-{i}"))
            t.dispatch()
            t.wait()
            done += 1
        j.close()
    except BaseException as exc:
        print(json.dumps({"done": done, "error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
    print(json.dumps({"done": done, "seconds": time.monotonic() - t0}))
""")


def _report(what: str, **figures: object) -> None:
    """The stress figures, for the issue's closing note (shown with ``pytest -s``)."""
    sys.stderr.write(f"\n[stress] {what}: " + ", ".join(f"{k}={v}" for k, v in
                                                       figures.items()) + "\n")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _release(gate: Path, tags: list[str], procs: list[subprocess.Popen[str]]) -> None:
    """Open the gate once every worker is at it (or has died trying)."""
    for tag, p in zip(tags, procs, strict=True):
        ready = Path(f"{gate}.{tag}")
        while not ready.exists():
            if p.poll() is not None:
                break
            time.sleep(0.005)  # waiting for a worker to start, not for a race to happen
    gate.touch()


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 4096)
    return src


@pytest.mark.parametrize(("nprocs", "per_proc", "ttype"), [(16, 50, "sync"), (4, 10, "default")])
def test_processes_create_and_dispatch_on_one_journal(tmp_path, journal_path, nprocs,
                                                      per_proc, ttype):
    src = _src(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    gate = tmp_path / "gate"
    tags = [f"p{k}" for k in range(nprocs)]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(journal_path), str(src),
                          str(dst), tag, str(per_proc), str(gate), ttype],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
        for tag in tags
    ]
    _release(gate, tags, procs)
    outs = [p.communicate() for p in procs]
    wall = time.monotonic() - t0
    failures = [(o, e) for p, (o, e) in zip(procs, outs, strict=True) if p.returncode != 0]
    _report(f"{nprocs} processes x {per_proc} create+add+dispatch ({ttype})",
            transfers=nprocs * per_proc, failures=len(failures), wall=f"{wall:.1f}s")
    assert not failures, failures[:3]
    with axlpy.Journal(journal_path) as j:
        states = [s.state for s in j.transfers()]
    assert len(states) == nprocs * per_proc
    assert set(states) == {axlpy.TransferState.COMPLETED}
    data = src.read_bytes()
    for tag in tags:
        for i in range(per_proc):
            assert (dst / f"{tag}-{i}").read_bytes() == data


def test_threads_with_their_own_journal_objects(tmp_path, journal_path):
    nthreads, per_thread = 32, 5
    src = _src(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    axlpy.Journal(journal_path).close()
    gate = threading.Barrier(nthreads)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            j = axlpy.Journal(journal_path)
            gate.wait()
            for i in range(per_thread):
                t = j.create(f"t{k}-{i}", "sync")
                t.add(src, dst / f"t{k}-{i}")
                t.dispatch()
            j.close()
        except BaseException as exc:
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _report(f"{nthreads} threads (own Journal each) x {per_thread} create+add+dispatch",
            transfers=nthreads * per_thread, failures=len(errors),
            wall=f"{time.monotonic() - t0:.1f}s")
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:3]]
    with axlpy.Journal(journal_path) as j:
        assert len(j.names()) == nthreads * per_thread
        assert {s.state for s in j.transfers()} == {axlpy.TransferState.COMPLETED}


def test_concurrent_cli_cp_on_one_journal(tmp_path, journal_path):
    n = 8
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(10_000))
    gate = tmp_path / "gate"
    # Each cp waits at the gate (a wrapper around the CLI's entry point).
    wrapper = textwrap.dedent("""
        import os, sys, time
        gate, tag = sys.argv[1], sys.argv[2]
        open(gate + "." + tag, "w").close()
        while not os.path.exists(gate):
            time.sleep(0.001)
        from axlpy.cli import main
        main(sys.argv[3:])
    """)
    tags = [f"c{k}" for k in range(n)]
    env = dict(_env(), AXLPY_JOURNAL=str(journal_path))
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", wrapper, str(gate), tag, "cp", "--name", tag,
                          "--progress", "none", str(src), str(tmp_path / f"dst-{tag}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for tag in tags
    ]
    _release(gate, tags, procs)
    outs = [p.communicate() for p in procs]
    failures = [(p.returncode, e) for p, (_, e) in zip(procs, outs, strict=True)
                if p.returncode != 0 or "Traceback" in e]
    _report(f"{n} concurrent `axlpy cp` (20 files each)", transfers=n,
            failures=len(failures), wall=f"{time.monotonic() - t0:.1f}s")
    assert not failures, failures[:3]
    for tag in tags:
        assert sorted(os.listdir(tmp_path / f"dst-{tag}" / "sub")) == sorted(
            os.listdir(src / "sub"))


_OPENER = textwrap.dedent("""
    import os, sys, time
    import axlpy
    journal, gate, tag = sys.argv[1:4]
    open(gate + "." + tag, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.0005)
    j = axlpy.Journal(journal)
    j.create(tag)
    j.close()
""")


def test_first_open_race_of_a_new_journal(tmp_path):
    nprocs, rounds = 6, 3
    failures: list[str] = []
    t0 = time.monotonic()
    for r in range(rounds):
        d = tmp_path / f"round{r}"
        d.mkdir(mode=0o700)
        journal = d / "journal.db"
        gate = tmp_path / f"gate{r}"
        tags = [f"o{k}" for k in range(nprocs)]
        procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(journal), str(gate),
                                   tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env())
                 for tag in tags]
        _release(gate, tags, procs)
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                failures.append(err.strip().splitlines()[-1] if err.strip() else "?")
        if not failures:
            with axlpy.Journal(journal) as j:
                assert sorted(j.names()) == sorted(tags)
    _report(f"{nprocs} processes first-opening a new journal", rounds=rounds,
            failures=len(failures), wall=f"{time.monotonic() - t0:.1f}s")
    assert not failures, failures[:3]


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_busy_timeout_expiry_is_a_one_line_journal_busy_error(journal_path):
    axlpy.Journal(journal_path).close()
    other = _hold_write_lock(journal_path)
    try:
        j = axlpy.Journal(journal_path, busy_timeout=0.05)
        with pytest.raises(JournalBusyError) as ei:
            j.create("x")
        msg = str(ei.value)
        assert str(journal_path) in msg
        assert "\n" not in msg
        assert isinstance(ei.value, JournalError)
        assert ei.value.__cause__ is not None  # the sqlite3 error, kept for debugging
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the lock is released the same object works: nothing was half-written.
    j.create("x")
    assert j.names() == ["x"]
    j.close()


def test_busy_timeout_comes_from_the_environment(journal_path, monkeypatch):
    axlpy.Journal(journal_path).close()
    monkeypatch.setenv("AXLPY_JOURNAL_BUSY_TIMEOUT", "0.05")
    other = _hold_write_lock(journal_path)
    try:
        with axlpy.Journal(journal_path) as j, pytest.raises(JournalBusyError):
            j.create("x")
    finally:
        other.execute("ROLLBACK")
        other.close()
    monkeypatch.setenv("AXLPY_JOURNAL_BUSY_TIMEOUT", "soon")
    with pytest.raises(axlpy.UsageError, match="AXLPY_JOURNAL_BUSY_TIMEOUT"):
        axlpy.Journal(journal_path)


def test_cli_busy_journal_is_one_line_naming_it(tmp_path, journal_path):
    axlpy.Journal(journal_path).close()
    src = _src(tmp_path)
    other = _hold_write_lock(journal_path)
    try:
        r = subprocess.run([sys.executable, "-m", "axlpy", "cp", "--progress", "none",
                            str(src), str(tmp_path / "out")],
                           capture_output=True, text=True,
                           env=dict(_env(), AXLPY_JOURNAL=str(journal_path),
                                    AXLPY_JOURNAL_BUSY_TIMEOUT="0.05"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "busy" in ln or "locked" in ln]
    assert len(lines) == 1, r.stderr
    assert str(journal_path) in lines[0]
