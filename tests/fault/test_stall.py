"""Stall detection on a filesystem that stops answering: powerfs holds a write or an fsync
on command (a gate, released by the test), the transfer is reported STALLED naming the
file and the call, ``wait(raise_on_stall=True)`` raises, ``cancel`` returns while the call
is still blocked, and what the abandoned thread leaves is finished by a later process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import axlpy
from axlpy._stall import blocked_calls
from fault_injection.powerfs import PowerLossFS, fuse_unavailable_reason
from tests.cli.clitools import child_env, run_sub
from tests.conftest import temp_files

T = axlpy.TransferState
_UNAVAILABLE = fuse_unavailable_reason()
_FUSE_MARKS = [
    pytest.mark.requires_fuse,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"needs FUSE: {_UNAVAILABLE}"),
    pytest.mark.timeout(180),
]


def needs_fuse(f):  # type: ignore[no-untyped-def]
    for m in _FUSE_MARKS:
        f = m(f)
    return f


CHUNK = 65536
# Small enough for a test, and no false stall between chunks matters: every assertion
# below is made while the gate holds the call (see wait_blocked).
STALL = 0.3


@pytest.fixture
def fs(tmp_path: Path):
    with PowerLossFS(tmp_path / "backing", tmp_path / "mnt", timeout=60) as f:
        yield f
        f.release()  # never leave a caller stuck on a failed test


def _source(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "ckpt.bin"
    data = os.urandom(4 * CHUNK + 123)
    src.write_bytes(data)
    return src, data


@needs_fuse
@pytest.mark.parametrize("op", ["write", "fsync"])
def test_stalled_transfer_reported_then_cancel_abandons_it(
        tmp_path: Path, journal_path: Path, fs: PowerLossFS, op: str) -> None:
    src, _ = _source(tmp_path)
    dst = tmp_path / "mnt" / "out" / "ckpt.bin"
    fs.block(op)
    j = axlpy.Journal(journal_path)
    t = j.create("s", "pthread", chunk_size=CHUNK, extent_size=CHUNK, stall_timeout=STALL)
    t.add(src, dst)
    t.dispatch()
    held = fs.wait_blocked()
    assert [o for o, _ in held] == [op], held

    with pytest.raises(axlpy.StalledError) as info:
        t.wait(raise_on_stall=True)
    err = info.value
    assert err.transfer == "s" and err.seconds >= STALL
    assert err.op == ("write" if op == "write" else "fdatasync"), err
    assert err.path is not None and os.path.dirname(err.path) == str(dst.parent)
    assert ".axlpy" in os.path.basename(err.path)  # the temp beside the destination
    assert t.status().stall is not None and t.running

    # Another process sees it in `axlpy status` (journal only).
    r = run_sub(journal_path, "status", "s", "--json", env=child_env(journal_path))
    assert r.code == 0, r.err
    stalled = json.loads(r.out)["stalled"]
    assert stalled["op"] == err.op and stalled["path"] == err.path, stalled
    r = run_sub(journal_path, "status", "s", env=child_env(journal_path))
    assert "STALLED" in r.out and err.path in r.out, r.out

    # Cancel returns while the call is still held (the gate is closed until release()).
    done = threading.Event()
    threading.Thread(target=lambda: (t.cancel(), done.set()), daemon=True).start()
    assert done.wait(60), "cancel of a stalled transfer did not return"
    assert fs.wait_blocked(), "the call was released before cancel returned"
    events = [e["event"] for e in t.events()]
    assert "abandon" in events
    assert t.state is T.DISPATCHED and t.running  # owned here until the reaper is done

    fs.release()  # the stuck call returns; the fence stops the run; the reaper cancels
    t.wait()
    assert t.state is T.CANCELLED
    after = [e["event"] for e in t.events()]
    tail = after[after.index("abandon") + 1:]
    assert not {"staged", "published", "fail", "extents"} & set(tail), tail
    assert not dst.exists() and temp_files(tmp_path / "backing") == []
    j.close()


ABANDON_THEN_DIE = textwrap.dedent("""
    import sys, threading
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("s", "pthread", chunk_size=65536, extent_size=65536,
                 stall_timeout=float(sys.argv[4]))
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
    try:
        t.wait(raise_on_stall=True)
    except axlpy.StalledError as e:
        print("STALLED", e.op, flush=True)
    t.cancel()  # returns at once: the stuck thread is abandoned
    print("CANCEL-RETURNED", flush=True)
    threading.Event().wait()  # until the test kills this job (its wall-clock limit)
""")


@needs_fuse
@pytest.mark.parametrize("op", ["write", "fsync"])
def test_abandoned_then_process_died_later_resume_completes(
        tmp_path: Path, journal_path: Path, fs: PowerLossFS, op: str) -> None:
    src, data = _source(tmp_path)
    dst = tmp_path / "mnt" / "out" / "ckpt.bin"
    fs.block(op)
    p = subprocess.Popen([sys.executable, "-c", ABANDON_THEN_DIE, str(journal_path),
                          str(src), str(dst), str(STALL)], stdout=subprocess.PIPE,
                         text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("AXLPY")})
    try:
        assert p.stdout is not None
        lines = [p.stdout.readline(), p.stdout.readline()]
        assert lines[1] == "CANCEL-RETURNED\n", lines
        # SIGKILL while the call is still held: every other thread (the reaper too) dies at
        # once; the stuck one when its call returns, without running another line.
        p.kill()
    finally:
        fs.release()
        p.wait(120)
        if p.stdout is not None:
            p.stdout.close()
    with axlpy.Journal(journal_path) as j:
        t = j.open("s")
        events = [e["event"] for e in t.events()]
        assert "stall" in events and "abandon" in events
        assert t.state is T.DISPATCHED  # what a crash leaves; the owner is dead
        t.resume()
        t.wait()
        assert t.state is T.COMPLETED
    assert dst.read_bytes() == data
    assert temp_files(tmp_path / "backing") == []


def test_blocked_calls_names_a_thread_stuck_on_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A writer end first (O_RDWR never blocks on Linux), so the reader's read() blocks
    # until data comes instead of seeing end-of-file.
    wfd = os.open(fifo, os.O_RDWR)
    opened = threading.Event()
    result: list[bytes] = []

    def reader() -> None:
        fd = os.open(fifo, os.O_RDONLY)
        opened.set()
        result.append(os.read(fd, 1))  # blocks until the writer below writes
        os.close(fd)

    th = threading.Thread(target=reader, name="stuck-reader", daemon=True)
    th.start()
    assert opened.wait(30)
    try:
        # The reader is in read() or about to enter it; /proc shows it once it blocks.
        # Poll that condition (yielding the GIL so the reader can get there), no timing.
        deadline = time.monotonic() + 60
        calls = blocked_calls([str(tmp_path)])
        while not calls and time.monotonic() < deadline:
            th.join(0.001)
            calls = blocked_calls([str(tmp_path)])
        assert [(c.op, c.path, c.thread) for c in calls] == [
            ("read", str(fifo), "stuck-reader")]
        assert blocked_calls([str(tmp_path / "elsewhere")]) == []
    finally:
        os.write(wfd, b"x")
        os.close(wfd)
    th.join(30)
    assert result == [b"x"]

