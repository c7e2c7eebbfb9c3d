"""Sweep g: bad inputs during a transfer.

- the source shrinks, grows, is rewritten or vanishes while it is being copied (the child
  stops itself at ``stage.after_write``; the harness mutates the source and continues it);
- the destination directory is removed, or made immutable (``chattr +i``: we run as root,
  so a read-only mode would not stop us), while files are being copied;
- the journal is truncated, zeroed or filled with garbage (or its WAL is) between a crash
  and the resume.

Expected: a reported failure naming the problem (or, for a source that vanished after it
was opened, a correct copy of what was there at dispatch), never a partial file under a
final name, and afterwards cancel (or, once the damage is undone, resume) ends cleanly.
A damaged journal gives a clear JournalError and nothing is overwritten: the journal and
the destination tree are byte-identical before and after the refused resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

from .invariants import check, check_crashed, temps_under
from .runner import (
    ROOT,
    CaseResult,
    ChildResult,
    base_env,
    cleanup,
    finish_check,
    recover,
    run_child,
    scratch,
)
from .scenarios import EXTENT, SCENARIOS, Layout, Scenario, build

__all__ = ["bad_input_cases"]

BIG = Scenario("big", (("big", 4 * EXTENT + 3), ("after", 10)), tree=False)


def _run_paused(spec: dict[str, object], env: dict[str, str], flag: str,
                mutate: Callable[[], None], timeout: float = 120) -> ChildResult:
    """Run the child until it stops itself at the pause point, mutate, continue it."""
    p = subprocess.Popen([sys.executable, "-m", "fault_injection.child", json.dumps(spec)],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + timeout
    paused = False
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.exists(flag):
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    paused = True
                    break
        time.sleep(0.01)
    if paused:
        try:
            mutate()
        finally:
            os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=timeout)
    res = None
    for line in reversed(out.strip().splitlines()):
        try:
            res = json.loads(line)
            break
        except ValueError:
            continue
    if not paused:
        err = "child never paused\n" + err
    return ChildResult(p.returncode, res, out, err)


def _tree_hash(*roots: str) -> str:
    h = hashlib.sha256()
    for root in roots:
        for dp, dns, fns in sorted(os.walk(root)):
            dns.sort()
            for n in sorted(fns):
                p = os.path.join(dp, n)
                h.update(p.encode())
                with open(p, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def source_case(how: str) -> Callable[[], CaseResult]:
    def run() -> CaseResult:
        root = scratch("bad-src")
        lay, man = build(BIG, root)
        flag = os.path.join(root, "paused")
        big = os.path.join(lay.src, "big")
        spec = functools.partial(lay.spec, BIG, "sync")
        env = base_env()

        def mutate() -> None:
            if how == "shrinks":
                os.truncate(big, 1000)
            elif how == "grows":
                with open(big, "ab") as f:
                    f.write(b"more")
            elif how == "rewritten":
                with open(big, "r+b") as f:
                    f.write(b"\0" * 4096)
            elif how == "vanishes":
                os.unlink(big)

        r = _run_paused(spec("start", pause={"at": "stage.after_write", "hit": 2,
                                             "file": flag}), env, flag, mutate)
        probs = check_crashed_dst(lay, man)
        if r.ok:
            outcome = "completed"
            if how != "vanishes":
                probs.append(f"source {how} mid-copy but the transfer reported success")
            probs += [p for p in check(lay, man, "complete") if "source" not in p]
        else:
            outcome = f"failed: {(r.result or {}).get('error_type')!s}"
            msg = str((r.result or {}).get("error"))
            if r.rc != 3 or "big" not in msg:
                probs.append(f"expected a clear error naming the file: {r.brief()}")
            rec = recover(lay, man, spec, "cancel", env)
            outcome += f"→{rec.outcome}"
            probs += [p for p in finish_check(lay, man, rec) if "source" not in p]
        res = CaseResult("g:bad-input", f"source {how} mid-copy", outcome, probs)
        cleanup(root, res.ok)
        return res

    return run


def check_crashed_dst(lay: Layout, man: dict[str, object]) -> list[str]:
    return [p for p in check_crashed(lay, man) if p.startswith("final name")]


def dest_case(how: str) -> Callable[[], CaseResult]:
    def run() -> CaseResult:
        scen = SCENARIOS["tree"]
        root = scratch("bad-dst")
        lay, man = build(scen, root)
        flag = os.path.join(root, "paused")
        spec = functools.partial(lay.spec, scen, "sync")
        env = base_env()
        target = os.path.join(lay.dst, "a")

        def mutate() -> None:
            if how == "removed":
                shutil.rmtree(target)
            else:
                subprocess.run(["chattr", "+i", target], check=True, capture_output=True)

        if how == "immutable":
            probe = os.path.join(root, "probe")
            os.mkdir(probe)
            ok = subprocess.run(["chattr", "+i", probe], capture_output=True, text=True,
                                check=False)
            subprocess.run(["chattr", "-i", probe], capture_output=True, check=False)
            if ok.returncode != 0:
                res = CaseResult("g:bad-input", "destination immutable mid-copy", "skipped")
                res.skipped = f"chattr +i unsupported here: {ok.stderr.strip()}"
                return res
        r = _run_paused(spec("start", pause={"at": "stage.after_write", "hit": 2,
                                             "file": flag}), env, flag, mutate)
        probs = check_crashed_dst(lay, man)
        outcome = "completed" if r.ok else f"failed: {(r.result or {}).get('error_type')}"
        if how == "immutable":
            subprocess.run(["chattr", "-i", target], capture_output=True, check=False)
        if r.ok and how == "immutable":
            probs.append("an immutable destination directory did not stop the transfer")
        if not r.ok and r.rc != 3:
            probs.append(f"not a clear error: {r.brief()}")
        rec = recover(lay, man, spec, "resume", env)
        outcome += f"→{rec.outcome}"
        probs += finish_check(lay, man, rec)
        res = CaseResult("g:bad-input", f"destination {how} mid-copy", outcome, probs)
        cleanup(root, res.ok)
        return res

    return run


def journal_case(how: str) -> Callable[[], CaseResult]:
    def run() -> CaseResult:
        scen = SCENARIOS["tree"]
        root = scratch("bad-journal")
        lay, man = build(scen, root)
        spec = functools.partial(lay.spec, scen, "sync")
        env = base_env()
        r = run_child(spec("start"), dict(env, AXLPY_CRASH_AT="publish.after_commit"))
        probs: list[str] = [] if r.killed else [f"start not killed: {r.brief()}"]
        target = lay.journal + ("-wal" if how.startswith("wal") else "")
        size = os.path.getsize(target) if os.path.exists(target) else 0
        with open(target, "r+b") as f:
            if how.endswith("truncated"):
                f.truncate(size // 2)
            elif how.endswith("zeroed"):
                f.write(b"\0" * size)
            else:
                f.write(os.urandom(size))
        before = _tree_hash(lay.dst), _tree_hash(os.path.dirname(lay.journal))
        rr = run_child(spec("resume"), env)
        after = _tree_hash(lay.dst), _tree_hash(os.path.dirname(lay.journal))
        et = (rr.result or {}).get("error_type")
        if rr.ok:
            outcome = "resumed"
            probs += check(lay, man, "complete")
        elif et == "JournalError":
            outcome = "JournalError"
            if "j.db" not in str((rr.result or {}).get("error")):
                probs.append("the JournalError does not name the journal file")
            if before != after:
                probs.append("a refused resume changed the journal or the destination")
        elif how.startswith("wal") and et in ("UsageError", "InvalidTransitionError"):
            # SQLite cannot tell a damaged WAL from a torn one: it discards the frames
            # and the journal reads as of its last checkpoint. axlpy then refuses to
            # resume (no transfer / not dispatched); acceptable only if nothing changed.
            outcome = f"refused ({et}; SQLite discarded the WAL frames)"
            if before[0] != after[0]:
                probs.append("a refused resume changed the destination")
        else:
            outcome = f"error {et}"
            probs.append(f"damaged journal gave an unclear outcome: {rr.brief()}")
        if os.path.exists(lay.journal) and os.path.getsize(lay.journal) == 0:
            probs.append("the journal was emptied")
        res = CaseResult("g:bad-input", f"journal {how} before resume", outcome, probs)
        cleanup(root, res.ok)
        return res

    return run


def bad_input_cases(types: Iterable[str] = ("sync",)) -> list[Callable[[], CaseResult]]:
    out: list[Callable[[], CaseResult]] = []
    out += [source_case(h) for h in ("shrinks", "grows", "rewritten", "vanishes")]
    out += [dest_case(h) for h in ("removed", "immutable")]
    out += [journal_case(h) for h in ("truncated", "zeroed", "garbage", "wal-truncated",
                                      "wal-zeroed", "wal-garbage")]
    from .sweeps import tamper_cases

    out += tamper_cases(list(types))
    _ = temps_under
    return out
