"""``axlpy verify``: render :func:`axlpy.Transfer.verify` and
:func:`axlpy.verify_checkpoint` reports.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from ._app import (
    _T,
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    JSON_VERSION,
    _cmd,
    _common_options,
    _handle_errors,
    _open_journal,
    _transfer,
    cli,
)
from ._render import _crc_hex, _emit_json, _iso, _path_fields, _safe, _say, _show

if TYPE_CHECKING:
    from .._transfer import Journal
    from .._verify import Mismatch


def _mismatch_doc(m: Mismatch) -> dict[str, Any]:
    """A :class:`~axlpy.Mismatch` as the JSON ``verify`` prints."""
    out: dict[str, Any] = {"kind": m.kind, **_path_fields("path", m.path), "problem": m.problem}
    if m.problem in ("unreadable", "marker"):
        out["detail"] = m.detail
    elif m.problem == "link-target":
        if m.expected_target is not None:
            out.update(_path_fields("expected_target", m.expected_target))
        out.update(_path_fields("actual_target", m.actual_target))
    elif m.problem == "size":
        out.update(expected_size=m.expected_size, actual_size=m.actual_size)
    elif m.problem == "crc32c":
        out.update(expected_crc32c=_crc_hex(m.expected_crc32c),
                   actual_crc32c=_crc_hex(m.actual_crc32c))
    if m.rank is not None:
        out["rank"] = m.rank
    return out


def _verify_transfer(j: Journal, name: str) -> dict[str, Any]:
    t = _transfer(j, name)
    rep = t.verify()
    assert rep.state is not None
    return {
        "version": JSON_VERSION,
        "journal": j.path,
        "transfer": name,
        "state": rep.state.value,
        "complete": rep.complete,
        "checked": rep.checked,
        "not_published": rep.not_published,
        "mismatches": [_mismatch_doc(m) for m in rep.mismatches],
        "ok": rep.ok,
    }


def _verify_manifest(d: bytes) -> dict[str, Any]:
    """Check every entry of ``d``'s commit marker (size and CRC32C), like a transfer."""
    from .._verify import verify_checkpoint

    rep = verify_checkpoint(d)
    return {"version": JSON_VERSION, **_path_fields("dir", d), "name": rep.name,
            "committed": _iso(rep.committed_ns), "nranks": rep.nranks,
            "complete": rep.complete, "checked": rep.checked,
            "mismatches": [_mismatch_doc(m) for m in rep.mismatches], "ok": rep.ok}


def _mismatch_text(m: dict[str, Any]) -> str:
    path = _show(os.fsencode(m["path"]))
    p = m["problem"]
    if p == "size":
        return f"{path}: size {m['actual_size']}, expected {m['expected_size']}"
    if p == "crc32c":
        return (f"{path}: CRC32C {m['actual_crc32c']}, expected {m['expected_crc32c']} "
                "(content differs)")
    if p == "link-target":
        want = m.get("expected_target")
        return (f"{path}: symlink points to {_show(os.fsencode(m['actual_target']))}"
                + (f", expected {_show(os.fsencode(want))}" if want is not None else
                   ", not what was committed"))
    if p == "wrong-type":
        return f"{path}: is no longer a {m['kind']}"
    if p == "unreadable":
        return f"{path}: cannot be read ({_safe(str(m.get('detail')))})"
    if p == "marker":
        return _safe(f"{m.get('detail')}")
    return f"{path}: {p}"


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name", required=False)
@click.option("--manifest", "manifest_dir", metavar="DIR", default=None,
              help="Verify the checkpoint directory DIR against its MPI commit marker "
              "(_AXLPY_COMMIT.json) instead of a journal transfer.")
@click.option("--partial", is_flag=True, help="Succeed for a transfer that is not "
              "finished yet if every file published so far matches.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def verify(name: str | None, manifest_dir: str | None, partial: bool,
           as_json: bool) -> None:
    """Re-read published files and compare them with the journal's sizes and CRC32C.

    Reports every mismatch (missing, wrong size, wrong content, wrong type, symlink
    target). Exit code 0 only if the transfer is COMPLETED (or --partial) and every file
    matches; 1 otherwise. Reads files and journal only; changes nothing.
    """
    if (name is None) == (manifest_dir is None):
        raise click.UsageError("give a transfer NAME or --manifest DIR (not both)")
    if manifest_dir is not None:
        doc = _verify_manifest(os.fsencode(manifest_dir))
        what = _show(os.fsencode(manifest_dir))
    else:
        with _open_journal(create=False) as j:
            doc = _verify_transfer(j, name or "")
        if not doc["complete"] and not partial:
            doc["ok"] = False
        what = _safe(name or "")
    if as_json:
        _emit_json(doc)
    else:
        for m in doc["mismatches"]:
            _say(f"MISMATCH {_mismatch_text(m)}")
        note = ""
        if doc.get("not_published"):
            note = f"; {doc['not_published']} not published yet ({doc['state']})"
        verdict = ("OK" if doc["ok"] else "FAILED" if doc["mismatches"]
                   or doc.get("state") == _T.CANCELLED.value else "INCOMPLETE")
        _say(f"{verdict}: {what}: {doc['checked']} checked, "
                   f"{len(doc['mismatches'])} mismatches{note}")
        if "state" in doc and not doc["complete"] and not doc["mismatches"]:
            if doc["state"] == _T.CANCELLED.value:
                _say("the transfer was cancelled: there is nothing to verify")
            elif doc["state"] == _T.CREATED.value:
                _say("the transfer was never dispatched: nothing was copied "
                     f"(`{_cmd('free', doc['transfer'])}` forgets it)")
            elif not partial:
                _say(f"the transfer is {doc['state']}, not COMPLETED (resume it, or "
                           "pass --partial to check only what is published)")
    raise click.exceptions.Exit(EXIT_OK if doc["ok"] else EXIT_FAILURE)
