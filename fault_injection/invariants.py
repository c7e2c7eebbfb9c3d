"""What must be true on disk and in the journal, checked after every case.

``expect`` names the documented outcome the harness reached:

- ``complete``: every destination equals its source byte for byte (mode and mtime too with
  metadata copy), hard-linked sources are hard links, every directory exists, nothing
  extra under the destination, sources intact (move mode: gone), journal COMPLETED with
  ``complete`` as its last event;
- ``cancelled``: nothing under any destination file name, sources intact, journal
  CANCELLED with ``cancel`` as its last event;
- ``not_dispatched``: the transfer never got past CREATED: nothing under the
  destinations, sources intact, journal CREATED;
- ``not_created``: the transfer never got its row committed (a fault before or during
  create): nothing under the destinations, sources intact.

Always: no temp file (:data:`axlpy._staging.TEMP_PATTERN`) anywhere under the sources or
destinations, ``PRAGMA integrity_check`` says ok, and an acknowledged completion is still
a completion. :func:`check_crashed` is the weaker check between a crash and recovery: no
final name holds a partial or wrong file, and (move mode) every file is intact in the
source or the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from typing import Any

from .scenarios import Layout, Manifest

__all__ = ["check", "check_crashed", "journal_info", "temps_under"]


def _sha(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def temps_under(*roots: str) -> list[str]:
    """Every axlpy temp file below ``roots``."""
    from axlpy._staging import TEMP_PATTERN

    out: list[str] = []
    for root in roots:
        for dp, dns, fns in os.walk(root):
            for n in fns + dns:
                if TEMP_PATTERN.search(os.fsencode(n)):
                    out.append(os.path.join(dp, n))
    return out


def _files_under(root: str) -> list[str]:
    out: list[str] = []
    for dp, _dns, fns in os.walk(root):
        for n in fns:
            out.append(os.path.relpath(os.path.join(dp, n), root))
    return out


def journal_info(path: str) -> dict[str, Any]:
    """Integrity, state and transfer-level events of the journal (read in this process)."""
    info: dict[str, Any] = {"integrity": None, "state": None, "events": [], "error": None}
    if not os.path.exists(path):
        info["error"] = "journal missing"
        return info
    try:
        conn = sqlite3.connect(path, timeout=30)
    except sqlite3.Error as exc:
        info["error"] = f"cannot open: {exc}"
        return info
    try:
        info["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        row = conn.execute("SELECT id, state FROM transfers WHERE name = 'xfer'").fetchone()
        if row is not None:
            info["state"] = row[1]
            info["events"] = [r[0] for r in conn.execute(
                "SELECT event FROM events WHERE transfer_id = ? AND file_id IS NULL "
                "ORDER BY id", (row[0],))]
            info["file_states"] = [r[0] for r in conn.execute(
                "SELECT state FROM files WHERE transfer_id = ?", (row[0],))]
            info["kept_sources"] = [r[0] for r in conn.execute(
                "SELECT detail FROM events WHERE transfer_id = ? AND event = "
                "'move-kept-changed-source'", (row[0],))]
    except sqlite3.Error as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return info


def _dst_path(lay: Layout, rel: str) -> str:
    return os.path.join(lay.dst, rel)


def _src_path(lay: Layout, rel: str) -> str:
    return os.path.join(lay.src, rel)


def acked(lay: Layout) -> str | None:
    """The state the child acknowledged (COMPLETED/CANCELLED), if any."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        with open(lay.ack) as f:
            return str(json.load(f)["state"])
    return None


def check_crashed(lay: Layout, man: Manifest) -> list[str]:
    """Between a crash and recovery: no wrong file under a final name; nothing lost."""
    bad: list[str] = []
    for rel, m in man["files"].items():
        d = _sha(_dst_path(lay, rel))
        s = _sha(_src_path(lay, rel))
        if d is not None and d != m["sha256"]:
            bad.append(f"final name {rel!r} holds a partial or wrong file")
        if s is not None and s != m["sha256"]:
            bad.append(f"source {rel!r} was modified")
        if man["move"]:
            if d != m["sha256"] and s != m["sha256"]:
                bad.append(f"move mode: {rel!r} is intact in neither source nor destination")
        elif s is None:
            bad.append(f"source {rel!r} was deleted (not move mode)")
    return bad


def _kept(j: dict[str, Any], path: str, got: str | None, m: dict[str, Any]) -> bool:
    """A move may keep a source it found changed (journaled): fine if it is intact.
    (powerfs does not model timestamps, so a source resurrected by a power cut looks
    changed to axlpy's size+mtime check.)"""
    return got == m["sha256"] and repr(path) in (j.get("kept_sources") or [])


