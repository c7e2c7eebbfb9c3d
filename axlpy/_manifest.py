"""The commit marker of a multi-rank checkpoint: write, read, validate, find the latest.

A checkpoint directory is *valid* only when it holds a commit marker,
``<checkpoint_dir>/_AXLPY_COMMIT.json``: a small JSON manifest listing every file of every
rank (path relative to the checkpoint directory, kind, size, CRC32C) and a CRC32C of its
own body. It is written last, by one process, only after every rank's transfer COMPLETED:

1. create a hidden temp ``._AXLPY_COMMIT.json.axlpy-<token>`` (O_EXCL, 0600) in the
   checkpoint directory, write the JSON, fsync it;
2. rename it over ``_AXLPY_COMMIT.json`` (atomic within the directory);
3. fsync the checkpoint directory, so the new name survives a power loss.

A reader therefore sees either no marker (the checkpoint is not valid, whatever files are
present) or a complete one. A crash before step 2 leaves only the hidden temp, which every
reader ignores; a crash between 2 and 3 may lose the marker on power loss (never leave a
torn one), and the writer (resume, :func:`axlpy.mpi.finish`) simply writes it again.

Nothing here touches a journal: :mod:`axlpy.mpi` gathers the entries from each rank's
journal and calls :func:`write_manifest`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._crashpoints import crash_point
from ._durable import Expected, publish_atomic, seal_json, unseal_json
from ._errors import AxlError
from ._staging import unlink_quiet

__all__ = [
    "FORMAT",
    "MARKER",
    "CheckResult",
    "InvalidCheckpointError",
    "Manifest",
    "ManifestEntry",
    "check_checkpoint",
    "is_hidden",
    "latest_valid_checkpoint",
    "list_checkpoints",
    "order_key",
    "read_manifest",
    "write_manifest",
]

#: The commit marker's file name inside a checkpoint directory.
MARKER = "_AXLPY_COMMIT.json"
#: The ``format`` field of every marker this axlpy writes.
FORMAT = "axlpy-commit/1"
_TEMP_PREFIX = "." + MARKER + ".axlpy-"
#: Name prefix of the marker's temp (``._AXLPY_COMMIT.json.axlpy-<8 hex>``): a commit
#: killed between the temp and its rename leaves one; ``axlpy gc`` and the next commit in
#: that directory remove it.
MARKER_TEMP_PREFIX = _TEMP_PREFIX.encode()
_KINDS = ("file", "dir", "symlink")


class InvalidCheckpointError(AxlError):
    """A checkpoint directory has no commit marker, or its marker is unreadable, torn,
    of a foreign format, or lists files that are missing or differ (size, or CRC32C when
    verifying). Raised by readers only; nothing on disk is changed when it is raised."""


@dataclass(frozen=True)
class ManifestEntry:
    """One path of a committed checkpoint, as its rank's journal recorded it."""

    path: str  # relative to the checkpoint directory (fsdecoded: any byte name round-trips)
    rank: int
    kind: str  # "file" | "dir" | "symlink"
    size: int = 0
    crc32c: int | None = None  # files: of the bytes; symlinks: of the link target

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rank": self.rank, "kind": self.kind, "size": self.size,
                "crc32c": self.crc32c}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ManifestEntry:
        e = cls(str(d["path"]), int(d["rank"]), str(d["kind"]), int(d["size"]),
                None if d.get("crc32c") is None else int(d["crc32c"]))
        if e.kind not in _KINDS:
            raise ValueError(f"unknown kind {e.kind!r}")
        _check_rel(e.path)
        if e.kind != "dir" and e.crc32c is None:
            raise ValueError(f"{e.path!r} has no crc32c")
        return e


@dataclass(frozen=True)
class Manifest:
    """A commit marker's content."""

    name: str
    nranks: int
    entries: tuple[ManifestEntry, ...]
    committed_ns: int = field(default_factory=time.time_ns)
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: the application's step (``CommTransfer.create(..., step=N)``); None if not given
    step: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT, "name": self.name, "nranks": self.nranks,
                "committed_ns": self.committed_ns, "meta": dict(self.meta),
                "step": self.step, "total_bytes": self.total_bytes,
                "files": [e.to_json() for e in self.entries]}

    def same_files(self, other: Manifest) -> bool:
        """Same name, rank count and entries (commit time and meta aside)."""
        return (self.name, self.nranks, self.entries) == (other.name, other.nranks,
                                                          other.entries)


