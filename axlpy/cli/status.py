"""``axlpy ls`` and ``axlpy status``: what the journal says about transfers.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .._lease import host_id
from .._state import FileState
from ._app import (
    _F,
    _T,
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    JSON_VERSION,
    _cmd,
    _common_options,
    _handle_errors,
    _journal_path,
    _open_journal,
    _transfer,
    cli,
)
from ._render import (
    _admission_text,
    _crc_hex,
    _emit_json,
    _human_age,
    _human_bytes,
    _human_duration,
    _isatty,
    _iso,
    _path_fields,
    _safe,
    _say,
    _show,
    _table,
)

if TYPE_CHECKING:
    from .._transfer import FileStatus, Journal, Owner, Transfer, TransferStatus


def _owner_info(o: Owner | None) -> dict[str, Any] | None:
    if o is None:
        return None
    age = o.lease_age_s()
    return {"pid": o.pid, "host": o.host, "alive": o.alive(),
            "lease_age_s": None if age is None else round(age, 3),
            "lease_s": None if o.lease_ns is None else o.lease_ns / 1e9}


def _owner_text(info: dict[str, Any] | None) -> str:
    if info is None:
        return "-"
    alive = {True: "alive", False: "dead", None: "other host"}[info["alive"]]
    if info.get("lease_age_s") is not None and info["host"] != host_id():
        # from another node, the lease is what liveness rests on
        alive += f", lease renewed {info['lease_age_s']:.0f}s ago"
    return f"{info['pid']}@{info['host']} ({alive})"


def _next_steps(st: TransferStatus) -> list[str]:
    """What an operator should run next, for a transfer in this state."""
    n = st.name
    s = st.state
    if s is _T.COMPLETED:
        return [_cmd("verify", n), _cmd("free", n)]
    if s is _T.CANCELLED:
        return [_cmd("free", n)]
    if s is _T.CREATED:
        return [_cmd("free", n)]
    if st.live:
        return [_cmd("status --watch", n)]
    return [_cmd("resume", n), _cmd("cancel", n)]


def _transfer_info(st: TransferStatus) -> dict[str, Any]:
    now = time.time_ns()
    owner = _owner_info(st.owner_process)
    return {
        "name": st.name,
        "type": st.type,
        "state": st.state.value,
        "live": st.live,
        "files_done": st.files_done,
        "files_total": st.files_total,
        "bytes_done": st.bytes_done,
        "bytes_total": st.bytes_total,
        "created": _iso(st.created_ns),
        "updated": _iso(st.updated_ns),
        "age_seconds": round((now - st.created_ns) / 1e9, 3),
        "owner": owner,
        "move": st.move,
        "error": st.error,
        "next": _next_steps(st),
    }


def _file_info(r: FileStatus) -> dict[str, Any]:
    done = r.size if r.state in (_F.STAGED, _F.PUBLISHED) and r.kind == "file" else r.bytes_done
    return {
        "kind": r.kind,
        **_path_fields("src", os.fsencode(r.src)),
        **_path_fields("dst", os.fsencode(r.dst)),
        **_path_fields("tmp", None if r.tmp is None else os.fsencode(r.tmp)),
        "state": r.state.value,
        "size": r.size if r.kind != "dir" else 0,
        "bytes_done": done if r.kind == "file" else 0,
        "crc32c": _crc_hex(r.crc32c),
        "error": r.error,
    }


@cli.command(name="ls", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_common_options
@_handle_errors
def ls_cmd(as_json: bool) -> None:
    """List the transfers in the journal: name, type, state, files, bytes, age, owner."""
    path = _journal_path()
    infos: list[dict[str, Any]] = []
    if os.path.exists(path):
        with _open_journal(create=False) as j:
            infos = [_transfer_info(st) for st in j.transfers()]
    if as_json:
        _emit_json({"version": JSON_VERSION, "journal": path, "transfers": infos})
        return
    if not infos:
        _say(f"no transfers in {_safe(path)}")
        return
    rows = [[i["name"], i["type"], i["state"], f"{i['files_done']}/{i['files_total']}",
             f"{_human_bytes(i['bytes_done'])}/{_human_bytes(i['bytes_total'])}",
             _human_age(i["age_seconds"]), _owner_text(i["owner"])] for i in infos]
    _say(_table(rows, ["NAME", "TYPE", "STATE", "FILES", "BYTES", "AGE", "OWNER"]))


def _status_doc(j: Journal, t: Transfer, states: set[str], limit: int | None,
                events: bool, files: bool = True) -> dict[str, Any]:
    """The status document. ``files`` (a generator, streamed by :func:`_emit_json`) lists
    the files in ``states`` (all if empty), at most ``limit``, only when ``files`` is set;
    the summary is always there and costs a few aggregate queries whatever the size."""
    st = t.status()
    info = _transfer_info(st)
    info["admission"] = t.admission_stats().as_dict()
    doc: dict[str, Any] = {
        "version": JSON_VERSION,
        "journal": j.path,
        "transfer": info,
        "summary": _summary(t, st, info),
        "stalled": _stall_doc(t, st),
    }
    if events:
        doc["events"] = [
            {"time": _iso(e["ts_ns"]), "event": e["event"], "from": e["from_state"],
             "to": e["to_state"], "file_id": e["file_id"], "detail": e["detail"],
             "pid": e["pid"]}
            for e in t.events()
        ]
    if files:
        sel = [FileState(s) for s in sorted(states)] if states else None
        total = t.count_files(sel)
        doc["files_omitted"] = max(0, total - limit) if limit is not None else 0
        doc["files"] = (_file_info(r) for r in t.iter_files(sel, limit))
    return doc


#: problem files (an error recorded) the summary names
_PROBLEMS_SHOWN = 5


def _summary(t: Transfer, st: TransferStatus, info: dict[str, Any]) -> dict[str, Any]:
    """Counts per state and kind, bytes, the average rate since dispatch, how many files
    have an error recorded and the first few of them."""
    agg = t.summary(_PROBLEMS_SHOWN)
    start = agg["dispatched_ns"]
    end = time.time_ns() if st.live else st.updated_ns
    secs = (end - start) / 1e9 if start is not None and end > start else 0.0
    return {
        "states": agg["states"],
        "kinds": agg["kinds"],
        "bytes_done": info["bytes_done"],
        "bytes_total": info["bytes_total"],
        "seconds": round(secs, 3),
        "rate": round(info["bytes_done"] / secs, 1) if secs else None,
        "errors": agg["errors"],
        "problems": [_file_info(r) for r in agg["problems"]],
    }


def _stall_doc(t: Transfer, st: TransferStatus) -> dict[str, Any] | None:
    """STALLED: the owner is alive and its latest stall event is ``stall``."""
    from .._stall import stall_from_events

    if st.state not in (_T.DISPATCHED, _T.RENAMED, _T.PAUSED) or not st.live:
        return None
    info = stall_from_events(t.events())
    if info is None:
        return None
    return {"op": info.op, "path": info.path, "thread": info.thread,
            "since": _iso(info.since_ns), "seconds": round(info.seconds, 3)}


def _print_status(doc: dict[str, Any], name: str = "") -> None:
    i = doc["transfer"]
    sm = doc["summary"]
    pct = 100.0 * i["bytes_done"] / i["bytes_total"] if i["bytes_total"] else 100.0
    kinds = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(sm["kinds"].items()))
    counts = ", ".join(f"{s} {n}" for s, n in sorted(sm["states"].items()))
    lines = [
        f"transfer  {_safe(i['name'])}",
        f"journal   {_safe(doc['journal'])}",
        f"type      {i['type']}" + ("  (move)" if i["move"] else ""),
        f"state     {i['state']}" + ("  (running)" if i["live"] else ""),
        f"owner     {_owner_text(i['owner'])}",
        f"progress  {i['files_done']}/{i['files_total']} files, "
        f"{_human_bytes(i['bytes_done'])}/{_human_bytes(i['bytes_total'])} ({pct:.0f}%)",
        f"entries   {counts or 'none'}" + (f"  ({kinds})" if kinds else ""),
        "rate      " + (f"{_human_bytes(sm['rate'])}/s over "
                        f"{_human_duration(sm['seconds'])}" if sm["rate"] is not None
                        else "-"),
        f"created   {i['created']}  ({_human_age(i['age_seconds'])} ago)",
        f"updated   {i['updated']}",
    ]
    if i["error"]:
        lines.append(f"error     {_safe(i['error'])}")
    if sm["errors"]:
        shown = len(sm["problems"])
        lines.append(f"errors    {sm['errors']} files"
                     + (f" (first {shown} below)" if shown < sm["errors"] else ""))
        for f in sm["problems"]:
            lines.append(f"          {f['state']}  {_show(os.fsencode(f['dst']))}  "
                         f"({_safe(f['error'] or '')})")
    else:
        lines.append("errors    none")
    if any(i["admission"].values()):
        lines.append(f"admission {_admission_text(i['admission'])}")
    st = doc.get("stalled")
    if st:
        what = (f"{st['op']} of {_show(st['path'])} blocked" if st["op"] and st["path"]
                else "no blocked system call on its files found")
        lines.append(f"STALLED   no progress for {_human_duration(st['seconds'])} ({what}); "
                     "`cancel` abandons the stuck thread")
    for k, step in enumerate(i["next"]):
        lines.append(f"{'next' if k == 0 else '':<9} {step}")
    if "files" not in doc:
        lines.append(f"files     {_cmd('status --files', name or i['name'])} lists them "
                     "(--state, --limit)")
    _say("\n".join(lines))
    if "files" in doc:
        rows = []
        for f in doc["files"]:
            size = "-" if f["kind"] == "dir" else _human_bytes(f["size"])
            done = ("-" if f["kind"] != "file" else
                    f"{100.0 * f['bytes_done'] / f['size']:.0f}%" if f["size"] else "100%")
            dst = _show(os.fsencode(f["dst"]))
            if f["error"]:
                dst += f"  ({_safe(f['error'])})"
            rows.append([f["state"], f["kind"], size, done, dst])
        if rows:
            _say()
            _say(_table(rows, ["STATE", "KIND", "SIZE", "DONE", "DESTINATION"]))
        if doc["files_omitted"]:
            _say(f"... {doc['files_omitted']} more (use --limit)")
    for e in doc.get("events", []):
        arrow = f" {e['from'] or ''}->{e['to']}" if e["to"] else ""
        detail = f" {_safe(e['detail'])}" if e["detail"] else ""
        _say(f"{e['time']}  pid {e['pid']}  {_safe(e['event'])}{arrow}{detail}")


def _watch(j: Journal, name: str, interval: float, as_json: bool) -> int:
    """Poll the journal (never writing it) until the transfer ends or its owner dies."""
    from .._driver import Progress

    err = sys.stderr
    tty = _isatty(err) and not as_json
    last_bytes, last_t = -1, time.monotonic()
    rate = 0.0
    last_line = ""
    while True:
        info = _transfer_info(_transfer(j, name).status())
        now = time.monotonic()
        if last_bytes >= 0 and now > last_t:
            rate = max(0.0, (info["bytes_done"] - last_bytes) / (now - last_t))
        last_bytes, last_t = info["bytes_done"], now
        info["rate"] = round(rate, 1)
        ended = not info["live"]
        if as_json:
            _emit_json({"version": JSON_VERSION, "journal": j.path, "transfer": info})
        else:
            p = Progress(bytes_total=info["bytes_total"], bytes_done=info["bytes_done"],
                         files_total=info["files_total"], files_done=info["files_done"])
            left = max(0, p.bytes_total - p.bytes_done)
            eta = _human_duration(left / rate) if rate > 0 else "--:--"
            pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
            line = (f"{_safe(name)}: {info['state']} {pct:3.0f}% {_human_bytes(p.bytes_done)}/"
                    f"{_human_bytes(p.bytes_total)}  {p.files_done}/{p.files_total} files"
                    f"  {_human_bytes(rate)}/s  ETA {eta}")
            if tty:
                err.write(f"\r{line}\x1b[K")
                err.flush()
            elif line != last_line:
                _say(line)
            last_line = line
        if ended:
            break
        time.sleep(interval)
    if tty:
        err.write("\n")
    state = _T(info["state"])
    if state is _T.COMPLETED:
        return EXIT_OK
    if state in (_T.DISPATCHED, _T.RENAMED, _T.PAUSED):
        if not as_json:
            _say(f"{_safe(name)}: no process is running it any more; "
                       f"`{_cmd('resume', name)}` finishes it")
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in FileState]),
              help="Only files in this state (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Show at most this many files.")
@click.option("--files", "list_files", is_flag=True,
              help="List the files too (implied by --state, --limit and --json).")
@click.option("--events", is_flag=True, help="Also show the transfer's event log.")
@click.option("--watch", is_flag=True, help="Follow a transfer running in another "
              "process until it ends (polls the journal, never writes it); exit code: "
              "0 completed, 1 failed or cancelled, 3 its process died (resumable).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0,
              show_default=True, help="Seconds between polls with --watch.")
@_common_options
@_handle_errors
def status(name: str, as_json: bool, states: tuple[str, ...], limit: int | None,
           list_files: bool, events: bool, watch: bool, interval: float) -> None:
    """Show one transfer: state, owner, progress, counts per state, rate, errors and the
    first problem files, what to run next; --files lists the files."""
    list_files = list_files or bool(states) or limit is not None
    with _open_journal(create=False) as j:
        if watch:
            code = _watch(j, name, interval, as_json)
            if not as_json:
                _print_status(_status_doc(j, _transfer(j, name), set(states), limit,
                                          events, list_files), name)
            raise click.exceptions.Exit(code)
        doc = _status_doc(j, _transfer(j, name), set(states), limit, events,
                          list_files or as_json)
        if as_json:
            _emit_json(doc)
        else:
            _print_status(doc, name)
