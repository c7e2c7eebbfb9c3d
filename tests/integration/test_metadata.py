"""Permissions and metadata (issue 15.1/15.6): what a copy keeps by default (modes masked
by the umask, never wider, like ``cp -r``) and with ``metadata=True`` (mode, mtime, owner
as root, xattrs, POSIX ACLs — for files, directories and symlinks, like ``cp -a``),
including a resume after a crash between the files and their directories' metadata, and
the done-when comparison against ``cp -a`` itself."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axlpy
from tests.cli.clitools import child_env, run_sub
from tests.conftest import temp_files

T = axlpy.TransferState
ROOT = os.geteuid() == 0


def _umask() -> int:
    from axlpy._staging import current_umask

    return current_umask()


def _xattrs_supported(p: Path) -> bool:
    probe = p / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.axlpy_probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


def acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """A ``system.posix_acl_*`` value: version 2, then (tag, perm, id) sorted by tag, id."""
    out = struct.pack("<I", 2)
    for tag, perm, qid in sorted(entries):
        out += struct.pack("<HHI", tag, perm, qid)
    return out


_UNDEF = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def _acl_for(mode: int, extra_uid: int) -> bytes:
    return acl_xattr([(USER_OBJ, (mode >> 6) & 7, _UNDEF), (USER, 6, extra_uid),
                      (GROUP_OBJ, (mode >> 3) & 7, _UNDEF), (MASK, 7, _UNDEF),
                      (OTHER, mode & 7, _UNDEF)])


def _copy(journal: axlpy.Journal, name: str, src: Path, dst: Path, **opts: object) -> None:
    t = journal.create(name, "sync", **opts)
    t.add(src, dst)
    t.dispatch()
    assert t.state is T.COMPLETED


# -- default: never wider than the source, masked by the umask (cp -r) ---------------------


def test_private_directory_stays_private_without_metadata(journal, tmp_path):
    src = tmp_path / "src"
    (src / "private").mkdir(parents=True)
    (src / "private" / "secret").write_bytes(b"s")
    os.chmod(src / "private" / "secret", 0o644)
    os.chmod(src / "private", 0o700)
    _copy(journal, "p", src, tmp_path / "dst")
    assert stat.S_IMODE(os.stat(tmp_path / "dst" / "private").st_mode) == 0o700
    assert (tmp_path / "dst" / "private" / "secret").read_bytes() == b"s"


def test_directory_modes_masked_by_umask_and_setid_dropped(journal, tmp_path):
    src = tmp_path / "src"
    for d, mode in (("a", 0o750), ("b", 0o555), ("c", 0o2775), ("e", 0o777)):
        (src / d).mkdir(parents=True)
        (src / d / "f").write_bytes(d.encode())
        os.chmod(src / d, mode)
    (src / "empty").mkdir()
    os.chmod(src / "empty", 0o751)
    (src / "suid").write_bytes(b"x")
    os.chmod(src / "suid", 0o4755)
    os.chmod(src, 0o711)
    dst = tmp_path / "dst"
    _copy(journal, "m", src, dst)
    um = _umask()
    for d, mode in (("a", 0o750), ("b", 0o555), ("c", 0o775), ("e", 0o777)):
        assert stat.S_IMODE(os.stat(dst / d).st_mode) == mode & ~um, d
        assert (dst / d / "f").read_bytes() == d.encode()  # a read-only dir got its file
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o711 & ~um
    assert stat.S_IMODE(os.stat(dst / "empty").st_mode) == 0o751 & ~um
    assert stat.S_IMODE(os.stat(dst / "suid").st_mode) == 0o755 & ~um


def test_existing_destination_directory_mode_untouched_without_metadata(journal, tmp_path):
    """Like cp -r: a directory that was already there keeps its mode (never widened)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.chmod(src / "d", 0o777)
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    os.chmod(dst / "d", 0o700)
    _copy(journal, "e", src, dst)
    assert stat.S_IMODE(os.stat(dst / "d").st_mode) == 0o700


def test_private_directory_cli(tmp_path):
    src = tmp_path / "src"
    (src / "p").mkdir(parents=True)
    (src / "p" / "f").write_bytes(b"x")
    os.chmod(src / "p", 0o700)
    jdir = tmp_path / "j"
    jdir.mkdir(mode=0o700)
    r = run_sub(jdir / "j.db", "cp", "--type", "sync", src, tmp_path / "dst")
    assert r.code == 0, r.err
    assert stat.S_IMODE(os.stat(tmp_path / "dst" / "p").st_mode) == 0o700


