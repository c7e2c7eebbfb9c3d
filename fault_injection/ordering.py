"""Sweep d: the ordering audit. Record one run's syscalls with ``strace -f -y`` and check
the publish protocol's order of writes, fsyncs, renames and journal commits.

A journal commit is an fsync/fdatasync of the journal's ``-wal`` file (WAL mode,
``synchronous=FULL``). The crash-point trace file (``AXLPY_CRASH_TRACE``) is written with
plain ``write(2)`` calls, so each crash point shows up in the syscall stream as a marker
right after the step it names; that is how a WAL commit is tied to what it records.

Rules checked (each violation is one problem):

1. every temp file is made durable after its last write and before its rename: by an
   fsync of the temp, or by a ``syncfs`` of its filesystem (batched durability: one
   ``syncfs`` covers every file on that filesystem written before it);
2. a journal commit followed by the ``stage.after_commit`` marker (STAGED) lies between a
   temp's fsync (or covering ``syncfs``) and its rename: the commit's WAL write began
   after that sync returned, and its WAL fsync returned before the marker;
3. the directory of every renamed file is fsynced after the rename and before the WAL
   commit that the next ``publish.after_commit`` marker (PUBLISHED) follows;
4. every directory created by ``mkdir`` has its parent fsynced (or a ``syncfs`` of its
   filesystem) after the mkdir and before the commit that records it in
   ``created_dirs`` (the next ``stage.after_mkdir_commit`` marker: batched, one record
   per batch of directories);
5. every ``*after_commit`` marker (and takeover/reset markers) is preceded by a WAL fsync
   after the last WAL write, i.e. the commit was durable before the code went on;
6. no temp is created before DISPATCHED is durable; move mode: no source is unlinked
   before RENAMED is durable, and source directories are fsynced before COMPLETED.

Commits are attributed per thread. Several threads commit to the journal (the io_uring
engine's sync threads journal extents while the driver thread journals STAGED and
PUBLISHED), and a marker is written after the journal lock is released, so in the merged
``strace -f`` stream another thread's next commit (its WAL write, its fsync still to come)
can sit between a commit and its marker. SQLite writes and fsyncs the WAL on the thread
that commits, and a crash point runs on the thread that committed, so the commit a marker
follows is the marker's own thread's last WAL write, and the fsync that made it durable is
a later WAL fsync on that same thread (one thread's calls are sequential, so that fsync
started after the write; an fsync on another thread may have started before it).
Lines are in completion order; ``strace`` prints a call's result before the thread
returns to user space, so a step another thread waited for comes first.

Filesystems are told apart by ``st_dev`` of each path (its nearest existing ancestor,
after the run). Not modelled: the kernel's own ordering (ext4 may make a rename durable
with the inode), data written through mmap, and io_uring requests (not visible to strace).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable

from .child import MARKER
from .invariants import check
from .runner import ROOT, CaseResult, base_env, cleanup, scratch, trace_counts
from .scenarios import SCENARIOS, Scenario, build
from .strace_log import Call, parse, strace_unavailable_reason

__all__ = ["audit", "ordering_cases", "record"]

TRACE_SET = ("openat,write,pwrite64,pwritev,pwritev2,writev,fsync,fdatasync,rename,renameat,"
             "renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,access,faccessat,faccessat2,"
             "syncfs")
_COMMIT_MARKERS = ("after_commit", "after_extent_commit", "after_takeover",
                   "after_reset_file")


def record(spec: dict[str, object], env: dict[str, str], log: str,
           timeout: float = 300) -> tuple[int, list[Call]]:
    """Run the child under strace; return its exit status and the calls after MARKER."""
    import json

    cmd = ["strace", "-f", "-y", "-qq", "-s", "64", "-e", f"trace={TRACE_SET}",
           "-e", "signal=none", "-o", log, sys.executable, "-m", "fault_injection.child",
           json.dumps(spec)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, check=False)
    with open(log, errors="replace") as f:
        calls = parse(f.read())
    for i, c in enumerate(calls):
        if MARKER in c.raw:
            calls = calls[i + 1:]
            break
    return p.returncode, calls


def audit(calls: list[Call], journal: str, trace: str, src_root: str,
          move: bool) -> list[str]:
    """Apply rules 1-6 to one recorded run; returns the violations."""
    from axlpy._staging import TEMP_PATTERN

    wal = journal + "-wal"
    bad: list[str] = []

    def is_temp(p: str) -> bool:
        return bool(TEMP_PATTERN.search(os.fsencode(os.path.basename(p))))

    markers: list[tuple[int, str, int]] = []  # (call index, name, thread)
    wal_writes: list[tuple[int, int]] = []  # (call index, thread)
    wal_syncs: list[int] = []
    wal_syncs_by: list[tuple[int, int]] = []  # (call index, thread)
    syncs: dict[str, list[int]] = {}
    last_data: dict[str, int] = {}
    renames: list[Call] = []
    mkdirs: list[Call] = []
    unlinks: list[Call] = []
    rmdirs: dict[str, int] = {}
    creates: list[Call] = []
    fs_syncs: list[tuple[int, int]] = []  # (call index, device) of each syncfs
    devs: dict[str, int] = {}

    def dev_of(path: str) -> int:
        """``st_dev`` of ``path`` or of its nearest existing ancestor."""
        if path not in devs:
            cur = path
            while cur and not os.path.exists(cur) and os.path.dirname(cur) != cur:
                cur = os.path.dirname(cur)
            devs[path] = os.stat(cur or "/").st_dev
        return devs[path]

    for c in calls:
        ok = c.ret >= 0
        p = c.paths[0] if c.paths else ""
        if c.name == "write" and p == trace and ok:
            markers.append((c.idx, c.data.strip(), c.pid))
        elif c.name in ("pwrite64", "write", "pwritev", "pwritev2", "writev") and ok:
            if p == wal:
                wal_writes.append((c.idx, c.pid))
            else:
                last_data[p] = c.idx
        elif c.name == "syncfs" and ok and p:
            fs_syncs.append((c.idx, dev_of(p)))
        elif c.name in ("fsync", "fdatasync") and ok:
            if p == wal:
                wal_syncs.append(c.idx)
                wal_syncs_by.append((c.idx, c.pid))
            syncs.setdefault(p, []).append(c.idx)
        elif c.name in ("rename", "renameat", "renameat2") and ok and len(c.paths) == 2:
            renames.append(c)
        elif c.name in ("mkdir", "mkdirat") and ok:
            mkdirs.append(c)
        elif c.name in ("unlink", "unlinkat") and ok:
            if "AT_REMOVEDIR" in c.raw:
                rmdirs[p] = c.idx
            else:
                unlinks.append(c)
        elif c.name == "rmdir" and ok:
            rmdirs[p] = c.idx
        elif c.name == "openat" and ok and "O_CREAT" in c.raw and is_temp(p):
            creates.append(c)
            last_data.setdefault(p, c.idx)

    def covering(path: str) -> list[int]:
        """Calls that made ``path``'s data or entries durable: its fsyncs and every
        syncfs of its filesystem, in order."""
        d = dev_of(path)
        return sorted([*syncs.get(path, ()), *(i for i, dv in fs_syncs if dv == d)])

    def synced_between(path: str, lo: int, hi: int) -> bool:
        return any(lo < i < hi for i in covering(path))

    def wal_commit_between(lo: int, hi: int) -> bool:
        return any(lo < i < hi for i in wal_syncs)

    def next_marker(name: str, after: int) -> int | None:
        return next((i for i, n, _ in markers if n == name and i > after), None)

    def commit_before(i: int, tid: int) -> tuple[int | None, bool]:
        """The commit marker ``i`` (on thread ``tid``) follows: the thread's last WAL write
        before it (None: none), and whether a WAL fsync on that thread lies in between."""
        lw = max((w for w, t in wal_writes if t == tid and w < i), default=None)
        if lw is None:
            return None, False
        return lw, any(lw < s < i for s, t in wal_syncs_by if t == tid)

    # 5: every commit marker is preceded by a durable WAL commit (on its own thread).
    for i, n, tid in markers:
        if not n.endswith(_COMMIT_MARKERS):
            continue
        lw, durable = commit_before(i, tid)
        if lw is None:
            # the thread wrote no WAL itself: hold it to the last write of any thread
            lw = max((w for w, _ in wal_writes if w < i), default=None)
            durable = lw is None or wal_commit_between(lw, i)
        if not durable:
            bad.append(f"rule 5: {n} reached but the WAL written at call {lw} was not "
                       "fsynced (commit not durable)")
    # 1 + 2: temps fsynced, then STAGED commit, then rename.
    for r in renames:
        old, new = r.paths
        if not is_temp(old):
            continue
        d = last_data.get(old)
        if d is None:
            continue  # temp staged by an earlier run (resume): not this run's order
        fs = [i for i in covering(old) if d <= i < r.idx]
        if not fs:
            bad.append(f"rule 1: {os.path.basename(old)} renamed to {new} without an fsync "
                       "of the temp (or a syncfs of its filesystem) after its last write")
            continue
        # Any STAGED commit that began after the temp's fsync returned and was durable
        # before its marker (not merely the first marker after the fsync: that one may
        # close a commit another group made while this temp was being fsynced).
        staged = False
        for i, n, tid in markers:
            if n == "stage.after_commit" and fs[-1] < i < r.idx:
                lw, durable = commit_before(i, tid)
                if lw is not None and lw > fs[-1] and durable:
                    staged = True
                    break
        if not staged:
            bad.append(f"rule 2: {new} renamed before its STAGED record was committed")
    # 3: directory fsync after rename, before the PUBLISHED commit.
    for r in renames:
        old, new = r.paths
        if not is_temp(old):
            continue
        ddir = os.path.dirname(new)
        m = next_marker("publish.after_commit", r.idx)
        if m is None:
            bad.append(f"rule 3: no PUBLISHED commit after renaming {new}")
            continue
        w = max((i for i in wal_syncs if r.idx < i < m), default=None)
        if w is None or not synced_between(ddir, r.idx, w):
            bad.append(f"rule 3: directory {ddir} not fsynced between the rename of "
                       f"{os.path.basename(new)} and the PUBLISHED commit")
    # 4: mkdir's parent durable (fsync, or syncfs of its filesystem) before the commit
    # that records the directory in created_dirs: the WAL write of the commit the next
    # stage.after_mkdir_commit marker follows (batched: one record per batch).
    for mk in mkdirs:
        x = mk.paths[0]
        parent = os.path.dirname(x)
        rec = next(((i, t) for i, n, t in markers
                    if n == "stage.after_mkdir_commit" and i > mk.idx), None)
        if rec is None:
            bad.append(f"rule 4: new directory {x} never recorded in created_dirs")
            continue
        lw, _ = commit_before(*rec)
        if lw is None or not synced_between(parent, mk.idx, lw):
            bad.append(f"rule 4: parent {parent} of new directory {os.path.basename(x)} not "
                       "fsynced (nor its filesystem synced) before the commit recording it")
    # 6: DISPATCHED before temps; RENAMED before source deletes; source dirs fsynced.
    disp = next_marker("dispatch.after_commit", -1)
    for c in creates:
        if disp is None or c.idx < disp:
            bad.append(f"rule 6: temp {c.paths[0]} created before DISPATCHED was durable")
            break
    if move:
        ren = next_marker("renamed.after_commit", -1)
        done = next_marker("complete.after_commit", -1) or 10**12
        src_unl = [u for u in unlinks if u.paths[0].startswith(src_root + "/")]
        for u in src_unl:
            if ren is None or u.idx < ren:
                bad.append(f"rule 6: source {u.paths[0]} deleted before RENAMED was durable")
        w = max((i for i in wal_syncs if i < done), default=0)
        for parent0 in {os.path.dirname(u.paths[0]) for u in src_unl}:
            last_i = max(u.idx for u in src_unl if os.path.dirname(u.paths[0]) == parent0)
            pdir = parent0
            while pdir in rmdirs and rmdirs[pdir] > last_i:
                # the directory itself was removed: its parent's entry is what must last
                last_i, pdir = rmdirs[pdir], os.path.dirname(pdir)
            if not synced_between(pdir, last_i, w):
                bad.append(f"rule 6: source directory {pdir} not fsynced after deletes "
                           "before COMPLETED")
    return bad


class OrderCase:
    def __init__(self, scen: Scenario, ttype: str, planted: str | None) -> None:
        self.scen, self.ttype, self.planted = scen, ttype, planted
        self.name = f"{scen.name}/{ttype}/start"

    def __call__(self) -> CaseResult:
        root = scratch("order")
        lay, man = build(self.scen, root)
        env = base_env({"AXLPY_CRASH_TRACE": lay.trace}, self.planted)
        rc, calls = record(lay.spec(self.scen, self.ttype, "start"), env,
                           os.path.join(root, "strace.log"))
        probs = [] if rc == 0 else [f"traced run exited {rc}"]
        if not calls:
            probs.append("no syscalls recorded after the start marker")
        probs += audit(calls, lay.journal, lay.trace, lay.src, self.scen.move)
        if rc == 0:
            probs += check(lay, man, "complete")
        res = CaseResult("d:order", self.name, f"{len(calls)} calls audited", probs,
                         reached=set(trace_counts(lay.trace)))
        cleanup(root, res.ok)
        return res


def ordering_cases(scens: Iterable[str], types: Iterable[str], *,
                   planted: str | None = None) -> list[functools.partial[CaseResult]
                                                      | OrderCase]:
    why = strace_unavailable_reason()
    if why:
        return [functools.partial(_skip, why)]
    return [OrderCase(SCENARIOS[s], t, planted) for s in scens for t in types]


def _skip(why: str) -> CaseResult:
    r = CaseResult("d:order", "ordering audit", "skipped")
    r.skipped = why
    return r
