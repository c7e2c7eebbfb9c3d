"""Engines: who drives the IO queues, on which threads. Chosen by transfer type.

============  =====================================  ==============================
type          engine                                 IO queue when none is named
============  =====================================  ==============================
``sync``      :class:`SyncEngine` (caller's thread)  ``posix``
``pthread``   :class:`PthreadEngine` (workers)       ``posix``
``uring``     :class:`UringEngine` (one thread)      ``uring``
``default``   UringEngine if io_uring works here,    ``default`` (io_uring with POSIX
              else PthreadEngine                     fallback), else ``posix``
============  =====================================  ==============================
"""

from __future__ import annotations

from .._errors import UsageError
from ._base import Engine, StageContext, StageResult, StageTask

__all__ = ["ENGINE_TYPES", "Engine", "StageContext", "StageResult", "StageTask", "get_engine"]

#: every transfer type name that has an engine
ENGINE_TYPES = ("default", "sync", "pthread", "uring")


def get_engine(type_name: str) -> Engine:
    """The engine for a transfer type name (see :class:`axlpy.TransferType`).

    ``"default"`` is the fastest available with fallback: the io_uring engine over a
    ``FallbackIOQueue`` (io_uring, failed requests redone on POSIX) where io_uring works
    (probed once per process, in a child process), else the threaded engine on POSIX.
    ``"uring"`` asks for io_uring itself: a transfer fails at dispatch with
    :class:`~axlpy.BackendUnavailableError` where it cannot run.
    """
    if type_name == "sync":
        from .sync import SyncEngine

        return SyncEngine()
    if type_name == "pthread":
        from .threaded import PthreadEngine

        return PthreadEngine()
    if type_name == "uring":
        from .uring import UringEngine

        return UringEngine("uring")
    if type_name == "default":
        from ..io import probe_queue

        if probe_queue("uring") is None:
            from .uring import UringEngine

            return UringEngine("default")
        from .threaded import PthreadEngine

        return PthreadEngine()
    raise UsageError(f"transfer type {type_name!r} has no engine in this axlpy")
