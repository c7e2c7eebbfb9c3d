"""Shared fixtures: a private journal directory, source trees on real files."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import axlpy
from axlpy.io import IOOp, IOQueue, IORequest, PosixIOQueue, open_queue, probe_queue

# The real probe, run once (probe_queue is cached; io_uring is probed in a child process
# that checks the liburing version, opens a ring and moves bytes through it).
URING_UNAVAILABLE = probe_queue("uring")
#: the one mark for anything that needs a working io_uring (a decorator, ``marks=`` or
#: ``pytestmark``); :func:`pytest_collection_modifyitems` skips what carries it when the
#: probe fails, so a test cannot have the mark without the skip or the other way round.
requires_uring = pytest.mark.requires_uring


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if URING_UNAVAILABLE is None:
        return
    skip = pytest.mark.skip(reason=f"io_uring unavailable: {URING_UNAVAILABLE}")
    for item in items:
        if item.get_closest_marker("requires_uring") is not None:
            item.add_marker(skip)


# -- a small tmpfs (disk-full tests) ---------------------------------------------------------


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``make_tmpfs(size)`` mounts a fresh tmpfs of ``size`` (``"1m"``, mode 0700) under
    ``tmp_path`` and returns its path; each is unmounted after the test. Needs root:
    skips (with the mount's own error) where it cannot mount."""
    mounted: list[Path] = []

    def make(size: str = "1m") -> Path:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                            "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    try:
        yield make
    finally:
        for mnt in mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def resize_tmpfs(mnt: Path, size: str) -> None:
    """Remount a :func:`make_tmpfs` file system with another size (the disk is freed)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


# -- gates: wait for a real condition, never for a while ---------------------------------------

#: syscalls a thread waiting for IO completions sits in (poll(2)/ppoll(2) on the
#: queue's eventfd, io_uring_enter(2)), by machine
_WAIT_SYSCALLS = {"x86_64": {7, 271, 426}, "aarch64": {73, 426}}


def blocked_waiting_for_io(native_id: int) -> bool:
    """Is thread ``native_id`` of this process in the kernel waiting for IO now (in a
    poll or io_uring_enter system call, not waiting for the GIL, which is a futex)?
    Read from /proc/self/task/<tid>/syscall."""
    waits = _WAIT_SYSCALLS.get(platform.machine())
    if waits is None:
        pytest.skip(f"no syscall table for {platform.machine()}")
    try:
        with open(f"/proc/self/task/{native_id}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return first.isdigit() and int(first) in waits


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Spin (yielding the CPU) until ``cond()`` holds; fail after ``timeout`` seconds, a
    bound for a broken build, not a synchronisation."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        os.sched_yield()


def pause_gate(t: axlpy.Transfer) -> threading.Event:
    """An event set once ``t`` (running in this process) has journaled PAUSED."""
    paused = threading.Event()
    db = t.journal.db
    journal_pause = db.pause

    def pause(*args: Any, **kwargs: Any) -> bool:
        moved = journal_pause(*args, **kwargs)  # PAUSED is durable when this returns
        paused.set()
        return moved

    db.pause = pause  # type: ignore[method-assign]
    return paused


def type_params(types):
    """Transfer types as pytest params, the ``uring`` one gated on io_uring."""
    return [pytest.param(t, marks=requires_uring if t == "uring" else ()) for t in types]


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A journal path in a private (0700) directory, as axlpy requires."""
    d = tmp_path / "journal"
    d.mkdir(mode=0o700)
    return d / "journal.db"


@pytest.fixture
def journal(journal_path: Path) -> Iterator[axlpy.Journal]:
    j = axlpy.Journal(journal_path)
    yield j
    j.close()


def copy_completed(journal_path: Path, name: str, ttype: str, src: Path, dst: Path,
                   **opts: Any) -> list[dict[str, Any]]:
    """Create transfer ``name`` (type ``ttype``, options ``opts``) of ``src`` -> ``dst`` in
    the journal at ``journal_path``, dispatch it, wait for it and assert it COMPLETED.
    Returns its events (read before the journal is closed again)."""
    with axlpy.Journal(journal_path) as j:
        t = j.create(name, ttype, **opts)
        t.add(src, dst)
        t.dispatch()
        t.wait()
        assert t.state is axlpy.TransferState.COMPLETED
        return t.events()


