"""MPI program for the lifecycle tests: ``mpiexec -n N python lifecycle_prog.py WORKDIR``.

Scenario "older pending flush": flush A (step 10) is created and its files added, but not
dispatched (pending, as a job that died before its flush would leave it); flush B (step
20) is created, dispatched and committed; then A is reopened from the journals, resumed
and committed, so A's marker is the newest by commit time. Every rank writes what
``restore_point`` returned to ``WORKDIR/result-<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    w = sys.argv[1]
    from mpi4py import MPI

    import axlpy
    import axlpy.mpi as amp

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    jdir = os.path.join(w, "journals")
    shared = os.path.join(w, "shared")
    src = os.path.join(w, "src", f"rank-{rank}")
    if rank == 0:
        os.makedirs(jdir, mode=0o700, exist_ok=True)
        os.makedirs(shared, exist_ok=True)
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "state.bin"), "wb") as f:
        f.write(os.urandom(100_000 + rank))
    comm.Barrier()

    def flush(step: int) -> amp.CommTransfer:
        d = os.path.join(shared, f"step-{step:06d}")
        ct = amp.CommTransfer.create(comm, f"step-{step:06d}", "pthread", journal_dir=jdir,
                                     checkpoint_dir=d, step=step)
        ct.add(src, os.path.join(d, f"rank-{rank}"))
        return ct

    a = flush(10)  # pending: never dispatched by this "job"
    b = flush(20)
    b.dispatch()
    b.wait(timeout=120)
    b.free()
    a.journal.close()
    again = amp.CommTransfer.open(comm, "step-000010", journal_dir=jdir)
    again.resume()  # CREATED: dispatched now, committed after step 20
    m10 = again.wait(timeout=120)
    again.free()
    rp = axlpy.restore_point(shared)
    with open(os.path.join(w, f"result-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "step": rp.step if rp else None,
                   "name": rp.name if rp else None, "committed_10": m10.committed_ns,
                   "files": list(rp.rank_files(rank)) if rp else []}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
