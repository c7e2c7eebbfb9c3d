"""Verify: re-read what a transfer published (or a checkpoint's commit marker lists) and
compare it with the recorded size, CRC32C, kind and symlink target.

Reads files and the journal only; writes nothing, so a crash or an error here leaves
everything as it was. The CLI (``axlpy verify``) only renders the reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ._errors import UsageError
from ._state import FileState, TransferState

if TYPE_CHECKING:
    from ._transfer import Transfer

__all__ = ["Mismatch", "VerifyReport", "check_entry", "verify_checkpoint", "verify_transfer"]


@dataclass(frozen=True)
class Mismatch:
    """What is at ``path`` is not what was recorded.

    ``problem`` is one of ``missing``, ``unreadable`` (``detail`` says why),
    ``wrong-type``, ``size``, ``crc32c``, ``link-target`` or (a checkpoint only)
    ``marker``: the commit marker itself is unusable (``detail``).
    """

    kind: str  # "file" | "dir" | "symlink" | "marker"
    path: bytes
    problem: str
    detail: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None
    expected_crc32c: int | None = None
    actual_crc32c: int | None = None
    #: a symlink's recorded target, when known (a marker records only its CRC32C)
    expected_target: bytes | None = None
    actual_target: bytes | None = None
    #: the rank whose file this is (checkpoints)
    rank: int | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify_transfer` or :func:`verify_checkpoint`.

    ``ok``: nothing mismatched (and, for a transfer, it was not cancelled). ``complete``:
    the transfer is COMPLETED, or the checkpoint's marker was readable.
    """

    checked: int
    mismatches: tuple[Mismatch, ...]
    complete: bool
    ok: bool
    #: a transfer's name, state and how many of its rows are not published yet
    transfer: str | None = None
    state: TransferState | None = None
    not_published: int = 0
    #: a checkpoint's directory, and its marker's name, commit time and rank count
    directory: bytes | None = None
    name: str | None = None
    committed_ns: int | None = None
    nranks: int | None = None


def check_entry(kind: str, path: bytes, size: int, crc: int | None, link: bytes | None,
                buf: bytearray) -> Mismatch | None:
    """Compare what is at ``path`` with what was recorded; a :class:`Mismatch`, or None.

    ``crc`` is the CRC32C of a file's bytes, or of a symlink's target when ``link`` (the
    target itself) is not known."""
    from ._durable import Expected

    m = Expected(kind, size, crc, link).check_path(path, buf=buf)
    if m is None:
        return None
    out = Mismatch(kind, path, m.problem)
    if m.problem == "unreadable":
        return replace(out, detail=m.detail)
    if m.problem == "link-target":
        return replace(out, expected_target=link, actual_target=m.actual_target or b"")
    if m.problem == "size":
        return replace(out, expected_size=size, actual_size=m.actual_size)
    if m.problem == "crc32c":
        return replace(out, expected_crc32c=crc, actual_crc32c=m.actual_crc32c)
    return out


def verify_transfer(t: Transfer) -> VerifyReport:
    """Re-read every file ``t`` published and compare it with the journal."""
    buf = bytearray(4 << 20)
    checked = not_published = 0
    mismatches = []
    state = t.state
    for r in t.files():
        if r.state is not FileState.PUBLISHED:
            not_published += 1
            continue
        checked += 1
        m = check_entry(r.kind, os.fsencode(r.dst), r.size, r.crc32c,
                        None if r.link is None else os.fsencode(r.link), buf)
        if m is not None:
            mismatches.append(m)
    return VerifyReport(checked, tuple(mismatches), state is TransferState.COMPLETED,
                        not mismatches and state is not TransferState.CANCELLED,
                        transfer=t.name, state=state, not_published=not_published)


def verify_checkpoint(directory: str | bytes | os.PathLike[str]) -> VerifyReport:
    """Check every entry of ``directory``'s commit marker (size and CRC32C). An unusable
    marker is reported as one mismatch of problem ``marker``. Raises UsageError if
    ``directory`` is not a directory."""
    from ._manifest import MARKER, InvalidCheckpointError, read_manifest

    d = os.fsencode(directory)
    if not os.path.isdir(d):
        raise UsageError(f"{os.fsdecode(d)!r} is not a directory")
    try:
        m = read_manifest(os.fsdecode(d))
    except InvalidCheckpointError as exc:
        bad = Mismatch("marker", os.path.join(d, os.fsencode(MARKER)), "marker",
                       detail=str(exc))
        return VerifyReport(0, (bad,), False, False, directory=d)
    buf = bytearray(4 << 20)
    mismatches = []
    for e in m.entries:
        bad_e = check_entry(e.kind, os.path.join(d, os.fsencode(e.path)), e.size, e.crc32c,
                            None, buf)
        if bad_e is not None:
            mismatches.append(replace(bad_e, rank=e.rank))
    return VerifyReport(len(m.entries), tuple(mismatches), True, not mismatches,
                        directory=d, name=m.name, committed_ns=m.committed_ns,
                        nranks=m.nranks)
