"""Transfer and file states and the one table of legal transitions. No IO here.

Transfer:

```
CREATED ──dispatch──> DISPATCHED ──all published──> RENAMED ──sources deleted──> COMPLETED
   │                      │   ▲                               │
   │                      │   └── resume (after FAILED) ──┐   │
   ├──────cancel──────────┴──────> CANCELLED               │   └──cancel──> CANCELLED
                          └──────> FAILED ──resume─────────┘
```

Files: PENDING -> STAGING -> STAGED -> PUBLISHED, each may go back to PENDING when a resume
finds its bytes untrustworthy, and CANCELLED when the transfer is cancelled before publish.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ._errors import InvalidTransitionError

__all__ = [
    "FILE_TRANSITIONS",
    "TRANSITIONS",
    "FileState",
    "TransferState",
    "TransferType",
    "check_file_transition",
    "check_transition",
]


class TransferState(enum.StrEnum):
    CREATED = "CREATED"
    DISPATCHED = "DISPATCHED"
    RENAMED = "RENAMED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    # Paused by the retry policy in intervention mode; waits for an operator.
    PAUSED = "PAUSED"

    @property
    def is_final(self) -> bool:
        return self in (TransferState.COMPLETED, TransferState.CANCELLED)


class TransferType(enum.StrEnum):
    """How a transfer's bytes move. Stored in the journal; a resume uses the same type."""

    #: the engine measured fastest for the transfer's size and filesystem (docs/engines.md)
    DEFAULT = "default"
    #: copy in the caller's thread; ``dispatch()`` returns when done
    SYNC = "sync"
    #: worker threads in the background
    PTHREAD = "pthread"
    #: one background thread driving a deep io_uring queue
    URING = "uring"


class FileState(enum.StrEnum):
    PENDING = "PENDING"
    STAGING = "STAGING"
    STAGED = "STAGED"
    PUBLISHED = "PUBLISHED"
    CANCELLED = "CANCELLED"


_T = TransferState
TRANSITIONS: Mapping[TransferState, frozenset[TransferState]] = {
    # A refused dispatch (bad source) stays CREATED: FAILED is only reachable after
    # DISPATCHED, so no path reaches RENAMED without dispatching.
    _T.CREATED: frozenset({_T.DISPATCHED, _T.CANCELLED}),
    # DISPATCHED -> DISPATCHED is a resume taking over a crashed dispatch.
    _T.DISPATCHED: frozenset(
        {_T.DISPATCHED, _T.RENAMED, _T.CANCELLED, _T.FAILED, _T.PAUSED}
    ),
    # RENAMED -> RENAMED is a resume finishing source deletion (move mode).
    _T.RENAMED: frozenset({_T.RENAMED, _T.COMPLETED, _T.CANCELLED, _T.FAILED}),
    _T.PAUSED: frozenset({_T.DISPATCHED, _T.CANCELLED, _T.FAILED}),
    _T.FAILED: frozenset({_T.DISPATCHED, _T.RENAMED, _T.CANCELLED}),
    _T.COMPLETED: frozenset(),
    _T.CANCELLED: frozenset(),
}

_F = FileState
FILE_TRANSITIONS: Mapping[FileState, frozenset[FileState]] = {
    # PENDING -> PUBLISHED is a directory: it has no bytes to stage.
    _F.PENDING: frozenset({_F.STAGING, _F.STAGED, _F.PUBLISHED, _F.CANCELLED}),
    _F.STAGING: frozenset({_F.PENDING, _F.STAGING, _F.STAGED, _F.CANCELLED}),
    _F.STAGED: frozenset({_F.PENDING, _F.PUBLISHED, _F.CANCELLED}),
    # A published file that resume finds damaged goes back to PENDING and is recopied.
    # Cancel removes what the transfer published (see docs/design.md).
    _F.PUBLISHED: frozenset({_F.PENDING, _F.CANCELLED}),
    _F.CANCELLED: frozenset(),
}


def check_transition(current: TransferState, requested: TransferState, name: str = "") -> None:
    """Raise :class:`InvalidTransitionError` unless ``current -> requested`` is legal."""
    if requested not in TRANSITIONS[current]:
        raise InvalidTransitionError(
            f"transfer {name!r}" if name else "transfer", current.value, requested.value
        )


def check_file_transition(current: FileState, requested: FileState, path: str = "") -> None:
    """Raise :class:`InvalidTransitionError` unless the file move is legal."""
    if requested not in FILE_TRANSITIONS[current]:
        raise InvalidTransitionError(
            f"file {path!r}" if path else "file", current.value, requested.value
        )
