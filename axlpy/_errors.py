"""Every error axlpy raises, under one root.

```
AxlError
├─ UsageError(AxlError, ValueError)      a call that is not valid: bad argument, unknown name
│   ├─ InvalidTransitionError            .current, .requested: the state table forbids it
│   └─ BadSourceError                    a source that cannot be added (missing, wrong kind)
├─ BackendUnavailableError               a library, kernel feature or device is missing
├─ AdmissionTimeoutError(AxlError, TimeoutError)
│                                        an IO queue stayed full past the backoff timeout
├─ JournalError                          journal unreadable, corrupt, foreign or too new
│   ├─ JournalBusyError(JournalError, TimeoutError)
│   │                                    other users held the journal past the busy timeout
│   ├─ JournalFullError                  .mount: the journal's filesystem is full
│   └─ OwnershipError                    a live process owns the transfer
├─ SecurityError(AxlError, PermissionError)
│                                        a path or journal that could redirect a write
├─ StalledError(AxlError, TimeoutError)  .transfer, .op, .path, .seconds: no progress
└─ TransferError                         .transfer, .path; __cause__ = the OSError etc.
    ├─ IOBackendError                    an IO queue reported an error for a request
    ├─ SourceChangedError                a source differs from what was recorded at dispatch
    ├─ ChecksumMismatchError             bytes on disk do not match their journaled CRC32C
    ├─ PublishError                      rename or fsync of a final path failed
    ├─ RetriesExhaustedError             .attempts: the retry policy gave up
    └─ TransferCancelledError            the transfer was cancelled while waited on
```

Nothing here touches disk. Each class says when it is raised and what it is not.
"""

from __future__ import annotations

__all__ = [
    "AdmissionTimeoutError",
    "AxlError",
    "BackendUnavailableError",
    "BadSourceError",
    "ChecksumMismatchError",
    "IOBackendError",
    "InvalidTransitionError",
    "JournalBusyError",
    "JournalError",
    "JournalFullError",
    "OwnershipError",
    "PublishError",
    "RetriesExhaustedError",
    "SecurityError",
    "SourceChangedError",
    "StalledError",
    "TransferCancelledError",
    "TransferError",
    "UsageError",
]


class AxlError(Exception):
    """Root of every axlpy error; catch this to catch them all."""


class UsageError(AxlError, ValueError):
    """A call that is not valid as made: a bad argument, an unknown transfer name, a
    duplicate destination. Raised before anything is written; nothing on disk changed."""


class InvalidTransitionError(UsageError):
    """The state table forbids moving from ``current`` to ``requested``.

    Raised before the journal is touched. Not raised for a crash: a crashed transfer
    keeps its last committed state and is resumed or cancelled from it.
    """

    def __init__(self, what: str, current: str, requested: str) -> None:
        self.current = current
        self.requested = requested
        super().__init__(f"{what}: cannot go from {current} to {requested}")


class BadSourceError(UsageError):
    """A source cannot be added: missing, unreadable, the wrong kind (a FIFO, a device,
    a directory where a file was expected), or equal to its destination."""


class BackendUnavailableError(AxlError):
    """A backend cannot be used here: its library is not installed, the kernel lacks the
    feature, or no device exists. The message says how to get it. Callers that asked for
    "the fastest available" catch this and fall back; it is never an IO error."""


class AdmissionTimeoutError(AxlError, TimeoutError):
    """An IO queue stayed at its maximum depth for longer than the backoff timeout.

    Nothing was submitted for the request that timed out; its reservation was never made.
    """


class JournalError(AxlError):
    """The journal cannot be used: not an SQLite file, truncated or corrupt, a foreign
    schema, or a schema newer than this axlpy; or it cannot be read or written now (its
    directory, permissions, a busy or full journal: see the subclasses). The file is
    never rewritten or replaced when this is raised."""


class JournalBusyError(JournalError, TimeoutError):
    """Other processes or threads kept the journal locked for longer than the busy
    timeout (``Journal(busy_timeout=...)``, ``$AXLPY_JOURNAL_BUSY_TIMEOUT``, default 30 s).

    Raised only after the timeout: concurrent users of one journal otherwise just wait
    their turn. The transaction that could not start changed nothing; retrying the call
    is safe. Not raised for a damaged journal (that is a plain :class:`JournalError`).
    """


