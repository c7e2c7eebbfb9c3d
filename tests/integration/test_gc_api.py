"""gc in the library (issue 13.6): axlpy.gc() classifies real temp files against a real
journal and removes only what it may; the CLI only renders the report."""

from __future__ import annotations

import os

import pytest

import axlpy
from tests.conftest import write_tree


def test_gc_classifies_against_the_journal_and_deletes_only_dead_temps(journal, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_tree(src, {"a": b"a" * 1000})
    t = journal.create("done", "sync")
    t.add(src, out)
    t.dispatch()
    row = journal.db.transfer("done")
    # A temp of the finished transfer (as a crash between rename and unlink leaves
    # nothing, plant one by its name), an old orphan, and a fresh one of another journal.
    finished = out / f".a.axlpy-{row.token}-{row.id}-99"
    orphan = out / ".b.axlpy-deadbeef-7-1"
    fresh = out / ".c.axlpy-cafebabe-8-1"
    for p in (finished, orphan, fresh):
        p.write_bytes(b"x" * 10)
    os.utime(orphan, (1, 1))
    rep = axlpy.gc(out, journal, min_age=3600)
    assert rep.dry_run
    by = {os.path.basename(x.path): x for x in rep.temps}
    assert {k: (v.cls, v.action) for k, v in by.items()} == {
        finished.name.encode(): ("finished", "delete"),
        orphan.name.encode(): ("unknown", "delete"),
        fresh.name.encode(): ("recent", "keep"),
    }
    assert by[finished.name.encode()].transfer == "done"
    assert all(p.exists() for p in (finished, orphan, fresh))  # a dry run removes nothing
    rep = axlpy.gc(out, journal, delete=True, min_age=3600)
    assert sorted(x.action for x in rep.temps) == ["deleted", "deleted", "keep"]
    assert not finished.exists() and not orphan.exists() and fresh.exists()
    assert (out / "a").read_bytes() == b"a" * 1000  # published files are never temps
    with pytest.raises(axlpy.UsageError, match="is not a directory"):
        axlpy.gc(tmp_path / "nope", journal)
