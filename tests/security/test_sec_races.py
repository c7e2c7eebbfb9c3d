"""Rule 6: transfers run while another thread or process really races them, swapping a
destination directory for a symlink (the rename dance) and replacing temps with symlinks.

Whatever the interleaving: nothing is ever written outside the destination (the decoy
stays byte-for-byte as it was), every transfer completes or fails with a clear error
(SecurityError or TransferError), and a final name never holds a partial or foreign file.
Each test is bounded to a few seconds of racing so it runs in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sec_helpers import final_files, run_child, snapshot, temps

import axlpy
from axlpy import _durable, _staging
from axlpy._staging import TEMP_PATTERN

RACE_SECONDS = 2.0
#: errors a raced transfer may end with; anything else fails the test
CLEAR_ERRORS = (axlpy.SecurityError, axlpy.TransferError)
#: the message of every error a raced transfer ended with (printed with -s)
MESSAGES: list[str] = []


class Attacker(threading.Thread):
    """Calls ``step`` in a loop until stopped, ignoring the OSErrors a race produces."""

    def __init__(self, step: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.step = step
        self.stop = threading.Event()
        self.hits = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.step():
                    self.hits += 1
            except OSError:
                pass

    def __enter__(self) -> Attacker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def make_source(root: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    """Files with unique basenames (so a copy is recognisable wherever it lands)."""
    out = {}
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        out[os.path.basename(rel)] = data
    return out


def run_transfers(journal: axlpy.Journal, src: Path, dst: Path,
                  until: Callable[[Counter[str]], bool] = lambda c: True,
                  **opts: Any) -> Counter[str]:
    """Create and dispatch transfers of ``src`` -> ``dst`` until the race time is up
    and ``until(outcomes)`` holds (on a loaded machine the attacker may need longer to
    get a turn), but never longer than 5 times the race time."""
    outcomes: Counter[str] = Counter()
    start = time.monotonic()
    i = 0
    while True:
        elapsed = time.monotonic() - start
        more = elapsed < RACE_SECONDS or not until(outcomes)
        if i >= 3 and (not more or elapsed > 5 * RACE_SECONDS):
            break
        t = journal.create(f"t{i}", "sync", chunk_size=65536, extent_size=65536, **opts)
        i += 1
        try:
            t.add(src, dst)
            t.dispatch()
        except CLEAR_ERRORS as exc:
            outcomes[type(exc).__name__] += 1
            MESSAGES.append(f"{type(exc).__name__}: {exc}")
            continue
        assert t.state is axlpy.TransferState.COMPLETED
        outcomes["completed"] += 1
    return outcomes


def check_outcome(dst: Path, contents: dict[str, bytes], outcomes: Counter[str],
                  allowed_links: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
    """Every final name under ``dst`` holds a complete, correct copy of its source (or
    is the attacker's own symlink); after a completed transfer every file is somewhere."""
    found: dict[str, bytes] = {}
    for path, data in final_files(dst).items():
        name = os.fsdecode(os.path.basename(path))
        if data == b"<symlink>":
            assert os.path.basename(path) in allowed_links, f"{path!r} became a symlink"
            continue
        assert name in contents, f"unexpected file {path!r}"
        assert data == contents[name], f"{path!r} is partial or foreign"
        found[name] = data
    if outcomes["completed"]:
        assert set(found) == set(contents)


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    d = tmp_path / "decoy"
    d.mkdir()
    (d / "keep").write_bytes(b"victim data")
    return d


def test_directory_swapped_for_symlink_by_a_thread(journal, tmp_path, decoy):
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {**{f"sub/f{i}": 16384 for i in range(8)},
                                 "sub/deep/g0": 40000, "sub/deep/g1": 1, "top": 5000})
    dst.mkdir()
    before = snapshot(decoy)
    sub, hidden = dst / "sub", dst / ".sub.real"

    def swap() -> bool:
        # The rename dance: move the real directory aside, put a symlink to the decoy
        # in its place for a moment, then put the real one back.
        os.rename(sub, hidden)
        try:
            os.symlink(decoy, sub)
            time.sleep(0.0002)
            os.unlink(sub)
        finally:
            os.rename(hidden, sub)
        return True

    with Attacker(swap) as attacker:
        outcomes = run_transfers(journal, src, dst)
    assert snapshot(decoy) == before, "something was written through the symlink"
    assert attacker.hits > 10, "the attacker never got to race"
    check_outcome(dst, contents, outcomes, allowed_links={b"sub"})
    print(f"\ndir swap: {attacker.hits} swaps, outcomes {dict(outcomes)}")


