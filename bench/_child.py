"""One timed copy in its own process, so the parent can read its peak RSS (``wait4``).

Run by :mod:`bench.run`, never by hand (but it works by hand)::

    python -m bench._child axlpy --type default SRC DST --journal J
    python -m bench._child copytree SRC DST [--no-sync]
    python -m bench._child resume --journal J --name NAME

The last line on stdout is one JSON object: ``t_run`` is the time inside the process from
just before the first call of the copy (after ``import axlpy``) to just after it returned,
so it excludes interpreter start-up and, for axlpy, ``t_init``: the import and the first
``get_engine`` (DEFAULT's once-per-process io_uring probe); the parent also measures the
process's whole wall time. ``rss_kib`` is the peak RSS of this process (``VmHWM``). For
axlpy the run is everything a library user pays per checkpoint: open (create) the journal,
create the transfer, ``add`` the tree, ``dispatch``, ``wait``. ``commit_s`` and
``commits`` are the time spent inside journal transactions and how many there were
(``AXLPY_PROFILE_JOURNAL=1``, set by the parent; absent when this axlpy lacks the hook).

``resume`` opens an existing journal whose transfer was killed part-way and resumes it;
``t_verified`` is the time from ``Journal(path)`` until the resume's verification of
everything already on disk is done (the moment the driver starts copying what is left),
``t_run`` until the transfer is COMPLETED, ``t_init`` the time before ``Journal(path)``
(imports, the engine's once-per-process set-up); ``verified_at`` is the moment of
``t_verified`` on the wall clock (``time.time()``), so the parent can time the start-up
from before it started this process (interpreter start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

#: when this module started running (the interpreter's own start-up, ~20 ms, is before it)
_T_START = time.perf_counter()


def _commit_stats() -> dict[str, Any]:
    try:
        from axlpy import _journal
    except ImportError:  # pragma: no cover - run without axlpy importable
        return {}
    stats = getattr(_journal, "PROFILE_STATS", None)
    if stats is None:
        return {}
    return {"commit_s": float(stats["seconds"]), "commits": int(stats["count"])}


def peak_rss_kib() -> int:
    """This process's peak RSS since exec (``VmHWM``). ``wait4``'s ``ru_maxrss`` would also
    count the parent's memory at fork, which Linux carries over into the child's figure."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0  # pragma: no cover - Linux always has it


def run_axlpy(type_name: str, src: str, dst: str, journal: str) -> dict[str, Any]:
    t_init = time.perf_counter()
    import axlpy
    from axlpy.engines import get_engine

    # Once-per-process set-up, timed apart: the import, and choosing the engine (DEFAULT
    # probes io_uring in a child process once per process; the result is cached).
    engine = type(get_engine(type_name)).__name__
    t0 = time.perf_counter()
    j = axlpy.Journal(journal)
    t = j.create("bench", type_name)
    t.add(src, dst)
    t.dispatch()
    t.wait()
    state = t.state
    t1 = time.perf_counter()
    # DEFAULT chooses its engine per transfer (by size and filesystem): report that one.
    used = getattr(t, "_engine", None)
    if used is not None:
        engine = type(used).__name__
    j.close()
    if state is not axlpy.TransferState.COMPLETED:
        raise SystemExit(f"axlpy transfer ended {state.value}, not COMPLETED")
    return {"t_run": t1 - t0, "t_init": t0 - t_init, "engine": engine, **_commit_stats()}


def run_resume(journal: str, name: str, type_name: str) -> dict[str, Any]:
    import axlpy
    from axlpy import _driver
    from axlpy.engines import get_engine

    get_engine(type_name)  # once-per-process set-up, as in run_axlpy

    verified: list[float] = []
    verified_at: list[float] = []  # the same moment on the wall clock (for the parent)
    original_run = _driver.Driver.run

    def timed_run(self: Any, *args: Any, **kwargs: Any) -> None:
        # recover() calls run() once it has checked every journaled file against the disk.
        if not verified:
            verified.append(time.perf_counter())
            verified_at.append(time.time())
        original_run(self, *args, **kwargs)

    _driver.Driver.run = timed_run  # type: ignore[method-assign]
    with axlpy.Journal(journal) as peek:  # untimed: how far the killed transfer got
        before = peek.open(name).status()
    t0 = time.perf_counter()
    j = axlpy.Journal(journal)
    t = j.open(name)
    t.resume()
    t.wait()
    state = t.state
    t1 = time.perf_counter()
    j.close()
    if state is not axlpy.TransferState.COMPLETED:
        raise SystemExit(f"resumed transfer ended {state.value}, not COMPLETED")
    return {"t_run": t1 - t0, "t_verified": (verified[0] - t0) if verified else None,
            "verified_at": verified_at[0] if verified_at else None,
            "t_init": t0 - _T_START,
            "files_done_before": before.files_done, "files_total": before.files_total,
            **_commit_stats()}


def run_copytree(src: str, dst: str, sync: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    shutil.copytree(src, dst)
    if sync:
        os.sync()
    return {"t_run": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._child")
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("axlpy")
    a.add_argument("--type", required=True)
    a.add_argument("--journal", required=True)
    a.add_argument("src")
    a.add_argument("dst")
    c = sub.add_parser("copytree")
    c.add_argument("--no-sync", action="store_true")
    c.add_argument("src")
    c.add_argument("dst")
    r = sub.add_parser("resume")
    r.add_argument("--journal", required=True)
    r.add_argument("--name", default="bench")
    r.add_argument("--type", default="default",
                   help="the transfer's type, to set up its engine before the clock starts")
    args = p.parse_args(argv)
    if args.mode == "axlpy":
        out = run_axlpy(args.type, args.src, args.dst, args.journal)
    elif args.mode == "copytree":
        out = run_copytree(args.src, args.dst, not args.no_sync)
    else:
        out = run_resume(args.journal, args.name, args.type)
    out["rss_kib"] = peak_rss_kib()
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
