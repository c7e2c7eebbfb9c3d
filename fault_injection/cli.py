"""``python -m fault_injection <tier-or-sweep> [options]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .runner import CaseResult, format_table, run_cases
from .scenarios import SCENARIOS, available_types
from .sweeps import coverage, kill_cases, recovery_kill_cases, tamper_cases

__all__ = ["main"]


def _section(title: str, results: list[CaseResult], t0: float,
             report: list[tuple[str, list[CaseResult], float]]) -> None:
    dt = time.monotonic() - t0
    report.append((title, results, dt))
    print(format_table(results, f"{title} ({dt:.0f}s)"), flush=True)
    print(flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fault_injection", description=__doc__)
    ap.add_argument("what", choices=["ci", "full", "kill", "rec-kill", "syscall", "order",
                                     "power", "model", "bad-input", "coverage",
                                     "lifecycle"])
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--type", action="append", dest="types")
    ap.add_argument("--planted", help="arm AXLPY_PLANTED_BUG in every child")
    ap.add_argument("--point", action="append", dest="points",
                    help="kill / lifecycle sweeps: only this crash point (repeatable)")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    types = a.types or available_types()
    full = a.what == "full"
    scens = a.scenario or list(SCENARIOS)
    report: list[tuple[str, list[CaseResult], float]] = []
    everything: list[CaseResult] = []
    t_all = time.monotonic()
    print(f"transfer types: {types}; scenarios: {scens}; jobs: {a.jobs}", flush=True)

    def run(fns: list, title: str) -> list[CaseResult]:  # type: ignore[type-arg]
        t0 = time.monotonic()
        res = run_cases(fns, a.jobs, progress=not a.quiet)
        _section(title, res, t0, report)
        everything.extend(res)
        return res

    if a.what in ("ci", "full", "kill", "rec-kill", "coverage"):
        if a.what == "ci" and not a.scenario:
            # bounded tier: tree reaches every point but move.*, move reaches those;
            # other engines on the tree; first hit of each point
            fns = kill_cases(["tree", "move"], types[:1], planted=a.planted, first_only=True)
            fns += kill_cases(["tree"], types[1:], planted=a.planted, first_only=True)
        else:
            fns = kill_cases(scens, types, full=full, planted=a.planted, points=a.points)
        first = run(fns, "sweep a: SIGKILL at every crash point, then resume / cancel")
        if a.what in ("ci", "full", "coverage"):
            run(tamper_cases(types[:1] if a.what == "ci" else types),
                "sweep g (part): destination damaged between crash and resume")
        if a.what in ("ci", "full", "rec-kill"):
            rfns = recovery_kill_cases(first, fns, full=full, one_per_point=a.what == "ci")
            if full:  # every engine shares recovery: the full product on the first type
                rfns = [f for f in rfns if getattr(f, "ttype", None) == types[0]]
            run(rfns, "sweep b: SIGKILL again inside recovery, then recover again")
    if a.what in ("ci", "full", "kill", "coverage", "lifecycle") and not a.planted and (
            a.what == "lifecycle" or not a.scenario):
        from .lifecycle import lifecycle_cases

        run(lifecycle_cases(full=full, points=a.points),
            "sweep l: SIGKILL in the pointer update and prune, then prune / repair")
    if a.what in ("ci", "full", "order"):
        from .ordering import ordering_cases

        run(ordering_cases(scens, types, planted=a.planted), "sweep d: ordering audit")
    if a.what in ("ci", "full", "syscall"):
        from .syscalls import syscall_cases

        run(syscall_cases(ci=a.what == "ci", planted=a.planted, types=types),
            "sweep c: syscall faults (strace -e inject)")
    if a.what in ("full", "power"):
        from .power import power_cases

        run(power_cases(scens, types[:1] if full else types, full=full, planted=a.planted)
            + (power_cases(["tree"], types[1:], planted=a.planted) if full else []),
            "sweep e: power loss (powerfs)")
    if a.what in ("full", "model"):
        from .model import model_cases

        run(model_cases(planted=a.planted), "sweep f: hypothesis state machine")
    if a.what in ("full", "bad-input"):
        from .badinput import bad_input_cases

        run(bad_input_cases(types), "sweep g: bad inputs during a transfer")
    if a.what in ("ci", "full", "coverage", "kill") and not a.points:
        cov = [coverage(everything)]
        run_cov = cov
        _section("crash-point coverage", run_cov, time.monotonic(), report)
        everything.extend(cov)
    total = time.monotonic() - t_all
    print("== summary ==")
    for title, res, dt in report:
        p = sum(1 for r in res if r.ok and not r.skipped)
        f = sum(1 for r in res if not r.ok)
        s = sum(1 for r in res if r.skipped)
        print(f"{title[:60]:60}  {len(res):4} cases  {p:4} passed  {f:3} failed"
              f"  {s:3} skipped  {dt:6.0f}s")
    passed = sum(1 for r in everything if r.ok and not r.skipped)
    failed = sum(1 for r in everything if not r.ok)
    print(f"wall time {total:.0f}s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