def _dir_attrs(lay: Layout, man: Manifest) -> list[str]:
    """Each destination directory has its source's mode masked by the umask (never
    wider; set-id dropped), or with metadata copy its exact mode and mtime."""
    from axlpy._staging import current_umask

    bad = []
    umask = current_umask()
    for rel, m in man.get("dir_modes", {}).items():
        try:
            st = os.stat(_dst_path(lay, rel))
        except OSError:
            continue  # reported as missing above
        want = m["mode"] if man["metadata"] else m["mode"] & 0o777 & ~umask
        if st.st_mode & 0o7777 != want:
            bad.append(f"destination directory {rel!r} has mode {st.st_mode & 0o7777:o}, "
                       f"expected {want:o}")
        if man["metadata"] and st.st_mtime_ns != m["mtime_ns"]:
            bad.append(f"destination directory {rel!r} mtime not copied")
    return bad


def _links(lay: Layout, man: Manifest) -> list[str]:
    """Each hard-link pair of the sources is one inode at the destination (issue 15.3)."""
    bad = []
    for later, first in man.get("links", []):
        try:
            a, b = os.lstat(_dst_path(lay, later)), os.lstat(_dst_path(lay, first))
        except OSError:
            continue  # reported as missing above
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            bad.append(f"destination {later!r} is not a hard link of {first!r}")
    return bad


def check(lay: Layout, man: Manifest, expect: str, *, mtimes: bool = True,
          links: bool = True) -> list[str]:
    """Invariants after recovery; returns a list of violations (empty: passed).
    ``mtimes=False`` skips the mtime part of the metadata check (powerfs does not model
    mtimes: a file it restores at a power cut gets a new mtime); ``links=False``
    skips the hard-link check (the names of one inode must have one inode number)."""
    bad: list[str] = []
    j = journal_info(lay.journal)
    if expect == "not_created" and not os.path.exists(lay.journal):
        j["error"] = None
    if j["error"]:
        bad.append(f"journal: {j['error']}")
    elif j["integrity"] != "ok":
        bad.append(f"journal integrity_check: {j['integrity']}")
    temps = temps_under(*(p for p in (lay.src, lay.dst) if os.path.isdir(p)))
    if temps:
        bad.append(f"temp files left: {temps}")
    ack = acked(lay)
    if ack == "COMPLETED" and expect != "complete":
        bad.append(f"an acknowledged completion was lost (outcome {expect})")
    files = man["files"]
    events = j.get("events") or []
    if expect == "complete":
        if j["state"] != "COMPLETED":
            bad.append(f"journal state {j['state']}, expected COMPLETED")
        if not events or events[-1] != "complete":
            bad.append(f"last event {events[-1:]} is not 'complete'")
        for rel, m in files.items():
            p = _dst_path(lay, rel)
            got = _sha(p)
            if got is None:
                bad.append(f"destination {rel!r} missing")
                continue
            if got != m["sha256"]:
                bad.append(f"destination {rel!r} differs from its source")
            if man["metadata"]:
                st = os.stat(p)
                if st.st_mode & 0o7777 != m["mode"] or (
                        mtimes and st.st_mtime_ns != m["mtime_ns"]):
                    bad.append(f"destination {rel!r} metadata not copied")
        for rel in man["dirs"]:
            if not os.path.isdir(_dst_path(lay, rel)):
                bad.append(f"destination directory {rel!r} missing")
        if mtimes:  # powerfs models neither timestamps nor a directory's chmod
            bad += _dir_attrs(lay, man)
        if links:
            bad += _links(lay, man)
        extra = set(_files_under(lay.dst)) - set(files) if os.path.isdir(lay.dst) else set()
        if extra:
            bad.append(f"unexpected files under destination: {sorted(extra)}")
        for rel, m in files.items():
            s = _sha(_src_path(lay, rel))
            if man["move"] and s is not None and not _kept(j, _src_path(lay, rel), s, m):
                bad.append(f"move mode: source {rel!r} not deleted after COMPLETED")
            if not man["move"] and s != m["sha256"]:
                bad.append(f"source {rel!r} not intact")
        return bad
    want_state = {"cancelled": "CANCELLED", "not_dispatched": "CREATED",
                  "not_created": None}[expect]
    if j["state"] != want_state:
        bad.append(f"journal state {j['state']}, expected {want_state}")
    if expect == "cancelled" and (not events or events[-1] != "cancel"):
        bad.append(f"last event {events[-1:]} is not 'cancel'")
    left = _files_under(lay.dst) if os.path.isdir(lay.dst) else []
    if left:
        bad.append(f"{expect}: files left under destination: {sorted(left)}")
    for rel, m in files.items():
        if _sha(_src_path(lay, rel)) != m["sha256"]:
            bad.append(f"source {rel!r} not intact")
    return bad
