"""Process-wide defaults for new transfers (``axlpy.config()``, ``AXL_Config``).

Each value can also come from the environment (``AXLPY_<KEY>`` upper-cased) and be
overridden per transfer in ``Journal.create(...)``. A transfer's effective options are
stored in the journal at create time, so a resume in another process uses the same ones.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import UsageError
from ._lease import DEFAULT_LEASE_S

__all__ = ["DEFAULTS", "config", "default_journal_path", "effective_options"]

DEFAULTS: dict[str, Any] = {
    "chunk_size": 8 << 20,  # bytes per read/write
    "extent_size": 64 << 20,  # bytes per journaled CRC extent (mid-file resume)
    "workers": 0,  # 0 = engine default
    "queue": "",  # IO queue name; "" = the engine's default
    "queue_depth": 64,
    "mkdirs": True,
    "metadata": False,
    "move": False,
    "symlinks": "copy",  # copy | follow | refuse
    "follow_dst_symlinks": False,
    "verify_published": True,
    # seconds without a byte written or an fsync done before a running transfer is
    # reported STALLED (docs/design.md "Stalls and abandoned threads"); 0 = never
    "stall_timeout": 300.0,
    # seconds an owner's lease lasts without a heartbeat (renewed every fifth of it while
    # running); an expired lease is dead wherever its host is (docs/design.md, Ownership)
    "lease_timeout": DEFAULT_LEASE_S,
    # retry.* keys for every engine read/write (docs/retry.md); AXLPY_RETRY_* env wins
    "retry": {},
}

_current: dict[str, Any] = dict(DEFAULTS)
_INT_KEYS = {"chunk_size", "extent_size", "workers", "queue_depth"}
_FLOAT_KEYS = {"stall_timeout"}
_BOOL_KEYS = {"mkdirs", "metadata", "move", "follow_dst_symlinks", "verify_published"}


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


def effective_options(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults < environment (AXLPY_<KEY>) < explicit overrides; validated."""
    opts = dict(_current)
    for k in DEFAULTS:
        env = os.environ.get(f"AXLPY_{k.upper()}")
        if env is not None:
            opts[k] = _coerce(k, env)
    for k, v in overrides.items():
        if v is not None:
            opts[k] = _coerce(k, v)
    _check(opts)
    return opts


def default_journal_path() -> str:
    """``$AXLPY_JOURNAL``, else ``$XDG_STATE_HOME/axlpy/journal.db`` (~/.local/state)."""
    env = os.environ.get("AXLPY_JOURNAL")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "axlpy", "journal.db")
