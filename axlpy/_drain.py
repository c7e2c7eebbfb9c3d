"""Drain: after a job ended, finish every unfinished transfer in some journals.

What ``axlpy drain`` runs (SCR's post-stage): :func:`find_unfinished` lists what is left
in journal files or journal directories, :func:`drain` resumes it with bounded
parallelism. A transfer created by :mod:`axlpy.mpi` is finished per checkpoint, not per
rank: :func:`axlpy.mpi.finish` resumes every rank's transfer and writes the commit marker,
so a checkpoint is committed only when every rank's files are published.

On disk if drain raises or the process dies: exactly what each resume or ``finish``
guarantees; drain keeps no state of its own. Running it again continues where it stopped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._errors import AxlError, JournalError, UsageError
from ._state import TransferState
from ._transfer import Journal
from .mpi import _EV_COMMIT, _EV_DISCARD, finish as mpi_finish

__all__ = ["DrainItem", "drain", "find_unfinished"]

_T = TransferState

#: states a resume can finish
_RESUMABLE = frozenset({_T.DISPATCHED, _T.RENAMED, _T.FAILED, _T.PAUSED})


@dataclass
class DrainItem:
    """One unit of drain work and, once run, its outcome.

    ``kind`` is ``"transfer"`` (one journal's transfer, resumed) or ``"checkpoint"`` (an
    axlpy.mpi transfer across the rank journals of ``journal``, a directory: finished and
    committed). ``result`` is ``pending`` before the run, then ``completed``,
    ``committed``, ``failed`` or ``skipped`` (with ``detail`` saying why).
    """

    kind: str
    journal: str
    name: str
    state: str
    bytes_total: int = 0
    bytes_done: int = 0
    result: str = "pending"
    detail: str | None = None
    ranks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "journal": self.journal, "name": self.name,
                "state": self.state, "result": self.result, "detail": self.detail,
                "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
                **({"ranks": self.ranks} if self.kind == "checkpoint" else {})}


def _journal_files(paths: Iterable[str]) -> list[str]:
    """Each path that is a directory stands for the ``*.db`` files directly in it."""
    out: list[str] = []
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if n.endswith(".db") and os.path.isfile(os.path.join(p, n)))
            if not found:
                raise UsageError(f"no journal (*.db) in directory {p!r}")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            raise UsageError(f"no such journal or directory: {p!r}")
    return list(dict.fromkeys(out))


def find_unfinished(paths: Iterable[str]) -> list[DrainItem]:
    """Every transfer in the journals at ``paths`` (files or directories) that a drain
    would finish, plus never-dispatched ones (``skipped``: there is nothing to resume).

    Read-only. A file that is not a journal is reported as a ``failed`` item, not raised,
    so one bad file in a directory does not hide the others. Raises UsageError for a
    path that does not exist or a directory without journals.
    """
    items: list[DrainItem] = []
    # axlpy.mpi transfers: (journal directory, name) -> [(rank journal, row, events)]
    ckpts: dict[tuple[str, str], list[tuple[Any, list[str], int]]] = {}
    for path in _journal_files(paths):
        try:
            j = Journal(path, create=False)
        except (JournalError, OSError) as exc:
            items.append(DrainItem("journal", path, "", "unreadable", result="failed",
                                   detail=str(exc)))
            continue
        with j:
            for row in j.db.transfers():
                _, bt, _, _ = j.db.progress(row.id)
                if row.options.mpi is not None:
                    events = [e["event"] for e in j.db.events(row.id)]
                    ckpts.setdefault((os.path.dirname(path), row.name), []).append(
                        (row, events, bt))
                    continue
                if row.state in _RESUMABLE:
                    items.append(DrainItem("transfer", path, row.name, row.state.value,
                                           bytes_total=bt))
                elif row.state is _T.CREATED and j.db.count_files(row.id):
                    items.append(DrainItem("transfer", path, row.name, row.state.value,
                                           bytes_total=bt, result="skipped",
                                           detail="never dispatched: nothing to resume"))
    for (jdir, name), ranks in sorted(ckpts.items()):
        seen = {e for _, evs, _ in ranks for e in evs}
        if _EV_COMMIT in seen:
            continue  # committed: the marker is written (finish would only rewrite it)
        states = {row.state for row, _, _ in ranks}
        item = DrainItem("checkpoint", jdir, name,
                         ",".join(sorted(s.value for s in states)),
                         bytes_total=sum(bt for _, _, bt in ranks),
                         ranks=sorted(int((row.options.mpi or {}).get("rank", -1))
                                      for row, _, _ in ranks))
        if _EV_DISCARD in seen or _T.CANCELLED in states:
            item.result, item.detail = "skipped", "discarded (cancelled); nothing to commit"
        items.append(item)
    return items


def drain(items: list[DrainItem], *, parallel: int = 4, force: bool = False,
          on_item: Callable[[DrainItem], None] | None = None,
          on_bytes: Callable[[int], None] | None = None) -> list[DrainItem]:
    """Run every ``pending`` item, at most ``parallel`` at a time; return ``items``.

    A transfer is resumed (``force`` takes over one whose owner runs on another host,
    see :meth:`Transfer.resume`); a checkpoint is finished and committed with
    :func:`axlpy.mpi.finish`. Each item's outcome is recorded in it, never raised:
    one failed transfer does not stop the others. ``on_item(item)`` is called (from
    worker threads, one call at a time) as each item ends; ``on_bytes(n)`` as bytes are
    copied. Ctrl-C is not caught: what has been committed stays, a rerun continues.
    """
    if parallel < 1:
        raise UsageError("parallel must be at least 1")
    lock = threading.Lock()
    # One connection per journal file, shared by the workers (as transfers running in one
    # process share their Journal): SQLite serialises its writers per connection here
    # instead of failing a second connection's write with "database is locked".
    journals: dict[str, Journal] = {}

    def journal(path: str) -> Journal:
        with lock:
            j = journals.get(path)
            if j is None:
                j = journals[path] = Journal(path, create=False)
            return j

    def run(item: DrainItem) -> None:
        last = [0]

        def progress(p: Any) -> None:
            with lock:
                n = p.bytes_done - last[0] if p.bytes_done >= last[0] else p.bytes_done
                last[0] = p.bytes_done
                item.bytes_done += n
            if on_bytes is not None and n:
                on_bytes(n)

        try:
            if item.kind == "checkpoint":
                m = mpi_finish(item.journal, item.name, on_progress=progress)
                item.result, item.bytes_done = "committed", item.bytes_total
                item.detail = f"{len(m.entries)} entries, {m.total_bytes} bytes, " \
                              f"{m.nranks} ranks"
            else:
                t = journal(item.journal).open(item.name, on_progress=progress)
                t.resume(force=force)
                if t.running:
                    t.wait()
                item.result, item.bytes_done = "completed", item.bytes_total
        except Exception as exc:  # recorded per item: one failure never stops the rest
            msg = str(exc) if isinstance(exc, AxlError) else f"{type(exc).__name__}: {exc}"
            item.result, item.detail = "failed", msg
        if on_item is not None:
            with lock:
                on_item(item)

    todo = [i for i in items if i.result == "pending"]
    try:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="axlpy-drain") as ex:
            for f in [ex.submit(run, i) for i in todo]:
                f.result()
    finally:
        for j in journals.values():
            j.close()
    return items
