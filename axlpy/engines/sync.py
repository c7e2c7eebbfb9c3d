"""SYNC: every file is copied in the caller's thread, one at a time (AXL_XFER_SYNC)."""

from __future__ import annotations

from collections.abc import Generator, Sequence

from ._base import Engine, StageContext, StageResult, StageTask
from ._copy import stage_file
from .threaded import name_file

__all__ = ["BackgroundSyncEngine", "SyncEngine"]


class SyncEngine(Engine):
    """Copies in the thread that calls ``dispatch()``; ``dispatch()`` returns when done."""

    name = "sync"
    background = False

    def stage(
        self, tasks: Sequence[StageTask], ctx: StageContext
    ) -> Generator[StageResult, None, None]:
        # One chunk-sized buffer, reused for every file: memory does not grow with size.
        buf = bytearray(ctx.chunk_size)
        queue = ctx.open_queue()
        try:
            for task in tasks:
                try:
                    res = stage_file(task, ctx, queue, buf)
                except Exception as exc:
                    raise name_file(exc, task)  # noqa: B904 (keeps its own __cause__)
                yield res
        finally:
            queue.close()


class BackgroundSyncEngine(SyncEngine):
    """The SYNC engine's staging on the transfer's background thread (``dispatch()``
    returns at once): what DEFAULT runs for transfers too small to gain from worker
    threads or a ring (see ``get_engine``)."""

    name = "default"
    background = True
