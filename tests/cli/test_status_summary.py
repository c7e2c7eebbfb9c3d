"""``axlpy status NAME`` (issue 15.5): a short summary by default — counts per state,
bytes, rate, errors, the first few problem files — whatever the number of files;
``--files`` (with ``--state``, ``--limit``) lists files; ``--json`` keeps the full list."""

from __future__ import annotations

import json
import time

import axlpy

N = 400


def _many(tmp_path, n=N):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(n):
        (src / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    return src


def test_default_status_is_a_summary(axl, tmp_path):
    src = _many(tmp_path)
    r = axl("cp", "--type", "sync", "--name", "many", src, tmp_path / "o")
    assert r.code == 0, r.err
    r = axl("status", "many")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) < 30, r.out  # not one line per file
    assert "f00007" not in r.out
    assert "state     COMPLETED" in r.out
    assert f"PUBLISHED {N + 1}" in r.out  # N files + the directory
    assert "rate" in r.out and "errors    none" in r.out
    assert "--files" in r.out  # says how to list them


def test_files_lists_with_state_and_limit(axl, tmp_path):
    src = _many(tmp_path, 50)
    axl("cp", "--type", "sync", "--name", "m", src, tmp_path / "o")
    every = axl("status", "--files", "m").out
    for i in range(50):
        assert str(tmp_path / "o" / f"f{i:05d}") in every
    lim = axl("status", "--files", "--limit", "3", "m").out
    assert sum(ln.startswith("PUBLISHED ") for ln in lim.splitlines()) == 3
    assert "48 more" in lim  # 50 files + 1 directory, 3 shown
    none = axl("status", "--files", "--state", "PENDING", "m").out
    assert str(tmp_path / "o" / "f00001") not in none


def test_json_keeps_the_full_list_and_adds_the_summary(axl, tmp_path):
    src = _many(tmp_path, 30)
    axl("cp", "--type", "sync", "--name", "j", src, tmp_path / "o")
    doc = json.loads(axl("status", "--json", "j").out)
    assert len(doc["files"]) == 31 and doc["files_omitted"] == 0
    s = doc["summary"]
    assert s["states"] == {"PUBLISHED": 31}
    assert s["bytes_done"] == s["bytes_total"] == sum(i % 7 for i in range(30))
    assert s["errors"] == 0 and s["problems"] == []
    lim = json.loads(axl("status", "--json", "--limit", "4", "j").out)
    assert len(lim["files"]) == 4 and lim["files_omitted"] == 27


def test_summary_names_the_first_problem_files(axl, jpath, tmp_path):
    src = _many(tmp_path, 12)
    with axlpy.Journal(jpath) as j:
        t = j.create("bad", "sync")
        t.add(src, tmp_path / "o")
        jdb = j.db
        rows = [r for r in jdb.files(t._row.id) if r.kind == "file"]
        with jdb.transaction() as db:  # as a resume records a file it had to reset
            for r in rows[:8]:
                db.execute("UPDATE files SET error = ? WHERE id = ?", (f"boom {r.id}", r.id))
    r = axl("status", "bad")
    assert r.code == 0, r.err
    assert "errors    8 files" in r.out
    shown = [ln for ln in r.out.splitlines() if "boom" in ln]
    assert 1 <= len(shown) <= 5
    doc = json.loads(axl("status", "--json", "bad").out)
    assert doc["summary"]["errors"] == 8 and len(doc["summary"]["problems"]) == len(shown)


def test_default_status_of_a_large_transfer_is_short_and_fast(axl, jpath, tmp_path):
    """20,000 journaled files (rows only: status never touches the files): the default
    output stays a few lines, however many files there are."""
    n = 20_000
    with axlpy.Journal(jpath) as j:
        t = j.create("big", "sync")
        jdb = j.db
        # (kind, src, dst, root, rel, size, mtime_ns, mode, uid, gid, link)
        rows = [("file", b"/s/%d" % i, b"/d/%d" % i, b"/d", b"%d" % i, 10, 0, 0o644, 0, 0,
                 None) for i in range(n)]
        jdb.add_files(t._row.id, rows)
    start = time.monotonic()
    r = axl("status", "big")
    took = time.monotonic() - start
    assert r.code == 0, r.err
    assert len(r.out.splitlines()) < 30
    assert f"PENDING {n}" in r.out
    print(f"default status of {n} files: {took:.3f} s")  # for the record, not asserted


def test_public_summary_and_streamed_files(jpath, tmp_path):
    src = _many(tmp_path, 9)
    with axlpy.Journal(jpath) as j:
        t = j.create("api", "sync")
        t.add(src, tmp_path / "o")
        s = t.summary()
        assert s["states"] == {"PENDING": 10} and s["kinds"] == {"dir": 1, "file": 9}
        assert s["dispatched_ns"] is None and s["errors"] == 0
        t.dispatch()
        s = t.summary()
        assert s["states"] == {"PUBLISHED": 10} and s["dispatched_ns"] is not None
        assert [f.dst for f in t.iter_files()] == [f.dst for f in t.files()]
        assert len(list(t.iter_files(limit=4))) == 4
        assert t.count_files() == 10
        assert t.count_files([axlpy.FileState.PENDING]) == 0
