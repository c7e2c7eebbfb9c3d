"""A transfer's options (:class:`Options`) and the process-wide defaults for new transfers
(``axlpy.config()``, ``AXL_Config``).

The defaults are the field defaults of :class:`Options`, stated here only. Each value can
also come from the environment (``AXLPY_<KEY>`` upper-cased) and be overridden per
transfer in ``Journal.create(...)``. A transfer's effective options are stored in the
journal (as JSON) at create time, so a resume in another process uses the same ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import JournalError, UsageError
from ._lease import DEFAULT_LEASE_S

__all__ = ["DEFAULTS", "Options", "config", "default_journal_path", "effective_options"]


@dataclass(frozen=True)
class Options:
    """The options of one transfer, as stored in its journal row (frozen: a change is a
    new value, written by the journal in one transaction).

    The first group are the settable options (:func:`axlpy.config`, ``Journal.create``);
    the second is what the library records about the transfer. A journal written by an
    older axlpy lacks some keys: they take the defaults below. Keys this axlpy does not
    know (written by a newer one) are kept in ``unknown`` and written back unchanged.
    """

    chunk_size: int = 8 << 20  # bytes per read/write
    extent_size: int = 64 << 20  # bytes per journaled CRC extent (mid-file resume)
    workers: int = 0  # 0 = engine default
    queue: str = ""  # IO queue name; "" = the engine's default
    queue_depth: int = 64
    mkdirs: bool = True
    metadata: bool = False
    move: bool = False
    symlinks: str = "copy"  # copy | follow | refuse
    follow_dst_symlinks: bool = False
    verify_published: bool = True
    #: recreate hard links among a transfer's sources as links (docs/design.md, "Hard
    #: links"); False copies each name separately
    hard_links: bool = True
    #: seconds without a byte written or an fsync done before a running transfer is
    #: reported STALLED (docs/design.md "Stalls and abandoned threads"); 0 = never
    stall_timeout: float = 300.0
    #: seconds an owner's lease lasts without a heartbeat (renewed every fifth of it while
    #: running); an expired lease is dead wherever its host is (docs/design.md, Ownership)
    lease_timeout: float = DEFAULT_LEASE_S
    #: retry.* keys for every engine read/write (docs/retry.md); AXLPY_RETRY_* env wins
    retry: Mapping[str, Any] = field(default_factory=dict)
    # -- recorded by the library ---------------------------------------------------------
    #: destination roots recorded by add() (resume never writes outside them)
    roots: tuple[str, ...] = ()
    #: (source, destination, kind) of each add(), in order (move mode deletes inside them)
    adds: tuple[tuple[str, str, str], ...] | None = None
    #: the application's step (Journal.create(step=...))
    step: int | None = None
    #: rank, size, checkpoint directory... of a transfer created through axlpy.mpi
    mpi: Mapping[str, Any] | None = None
    #: keys of the stored JSON this axlpy does not know, kept as they were
    unknown: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the journal (unknown keys included)."""
        out: dict[str, Any] = dict(self.unknown)
        for f in dataclasses.fields(self):
            if f.name == "unknown":
                continue
            v = getattr(self, f.name)
            if f.name in _RECORDED and v is None:
                continue  # absent, as older journals have it
            if f.name == "roots":
                v = list(v)
            elif f.name == "adds":
                v = [list(a) for a in v]
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, stored: Mapping[str, Any], *, where: str = "") -> Options:
        """Read the stored JSON object; missing keys take the defaults, unknown ones are
        kept in ``unknown``. Raises :class:`JournalError` (naming ``where``) for a
        value of the wrong type."""
        if not isinstance(stored, Mapping):
            raise JournalError(f"{where or 'options'}: stored options are not a JSON "
                               f"object: {stored!r}")
        kw: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        for k, v in stored.items():
            if k not in _FIELDS or k == "unknown":
                unknown[k] = v
                continue
            try:
                if k == "roots":
                    v = tuple(str(r) for r in v)
                elif k == "adds":
                    v = None if v is None else tuple(
                        (str(a[0]), str(a[1]), str(a[2])) for a in v)
                elif k in _INT_KEYS:
                    v = int(v)
                elif k in _FLOAT_KEYS or k == "lease_timeout":
                    v = float(v)
                elif k in _BOOL_KEYS:
                    v = bool(v)
                elif k in ("queue", "symlinks"):
                    v = str(v)
                elif k == "step":
                    v = None if v is None else int(v)
                elif k in ("retry", "mpi") and v is not None and not isinstance(v, Mapping):
                    raise TypeError("not a table")
            except (TypeError, ValueError, IndexError) as exc:
                raise JournalError(f"{where or 'options'}: stored option {k!r} has an "
                                   f"invalid value {v!r} ({exc})") from None
            kw[k] = v
        if kw.get("retry") is None:
            kw.pop("retry", None)
        return cls(**kw, unknown=unknown)

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (fields of this class only)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(Options)}
#: recorded by the library, not settable through config() or Journal.create(**options)
_RECORDED = ("roots", "adds", "step", "mpi", "unknown")
#: the process-wide defaults: the settable fields of :class:`Options` and their defaults
DEFAULTS: dict[str, Any] = {
    k: v for k, v in Options().to_json().items() if k not in _RECORDED
}

