"""``axlpy drain``: finish every unfinished transfer of one or more journals.
"""

from __future__ import annotations

from typing import Any

import click

from ._app import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    JSON_VERSION,
    _common_options,
    _handle_errors,
    _journal_path,
    cli,
)
from ._render import _emit_json, _human_bytes, _table


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("paths", nargs=-1, metavar="[JOURNAL|DIR]...")
@click.option("--parallel", "-P", type=click.IntRange(min=1), default=4, show_default=True,
              help="Transfers resumed at the same time.")
@click.option("--force", is_flag=True, help="Take over transfers whose owner runs on "
              "another host (only if you know those processes are dead).")
@click.option("--dry-run", is_flag=True, help="Only list what would be finished.")
@click.option("--progress", type=click.Choice(["lines", "none"]), default="lines",
              show_default=True, help="A line on stderr as each transfer starts and ends.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@_common_options
@_handle_errors
def drain(paths: tuple[str, ...], parallel: int, force: bool, dry_run: bool, progress: str,
          as_json: bool) -> None:
    """Finish every unfinished transfer after a job ended (SCR's post-stage).

    Looks in each JOURNAL file, and in every *.db file directly in each DIR (for example
    an axlpy.mpi journal directory); with no path, in the journal of --journal. Resumes
    every DISPATCHED, RENAMED, FAILED or PAUSED transfer, PARALLEL at a time, and reports
    each one. An axlpy.mpi checkpoint is finished across all its rank journals and its
    commit marker written (as `python -m axlpy.mpi finish`), only once every rank's
    files are published. Never-dispatched and cancelled transfers are listed as skipped.
    Exit code 1 if any transfer failed; running drain again continues where it stopped.
    """
    from .._drain import drain as run_drain, find_unfinished

    items = find_unfinished(list(paths) or [_journal_path()])
    todo = [i for i in items if i.result == "pending"]
    total = sum(i.bytes_total for i in todo)
    done_bytes = [0]
    finished = [0]
    say = progress != "none" and not dry_run

    def label(i: Any) -> str:
        return f"{i.journal}:{i.name}" if i.kind != "checkpoint" else \
            f"{i.journal} checkpoint {i.name} (ranks {len(i.ranks)})"

    def on_item(i: Any) -> None:
        finished[0] += 1
        if say:
            extra = f": {_one_line_text(i.detail)}" if i.detail else ""
            click.echo(f"axlpy drain: [{finished[0]}/{len(todo)}] {i.result} {label(i)} "
                       f"({_human_bytes(done_bytes[0])}/{_human_bytes(total)}){extra}",
                       err=True)

    def on_bytes(n: int) -> None:
        done_bytes[0] += n

    if say:
        click.echo(f"axlpy drain: {len(todo)} to finish ({_human_bytes(total)}), "
                   f"{parallel} at a time", err=True)
    if not dry_run:
        run_drain(items, parallel=parallel, force=force, on_item=on_item,
                  on_bytes=on_bytes)
    failed = [i for i in items if i.result == "failed"]
    if as_json:
        _emit_json({"version": JSON_VERSION, "dry_run": dry_run, "ok": not failed,
                    "items": [i.as_dict() for i in items]})
    else:
        rows = [[i.kind, i.journal, i.name or "-", i.state, i.result,
                 _one_line_text(i.detail or "")] for i in items]
        if rows:
            click.echo(_table(rows, ["KIND", "JOURNAL", "NAME", "WAS", "RESULT", "DETAIL"]))
        else:
            click.echo("nothing to drain: every transfer is finished")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _one_line_text(s: str) -> str:
    return " ".join(s.split())