def test_directory_replaced_by_symlink_that_stays(journal, tmp_path, decoy):
    """The attacker swaps the directory and leaves the symlink for most of the time:
    transfers must be refused (not follow it), never write the decoy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {f"sub/f{i}": 4096 for i in range(4)})
    dst.mkdir()
    before = snapshot(decoy)
    sub, aside = dst / "sub", dst / ".aside"

    def swap() -> bool:
        if os.path.isdir(sub) and not os.path.islink(sub):
            os.rename(sub, aside)  # keep our directory (and what we wrote) around
            os.symlink(decoy, sub)
            return True
        time.sleep(0.001)
        if os.path.islink(sub):
            os.unlink(sub)  # let a transfer mkdir it again now and then
            time.sleep(0.0005)
            if not os.path.lexists(sub):
                os.symlink(decoy, sub)
        return False

    # Planted before the first transfer: that one is refused whatever the scheduling.
    os.symlink(decoy, sub)
    first = journal.create("first", "sync")
    first.add(src, dst)
    with pytest.raises(axlpy.SecurityError, match="refusing to follow symlink"):
        first.dispatch()
    with Attacker(swap):
        outcomes = run_transfers(journal, src, dst)
    assert snapshot(decoy) == before, (outcomes, MESSAGES[-5:])
    check_outcome(dst, contents, outcomes, allowed_links={b"sub"})


def test_temp_replaced_by_symlink_by_a_thread(journal, tmp_path, decoy):
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {f"d/big{i}": 1 << 20 for i in range(3)})
    (dst / "d").mkdir(parents=True)
    before = snapshot(decoy)
    d = dst / "d"

    def swap_temps() -> bool:
        hit = False
        with os.scandir(d) as it:
            names = [e.name for e in it if TEMP_PATTERN.search(os.fsencode(e.name))
                     and not e.is_symlink()]
        for n in names:
            os.symlink(decoy / "keep", d / ".evil")
            os.rename(d / ".evil", d / n)  # atomically replaces the temp
            hit = True
        return hit

    with Attacker(swap_temps) as attacker:
        outcomes = run_transfers(journal, src, dst, until=lambda c: c["SecurityError"] > 0)
    for leftover in (d / ".evil",):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    assert snapshot(decoy) == before, "a write went through the planted symlink"
    assert attacker.hits >= 1, "the attacker never found a temp to replace"
    assert outcomes["SecurityError"] >= 1, outcomes
    # No symlink was ever renamed to a final name; final files are whole.
    check_outcome(dst, contents, outcomes)
    print(f"\ntemp swap: {attacker.hits} replacements, outcomes {dict(outcomes)}")


ATTACKER = textwrap.dedent("""
    import os, re, sys, time
    dst, decoy, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    temp = re.compile(r"\\.axlpy-[0-9a-f]{8}-\\d+-\\d+$")
    sub, hidden = os.path.join(dst, "sub"), os.path.join(dst, ".sub.real")
    end = time.monotonic() + seconds
    swaps = temps = 0
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            os.rename(sub, hidden)
            try:
                os.symlink(decoy, sub)
                os.unlink(sub)
            finally:
                os.rename(hidden, sub)
            swaps += 1
        except OSError:
            pass
        try:
            for n in os.listdir(sub):
                if temp.search(n):
                    evil = os.path.join(sub, ".evil")
                    os.symlink(os.path.join(decoy, "keep"), evil)
                    os.rename(evil, os.path.join(sub, n))
                    temps += 1
        except OSError:
            pass
    print(swaps, temps)
