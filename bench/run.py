"""axlpy against ``cp -r && sync``, ``rsync -a && sync`` and ``shutil.copytree + os.sync()``.

One command (from the repository root, as root for cold-cache runs)::

    .venv/bin/python -m bench                 # the full benchmark, ~20-30 min
    .venv/bin/python -m bench --quick --out /tmp/b   # seconds: checks it runs and reports

What it does, per scenario (see :data:`FULL` and :data:`QUICK`):

1. generates the source tree once, from ``os.urandom`` (nothing compresses or dedups);
2. runs every tool ``--reps`` times (default 5), **interleaved**: round r runs every tool
   once, the order rotated by one each round, so drift (other users of the machine, the
   disk warming up) spreads over all tools instead of landing on one;
3. before each run: the destination does not exist; as root ``sync; echo 3 >
   /proc/sys/vm/drop_caches`` (cold page cache), else warm — the output says which;
4. each run copies the source tree to a fresh destination directory; the destination is
   checked (file count and bytes; in quick mode also contents) and then removed *outside
   the timed region*, followed by ``sync`` and a short pause (creating files right after
   deleting thousands is much slower on some filesystems; see ``--pause``). Many-file
   scenarios on a disk move each destination to a trash directory instead and delete the
   trash after the scenario, when the disk has room.

Tools: ``axlpy-<type>`` for each :class:`axlpy.TransferType` this machine can run (found at
run time: ``get_engine`` succeeds and a one-file transfer completes), ``cp -r`` then
``sync``, ``rsync -a`` then ``sync``, ``shutil.copytree`` then ``os.sync()`` (on tmpfs,
without the sync: nothing to flush). axlpy and copytree run in a child process
(:mod:`bench._child`); the time reported for them is the library call inside the child
(journal open/create, add, dispatch, wait — interpreter start-up excluded, as a library
user does not pay it per checkpoint); the child's whole wall time, start-up included, is
kept too, and the table gives the ratio both ways. So is axlpy's once-per-process set-up
(``import axlpy`` and the first ``get_engine``, where DEFAULT probes io_uring). Peak RSS
is each Python child's ``VmHWM``, and ``/usr/bin/time -f %M`` for ``cp``/``rsync``.

The 100k-file tmpfs scenario is followed by a resume measurement: a DEFAULT transfer of
the same tree is SIGKILLed (``AXLPY_CRASH_AT=stage.after_fsync``) after 95% of its files
are staged, and a new process resumes it; start-up is the time from ``Journal(path)``
until resume has verified everything already on disk, and "incl. process set-up" the time
from just before the parent starts that process (3 rounds: each needs a transfer of the
whole tree first).

Results: ``<out>/bench-<date>.json``, ``.md`` (tables) and ``.png`` (chart); the full run
writes to ``docs/bench/`` by default.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/run.py`` as well as ``python -m bench``
    sys.path.insert(0, str(ROOT))

__all__ = ["FULL", "QUICK", "Scenario", "main"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Scenario:
    name: str
    nfiles: int
    size: int
    where: str  # "disk" or "tmpfs"
    dirs: int = 0  # empty directories beside the files

    @property
    def total(self) -> int:
        return self.nfiles * self.size


FULL: tuple[Scenario, ...] = (
    Scenario("1 x 2 GiB", 1, 2 * GiB, "disk"),
    Scenario("8 x 256 MiB", 8, 256 * MiB, "disk"),
    Scenario("64 x 32 MiB", 64, 32 * MiB, "disk"),
    Scenario("4096 x 64 KiB", 4096, 64 * KiB, "disk"),
    Scenario("100000 x 4 KiB (tmpfs)", 100_000, 4 * KiB, "tmpfs"),
    Scenario("20000 x 1 KiB", 20_000, KiB, "disk"),
    Scenario("10000 empty dirs", 0, 0, "disk", dirs=10_000),
)

#: one of each shape, tiny: only checks that every tool runs and the report is written
QUICK: tuple[Scenario, ...] = (
    Scenario("1 x 8 MiB", 1, 8 * MiB, "disk"),
    Scenario("64 x 64 KiB", 64, 64 * KiB, "disk"),
    Scenario("300 x 4 KiB (tmpfs)", 300, 4 * KiB, "tmpfs"),
    Scenario("200 x 1 KiB", 200, KiB, "disk"),
    Scenario("100 empty dirs", 0, 0, "disk", dirs=100),
)

#: the scenario a resume measurement is made on (the many-small-files tmpfs one)
RESUME_CRASH_POINT = "stage.after_fsync"
RESUME_FRACTION = 0.95
#: each resume measurement first needs a (killed) transfer of the whole tree
RESUME_REPS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- machine ---------------------------------------------------------------------------


def _fs_type(path: Path) -> str:
    """Filesystem type and device of the mount holding ``path`` (from /proc/mounts)."""
    best, fs = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ, opts, *_ = line.split()
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(
                        best):
                    best, fs = mnt, f"{typ} on {mnt} ({dev}, {opts})"
    except OSError:
        pass
    return fs


def machine_info(dirs: dict[str, Path]) -> dict[str, Any]:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * KiB
    except OSError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "axlpy"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fs": {k: _fs_type(v) for k, v in dirs.items()},
        "axlpy_commit": commit + (" (+ uncommitted changes in axlpy/)" if dirty else ""),
        "tools": {
            "cp": _first_line(["cp", "--version"]),
            "rsync": _first_line(["rsync", "--version"]),
        },
    }


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- data ------------------------------------------------------------------------------


def generate(src: Path, sc: Scenario) -> None:
    """Random files (``os.urandom``), reused when a previous run left the same tree."""
    stamp = src.parent / "source.json"
    want = {"nfiles": sc.nfiles, "size": sc.size, "dirs": sc.dirs}
    if src.is_dir() and stamp.exists() and json.loads(stamp.read_text()) == want:
        log(f"  reusing source tree {src}")
        return
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    width = len(str(sc.nfiles - 1))
    chunk = 8 * MiB
    t0 = time.monotonic()
    for i in range(sc.nfiles):
        with open(src / f"f{i:0{width}d}.bin", "wb") as f:
            left = sc.size
            while left:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n
    dwidth = len(str(max(sc.dirs - 1, 0)))
    for i in range(sc.dirs):
        (src / f"d{i:0{dwidth}d}").mkdir()
    os.sync()
    stamp.write_text(json.dumps(want))
    log(f"  generated {sc.nfiles} x {sc.size} B and {sc.dirs} empty dirs in "
        f"{time.monotonic() - t0:.1f}s")


def tree_digest(path: Path, contents: bool) -> tuple[int, int, str, int]:
    """(files, bytes, optional content hash, directories) of a tree, for checking copies."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    files = size = ndirs = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        ndirs += len(dirnames)
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            files += 1
            size += os.path.getsize(p)
            if contents:
                h.update(os.path.relpath(p, path).encode())
                with open(p, "rb") as f:
                    while b := f.read(MiB):
                        h.update(b)
    return files, size, h.hexdigest() if contents else "", ndirs


