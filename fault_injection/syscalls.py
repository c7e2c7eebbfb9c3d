"""Sweep c: syscall-level faults with ``strace -e inject``.

For one syscall at a time, a traced baseline run counts that syscall's calls in the
child's main thread before and after the start marker (``access(MARKER)``), so Python's
own start-up is never hit. Each position N after the marker is then run again with
``inject=<syscall>:signal=SIGKILL:when=K+N`` (kill there), ``error=EIO`` and
``error=ENOSPC``. ``when`` counts per syscall and per thread, so this sweep runs the
``sync`` type (every call on the main thread).

Judgement: a killed run, or a run that reported a failure (nonzero exit, an error
printed), must recover with resume in a fresh process to a correct COMPLETED transfer.
A run that *succeeded* despite the injected error must be correct, and may not have
swallowed a failed fsync/fdatasync — except the errors SQLite ignores by design
(:data:`ALLOWED`). A failed ``syncfs`` (batched durability) may end in success only
through the per-file fallback: the run must make more fsyncs than the clean baseline.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from .child import ACKED_MARKER, MARKER
from .invariants import check
from .runner import (
    ROOT,
    CaseResult,
    base_env,
    cleanup,
    finish_check,
    recover,
    scratch,
)
from .scenarios import SCENARIOS, Layout, Scenario, build
from .strace_log import Call, parse, strace_unavailable_reason

__all__ = ["ALLOWED", "SYSCALLS", "syscall_cases"]

SYSCALLS = ("write", "pwrite64", "pwritev", "pwritev2", "fsync", "fdatasync", "syncfs",
            "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat",
            "openat")

#: Errors SQLite ignores by design, so a success after them is not a swallowed failure.
ALLOWED = {
    "sqlite-dirsync": "SQLite fsyncs the journal's directory after creating the -wal/"
                      "-journal file and ignores a failure (unixSync: 'ignore errors "
                      "on directory sync'; not every filesystem can fsync a directory)",
    "sqlite-close-checkpoint": "after the operation returned and was acknowledged, the "
                               "journal connection closes at exit and SQLite checkpoints; "
                               "a failed fsync there is ignored (sqlite3WalClose) because "
                               "every commit is already durable in the -wal file, which "
                               "the next open replays",
    "sqlite-side-file-unlink": "SQLite removes its -wal/-shm/-journal side files on "
                               "close and ignores a failed unlink (the file is recreated "
                               "or reset on the next open; its content is not trusted)",
}


def _allowed(c: Call, lay: Layout, after_ack: bool) -> str | None:
    jdir = os.path.dirname(lay.journal)
    p = c.paths[0] if c.paths else ""
    if after_ack and c.name in ("fsync", "fdatasync") and p in (lay.journal,
                                                                lay.journal + "-wal"):
        return "sqlite-close-checkpoint"
    if c.name in ("fsync", "fdatasync") and p == jdir:
        return "sqlite-dirsync"
    if c.name in ("unlink", "unlinkat") and p in (lay.journal + "-wal", lay.journal + "-shm",
                                                  lay.journal + "-journal"):
        return "sqlite-side-file-unlink"
    return None


def _strace(args: list[str], spec: dict[str, object], env: dict[str, str], log: str
            ) -> tuple[int, list[Call], str]:
    cmd = ["strace", "-f", "-y", "-qq", "-s", "48", "-e", "signal=none", *args, "-o", log,
           sys.executable, "-m", "fault_injection.child", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       check=False)
    with open(log, errors="replace") as f:
        return p.returncode, parse(f.read()), p.stdout + p.stderr


def _main_calls(calls: list[Call], syscall: str) -> tuple[int, list[Call]]:
    """(count before the marker, calls after it) of ``syscall`` on the marker's thread."""
    mk = next((c for c in calls if MARKER in c.raw), None)
    if mk is None:
        return 0, []
    mine = [c for c in calls if c.pid == mk.pid and c.name == syscall]
    before = sum(1 for c in mine if c.idx < mk.idx)
    return before, [c for c in mine if c.idx > mk.idx]


@functools.cache
def baseline(scen_name: str, syscall: str, planted: str | None) -> tuple[int, tuple[str, ...]]:
    scen = SCENARIOS[scen_name]
    root = scratch(f"sysbase-{syscall}")
    lay, _ = build(scen, root)
    rc, calls, out = _strace(["-e", f"trace={syscall},access"],
                             lay.spec(scen, "sync", "start"), base_env(planted=planted),
                             os.path.join(root, "strace.log"))
    if rc != 0:
        raise RuntimeError(f"traced baseline for {syscall} failed ({rc}): {out[-2000:]}")
    k, after = _main_calls(calls, syscall)
    cleanup(root, True)
    # The child's own acknowledgement (ack file and its directory) and its output to the
    # harness (stdout/stderr pipes, a terminal) are harness, not axlpy. The harness never
    # calls syncfs: a syncfs on the scenario root's fd is axlpy's batch sync.
    mine = (lay.ack, lay.root)
    return k, tuple("<harness>" if c.paths and c.name != "syncfs" and (
                        c.paths[0] in mine or c.paths[0].startswith(_NOT_FILES))
                    else "root" if c.paths and c.paths[0] == lay.root
                    else (os.path.basename(c.paths[0]) if c.paths else "?") for c in after)


