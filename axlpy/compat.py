"""The ``AXL_*`` face: C AXL's names, transfer types and int return codes.

Port C AXL code line by line::

    AXL_Init()
    id = AXL_Create(AXL_XFER_SYNC, "ckpt-1", "/scratch/me/axl.db")
    AXL_Add(id, "/local/ckpt.0", "/pfs/ckpt.0")
    AXL_Dispatch(id); AXL_Wait(id); AXL_Free(id)
    AXL_Finalize()

``state_file`` is the journal (one SQLite file may hold many transfers). Every call
returns ``AXL_SUCCESS`` or ``AXL_FAILURE`` (``AXL_Create`` returns the id or
``AXL_FAILURE``); the reason for the last failure is in :func:`AXL_LastError`. Where C AXL
is known to be wrong, this does the right thing (see docs/compat.md):

- ``AXL_Test`` returns ``AXL_RUNNING`` while running and ``AXL_FAILURE`` only on failure
  (C AXL returns the same code for both);
- ``AXL_Wait`` accepts a cancelled transfer, so ``AXL_Stop`` works;
- resume verifies every byte it keeps (CRC32C per extent) instead of appending to a partial
  destination; cancel removes partial files; directories are fsynced after renames.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._config import config
from ._errors import AxlError, TransferCancelledError, UsageError
from ._state import TransferState
from ._transfer import Journal, Transfer, TransferType

__all__ = [
    "AXL_FAILURE",
    "AXL_RUNNING",
    "AXL_SUCCESS",
    "AXL_XFER_ASYNC_BBAPI",
    "AXL_XFER_ASYNC_CPPR",
    "AXL_XFER_ASYNC_DW",
    "AXL_XFER_DEFAULT",
    "AXL_XFER_NULL",
    "AXL_XFER_PTHREAD",
    "AXL_XFER_STATE_FILE",
    "AXL_XFER_SYNC",
    "AXL_XFER_URING",
    "AXL_Add",
    "AXL_Cancel",
    "AXL_Config",
    "AXL_Create",
    "AXL_Dispatch",
    "AXL_Finalize",
    "AXL_Free",
    "AXL_Init",
    "AXL_LastError",
    "AXL_Resume",
    "AXL_Stop",
    "AXL_Test",
    "AXL_Wait",
]

log = logging.getLogger("axlpy.compat")

AXL_SUCCESS = 0
AXL_FAILURE = -1
#: axlpy addition: ``AXL_Test`` of a transfer still running (C AXL says AXL_FAILURE)
AXL_RUNNING = 1

# Same order and values as C AXL's axl_xfer_t.
AXL_XFER_NULL = 0
AXL_XFER_DEFAULT = 1
AXL_XFER_SYNC = 2
AXL_XFER_PTHREAD = 3
AXL_XFER_ASYNC_BBAPI = 4
AXL_XFER_ASYNC_DW = 5
AXL_XFER_ASYNC_CPPR = 6
AXL_XFER_STATE_FILE = 7
#: axlpy addition: one background thread driving io_uring
AXL_XFER_URING = 100

_TYPES: dict[int, TransferType] = {
    AXL_XFER_DEFAULT: TransferType.DEFAULT,
    AXL_XFER_SYNC: TransferType.SYNC,
    AXL_XFER_PTHREAD: TransferType.PTHREAD,
    AXL_XFER_URING: TransferType.URING,
}

# C AXL config keys -> axlpy option names.
_CONFIG_KEYS = {
    "FILE_BUF_SIZE": "chunk_size",
    "MKDIR": "mkdirs",
    "COPY_METADATA": "metadata",
}

_lock = threading.Lock()
_initialized = False
_next_id = 1
_transfers: dict[int, Transfer] = {}
_journals: dict[str, Journal] = {}
_last_error = ""


def _fail(exc: BaseException) -> int:
    global _last_error
    _last_error = str(exc) or type(exc).__name__
    log.error("%s", _last_error)
    return AXL_FAILURE


def _guard(fn: Callable[[], int]) -> int:
    if not _initialized:
        return _fail(UsageError("AXL_Init() has not been called"))
    try:
        return fn()
    except AxlError as exc:
        return _fail(exc)
    except OSError as exc:
        return _fail(exc)


def _call(id: int, verb: str, *args: Any) -> int:
    getattr(_get(id), verb)(*args)
    return AXL_SUCCESS


def _get(id: int) -> Transfer:
    t = _transfers.get(id)
    if t is None:
        raise UsageError(f"unknown transfer id {id}")
    return t


def AXL_LastError() -> str:
    """The message of the last failure (axlpy addition)."""
    return _last_error


def AXL_Init() -> int:
    """Initialise the library. Idempotent."""
    global _initialized
    with _lock:
        _initialized = True
    return AXL_SUCCESS


def AXL_Finalize() -> int:
    """Forget every transfer handle (transfers themselves stay in their journals) and
    close the journals. Running background transfers are waited for first."""
    global _initialized
    for t in list(_transfers.values()):
        if t.running:
            try:
                t.wait()
            except AxlError as exc:
                _fail(exc)
    _transfers.clear()
    for j in _journals.values():
        j.close()
    _journals.clear()
    _initialized = False
    return AXL_SUCCESS


def AXL_Config(config_in: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Set process-wide defaults (C AXL keys FILE_BUF_SIZE, MKDIR, COPY_METADATA, or any
    :func:`axlpy.config` key) and return the whole configuration; None on a bad key."""
    updates = {_CONFIG_KEYS.get(k, k.lower()): v for k, v in (config_in or {}).items()}
    try:
        return config(**updates)
    except AxlError as exc:
        _fail(exc)
        return None


