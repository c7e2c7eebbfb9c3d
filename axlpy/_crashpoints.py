"""Crash points: a named hook at every journal commit and every filesystem mutation.

``crash_point("publish.after_rename")`` does nothing unless the process was started with

- ``AXLPY_CRASH_AT=<name>`` (and optionally ``AXLPY_CRASH_HIT=<n>``, default 1): on the
  n-th time that point is reached the process SIGKILLs itself, exactly as a crash would;
- ``AXLPY_CRASH_TRACE=<file>``: every point reached is appended to the file, one name per
  line, so a harness can see which points a scenario reaches and how often.

Every name is declared in :data:`CRASH_POINTS`; calling an undeclared name raises, so the
registry and the code cannot drift apart. A point named ``X.before_Y`` fires before the
effect ``Y`` happens, ``X.after_Y`` after it is done (and, for a commit, durable).
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_POINTS", "crash_point", "reset_for_tests"]

CRASH_POINTS: dict[str, str] = {
    # opening an older journal
    "migrate.before_commit": "schema migration steps run, their transaction not committed",
    "migrate.after_commit": "schema migrated to the current version (durable)",
    # create / add
    "create.after_commit": "transfer row CREATED is durable",
    "add.after_commit": "file rows PENDING for one add() are durable",
    # dispatch
    "dispatch.after_commit": "DISPATCHED (owner, recorded source stats, temp names) durable",
    "stage.after_mkdir": "a missing destination directory was created, parent not fsynced",
    "stage.after_mkdir_fsync": "new destination directories durable in their parents "
                               "(fsynced, or the batch's syncfs)",
    "stage.after_mkdir_commit": "the new directories are recorded in created_dirs (durable)",
    "stage.after_create_temp": "temp file created (O_EXCL), nothing written",
    "stage.after_write": "a chunk written to the temp file, not fsynced",
    "stage.after_extent_commit": "a group of verified extents is durable in the journal",
    "stage.after_fsync": "temp file fully written and fsynced (batched, not a large file: "
                         "sealed, not yet durable; the batch's syncfs covers it)",
    "stage.after_syncfs": "the batch's syncfs returned: its temps and new directories are "
                          "durable, nothing of it journaled or renamed yet",
    "stage.after_commit": "a batch of files STAGED (size, CRC32C) is durable",
    "stage.after_admission_commit": "the run's admission counters (an event) are durable",
    "link.after_temp": "a later name of a hard-link group linked to its temp (to the "
                       "published first name), not journaled",
    "publish.after_exchange": "one temp exchanged with the entry its final name held "
                              "(that entry now under the temp name, not yet removed)",
    "publish.after_rename": "one temp renamed over its final name, directory not fsynced",
    "publish.after_dir_fsync": "directories of a renamed batch fsynced",
    "publish.after_commit": "a batch of files PUBLISHED is durable",
    "dirs.after_meta": "one directory's final mode (and metadata) set, not yet journaled",
    "renamed.after_commit": "transfer RENAMED is durable",
    "move.after_unlink": "one source deleted (move mode)",
    "move.after_dir_fsync": "source directories fsynced after deletes",
    "complete.after_commit": "transfer COMPLETED is durable",
    # MPI commit marker
    "marker.after_temp_fsync": "commit marker temp written and fsynced, not yet renamed",
    # cancel
    "cancel.after_unlink_temp": "one temp file removed by cancel",
    "cancel.after_unlink_final": "one published file (verified ours) removed by cancel",
    "cancel.after_rmdir": "one empty directory the transfer created removed by cancel",
    "cancel.after_dir_fsync": "directories fsynced after temp removal",
    "cancel.after_commit": "transfer CANCELLED is durable",
    # resume
    "resume.after_takeover": "resume took ownership (commit durable)",
    "resume.after_reset_file": "resume reset an untrustworthy file to PENDING (durable)",
    "resume.after_remove_temp": "resume removed a temp file it could not trust",
    # checkpoint lifecycle (axlpy/_lifecycle.py): the latest pointer and prune
    "latest.after_temp": "pointer temp written and fsynced, not yet renamed",
    "latest.after_rename": "pointer temp renamed over _AXLPY_LATEST.json, dir not fsynced",
    "latest.after_dir_fsync": "pointer rename durable (checkpoints directory fsynced)",
    "prune.after_trash_rename": "one checkpoint renamed to its hidden trash name, not fsynced",
    "prune.after_trash_fsync": "every trash rename of this prune durable (directory fsynced)",
    "prune.after_unlink": "one file inside a trash directory unlinked",
    "prune.after_rmdir": "an emptied trash directory removed, directory not fsynced",
    "prune.after_dir_fsync": "checkpoints directory fsynced after trash removals",
}

_ENV_AT = "AXLPY_CRASH_AT"
_ENV_HIT = "AXLPY_CRASH_HIT"
_ENV_TRACE = "AXLPY_CRASH_TRACE"

_armed: str | None = os.environ.get(_ENV_AT) or None
_hit_target: int = int(os.environ.get(_ENV_HIT, "1") or "1")
_trace_path: str | None = os.environ.get(_ENV_TRACE) or None
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Mark a point where the process may die. A no-op unless armed (see module doc)."""
    if name not in CRASH_POINTS:
        raise KeyError(f"crash point {name!r} is not declared in axlpy._crashpoints")
    if _armed is None and _trace_path is None:
        return
    n = _counts.get(name, 0) + 1
    _counts[name] = n
    if _trace_path is not None:
        # O_APPEND keeps lines whole even with several threads writing.
        fd = os.open(_trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)
    if name == _armed and n == _hit_target:
        os.kill(os.getpid(), signal.SIGKILL)


def reset_for_tests(armed: str | None = None, hit: int = 1, trace: str | None = None) -> None:
    """Re-read arming in-process (tests only; harnesses use the environment)."""
    global _armed, _hit_target, _trace_path
    _armed, _hit_target, _trace_path = armed, hit, trace
    _counts.clear()
