"""``axlpy latest`` and ``axlpy prune``: committed checkpoints under a directory.
"""

from __future__ import annotations

import os

import click

from .._errors import UsageError
from ._app import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    JSON_VERSION,
    _common_options,
    _handle_errors,
    _journal_path,
    _quote,
    cli,
)
from ._render import _emit_json, _human_bytes, _iso, _path_fields, _safe, _say, _show


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--verify", "check_crc", is_flag=True, help="Same as --check crc.")
@click.option("--check", "check", type=click.Choice(["none", "marker", "crc"]),
              default=None, help="What a checkpoint must pass: an intact marker (none), "
              "also every listed file present with its size (marker, the default), also "
              "every file's CRC32C (crc, reads every byte). One that fails is skipped for "
              "the next older one.")
@click.option("--repair", is_flag=True, help="Point DIR/_AXLPY_LATEST.json at the "
              "checkpoint found (after a crash between a commit and its pointer update).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def latest(directory: str, check_crc: bool, check: str | None, repair: bool,
           as_json: bool) -> None:
    """Print the newest checkpoint under DIR that has a valid MPI commit marker.

    Looks at each subdirectory of DIR: only one whose marker (_AXLPY_COMMIT.json) is
    intact and passes --check counts, newest step first (ties: newest commit). Exit code
    1 if there is none. Reads only, unless --repair (which rewrites the pointer).
    """
    from .. import _lifecycle

    if not os.path.isdir(directory):
        raise UsageError(f"{directory!r} is not a directory")
    verify = check or ("crc" if check_crc else "marker")
    found = _lifecycle.restore_point(directory, verify)
    repaired = False
    if repair and found is not None:
        _ptr, repaired = _lifecycle.update_pointer(directory, verify=verify)
    ptr_doc = _lifecycle.pointer_status(directory, found)
    path = os.fsencode(found.path) if found is not None else None
    if as_json:
        m = found.manifest if found is not None else None
        _emit_json({
            "version": JSON_VERSION, **_path_fields("dir", os.fsencode(directory)),
            **_path_fields("latest", path),
            "name": m.name if m else None,
            "step": found.step if found is not None else None,
            "committed": _iso(m.committed_ns) if m else None,
            "committed_ns": m.committed_ns if m else None,
            "nranks": m.nranks if m else None,
            "files": len(m.entries) if m else None,
            "bytes": m.total_bytes if m else None,
            "check": verify,
            "verified": found is not None and verify == "crc",
            "skipped": [{"path": p, "reason": r} for p, r in
                        (found.skipped if found is not None else ())],
            "pointer": dict(ptr_doc, repaired=repaired),
        })
    elif path is not None:
        _say(_show(path))
        if ptr_doc["state"] != "current" and not repaired:
            _say(f"axlpy: the latest pointer is {ptr_doc['state']}: "
                 f"{_safe(str(ptr_doc['detail']))} (axlpy latest --repair "
                 f"{_quote(directory)})", err=True)
    else:
        _say(f"axlpy: no valid checkpoint under {_show(directory)}", err=True)
    raise click.exceptions.Exit(EXIT_OK if found is not None else EXIT_FAILURE)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("directory", metavar="DIR")
@click.option("--keep-last", type=click.IntRange(min=1), required=True,
              help="Keep the newest N committed checkpoints (by step).")
@click.option("--keep-every", type=click.IntRange(min=1), default=None,
              help="Also keep every checkpoint whose step is a multiple of K.")
@click.option("--verify", type=click.Choice(["none", "marker", "crc"]), default="crc",
              show_default=True, help="The check the newest checkpoint kept for safety "
              "must pass (the newest one that passes it is never deleted).")
@click.option("--uncommitted", is_flag=True, help="Also delete directories without a "
              "valid commit marker that are older than --min-age and that no live "
              "transfer in the journals writes to.")
@click.option("--min-age", type=click.FloatRange(min=0), default=86400.0, show_default=True,
              help="Seconds since anything in an uncommitted directory was modified.")
@click.option("--journal-dir", "journals", multiple=True, metavar="PATH",
              help="A journal file, or a directory of *.db journals (rank journals), "
              "whose live transfers protect the checkpoints they write to (the --journal "
              "journal is always consulted if it exists). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def prune(directory: str, keep_last: int, keep_every: int | None, verify: str,
          uncommitted: bool, min_age: float, journals: tuple[str, ...], dry_run: bool,
          as_json: bool) -> None:
    """Delete old checkpoints under DIR, keeping the newest --keep-last.

    Never deleted: the newest checkpoint that passes --verify, the one the latest pointer
    names, any that a live transfer (not COMPLETED or CANCELLED) in the --journal or
    --journal-dir journals writes to, and any directory without a commit marker unless
    --uncommitted. Each victim is renamed to a hidden
    trash name (durably) before it is deleted; trash a crash left is finished first.
    Exit code 1 if a deletion failed.
    """
    from .. import _lifecycle

    policy = _lifecycle.RetentionPolicy(keep_last, keep_every, verify, uncommitted, min_age)
    own = _journal_path()
    rep = _lifecycle.prune(directory, policy, dry_run=dry_run,
                           journals=[*journals, *([own] if os.path.exists(own) else [])])
    doc = rep.to_json()
    if as_json:
        _emit_json({"version": JSON_VERSION, **doc})
    else:
        for p, b in rep.trash:
            _say(f"{'TRASH' if dry_run else 'FINISHED'} {_show(p)} ({_human_bytes(b)}; "
                 "left by an interrupted prune)")
        for it in rep.items:
            step = "-" if it.step is None else str(it.step)
            _say(f"{it.action.upper():<7} {_show(it.name)}  step {step}  "
                 f"({_safe(it.reason)})")
        sm = doc["summary"]
        verb = "can be deleted" if dry_run else "deleted"
        n = sm["deletable"] if dry_run else sm["deleted"]
        _say(f"{len(rep.items)} checkpoints, {sm['kept']} kept, {n} {verb} "
             f"({_human_bytes(sm['bytes'])})"
             + ("; run without --dry-run to delete them" if dry_run and n else ""))
    raise click.exceptions.Exit(EXIT_FAILURE if doc["summary"]["errors"] else EXIT_OK)
