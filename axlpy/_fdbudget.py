"""How many file descriptors one transfer may hold at once, derived from RLIMIT_NOFILE.

A transfer's descriptors are: two per file being copied (source and temp), one per open
destination directory (:class:`~axlpy._staging.DirCache`), and a few fixed ones (an
io_uring ring and its eventfd, twice with a retry queue). Everything else in the process
(the journal's database, WAL and shm files, the application's own files, other transfers)
needs the rest. So when a run starts (dispatch, resume, cancel) it takes half of the
descriptors still free under the soft ``RLIMIT_NOFILE`` and splits them:

- ``dirs``: a quarter (at least 2) for cached destination directory fds; more are
  closed least-recently-used first and reopened on demand;
- ``files``: the rest, minus :data:`FIXED_FDS`, halved: files copied at once (at least 1).

The engines cap their concurrency with ``files`` (SYNC copies one file at a time anyway;
PTHREAD starts at most that many workers; URING opens at most that many files). See
``docs/engines.md`` ("File descriptors").
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

__all__ = ["FIXED_FDS", "FdBudget", "fd_budget"]

#: descriptors an engine may hold besides files and directories (URING: ring + eventfd,
#: and the same again for its retry queue)
FIXED_FDS = 4
#: never plan for more than this many descriptors per transfer, however high the limit
MAX_BUDGET = 1024
_MIN_DIRS = 2


@dataclass(frozen=True)
class FdBudget:
    """The descriptors one transfer may use: ``total`` = ``dirs`` + 2 x ``files`` + fixed."""

    total: int
    dirs: int
    files: int


def open_fds() -> int:
    """Descriptors open in this process now (/proc/self/fd; 0 where it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened
    except OSError:
        return 0


def fd_budget(soft_limit: int | None = None, in_use: int | None = None) -> FdBudget:
    """The budget for a transfer starting now (see the module doc).

    ``soft_limit`` and ``in_use`` default to this process's soft ``RLIMIT_NOFILE`` and
    its open descriptors. With so few free that even the minimum does not fit, the
    minimum is returned (1 file, 2 directories): the transfer then runs one file at a
    time and fails with EMFILE only if the process has no descriptor to spare at all.
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = MAX_BUDGET * 2
    if in_use is None:
        in_use = open_fds()
    total = min(MAX_BUDGET, max(0, soft_limit - in_use) // 2)
    dirs = max(_MIN_DIRS, total // 4)
    files = max(1, (total - dirs - FIXED_FDS) // 2)
    return FdBudget(total, dirs, files)
