"""axlpy: crash-safe, resumable checkpoint transfers with a SQLite journal.

Layers, bottom up: ``_state`` (the transition table, no IO) -> ``_journal`` (SQLite,
one transaction per transition) -> ``_staging`` (temp, fsync, rename, directory fsync)
-> ``io`` (IO queues) -> ``engines`` (who drives the queues) -> ``_driver`` (the order of
every write, fsync, rename and commit) -> ``_transfer`` (this public API) -> ``compat``
(the ``AXL_*`` face) and ``cli``.
"""

import logging as _logging

from ._admission import AdmissionStats
from ._cancel import CancelReport
from ._config import config, default_journal_path
from ._driver import Progress
from ._errors import (
    AdmissionTimeoutError,
    AxlError,
    BackendUnavailableError,
    BadSourceError,
    ChecksumMismatchError,
    InvalidTransitionError,
    IOBackendError,
    JournalBusyError,
    JournalError,
    JournalFullError,
    OwnershipError,
    PublishError,
    RetriesExhaustedError,
    SecurityError,
    SourceChangedError,
    StalledError,
    TransferCancelledError,
    TransferError,
    UsageError,
)
from ._lifecycle import (
    PruneReport,
    RestorePoint,
    RetentionPolicy,
    commit_checkpoint,
    prune,
    restore_point,
    update_pointer,
)
from ._sources import Limits
from ._state import FileState, TransferState
from ._transfer import FileStatus, Journal, Transfer, TransferStatus, TransferType, wait_all

__version__ = "0.1.0"

# A library logs; the application decides where it goes (no last-resort stderr lines).
_logging.getLogger("axlpy").addHandler(_logging.NullHandler())

__all__ = [
    "AdmissionStats",
    "AdmissionTimeoutError",
    "AxlError",
    "BackendUnavailableError",
    "BadSourceError",
    "CancelReport",
    "ChecksumMismatchError",
    "FileState",
    "FileStatus",
    "IOBackendError",
    "InvalidTransitionError",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "JournalFullError",
    "Limits",
    "OwnershipError",
    "Progress",
    "PruneReport",
    "PublishError",
    "RestorePoint",
    "RetentionPolicy",
    "RetriesExhaustedError",
    "SecurityError",
    "SourceChangedError",
    "StalledError",
    "Transfer",
    "TransferCancelledError",
    "TransferError",
    "TransferState",
    "TransferStatus",
    "TransferType",
    "UsageError",
    "__version__",
    "commit_checkpoint",
    "config",
    "default_journal_path",
    "prune",
    "restore_point",
    "update_pointer",
    "wait_all",
]
