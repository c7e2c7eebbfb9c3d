"""Sweep l: SIGKILL at every crash point of the checkpoint lifecycle (the latest pointer
update and prune), then recover, and check the lifecycle invariants.

A case directory holds ``ck/`` with checkpoints ``step-000001`` .. ``step-000003``
(committed by the harness through axlpy, pointer naming step 3) and the sources of a
fourth. The child (op ``lc-commit``) copies the fourth with a real transfer and commits
it with :func:`axlpy.commit_checkpoint` and retention ``keep_last=2``: marker, pointer
update (``latest.*``), prune of steps 1 and 2 (``prune.*``). It is killed at one point;
then recovery runs in fresh processes (unarmed, or killed once more inside, sweep b):

- ``prune``: :func:`axlpy.prune` with the same policy;
- ``repair``: what ``axlpy gc --delete`` and ``axlpy latest --repair`` do
  (:func:`finish_trash_under`, :func:`update_pointer`).

Invariants right after the kill and after every recovery: every checkpoint is whole
under its own name (CRC32C of every file, bytes as written) or gone / in trash, and only
steps 1 and 2 may be gone; the newest (step 4, its marker is durable before any lifecycle
point) is always whole; the pointer, if present, parses and names a whole committed
checkpoint. After the final recovery: no trash, no pointer temp, the pointer names step 4,
and (``prune``) exactly steps 3 and 4 remain.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .runner import CaseResult, base_env, cleanup, run_child, scratch, trace_counts

__all__ = ["LIFECYCLE_OPS", "LifecycleCase", "is_lifecycle_point", "lifecycle_cases",
           "run_op"]

LIFECYCLE_OPS = ("prune", "repair")
KEEP = 2
_PREFIXES = ("latest.", "prune.")


def is_lifecycle_point(point: str) -> bool:
    return point.startswith(_PREFIXES)


# -- in the child -----------------------------------------------------------------------------


def run_op(spec: dict[str, Any]) -> dict[str, Any]:
    """The child side (called by :mod:`fault_injection.child` for ``lc-*`` ops)."""
    import axlpy
    from axlpy import _lifecycle

    ck, op = spec["dir"], spec["op"]
    policy = axlpy.RetentionPolicy(KEEP)
    if op == "lc-commit":
        with axlpy.Journal(spec["journal"]) as j:
            name = f"step-{spec['step']:06d}"
            t = j.create(name, "sync", step=spec["step"])
            t.add(spec["src"], os.path.join(ck, name, "rank-0"))
            t.dispatch()
            t.wait()
            axlpy.commit_checkpoint(os.path.join(ck, name), t, retention=policy)
    elif op == "lc-prune":
        axlpy.prune(ck, policy, journals=[spec["journal"]])
    elif op == "lc-repair":
        _lifecycle.finish_trash_under(ck)
        axlpy.update_pointer(ck)
    else:
        raise SystemExit(f"unknown op {op!r}")
    return {"ok": True, "state": "COMPLETED", "error_type": None, "error": None}


# -- in the harness ---------------------------------------------------------------------------


def _files(step: int) -> dict[str, bytes]:
    seed = hashlib.sha256(f"step {step}".encode()).digest()
    return {"a.bin": seed * (300 + step), "sub/b.bin": seed[::-1] * 7}


def _write_src(root: str, step: int) -> str:
    src = os.path.join(root, "src", f"step-{step}")
    for rel, data in _files(step).items():
        p = os.path.join(src, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return src


def build(root: str) -> dict[str, Any]:
    """Steps 1..3 committed under ``root/ck`` (in this process, through axlpy), the
    sources of step 4; returns the child's spec."""
    import axlpy

    ck = os.path.join(root, "ck")
    jdir = os.path.join(root, "journal")
    os.makedirs(ck)
    os.makedirs(jdir, mode=0o700)
    journal = os.path.join(jdir, "j.db")
    with axlpy.Journal(journal) as j:
        for step in (1, 2, 3):
            t = j.create(f"step-{step:06d}", "sync", step=step)
            t.add(_write_src(root, step), os.path.join(ck, f"step-{step:06d}", "rank-0"))
            t.dispatch()
            t.wait()
            axlpy.commit_checkpoint(os.path.join(ck, f"step-{step:06d}"), t)
            t.free()
    return {"op": "lc-commit", "dir": ck, "journal": journal, "step": 4,
            "src": _write_src(root, 4), "ack": os.path.join(root, "ack")}