""")


def test_another_process_swaps_dirs_and_temps(journal, tmp_path, decoy):
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {**{f"sub/f{i}": 200_000 for i in range(6)},
                                 "sub/deep/g": 1000})
    dst.mkdir()
    before = snapshot(decoy)
    proc = subprocess.Popen(
        [sys.executable, "-c", ATTACKER, str(dst), str(decoy), str(RACE_SECONDS + 1)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        outcomes = run_transfers(journal, src, dst)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    swaps, temps = map(int, out.split())
    assert swaps > 10
    if os.path.lexists(dst / "sub" / ".evil"):
        os.unlink(dst / "sub" / ".evil")
    assert snapshot(decoy) == before
    check_outcome(dst, contents, outcomes, allowed_links={b"sub"})
    print(f"\nprocess: {swaps} dir swaps, {temps} temp swaps, outcomes {dict(outcomes)}")


# -- the race of test_another_process_swaps_dirs_and_temps, forced ---------------------------
# Its one CI failure (f0 under no name after 32 completed and 34 refused transfers): a later
# transfer into the same destination checked f0's temp, the attacker renamed a symlink over
# the temp, the rename put the symlink over the published f0 (destroying it), the check
# after it removed the symlink and raised SecurityError: f0 held neither what it held
# before nor the new copy. These tests give the attacker exactly that turn.


def swap_after_check(monkeypatch: pytest.MonkeyPatch, decoy: Path,
                     final: bytes = b"f0") -> list[bytes]:
    """From now on, right after the temp of ``final`` passes its pre-rename check, the
    attacker renames a symlink to ``decoy/keep`` over it. Returns the temps swapped."""
    real = _durable.check_staged
    swapped: list[bytes] = []

    def check_then_swap(dir_fd: int, tmp: bytes, **kw: Any) -> os.stat_result:
        st = real(dir_fd, tmp, **kw)
        if not tmp.startswith(b"." + final + b".axlpy-"):
            return st
        os.symlink(decoy / "keep", b".evil", dir_fd=dir_fd)
        os.rename(b".evil", tmp, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        swapped.append(tmp)
        return st

    monkeypatch.setattr(_durable, "check_staged", check_then_swap)
    return swapped


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_temp_swapped_after_its_check_keeps_the_previous_file(journal, tmp_path, decoy,
                                                              monkeypatch, kind):
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {"sub/f0": 200_000, "sub/f1": 1000})
    if kind == "symlink":
        os.symlink("f1", src / "sub" / "l0")
    first = journal.create("first", "sync")
    first.add(src, dst)
    first.dispatch()
    before = snapshot(decoy)
    published, finals = snapshot(dst), final_files(dst)
    swapped = swap_after_check(monkeypatch, decoy, b"f0" if kind == "file" else b"l0")
    second = journal.create("second", "sync")
    second.add(src, dst)
    with pytest.raises(axlpy.SecurityError, match="replaced by someone else") as err:
        second.dispatch()
    assert len(swapped) == 1
    assert snapshot(decoy) == before, "something was written through the symlink"
    # Every final name holds what the first transfer published: nothing lost, nothing
    # foreign; the attacker's symlink is gone from the temp name too (the other temps of
    # the batch stay for resume).
    check_outcome(dst, contents, Counter(completed=1), allowed_links={b"l0"})
    assert final_files(dst) == finals
    assert not any(os.path.islink(p) for p in temps(dst))
    assert "the final name holds what it held before" in str(err.value)
    assert second.state is axlpy.TransferState.FAILED
    # Resume redoes the file whose final name does not hold the staged copy.
    monkeypatch.undo()
    second.resume()
    assert second.state is axlpy.TransferState.COMPLETED
    assert snapshot(dst) == published


def test_temp_swapped_after_its_check_leaves_a_new_name_empty(journal, tmp_path, decoy,
                                                              monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_source(src, {"sub/f0": 5000})
    before = snapshot(decoy)
    swap_after_check(monkeypatch, decoy)
    t = journal.create("t", "sync")
    t.add(src, dst)
    with pytest.raises(axlpy.SecurityError, match="foreign file was removed"):
        t.dispatch()
    assert snapshot(decoy) == before
    assert final_files(dst) == {}, "the attacker's symlink stayed under a final name"


@pytest.mark.parametrize("verb", ["resume", "cancel"])
def test_killed_between_the_exchange_and_the_unlink(journal_path, tmp_path, verb):
    """``publish.after_exchange`` (covered here, not by the sweeps: their scenarios write
    fresh destinations): the final name holds the staged copy, the temp name what the
    final name held before. Resume removes that and completes; cancel removes both, as
    after ``publish.after_rename`` (the rename had replaced the previous file)."""
    s, out = tmp_path / "s", tmp_path / "out"
    s.write_bytes(os.urandom(100_000))
    out.mkdir()
    (out / "d").write_bytes(b"previous copy")
    run_child(journal_path, s, out / "d", crash_at="publish.after_exchange")
    assert (out / "d").read_bytes() == s.read_bytes()
    (tmp,) = temps(out)
    assert Path(os.fsdecode(tmp)).read_bytes() == b"previous copy"
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        getattr(t, verb)()
        assert t.state is (axlpy.TransferState.COMPLETED if verb == "resume"
                           else axlpy.TransferState.CANCELLED)
    assert temps(out) == []
    assert final_files(out) == ({os.fsencode(out / "d"): s.read_bytes()}
                                if verb == "resume" else {})


def test_directory_put_back_over_the_one_a_transfer_just_made(journal, tmp_path,
                                                              monkeypatch):
    """The rename dance's other turn: ``sub`` is away (renamed aside) when the transfer
    opens it, so the transfer makes a new empty ``sub`` and holds its fd; then the real
    one is renamed back over it (allowed: the new one is empty). The held fd now names a
    removed directory. Nothing may be published there and reported COMPLETED: the
    kernel refuses every new entry in a removed directory, so the transfer fails with a
    clear error, the earlier copy stays, and a resume completes it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    contents = make_source(src, {"sub/f0": 70_000, "sub/f1": 1000})
    first = journal.create("first", "sync")
    first.add(src, dst)
    first.dispatch()
    finals = final_files(dst)
    sub, aside = dst / "sub", dst / ".sub.real"
    real = _staging.DirCache._open_child
    put_back: list[int] = []

    def open_then_put_back(self: _staging.DirCache, pfd: int, name: bytes, key: bytes,
                           **kw: Any) -> int:
        fd = real(self, pfd, name, key, **kw)
        if key == os.fsencode(sub) and not put_back:
            assert os.listdir(sub) == [], "the transfer did not make a new sub"
            os.rename(aside, sub)  # replaces the empty directory the transfer holds
            put_back.append(os.fstat(fd).st_nlink)  # 0: the fd names a removed directory
        return fd

    monkeypatch.setattr(_staging.DirCache, "_open_child", open_then_put_back)
    os.rename(sub, aside)
    second = journal.create("second", "sync")
    second.add(src, dst)
    with pytest.raises(axlpy.TransferError) as err:
        second.dispatch()
    assert put_back == [0]
    assert "destination directory was removed or replaced" in str(err.value)
    assert second.state is axlpy.TransferState.FAILED
    assert final_files(dst) == finals
    check_outcome(dst, contents, Counter(completed=1))
    monkeypatch.undo()
    second.resume()
    assert second.state is axlpy.TransferState.COMPLETED
    assert final_files(dst) == finals
    assert temps(dst) == []
