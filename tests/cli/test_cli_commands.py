"""Every command, through click's CliRunner and as a real ``python -m axlpy`` process
(the ``axl`` fixture runs a test both ways; ``axr`` only through CliRunner, for the
finer cases), on real files and a real journal."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

import axlpy
from tests.cli.clitools import child_env, run_runner, run_sub, temps_under
from tests.conftest import tree_bytes

T = axlpy.TransferState


def only_transfer(axl: Any) -> dict[str, Any]:
    r = axl("ls", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["version"] == 1
    assert len(doc["transfers"]) == 1
    info: dict[str, Any] = doc["transfers"][0]
    return info


# -- cp ------------------------------------------------------------------------------------


def test_cp_tree_to_new_name(axl, tree, tmp_path):
    r = axl("cp", "--type", "sync", "--name", "t1", tree, tmp_path / "out")
    assert r.code == 0, r.err
    assert tree_bytes(tmp_path / "out") == tree_bytes(tree)
    assert os.readlink(tmp_path / "out" / "link") == "a.bin"
    assert temps_under(tmp_path / "out") == []
    assert "transfer t1 (sync)" in r.err
    assert "t1: COMPLETED: 3 files" in r.err
    assert "\r" not in r.err  # no bar when stderr is not a terminal
    info = only_transfer(axl)
    assert (info["name"], info["state"], info["files_done"], info["files_total"]) == (
        "t1", "COMPLETED", 3, 3)


def test_cp_into_existing_dir_and_default_name(axr, tree, tmp_path):
    dst = tmp_path / "pfs"
    dst.mkdir()
    r = axr("cp", "--type", "sync", tree, dst)
    assert r.code == 0, r.err
    assert tree_bytes(dst / "ckpt") == tree_bytes(tree)
    name = only_transfer(axr)["name"]
    assert name.startswith("cp-")
    assert f"transfer {name} " in r.err  # the generated name is printed


def test_cp_file_to_file_and_into_dir_with_slash(axr, tree, tmp_path):
    r = axr("cp", "--type", "sync", "--name", "f", tree / "a.bin", tmp_path / "copy.bin")
    assert r.code == 0, r.err
    assert (tmp_path / "copy.bin").read_bytes() == (tree / "a.bin").read_bytes()
    r = axr("cp", "--type", "sync", "--name", "g", tree / "sub" / "b.txt",
            str(tmp_path / "newdir") + "/")
    assert r.code == 0, r.err
    assert (tmp_path / "newdir" / "b.txt").read_bytes() == b"hello\n"


def test_cp_several_sources_creates_dst_dir(axr, tree, tmp_path):
    dst = tmp_path / "many"
    r = axr("cp", "--type", "sync", "--name", "m", tree / "a.bin", tree / "sub", dst)
    assert r.code == 0, r.err
    assert (dst / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()
    assert tree_bytes(dst / "sub") == tree_bytes(tree / "sub")


def test_cp_several_sources_onto_a_file_is_a_usage_error(axr, tree, tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"x")
    r = axr("cp", tree / "a.bin", tree / "sub", target)
    assert r.code == 2
    assert "is not a directory" in r.err
    assert target.read_bytes() == b"x"


def test_cp_move_and_metadata(axr, tree, tmp_path):
    os.chmod(tree / "sub" / "b.txt", 0o600)
    os.utime(tree / "sub" / "b.txt", ns=(1_000_000_000, 1_000_000_000))
    src = tmp_path / "tomove"
    os.rename(tree, src)
    r = axr("cp", "--type", "sync", "--move", "--metadata", "--name", "mv", src,
            tmp_path / "moved")
    assert r.code == 0, r.err
    assert not src.exists()
    st = os.stat(tmp_path / "moved" / "sub" / "b.txt")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o600, 1_000_000_000)
    assert only_transfer(axr)["move"] is True


def test_cp_missing_source_is_one_line_and_leaves_no_transfer(axl, tmp_path):
    r = axl("cp", "--type", "sync", tmp_path / "nope", tmp_path / "out")
    assert r.code == 2
    errs = [ln for ln in r.err.splitlines() if ln.startswith("axlpy: error:")]
    assert len(errs) == 1
    assert "nope" in errs[0] and "does not exist" in errs[0]
    assert "Traceback" not in r.err
    assert json.loads(axl("ls", "--json").out)["transfers"] == []


def test_cp_needs_src_and_dst(axr, tree):
    r = axr("cp", tree)
    assert r.code == 2
    assert "give at least one SRC and a DST" in r.err


def test_cp_unknown_type_is_usage_error(axr, tree, tmp_path):
    r = axr("cp", "--type", "warp", tree, tmp_path / "o")
    assert r.code == 2
    assert "warp" in r.err


def test_cp_duplicate_name_fails_cleanly(axr, tree, tmp_path):
    assert axr("cp", "--type", "sync", "--name", "same", tree, tmp_path / "o1").code == 0
    r = axr("cp", "--type", "sync", "--name", "same", tree, tmp_path / "o2")
    assert r.code == 1
    assert "already exists" in r.err
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("ttype", ["default", "pthread"])
def test_cp_background_types(axr, tree, tmp_path, ttype):
    r = axr("cp", "--type", ttype, "--name", ttype, tree, tmp_path / ttype)
    assert r.code == 0, r.err
    assert tree_bytes(tmp_path / ttype) == tree_bytes(tree)


# -- ls / status ---------------------------------------------------------------------------


def test_ls_without_journal(axr, jpath):
    r = axr("ls")
    assert r.code == 0
    assert "no transfers" in r.out
    assert json.loads(axr("ls", "--json").out) == {
        "version": 1, "journal": str(jpath), "transfers": []}
    assert not jpath.exists()  # a read command does not create the journal


def test_ls_table(axl, tree, tmp_path):
    axl("cp", "--type", "sync", "--name", "x1", tree, tmp_path / "o")
    r = axl("ls")
    assert r.code == 0
    head, row = r.out.splitlines()
    assert head.split() == ["NAME", "TYPE", "STATE", "FILES", "BYTES", "AGE", "OWNER"]
    assert row.split()[:4] == ["x1", "sync", "COMPLETED", "3/3"]


def test_status_human_and_json(axl, tree, tmp_path):
    axl("cp", "--type", "sync", "--name", "s1", tree, tmp_path / "o")
    r = axl("status", "--files", "s1")
    assert r.code == 0, r.err
    assert "state     COMPLETED" in r.out
    assert "axlpy verify" in r.out and "axlpy free" in r.out
    assert str(tmp_path / "o" / "sub" / "b.txt") in r.out
    doc = json.loads(axl("status", "--json", "--events", "s1").out)
    assert doc["transfer"]["state"] == "COMPLETED"
    by_dst = {f["dst"]: f for f in doc["files"]}
    b = by_dst[str(tmp_path / "o" / "sub" / "b.txt")]
    assert b["state"] == "PUBLISHED" and b["size"] == 6 and b["kind"] == "file"
    assert b["crc32c"] == format(axlpy._checksum.crc32c(b"hello\n"), "08x")
    assert by_dst[str(tmp_path / "o" / "link")]["kind"] == "symlink"
    assert [e["event"] for e in doc["events"]][:3] == ["create", "add", "dispatch"]
    assert doc["events"][-1]["to"] == "COMPLETED"
    limited = json.loads(axl("status", "--json", "--limit", "2", "s1").out)
    assert len(limited["files"]) == 2 and limited["files_omitted"] == len(doc["files"]) - 2
    dirs = json.loads(axl("status", "--json", "--state", "PENDING", "s1").out)
    assert dirs["files"] == []


def test_status_unknown_name(axr, tree, tmp_path):
    axr("cp", "--type", "sync", "--name", "known", tree, tmp_path / "o")
    r = axr("status", "nosuch")
    assert r.code == 2
    assert "no transfer named 'nosuch'" in r.err and "known" in r.err


def test_status_without_journal_says_what_to_do(axr):
    r = axr("status", "x")
    assert r.code == 2
    assert "no journal at" in r.err and "--journal" in r.err


def test_non_utf8_paths_do_not_corrupt_json(axl, tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    raw = b"caf\xe9-\xff.bin"
    with open(os.path.join(src, raw), "wb") as f:
        f.write(b"bytes")
    dst = os.fsencode(tmp_path / "dst")
    r = axl("cp", "--type", "sync", "--name", "enc", src, dst)
    assert r.code == 0, r.err
    with open(os.path.join(dst, raw), "rb") as f:
        assert f.read() == b"bytes"
    out = axl("status", "--json", "enc").out
    out.encode("ascii")  # plain ASCII JSON whatever the names
    doc = json.loads(out)
    fi = next(x for x in doc["files"] if x["kind"] == "file")
    assert base64.b64decode(fi["dst_b64"]) == os.path.join(dst, raw)
    assert os.fsencode(fi["dst"]) == os.path.join(dst, raw)  # \udcNN round-trips
    assert "dst_b64" not in doc["files"][0]  # only where the bytes are not UTF-8
    assert "caf\\xe9-\\xff.bin" in axl("status", "--files", "enc").out


# -- resume / cancel / free ----------------------------------------------------------------


def _crashed_transfer(jpath: Path, src: Path, dst: Path, name: str = "crashed",
                      at: str = "publish.after_commit", hit: int = 1) -> str:
    """A SYNC transfer killed by SIGKILL at crash point ``at`` (by default just after
    its first batch of files was published)."""
    r = run_sub(jpath, "cp", "--type", "sync", "--name", name, src, dst,
                env=child_env(jpath, AXLPY_CRASH_AT=at, AXLPY_CRASH_HIT=str(hit)))
    assert r.code == -9, r.err
    return name


def test_resume_after_kill(axl, jpath, tree, tmp_path):
    name = _crashed_transfer(jpath, tree, tmp_path / "o")
    info = only_transfer(axl)
    assert info["state"] == "DISPATCHED"
    assert info["owner"]["alive"] is False
    assert info["next"][0].startswith("axlpy resume")
    r = axl("resume", name)
    assert r.code == 0, r.err
    assert f"{name}: COMPLETED" in r.err
    assert tree_bytes(tmp_path / "o") == tree_bytes(tree)
    r = axl("resume", name)
    assert r.code == 0 and "already COMPLETED" in r.err


def test_cancel_after_kill_removes_what_it_wrote(axl, jpath, tree, tmp_path):
    name = _crashed_transfer(jpath, tree, tmp_path / "o")
    before = tree_bytes(tree)
    r = axl("cancel", name)
    assert r.code == 0, r.err
    assert "cancelled crashed" in r.out
    left = [p for p in tree_bytes(tmp_path / "o") if tree_bytes(tmp_path / "o")[p] is not None]
    assert left == []  # every published file and temp removed; directories may stay
    assert temps_under(tmp_path / "o") == []
    assert tree_bytes(tree) == before
    assert only_transfer(axl)["state"] == "CANCELLED"
    assert axl("free", name).code == 0
    assert json.loads(axl("ls", "--json").out)["transfers"] == []


def test_free_refuses_a_resumable_transfer(axr, jpath, tree, tmp_path):
    name = _crashed_transfer(jpath, tree, tmp_path / "o")
    r = axr("free", name)
    assert r.code == 2
    assert "DISPATCHED" in r.err
    assert only_transfer(axr)["state"] == "DISPATCHED"


def test_resume_refused_while_owner_alive(jpath, tree, tmp_path):
    # A real process: in-process (CliRunner) the owner would be this very process.
    j = axlpy.Journal(jpath)
    try:
        t = j.create("mine", "sync")
        t.add(tree, tmp_path / "o")
        # Journal this (live) test process as the owner of a DISPATCHED transfer.
        from axlpy._driver import dispatch_rows
        from axlpy._journal import Owner

        row = j.db.transfer("mine")
        assert row is not None
        j.db.dispatch(row.id, owner=Owner.me(), name="mine",
                      prepare=lambda batch: dispatch_rows(batch, row.token, row.id))
    finally:
        j.close()
    r = run_sub(jpath, "resume", "mine")
    assert r.code == 1
    assert f"owned by live process pid {os.getpid()}" in r.err
    assert "--force" in r.err
    info = json.loads(run_sub(jpath, "ls", "--json").out)["transfers"][0]
    assert info["live"] is True and info["owner"]["alive"] is True


# -- verify --------------------------------------------------------------------------------


def test_verify_ok_and_every_mismatch(axl, tree, tmp_path):
    out = tmp_path / "o"
    axl("cp", "--type", "sync", "--name", "v", tree, out)
    r = axl("verify", "v")
    assert r.code == 0, r.out + r.err
    assert r.out.startswith("OK: v: 8 checked, 0 mismatches")
    data = bytearray((out / "a.bin").read_bytes())
    data[1000] ^= 1
    (out / "a.bin").write_bytes(bytes(data))
    (out / "sub" / "b.txt").write_bytes(b"hello, longer\n")
    (out / "sub" / "deep" / "c").unlink()
    os.unlink(out / "link")
    os.symlink("elsewhere", out / "link")
    r = axl("verify", "v")
    assert r.code == 1
    mism = [ln for ln in r.out.splitlines() if ln.startswith("MISMATCH")]
    assert len(mism) == 4
    assert "FAILED: v: 8 checked, 4 mismatches" in r.out
    doc = json.loads(axl("verify", "--json", "v").out)
    assert doc["ok"] is False
    problems = {os.path.relpath(m["path"], out): m["problem"] for m in doc["mismatches"]}
    assert problems == {"a.bin": "crc32c", "sub/b.txt": "size", "sub/deep/c": "missing",
                        "link": "link-target"}


def test_verify_partial_transfer(axr, jpath, tree, tmp_path):
    name = _crashed_transfer(jpath, tree, tmp_path / "o")
    r = axr("verify", name)
    assert r.code == 1
    assert "not COMPLETED" in r.out
    r = axr("verify", "--partial", name)
    assert r.code == 0, r.out
    doc = json.loads(axr("verify", "--json", "--partial", name).out)
    assert doc["complete"] is False and doc["not_published"] > 0 and doc["mismatches"] == []


def test_verify_needs_exactly_one_target(axr, tmp_path):
    assert axr("verify").code == 2
    assert axr("verify", "x", "--manifest", tmp_path).code == 2


# -- verify --manifest / latest ------------------------------------------------------------


def _manifest() -> Any:
    return pytest.importorskip("axlpy._manifest", reason="MPI commit marker not built")


def _commit(mod: Any, d: Path, name: str, files: dict[str, bytes],
            committed_ns: int) -> None:
    from axlpy._checksum import crc32c

    d.mkdir(parents=True)
    entries = []
    for rel, data in files.items():
        (d / rel).write_bytes(data)
        entries.append(mod.ManifestEntry(rel, 0, "file", len(data), crc32c(data)))
    m = mod.build_manifest(name, 1, entries)
    m = mod.Manifest(m.name, m.nranks, m.entries, committed_ns)
    mod.write_manifest(d, m)


def test_verify_manifest_and_latest(axl, tmp_path):
    mod = _manifest()
    base = tmp_path / "ckpts"
    _commit(mod, base / "step-1", "step-1", {"r0": b"a" * 10, "r1": b"b" * 5}, 1_000)
    _commit(mod, base / "step-2", "step-2", {"r0": b"c" * 10}, 2_000)
    (base / "step-3").mkdir()  # never committed: no marker
    (base / "step-3" / "r0").write_bytes(b"newest but incomplete")
    r = axl("latest", base)
    assert r.code == 0, r.err
    assert r.out.strip() == str(base / "step-2")
    doc = json.loads(axl("latest", "--json", base).out)
    assert (doc["latest"], doc["name"], doc["files"], doc["bytes"]) == (
        str(base / "step-2"), "step-2", 1, 10)
    assert axl("verify", "--manifest", base / "step-2").code == 0
    (base / "step-2" / "r0").write_bytes(b"d" * 10)  # same size, other bytes
    r = axl("verify", "--manifest", base / "step-2")
    assert r.code == 1
    assert "MISMATCH" in r.out and "CRC32C" in r.out
    # without --verify latest checks sizes only; with it the damaged one is skipped
    assert axl("latest", base).out.strip() == str(base / "step-2")
    assert axl("latest", "--verify", base).out.strip() == str(base / "step-1")
    r = axl("verify", "--json", "--manifest", base / "step-3")
    doc = json.loads(r.out)
    assert r.code == 1 and doc["complete"] is False
    assert doc["mismatches"][0]["problem"] == "marker"


def test_latest_none(axr, tmp_path):
    _manifest()
    (tmp_path / "empty").mkdir()
    r = axr("latest", tmp_path / "empty")
    assert r.code == 1
    assert "no valid checkpoint" in r.err
    assert json.loads(axr("latest", "--json", tmp_path / "empty").out)["latest"] is None


# -- gc ------------------------------------------------------------------------------------


def _fake_temp(d: Path, name: str, age_s: float) -> Path:
    p = d / name
    p.write_bytes(b"junk")
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def test_gc_classifies_and_deletes_only_dead(axl, jpath, tree, tmp_path):
    out = tmp_path / "o"
    # killed with one file fsynced in its temp and the next one's temp created
    name = _crashed_transfer(jpath, tree, out, at="stage.after_create_temp", hit=2)
    resumable = temps_under(out)
    assert resumable, "the crash should leave temps behind"
    old_unknown = _fake_temp(out, ".x.axlpy-0badc0de-77-1", 7200)
    new_unknown = _fake_temp(out, ".y.axlpy-0badc0de-77-2", 5)
    r = axl("gc", out)
    assert r.code == 0, r.err
    assert "can be deleted" in r.out and "--delete" in r.out
    assert old_unknown.exists()  # dry run by default
    doc = json.loads(axl("gc", "--json", out).out)
    cls = {os.path.basename(t["path"]): (t["class"], t["action"]) for t in doc["temps"]}
    assert cls[old_unknown.name] == ("unknown", "delete")
    assert cls[new_unknown.name] == ("recent", "keep")
    for p in resumable:
        assert cls[p.name] == ("resumable", "keep")
    assert doc["dry_run"] is True
    r = axl("gc", "--delete", out)
    assert r.code == 0
    assert not old_unknown.exists() and new_unknown.exists()
    assert all(p.exists() for p in resumable)
    # the resumable temps go only when asked, and resume still finishes after that
    axl("gc", "--delete", "--include-resumable", out)
    assert not any(p.exists() for p in resumable)
    assert axl("resume", name).code == 0
    new_unknown.unlink()
    assert tree_bytes(out) == tree_bytes(tree)


def test_gc_finished_transfer_temps_are_deletable(axr, jpath, tree, tmp_path):
    out = tmp_path / "o"
    name = _crashed_transfer(jpath, tree, out)
    j = axlpy.Journal(jpath)
    try:
        row = j.db.transfer(name)
        assert row is not None
        tmp = next(f for f in j.db.files(row.id) if f.kind == "file").tmp
        assert tmp is not None
    finally:
        j.close()
    axr("cancel", name)
    leftover = out / os.fsdecode(tmp)
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"left by a crash during cancel")
    doc = json.loads(axr("gc", "--json", out).out)
    assert [(t["class"], t["transfer"]) for t in doc["temps"]] == [("finished", name)]
    axr("gc", "--delete", out)
    assert not leftover.exists()


def test_gc_not_a_dir(axr, tmp_path):
    r = axr("gc", tmp_path / "nope")
    assert r.code == 2
    assert "not a directory" in r.err


# -- errors, logging, help -----------------------------------------------------------------


def test_debug_gives_traceback_and_default_does_not(jpath, tmp_path):
    r = run_sub(jpath, "cp", tmp_path / "nope", tmp_path / "o")
    assert r.code == 2 and "Traceback" not in r.err
    r = run_sub(jpath, "--debug", "cp", tmp_path / "nope", tmp_path / "o")
    assert r.code == 1 and "Traceback" in r.err and "BadSourceError" in r.err


def test_verbose_logs(jpath, tree, tmp_path):
    r = run_sub(jpath, "cp", "-v", "--type", "sync", tree, tmp_path / "o")
    assert r.code == 0
    assert "axlpy: info: axlpy.cli: added" in r.err
    r = run_runner(jpath, "-vv", "ls")
    assert "axlpy: debug: axlpy.cli: journal" in r.err


def test_journal_option_beats_environment(tmp_path, tree):
    d = tmp_path / "other"
    d.mkdir(mode=0o700)
    env_j = tmp_path / "state" / "env.db"
    env_j.parent.mkdir(mode=0o700)
    r = run_runner(env_j, "cp", "--journal", d / "j.db", "--type", "sync", "--name", "n",
                   tree, tmp_path / "o")
    assert r.code == 0, r.err
    assert (d / "j.db").exists() and not env_j.exists()
    r = run_runner(env_j, "--journal", str(d / "j.db"), "status", "n")
    assert r.code == 0 and "COMPLETED" in r.out


def test_insecure_journal_dir_is_refused_in_one_line(tmp_path, tree):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    r = run_sub(d / "j.db", "cp", "--type", "sync", tree, tmp_path / "o")
    assert r.code == 1
    assert r.err.count("\n") == 1 and "writable by other users" in r.err


def test_version_and_help(axl):
    r = axl("--version")
    assert r.code == 0 and axlpy.__version__ in r.out
    r = axl("--help")
    assert r.code == 0
    assert "Exit codes:" in r.out and "interrupted but resumable" in r.out
    for cmd in ("cp", "ls", "status", "resume", "cancel", "free", "verify", "gc", "latest"):
        assert f"  {cmd} " in r.out
    assert axl("bogus").code == 2
