"""Sweep e: power loss on :mod:`fault_injection.powerfs`.

The destination tree and the journal live on a powerfs mount (move mode: the sources
too); the acknowledgement file lives on the ordinary disk, because it stands for what the
caller already told the outside world. Each case:

1. mount; run ``start`` in a child, killed at a crash point (or, for the ``no-fault`` case,
   run to completion, acknowledge, then SIGKILL itself so nothing is closed cleanly);
2. cut the power (every write, create, rename, mkdir and unlink not made durable by an
   fsync of the file or of its directory is lost) and remount;
3. an acknowledged completion must still be a completion, byte for byte, *before* any
   recovery runs (recovery could otherwise paper over a lost commit);
4. recover with resume or cancel in a fresh process (which acknowledges and dies the
   same way), cut the power again, remount, and check every invariant.

The children take the batched-durability path (``AXLPY_SYNCFS=on``): FUSE never passes
``syncfs(2)`` to powerfs, so each real ``syncfs`` of axlpy's is followed by a ``sync`` of
the daemon (``child._install_powerfs_syncfs``), which is what ``syncfs`` does on a local
disk. (With the planted per-file bugs armed, axlpy fsyncs each file instead.)

Models: lost page cache and lost directory entries at any instant after a crash point.
Does not model: torn writes inside one write(2), reordering of writes *within* the
un-synced state (all of it is dropped at once), lying disks, or power loss in the middle
of a syscall.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable

from .child import POWERFS_SYNCFS_ENV
from .invariants import acked, check
from .runner import CaseResult, base_env, cleanup, recover, run_child, scratch, trace_counts
from .scenarios import SCENARIOS, Layout, Manifest, Scenario, build
from .sweeps import discover, hits_for

__all__ = ["PowerCase", "power_cases"]


def _remap(lay: Layout, old: str, new: str) -> None:
    def m(p: str) -> str:
        return new + p[len(old):] if p.startswith(old + "/") or p == old else p

    lay.src, lay.dst, lay.journal = m(lay.src), m(lay.dst), m(lay.journal)
    lay.pairs = [(m(s), m(d)) for s, d in lay.pairs]


class PowerCase:
    def __init__(self, scen: Scenario, ttype: str, point: str | None, hit: int, op: str,
                 planted: str | None = None) -> None:
        self.scen, self.ttype, self.point, self.hit, self.op = scen, ttype, point, hit, op
        self.planted = planted
        where = f"{point}#{hit}" if point else "no-fault"
        self.name = f"{scen.name}/{ttype}/{where}/{op}"

    def __call__(self) -> CaseResult:
        from .powerfs import PowerLossFS

        root = scratch("power")
        backing = os.path.join(root, "backing")
        mnt = os.path.join(root, "mnt")
        os.makedirs(backing, mode=0o700)
        src_root = os.path.join(backing, "src") if self.scen.move else None
        lay, man = build(self.scen, root, src_root=src_root,
                         dst_root=os.path.join(backing, "dst"),
                         journal_dir=os.path.join(backing, "journal"))
        _remap(lay, backing, mnt)
        # The batched path on the FUSE mount, its syncfs made real (child.py).
        env = base_env({"AXLPY_SYNCFS": "on",
                        POWERFS_SYNCFS_ENV: os.path.join(root, "state")}, self.planted)
        spec = functools.partial(lay.spec, self.scen, self.ttype)
        fs = PowerLossFS(backing, mnt, state=os.path.join(root, "state"))
        probs: list[str] = []
        reached: set[str] = set()
        outcome = "?"
        try:
            fs.mount()
            e = dict(env, AXLPY_CRASH_TRACE=lay.trace)
            if self.point:
                e.update(AXLPY_CRASH_AT=self.point, AXLPY_CRASH_HIT=str(self.hit))
            r = run_child(spec("start", die_after_ack=True), e)
            reached = set(trace_counts(lay.trace))
            if not r.killed:
                probs.append(f"start not killed: {r.brief()}\n{r.stderr[-1500:]}")
                return CaseResult("e:power", self.name, "error", probs, reached=reached)
            fs.power_cut()
            fs.remount()
            probs += _check_acked(lay, man, "after the first power cut")
            rec = recover(lay, man, lambda op: spec(op, die_after_ack=True), self.op, env)
            reached |= rec.reached
            outcome = rec.outcome + "+cut"
            probs += rec.problems
            fs.power_cut()
            fs.remount()
            if rec.expect is not None:
                probs += check(lay, man, rec.expect, mtimes=False)
        except Exception as exc:  # powerfs trouble is a failed case with its log
            probs.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                fs.unmount()
            except Exception as exc:
                probs.append(f"unmount: {exc}")
        res = CaseResult("e:power", self.name, outcome, probs, reached=reached)
        cleanup(root, res.ok)
        return res


def _check_acked(lay: Layout, man: Manifest, when: str) -> list[str]:
    if acked(lay) != "COMPLETED":
        return []
    return [f"acknowledged completion not durable {when}: {p}"
            for p in check(lay, man, "complete", mtimes=False)]


def _skip(why: str) -> CaseResult:
    r = CaseResult("e:power", "power loss", "skipped")
    r.skipped = why
    return r


def power_cases(scens: Iterable[str], types: Iterable[str], *, full: bool = False,
                planted: str | None = None, points: Iterable[str] | None = None,
                ops: Iterable[str] = ("resume", "cancel")) -> list[object]:
    """Every crash point of each scenario (first hit; full tier: also the last) x ops,
    plus a no-fault run per scenario; skipped with the reason if FUSE is unusable."""
    from .powerfs import fuse_unavailable_reason

    why = fuse_unavailable_reason()
    if why is None and shutil.which("fusermount3") is None:
        why = "fusermount3 missing"
    if why:
        return [functools.partial(_skip, f"power-loss tier skipped: {why}")]
    only = set(points) if points is not None else None
    out: list[object] = []
    for sn in scens:
        for tt in types:
            scen = SCENARIOS[sn]
            for op in ops:
                out.append(PowerCase(scen, tt, None, 1, op, planted))
            for point, count in sorted(discover(sn, tt, planted).items()):
                if only is not None and point not in only:
                    continue
                for hit in (hits_for(count, False) if full else [1]):
                    for op in ops:
                        out.append(PowerCase(scen, tt, point, hit, op, planted))
    return out
