"""Running children, recovering, and reporting: the pieces every sweep shares."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .invariants import check, check_crashed
from .scenarios import Layout, Manifest

__all__ = [
    "ROOT",
    "CaseResult",
    "ChildResult",
    "Recovery",
    "base_env",
    "format_table",
    "recover",
    "run_cases",
    "run_child",
    "scratch",
    "trace_counts",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KEEP = os.environ.get("FI_KEEP") == "1"


@dataclass
class ChildResult:
    rc: int
    result: dict[str, Any] | None
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL

    @property
    def ok(self) -> bool:
        return self.rc == 0 and bool(self.result and self.result.get("ok"))

    def brief(self) -> str:
        if self.killed:
            return "killed"
        if self.result:
            return f"rc={self.rc} {self.result.get('error_type')}: {self.result.get('error')}"
        return f"rc={self.rc} {self.stderr.strip().splitlines()[-1:] or ''}"


@dataclass
class CaseResult:
    sweep: str
    case: str
    outcome: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reached: set[str] = field(default_factory=set)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def base_env(extra: dict[str, str] | None = None, planted: str | None = None) -> dict[str, str]:
    """The child's environment: no crash arming unless asked, PYTHONPATH for the harness."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AXLPY_CRASH_", "AXLPY_PLANTED_BUG"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if planted:
        env["AXLPY_PLANTED_BUG"] = planted
    if extra:
        env.update(extra)
    return env


def run_child(spec: dict[str, Any], env: dict[str, str], *, prefix: Sequence[str] = (),
              timeout: float = 180.0) -> ChildResult:
    """Run :mod:`fault_injection.child` with the real interpreter (``sys.executable``)."""
    cmd = [*prefix, sys.executable, "-m", "fault_injection.child", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, check=False)
    rc = p.returncode
    res: dict[str, Any] | None = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            res = json.loads(line)
            break
        except ValueError:
            continue
    return ChildResult(rc, res, p.stdout, p.stderr)


def trace_counts(path: str) -> collections.Counter[str]:
    """Crash points reached, with hit counts, from an ``AXLPY_CRASH_TRACE`` file."""
    try:
        with open(path) as f:
            return collections.Counter(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        return collections.Counter()


@dataclass
class Recovery:
    outcome: str
    expect: str | None
    problems: list[str]
    reached: set[str]


def recover(lay: Layout, man: Manifest, scen_spec: Callable[[str], dict[str, Any]], op: str,
            env: dict[str, str], *, crash_at: tuple[str, int] | None = None,
            max_rounds: int = 3) -> Recovery:
    """Recover with ``op`` in fresh processes, then judge the documented outcome.

    ``crash_at`` kills the first recovery at that point (sweep b); later rounds run
    unarmed. A refused cancel (move mode after RENAMED) is followed by resume, and a
    cancel of an already COMPLETED transfer counts as "already-complete".
    """
    reached: set[str] = set()
    labels: list[str] = []
    problems: list[str] = []
    for rnd in range(max_rounds):
        trace = f"{lay.trace}.rec{rnd}"
        e = dict(env, AXLPY_CRASH_TRACE=trace)
        if crash_at and rnd == 0:
            e.update(AXLPY_CRASH_AT=crash_at[0], AXLPY_CRASH_HIT=str(crash_at[1]))
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        r = run_child(dict(scen_spec(op), ack_tag=tag), e)
        reached |= set(trace_counts(trace))
        if r.killed and _ack_tag(lay.ack) == tag:
            r = ChildResult(0, {"ok": True}, r.stdout, r.stderr)  # acknowledged, then died
        if r.killed:
            labels.append(f"{op}:killed")
            if not (crash_at and rnd == 0):
                problems.append(f"recovery ({op}) died unexpectedly")
                return Recovery("+".join(labels), None, problems, reached)
            problems += check_crashed(lay, man)
            continue
        if r.ok:
            labels.append(op)
            expect = "complete" if op == "resume" else "cancelled"
            return Recovery(_label(labels, expect), expect, problems, reached)
        res = r.result or {}
        et, msg = res.get("error_type"), str(res.get("error"))
        if op == "resume" and et == "InvalidTransitionError" and "dispatch it first" in msg:
            labels.append("resume-refused")
            return Recovery(_label(labels, "not_dispatched"), "not_dispatched", problems,
                            reached)
        if op == "resume" and et == "InvalidTransitionError" and "from CANCELLED" in msg:
            labels.append("resume-refused")
            return Recovery(_label(labels, "cancelled"), "cancelled", problems, reached)
        if et == "UsageError" and "no transfer named" in msg:
            labels.append(f"{op}-refused")
            return Recovery(_label(labels, "not_created"), "not_created", problems, reached)
        if op == "cancel" and et == "InvalidTransitionError" and "COMPLETED" in msg:
            labels.append("cancel-refused")
            return Recovery(_label(labels, "complete"), "complete", problems, reached)
        if op == "cancel" and et == "UsageError" and "move mode" in msg:
            labels.append("cancel-refused")
            op = "resume"  # the documented way out once a move is RENAMED
            continue
        problems.append(f"recovery ({op}) failed: {r.brief()}\n{r.stderr[-2000:]}")
        return Recovery("+".join([*labels, "error"]), None, problems, reached)
    problems.append("recovery did not finish in time")
    return Recovery("+".join(labels), None, problems, reached)


def _ack_tag(path: str) -> str | None:
    try:
        with open(path) as f:
            return str(json.load(f).get("tag"))
    except (OSError, ValueError):
        return None


def _label(labels: list[str], expect: str) -> str:
    head = "→".join(labels)
    return f"{head}⇒{expect}"


def finish_check(lay: Layout, man: Manifest, rec: Recovery) -> list[str]:
    probs = list(rec.problems)
    if rec.expect is not None:
        probs += check(lay, man, rec.expect)
    return probs


def scratch(prefix: str) -> str:
    base = os.environ.get("FI_TMP") or os.path.join(tempfile.gettempdir(), "axlpy-fi")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix + "-", dir=base)