def _check_rel(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or path == MARKER:
        raise ValueError(f"manifest path {path!r} is not a plain path inside the checkpoint")


def build_manifest(name: str, nranks: int, entries: Iterable[ManifestEntry],
                   meta: Mapping[str, Any] | None = None, *,
                   step: int | None = None) -> Manifest:
    """Sort ``entries`` and check them: every path once (a directory may be named by
    several ranks), none escaping the checkpoint, none named like the marker.
    ``step`` (the application's step) orders checkpoints; without it an integer
    ``meta["step"]`` is used.

    Raises:
        ValueError: naming the path that two ranks both wrote, or the bad path.
    """
    by_path: dict[str, ManifestEntry] = {}
    for e in entries:
        _check_rel(e.path)
        old = by_path.get(e.path)
        if old is not None:
            if old.kind == e.kind == "dir":
                continue
            raise ValueError(f"{e.path!r} was written by rank {old.rank} and rank {e.rank}")
        by_path[e.path] = e
    ordered = tuple(sorted(by_path.values(), key=lambda e: e.path.encode(
        "utf-8", "surrogateescape")))
    return Manifest(name, nranks, ordered, meta=dict(meta or {}),
                    step=_step_of(step, meta or {}))


def _step_of(step: Any, meta: Mapping[str, Any]) -> int | None:
    """The step to record: ``step``, else an integer ``meta["step"]`` (the convention of
    markers written before the ``step`` field existed), else None."""
    for v in (step, meta.get("step")):
        if v is not None and not isinstance(v, bool):
            try:
                return int(v)
            except (TypeError, ValueError):
                continue
    return None


def order_key(m: Manifest, path: str) -> tuple[bool, int, int, str]:
    """Sort key, newest last: checkpoints with a step by step, then commit time, then
    path; those without a step sort before every one that has a step."""
    return (m.step is not None, m.step if m.step is not None else 0, m.committed_ns, path)


def is_hidden(name: str) -> bool:
    """A name in a checkpoints directory that is never a checkpoint: prune's trash and
    every temp start with "."."""
    return name.startswith(".")


def write_manifest(checkpoint_dir: str | os.PathLike[str], manifest: Manifest, *,
                   keep_existing: bool = True) -> Manifest:
    """Publish ``manifest`` as the commit marker of ``checkpoint_dir`` (temp, fsync,
    rename, directory fsync; see the module docstring).

    With ``keep_existing`` a marker already there that lists the same files is kept as it
    is (so a resumed commit does not move the checkpoint's commit time); it is returned.

    Returns:
        The manifest now on disk.

    Raises:
        OSError: the directory is missing or a write, fsync or rename failed. The temp is
            removed; whatever marker was there before (or none) is still there. If the
            process dies instead, at most a hidden temp is left, which readers ignore;
            the next write in this directory removes it (before its own temp), and so
            does ``axlpy gc``.
    """
    path = os.fspath(checkpoint_dir)
    if keep_existing:
        try:
            old = read_manifest(path)
        except InvalidCheckpointError:
            pass
        else:
            if old.same_files(manifest):
                return old
    body = manifest.body()
    data = seal_json(body)
    tmp = (_TEMP_PREFIX + secrets.token_hex(4)).encode()
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for stale in os.listdir(dfd):  # temps of commits killed before their rename
            if stale.startswith(_TEMP_PREFIX):
                unlink_quiet(dfd, stale.encode())
        # Readable (0644) like the checkpoint files it describes.
        publish_atomic(dfd, MARKER.encode(), data, tmp, mode=0o644, after=_marker_step)
    finally:
        os.close(dfd)
    return manifest


def _marker_step(step: str) -> None:
    """The crash point of a marker publish (see :func:`publish_atomic`)."""
    if step == "temp":
        crash_point("marker.after_temp_fsync")


def read_manifest(checkpoint_dir: str | os.PathLike[str]) -> Manifest:
    """Read and check the marker of ``checkpoint_dir`` (not the files it lists).

    Raises:
        InvalidCheckpointError: no marker, or one that is not valid JSON, has a foreign
            format, a body CRC32C that does not match (torn or bit-rotted), or a bad entry.
    """
    mpath = os.path.join(os.fspath(checkpoint_dir), MARKER)
    try:
        with open(mpath, "rb") as f:
            raw = f.read(64 << 20)
    except FileNotFoundError:
        raise InvalidCheckpointError(f"{os.fspath(checkpoint_dir)!r} has no commit marker "
                                     f"({MARKER}): it was never committed") from None
    except OSError as exc:
        raise InvalidCheckpointError(f"cannot read {mpath!r}: {exc}") from exc
    try:
        doc = unseal_json(raw, FORMAT, "marker")
        entries = tuple(ManifestEntry.from_json(e) for e in doc["files"])
        meta = dict(doc.get("meta") or {})
        m = Manifest(str(doc["name"]), int(doc["nranks"]), entries,
                     int(doc["committed_ns"]), meta, _step_of(doc.get("step"), meta))
        if m.total_bytes != int(doc["total_bytes"]):
            raise ValueError("total_bytes does not match the entries")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidCheckpointError(f"commit marker {mpath!r} is invalid: {exc}") from exc
    return m


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one checkpoint directory."""

    path: str
    valid: bool
    manifest: Manifest | None
    problems: Sequence[str] = ()
    verified: bool = False  # True when every file's CRC32C was checked


_WRONG_TYPE = {"dir": "not a directory", "symlink": "not a symlink",
               "file": "not a regular file"}


def _check_entry(root: str, e: ManifestEntry, verify: bool, buf: bytearray) -> str | None:
    # str with surrogateescape: fsencode gives the exact bytes back
    p = os.fsencode(os.path.join(root, e.path))
    m = Expected(e.kind, e.size, e.crc32c).check_path(p, content=verify, buf=buf)
    if m is None:
        return None
    if m.problem == "missing":
        return f"{e.path}: missing ({m.detail})"
    if m.problem == "wrong-type":
        return f"{e.path}: {_WRONG_TYPE[e.kind]}"
    if m.problem == "link-target":
        return f"{e.path}: symlink target differs"
    if m.problem == "size":
        return f"{e.path}: size {m.actual_size}, marker says {e.size}"
    if m.problem == "crc32c":
        return f"{e.path}: CRC32C {m.actual_crc32c or 0:#010x}, marker says {e.crc32c:#010x}"
    return f"{e.path}: unreadable ({m.detail})"


def check_checkpoint(checkpoint_dir: str | os.PathLike[str], *,
                     verify: bool = False) -> CheckResult:
    """Is ``checkpoint_dir`` a valid checkpoint?

    Always: a readable, intact marker, and every listed path present with its kind and
    size. With ``verify``: also every file's CRC32C (reads every byte). Never raises for an
    invalid checkpoint: the reasons are in ``problems``. Reads only.
    """
    path = os.fspath(checkpoint_dir)
    try:
        m = read_manifest(path)
    except InvalidCheckpointError as exc:
        return CheckResult(path, False, None, (str(exc),))
    buf = bytearray(4 << 20)
    problems = [p for e in m.entries if (p := _check_entry(path, e, verify, buf))]
    return CheckResult(path, not problems, m, tuple(problems), verified=verify)


def list_checkpoints(directory: str | os.PathLike[str], *,
                     verify: bool = False) -> list[CheckResult]:
    """Every subdirectory of ``directory`` not hidden (prune's trash and temps start with
    "."), newest first: those with a marker by :func:`order_key` (step, then commit
    time, then name), then those without one (invalid: never committed)."""
    d = os.fspath(directory)
    results = [check_checkpoint(os.path.join(d, n), verify=verify)
               for n in sorted(os.listdir(d))
               if not is_hidden(n) and os.path.isdir(os.path.join(d, n))]
    return sorted(results, key=lambda r: (r.manifest is not None,
                                          order_key(r.manifest, r.path) if r.manifest
                                          else (False, 0, 0, r.path)), reverse=True)


def latest_valid_checkpoint(directory: str | os.PathLike[str], *,
                            verify: bool = False) -> CheckResult | None:
    """The newest valid checkpoint among the subdirectories of ``directory``, or None.

    "Newest" is the step recorded in the marker, ties by commit time (then the larger
    name); see :func:`order_key`. A directory without a marker is never picked, however
    complete its files look, nor a hidden one (prune's trash). With ``verify`` every
    file's CRC32C is checked, and a checkpoint that fails is skipped in favour of the
    next older one; only as many checkpoints as needed are read.
    :func:`axlpy.restore_point` is the same search with per-rank file lists.
    """
    d = os.fspath(directory)
    candidates: list[tuple[tuple[bool, int, int, str], str]] = []
    for n in os.listdir(d):
        p = os.path.join(d, n)
        if is_hidden(n) or not os.path.isdir(p):
            continue
        try:
            candidates.append((order_key(read_manifest(p), p), p))
        except InvalidCheckpointError:
            continue
    for _, p in sorted(candidates, reverse=True):
        r = check_checkpoint(p, verify=verify)
        if r.valid:
            return r
    return None
