"""IO queues behind one small interface (see ``_base``), found by name in one registry."""

from __future__ import annotations

from ._base import Completion, IOOp, IOQueue, IORequest
from ._posix import PosixIOQueue

__all__ = ["Completion", "IOOp", "IOQueue", "IORequest", "PosixIOQueue", "open_queue"]


def open_queue(name: str = "posix", **kwargs: int) -> IOQueue:
    """Open the queue registered as ``name``."""
    if name == "posix":
        return PosixIOQueue(**kwargs)
    raise ValueError(f"unknown IO queue {name!r}")
