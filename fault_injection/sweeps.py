"""Sweeps a (kill at every crash point), b (kill again inside recovery) and the
crash-point coverage check. The other sweeps have modules of their own:
:mod:`.syscalls` (c), :mod:`.ordering` (d), :mod:`.power` (e), :mod:`.model` (f) and
:mod:`.badinput` (g)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .invariants import check, check_crashed
from .runner import (
    ROOT,
    CaseResult,
    base_env,
    cleanup,
    finish_check,
    recover,
    run_child,
    scratch,
    trace_counts,
)
from .scenarios import SCENARIOS, Scenario, build

__all__ = [
    "COVERED_BY_TESTS",
    "KillCase",
    "baseline_case",
    "code_crash_points",
    "coverage",
    "discover",
    "kill_cases",
    "recovery_kill_cases",
]

CaseFn = Callable[[], CaseResult]


@functools.cache
def discover(scen_name: str, ttype: str, planted: str | None = None) -> dict[str, int]:
    """Crash points an unarmed ``start`` of the scenario reaches, with hit counts."""
    scen = SCENARIOS[scen_name]
    root = scratch(f"discover-{scen_name}-{ttype}")
    lay, _ = build(scen, root)
    r = run_child(lay.spec(scen, ttype, "start"),
                  base_env({"AXLPY_CRASH_TRACE": lay.trace}, planted))
    counts = dict(trace_counts(lay.trace))
    cleanup(root, r.ok)
    if not r.ok:
        raise RuntimeError(f"baseline run of {scen_name}/{ttype} failed: {r.brief()}\n"
                           f"{r.stderr[-3000:]}")
    return counts


def hits_for(count: int, full: bool) -> list[int]:
    """First hit always; for points hit several times, also the last (and, in the full
    tier, the middle one)."""
    hs = {1, count}
    if full and count > 2:
        hs.add((count + 1) // 2)
    return sorted(hs)


@dataclass
class KillCase:
    scen: Scenario
    ttype: str
    point: str
    hit: int
    op: str
    planted: str | None = None
    #: crash inside recovery too (sweep b): (point, hit)
    rec_crash: tuple[str, int] | None = None
    #: tamper with the destination between crash and recovery ("corrupt", "drop-temp")
    tamper: str | None = None
    sweep: str = "a:kill"
    #: the verb of the killed recovery (sweep b); ``op`` then recovers from that
    _rec_verb: str | None = None

    @property
    def name(self) -> str:
        n = f"{self.scen.name}/{self.ttype}/{self.point}#{self.hit}/{self.op}"
        if self.rec_crash:
            n += f"/rec-kill@{self.rec_crash[0]}#{self.rec_crash[1]}"
        if self.tamper:
            n += f"/{self.tamper}"
        return n

    def __call__(self) -> CaseResult:
        root = scratch("kill")
        lay, man = build(self.scen, root)
        env = base_env(planted=self.planted)
        spec = functools.partial(lay.spec, self.scen, self.ttype)
        r = run_child(spec("start"), dict(env, AXLPY_CRASH_AT=self.point,
                                           AXLPY_CRASH_HIT=str(self.hit),
                                           AXLPY_CRASH_TRACE=lay.trace))
        reached = set(trace_counts(lay.trace))
        if not r.killed:
            res = CaseResult(self.sweep, self.name, f"start not killed ({r.brief()})",
                             reached=reached)
            if r.ok:
                res.skipped = "point not reached at this hit"
            else:
                res.problems.append(f"start failed: {r.brief()}\n{r.stderr[-2000:]}")
            cleanup(root, res.ok)
            return res
        probs = check_crashed(lay, man)
        if self.tamper:
            damage = _tamper(lay, self.tamper)
            if damage == [_NOTHING_TO_CORRUPT] and self.hit < _TAMPER_MAX_HIT:
                # Which files a publish group holds depends on the order they finished
                # (URING's ring thread varies it): the group of this hit held nothing
                # this tamper can damage (a 0-byte file, a link). Take the next hit.
                cleanup(root, True)
                return dataclasses.replace(self, hit=self.hit + 1)()
            probs += damage
        if self._rec_verb and self._rec_verb != self.op:
            # kill the first recovery (verb _rec_verb) at rec_crash, then recover with op
            first = recover(lay, man, spec, self._rec_verb, env, crash_at=self.rec_crash,
                            max_rounds=1)
            probs += [p for p in first.problems if "did not finish" not in p]
            rec = recover(lay, man, spec, self.op, env)
            rec.outcome = first.outcome + "→" + rec.outcome
            rec.reached |= first.reached
        else:
            rec = recover(lay, man, spec, self.op, env, crash_at=self.rec_crash)
        probs += finish_check(lay, man, rec)
        res = CaseResult(self.sweep, self.name, rec.outcome, probs,
                         reached=reached | rec.reached)
        res.rec_counts = rec.reached  # type: ignore[attr-defined]
        cleanup(root, res.ok)
        return res


_NOTHING_TO_CORRUPT = "tamper corrupt: nothing published to corrupt"
#: a tamper case whose hit found nothing to damage moves to the next hit, up to this one
_TAMPER_MAX_HIT = 8


def _tamper(lay: object, how: str) -> list[str]:
    """Damage the destination side as a user or a failing disk might."""
    from .invariants import temps_under
    from .scenarios import Layout

    assert isinstance(lay, Layout)
    if how == "corrupt":  # flip a byte of every published destination file
        n = 0
        for dp, _d, fns in os.walk(lay.dst):
            for fn in fns:
                p = os.path.join(dp, fn)
                if os.path.getsize(p) > 0 and ".axlpy-" not in fn:
                    with open(p, "r+b") as f:
                        b = f.read(1)
                        f.seek(0)
                        f.write(bytes([b[0] ^ 0xFF]))
                    n += 1
        return [] if n else [_NOTHING_TO_CORRUPT]
    if how == "drop-temp":  # lose every temp file (as a lost directory entry would)
        ts = temps_under(lay.dst)
        for t in ts:
            os.unlink(t)
        return [] if ts else ["tamper drop-temp: no temp to drop"]
    raise ValueError(how)


def baseline_case(scen: Scenario, ttype: str, planted: str | None = None) -> CaseFn:
    """No fault: start runs to COMPLETED, acknowledges, and the invariants hold."""

    def run() -> CaseResult:
        root = scratch("baseline")
        lay, man = build(scen, root)
        r = run_child(lay.spec(scen, ttype, "start"),
                      base_env({"AXLPY_CRASH_TRACE": lay.trace}, planted))
        probs = [] if r.ok else [f"start failed: {r.brief()}\n{r.stderr[-2000:]}"]
        probs += check(lay, man, "complete")
        res = CaseResult("a:kill", f"{scen.name}/{ttype}/no-fault/start",
                         "completed" if r.ok else "error", probs,
                         reached=set(trace_counts(lay.trace)))
        cleanup(root, res.ok)
        return res

    return run


def kill_cases(scens: Iterable[str], types: Iterable[str], ops: Iterable[str] = ("resume",
               "cancel"), *, full: bool = False, planted: str | None = None,
               points: Iterable[str] | None = None, first_only: bool = False
               ) -> list[CaseFn]:
    """Sweep a: every crash point a scenario reaches (first and later hits) x ops."""
    out: list[CaseFn] = []
    only = set(points) if points is not None else None
    for sn in scens:
        for tt in types:
            out.append(baseline_case(SCENARIOS[sn], tt, planted))
            for point, count in sorted(discover(sn, tt, planted).items()):
                if only is not None and point not in only:
                    continue
                for hit in ([1] if first_only else hits_for(count, full)):
                    for op in ops:
                        out.append(KillCase(SCENARIOS[sn], tt, point, hit, op, planted))
    return out


def tamper_cases(types: Iterable[str]) -> list[CaseFn]:
    """Destination damaged between crash and resume: resume must verify and redo."""
    out: list[CaseFn] = []
    for tt in types:
        out.append(KillCase(SCENARIOS["tree"], tt, "publish.after_commit", 1, "resume",
                            tamper="corrupt", sweep="g:tamper"))
        out.append(KillCase(SCENARIOS["tree"], tt, "stage.after_commit", 1, "resume",
                            tamper="drop-temp", sweep="g:tamper"))
        out.append(KillCase(SCENARIOS["files"], tt, "stage.after_write", 1, "resume",
                            tamper="drop-temp", sweep="g:tamper"))
    return out


def recovery_kill_cases(first: list[CaseResult], cases: list[CaseFn], *,
                        full: bool = False, one_per_point: bool = False) -> list[CaseFn]:
    """Sweep b: from sweep-a cases (first hit), kill again at every point the recovery
    reached, then recover again (unarmed). ``one_per_point`` (CI): each recovery point
    once per verb, from the first sweep-a case that reached it."""
    out: list[CaseFn] = []
    seen: set[tuple[str, str, str]] = set()
    for res, fn in zip(first, cases, strict=True):
        if not isinstance(fn, KillCase) or fn.hit != 1 or fn.tamper or res.skipped:
            continue
        counts = getattr(res, "rec_counts", None)
        if not counts:
            continue
        rec_trace = collections.Counter(counts)
        for q in sorted(rec_trace):
            if one_per_point:
                if (fn.ttype, fn.op, q) in seen:
                    continue
                seen.add((fn.ttype, fn.op, q))
            for hit in ([1] if one_per_point else hits_for(rec_trace[q], full)):
                out.append(KillCase(fn.scen, fn.ttype, fn.point, fn.hit, fn.op,
                                    fn.planted, rec_crash=(q, hit), sweep="b:rec-kill"))
    return out


#: registered points outside a single transfer's life, which the transfer scenarios here
#: cannot reach: each is SIGKILLed and recovered by the named test instead
COVERED_BY_TESTS: dict[str, str] = {
    "migrate.before_commit": "tests/unit/test_migrations.py (schema-1 fixture)",
    "migrate.after_commit": "tests/unit/test_migrations.py (schema-1 fixture)",
    "marker.after_temp_fsync": "tests/mpi/test_mpi.py (killed commit, then gc / next commit)",
    "publish.after_exchange": "tests/security/test_sec_races.py (an existing final name: "
                              "killed between the exchange and the unlink, then resume / "
                              "cancel)",
}

_CP_RE = re.compile(r"crash_point\(\s*[\"']([^\"']+)[\"']\s*\)")


def code_crash_points() -> set[str]:
    """Every ``crash_point("...")`` name written in axlpy's source."""
    names: set[str] = set()
    for dp, _d, fns in os.walk(os.path.join(ROOT, "axlpy")):
        for fn in fns:
            if fn.endswith(".py") and fn != "_crashpoints.py":
                with open(os.path.join(dp, fn), encoding="utf-8") as f:
                    names |= set(_CP_RE.findall(f.read()))
    return names


def coverage(results: Iterable[CaseResult]) -> CaseResult:
    """Fail if a registered point was never reached; list unregistered names in code."""
    from axlpy._crashpoints import CRASH_POINTS

    reached: set[str] = set()
    for r in results:
        reached |= r.reached
    registered = set(CRASH_POINTS)
    in_code = code_crash_points()
    probs = []
    never = sorted(registered - reached - set(COVERED_BY_TESTS))
    if never:
        probs.append(f"registered crash points never reached by any scenario: {never}")
    unreg = sorted(in_code - registered)
    if unreg:
        probs.append(f"crash_point names in axlpy/ but not in the registry: {unreg}")
    unused = sorted(registered - in_code)
    if unused:
        probs.append(f"registered crash points not called anywhere in axlpy/: {unused}")
    return CaseResult("coverage", "crash-point coverage",
                      f"{len(reached & registered)}/{len(registered)} registered points "
                      f"reached", probs)