def resume_completed(journal_path: Path, name: str) -> list[dict[str, Any]]:
    """Open transfer ``name`` in the journal at ``journal_path``, resume it, wait for it
    and assert it COMPLETED. Returns its events."""
    with axlpy.Journal(journal_path) as j:
        t = j.open(name)
        t.resume()
        t.wait()
        assert t.state is axlpy.TransferState.COMPLETED
        return t.events()


def write_tree(root: Path, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ()) -> None:
    """Create ``files`` (relative path -> content) and empty directories under ``root``."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for d in empty_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)


def tree_bytes(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: files -> content, directories -> None."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def temp_files(root: Path) -> list[str]:
    """axlpy temp files anywhere under ``root``."""
    from axlpy._staging import TEMP_PATTERN

    found = []
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            if TEMP_PATTERN.search(os.fsencode(f)):
                found.append(os.path.join(dirpath, f))
    return found


class _DelegatingQueue(IOQueue):
    """Hands every queue call to ``self.inner``; subclasses hook ``prep``."""

    inner: IOQueue

    def prep(self, request: IORequest) -> None:
        self.inner.prep(request)

    def accepts(self, request: IORequest) -> bool:
        return self.inner.accepts(request)

    def submit(self) -> int:
        return self.inner.submit()

    def reap(self, min_complete=1, timeout=None):
        return self.inner.reap(min_complete, timeout)

    @property
    def depth(self) -> int:
        return self.inner.depth

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    def close(self) -> None:
        self.inner.close()


class PosixWrapperQueue(_DelegatingQueue):
    """A real POSIX queue behind a hook: subclasses override ``prep`` to count, gate or
    pace requests and then call ``super().prep``. Built as ``queue_factory(depth)``."""

    name = "posix-wrapper"
    thread_safe = True

    def __init__(self, depth: int) -> None:
        self.inner = PosixIOQueue(depth)


def start_process_threads(j: axlpy.Journal, tmp: Path) -> None:
    """Run one tiny SYNC transfer in ``j`` (under ``tmp``), then free it, so the threads
    that live as long as the process (the lease heartbeat, one per process, started by
    the first transfer that runs: docs/design.md) exist before a test counts threads;
    any thread a transfer itself leaves behind is still counted."""
    (tmp / "warm-src").write_bytes(b"w")
    t = j.create("warm-up", "sync")
    t.add(tmp / "warm-src", tmp / "warm-dst")
    t.dispatch()
    t.free()


class WriteGate:
    """Holds a transfer's writes in mid-flight: once ``after`` bytes have gone through
    its queues, every further write waits until ``release`` is set. So a cancel (or
    whatever the test does) certainly arrives while the transfer is copying, however
    fast or loaded the machine, and the transfer cannot complete before it.

    Pass ``queue_factory=gate.queue``; each queue wraps a real one opened by name
    (``inner``: ``"uring"`` keeps the URING engine on a real ring). ``held`` is set when
    the first write is held. For a cancel, hold until the transfer is told to stop:
    ``gate.release = t._cancel`` (set by ``cancel()`` before it waits for the run).
    A gate never released lets writes go after ``timeout`` seconds and says so in
    ``timed_out`` (the test then fails on its own assertions instead of hanging).
    """

    def __init__(self, after: int, inner: str = "posix", timeout: float = 300.0) -> None:
        self.after = after
        self.inner = inner
        self.timeout = timeout
        self.release = threading.Event()
        self.held = threading.Event()
        self.timed_out = False
        self.passed = 0  # bytes written before the gate closed
        self._lock = threading.Lock()

    def queue(self, depth: int) -> IOQueue:
        return _GatedQueue(self, open_queue(self.inner, depth=depth))

    def before(self, request: IORequest) -> None:
        if request.op is not IOOp.WRITE:
            return
        with self._lock:
            closed = self.held.is_set() or self.passed + request.length > self.after
            if closed:
                self.held.set()
            else:
                self.passed += request.length
        if closed and not self.release.wait(self.timeout):
            self.timed_out = True


class _GatedQueue(_DelegatingQueue):
    """A real queue (any kind) whose writes first pass :meth:`WriteGate.before`."""

    name = "gated"

    def __init__(self, gate: WriteGate, inner: IOQueue) -> None:
        self.gate = gate
        self.inner = inner
        self.thread_safe = inner.thread_safe  # type: ignore[misc]

    def prep(self, request: IORequest) -> None:
        self.gate.before(request)
        self.inner.prep(request)

