"""axlpy: crash-safe, resumable checkpoint transfers with a SQLite journal.

Layers, bottom up: ``_state`` (the transition table, no IO) -> ``_journal`` (SQLite,
one transaction per transition) -> ``_staging`` (temp, fsync, rename, directory fsync)
-> ``io`` (IO queues) -> ``engines`` (who drives the queues) -> ``_driver`` (the order of
every write, fsync, rename and commit) -> ``_transfer`` (this public API) -> ``compat``
(the ``AXL_*`` face) and ``cli``.
"""

import logging as _logging
from typing import TYPE_CHECKING, Any

from ._config import Options, config, default_journal_path
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
from ._state import FileState, TransferState, TransferType

if TYPE_CHECKING:
    from ._admission import AdmissionStats
    from ._cancel import CancelReport
    from ._driver import Progress
    from ._gc import GcReport, TempFile, gc
    from ._lease import Owner
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
    from ._transfer import FileStatus, Journal, Transfer, TransferStatus, wait_all
    from ._verify import Mismatch, VerifyReport, verify_checkpoint

#: public name -> the module that defines it, imported on first access (PEP 562), so that
#: ``import axlpy`` and every ``axlpy`` command start fast: the journal (sqlite3), the
#: checksums (crc32c) and the engines load only when a program touches them
_LAZY = {
    "AdmissionStats": "._admission",
    "CancelReport": "._cancel",
    "Progress": "._driver",
    "PruneReport": "._lifecycle",
    "RestorePoint": "._lifecycle",
    "RetentionPolicy": "._lifecycle",
    "commit_checkpoint": "._lifecycle",
    "prune": "._lifecycle",
    "restore_point": "._lifecycle",
    "update_pointer": "._lifecycle",
    "Limits": "._sources",
    "Owner": "._lease",
    "FileStatus": "._transfer",
    "Journal": "._transfer",
    "Transfer": "._transfer",
    "TransferStatus": "._transfer",
    "wait_all": "._transfer",
    "Mismatch": "._verify",
    "GcReport": "._gc",
    "TempFile": "._gc",
    "gc": "._gc",
    "VerifyReport": "._verify",
    "verify_checkpoint": "._verify",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "GcReport",
    "IOBackendError",
    "InvalidTransitionError",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "JournalFullError",
    "Limits",
    "Mismatch",
    "Options",
    "Owner",
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
    "TempFile",
    "Transfer",
    "TransferCancelledError",
    "TransferError",
    "TransferState",
    "TransferStatus",
    "TransferType",
    "UsageError",
    "VerifyReport",
    "__version__",
    "commit_checkpoint",
    "config",
    "default_journal_path",
    "gc",
    "prune",
    "restore_point",
    "update_pointer",
    "verify_checkpoint",
    "wait_all",
]
