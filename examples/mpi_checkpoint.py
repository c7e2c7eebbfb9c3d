"""A toy MPI simulation that checkpoints with axlpy and restarts from the latest valid one.

Run (4 ranks, the pip-installed MPICH; no system MPI needed)::

    .venv/bin/mpiexec -n 4 .venv/bin/python examples/mpi_checkpoint.py --workdir /tmp/axlpy-demo

Every ``--every`` steps each rank writes its state to a node-local directory
(``<workdir>/local/rank-<r>/step-<k>``) and hands it to axlpy, which flushes it to the
shared directory (``<workdir>/shared/step-<k>/rank-<r>``) in the background while the
simulation keeps computing. Each step the ranks ``test()`` the flush in flight
(collective, never blocks); when every rank is done, rank 0 writes the commit marker and
the local copy is dropped. Only a checkpoint with a marker is ever restarted from.

Add ``--kill-at-step K`` to SIGKILL rank 1 at step K (the whole job dies, as on a node
failure); run the same command again without it: pending flushes are resumed from the
rank journals (``<workdir>/journals/rank-<r>.db``) and committed, the simulation restarts
from the latest valid checkpoint, and ends with the same final digest as a run that was
never interrupted.

Add ``--keep-last N`` to keep only the newest N committed checkpoints: after each commit
rank 0 moves the ``shared/_AXLPY_LATEST.json`` pointer and prunes the older checkpoints
(renamed to a hidden trash name first, so a crash never leaves half a checkpoint under
its name). The restart goes through :func:`axlpy.restore_point`, which picks the newest
checkpoint by step and skips any that fails its check.

The journals are in ``<workdir>`` (shared), so the re-run may land on other nodes. The dead
job's ranks own their transfers until their leases expire (``lease_timeout``, default
300 s); a re-run that knows the old job is dead (the scheduler ended it) passes
``--takeover`` to take them over at once. A rank whose ``add()`` failed is replayed from
its journal, so a flush that failed on a missing file completes once the file is back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from mpi4py import MPI

import axlpy
from axlpy import mpi as amp


def step_state(state: bytes, step: int) -> bytes:
    """One deterministic "timestep": mix the state with a digest of itself (real CPU work,
    and hashlib releases the GIL, so the background flush runs meanwhile)."""
    h = hashlib.sha256(state + step.to_bytes(8, "little")).digest()
    for _ in range(20):
        h = hashlib.sha256(h + state[: 1 << 20]).digest()
    k = step % len(state)
    return state[k:] + state[:k] if step % 2 else bytes(a ^ b for a, b in zip(
        state[:64], h * 2, strict=False)) + state[64:]


def digest(state: bytes) -> str:
    return hashlib.sha256(state).hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/axlpy-demo")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--size-mib", type=int, default=8, help="state per rank, MiB")
    p.add_argument("--type", default="default",
                   help="axlpy transfer type (default: fastest background engine here)")
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--keep-last", type=int, default=0,
                   help="keep only the newest N committed checkpoints (0: keep all)")
    p.add_argument("--keep-every", type=int, default=None,
                   help="with --keep-last, also keep every checkpoint whose step is a "
                   "multiple of K")
    p.add_argument("--verify", default="marker", choices=["none", "marker", "crc"],
                   help="check applied to the checkpoint restarted from")
    p.add_argument("--takeover", action="store_true",
                   help="take over the dead job's flushes even if their owners' leases "
                   "have not expired (only when that job is known dead)")
    a = p.parse_args()
    retention = (axlpy.RetentionPolicy(a.keep_last, a.keep_every) if a.keep_last
                 else None)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local = os.path.join(a.workdir, "local", f"rank-{rank}")  # node-local in real life
    shared = os.path.join(a.workdir, "shared")
    jdir = os.path.join(a.workdir, "journals")
    if rank == 0:
        os.makedirs(shared, exist_ok=True)
        os.makedirs(jdir, mode=0o700, exist_ok=True)
    os.makedirs(local, exist_ok=True)
    comm.Barrier()

    def say(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    # 1. Finish the flushes a dead job left behind, from the journals alone. Each error is
    #    collective (the same on every rank), so every rank returns together.
    #    A flush that cannot finish (its node-local sources are gone: the restart landed
    #    on other nodes) is cancelled; the simulation restarts from an older checkpoint.
    for name in amp.pending_names(comm, jdir):
        ct = amp.CommTransfer.open(comm, name, journal_dir=jdir)
        try:
            ct.resume(force=a.takeover)
            ct.wait(timeout=600)
            say(f"resumed and committed the pending flush {name}")
        except axlpy.AxlError as exc:
            say(f"could not finish pending flush {name}: {exc}")
            if "OwnershipError" in str(exc):
                say("  its owner may still be alive; if that job is dead, re-run with "
                    "--takeover (or wait until its lease expires)")
                return 1
            ct.cancel()
            say(f"  cancelled {name}")
        ct.free()
        shutil.rmtree(os.path.join(local, name), ignore_errors=True)

    # 2. Restart from the newest *valid* checkpoint by step (never one without a commit
    #    marker; one failing the check is skipped for the next older one).
    rp = axlpy.restore_point(shared, verify=a.verify)
    if rp is not None:
        assert rp.step is not None
        start = rp.step
        files = {os.path.basename(f): f for f in rp.rank_files(rank)}
        state = Path(files["state.bin"]).read_bytes()
        assert json.loads(Path(files["meta.json"]).read_text())["digest"] == digest(state)
        say(f"restarting from {rp.path} (step {start})")
    else:
        start = 0
        state = hashlib.shake_256(f"rank {rank}".encode()).digest(a.size_mib << 20)
        say(f"starting fresh: {size} ranks x {a.size_mib} MiB")

    inflight: amp.CommTransfer | None = None
    inflight_dir = ""
    t0 = time.monotonic()

    def retire(ct: amp.CommTransfer, d: str) -> None:
        m = ct.manifest
        assert m is not None
        say(f"  committed {ct.name}: {len(m.entries)} entries, {m.total_bytes >> 20} MiB")
        ct.free()
        shutil.rmtree(d, ignore_errors=True)

    for step in range(start + 1, a.steps + 1):
        if a.kill_at_step == step and rank == min(1, size - 1):
            print(f"rank {rank}: SIGKILL at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        state = step_state(state, step)
        if inflight is not None and inflight.test():  # collective, never blocks
            retire(inflight, inflight_dir)
            inflight = None
        if step % a.every:
            continue
        if inflight is not None:  # at most one flush in flight: wait for the previous one
            inflight.wait()
            retire(inflight, inflight_dir)
        name = f"step-{step:06d}"
        d = os.path.join(local, name)
        os.makedirs(d, exist_ok=True)
        Path(d, "state.bin").write_bytes(state)
        Path(d, "meta.json").write_text(json.dumps(
            {"step": step, "rank": rank, "digest": digest(state)}))
        inflight = amp.CommTransfer.create(
            comm, name, a.type, journal_dir=jdir,
            checkpoint_dir=os.path.join(shared, name), meta={"step": step}, step=step,
            retention=retention)
        inflight.add(d, os.path.join(shared, name, f"rank-{rank}"))
        inflight.dispatch()  # returns at once: the flush runs while we keep computing
        inflight_dir = d
        say(f"step {step}: checkpoint written locally, flushing in the background")
    if inflight is not None:
        inflight.wait()
        retire(inflight, inflight_dir)

    digests = comm.gather(digest(state), root=0)
    say(f"done at step {a.steps} in {time.monotonic() - t0:.1f}s; final digest "
        f"{hashlib.sha256(''.join(digests or []).encode()).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
