"""Throughput of file copies through each IO queue, against cp(1).

Usage (as root, for the cold-cache runs)::

    .venv/bin/python bench/io_queues.py [--dir DIR] [--rounds 3] [--warm]

Two workloads: 1 x 1 GiB and 64 x 16 MiB. For each round and each workload the
methods run interleaved (posix, uring, cp, then the next round), each copying the same
source files to fresh destinations, with ``sync; echo 3 > /proc/sys/vm/drop_caches``
before every run (cold cache), unless ``--warm``. A copy is chunked reads into a ring of
buffers and writes of the same buffers, ``depth`` requests in flight, then ``fsync``;
the figure is source bytes / wall time, in MB/s (10^6 bytes). A last section compares
``io_uring_prep_read`` with ``io_uring_prep_read_fixed`` into registered buffers (warm
cache, no copy-out), to decide whether registered buffers are worth it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from axlpy.io import IOQueue, PosixIOQueue
from axlpy.io._uring import UringIOQueue, load_liburing

CHUNK = 1 << 20
DEPTH = 32


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        sys.exit(f"cannot drop caches ({exc}); run as root or pass --warm")


def make_sources(d: Path, workload: str) -> list[Path]:
    sizes = [1 << 30] if workload == "1x1GiB" else [16 << 20] * 64
    paths = []
    block = os.urandom(CHUNK)
    for i, size in enumerate(sizes):
        p = d / f"{workload}-src-{i}"
        with open(p, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(block)
        paths.append(p)
    os.sync()
    return paths


def copy_with_queue(q: IOQueue, src: Path, dst: Path) -> None:
    size = src.stat().st_size
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        bufs = [bytearray(CHUNK) for _ in range(DEPTH // 2)]
        free = list(range(len(bufs)))
        offset = 0
        in_flight = 0
        while offset < size or in_flight:
            while free and offset < size:
                i = free.pop()
                n = min(CHUNK, size - offset)
                q.prep_read(sfd, memoryview(bufs[i])[:n], offset, tag=("r", i, offset))
                offset += n
                in_flight += 1
            q.submit()
            for c in q.reap(1):
                tag = c.request.tag
                assert isinstance(tag, tuple)
                kind: str = tag[0]
                i = int(tag[1])
                off: int = tag[2]
                if c.result < 0:
                    raise OSError(-c.result, f"{kind} at {off}")
                if kind == "r":
                    q.prep_write(dfd, memoryview(bufs[i])[: c.result], off, tag=("w", i, off))
                else:
                    free.append(i)
                    in_flight -= 1
            q.submit()
        os.fsync(dfd)
    finally:
        os.close(sfd)
        os.close(dfd)


def run(method: str, sources: list[Path], outdir: Path) -> float:
    outdir.mkdir(exist_ok=True)
    total = sum(p.stat().st_size for p in sources)
    t0 = time.perf_counter()
    if method == "cp":
        subprocess.run(["cp", *map(str, sources), str(outdir)], check=True)
        subprocess.run(["sync", "-f", str(outdir)], check=True)
    else:
        q: IOQueue = UringIOQueue(DEPTH) if method == "uring" else PosixIOQueue(DEPTH)
        try:
            for src in sources:
                copy_with_queue(q, src, outdir / src.name)
        finally:
            q.close()
    elapsed = time.perf_counter() - t0
    shutil.rmtree(outdir)
    return total / elapsed / 1e6


def fixed_buffers_probe(src: Path, rounds: int = 3) -> tuple[float, float]:
    """Warm-cache read MB/s: plain IORING_OP_READ vs READ_FIXED into registered buffers."""
    L = load_liburing()
    size = src.stat().st_size
    fd = os.open(src, os.O_RDONLY)
    results: dict[str, list[float]] = {"plain": [], "fixed": []}
    nbuf = 16
    bufs = [bytearray(CHUNK) for _ in range(nbuf)]
    for _ in range(rounds):
        for mode in ("plain", "fixed"):
            ring = L.io_uring()
            L.io_uring_queue_init(nbuf, ring, 0)
            if mode == "fixed":
                L.io_uring_register_buffers(ring, L.iovec(bufs), nbuf)
            cqe = L.io_uring_cqe()
            t0 = time.perf_counter()
            offset = 0
            while offset < size:
                n = 0
                for i in range(nbuf):
                    if offset >= size:
                        break
                    sqe = L.io_uring_get_sqe(ring)
                    if mode == "fixed":
                        L.io_uring_prep_read_fixed(sqe, fd, bufs[i], CHUNK, offset, i)
                    else:
                        L.io_uring_prep_read(sqe, fd, bufs[i], CHUNK, offset)
                    offset += CHUNK
                    n += 1
                L.io_uring_submit(ring)
                for _ in range(n):
                    L.io_uring_wait_cqe(ring, cqe)
                    assert cqe.res > 0, cqe.res
                    L.io_uring_cqe_seen(ring, cqe)
            results[mode].append(size / (time.perf_counter() - t0) / 1e6)
            L.io_uring_queue_exit(ring)
    os.close(fd)
    return statistics.median(results["plain"]), statistics.median(results["fixed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to put the files (default: /var/tmp)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", action="store_true", help="do not drop caches")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="axlpy-bench-", dir=args.dir or "/var/tmp"))
    methods = ["posix", "uring", "cp"]
    try:
        print(
            f"dir={base} chunk={CHUNK} depth={DEPTH} rounds={args.rounds} "
            f"cache={'warm' if args.warm else 'cold'}"
        )
        table: dict[tuple[str, str], list[float]] = {}
        for workload in ("1x1GiB", "64x16MiB"):
            sources = make_sources(base, workload)
            for r in range(args.rounds):
                for m in methods:
                    if not args.warm:
                        drop_caches()
                    mbs = run(m, sources, base / f"out-{m}")
                    table.setdefault((workload, m), []).append(mbs)
                    print(f"  round {r} {workload:9} {m:6} {mbs:8.1f} MB/s", flush=True)
            if workload == "1x1GiB":
                plain, fixed = fixed_buffers_probe(sources[0])
            for p in sources:
                p.unlink()
        print("\nworkload   method   median MB/s   (all runs)")
        for (workload, m), vals in table.items():
            runs = ", ".join(f"{v:.0f}" for v in vals)
            print(f"{workload:10} {m:6} {statistics.median(vals):10.1f}     ({runs})")
        print(
            f"\nregistered buffers, warm 1 GiB read in 1 MiB requests: plain {plain:.0f} MB/s, "
            f"fixed {fixed:.0f} MB/s"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