def _whole(ck: str, step: int) -> str | None:
    """None if ``step`` is whole under its name (marker valid, every file's CRC32C and
    bytes as written), else why not."""
    from axlpy import _manifest

    d = os.path.join(ck, f"step-{step:06d}")
    res = _manifest.check_checkpoint(d, verify=True)
    if not res.valid or res.manifest is None:
        return f"step {step}: {'; '.join(res.problems)}"
    if res.manifest.step != step:
        return f"step {step}: marker says step {res.manifest.step}"
    for rel, data in _files(step).items():
        with open(os.path.join(d, "rank-0", rel), "rb") as f:
            if f.read() != data:
                return f"step {step}: rank-0/{rel} differs from what was written"
    return None


def check(ck: str, *, final: str | None = None) -> list[str]:
    """The lifecycle invariants (module docstring); ``final``: the recovery op that just
    finished cleanly, for the stronger end state."""
    from axlpy import _lifecycle
    from axlpy._manifest import InvalidCheckpointError, read_manifest

    probs: list[str] = []
    names = sorted(os.listdir(ck))
    present = {int(n[5:]) for n in names if n.startswith("step-")}
    for step in (3, 4):
        if step not in present:
            probs.append(f"step {step} (retained: keep_last={KEEP}) is gone")
    for step in sorted(present):
        why = _whole(ck, step)
        if why:
            probs.append(f"a checkpoint under its own name is not whole: {why}")
    try:
        ptr = _lifecycle.read_pointer(ck)
    except InvalidCheckpointError as exc:
        probs.append(f"pointer unreadable: {exc}")
        ptr = None
    if ptr is not None:
        d = os.path.join(ck, ptr.checkpoint)
        try:
            m = read_manifest(d)
        except InvalidCheckpointError as exc:
            probs.append(f"pointer names {ptr.checkpoint}, not a committed checkpoint: {exc}")
        else:
            if not ptr.names(m, ptr.checkpoint):
                probs.append(f"pointer names {ptr.checkpoint} with another marker")
    else:
        probs.append("no pointer (one existed before the case)")
    if final is not None:
        trash = [n for n in names if n.startswith(_lifecycle.TRASH_PREFIX)]
        temps = [n for n in names if n.startswith("." + _lifecycle.POINTER)]
        if trash or temps:
            probs.append(f"after {final}: left over {trash + temps}")
        if ptr is None or ptr.checkpoint != "step-000004":
            probs.append(f"after {final}: pointer names "
                         f"{ptr.checkpoint if ptr else None}, not step-000004")
        if final == "prune" and present != {3, 4}:
            probs.append(f"after prune: steps {sorted(present)} remain, not [3, 4]")
    return probs


_DISCOVERED: dict[str, dict[str, int]] = {}


def discover(op: str = "lc-commit") -> dict[str, int]:
    """Lifecycle crash points an unarmed run of ``op`` reaches (after the commit's kill
    at nothing), with hit counts."""
    if op not in _DISCOVERED:
        root = scratch("lc-discover")
        spec = build(root)
        trace = os.path.join(root, "trace")
        r = run_child(spec, base_env({"AXLPY_CRASH_TRACE": trace}))
        if not r.ok:
            raise RuntimeError(f"baseline lifecycle commit failed: {r.brief()}\n"
                               f"{r.stderr[-3000:]}")
        probs = check(spec["dir"], final="prune")
        if probs:
            raise RuntimeError(f"baseline lifecycle commit broke the invariants: {probs}")
        _DISCOVERED[op] = {p: n for p, n in trace_counts(trace).items()
                           if is_lifecycle_point(p)}
        cleanup(root, True)
    return _DISCOVERED[op]


