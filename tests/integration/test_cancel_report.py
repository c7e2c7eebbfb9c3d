"""Issue 12 item 6: cancel says exactly what it removed and what it kept, and why — in its
return value, in the CLI and in the journal's events — and removes the empty directories
the transfer created (only those).

Every case crashes a real child process (a crash point SIGKILLs it) and cancels in this
process, on real files and a real journal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from tests.conftest import temp_files, tree_bytes, write_tree

T = axlpy.TransferState
FILES = {f"d{i % 4}/sub/f{i}": b"%d" % i * (100 + i) for i in range(40)}

# Publish groups of 5 files (not "256 files or 0.1 s"), so where a crash point's n-th hit
# falls does not depend on the machine's speed.
_CHILD = textwrap.dedent("""
    import sys
    import axlpy
    import axlpy._driver
    axlpy._driver._GROUP_FILES = 5
    axlpy._driver._GROUP_SECONDS = 1e9
    j = axlpy.Journal(sys.argv[1])
    if sys.argv[4] == "create":
        t = j.create("x", "sync")
        t.add(sys.argv[2], sys.argv[3])
    else:
        t = j.open("x")
    t.dispatch()
""")


def _crash(jpath: Path, src: Path, dst: Path, point: str, hit: int = 1,
           how: str = "create") -> None:
    env = dict(os.environ, AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT=str(hit))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(jpath), str(src), str(dst), how],
                          env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == -9, proc.stderr


def _events(t: axlpy.Transfer, name: str) -> list[str]:
    return [e["detail"] for e in t.events() if e["event"] == name]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    write_tree(tmp_path / "src", FILES, empty_dirs=("empty",))
    return tmp_path / "src"


def _files(root: Path) -> dict[str, bytes | None]:
    if not root.exists():
        return {}
    return {k: v for k, v in tree_bytes(root).items() if v is not None and ".axlpy-" not in k}


def test_cancel_after_crash_lists_removed_and_kept_with_reasons(journal_path, src, tmp_path):
    dst = tmp_path / "new" / "parent" / "dst"  # three directories the transfer creates
    # Killed with one group of 5 published and the next 5 staged (temps, not renamed).
    _crash(journal_path, src, dst, "stage.after_commit", hit=2)
    published = _files(dst)
    assert len(published) == 5 and len(temp_files(dst)) == 5
    changed = sorted(published)[0]
    (dst / changed).write_bytes(b"someone else's edit")
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        report = t.cancel()
        assert t.state is T.CANCELLED
        changed_path = str(dst / changed)
        assert list(report.kept) == [changed_path]
        assert "differs from what this transfer wrote" in report.kept[changed_path]
        assert sorted(report.removed) == sorted(str(dst / p) for p in published
                                                if p != changed)
        # The journal says the same, entry by entry, and the summary is the last event's.
        kept_ev = _events(t, "cancel-kept")
        assert len(kept_ev) == 1 and repr(changed_path) in kept_ev[0]
        assert sorted(_events(t, "cancel-removed")) == sorted(repr(p) for p in report.removed)
        assert len(report.removed_temps) == 5
        assert len(_events(t, "cancel-removed-temp")) == 5
        assert t.events()[-1]["event"] == "cancel"
        assert t.events()[-1]["detail"] == report.summary()
        assert "kept 1 file" in report.summary()
    # Only the kept file remains, and the directories holding it; every other directory
    # the transfer created is gone (the empty source directory's copy included).
    assert _files(tmp_path / "new") == {f"parent/dst/{changed}": b"someone else's edit"}
    left_dirs = {str(p.relative_to(tmp_path / "new")) for p in (tmp_path / "new").rglob("*")
                 if p.is_dir()}
    assert left_dirs == {"parent", "parent/dst", *(
        "parent/dst/" + "/".join(changed.split("/")[:k]) for k in (1, 2))}
    assert "not empty" in report.kept_dirs[str(dst / changed.split("/")[0] / "sub")]
    assert "not empty" in report.kept_dirs[str(tmp_path / "new")]
    assert temp_files(tmp_path) == []


def test_cancel_removes_only_directories_it_created(journal_path, src, tmp_path):
    dst = tmp_path / "dst"
    (dst / "d1" / "sub").mkdir(parents=True)  # there before the transfer: never removed
    (dst / "d2").mkdir()
    (dst / "d2" / "mine.txt").write_bytes(b"not the transfer's")
    _crash(journal_path, src, dst, "renamed.after_commit")
    # Someone writes into a directory the transfer created: it must stay, with its file.
    (dst / "d3" / "sub" / "other.txt").write_bytes(b"foreign")
    with axlpy.Journal(journal_path) as j:
        report = j.open("x").cancel()
    assert _files(dst) == {"d2/mine.txt": b"not the transfer's",
                           "d3/sub/other.txt": b"foreign"}
    assert (dst / "d1" / "sub").is_dir()  # pre-existing, empty: left alone, not listed
    assert not (dst / "d0").exists() and not (dst / "empty").exists()
    assert not (dst / "d2" / "sub").exists()  # created below a pre-existing directory
    assert str(dst / "d2" / "sub") in report.removed_dirs
    assert str(dst / "d0") in report.removed_dirs
    assert str(dst / "d1") not in report.removed_dirs | report.kept_dirs.keys()
    assert str(dst) not in report.removed_dirs | report.kept_dirs.keys()
    assert "not empty" in report.kept_dirs[str(dst / "d3" / "sub")]
    assert "not empty" in report.kept_dirs[str(dst / "d3")]
    assert report.kept == {}  # other.txt is not the transfer's: not its to list


def test_cancel_after_the_journal_lost_its_tail(journal_path, src, tmp_path):
    """A journal rolled back to before dispatch (its WAL cut) still says CREATED while the
    run's temps and published files are on disk: cancel removes every temp (the names
    are the transfer's) and says it keeps each final file it cannot verify, and why."""
    dst = tmp_path / "dst"
    with axlpy.Journal(journal_path) as j:
        t = j.create("x", "sync")
        t.add(src, dst)
    saved = tmp_path / "saved"
    saved.mkdir()
    for p in journal_path.parent.iterdir():
        shutil.copy2(p, saved / p.name)
    _crash(journal_path, src, dst, "stage.after_commit", hit=2, how="open")
    assert len(temp_files(dst)) == 5 and len(_files(dst)) == 5
    for p in journal_path.parent.iterdir():
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, journal_path.parent / p.name)
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        assert t.state is T.CREATED
        finals = sorted(str(dst / p) for p in _files(dst))
        report = t.cancel()
        assert t.state is T.CANCELLED
        assert temp_files(dst) == []
        assert len(report.removed_temps) == 5
        assert sorted(report.kept) == finals
        assert all("no checksum" in why for why in report.kept.values())
        assert report.removed == []
        assert len(_events(t, "cancel-kept")) == len(finals)
        assert "removed 0 published files, 5 temp files" in report.summary()