class JournalFullError(JournalError):
    """The filesystem holding the journal (``mount``) has no space left, so a journal
    transaction could not commit. SQLite rolled it back: the journal holds the state
    before the call, valid and unchanged. ``transfer`` names the transfer involved (if
    any) and ``resumable`` says whether it was left dispatched (free space, then resume
    it) rather than not started (free space, then make the call again). Not raised when
    a *destination* filesystem is full: that fails the transfer (a TransferError)."""

    def __init__(self, reason: str, *, mount: str, transfer: str | None = None,
                 resumable: bool = False) -> None:
        self.reason = reason
        self.mount = mount
        self.transfer = transfer
        self.resumable = resumable
        then = (f"resume transfer {transfer!r}" if resumable and transfer
                else "make the call again")
        super().__init__(f"{reason}. Free space on {mount}, then {then}")


class OwnershipError(JournalError):
    """Another live process owns the transfer (its pid and host are in the message).

    A transfer whose owner is dead can be taken over; this is only raised while the owner
    still runs."""


class SecurityError(AxlError, PermissionError):
    """A path or journal that could redirect a write: a symlink where none is allowed,
    a journal writable by other users, a journal row whose path escapes the destination
    roots recorded at create time. Raised before the write it guards."""


class TransferError(AxlError):
    """A transfer could not finish. ``transfer`` names it, ``path`` the file involved,
    and ``__cause__`` holds the original error. The journal records it; the transfer can
    be resumed (after fixing the cause) or cancelled."""

    def __init__(
        self, message: str, *, transfer: str | None = None, path: str | None = None
    ) -> None:
        self.transfer = transfer
        self.path = path
        super().__init__(message)


class IOBackendError(TransferError):
    """An IO queue reported an error (errno in ``errno``) for a read or write."""

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        transfer: str | None = None,
        path: str | None = None,
    ) -> None:
        self.errno = errno
        super().__init__(message, transfer=transfer, path=path)


class SourceChangedError(TransferError):
    """A source differs from what was recorded at dispatch: its size, mtime, ctime,
    inode/device, or (on resume) the content of an extent the journal had verified.
    ``changed`` names what differs (``"size"``, ``"mtime"``, ``"ctime"``, ``"inode"``,
    ``"content"``). Checked when a source is opened, after its last byte is read, on
    resume and before move mode deletes it. Never silently mixed into a copy: the file
    is not published (its temp stays for cancel; resume fails again until the source
    is put back or the transfer is cancelled and started afresh). Not raised for a
    destination that changed (that is :class:`ChecksumMismatchError` or a recopy)."""

    def __init__(
        self,
        message: str,
        *,
        changed: tuple[str, ...] = (),
        transfer: str | None = None,
        path: str | None = None,
    ) -> None:
        self.changed = changed
        super().__init__(message, transfer=transfer, path=path)


class ChecksumMismatchError(TransferError):
    """Bytes on disk do not match their journaled CRC32C."""


class PublishError(TransferError):
    """Renaming a staged file into place, or fsyncing its directory, failed."""


class RetriesExhaustedError(TransferError):
    """The retry policy gave up after ``attempts`` attempts; ``__cause__`` is the last error."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        transfer: str | None = None,
        path: str | None = None,
    ) -> None:
        self.attempts = attempts
        super().__init__(message, transfer=transfer, path=path)


class TransferCancelledError(TransferError):
    """The transfer was cancelled: raised by a call that needed it to run to the end."""


class StalledError(AxlError, TimeoutError):
    """A running transfer made no progress (no byte written, no fsync completed) for its
    ``stall_timeout``: raised by ``wait(raise_on_stall=True)``. ``op`` is the system call
    a thread of it is blocked in (``write``, ``fsync``, ...; None if none was found),
    ``path`` the file, ``seconds`` how long nothing happened.

    Not a failure: the transfer is still running (the filesystem may answer yet) and the
    journal is unchanged but for a ``stall`` event. ``cancel()`` abandons the stuck thread
    and returns at once (docs/design.md, "Stalls and abandoned threads")."""

    def __init__(self, message: str, *, transfer: str, op: str | None, path: str | None,
                 seconds: float) -> None:
        self.transfer = transfer
        self.op = op
        self.path = path
        self.seconds = seconds
        super().__init__(message)
