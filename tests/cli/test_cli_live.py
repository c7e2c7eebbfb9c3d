"""The CLI against real running processes: Ctrl-C (SIGINT) and resume, kill -9 and
resume, ``status --watch`` following another process, ``gc`` next to a live copy, and
the progress bar in a real pseudo-terminal (absent when stderr is a pipe)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.cli.clitools import (
    SLOW_ENV,
    big_file,
    child_env,
    run_sub,
    start_sub,
    temp_bytes,
    temps_under,
    wait_for,
)

SIZE = 24 << 20  # with 1 KiB chunks: long enough to interrupt, short enough for CI


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes]:
    p = tmp_path / "big.bin"
    return p, big_file(p, SIZE)


@pytest.mark.parametrize("ttype", ["sync", "pthread"])
def test_ctrl_c_prints_resume_command_and_resume_completes(jpath, big, tmp_path, ttype):
    src, data = big
    dst = tmp_path / "out" / "big.bin"
    p = start_sub(jpath, "cp", "--type", ttype, "--name", "ctrlc", src, dst,
                  env=child_env(jpath, **SLOW_ENV), stderr=subprocess.PIPE)
    # Interrupt once at least one 1 MiB extent is durable, well before the end.
    wait_for(lambda: temp_bytes(tmp_path / "out") >= 2 << 20 or p.poll() is not None,
             what="the copy to get going")
    assert p.poll() is None, "the copy finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err_b = p.communicate(timeout=120)
    err = err_b.decode()
    assert p.returncode == 3, err
    assert "Traceback" not in err
    assert not dst.exists()  # nothing half-written under the final name
    m = re.search(r"to finish it:\s+(axlpy resume .*)", err)
    assert m, err
    assert re.search(r"to undo it:\s+axlpy cancel .*ctrlc", err)
    st = json.loads(run_sub(jpath, "status", "--json", "ctrlc").out)["transfer"]
    assert st["state"] == "DISPATCHED" and st["owner"]["alive"] is False
    assert 0 < st["bytes_done"] < SIZE  # verified extents kept for the resume
    argv = m.group(1).split()
    assert argv[:2] == ["axlpy", "resume"]
    r = run_sub(jpath, *argv[1:])  # exactly the printed command
    assert r.code == 0, r.err
    assert dst.read_bytes() == data
    assert temps_under(tmp_path / "out") == []
    assert run_sub(jpath, "verify", "ctrlc").code == 0


def test_kill_9_then_ls_status_resume_verify(jpath, big, tmp_path):
    src, data = big
    dst = tmp_path / "out"
    p = start_sub(jpath, "cp", "--type", "sync", "--name", "k9", src, dst,
                  env=child_env(jpath, **SLOW_ENV), stderr=subprocess.DEVNULL)
    wait_for(lambda: temp_bytes(tmp_path) >= 2 << 20 or p.poll() is not None,
             what="the copy to get going")
    p.kill()
    p.wait()
    r = run_sub(jpath, "ls")
    assert re.search(r"k9\s+sync\s+DISPATCHED\s+0/1 .* \(dead\)", r.out), r.out
    r = run_sub(jpath, "status", "k9")
    assert "axlpy resume" in r.out and "axlpy cancel" in r.out
    assert run_sub(jpath, "resume", "k9").code == 0
    assert dst.read_bytes() == data
    assert run_sub(jpath, "verify", "k9").code == 0


def _start_paused_copy(jpath: Path, src: Path, dst: Path, name: str,
                       ) -> subprocess.Popen[bytes]:
    """A SYNC copy that has started (a temp exists) and is then stopped with SIGSTOP:
    alive, owning its transfer, holding its temp open, making no progress until
    SIGCONT. So the tests do not depend on how fast the machine copies."""
    p = start_sub(jpath, "cp", "--type", "sync", "--name", name, src, dst,
                  env=child_env(jpath, **SLOW_ENV), stderr=subprocess.DEVNULL)
    wait_for(lambda: temps_under(dst.parent) != [] or p.poll() is not None,
             what="the copy to start")
    p.send_signal(signal.SIGSTOP)
    assert p.poll() is None, "the copy finished before it could be paused"
    return p


def test_watch_follows_another_process_to_completion(jpath, big, tmp_path):
    src, data = big
    p = _start_paused_copy(jpath, src, tmp_path / "o", "w")
    w = start_sub(jpath, "status", "--watch", "--json", "--interval", "0.1", "w",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert w.stdout is not None
    first = json.loads(w.stdout.readline())
    assert first["transfer"]["state"] == "DISPATCHED" and first["transfer"]["live"]
    p.send_signal(signal.SIGCONT)
    rest, err = w.communicate(timeout=120)
    assert p.wait(120) == 0
    assert w.returncode == 0, err
    docs = [first] + [json.loads(ln) for ln in rest.splitlines()]
    assert docs[-1]["transfer"]["state"] == "COMPLETED"
    done = [d["transfer"]["bytes_done"] for d in docs]
    assert done == sorted(done) and done[-1] == SIZE
    assert (tmp_path / "o").read_bytes() == data


def test_watch_exits_3_when_the_owner_dies(jpath, big, tmp_path):
    src, _ = big
    p = _start_paused_copy(jpath, src, tmp_path / "o", "wd")
    w = start_sub(jpath, "status", "--watch", "--interval", "0.1", "wd",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert w.stdout is not None
    assert b"wd: DISPATCHED" in w.stdout.readline()
    p.kill()
    p.wait()
    out, err = w.communicate(timeout=120)
    assert w.returncode == 3, err
    assert b"no process is running it any more" in out
    assert b"axlpy resume" in out


def test_gc_never_touches_a_live_transfer(jpath, big, tmp_path):
    src, data = big
    out = tmp_path / "o"
    p = _start_paused_copy(jpath, src, out, "live")
    r = run_sub(jpath, "gc", "--json", "--delete", "--include-resumable", "--min-age", "0",
                tmp_path)
    doc = json.loads(r.out)
    assert doc["temps"], "the live copy's temp should be found"
    assert [(t["class"], t["action"], t["transfer"]) for t in doc["temps"]] == [
        ("live", "keep", "live")]
    # With a journal that does not know it: kept because the copying process has it open.
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    r = run_sub(other / "j.db", "gc", "--json", "--delete", "--min-age", "0", tmp_path)
    doc = json.loads(r.out)
    assert [(t["class"], t["action"]) for t in doc["temps"]] == [("open", "keep")]
    p.send_signal(signal.SIGCONT)
    assert p.wait(120) == 0
    assert out.read_bytes() == data


def _run_in_pty(argv_env: dict[str, str], jpath: Path, *args: object) -> tuple[int, bytes]:
    """Run ``python -m axlpy ARGS`` with stdin/stdout/stderr on a pseudo-terminal (80x24)
    and return its exit code and everything it wrote to the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = start_sub(jpath, *map(str, args), env=argv_env, stdin=slave, stdout=slave,
                  stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: every slave end closed
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    return p.wait(60), b"".join(chunks)


def test_progress_bar_in_a_terminal(jpath, big, tmp_path):
    src, data = big
    env = child_env(jpath, AXLPY_CHUNK_SIZE="65536", AXLPY_EXTENT_SIZE="1048576")
    code, screen = _run_in_pty(env, jpath, "cp", "--type", "sync", "--name", "bar", src,
                               tmp_path / "o")
    assert code == 0, screen
    text = screen.decode()
    frames = [f for f in re.split(r"[\r\n]", text) if "ETA" in f]
    assert frames, text
    # bytes, files, rate, ETA, redrawn in place with \r and erase-to-end-of-line
    assert re.search(r"\[[#-]+\]\s+\d+% [\d.]+ \w+/24\.0 MiB  [01]/1 files  [\d.]+ \w+/s"
                     r"  ETA \d+:\d\d", frames[-1]), frames[-1]
    assert "\r" in text and "\x1b[K" in text
    assert "bar: COMPLETED: 1 file," in text
    assert (tmp_path / "o").read_bytes() == data


def test_no_progress_bar_when_piped(jpath, big, tmp_path):
    src, _ = big
    env = child_env(jpath, AXLPY_CHUNK_SIZE="65536", AXLPY_EXTENT_SIZE="1048576")
    r = run_sub(jpath, "cp", "--type", "sync", "--name", "pipe", src, tmp_path / "o",
                env=env)
    assert r.code == 0
    assert "\r" not in r.err and "\x1b" not in r.err and "ETA" not in r.err
    assert r.err.splitlines()[-1].startswith("axlpy: pipe: COMPLETED: 1 file,")


def test_quiet_progress_lines_when_piped(jpath, big, tmp_path):
    src, _ = big
    env = child_env(jpath, AXLPY_PROGRESS_INTERVAL="0.2", **SLOW_ENV)
    r = run_sub(jpath, "cp", "--type", "sync", "--name", "ln", src, tmp_path / "o", env=env)
    assert r.code == 0
    progress = [ln for ln in r.err.splitlines() if "ETA" in ln]
    assert progress, r.err
    assert all(re.fullmatch(r"axlpy: ln: +\d+% .* files .*/s  ETA .*", ln) for ln in progress)
    assert "\r" not in r.err