def test_cancel_killed_part_way_then_again(journal_path, src, tmp_path):
    dst = tmp_path / "dst"
    before = tree_bytes(src)
    _crash(journal_path, src, dst, "publish.after_commit")
    code = textwrap.dedent("""
        import sys, axlpy
        axlpy.Journal(sys.argv[1]).open("x").cancel()
    """)
    env = dict(os.environ, AXLPY_CRASH_AT="cancel.after_unlink_final", AXLPY_CRASH_HIT="3")
    proc = subprocess.run([sys.executable, "-c", code, str(journal_path)], env=env,
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == -9, proc.stderr
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        assert t.state is T.DISPATCHED
        report = t.cancel()
        assert report.resumed_attempt
        assert "earlier cancel that died part-way" in report.summary()
    assert not dst.exists()
    assert temp_files(tmp_path) == []
    assert tree_bytes(src) == before


def test_cli_cancel_prints_what_it_kept(axl_env, journal_path, src, tmp_path):
    dst = tmp_path / "dst"
    _crash(journal_path, src, dst, "publish.after_commit")
    changed = sorted(_files(dst))[0]
    (dst / changed).write_bytes(b"edited")
    proc = subprocess.run([sys.executable, "-m", "axlpy", "--journal", str(journal_path),
                           "cancel", "x"], capture_output=True, text=True, timeout=120,
                          env=axl_env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert "published files were removed" not in proc.stdout
    assert "kept 1 file" in proc.stdout
    assert f"kept {str(dst / changed)!r}: its content differs" in proc.stdout


@pytest.fixture
def axl_env() -> dict[str, str]:
    return dict(os.environ)
