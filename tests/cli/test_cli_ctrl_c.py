"""Ctrl-C is honoured every time, also on a loaded machine (issue 12, item 2).

The cause of the ignored presses: CPython runs signal handlers only in the main thread,
but the kernel may hand a process-directed SIGINT to any thread that does not block it.
When a busy copy thread took it, the C-level handler only set a flag; the main thread,
asleep in ``Transfer.wait()``, was never woken, and the KeyboardInterrupt surfaced only
once the copy had completed ("interrupted, but the copy had already completed", exit 0).
The fix blocks those signals in the transfer's threads.

Every run here goes through ``tests/cli/gated_axlpy.py``: the copy stops at a gate part-way
through the file, so the interrupt certainly arrives mid-copy, and the gate opens only
when the interrupt is honoured (a press that is not honoured leaves the copy stuck at the
gate; the run's timeout is only how that failure is reported).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from axlpy._config import DEFAULTS
from tests.cli.clitools import (
    REPO,
    STARTED,
    big_file,
    child_env,
    run_sub,
    temp_bytes,
    temps_under,
    wait_for,
)

MiB = 1 << 20
SIZE = 32 * MiB
GATE_AT = 8 * MiB
CHUNK = 64 * 1024
QUEUE_DEPTH = DEFAULTS["queue_depth"]  # 64
GATED = str(REPO / "tests" / "cli" / "gated_axlpy.py")


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    p = tmp_path_factory.mktemp("src") / "big.bin"
    return p, big_file(p, SIZE)


def _env(jpath: Path, gate: Path, mode: str) -> dict[str, str]:
    return child_env(jpath, GATE_DIR=str(gate), GATE_AT=str(GATE_AT), GATE_MODE=mode,
                     AXLPY_CHUNK_SIZE=str(CHUNK), AXLPY_EXTENT_SIZE=str(MiB))


def _check_interrupted(jpath: Path, name: str, out: Path, code: int, err: str,
                       data: bytes, ttype: str) -> None:
    assert code == 3, err
    assert "interrupted (DISPATCHED" in err and "to finish it:" in err, err
    assert not out.exists()  # nothing half-written under the final name
    st = json.loads(run_sub(jpath, "status", "--json", name).out)["transfer"]
    assert st["state"] == "DISPATCHED" and st["bytes_done"] < SIZE
    # Stopped at the next chunk: nothing was written past the gate except the writes
    # already handed to the queue when it closed, one queue depth (64) of chunks at most,
    # for every engine. (The uring engine used to also write every read it had in
    # flight, up to twice the depth: 8 MiB past the gate here.)
    written = temp_bytes(out.parent)
    assert written <= GATE_AT + QUEUE_DEPTH * CHUNK, (ttype, written)
    r = run_sub(jpath, "resume", name)
    assert r.code == 0, r.err
    assert out.read_bytes() == data
    assert temps_under(out.parent) == []


@pytest.mark.parametrize("ttype", ["default", "pthread"])
def test_sigint_taken_by_a_copy_thread_still_interrupts(jpath, tmp_path, src, ttype):
    """SIGINT aimed by the kernel at the copy thread (kill() with that thread's id makes
    the kernel try it first) still stops the copy: the thread blocks the signal, so the
    kernel hands it to the main thread."""
    path, data = src
    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "out" / "big.bin"
    p = subprocess.Popen([sys.executable, GATED, "cp", "--type", ttype, "--name", "c",
                          "--progress", "none", path, out], env=_env(jpath, gate, "sleep"),
                         cwd=REPO, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    STARTED.append(p)
    wait_for(lambda: (gate / "midway").exists() or p.poll() is not None, timeout=300,
             what="the copy to reach the gate")
    tid = int((gate / "midway").read_text())
    assert tid != p.pid  # a copy thread, not the main thread
    os.kill(tid, signal.SIGINT)
    _, err = p.communicate(timeout=300)
    _check_interrupted(jpath, "c", out, p.returncode, err.decode(), data, ttype)


def _ctrl_c_in_a_pty(jpath: Path, gate: Path, name: str, path: Path, out: Path,
                     ttype: str) -> tuple[int, str]:
    """`axlpy cp` on a real terminal (its controlling tty, foreground process group);
    once the copy is at the gate, type Ctrl-C (byte 0x03) on the terminal."""
    master, slave = pty.openpty()

    def child_setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen([sys.executable, GATED, "cp", "--type", ttype, "--name", name,
                          path, out], env=_env(jpath, gate, "spin"), cwd=REPO,
                         stdin=slave, stdout=slave, stderr=slave, preexec_fn=child_setup)
    STARTED.append(p)
    os.close(slave)
    screen: list[bytes] = []

    def drain() -> None:  # keep the terminal's buffer empty so the child never blocks
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not b:
                return
            screen.append(b)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_for(lambda: (gate / "midway").exists() or p.poll() is not None, timeout=300,
                 what="the copy to reach the gate")
        assert p.poll() is None, b"".join(screen)
        os.write(master, b"\x03")  # Ctrl-C, as typed
        code = p.wait(timeout=300)
        reader.join(60)
    finally:
        os.close(master)
    return code, b"".join(screen).decode(errors="replace")


def test_ctrl_c_in_a_terminal_is_honoured_every_time_on_a_loaded_machine(jpath, tmp_path,
                                                                         src):
    """10 presses in 10 runs, with two CPU-burning siblings and the copy thread itself
    burning CPU at the gate: every one stops the copy (exit 3) and resume completes it."""
    path, data = src
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(2)]
    STARTED.extend(burners)  # type: ignore[arg-type]
    try:
        for i in range(10):
            ttype = "default" if i % 2 == 0 else "pthread"
            gate = tmp_path / f"gate{i}"
            gate.mkdir()
            out = tmp_path / f"out{i}" / "big.bin"
            code, screen = _ctrl_c_in_a_pty(jpath, gate, f"t{i}", path, out, ttype)
            assert (gate / "interrupted").exists(), f"press {i} ({ttype}) not honoured"
            _check_interrupted(jpath, f"t{i}", out, code, screen, data, ttype)
    finally:
        for b in burners:
            b.kill()
            b.wait()
