"""Ownership leases: which process works on a transfer, and whether it still does.

The owner of a transfer is recorded in its journal row: pid, host, process start (the boot
id plus the start time from ``/proc/<pid>/stat``, so a recycled pid or a rebooted host is
not mistaken for it), and a **lease**: the time of its last heartbeat and how long the
lease lasts. While a transfer runs, this process renews the lease (a daemon thread,
:data:`HEARTBEAT`, every fifth of the lease); a lease not renewed for its whole length is
dead wherever its host is. Liveness is decided, in order:

1. owner on this host (same host id): the pid with the same start is alive, otherwise
   dead — exact, whatever the lease says;
2. owner on another host: lease expired -> dead; lease fresh -> alive as far as we can
   tell (``force`` takes over); no lease recorded (a transfer of schema 1 before its
   migration filled one in) -> unknown, like a fresh lease.

The host identity is ``$AXLPY_HOST_ID`` if set (tests and containers that share a
hostname), else the hostname; the clock is :data:`clock` (injectable in tests).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["DEFAULT_LEASE_S", "HEARTBEAT", "Owner", "clock", "host_id"]

#: A lease lasts this long unless the transfer's ``lease_timeout`` option says otherwise:
#: minutes, so a loaded node or a long fsync never loses its lease while alive.
DEFAULT_LEASE_S = 300.0
HOST_ENV = "AXLPY_HOST_ID"

#: Wall-clock nanoseconds (heartbeats are compared across hosts). Tests replace it.
clock: Callable[[], int] = time.time_ns


def host_id() -> str:
    # uname's nodename is what gethostname(2) returns on Linux, without importing socket
    # (start-up time of every command)
    return os.environ.get(HOST_ENV) or os.uname().nodename


def now_ns() -> int:
    return clock()


@dataclass(frozen=True)
class Owner:
    """Who works on a transfer: a process on a host, identified beyond pid reuse, with
    its lease (``heartbeat_ns`` + ``lease_ns``; not part of the identity)."""

    pid: int
    host: str
    start: str  # boot id + process start time, so a recycled pid is not mistaken for it
    heartbeat_ns: int | None = field(default=None, compare=False)
    lease_ns: int | None = field(default=None, compare=False)

    @classmethod
    def me(cls, lease_s: float = DEFAULT_LEASE_S) -> Owner:
        return cls(os.getpid(), host_id(), process_start(os.getpid()), now_ns(),
                   int(lease_s * 1e9))

    @property
    def boot(self) -> str:
        """The boot id of the owner's host when it took ownership."""
        return self.start.split(":", 1)[0]

    def lease_age_s(self) -> float | None:
        """Seconds since the last heartbeat, or None if no lease is recorded."""
        if self.heartbeat_ns is None:
            return None
        return max(0.0, (now_ns() - self.heartbeat_ns) / 1e9)

    def lease_expired(self) -> bool | None:
        if self.heartbeat_ns is None or self.lease_ns is None:
            return None
        return now_ns() - self.heartbeat_ns > self.lease_ns

    def alive(self) -> bool | None:
        """True/False if decidable from here; None if it runs on another host with a
        lease that has not expired (or none recorded)."""
        if self.host != host_id():
            return False if self.lease_expired() else None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return process_start(self.pid) == self.start

    def describe(self) -> str:
        """``pid N on host H`` plus the lease's age, for messages."""
        age = self.lease_age_s()
        lease = "" if age is None or self.lease_ns is None else (
            f", lease renewed {age:.0f}s ago, expires after {self.lease_ns / 1e9:.0f}s")
        return f"pid {self.pid} on host {self.host}{lease}"


def process_start(pid: int) -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return f"{boot}:{int(fields[19])}"
    except (OSError, IndexError, ValueError):
        return ""


class _Renewable(Protocol):
    def renew(self, tid: int, owner: Owner) -> bool: ...


class Heartbeat:
    """Renews the lease of every transfer this process is running, every fifth of the
    shortest lease. One daemon thread per process, started on first use; :meth:`beat`
    renews once, now (tests call it instead of waiting).

    The first renewal comes one interval after :meth:`hold` (the claim or dispatch that
    made us owner has just written the heartbeat): a renewal is a journal commit of its
    own, and a short transfer should not have any between its step commits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], tuple[Any, int, Owner]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._due = 0.0  # time.monotonic() of the next renewal
        self.beats = 0

    def hold(self, db: _Renewable, tid: int, owner: Owner) -> None:
        with self._lock:
            first = not self._held
            self._held[(id(db), tid)] = (db, tid, owner)
            due = time.monotonic() + (owner.lease_ns or int(DEFAULT_LEASE_S * 1e9)) / 5e9
            self._due = due if first else min(self._due, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="axlpy-lease",
                                                daemon=True)
                self._thread.start()
        self._wake.set()  # the next renewal may be due sooner

    def drop(self, db: _Renewable, tid: int) -> None:
        with self._lock:
            self._held.pop((id(db), tid), None)

    def _interval_locked(self) -> float:
        leases = [o.lease_ns for _, _, o in self._held.values() if o.lease_ns]
        return max(0.05, min(leases, default=int(DEFAULT_LEASE_S * 1e9)) / 5e9)

    def beat(self) -> int:
        """Renew every held lease now; returns how many were renewed."""
        with self._lock:
            held = list(self._held.values())
        n = 0
        for db, tid, owner in held:
            try:
                n += bool(db.renew(tid, owner))
            except Exception:  # a closed journal, a busy disk: the next beat tries again
                continue
        self.beats += 1
        return n

    def _run(self) -> None:
        while True:
            with self._lock:
                due = self._due
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            with self._lock:
                if not self._held or time.monotonic() < self._due:
                    if not self._held:
                        self._due = time.monotonic() + self._interval_locked()
                    continue
                self._due = time.monotonic() + self._interval_locked()
            self.beat()


HEARTBEAT = Heartbeat()
