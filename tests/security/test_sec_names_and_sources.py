"""Rules 4 and 5, and the source side of rule 2: any byte sequence a POSIX name can hold
(newlines, invalid UTF-8) survives add/dispatch/status/resume/cancel/move and the CLI's
JSON; NUL is refused; trees too big or too deep, FIFOs and devices are refused without
hanging; source symlinks follow the transfer's policy, never silently; move mode never
deletes outside the source tree it was given."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from sec_helpers import run_child, snapshot, temps

import axlpy

T = axlpy.TransferState

#: names a POSIX filesystem accepts and naive code mangles
ODD_NAMES = [b"new\nline", b"\xff\xfe invalid utf-8", b"-dash", b" spaced ", b"tab\tx",
             b"caf\xc3\xa9", b"\xe2\x80\xae rtl", b"back\\slash", b"'quote\""]


@pytest.fixture
def odd_tree(tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"dir\n\xff"))
    for i, n in enumerate(ODD_NAMES):
        with open(os.path.join(src, n), "wb") as f:
            f.write(n * (i + 1))
        with open(os.path.join(src, b"dir\n\xff", n), "wb") as f:
            f.write(b"inner" + n)
    return src


def _tree(root: bytes) -> dict[bytes, tuple[str, bytes | None, int]]:
    return {k: v[:2] for k, v in snapshot(root).items()}  # type: ignore[misc]


def test_nul_is_refused(journal, tmp_path):
    t = journal.create("nul", "sync")
    (tmp_path / "s").write_bytes(b"x")
    with pytest.raises(axlpy.UsageError, match="NUL"):
        t.add(str(tmp_path / "s") + "\x00evil", tmp_path / "o")
    with pytest.raises(axlpy.UsageError, match="NUL"):
        t.add(tmp_path / "s", os.fsencode(tmp_path) + b"/o\x00/etc/passwd")
    with pytest.raises(axlpy.UsageError, match="NUL"):
        journal.create("bad\x00name", "sync")
    assert t.files() == []


def test_odd_names_end_to_end(journal, odd_tree, tmp_path):
    dst = os.fsencode(tmp_path) + b"/dst\n\xfe"
    t = journal.create("odd", "sync", move=True)
    before = _tree(odd_tree)
    t.add(odd_tree, dst)
    t.dispatch()
    assert t.state is T.COMPLETED
    assert _tree(dst) == before
    assert not os.path.exists(odd_tree)  # moved
    # status, files and events hold the names without loss and serialise to JSON
    paths = {os.fsencode(f.dst) for f in t.files()}
    assert os.path.join(dst, b"dir\n\xff", b"\xff\xfe invalid utf-8") in paths
    json.dumps([f.__dict__ for f in t.files()])
    json.dumps(t.events())
    json.dumps(t.status().__dict__)


def test_odd_names_resume_and_cancel_across_processes(journal_path, odd_tree, tmp_path):
    dst = os.fsencode(tmp_path) + b"/d\n\xff"
    run_child(journal_path, odd_tree, dst, crash_at="publish.after_rename")
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.resume()
        assert t.state is T.COMPLETED
    assert _tree(dst) == _tree(odd_tree)
    jp2 = tmp_path / "j2" / "j.db"
    jp2.parent.mkdir(mode=0o700)
    dst2 = os.fsencode(tmp_path) + b"/e\n\xff"
    run_child(jp2, odd_tree, dst2, crash_at="publish.after_rename")
    with axlpy.Journal(jp2) as j:
        report = j.open("x").cancel()
        events = [e["event"] for e in j.open("x").events()]
    # Every file and temp it wrote, and every directory it created (odd names too), is
    # gone, and the report names them as they are on disk.
    assert temps(tmp_path) == []
    assert not os.path.lexists(dst2)
    assert os.fsdecode(dst2) in report.removed_dirs
    assert all(os.path.exists(p) is False for p in report.removed + report.removed_temps)
    assert events.count("cancel-removed") == len(report.removed) > 0


def test_cli_json_with_odd_names(journal_path, odd_tree, tmp_path):
    dst = os.fsencode(tmp_path) + b"/c\n\xff"
    run_child(journal_path, odd_tree, dst, crash_at=None)
    proc = subprocess.run(
        [sys.executable, "-m", "axlpy", "--journal", str(journal_path), "status", "x",
         "--json"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("ascii")  # ensure_ascii: a newline in a name is escaped
    doc = json.loads(out)
    text = json.dumps(doc)
    assert "\\n" in text and ("\\udcff" in text or "_b64" in text)


# -- resource bounds -------------------------------------------------------------------


def test_too_many_entries_is_refused_and_adds_nothing(journal, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(60):
        (src / f"f{i}").write_bytes(b"")
    t = journal.create("many", "sync")
    with pytest.raises(axlpy.BadSourceError, match=r"more than 50 entries.*max_entries"):
        t.add(src, tmp_path / "o", limits=axlpy.Limits(max_entries=50))
    assert t.files() == []
    assert t.add(src, tmp_path / "o", limits=axlpy.Limits(max_entries=60)) == 61


def test_too_deep_is_refused(journal, tmp_path):
    p = tmp_path / "deep"
    for _ in range(12):
        p = p / "d"
    p.mkdir(parents=True)
    (p / "f").write_bytes(b"x")
    t = journal.create("deep", "sync")
    with pytest.raises(axlpy.BadSourceError, match="deeper than 10 levels"):
        t.add(tmp_path / "deep", tmp_path / "o", limits=axlpy.Limits(max_depth=10))
    assert t.files() == []


@pytest.mark.timeout(60)
def test_fifo_socket_and_device_sources_are_refused(journal, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    t = journal.create("special", "sync")
    try:
        for p, what in ((fifo, "FIFO"), (sock_path, "socket"), ("/dev/null", "device"),
                        ("/dev/zero", "device")):
            with pytest.raises(axlpy.BadSourceError, match=what):
                t.add(p, tmp_path / "o" / os.path.basename(p))
        tree = tmp_path / "tree"
        tree.mkdir()
        os.mkfifo(tree / "inner-fifo")
        with pytest.raises(axlpy.BadSourceError, match="FIFO"):
            t.add(tree, tmp_path / "o" / "tree")
    finally:
        sock.close()
    assert t.files() == []


@pytest.mark.timeout(60)
def test_fifo_swapped_in_after_add_does_not_hang(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"data")
    t = journal.create("swap", "sync")
    t.add(s, tmp_path / "o")
    s.unlink()
    os.mkfifo(s)  # no writer will ever open it: a blocking open would hang forever
    with pytest.raises(axlpy.BadSourceError, match="no longer a file"):
        t.dispatch()


@pytest.mark.timeout(60)
def test_fifo_swapped_in_after_dispatch_does_not_hang(journal_path, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"data" * 1000)
    run_child(journal_path, s, tmp_path / "o", crash_at="dispatch.after_commit")
    s.unlink()
    os.mkfifo(s)
    started = time.monotonic()
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        with pytest.raises(axlpy.BadSourceError, match="no longer a regular file"):
            t.resume()
        assert t.state is T.FAILED
    assert time.monotonic() - started < 50  # generous: it must not wait for a writer
    assert not (tmp_path / "o").exists()


# -- source symlink policy -------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"target data")
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain").write_bytes(b"plain")
    os.symlink(outside / "target", src / "link")
    return src, outside


def test_symlink_policy_copy_recreates_the_link(journal, linked, tmp_path):
    src, outside = linked
    t = journal.create("c", "sync", symlinks="copy")
    t.add(src, tmp_path / "o")
    t.dispatch()
    assert os.readlink(tmp_path / "o" / "link") == str(outside / "target")


def test_symlink_policy_follow_copies_the_target(journal, linked, tmp_path):
    src, _ = linked
    t = journal.create("f", "sync", symlinks="follow")
    t.add(src, tmp_path / "o")
    t.dispatch()
    assert not os.path.islink(tmp_path / "o" / "link")
    assert (tmp_path / "o" / "link").read_bytes() == b"target data"


def test_symlink_policy_refuse_is_an_error_not_a_skip(journal, linked, tmp_path):
    src, _ = linked
    t = journal.create("r", "sync", symlinks="refuse")
    with pytest.raises(axlpy.BadSourceError, match="symlink policy is 'refuse'"):
        t.add(src, tmp_path / "o")
    with pytest.raises(axlpy.BadSourceError, match="symlink policy is 'refuse'"):
        t.add(src / "link", tmp_path / "o2")
    assert t.files() == []


def test_dangling_symlink_with_follow_is_an_error(journal, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(tmp_path / "nowhere", src / "dangling")
    t = journal.create("d", "sync", symlinks="follow")
    with pytest.raises(axlpy.BadSourceError, match="dangling"):
        t.add(src, tmp_path / "o")


def test_move_with_follow_never_deletes_a_target_outside_the_tree(journal, linked, tmp_path):
    src, outside = linked
    before = snapshot(outside)
    t = journal.create("mf", "sync", symlinks="follow", move=True)
    t.add(src, tmp_path / "o")
    t.dispatch()
    assert t.state is T.COMPLETED
    assert (tmp_path / "o" / "link").read_bytes() == b"target data"
    assert snapshot(outside) == before  # the followed target is not the user's to move
    assert not (src / "plain").exists()
    assert "move-kept-source" in [e["event"] for e in t.events()]


def test_move_does_not_delete_through_a_source_dir_swapped_for_symlink(journal_path,
                                                                       tmp_path):
    """After publishing, an attacker swaps a source subdirectory for a symlink to a
    directory of the victim holding files with the same names, sizes and mtimes: move
    mode must not delete them."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"aaaa")
    (src / "top").write_bytes(b"top")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a").write_bytes(b"AAAA")  # same size
    st = os.stat(src / "sub" / "a")
    os.utime(victim / "a", ns=(st.st_atime_ns, st.st_mtime_ns))  # and same mtime
    run_child(journal_path, src, tmp_path / "o", crash_at="renamed.after_commit", move=True)
    os.rename(src / "sub", tmp_path / "aside")
    os.symlink(victim, src / "sub")
    before = snapshot(victim)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.resume()
        assert t.state is T.COMPLETED
        kept = [e for e in t.events() if e["event"] == "move-kept-source"]
    assert snapshot(victim) == before
    assert kept and "symlink" in kept[0]["detail"]
    assert not (src / "top").exists()  # what was safe to delete was deleted
    assert (tmp_path / "o" / "sub" / "a").read_bytes() == b"aaaa"


def test_move_refuses_a_source_no_add_recorded(journal_path, tmp_path):
    from sec_helpers import edit_journal

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"ffff")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_bytes(b"ffff")
    run_child(journal_path, src / "f", tmp_path / "o", crash_at="renamed.after_commit",
              move=True)
    st = os.stat(src / "f")
    os.utime(victim / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    edit_journal(journal_path, "UPDATE files SET src = ?", (os.fsencode(victim / "f"),))
    with axlpy.Journal(journal_path) as j:
        with pytest.raises(axlpy.SecurityError, match="no add"):
            j.open("x").resume()
    assert (victim / "f").read_bytes() == b"ffff"