#: strace -y names for descriptors that are not files axlpy writes (the child's output)
_NOT_FILES = ("pipe:", "socket:", "/dev/pts/", "/dev/null", "/dev/tty")


@dataclass
class SyscallCase:
    scen: Scenario
    syscall: str
    before: int
    pos: int
    label: str
    mode: str  # "kill", "EIO", "ENOSPC"
    planted: str | None = None

    @property
    def name(self) -> str:
        return f"{self.scen.name}/{self.syscall}#{self.pos}({self.label})/{self.mode}"

    def __call__(self) -> CaseResult:
        root = scratch("sys")
        lay, man = build(self.scen, root)
        env = base_env(planted=self.planted)
        how = "signal=SIGKILL" if self.mode == "kill" else f"error={self.mode}"
        inj = f"inject={self.syscall}:{how}:when={self.before + self.pos}"
        spec = functools.partial(lay.spec, self.scen, "sync")
        # a failed syncfs must be followed by the per-file fsync fallback: trace fsync too
        extra = ",fsync" if self.syscall == "syncfs" else ""
        rc, calls, out = _strace(["-e", f"trace={self.syscall},access{extra}", "-e", inj],
                                 spec("start"), env, os.path.join(root, "strace.log"))
        _k, after = _main_calls(calls, self.syscall)
        hit = after[self.pos - 1] if len(after) >= self.pos else None
        probs: list[str] = []
        if hit is None or not (hit.injected or (self.mode == "kill" and hit.ret == -1)):
            res = CaseResult("c:syscall", self.name, "not injected (run diverged)")
            res.skipped = "the call sequence differed from the baseline"
            cleanup(root, True)
            return res
        acked_at = next((c.idx for c in calls if ACKED_MARKER in c.raw), None)
        allowed = _allowed(hit, lay, acked_at is not None and hit.idx > acked_at)
        if rc == 0:
            outcome = "succeeded"
            probs += check(lay, man, "complete")
            if hit.name in ("fsync", "fdatasync") and self.mode != "kill":
                if allowed:
                    outcome += f" (allowed: {allowed})"
                else:
                    probs.append(f"a failed {hit.name} of {hit.paths} was swallowed: "
                                 "the run reported success")
            if hit.name == "syncfs" and self.mode != "kill":
                # the fallback fsyncs each temp (or directory) the syncfs was to cover: a
                # run with no more fsyncs than the clean baseline swallowed the failure
                clean = len(baseline(self.scen.name, "fsync", self.planted)[1])
                if len(_main_calls(calls, "fsync")[1]) <= clean:
                    probs.append("a failed syncfs was swallowed: no fsync beyond the clean "
                                 f"run's {clean} followed, and the run reported success")
        else:
            first = "killed" if rc in (-9, 137) else f"failed rc={rc}"
            if rc not in (-9, 137, 3, 4):
                probs.append(f"unexpected exit {rc}: {out[-1500:]}")
            rec = recover(lay, man, spec, "resume", env)
            probs += finish_check(lay, man, rec)
            outcome = f"{first}→{rec.outcome}"
        res = CaseResult("c:syscall", self.name, outcome, probs)
        cleanup(root, res.ok)
        return res


def syscall_cases(*, ci: bool = False, planted: str | None = None,
                  types: Iterable[str] = ("sync",), scen: str = "tree") -> list[object]:
    """CI: EIO on every fsync/fdatasync/syncfs and on data writes (pwritev2; every 8th
    pwrite64). Full: every listed syscall, every position (pwrite64 every 4th, openat
    every 2nd), each killed, EIO and ENOSPC."""
    why = strace_unavailable_reason()
    if why:
        r = CaseResult("c:syscall", "syscall sweep", "skipped")
        r.skipped = why
        return [lambda: r]
    names = ("fsync", "fdatasync", "syncfs", "pwritev", "pwritev2", "write", "pwrite64") if ci \
        else SYSCALLS
    modes = ("EIO",) if ci else ("kill", "EIO", "ENOSPC")
    stride = {"pwrite64": 8 if ci else 4, "openat": 2}
    out: list[object] = []
    for sc in names:
        k, labels = baseline(scen, sc, planted)
        if ci and sc == "write":
            continue  # plain write(2) is only the child's own output and ack
        for i in range(1, len(labels) + 1, stride.get(sc, 1)):
            if labels[i - 1] == "<harness>":
                continue
            for m in modes:
                out.append(SyscallCase(SCENARIOS[scen], sc, k, i, labels[i - 1], m, planted))
    return out
