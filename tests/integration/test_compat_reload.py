"""``axlpy.compat``: C AXL's resume idiom — AXL_Create with the same name and state file
reloads the transfer (C AXL's ``axl_cp -U``: AXL_Init, AXL_Create(AXL_XFER_SYNC, name,
state_file), AXL_Resume, AXL_Wait, AXL_Free, AXL_Finalize)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import axlpy
from axlpy import compat
from tests.conftest import temp_files

T = axlpy.TransferState

# The first run, as C AXL's axl_cp: create, add, dispatch — killed mid-copy.
FIRST_RUN = textwrap.dedent("""
    import sys
    from axlpy import compat as c
    c.AXL_Init()
    c.AXL_Config({"FILE_BUF_SIZE": 65536, "extent_size": 65536})
    xid = c.AXL_Create(c.AXL_XFER_SYNC, "axl_cp", sys.argv[1])
    assert xid != c.AXL_FAILURE, c.AXL_LastError()
    assert c.AXL_Add(xid, sys.argv[2], sys.argv[3]) == c.AXL_SUCCESS, c.AXL_LastError()
    c.AXL_Dispatch(xid)
""")


@pytest.fixture
def compat_session():
    yield
    compat.AXL_Finalize()


def _killed_first_run(state_file, src, dst, point="stage.after_extent_commit", hit=3):
    env = dict(os.environ, AXLPY_CRASH_AT=point, AXLPY_CRASH_HIT=str(hit))
    proc = subprocess.run([sys.executable, "-c", FIRST_RUN, str(state_file), str(src),
                           str(dst)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


def test_c_axl_resume_sequence_reloads_by_name(journal_path, tmp_path, compat_session):
    src = tmp_path / "ckpt.0"
    data = os.urandom(8 * 65536 + 99)
    src.write_bytes(data)
    dst = tmp_path / "out" / "ckpt.0"
    _killed_first_run(journal_path, src, dst)
    assert not dst.exists()

    # C AXL's resume sequence, call for call.
    assert compat.AXL_Init() == compat.AXL_SUCCESS
    xid = compat.AXL_Create(compat.AXL_XFER_SYNC, "axl_cp", str(journal_path))
    assert xid != compat.AXL_FAILURE, compat.AXL_LastError()
    assert compat.AXL_Resume(xid) == compat.AXL_SUCCESS, compat.AXL_LastError()
    assert compat.AXL_Wait(xid) == compat.AXL_SUCCESS, compat.AXL_LastError()
    assert dst.read_bytes() == data
    assert temp_files(tmp_path) == []
    with axlpy.Journal(journal_path) as j:
        events = [e["event"] for e in j.open("axl_cp").events()]
        assert events.count("dispatch") == 1 and "resume" in events  # reloaded, not new
    assert compat.AXL_Free(xid) == compat.AXL_SUCCESS
    assert compat.AXL_Finalize() == compat.AXL_SUCCESS
    with axlpy.Journal(journal_path) as j:
        assert j.names() == []


def test_reload_of_completed_and_created_transfers(journal_path, tmp_path, compat_session):
    src = tmp_path / "s"
    src.write_bytes(b"payload")
    compat.AXL_Init()
    xid = compat.AXL_Create(compat.AXL_XFER_SYNC, "done", str(journal_path))
    compat.AXL_Add(xid, str(src), str(tmp_path / "d1"))
    assert compat.AXL_Dispatch(xid) == compat.AXL_SUCCESS
    # Never dispatched (the job died between Add and Dispatch): C AXL's resume starts it.
    xid2 = compat.AXL_Create(compat.AXL_XFER_SYNC, "fresh", str(journal_path))
    compat.AXL_Add(xid2, str(src), str(tmp_path / "d2"))
    compat.AXL_Finalize()

    compat.AXL_Init()
    for name, dst in (("done", "d1"), ("fresh", "d2")):
        rid = compat.AXL_Create(compat.AXL_XFER_SYNC, name, str(journal_path))
        assert rid != compat.AXL_FAILURE, compat.AXL_LastError()
        assert compat.AXL_Resume(rid) == compat.AXL_SUCCESS, compat.AXL_LastError()
        assert compat.AXL_Wait(rid) == compat.AXL_SUCCESS
        assert (tmp_path / dst).read_bytes() == b"payload"
        assert compat.AXL_Free(rid) == compat.AXL_SUCCESS


def test_reload_with_another_type_fails_naming_both(journal_path, tmp_path, compat_session):
    compat.AXL_Init()
    assert compat.AXL_Create(compat.AXL_XFER_SYNC, "t", str(journal_path)) != -1
    assert compat.AXL_Create(compat.AXL_XFER_PTHREAD, "t", str(journal_path)) == -1
    msg = compat.AXL_LastError()
    assert "'pthread' does not match type 'sync'" in msg and "'t'" in msg
    # AXL_XFER_STATE_FILE takes the type from the journal.
    assert compat.AXL_Create(compat.AXL_XFER_STATE_FILE, "t", str(journal_path)) != -1
    # Without a state file there is nothing to reload from: the name stays taken.
    os.environ["AXLPY_JOURNAL"] = str(journal_path)
    try:
        assert compat.AXL_Create(compat.AXL_XFER_SYNC, "t", None) == -1
        assert "already exists" in compat.AXL_LastError()
    finally:
        del os.environ["AXLPY_JOURNAL"]
