"""The ``axlpy`` command line: copy, inspect, resume, cancel, verify and clean up transfers.

Every command reads or writes one journal: ``--journal PATH``, else ``$AXLPY_JOURNAL``,
else ``~/.local/state/axlpy/journal.db`` (see :func:`axlpy.default_journal_path`). Read
commands (``ls``, ``status``, ``verify``, ``gc``, ``latest``) never write to the journal
or to the files they look at, except ``gc --delete``, which removes only the temp files it
listed. ``--json`` output is versioned (``"version": 1``) and documented in docs/cli.md.

Exit codes (also in ``axlpy --help``): 0 success; 1 failure (a transfer failed, verify
found a mismatch, a journal or filesystem error); 2 usage error (bad arguments, unknown
transfer name, an operation the transfer's state does not allow); 3 interrupted but
resumable (Ctrl-C during ``cp`` or ``resume``, or ``status --watch`` saw the owner die):
the journal and the temps are intact, and the printed ``axlpy resume`` finishes the job.

On disk if this process dies at any moment: exactly what the library guarantees (see
docs/design.md); the command line adds no state of its own besides the journal.
"""

from __future__ import annotations

# Each command module (one per command group) registers its commands on ``cli``.
from . import checkpoints, drain, gc, mpi, status, transfers, verify  # noqa: F401
from ._app import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    JSON_VERSION,
    _quote as _quote,
    cli,
    main,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "JSON_VERSION",
    "cli",
    "main",
]

if __name__ == "__main__":  # pragma: no cover
    main()
