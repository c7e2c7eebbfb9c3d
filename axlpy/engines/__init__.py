"""Engines: who drives the IO queues, on which threads. Chosen by transfer type."""

from __future__ import annotations

from .._errors import UsageError
from ._base import Engine, StageContext, StageResult, StageTask

__all__ = ["Engine", "StageContext", "StageResult", "StageTask", "get_engine"]


def get_engine(type_name: str) -> Engine:
    """The engine for a transfer type name (see :class:`axlpy.TransferType`)."""
    if type_name in ("sync", "default"):
        from .sync import SyncEngine

        return SyncEngine()
    raise UsageError(f"transfer type {type_name!r} has no engine in this axlpy")
