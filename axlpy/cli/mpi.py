"""``axlpy mpi``: operator commands for checkpoints written through :mod:`axlpy.mpi`
(rank journals ``<journal_dir>/rank-<r>.db``). No MPI is needed to run them.

``python -m axlpy.mpi ARGS`` is the same as ``axlpy mpi ARGS``. To find or check a
checkpoint, use ``axlpy latest DIR`` and ``axlpy verify --manifest DIR``.
"""

from __future__ import annotations

import click

from ._app import EXIT_CODES_HELP, _common_options, _Group, _handle_errors, cli
from ._render import _safe, _say


@cli.group(cls=_Group, epilog=EXIT_CODES_HELP)
def mpi() -> None:
    """Checkpoints written by axlpy.mpi: finish one a dead job left behind.

    Reads and writes the rank journals (rank-<r>.db) in a journal directory; no MPI.
    Find the newest checkpoint with `axlpy latest DIR`, check one with
    `axlpy verify --manifest DIR`.
    """


@mpi.command(epilog=EXIT_CODES_HELP)
@click.argument("journal_dir", metavar="JOURNAL_DIR")
@click.argument("name")
@click.option("--force", is_flag=True, help="Take over ranks owned on another node before "
              "their lease expires (only if that job is known dead).")
@_common_options
@_handle_errors
def finish(journal_dir: str, name: str, force: bool) -> None:
    """Finish transfer NAME of every rank journal in JOURNAL_DIR and commit it.

    For a job that died and cannot be re-run with the same number of ranks: each rank's
    transfer is resumed in turn from this one process (ranks already COMPLETED are only
    read), then the commit marker is written exactly as the collective commit does.
    Needs every rank's journal and every rank's sources readable from here. Prints what
    was committed; nothing is committed unless every rank COMPLETED, and running it again
    continues where it stopped.
    """
    from .. import mpi as amp

    m = amp.finish(journal_dir, name, force=force)
    _say(f"committed {_safe(m.name)}: {len(m.entries)} entries, {m.total_bytes} bytes, "
         f"{m.nranks} ranks")
