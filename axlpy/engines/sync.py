"""SYNC: every file is copied in the caller's thread, one at a time (AXL_XFER_SYNC)."""

from __future__ import annotations

from collections.abc import Generator, Iterable

from .._errors import TransferCancelledError
from ..io import IOQueue
from ._base import Engine, StageContext, StageResult, StageTask
from ._stager import FileStager, name_file

__all__ = ["BackgroundSyncEngine", "SyncEngine"]


class SyncEngine(Engine):
    """Copies in the thread that calls ``dispatch()``; ``dispatch()`` returns when done."""

    name = "sync"
    background = False

    def stage(
        self, tasks: Iterable[StageTask], ctx: StageContext
    ) -> Generator[StageResult, None, None]:
        # One chunk-sized buffer, reused for every file: memory does not grow with size.
        buf = bytearray(ctx.chunk_size)
        queue = ctx.open_queue()
        try:
            for task in tasks:
                st = FileStager(task, ctx)
                try:
                    if st.fits(len(buf)):
                        if ctx.cancel.is_set():
                            raise TransferCancelledError(
                                f"cancelled before copying {st.dst!r}", path=st.dst)
                        res = st.copy_small(queue, buf)
                    else:
                        res = _copy(st.open(), ctx, queue, buf)
                except Exception as exc:
                    raise name_file(exc, task)  # noqa: B904 (keeps its own __cause__)
                finally:
                    st.close()
                yield res
        finally:
            queue.close()


class BackgroundSyncEngine(SyncEngine):
    """The SYNC engine's staging on the transfer's background thread (``dispatch()``
    returns at once): what DEFAULT runs for transfers too small to gain from worker
    threads or a ring (see ``get_engine``)."""

    name = "default"
    background = True


def _copy(st: FileStager, ctx: StageContext, queue: IOQueue, buf: bytearray) -> StageResult:
    """Read, checksum, write one chunk at a time; commit each full extent when written."""
    mv = memoryview(buf)
    offset = st.task.resume_from
    while offset < st.size:
        if ctx.cancel.is_set():
            raise TransferCancelledError(f"cancelled while copying {st.dst!r}", path=st.dst)
        data = mv[:st.read_len(offset, len(buf))]
        n = st.read(queue, data, offset)
        st.chunk(offset, data)
        st.write(queue, data, offset)
        for ext in st.written(offset, n):
            st.commit(ext)
        offset += n
    return st.finish()