# -- tools -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    kind: str  # "axlpy", "cp", "rsync", "copytree"
    type_name: str = ""


def _child(args: Sequence[str], env: dict[str, str] | None = None
           ) -> tuple[float, int, int, dict[str, Any], str]:
    """Run ``python -m bench._child ARGS``: (wall s, exit code, peak RSS KiB, JSON, stderr)."""
    with tempfile.TemporaryFile() as err:
        # Peak RSS is the child's own VmHWM (see bench._child), not wait4's ru_maxrss.
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bench._child", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, **(env or {})})
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
        wall = time.perf_counter() - t0
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    lines = out.decode(errors="replace").strip().splitlines()
    data: dict[str, Any] = {}
    if proc.returncode == 0 and lines:
        data = json.loads(lines[-1])
    return wall, proc.returncode, int(data.get("rss_kib", 0)), data, stderr


def _command(cmd: Sequence[str]) -> tuple[float, int]:
    """Run a command: (wall s, peak RSS KiB or 0); raises on failure.

    The peak RSS comes from ``/usr/bin/time -f %M`` when it exists: a small process that
    forks the command, so the figure is not inflated by this Python's memory (Linux
    carries the forking process's high-water mark into the child's ``ru_maxrss``).
    """
    with tempfile.NamedTemporaryFile("r") as rss_file:
        wrap = (["/usr/bin/time", "-o", rss_file.name, "-f", "%M"]
                if os.access("/usr/bin/time", os.X_OK) else [])
        t0 = time.perf_counter()
        proc = subprocess.run([*wrap, *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stderr.decode()}")
        text = rss_file.read().strip()
    rss = int(text.splitlines()[-1]) if wrap and text else 0
    return wall, rss


def run_tool(tool: Tool, src: Path, dst: Path, journal: Path, sync: bool) -> dict[str, Any]:
    """One timed copy of ``src`` to ``dst`` (which must not exist)."""
    if tool.kind == "axlpy":
        wall, rc, rss, data, err = _child(
            ["axlpy", "--type", tool.type_name, "--journal", str(journal), str(src), str(dst)],
            env={"AXLPY_PROFILE_JOURNAL": "1"})
        if rc != 0:
            raise RuntimeError(f"{tool.name} failed ({rc}): {err.strip()[-2000:]}")
        return {"time": data["t_run"], "process_wall": wall, "rss_kib": rss,
                **{k: data[k] for k in ("t_init", "commit_s", "commits", "engine")
                   if k in data}}
    if tool.kind == "copytree":
        wall, rc, rss, data, err = _child(
            ["copytree", *([] if sync else ["--no-sync"]), str(src), str(dst)])
        if rc != 0:
            raise RuntimeError(f"copytree failed ({rc}): {err.strip()[-2000:]}")
        return {"time": data["t_run"], "process_wall": wall, "rss_kib": rss}
    cmd = (["cp", "-r", str(src), str(dst)] if tool.kind == "cp"
           else ["rsync", "-a", f"{src}/", f"{dst}/"])
    t_copy, rss = _command(cmd)
    t_sync = _command(["sync"])[0] if sync else 0.0
    return {"time": t_copy + t_sync, "process_wall": t_copy + t_sync, "copy_s": t_copy,
            "sync_s": t_sync, "rss_kib": rss}


def discover_tools(work: Path) -> tuple[list[Tool], dict[str, str]]:
    """axlpy-<type> for each transfer type that works here, then the reference tools.

    A type works if ``get_engine`` accepts it and a one-file transfer of that type
    completes (io_uring may be importable but refused by the kernel or a sandbox).
    """
    import axlpy
    from axlpy.engines import get_engine

    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    probe = work / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    (probe / "src").mkdir(parents=True)
    (probe / "src" / "f").write_bytes(os.urandom(4096))
    (probe / "j").mkdir(mode=0o700)
    for t in axlpy.TransferType:
        try:
            get_engine(t.value)
        except Exception as exc:
            skipped[t.value] = f"get_engine: {type(exc).__name__}: {exc}"
            continue
        _, rc, _, _, err = _child(["axlpy", "--type", t.value, "--journal",
                                   str(probe / "j" / f"{t.value}.db"), str(probe / "src"),
                                   str(probe / f"dst-{t.value}")])
        if rc != 0:
            skipped[t.value] = f"one-file transfer failed: {err.strip().splitlines()[-1:]}"
            continue
        tools.append(Tool(f"axlpy-{t.value}", "axlpy", t.value))
    shutil.rmtree(probe, ignore_errors=True)
    for name, kind in (("cp -r", "cp"), ("rsync -a", "rsync")):
        if shutil.which(kind):
            tools.append(Tool(name, kind))
        else:
            skipped[name] = f"{kind} is not installed"
    tools.append(Tool("copytree", "copytree"))
    return tools, skipped


# -- scenarios -------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], total: int) -> dict[str, Any]:
    times = [r["time"] for r in runs]
    walls = [r["process_wall"] for r in runs]
    med = statistics.median(times)
    out: dict[str, Any] = {
        "n": len(times), "min_s": min(times), "median_s": med, "max_s": max(times),
        "mib_s_median": total / MiB / med if med > 0 else 0.0,
        "mib_s_best": total / MiB / min(times) if min(times) > 0 else 0.0,
        "process_wall_median_s": statistics.median(walls),
        "init_median_s": statistics.median(r.get("t_init", 0.0) for r in runs),
        "rss_max_kib": max(r["rss_kib"] for r in runs),
    }
    shares = [r["commit_s"] / r["time"] for r in runs if "commit_s" in r and r["time"] > 0]
    if shares:
        out["journal_commit_share_median"] = statistics.median(shares)
        out["journal_commits_median"] = statistics.median(r["commits"] for r in runs)
    if "engine" in runs[0]:
        out["engine"] = runs[0]["engine"]
    return out


def run_scenario(sc: Scenario, tools: list[Tool], base: Path, reps: int, cold: bool,
                 pause: float, verify_contents: bool) -> dict[str, Any]:
    home = base / _slug(sc.name)
    src = home / "src"
    jdir = home / "journals"
    trash = home / "trash"
    log(f"scenario {sc.name}: {sc.nfiles} files x {sc.size} B, {sc.dirs} empty dirs, "
        f"in {home}")
    generate(src, sc)
    for d in (jdir, trash):
        shutil.rmtree(d, ignore_errors=True)
    jdir.mkdir(mode=0o700)
    trash.mkdir()
    for stale in home.glob("dst-*"):
        shutil.rmtree(stale)
    want = tree_digest(src, verify_contents)
    sync = sc.where != "tmpfs"
    this_cold = cold and sc.where != "tmpfs"
    free = shutil.disk_usage(home).free
    defer = (sc.where == "disk" and sc.nfiles + sc.dirs >= 1000
             and sc.total * reps * len(tools) < free // 4)
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tools}
    for rep in range(reps):
        order = tools[rep % len(tools):] + tools[:rep % len(tools)]
        for tool in order:
            dst = home / f"dst-{_slug(tool.name)}-{rep}"
            journal = jdir / f"{_slug(tool.name)}-{rep}.db"
            if this_cold:
                drop_caches()
            load = os.getloadavg()[0]
            r = run_tool(tool, src, dst, journal, sync)
            r["load1"] = load
            r["rep"] = rep
            got = tree_digest(dst, verify_contents)
            if got != want:
                raise RuntimeError(f"{tool.name} copy of {src} is wrong: {got} != {want}")
            runs[tool.name].append(r)
            log(f"  {sc.name:>24}  rep {rep}  {tool.name:>16}  {r['time']:8.3f}s  "
                f"{sc.total / MiB / r['time']:9.1f} MiB/s  rss {r['rss_kib'] / 1024:6.1f} MiB"
                + (f"  commits {r['commit_s'] / r['time']:.0%}" if "commit_s" in r else ""))
            # Untimed clean-up, then let the filesystem settle before the next run.
            if defer:
                os.rename(dst, trash / dst.name)
            else:
                shutil.rmtree(dst)
            for p in jdir.glob(f"{_slug(tool.name)}-{rep}.db*"):
                p.unlink()
            if sync:
                os.sync()
                time.sleep(pause)
    shutil.rmtree(trash, ignore_errors=True)
    os.sync()
    summary = {name: summarize(rs, sc.total) for name, rs in runs.items() if rs}
    return {
        "name": sc.name, "nfiles": sc.nfiles, "file_size": sc.size, "total_bytes": sc.total,
        "empty_dirs": sc.dirs,
        "where": sc.where, "dir": str(home),
        "cache": ("cold (sync; echo 3 > drop_caches before each run)" if this_cold else
                  "tmpfs: data is in memory, no page cache to drop; no sync needed"
                  if sc.where == "tmpfs" else "warm (cannot drop caches)"),
        "sync_after": sync,
        "cleanup": "moved to trash, deleted after the scenario" if defer
        else f"deleted after each run, then sync + {pause}s pause" if sync
        else "deleted after each run",
        "runs": runs, "summary": summary, "ratios_vs_cp": ratios(summary),
        "ratios_vs_copytree": ratios(summary, "copytree"),
    }


def ratios(summary: dict[str, Any], peer: str = "cp -r") -> dict[str, Any]:
    """Throughput of each tool relative to ``peer`` measured in the same run (median /
    median; >1 is faster)."""
    cp = summary.get(peer)
    if not cp:
        return {}
    out: dict[str, Any] = {}
    for name, s in summary.items():
        out[name] = {"ratio": cp["median_s"] / s["median_s"],
                     "ratio_process_wall": cp["process_wall_median_s"]
                     / s["process_wall_median_s"]}
    return out


def run_resume(sc: Scenario, base: Path, reps: int) -> dict[str, Any]:
    """Kill a DEFAULT transfer of ``sc`` after 95% of files are staged; time the resume."""
    home = base / _slug(sc.name)
    src = home / "src"
    jdir = home / "journals"
    jdir.mkdir(mode=0o700, exist_ok=True)
    hit = max(1, int(sc.nfiles * RESUME_FRACTION))
    log(f"resume: {sc.name}, killed at {RESUME_CRASH_POINT} #{hit}")
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        dst = home / f"dst-resume-{rep}"
        journal = jdir / f"resume-{rep}.db"
        wall, rc, _, _, err = _child(
            ["axlpy", "--type", "default", "--journal", str(journal), str(src), str(dst)],
            env={"AXLPY_CRASH_AT": RESUME_CRASH_POINT, "AXLPY_CRASH_HIT": str(hit)})
        if rc != -9:
            raise RuntimeError(f"the transfer to be resumed was not killed (exit {rc}): "
                               f"{err.strip()[-2000:]}")
        spawned = time.time()  # the whole process start is counted (issue 14.7)
        rwall, rc, rss, data, err = _child(["resume", "--journal", str(journal)],
                                           env={"AXLPY_PROFILE_JOURNAL": "1"})
        if rc != 0:
            raise RuntimeError(f"resume failed ({rc}): {err.strip()[-2000:]}")
        got = tree_digest(dst, False)
        if got[:2] != (sc.nfiles, sc.total):
            raise RuntimeError(f"resumed copy is wrong: {got[:2]}")
        r: dict[str, Any] = {
            "killed_after_s": wall, "startup_s": data["t_verified"],
            "startup_fresh_process_s": (data["verified_at"] - spawned
                                        if data.get("verified_at") is not None
                                        else data["t_verified"] + data["t_init"]),
            "resume_s": data["t_run"], "process_wall": rwall, "rss_kib": rss, "rep": rep,
            "files_done_before": data["files_done_before"],
            **{k: data[k] for k in ("commit_s", "commits") if k in data}}
        runs.append(r)
        log(f"  resume rep {rep}: start-up {r['startup_s']:.3f}s, resume total "
            f"{r['resume_s']:.3f}s, {r['files_done_before']} files published before the kill")
        shutil.rmtree(dst)
        for p in jdir.glob(f"resume-{rep}.db*"):
            p.unlink()
    starts = [r["startup_s"] for r in runs]
    return {
        "scenario": sc.name, "type": "default", "crash_point": RESUME_CRASH_POINT,
        "crash_hit": hit, "runs": runs,
        "startup_min_s": min(starts), "startup_median_s": statistics.median(starts),
        "startup_max_s": max(starts),
        "startup_fresh_process_median_s": statistics.median(
            r["startup_fresh_process_s"] for r in runs),
        "resume_median_s": statistics.median(r["resume_s"] for r in runs),
        "rss_max_kib": max(r["rss_kib"] for r in runs),
        "method": "a DEFAULT transfer is SIGKILLed by AXLPY_CRASH_AT at the crash point's "
                  f"hit #{hit} (that many files staged and fsynced; published ones up to the "
                  "last group commit); a new process runs Journal(path).open(name).resume() "
                  "and wait(); start-up = Journal(path) until verification of every "
                  "journaled file on disk is done (PUBLISHED files re-read and CRC-checked, "
                  "verify_published=True, the default); a fresh process also pays "
                  "its start (fork/exec, the interpreter), imports and the engine's "
                  "set-up (DEFAULT: the io_uring probe) first: 'start-up incl. process "
                  "set-up' is timed from just before the parent starts the resume process "
                  "to the end of verification",
    }


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


#: issue 14's targets: scenario -> (minimum ratio vs cp -r, minimum ratio vs copytree)
TARGETS: dict[str, tuple[float, float | None]] = {
    "1 x 2 GiB": (1.0, 1.0),
    "8 x 256 MiB": (1.0, 1.0),
    "64 x 32 MiB": (1.0, 1.0),
    "4096 x 64 KiB": (1.0, None),
    "20000 x 1 KiB": (0.8, None),
    "10000 empty dirs": (0.5, None),
    "100000 x 4 KiB (tmpfs)": (0.5, None),
}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what was measured (median ratios, same run)."""
    out: list[dict[str, Any]] = []
    by_name = {s["name"]: s for s in result["scenarios"]}
    default = "axlpy-default"

    def ratio_of(name: str, key: str) -> float | None:
        s = by_name.get(name)
        if not s or default not in s.get(key, {}):
            return None
        return float(s[key][default]["ratio"])

    for name, (vs_cp, vs_copytree) in TARGETS.items():
        for key, peer, goal in (("ratios_vs_cp", "cp -r", vs_cp),
                                ("ratios_vs_copytree", "copytree", vs_copytree)):
            r = ratio_of(name, key)
            if goal is not None and r is not None:
                out.append({"target": f"{name}: axlpy-default / {peer} >= {goal}",
                            "measured": round(r, 3), "met": r >= goal})
    if result.get("resume"):
        v = result["resume"]["startup_fresh_process_median_s"]
        out.append({"target": "resume start-up (100k files) incl. process start < 1.5 s",
                    "measured": round(v, 3), "met": v < 1.5})
    for name, limit in (("1 x 2 GiB", 150), ("100000 x 4 KiB (tmpfs)", 100)):
        s = by_name.get(name)
        if s and default in s["summary"]:
            rss = s["summary"][default]["rss_max_kib"] / 1024
            out.append({"target": f"peak RSS, {name}, < {limit} MiB",
                        "measured": round(rss, 1), "met": rss < limit})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny scenarios, 1 round, warm cache: checks the benchmark runs")
    p.add_argument("--reps", type=int, help="rounds per scenario (default 5; quick: 1)")
    p.add_argument("--out", type=Path, help="where to write results (default docs/bench; "
                   "quick: a temporary directory)")
    p.add_argument("--disk-dir", type=Path, default=Path("/work/bench-data"),
                   help="scratch directory on the real disk (default /work/bench-data)")
    p.add_argument("--tmpfs-dir", type=Path, default=Path("/dev/shm/axlpy-bench"),
                   help="scratch directory on tmpfs (default /dev/shm/axlpy-bench)")
    p.add_argument("--only", action="append", default=[],
                   help="run only scenarios whose name contains this (repeatable)")
    p.add_argument("--tools", help="comma-separated tool names to run (default: all)")
    p.add_argument("--warm", action="store_true", help="do not drop caches even as root")
    p.add_argument("--cold", action="store_true", help="drop caches in quick mode too")
    p.add_argument("--pause", type=float, help="seconds to wait after each clean-up "
                   "(default 2; quick: 0)")
    p.add_argument("--no-resume", action="store_true", help="skip the resume measurement")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the generated source trees for the next run")
    args = p.parse_args(argv)

    scenarios = QUICK if args.quick else FULL
    if args.only:
        scenarios = tuple(s for s in scenarios if any(o in s.name for o in args.only))
    reps = args.reps or (1 if args.quick else 5)
    pause = args.pause if args.pause is not None else (0.0 if args.quick else 2.0)
    cold = can_drop_caches() and not args.warm and (args.cold or not args.quick)
    out = args.out or (Path(tempfile.mkdtemp(prefix="axlpy-bench-")) if args.quick
                       else ROOT / "docs" / "bench")
    out.mkdir(parents=True, exist_ok=True)
    disk = args.disk_dir / ("quick" if args.quick else "full")
    tmpfs = args.tmpfs_dir / ("quick" if args.quick else "full")
    for d in (disk, tmpfs):
        d.mkdir(parents=True, exist_ok=True)
    need = max((s.total for s in scenarios if s.where == "disk"), default=0) * 3
    if shutil.disk_usage(disk).free < need:
        log(f"not enough space in {disk}: need {need / GiB:.1f} GiB")
        return 2

    tools, skipped = discover_tools(disk)
    if args.tools:
        keep = {t.strip() for t in args.tools.split(",")}
        tools = [t for t in tools if t.name in keep]
    from axlpy.engines import get_engine

    started = _dt.datetime.now(_dt.UTC)
    result: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join([Path(sys.executable).name, "-m", "bench",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info({"disk": disk, "tmpfs": tmpfs}),
        "reps": reps,
        "cache": "cold" if cold else "warm",
        "tools": [t.name for t in tools],
        "skipped_types": skipped,
        "default_engine": type(get_engine("default")).__name__,
        "load_at_start": os.getloadavg(),
        "scenarios": [],
        "resume": None,
    }
    log(f"tools: {', '.join(t.name for t in tools)}; cache {result['cache']}; reps {reps}")
    if skipped:
        log(f"skipped transfer types: {skipped}")
    try:
        for sc in scenarios:
            base = tmpfs if sc.where == "tmpfs" else disk
            result["scenarios"].append(
                run_scenario(sc, tools, base, reps, cold, pause, verify_contents=args.quick))
            if sc.where == "tmpfs" and not args.no_resume and any(
                    t.name == "axlpy-default" for t in tools):
                result["resume"] = run_resume(sc, base, min(reps, RESUME_REPS))
            if not args.keep_data:
                shutil.rmtree(base / _slug(sc.name), ignore_errors=True)
    finally:
        if not args.keep_data:
            for d in (disk, tmpfs):
                shutil.rmtree(d, ignore_errors=True)
    result["load_at_end"] = os.getloadavg()
    result["elapsed_s"] = (_dt.datetime.now(_dt.UTC) - started).total_seconds()
    result["targets"] = targets(result)

    from bench.report import write_report

    stem = out / f"bench-{started.strftime('%Y-%m-%d')}" if not args.quick else out / "bench"
    paths = write_report(result, stem)
    log("wrote " + ", ".join(str(p) for p in paths))
    print(Path(paths[1]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