@dataclass
class LifecycleCase:
    """Kill ``lc-commit`` at ``point`` (``hit``), optionally kill the first recovery at
    ``rec_crash``, then recover with ``op`` until clean."""

    point: str
    hit: int
    op: str
    rec_crash: tuple[str, int] | None = None
    sweep: str = "l:lifecycle"

    @property
    def name(self) -> str:
        n = f"lifecycle/{self.point}#{self.hit}/{self.op}"
        if self.rec_crash:
            n += f"/rec-kill@{self.rec_crash[0]}#{self.rec_crash[1]}"
        return n

    def __call__(self) -> CaseResult:
        root = scratch("lc-kill")
        spec = build(root)
        ck = spec["dir"]
        env = base_env()
        trace = os.path.join(root, "trace")
        r = run_child(spec, dict(env, AXLPY_CRASH_AT=self.point,
                                 AXLPY_CRASH_HIT=str(self.hit), AXLPY_CRASH_TRACE=trace))
        reached = set(trace_counts(trace))
        if not r.killed:
            res = CaseResult(self.sweep, self.name, f"commit not killed ({r.brief()})",
                             reached=reached)
            if r.ok:
                res.skipped = "point not reached at this hit"
            else:
                res.problems.append(f"commit failed: {r.brief()}\n{r.stderr[-2000:]}")
            cleanup(root, res.ok)
            return res
        probs = [f"after the kill: {p}" for p in check(ck)]
        labels = ["killed"]
        rec_reached: collections.Counter[str] = collections.Counter()
        for rnd in range(3):
            rtrace = f"{trace}.rec{rnd}"
            e = dict(env, AXLPY_CRASH_TRACE=rtrace)
            armed = self.rec_crash is not None and rnd == 0
            if armed and self.rec_crash is not None:
                e.update(AXLPY_CRASH_AT=self.rec_crash[0],
                         AXLPY_CRASH_HIT=str(self.rec_crash[1]))
            rr = run_child(dict(spec, op=f"lc-{self.op}"), e)
            rec_reached.update(trace_counts(rtrace))
            if rr.killed and armed:
                labels.append(f"{self.op}:killed")
                probs += [f"after the recovery kill: {p}" for p in check(ck)]
                continue
            if not rr.ok:
                probs.append(f"recovery {self.op} failed: {rr.brief()}\n{rr.stderr[-2000:]}")
                labels.append(f"{self.op}:error")
                break
            labels.append(self.op)
            probs += [f"after {self.op}: {p}" for p in check(ck, final=self.op)]
            break
        res = CaseResult(self.sweep, self.name, "→".join(labels), probs,
                         reached=reached | set(rec_reached))
        res.rec_counts = rec_reached  # type: ignore[attr-defined]
        cleanup(root, res.ok)
        return res


def lifecycle_cases(*, full: bool = False, rec_kill: bool = True,
                    points: Iterable[str] | None = None) -> list[LifecycleCase]:
    """Every lifecycle point the commit reaches (first hit; also the last and, in the
    full tier, the middle one) x each recovery op; with ``rec_kill``, also a kill inside
    the ``prune`` recovery at every lifecycle point it reaches from a kill right after
    the trash renames (first hit)."""
    from .sweeps import hits_for

    only = set(points) if points is not None else None
    out: list[LifecycleCase] = []
    for point, count in sorted(discover().items()):
        if only is not None and point not in only:
            continue
        for hit in hits_for(count, full):
            for op in LIFECYCLE_OPS:
                out.append(LifecycleCase(point, hit, op))
    if rec_kill:
        # A kill once prune's renames are durable leaves trash: the prune recovery then
        # reaches the trash deletion (and the pointer is current, so not latest.*); a kill
        # right after the marker leaves the pointer stale: recovery reaches latest.*.
        for first in ("prune.after_trash_fsync", "latest.after_temp"):
            for q in _recovery_points(first):
                if only is None or q in only:
                    out.append(LifecycleCase(first, 1, "prune", rec_crash=(q, 1),
                                             sweep="l:rec-kill"))
    return out


def _recovery_points(first: str) -> list[str]:
    """Lifecycle points a ``prune`` recovery reaches after a kill at ``first``."""
    root = scratch("lc-discover-rec")
    spec = build(root)
    r = run_child(spec, base_env({"AXLPY_CRASH_AT": first}))
    if not r.killed:
        raise RuntimeError(f"lifecycle discovery: {first} not reached ({r.brief()})")
    trace = os.path.join(root, "trace.rec")
    rr = run_child(dict(spec, op="lc-prune"), base_env({"AXLPY_CRASH_TRACE": trace}))
    if not rr.ok:
        raise RuntimeError(f"lifecycle discovery: recovery failed ({rr.brief()})")
    points = sorted(p for p in trace_counts(trace) if is_lifecycle_point(p))
    cleanup(root, True)
    return points
