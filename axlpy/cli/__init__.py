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

from typing import Any

from ._app import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    JSON_VERSION,
    _quote as _quote,
    load_commands,
    main,
)


def __getattr__(name: str) -> Any:
    # ``cli`` with every command registered (each command module registers its own on
    # first use): the console script (:func:`main`) imports only the command it runs.
    if name == "cli":
        from ._app import cli

        load_commands()
        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
