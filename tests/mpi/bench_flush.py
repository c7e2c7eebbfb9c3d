"""Time a collective flush: ``mpiexec -n 4 python tests/mpi/bench_flush.py DIR [--type T]``.

Each rank writes ``--files`` files of ``--mib`` MiB to ``DIR/src/rank-<r>`` first (not
timed), then the timed part: collective create, add, dispatch, wait (all ranks COMPLETED,
commit marker written and fsynced). Rank 0 prints one JSON line. Not a test: not
collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from mpi4py import MPI

from axlpy import mpi as amp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--type", default="default")
    p.add_argument("--name", default="bench")
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    src = os.path.join(a.dir, "src", f"rank-{rank}")
    ckpt = os.path.join(a.dir, "shared", a.name)
    jdir = os.path.join(a.dir, "journals")
    if rank == 0:
        shutil.rmtree(ckpt, ignore_errors=True)
        os.makedirs(jdir, mode=0o700, exist_ok=True)
    os.makedirs(src, exist_ok=True)
    block = os.urandom(1 << 20)
    for i in range(a.files):
        path = os.path.join(src, f"f{i}.bin")
        if not os.path.exists(path) or os.path.getsize(path) != a.mib << 20:
            with open(path, "wb") as f:
                for _ in range(a.mib):
                    f.write(block)
    comm.Barrier()
    t0 = time.perf_counter()
    ct = amp.CommTransfer.create(comm, a.name, a.type, journal_dir=jdir, checkpoint_dir=ckpt)
    ct.add(src, os.path.join(ckpt, f"rank-{rank}"))
    ct.dispatch()
    m = ct.wait()
    dt = time.perf_counter() - t0
    ct.free()
    if rank == 0:
        total = m.total_bytes
        print(json.dumps({"ranks": size, "type": a.type, "files_per_rank": a.files,
                          "mib_per_file": a.mib, "total_mib": total >> 20,
                          "seconds": round(dt, 3), "mib_per_s": round((total >> 20) / dt, 1)}))


if __name__ == "__main__":
    main()
