"""Stall detection: a running transfer that stopped making progress, and where it is stuck.

A :class:`Watchdog` thread per running transfer compares the transfer's last progress beat
(:attr:`axlpy.Progress.last_beat`: bytes written, extents and files committed) with its
``stall_timeout``. Past it, :func:`blocked_calls` finds the system call a thread is stuck
in without any help from the engines, and the watchdog journals a ``stall`` event (and
``stall-cleared`` once progress resumes). What abandoning a stuck thread means on disk is
in docs/design.md, "Stalls and abandoned threads".

Some facts about /proc and blocked threads (Linux):

- ``/proc/self/task/<tid>/syscall`` holds ``<nr> <arg0> ... <sp> <pc>`` while that thread
  is blocked in system call ``nr``, ``running`` while it runs, ``-1 ...`` when it is
  blocked outside a system call. A process may read its own threads' files whatever the
  ptrace policy (same thread group).
- ``arg0`` of read/write/fsync-like calls is the file descriptor, and of the ``*at``
  calls (``renameat``, ``unlinkat``, ``openat``) the directory's; ``/proc/self/fd/<fd>``
  names it from the kernel's dentry cache, without asking the (hung) filesystem.
- A thread blocked on a hung NFS/Lustre/FUSE server stays in that call until the server
  answers; a thread blocked in ``io_uring_enter`` waits for the ring, whose fd names no
  file — that stall is reported with no file.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EV_ABANDON", "EV_STALL", "EV_STALL_CLEARED", "StallInfo", "Watchdog",
           "blocked_calls", "stall_from_events"]

EV_STALL = "stall"
EV_STALL_CLEARED = "stall-cleared"
EV_ABANDON = "abandon"

# System call numbers whose first argument is a file or directory descriptor.
_SYSCALLS: dict[str, dict[int, str]] = {
    "x86_64": {0: "read", 1: "write", 3: "close", 5: "fstat", 17: "pread64",
               18: "pwrite64", 19: "readv", 20: "writev", 74: "fsync", 75: "fdatasync",
               77: "ftruncate", 257: "openat", 258: "mkdirat", 262: "newfstatat",
               263: "unlinkat", 264: "renameat", 277: "sync_file_range", 285: "fallocate",
               295: "preadv", 296: "pwritev", 316: "renameat2", 327: "preadv2",
               328: "pwritev2", 332: "statx", 426: "io_uring_enter"},
    "aarch64": {34: "mkdirat", 35: "unlinkat", 38: "renameat", 46: "ftruncate",
                47: "fallocate", 56: "openat", 57: "close", 63: "read", 64: "write",
                65: "readv", 66: "writev", 67: "pread64", 68: "pwrite64", 69: "preadv",
                70: "pwritev", 79: "newfstatat", 80: "fstat", 82: "fsync",
                83: "fdatasync", 276: "renameat2", 286: "preadv2", 287: "pwritev2",
                291: "statx", 426: "io_uring_enter"},
}
_NAMES = _SYSCALLS.get(platform.machine(), {})
# Friendlier names for the calls an operator recognises.
_SHORT = {"pread64": "read", "preadv": "read", "preadv2": "read", "readv": "read",
          "pwrite64": "write", "pwritev": "write", "pwritev2": "write", "writev": "write",
          "renameat": "rename", "renameat2": "rename", "unlinkat": "unlink",
          "mkdirat": "mkdir", "openat": "open"}


@dataclass(frozen=True)
class StallInfo:
    """A stall: the blocked call (``op``, None if none was found), its file or directory
    (``path``), the thread, and when progress stopped (``since_ns``, wall clock)."""

    op: str | None
    path: str | None
    thread: str | None
    since_ns: int

    @property
    def seconds(self) -> float:
        return max(0.0, (time.time_ns() - self.since_ns) / 1e9)

    def describe(self) -> str:
        what = (f"{self.op} of {self.path!r} blocked" if self.op and self.path
                else "no blocked system call on its files found")
        return f"no progress for {self.seconds:.0f}s ({what})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class BlockedCall:
    op: str
    path: str
    thread: str


def _thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def blocked_calls(under: Iterable[str]) -> list[BlockedCall]:
    """The system calls threads of this process are blocked in, on a file or directory
    equal to or below one of ``under``. Reads /proc only; never touches those files."""
    roots = [r.rstrip("/") for r in under if r]
    names = _thread_names()
    out: list[BlockedCall] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    me = threading.get_native_id()
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            continue
        if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
            continue
        op = _NAMES.get(int(fields[0]))
        if op is None:
            continue
        try:
            path = os.readlink(f"/proc/self/fd/{int(fields[1], 16)}")
        except (OSError, ValueError):
            continue
        if any(path == r or path.startswith(r + "/") for r in roots):
            out.append(BlockedCall(_SHORT.get(op, op), path,
                                   names.get(int(tid), f"tid {tid}")))
    return out


def stall_from_events(events: list[dict[str, Any]]) -> StallInfo | None:
    """The stall the event log says is current (the latest stall event is ``stall``)."""
    for e in reversed(events):
        if e["event"] == EV_STALL_CLEARED:
            return None
        if e["event"] == EV_STALL:
            try:
                d = json.loads(e.get("detail") or "{}")
                return StallInfo(d.get("op"), d.get("path"), d.get("thread"),
                                 int(d["since_ns"]))
            except (ValueError, KeyError, TypeError):
                return None
    return None


class Watchdog:
    """Watches one running transfer; ``on_change(info or None)`` is called from its thread
    when the transfer becomes stalled (or its blocked call changes) and when it moves again.

    ``last_beat()`` returns the monotonic time of the last progress; ``paths()`` the roots
    whose files count as the transfer's. Stops when ``done`` is set.
    """

    def __init__(self, name: str, timeout: float, last_beat: Callable[[], float],
                 paths: Callable[[], list[str]], done: threading.Event,
                 on_change: Callable[[StallInfo | None], None]) -> None:
        self.timeout = timeout
        self._last_beat = last_beat
        self._paths = paths
        self._done = done
        self._on_change = on_change
        self.current: StallInfo | None = None
        self._thread = threading.Thread(target=self._run, name=f"axlpy-watchdog:{name}",
                                        daemon=True)

    def start(self) -> None:
        if self.timeout > 0:
            self._thread.start()

    def join(self) -> None:
        """Wait for the watchdog thread to end (once ``done`` is set)."""
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> StallInfo | None:
        """Stalled now? Looks at /proc again, so the answer names the call blocked now."""
        idle = time.monotonic() - self._last_beat()
        if self.timeout <= 0 or idle < self.timeout:
            return None
        calls = blocked_calls(self._paths())
        since = time.time_ns() - int(idle * 1e9)
        if self.current is not None:
            since = self.current.since_ns
        c = calls[0] if calls else None
        return StallInfo(c.op if c else None, c.path if c else None,
                         c.thread if c else None, since)

    def _run(self) -> None:
        # A timer, not synchronisation: re-check a few times per timeout.
        interval = min(max(self.timeout / 4, 0.01), 30.0)
        while not self._done.wait(interval):
            info = self.check()
            prev = self.current
            if info is None and prev is None:
                continue
            if (info is None) != (prev is None) or (
                    info is not None and prev is not None
                    and (info.op, info.path) != (prev.op, prev.path)):
                self.current = info
                self._on_change(info)
