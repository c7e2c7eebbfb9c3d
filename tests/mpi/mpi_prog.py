"""The MPI program the tests in this directory launch under a real ``mpiexec``.

Usage: ``mpiexec -n N python mpi_prog.py SCENARIO WORKDIR [options]``. Every rank writes
what it saw to ``WORKDIR/result-<rank>.json`` (not stdout: hydra interleaves the ranks'
output); the tests read those files.

Layout under WORKDIR: ``src/rank-<r>/`` (each rank's node-local sources, written by the
rank), ``shared/ckpt/`` (the checkpoint directory), ``journals/`` (``rank-<r>.db``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any


def make_sources(root: str, rank: int, nfiles: int, size: int) -> None:
    d = os.path.join(root, "src", f"rank-{rank}")
    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    for i in range(nfiles):
        rng = random.Random(rank * 1000 + i)
        name = os.path.join(d, "sub" if i % 2 else "", f"part-{i}.bin")
        with open(name, "wb") as f:
            f.write(rng.randbytes(size))


_WORKDIR = ""


def report(rank: int, **kw: Any) -> None:
    path = os.path.join(_WORKDIR, f"result-{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(rank=rank, **kw), f)
    os.rename(path + ".tmp", path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["ok", "missing", "crash", "resume", "straggler",
                                        "vanish"])
    p.add_argument("workdir")
    # pthread: a background engine without the per-process io_uring probe (faster to start)
    p.add_argument("--type", default="pthread")
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--size", type=int, default=256 << 10)
    p.add_argument("--bad-rank", type=int, default=1)
    p.add_argument("--crash-at", default="publish.after_rename")
    p.add_argument("--crash-hit", type=int, default=1)
    p.add_argument("--policy", default="keep")
    p.add_argument("--timeout", type=float, default=1.0)
    # A rank held at its first chunk (as a straggler) whose cancel, when the failure policy
    # applies it, first opens the gate and waits for its copy to finish: the copy completes
    # between the policy's look at the state and the cancel (a race no timing can force).
    p.add_argument("--late-rank", type=int, default=-1)
    p.add_argument("--force", action="store_true", help="resume(force=True)")
    a = p.parse_args()
    global _WORKDIR
    _WORKDIR = a.workdir

    from mpi4py import MPI

    import axlpy
    import axlpy.mpi as amp
    from axlpy import _crashpoints

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    w = a.workdir
    jdir = os.path.join(w, "journals")
    ckpt = os.path.join(w, "shared", "ckpt")
    if rank == 0:
        os.makedirs(jdir, mode=0o700, exist_ok=True)
        os.makedirs(ckpt, exist_ok=True)
    comm.Barrier()

    if a.scenario == "resume":
        try:
            ct = amp.CommTransfer.open(comm, "ckpt", journal_dir=jdir)
            before = ct.transfer.state.value
            ct.resume(force=True) if a.force else ct.resume()
            m = ct.wait(timeout=120)
            report(rank, ok=True, before=before, entries=len(m.entries),
                   events=[e["event"] for e in ct.transfer.events()],
                   takeovers=[e["detail"] for e in ct.transfer.events()
                              if e["event"] == "takeover"])
        except axlpy.AxlError as exc:
            failures = getattr(exc, "failures", {})
            report(rank, ok=False, error=type(exc).__name__, message=str(exc),
                   failures={str(k): v for k, v in failures.items()})
        return 0

    make_sources(w, rank, a.files, a.size)
    src = os.path.join(w, "src", f"rank-{rank}")
    slow = (a.scenario == "straggler" and rank == a.bad_rank) or rank == a.late_rank
    gate = os.path.join(w, "gate")

    def hold(_progress: object) -> None:
        # The slow rank's copy blocks at its first chunk until the gate file exists: a
        # straggler that no timing on a loaded machine can turn into a fast rank.
        while not os.path.exists(gate):
            time.sleep(0.01)

    on_progress = hold if slow else None
    opts: dict[str, Any] = {"chunk_size": 64 << 10, "extent_size": 64 << 10} if slow else {}
    ct = amp.CommTransfer.create(comm, "ckpt", a.type, journal_dir=jdir, checkpoint_dir=ckpt,
                                 on_failure=a.policy, meta={"step": 7},
                                 on_progress=on_progress, **opts)
    if a.scenario == "missing" and rank == a.bad_rank:
        ct.add(os.path.join(w, "src", "no-such-dir"), os.path.join(ckpt, f"rank-{rank}"))
    else:
        ct.add(src, os.path.join(ckpt, f"rank-{rank}"))
    if a.scenario == "vanish" and rank == a.bad_rank:
        os.unlink(os.path.join(src, "part-0.bin"))
    if a.scenario == "crash" and rank == a.bad_rank:
        _crashpoints.reset_for_tests(armed=a.crash_at, hit=a.crash_hit)
    seen_at_cancel: list[str] = []
    if rank == a.late_rank:
        real_cancel = ct.transfer.cancel

        def late_cancel(**kw: Any) -> Any:
            seen_at_cancel.append(ct.transfer.state.value)  # still held: DISPATCHED
            open(gate, "w").close()
            ct.transfer.wait()
            seen_at_cancel.append(ct.transfer.state.value)  # now COMPLETED
            return real_cancel(**kw)

        ct.transfer.cancel = late_cancel  # type: ignore[method-assign]
    try:
        ct.dispatch()
        if a.scenario == "straggler":
            # Collective polling until every rank but the gated one is done (no clock).
            while any(s.status != "done" for r, s in enumerate(ct.statuses())
                      if r != a.bad_rank):
                time.sleep(0.02)
            try:
                ct.wait(timeout=a.timeout)
                report(rank, ok=True, timed_out=False)
                return 0
            except amp.StragglerTimeoutError as exc:
                slow_ranks, msg = exc.slow_ranks, str(exc)
            if slow:
                open(gate, "w").close()
            m = ct.wait(timeout=120)
            report(rank, ok=True, timed_out=True, slow_ranks=slow_ranks, message=msg,
                   entries=len(m.entries))
            return 0
        m = ct.wait(timeout=120)
        report(rank, ok=True, entries=len(m.entries), total=m.total_bytes,
               state=ct.transfer.state.value)
        ct.free()
    except amp.CollectiveError as exc:
        report(rank, ok=False, error=type(exc).__name__, op=exc.op,
               failures={str(k): v for k, v in exc.failures.items()}, message=str(exc),
               state=ct.transfer.state.value, seen_at_cancel=seen_at_cancel,
               events=[e["event"] for e in ct.transfer.events()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
