"""Planted bugs for proving the fault-injection harness: test-only, off unless armed.

``AXLPY_PLANTED_BUG=<name>[,<name>...]`` turns on deliberately broken behaviour so the
sweeps in ``fault_injection/`` can show they catch it. Never set it outside those tests.

- ``fsync_noop``: fsync of a staged temp file does nothing;
- ``no_dir_fsync``: the directory fsync after a rename (and after mkdir) is skipped;
- ``sync_normal``: the journal runs ``synchronous=NORMAL`` instead of FULL;
- ``rename_before_fsync``: a temp file is renamed into place before it is fsynced;
- ``commit_after_step``: files are renamed before their STAGED record is committed;
- ``syncfs_skipped``: the batch's ``syncfs`` is not called (batched durability);
- ``rename_before_syncfs``: a batch is committed STAGED, renamed and its directories
  fsynced before its ``syncfs``.

``fsync_noop`` and ``rename_before_fsync`` are bugs of the per-file fsync path: arming
either selects it (``AXLPY_SYNCFS=off``, see ``axlpy._groupsync.mode``).
"""

from __future__ import annotations

import os

__all__ = ["PLANTED_BUGS", "planted"]

PLANTED_BUGS = frozenset(
    {"fsync_noop", "no_dir_fsync", "sync_normal", "rename_before_fsync", "commit_after_step",
     "syncfs_skipped", "rename_before_syncfs"}
)

_active = frozenset(
    b for b in (os.environ.get("AXLPY_PLANTED_BUG") or "").split(",") if b
)
if not _active <= PLANTED_BUGS:  # pragma: no cover - harness misconfiguration
    raise RuntimeError(f"unknown planted bug(s): {sorted(_active - PLANTED_BUGS)}")


def planted(name: str) -> bool:
    """Is the planted bug ``name`` armed in this process?"""
    return name in _active