def _journal(state_file: str) -> Journal:
    path = os.path.abspath(state_file)
    j = _journals.get(path)
    if j is None:
        j = _journals[path] = Journal(path)
    return j


def AXL_Create(xtype: int, name: str, state_file: str | None = None) -> int:
    """Create a transfer, or reload the one named ``name`` from ``state_file`` as C AXL
    does. Returns its id or AXL_FAILURE.

    The rule (C AXL's ``AXL_Create``, with one journal holding many transfers):

    - ``state_file`` given and it holds a transfer named ``name``: that transfer is
      reloaded (whatever its state), if ``xtype`` is ``AXL_XFER_STATE_FILE`` or the type
      it was created with; another type fails naming both (C AXL: "Transfer type doesn't
      match"). Nothing is written.
    - otherwise a new transfer is created (CREATED, one committed row); with
      ``AXL_XFER_STATE_FILE`` that fails, as C AXL refuses it without a state file.
    - no ``state_file``: the default journal is used but never reloaded from (C AXL has
      nothing to reload without one), so an existing name fails.

    With AXL_XFER_STATE_FILE and an empty ``name``, a journal holding exactly one transfer
    opens that one, for apps that lost track of the name.
    """
    def create() -> int:
        global _next_id
        from ._config import default_journal_path

        j = _journal(state_file or default_journal_path())
        if xtype == AXL_XFER_STATE_FILE:
            nm = name
            if not nm:
                names = j.names()
                if len(names) != 1:
                    raise UsageError(f"state file {j.path!r} holds {len(names)} transfers; "
                                     "name the one to open")
                nm = names[0]
            t = j.open(nm)
        elif xtype in _TYPES:
            row = j.db.transfer(name) if state_file and name else None
            if row is None:
                t = j.create(name, _TYPES[xtype])
            elif row.type != _TYPES[xtype].value:
                raise UsageError(f"transfer type {_TYPES[xtype].value!r} does not match "
                                 f"type {row.type!r} of transfer {name!r} in state file "
                                 f"{j.path!r}")
            else:
                t = j.open(name)  # C AXL's reload: AXL_Resume may follow
        else:
            raise UsageError(f"transfer type {xtype} is not supported by axlpy (supported: "
                             "DEFAULT, SYNC, PTHREAD, URING, STATE_FILE)")
        with _lock:
            tid = _next_id
            _next_id += 1
            _transfers[tid] = t
        return tid

    return _guard(create)


def AXL_Add(id: int, src: str, dst: str) -> int:
    """Add a file or directory tree to a transfer that was not dispatched yet."""
    return _guard(lambda: _call(id, "add", src, dst))


def AXL_Dispatch(id: int) -> int:
    """Start the transfer (SYNC: returns when done)."""
    return _guard(lambda: _call(id, "dispatch"))


def AXL_Test(id: int) -> int:
    """Never blocks: AXL_SUCCESS when complete, AXL_RUNNING while running, AXL_FAILURE if
    it failed or was cancelled (the reason in AXL_LastError)."""
    def test() -> int:
        t = _get(id)
        if t.test():
            return AXL_SUCCESS
        if t.running:
            return AXL_RUNNING
        state = t.state
        if state is TransferState.FAILED:
            raise AxlError(f"transfer {t.name!r} failed: {t.status().error}")
        return AXL_RUNNING if state is not TransferState.CREATED else AXL_FAILURE

    return _guard(test)


def AXL_Wait(id: int) -> int:
    """Block until the transfer ends. AXL_SUCCESS when complete or cancelled."""
    def wait() -> int:
        t = _get(id)
        try:
            t.wait()
        except TransferCancelledError:
            return AXL_SUCCESS
        return AXL_SUCCESS

    return _guard(wait)


def AXL_Cancel(id: int) -> int:
    """Cancel: stop, remove temps and anything published, journal CANCELLED."""
    return _guard(lambda: _call(id, "cancel"))


def AXL_Free(id: int) -> int:
    """Forget a finished or cancelled transfer (its journal rows are removed)."""
    def free() -> int:
        _get(id).free()
        with _lock:
            _transfers.pop(id, None)
        return AXL_SUCCESS

    return _guard(free)


def AXL_Resume(id: int) -> int:
    """Resume a reloaded transfer (or one that failed); as in C AXL, a COMPLETED one is
    left alone (AXL_SUCCESS) and one never dispatched is dispatched."""
    def resume() -> int:
        t = _get(id)
        if t.state is TransferState.CREATED:
            t.dispatch()
        else:
            t.resume()
        return AXL_SUCCESS

    return _guard(resume)


def AXL_Stop() -> int:
    """Cancel every unfinished transfer, wait for them and free them all."""
    def stop() -> int:
        failed: AxlError | None = None
        for tid, t in list(_transfers.items()):
            try:
                t.stop()
            except AxlError as exc:
                failed = failed or exc
            with _lock:
                _transfers.pop(tid, None)
        if failed is not None:
            raise failed
        return AXL_SUCCESS

    return _guard(stop)