def cleanup(root: str, ok: bool) -> None:
    if ok and not _KEEP:
        shutil.rmtree(root, ignore_errors=True)


def run_cases(fns: Iterable[Callable[[], CaseResult]], jobs: int,
              progress: bool = True) -> list[CaseResult]:
    """Run case callables on ``jobs`` threads (each case runs its own processes)."""
    out: list[CaseResult] = []
    fl = list(fns)

    def timed(fn: Callable[[], CaseResult]) -> CaseResult:
        t0 = time.monotonic()
        try:
            r = fn()
        except Exception as exc:  # a harness bug must show as a failed case, not a crash
            import traceback

            r = CaseResult("?", getattr(fn, "case_name", "?"), "harness-error",
                           [f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"])
        r.seconds = time.monotonic() - t0
        return r

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for i, r in enumerate(ex.map(timed, fl), 1):
            out.append(r)
            if progress:
                mark = "ok  " if r.ok else ("skip" if r.skipped else "FAIL")
                print(f"  [{i}/{len(fl)}] {mark} {r.sweep} {r.case} -> {r.outcome}"
                      f" ({r.seconds:.1f}s)", file=sys.stderr, flush=True)
                if not r.ok:
                    for p in r.problems:
                        print(f"        {p[:600]}", file=sys.stderr)
    return out


def format_table(results: Sequence[CaseResult], title: str) -> str:
    """A summary table (case x outcome) and the final ``N passed, M failed`` line."""
    lines = [f"== {title} =="]
    w = max([len(r.case) for r in results] + [4])
    lines.append(f"{'case'.ljust(w)}  {'result':6}  outcome")
    for r in results:
        status = "skip" if r.skipped else ("pass" if r.ok else "FAIL")
        lines.append(f"{r.case.ljust(w)}  {status:6}  {r.outcome}"
                     + (f"  [{r.skipped}]" if r.skipped else ""))
        for p in r.problems:
            lines.append(f"{'':{w}}          ! {p.splitlines()[0][:200]}")
    passed = sum(1 for r in results if r.ok and not r.skipped)
    failed = sum(1 for r in results if not r.ok)
    skipped = sum(1 for r in results if r.skipped)
    tail = f"{passed} passed, {failed} failed"
    if skipped:
        tail += f" ({skipped} skipped)"
    lines.append(tail)
    return "\n".join(lines)