_current: dict[str, Any] = dict(DEFAULTS)
_INT_KEYS = {"chunk_size", "extent_size", "workers", "queue_depth"}
_FLOAT_KEYS = {"stall_timeout"}
_BOOL_KEYS = {"mkdirs", "metadata", "move", "follow_dst_symlinks", "verify_published",
              "hard_links"}


def _coerce(key: str, value: Any) -> Any:
    if key not in DEFAULTS:
        raise UsageError(f"unknown config key {key!r}; known: {sorted(DEFAULTS)}")
    if key in _INT_KEYS:
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"config {key} must be an integer, got {value!r}") from None
        if v < 0 or (key in ("chunk_size", "extent_size", "queue_depth") and v < 1):
            raise UsageError(f"config {key} must be positive, got {v}")
        return v
    if key in _FLOAT_KEYS:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"config {key} must be a number of seconds, got {value!r}") \
                from None
        if not f >= 0 or f == float("inf"):
            raise UsageError(f"config {key} must be a finite number >= 0, got {value!r}")
        return f
    if key == "retry":
        return _coerce_retry(value)
    if key == "lease_timeout":
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"config lease_timeout must be seconds, got {value!r}") from None
        if not f > 0:
            raise UsageError(f"config lease_timeout must be positive, got {f}")
        return f
    if key in _BOOL_KEYS:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    return str(value)


def _coerce_retry(value: Any) -> dict[str, Any]:
    """A table of ``retry.*`` keys (or JSON of one), validated by building the policy."""
    import json

    from ._retry import RetryPolicy

    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise UsageError(f"config retry must be a JSON table, got {value!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"config retry must be a table of retry.* keys, got {value!r}")
    RetryPolicy.from_config({"retry": value}, env={})
    return dict(value)


def config(**updates: Any) -> dict[str, Any]:
    """Set process-wide defaults for transfers created from now on; return them all."""
    new = {k: _coerce(k, v) for k, v in updates.items()}
    _check(new | {k: v for k, v in _current.items() if k not in new})
    _current.update(new)
    return dict(_current)


def _check(opts: dict[str, Any]) -> None:
    if opts["extent_size"] % opts["chunk_size"]:
        raise UsageError("extent_size must be a multiple of chunk_size")
    if opts["symlinks"] not in ("copy", "follow", "refuse"):
        raise UsageError(f"symlinks must be copy, follow or refuse, not {opts['symlinks']!r}")


def effective_options(overrides: Mapping[str, Any], **recorded: Any) -> Options:
    """Defaults < environment (AXLPY_<KEY>) < explicit overrides; validated. ``recorded``
    sets fields the library records (``step``, ``mpi``)."""
    opts = dict(_current)
    for k in DEFAULTS:
        env = os.environ.get(f"AXLPY_{k.upper()}")
        if env is not None:
            opts[k] = _coerce(k, env)
    for k, v in overrides.items():
        if v is not None:
            opts[k] = _coerce(k, v)
    _check(opts)
    return Options(**opts, **recorded)


def default_journal_path() -> str:
    """``$AXLPY_JOURNAL``, else ``$XDG_STATE_HOME/axlpy/journal.db`` (~/.local/state)."""
    env = os.environ.get("AXLPY_JOURNAL")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "axlpy", "journal.db")
