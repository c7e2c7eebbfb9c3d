"""The main job: flush a generated checkpoint, kill the copy part-way, resume, verify.

Run it with ``bash .ci/demo`` (sets everything up first) or, inside the venv,
``python examples/demo.py [--workdir DIR] [--type default|sync|pthread|uring]``.
Every step prints what is on disk, so a newcomer sees what happened.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import axlpy
from axlpy._checksum import file_crc32c
from axlpy._staging import TEMP_PATTERN

MiB = 1 << 20
# A checkpoint as an ML job might write it: a few big shards, some metadata, a nested
# optimizer state directory and an (empty) directory for logs.
LAYOUT = {
    "model/shard-0.bin": 48 * MiB,
    "model/shard-1.bin": 48 * MiB,
    "model/shard-2.bin": 24 * MiB,
    "optimizer/state/adam-m.bin": 16 * MiB,
    "optimizer/state/adam-v.bin": 16 * MiB,
    "meta/step.json": 37,
    "meta/empty-marker": 0,
}
EMPTY_DIRS = ("logs",)


def say(msg: str = "") -> None:
    print(msg, flush=True)


def generate(root: str) -> None:
    buf = os.urandom(MiB)
    for i, (rel, size) in enumerate(LAYOUT.items()):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, MiB)
                # Stamp each MiB with (file, offset) so no two blocks are identical.
                tag = i.to_bytes(4, "little") + left.to_bytes(8, "little")
                f.write(tag + buf[12:n] if n >= 12 else buf[:n])
                left -= n
    for d in EMPTY_DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)


def show_destination(dst: str) -> None:
    if not os.path.exists(dst):
        say("    (destination does not exist yet)")
        return
    for dirpath, dirnames, filenames in sorted(os.walk(dst)):
        rel = os.path.relpath(dirpath, dst)
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            kind = "TEMP " if TEMP_PATTERN.search(os.fsencode(name)) else "final"
            say(f"    {kind} {os.path.normpath(os.path.join(rel, name)):60} "
                f"{os.path.getsize(p):>10} B")
        if not dirnames and not filenames:
            say(f"    dir   {rel}/ (empty)")


def child(journal: str, name: str, src: str, dst: str, type_: str) -> None:
    j = axlpy.Journal(journal)
    t = j.create(name, type_, chunk_size=4 * MiB, extent_size=8 * MiB)
    t.add(src, dst)
    t.dispatch()
    t.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", help="where to put the demo files (default: a temp dir)")
    ap.add_argument("--type", default="default", help="transfer type")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.type)
        return 0

    work = args.workdir or tempfile.mkdtemp(prefix="axlpy-demo-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "node-local", "ckpt-000100")
    dst = os.path.join(work, "shared-fs", "ckpt-000100")
    jdir = os.path.join(work, "journal")
    os.makedirs(jdir, mode=0o700, exist_ok=True)
    journal = os.path.join(jdir, "journal.db")
    name = "ckpt-000100"
    total = sum(LAYOUT.values())

    say(f"axlpy {axlpy.__version__} demo — work directory {work}")
    say(f"\n1. A job writes a checkpoint to node-local storage: {len(LAYOUT)} files, "
        f"{total / MiB:.0f} MiB, plus an empty directory.")
    generate(src)

    point, hit = "stage.after_extent_commit", 7
    say(f"\n2. axlpy starts flushing it to the shared filesystem ({args.type} engine),\n"
        f"   and the process is killed with SIGKILL part-way through (armed crash point\n"
        f"   '{point}', hit {hit}: right after the journal vouched for an 8 MiB extent).")
    env = dict(os.environ, AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT=str(hit))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--type", args.type, "--child",
                           journal, name, src, dst], env=env)
    say(f"   child exited with {proc.returncode} after {time.monotonic() - t0:.2f} s "
        f"({'killed by SIGKILL' if proc.returncode == -9 else 'NOT killed'})")
    if proc.returncode != -9:
        say("   the copy finished before the crash point was reached; nothing to resume")

    say("\n3. What a reader of the shared filesystem sees now (no partial file has a final "
        "name;\n   temp files are hidden and named after the transfer):")
    show_destination(dst)
    with axlpy.Journal(journal) as j:
        t = j.open(name)
        st = t.status()
        say(f"\n   journal {journal}:\n   transfer {name!r} is {st.state.value}, "
            f"{st.files_done}/{st.files_total} files published, owner {st.owner}")
        for f in t.files():
            if f.kind == "file":
                say(f"     {f.state.value:9} {f.bytes_done:>10}/{f.size:<10} "
                    f"{os.path.relpath(f.dst, dst)}")

        say("\n4. A new process resumes it from the journal alone: it verifies every staged "
            "and\n   published byte against its CRC32C, keeps verified extents, redoes the "
            "rest.")
        t0 = time.monotonic()
        t.resume()
        t.wait()
        dt = time.monotonic() - t0
        st = t.status()
        kept = sum(1 for e in t.events() if e["event"] == "takeover")
        say(f"   resumed in {dt:.2f} s: state {st.state.value}, {st.files_done}/"
            f"{st.files_total} files ({kept} ownership takeover from the dead process)")

        say("\n5. Verify: every destination file equals its source byte for byte, and its "
            "CRC32C\n   matches the journal.")
        bad = 0
        journaled = {f.dst: f.crc32c for f in t.files() if f.kind == "file"}
        for rel in LAYOUT:
            a, b = os.path.join(src, rel), os.path.join(dst, rel)
            with open(a, "rb") as fa, open(b, "rb") as fb:
                same = fa.read() == fb.read()
                crc, _ = file_crc32c(fb.fileno(), os.path.getsize(b))
            ok = same and crc == journaled[b]
            bad += not ok
            say(f"   {'OK ' if ok else 'BAD'} {rel:40} crc32c={crc:08x}")
        leftovers = [n for _, _, fs in os.walk(dst) for n in fs
                     if TEMP_PATTERN.search(os.fsencode(n))]
        empty_ok = all(os.path.isdir(os.path.join(dst, d)) for d in EMPTY_DIRS)
        say(f"   temp files left: {len(leftovers)}; empty directories copied: {empty_ok}")
        say("\n   the event log (sqlite3 journal.db 'select * from events') tells the story:")
        for e in t.events():
            say(f"     {e['event']:16} {e['from_state'] or '':10} -> {e['to_state'] or '':10}"
                f" pid {e['pid']} {e['detail'] or ''}")
    ok = bad == 0 and not leftovers and empty_ok
    say(f"\n{'SUCCESS' if ok else 'FAILURE'}: the checkpoint arrived whole after a crash.")
    if not args.keep and not args.workdir:
        shutil.rmtree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
