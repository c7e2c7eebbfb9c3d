"""The journal's typed API: compare-and-set transitions, the typed options value, pause."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

import axlpy
from axlpy._config import DEFAULTS, Options
from axlpy._journal import JournalDB
from axlpy._state import TransferState as T
from tests.conftest import tree_bytes, write_tree


def _stored_options(path, name: str) -> dict:
    c = sqlite3.connect(path)
    try:
        return json.loads(c.execute("SELECT options FROM transfers WHERE name = ?",
                                    (name,)).fetchone()[0])
    finally:
        c.close()


def test_concurrent_state_change_is_caught_not_overwritten(journal_path, tmp_path):
    """Another connection (another process, an operator) fails the transfer while it is
    copying: the run's next transition compares against the state it last saw
    (DISPATCHED), so it fails instead of writing RENAMED/COMPLETED over FAILED."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a": b"x" * 100_000, "b": b"y" * 10})
    changed: list[bool] = []

    def on_progress(_p: object) -> None:
        if changed:
            return
        other = JournalDB(journal_path)  # a second connection, as another process has
        try:
            row = other.transfer("cas")
            assert row is not None and row.state is T.DISPATCHED
            other.set_state(row.id, T.DISPATCHED, T.FAILED, event="fail",
                            error="failed by someone else", name="cas")
        finally:
            other.close()
        changed.append(True)

    with axlpy.Journal(journal_path) as j:
        t = j.create("cas", "sync", on_progress=on_progress)
        t.add(src, dst)
        with pytest.raises(axlpy.AxlError, match="no longer DISPATCHED"):
            t.dispatch()
        assert changed
        st = t.status()
        assert st.state is T.FAILED
        assert st.error == "failed by someone else"
        events = [e["event"] for e in t.events()]
        assert "renamed" not in events and "complete" not in events
        # The run's own failure handler did not overwrite the other's FAILED either.
        assert events.count("fail") == 1
        # Nothing partial under a final name; resume finishes it.
        t.resume()
        t.wait()
        assert t.state is T.COMPLETED
    assert tree_bytes(dst) == tree_bytes(src)


def test_set_state_compares_expected_state(journal):
    t = journal.create("x", "sync")
    tid = journal.db.transfer("x").id
    with pytest.raises(axlpy.JournalError, match="no longer DISPATCHED"):
        journal.db.set_state(tid, T.DISPATCHED, T.FAILED, event="fail", name="x")
    assert t.state is T.CREATED
    assert [e["event"] for e in t.events()] == ["create"]


def test_pause_is_journaled_once(journal, tmp_path):
    write_tree(tmp_path / "s", {"f": b"1"})
    t = journal.create("p", "sync")
    t.add(tmp_path / "s", tmp_path / "d")
    row = journal.db.transfer("p")
    journal.db.dispatch(row.id, owner=axlpy._journal.Owner.me(), name="p",
                        prepare=lambda batch: ([], []))
    assert journal.db.pause(row.id, "read: EIO", name="p") is True
    assert journal.db.pause(row.id, "read: EIO", name="p") is False  # another worker
    assert t.state is T.PAUSED
    assert journal.db.unpause(row.id, "read", name="p") is True
    assert journal.db.unpause(row.id, "read", name="p") is False
    assert t.state is T.DISPATCHED
    assert [e["event"] for e in t.events()].count("pause") == 1


def test_defaults_come_from_the_options_value():
    opts = Options()
    settable = {k: v for k, v in opts.to_json().items()
                if k not in ("roots", "adds", "step", "mpi")}
    assert settable == DEFAULTS
    assert set(axlpy.config()) == set(DEFAULTS)
    with pytest.raises(axlpy.UsageError, match="unknown config key 'no_such'"):
        axlpy.config(no_such=1)


def test_old_options_load_and_unknown_keys_are_kept(journal_path, tmp_path):
    """A journal from an older axlpy lacks keys (they take the defaults); one from a newer
    axlpy has keys this one does not know (kept, written back unchanged)."""
    write_tree(tmp_path / "s", {"f": b"data" * 1000})
    with axlpy.Journal(journal_path) as j:
        j.create("old", "sync")
    old = {"chunk_size": 4096, "extent_size": 8192, "move": False, "roots": [],
           "from_the_future": {"k": [1, 2]}}
    c = sqlite3.connect(journal_path)
    c.execute("UPDATE transfers SET options = ? WHERE name = 'old'", (json.dumps(old),))
    c.commit()
    c.close()
    with axlpy.Journal(journal_path) as j:
        t = j.open("old")
        o = t.options
        assert (o.chunk_size, o.extent_size) == (4096, 8192)
        assert o.verify_published is True and o.mkdirs is True  # defaults
        assert o.adds is None and o.step is None
        assert o.unknown == {"from_the_future": {"k": [1, 2]}}
        t.add(tmp_path / "s", tmp_path / "d")
        t.dispatch()
        t.wait()
        assert t.state is T.COMPLETED
    stored = _stored_options(journal_path, "old")
    assert stored["from_the_future"] == {"k": [1, 2]}
    assert stored["roots"] == [str(tmp_path / "d")]
    assert stored["adds"] == [[str(tmp_path / "s"), str(tmp_path / "d"), "dir"]]
    assert (tmp_path / "d" / "f").read_bytes() == b"data" * 1000


def test_bad_stored_option_is_refused_naming_it(journal_path):
    with axlpy.Journal(journal_path) as j:
        j.create("bad", "sync")
    c = sqlite3.connect(journal_path)
    c.execute("UPDATE transfers SET options = ? WHERE name = 'bad'",
              (json.dumps({"chunk_size": "lots"}),))
    c.commit()
    c.close()
    with axlpy.Journal(journal_path) as j, \
            pytest.raises(axlpy.JournalError, match="'chunk_size' has an invalid value"):
        j.open("bad")


def test_options_value_is_frozen(journal):
    t = journal.create("f", "sync", chunk_size=1 << 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.options.chunk_size = 5  # type: ignore[misc]
    assert t.options.chunk_size == 1 << 20
    assert _stored_options(journal.path, "f")["chunk_size"] == 1 << 20