# -- metadata=True ------------------------------------------------------------------------


def test_metadata_symlink_and_directory_mtimes(journal, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.symlink("d/f", src / "ln")
    os.utime(src / "ln", ns=(1_100_000_000_000, 1_200_000_000_001), follow_symlinks=False)
    os.utime(src / "d" / "f", ns=(1_000_000_000, 1_300_000_000_002))
    os.utime(src / "d", ns=(1_000_000_000, 1_400_000_000_003))
    os.chmod(src / "d", 0o705)
    dst = tmp_path / "dst"
    _copy(journal, "mt", src, dst, metadata=True)
    assert os.lstat(dst / "ln").st_mtime_ns == 1_200_000_000_001
    assert os.stat(dst / "d" / "f").st_mtime_ns == 1_300_000_000_002
    assert os.stat(dst / "d").st_mtime_ns == 1_400_000_000_003
    assert stat.S_IMODE(os.stat(dst / "d").st_mode) == 0o705


def test_metadata_xattrs_and_acls(journal, tmp_path):
    if not _xattrs_supported(tmp_path):
        pytest.skip("this filesystem does not support user xattrs")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    f = src / "d" / "f"
    f.write_bytes(b"data")
    os.setxattr(f, "user.checkpoint", b"step=42")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(src / "d", "user.dirtag", b"\x00\xffbin")
    os.chmod(f, 0o640)
    try:
        os.setxattr(f, "system.posix_acl_access", _acl_for(0o640, 12345))
        os.setxattr(src / "d", "system.posix_acl_default", _acl_for(0o750, 12345))
        acls = True
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        acls = False
    dst = tmp_path / "dst"
    _copy(journal, "x", src, dst, metadata=True)
    g = dst / "d" / "f"
    assert os.getxattr(g, "user.checkpoint") == b"step=42"
    assert os.getxattr(g, "user.empty") == b""
    assert os.getxattr(dst / "d", "user.dirtag") == b"\x00\xffbin"
    if acls:
        assert os.getxattr(g, "system.posix_acl_access") == os.getxattr(
            f, "system.posix_acl_access")
        assert os.getxattr(dst / "d", "system.posix_acl_default") == os.getxattr(
            src / "d", "system.posix_acl_default")
    assert stat.S_IMODE(os.stat(g).st_mode) == stat.S_IMODE(os.stat(f).st_mode)


def test_no_xattrs_without_metadata(journal, tmp_path):
    if not _xattrs_supported(tmp_path):
        pytest.skip("this filesystem does not support user xattrs")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.k", b"v")
    _copy(journal, "nx", src, tmp_path / "dst")
    assert os.listxattr(tmp_path / "dst" / "f") == []


@pytest.mark.skipif(not ROOT, reason="owners can be given away only by root")
def test_metadata_owners_as_root(journal, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.symlink("f", src / "d" / "ln")
    os.chown(src / "d" / "f", 1234, 2345)
    os.chown(src / "d", 1235, 2346)
    os.lchown(src / "d" / "ln", 1236, 2347)
    dst = tmp_path / "dst"
    _copy(journal, "own", src, dst, metadata=True)
    for rel, ids in (("d/f", (1234, 2345)), ("d", (1235, 2346)), ("d/ln", (1236, 2347))):
        st = os.lstat(dst / rel)
        assert (st.st_uid, st.st_gid) == ids, rel


CHILD = textwrap.dedent("""
    import sys
    import axlpy
    j = axlpy.Journal(sys.argv[1])
    t = j.create("x", "sync", metadata=True)
    t.add(sys.argv[2], sys.argv[3])
    t.dispatch()
""")


@pytest.mark.parametrize("point", ["publish.after_commit", "dirs.after_meta"])
def test_directory_metadata_applied_by_resume(journal_path, tmp_path, point):
    """Killed after the files are published but before the directories' metadata is
    journaled: the resume applies mode, mtime and xattrs to every directory."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"f")
    os.chmod(src / "a" / "b", 0o700)
    os.chmod(src / "a", 0o750)
    xattrs = _xattrs_supported(tmp_path)
    if xattrs:
        os.setxattr(src / "a", "user.tag", b"a")
    os.utime(src / "a" / "b", ns=(1, 1_500_000_000_000_000_007))
    os.utime(src / "a", ns=(1, 1_400_000_000_000_000_009))
    dst = tmp_path / "dst"
    env = dict(os.environ, AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT="1")
    p = subprocess.run([sys.executable, "-c", CHILD, str(journal_path), str(src), str(dst)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    with axlpy.Journal(journal_path) as j:
        t = j.open("x")
        t.resume()
        assert t.state is T.COMPLETED
    assert stat.S_IMODE(os.stat(dst / "a" / "b").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(dst / "a").st_mode) == 0o750
    assert os.stat(dst / "a" / "b").st_mtime_ns == 1_500_000_000_000_000_007
    assert os.stat(dst / "a").st_mtime_ns == 1_400_000_000_000_000_009
    if xattrs:
        assert os.getxattr(dst / "a", "user.tag") == b"a"
    assert temp_files(dst) == []


def test_directory_created_private_while_filling(journal_path, tmp_path):
    """Killed while a private directory is being filled: it is never wider than 0700
    meanwhile (without metadata), and resume gives it its final mode."""
    src = tmp_path / "src"
    (src / "p").mkdir(parents=True)
    (src / "p" / "f").write_bytes(b"f")
    os.chmod(src / "p", 0o700)
    dst = tmp_path / "dst"
    child = CHILD.replace("metadata=True", "metadata=False")
    env = dict(os.environ, AXLPY_CRASH_AT="publish.after_commit", AXLPY_CRASH_HIT="1")
    p = subprocess.run([sys.executable, "-c", child, str(journal_path), str(src), str(dst)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    assert stat.S_IMODE(os.stat(dst / "p").st_mode) & 0o077 == 0
    with axlpy.Journal(journal_path) as j:
        j.open("x").resume()
    assert stat.S_IMODE(os.stat(dst / "p").st_mode) == 0o700


# -- done when: the same as cp -a ---------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Per entry below ``root``: type, mode, owner, size, mtime, link target and every
    xattr (as ``getfattr -d -m - -h`` would dump them). The root's own mtime included."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            if name == "" and dirpath != str(root):
                continue
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            try:
                names = sorted(os.listxattr(p, follow_symlinks=False))
            except OSError:
                names = []
            xs = tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            nlink = st.st_nlink if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_uid, st.st_gid, size, st.st_mtime_ns,
                                             link, xs, nlink)
    return out


def _link_groups(root: Path) -> set[frozenset[str]]:
    """The names below ``root`` that share an inode (hard links), as sets of paths."""
    by_ino: dict[tuple[int, int], set[str]] = {}
    for p in root.rglob("*"):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            by_ino.setdefault((st.st_dev, st.st_ino), set()).add(str(p.relative_to(root)))
    return {frozenset(g) for g in by_ino.values() if len(g) > 1}


def _data_regions(p: Path) -> int:
    fd = os.open(p, os.O_RDONLY)
    try:
        n, off, size = 0, 0, os.fstat(fd).st_size
        while off < size:
            try:
                off = os.lseek(fd, os.lseek(fd, off, os.SEEK_DATA), os.SEEK_HOLE)
            except OSError:
                break
            n += 1
        return n
    finally:
        os.close(fd)


def _assert_allocation_like(ref: Path, out: Path) -> None:
    """Each regular file allocates what ``cp -a``'s copy does, within one block per data
    region (a sparse file stays sparse)."""
    for p in ref.rglob("*"):
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            continue
        got = os.lstat(out / p.relative_to(ref))
        slack = max(1, _data_regions(p)) * st.st_blksize
        assert abs(got.st_blocks - st.st_blocks) * 512 <= slack, (
            p.relative_to(ref), got.st_blocks, st.st_blocks)


def _every_case(src: Path, xattrs: bool) -> None:
    (src / "private" / "deep").mkdir(parents=True)
    (src / "shared").mkdir()
    (src / "ro").mkdir()
    (src / "empty").mkdir()
    files = {"private/secret": 0o600, "private/deep/note": 0o644, "shared/run.sh": 0o755,
             "shared/data": 0o640, "ro/frozen": 0o444, "top": 0o664, "sgid": 0o2755}
    for i, (rel, mode) in enumerate(sorted(files.items())):
        p = src / rel
        p.write_bytes(os.urandom(1000 + i))
        os.chmod(p, mode)
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_500_000_000_000_000_000 + i * 7))
    os.symlink("shared/data", src / "link")
    os.symlink("../top", src / "shared" / "uplink")
    os.utime(src / "link", ns=(1, 1_234_567_890_123_456_789), follow_symlinks=False)
    os.utime(src / "shared" / "uplink", ns=(1, 1_111_111_111_000_000_001),
             follow_symlinks=False)
    if xattrs:
        os.setxattr(src / "shared" / "data", "user.kind", b"tensor")
        os.setxattr(src / "private", "user.owner", b"job-7")
        try:
            os.setxattr(src / "shared" / "data", "system.posix_acl_access",
                        _acl_for(0o640, 4242))
            os.setxattr(src / "shared", "system.posix_acl_default", _acl_for(0o755, 4242))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        if ROOT:
            os.setxattr(src / "top", "trusted.axlpy", b"root-only")
    if ROOT:
        os.chown(src / "shared" / "data", 4242, 4343)
        os.chown(src / "private", 4244, 4345)
        os.lchown(src / "link", 4246, 4347)
    # a hard-link pair (the linked inode carries the xattrs, ACL and owner above) and a
    # group of three in one directory
    os.link(src / "shared" / "data", src / "private" / "data-hardlink")
    os.link(src / "ro" / "frozen", src / "ro" / "frozen2")
    os.link(src / "ro" / "frozen", src / "shared" / "frozen3")
    # sparse files: 12 MiB (above one 8 MiB chunk: the chunked path) with two data
    # regions and a trailing hole; 2 MiB (one step) with a hole at both ends
    for rel, size, data_at in (("sparse.bin", 12 << 20, (0, 8 << 20)),
                               ("private/small-sparse", 2 << 20, (1 << 20,))):
        with open(src / rel, "wb") as f:
            f.truncate(size)
            for off in data_at:
                f.seek(off)
                f.write(os.urandom(4096))
        os.chmod(src / rel, 0o640)
        os.utime(src / rel, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    dirs = {"private": 0o700, "private/deep": 0o750, "shared": 0o755, "ro": 0o555,
            "empty": 0o711, "": 0o750}
    for rel, mode in sorted(dirs.items(), key=lambda kv: -kv[0].count("/") - len(kv[0])):
        os.chmod(src / rel, mode)
        os.utime(src / rel, ns=(1, 1_300_000_000_000_000_000 + len(rel)))


def test_metadata_copy_matches_cp_a(tmp_path):
    """Done when: diff -r and a stat/xattr comparison against cp -a match with
    --metadata, and the 0700 directory keeps 0700 without it."""
    if shutil.which("cp") is None or shutil.which("diff") is None:
        pytest.skip("needs cp and diff")
    xattrs = _xattrs_supported(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    _every_case(src, xattrs)
    ref = tmp_path / "ref"
    subprocess.run(["cp", "-a", str(src), str(ref)], check=True)
    jdir = tmp_path / "j"
    jdir.mkdir(mode=0o700)
    out = tmp_path / "out"
    r = run_sub(jdir / "j.db", "cp", "--metadata", "--type", "sync", src, out,
                env=child_env(jdir / "j.db"))
    assert r.code == 0, r.err
    d = subprocess.run(["diff", "-r", "--no-dereference", str(ref), str(out)],
                       capture_output=True, text=True)
    assert d.returncode == 0, d.stdout + d.stderr
    want, got = _snapshot(ref), _snapshot(out)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
    # the link structure and the allocated sizes (sparse files) too
    assert _link_groups(ref) == _link_groups(out) == _link_groups(src)
    assert len(_link_groups(src)) == 2
    _assert_allocation_like(ref, out)
    if shutil.which("getfattr"):  # the same dump as getfattr gives, when it is installed
        dumps = [subprocess.run(["getfattr", "-R", "-d", "-m", "-", "-h", "--absolute-names",
                                 "."], cwd=d, capture_output=True, text=True).stdout
                 for d in (ref, out)]
        assert dumps[0] == dumps[1]
    # -a is the same option
    out2 = tmp_path / "out2"
    r = run_sub(jdir / "j.db", "cp", "-a", "--type", "sync", src, out2)
    assert r.code == 0, r.err
    assert _snapshot(out2) == want
    # without --metadata: never wider than the source, the private directory stays 0700
    plain = tmp_path / "plain"
    r = run_sub(jdir / "j.db", "cp", "--type", "sync", src, plain)
    assert r.code == 0, r.err
    assert stat.S_IMODE(os.stat(plain / "private").st_mode) == 0o700
    assert _link_groups(plain) == _link_groups(src)  # links are kept without it too
    _assert_allocation_like(ref, plain)
    for rel, (_, mode, *_rest) in _snapshot(src).items():
        pst = os.lstat(plain / rel)
        if not stat.S_ISLNK(pst.st_mode):
            assert stat.S_IMODE(pst.st_mode) & ~mode == 0, rel  # never wider
