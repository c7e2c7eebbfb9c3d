"""Source identity comparison (axlpy._identity.changes) on real files' stat results.

The journal's row for a source is stood in for by the fields ``changes`` reads, taken
from a real ``stat`` of a real file, then one field altered as a remount, a rename or a
rewrite would alter it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from axlpy._identity import changes


def _row(st: os.stat_result, **over: Any) -> Any:
    fields: dict[str, Any] = {"src": b"f", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                              "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}
    fields.update(over)
    return SimpleNamespace(**fields)


def test_same_file_on_a_remounted_device_is_unchanged(tmp_path: Path) -> None:
    """Device numbers change across a remount or reboot (NFS, btrfs, FUSE): the fault
    sweep's power-loss case with two mounts saw 40 -> 39 with inode and ctime equal, and
    resume refused an untouched source."""
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    assert changes(_row(st, dev=st.st_dev + 1), st) == []


def test_device_change_with_another_difference_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    got = dict(changes(_row(st, dev=st.st_dev + 1, ctime_ns=st.st_ctime_ns - 1), st))
    assert set(got) == {"ctime", "inode"}


def test_other_inode_is_reported_even_with_equal_ctime(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    assert [w for w, _ in changes(_row(st, ino=st.st_ino + 1), st)] == ["inode"]
    assert [w for w, _ in changes(_row(st, ino=st.st_ino + 1, dev=st.st_dev + 1), st)] \
        == ["inode"]


def test_rows_without_identity_compare_size_and_mtime_only(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    assert changes(_row(st, ctime_ns=None, ino=None, dev=None), st) == []
    assert [w for w, _ in changes(_row(st, ctime_ns=None, ino=None, dev=None,
                                        size=99), st)] == ["size"]
