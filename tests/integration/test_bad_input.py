"""Bad input: each gets a clear error naming the problem, and nothing is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import axlpy
from tests.conftest import temp_files

T = axlpy.TransferState


def test_missing_source(journal, tmp_path):
    t = journal.create("m", "sync")
    with pytest.raises(axlpy.BadSourceError, match="does not exist") as info:
        t.add(tmp_path / "nope", tmp_path / "d")
    assert "nope" in str(info.value)
    assert t.files() == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to user nobody")
@pytest.mark.parametrize("inside", ["", "tree/sub"])
def test_unreadable_source_as_other_user(inside):
    """A file the user cannot read, added by itself or deep inside an added tree (the
    walk checks entries by name through a directory fd): refused, named by its path."""
    base = tempfile.mkdtemp(prefix="axlpy-unreadable-")
    try:
        os.chmod(base, 0o755)
        if inside:
            os.makedirs(os.path.join(base, inside), mode=0o755)
            for d in ("tree", inside):
                os.chmod(os.path.join(base, d), 0o755)
            with open(os.path.join(base, inside, "readable"), "wb") as f:
                f.write(b"anyone")
            os.chmod(os.path.join(base, inside, "readable"), 0o644)
        secret = os.path.join(base, inside, "secret")
        with open(secret, "wb") as f:
            f.write(b"root only")
        os.chmod(secret, 0o600)
        added = os.path.join(base, "tree") if inside else secret
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        os.chown(work, 65534, 65534)
        code = textwrap.dedent(f"""
            import axlpy
            j = axlpy.Journal({work!r} + "/j/journal.db")
            t = j.create("u", "sync")
            try:
                t.add({added!r}, {work!r} + "/out")
            except axlpy.BadSourceError as e:
                print("ERR", e)
        """)
        # The venv's interpreter lives under /root (mode 0700): run the system Python
        # 3.11 as nobody, on this checkout and the venv's site-packages.
        py = shutil.which("python3.11", path="/usr/bin:/usr/local/bin")
        if py is None:
            pytest.skip("no system python3.11 that user nobody can execute")
        site = [p for p in sys.path if p.endswith("site-packages")]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *site]))
        proc = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env,
                              user=65534, group=65534, timeout=60, cwd=base)
        assert "ERR" in proc.stdout and "not readable" in proc.stdout, proc.stderr
        assert secret in proc.stdout
        assert not os.path.exists(os.path.join(work, "out"))
    finally:
        shutil.rmtree(base)


def test_source_replaced_by_directory_before_dispatch(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"x")
    t = journal.create("dir", "sync")
    t.add(s, tmp_path / "d")
    s.unlink()
    s.mkdir()
    with pytest.raises(axlpy.BadSourceError, match="no longer a file"):
        t.dispatch()
    assert t.state is T.CREATED
    assert not (tmp_path / "d").exists()


def test_destination_directory_not_writable(journal, tmp_path):
    s = tmp_path / "s"
    s.write_bytes(b"precious")
    d = tmp_path / "ro"
    d.mkdir()
    # Root ignores permission bits; an immutable directory stops even root.
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported on this filesystem")
    try:
        t = journal.create("ro", "sync")
        t.add(s, d / "f")
        with pytest.raises(axlpy.AxlError) as info:
            t.dispatch()
        assert "Operation not permitted" in str(info.value) or "ermission" in str(info.value)
        assert t.state is T.FAILED
        assert s.read_bytes() == b"precious"
        assert list(d.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def test_same_destination_twice(journal, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    t = journal.create("dup", "sync")
    t.add(a, tmp_path / "d")
    with pytest.raises(axlpy.UsageError, match="added twice"):
        t.add(b, tmp_path / "d")
    assert len(t.files()) == 1


def test_source_equals_destination(journal, tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"a")
    t = journal.create("same", "sync")
    with pytest.raises(axlpy.BadSourceError, match="the same"):
        t.add(a, a)
    with pytest.raises(axlpy.BadSourceError, match="inside the source"):
        t.add(tmp_path, tmp_path / "sub")
    assert a.read_bytes() == b"a"


def test_destination_is_existing_directory(journal, tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"a")
    (tmp_path / "d").mkdir()
    t = journal.create("isdir", "sync")
    with pytest.raises(axlpy.BadSourceError, match="existing directory"):
        t.add(a, tmp_path / "d")


def test_special_files_refused(journal, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = journal.create("fifo", "sync")
    with pytest.raises(axlpy.BadSourceError, match="FIFO"):
        t.add(fifo, tmp_path / "d")
    with pytest.raises(axlpy.BadSourceError, match="device"):
        t.add("/dev/null", tmp_path / "d")


@pytest.mark.parametrize(
    "name",
    [b"with space", b"new\nline", "n\u00e4\u00efve-\u2603".encode(), b"bad-\xff\xfe-utf8"],
)
def test_odd_names_round_trip(journal, tmp_path, name):
    srcdir = os.fsencode(tmp_path / "src")
    os.mkdir(srcdir)
    p = os.path.join(srcdir, name)
    with open(p, "wb") as f:
        f.write(b"content of " + name)
    dst = os.fsencode(tmp_path / "dst")
    t = journal.create("odd", "sync")
    t.add(srcdir, dst)
    t.dispatch()
    with open(os.path.join(dst, name), "rb") as f:
        assert f.read() == b"content of " + name
    assert any(os.fsencode(f.dst).endswith(name) for f in t.files())


def test_nul_in_name_refused(journal, tmp_path):
    t = journal.create("nul", "sync")
    with pytest.raises(axlpy.UsageError, match="NUL"):
        t.add(b"/tmp/a\x00b", tmp_path / "d")


def test_disk_full_mid_copy(journal, tmp_path, make_tmpfs):
    mnt = make_tmpfs("1m")
    s = tmp_path / "big"
    data = os.urandom(3 << 20)
    s.write_bytes(data)
    (mnt / "keep").write_bytes(b"pre-existing")
    t = journal.create("full", "sync", chunk_size=65536, extent_size=65536)
    t.add(s, mnt / "big")
    with pytest.raises(axlpy.AxlError) as info:
        t.dispatch()
    msg = str(info.value)
    assert "No space left on device" in msg and str(mnt / "big") in msg
    assert t.state is T.FAILED
    assert not (mnt / "big").exists()  # nothing under the final name
    assert s.read_bytes() == data  # source intact
    assert (mnt / "keep").read_bytes() == b"pre-existing"
    t.cancel()
    assert temp_files(mnt) == []
    assert t.state is T.CANCELLED
