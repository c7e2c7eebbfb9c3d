"""``axlpy gc``: render :func:`axlpy.gc`'s report of leftover temp files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from .._errors import UsageError
from ._app import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    JSON_VERSION,
    _cmd,
    _common_options,
    _handle_errors,
    _journal_path,
    _open_journal,
    cli,
)
from ._render import _emit_json, _human_age, _human_bytes, _iso, _path_fields, _safe, _say, _show

if TYPE_CHECKING:
    from .._gc import TempFile


def _gc_reason(t: TempFile, min_age: float, journal: str) -> str:
    """Why gc keeps or removes ``t``, and what happened if it changed meanwhile."""
    age = _human_age(t.age)
    if t.cls == "live":
        why = f"transfer {t.transfer} is running in pid {t.owner}"
    elif t.cls == "open":
        why = "a process on this host has it open"
    elif t.cls == "recent" and not t.token:
        why = (f"commit marker temp modified {age} ago (< --min-age {min_age:g}s): a "
               "commit may be writing it")
    elif t.cls == "recent":
        why = (f"not in this journal and modified {age} ago (< --min-age {min_age:g}s): "
               "may belong to a running transfer of another journal")
    elif t.cls == "marker":
        why = f"temp of a commit marker whose commit never renamed it; modified {age} ago"
    elif t.cls == "unknown":
        why = f"not in journal {journal} (freed, or its journal is gone); modified {age} ago"
    elif t.cls == "finished":
        assert t.state is not None
        why = f"transfer {t.transfer} is {t.state.value}"
    else:
        assert t.state is not None
        assert t.transfer is not None
        why = (f"transfer {t.transfer} is {t.state.value} with no live owner: "
               f"`{_cmd('resume', t.transfer)}` uses it, `{_cmd('cancel', t.transfer)}` "
               "removes it")
    if t.changed is not None:
        why += f"; {t.changed} while gc ran, kept"
    if t.error is not None:
        why += f"; unlink failed: {t.error}"
    return why


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--delete", "do_delete", is_flag=True,
              help="Remove the listed temp files (default: only list them).")
@click.option("--include-resumable", is_flag=True, help="Also remove temps of transfers "
              "that are interrupted but resumable (a later resume recopies those bytes).")
@click.option("--min-age", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds since a temp unknown to this journal was modified before it "
              "may be removed (it may belong to a transfer of another journal).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def gc(directory: str, do_delete: bool, include_resumable: bool, min_age: float,
       as_json: bool) -> None:
    """Find temp files left under DIR by transfers that are no longer alive.

    Temps are found by name (.NAME.axlpy-TOKEN-ID-FILEID) and matched to transfers in the
    journal; a commit marker's temp (._AXLPY_COMMIT.json.axlpy-*, left by a commit killed
    before its rename) is removable once older than --min-age. Never removed: a temp of a
    transfer whose owner is alive (or on another host), a temp some process has open, a
    temp unknown to the journal and younger than --min-age, and (unless
    --include-resumable) a temp a resume would reuse. Also finishes prune's trash
    directories (.axlpy-trash.*: checkpoints an interrupted prune had already renamed
    away for deletion). Dry run unless --delete.
    """
    from .._gc import gc as collect_temps

    if not os.path.isdir(os.fsencode(directory)):
        raise UsageError(f"{directory!r} is not a directory")
    path = _journal_path()
    j = _open_journal(create=False) if os.path.exists(path) else None
    try:
        report = collect_temps(directory, j, delete=do_delete,
                               include_resumable=include_resumable, min_age=min_age)
    finally:
        if j is not None:
            j.close()
    entries = [{
        **_path_fields("path", t.path), "size": t.size, "modified": _iso(t.mtime_ns),
        "class": t.cls, "action": t.action, "reason": _gc_reason(t, min_age, path),
        "token": t.token, "transfer_id": t.transfer_id, "file_id": t.file_id,
        "transfer": t.transfer, "state": t.state.value if t.state else None,
    } for t in report.temps]
    trash = [{**_path_fields("path", os.fsencode(p)), "bytes": b,
              "action": "deleted" if do_delete else "delete"} for p, b in report.trash]
    removable = [e for e in entries if e["action"] in ("delete", "deleted")]
    summary = {"found": len(entries), "kept": sum(e["action"] == "keep" for e in entries),
               "deletable": sum(e["action"] == "delete" for e in entries),
               "deleted": sum(e["action"] == "deleted" for e in entries),
               "errors": sum(e["action"] == "error" for e in entries),
               "bytes": sum(e["size"] for e in removable)}
    if as_json:
        _emit_json({"version": JSON_VERSION, "journal": path, "dir": directory,
                    "dry_run": not do_delete, "temps": entries, "summary": summary,
                    "trash": trash})
    else:
        for t in trash:
            _say(f"{t['action'].upper():<7} trash     {_show(os.fsencode(t['path']))}  "
                 f"({_human_bytes(t['bytes'])}; left by an interrupted prune)")
        for e in entries:
            _say(f"{e['action'].upper():<7} {e['class']:<9} "
                       f"{_show(os.fsencode(e['path']))}  ({_human_bytes(e['size'])}; "
                       f"{_safe(e['reason'])})")
        if do_delete:
            _say(f"{len(entries)} temp files found, {summary['deleted']} deleted "
                       f"({_human_bytes(summary['bytes'])}), {summary['kept']} kept")
        else:
            _say(f"{len(entries)} temp files found, {summary['deletable']} can be "
                       f"deleted ({_human_bytes(summary['bytes'])}), {summary['kept']} kept"
                       + ("; run with --delete to remove them" if summary["deletable"]
                          else ""))
    if summary["errors"]:
        raise click.exceptions.Exit(EXIT_FAILURE)
