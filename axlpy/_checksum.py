"""CRC32C (Castagnoli) of bytes and files, through the ``crc32c`` package.

``crc32c.crc32c`` takes any buffer (memoryviews included), continues from ``value``, and
releases the GIL on large inputs, so worker threads checksum in parallel. The function is
loaded from the package's extension module (see ``_imports``), for start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

import os

from ._imports import crc32c_function

_crc32c_impl = crc32c_function()

__all__ = ["crc32c", "file_crc32c"]


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` (the CRC of what came before)."""
    return int(_crc32c_impl(data, value=value))


def file_crc32c(fd: int, length: int, *, start: int = 0, value: int = 0,
                buf: bytearray | None = None) -> tuple[int, int]:
    """CRC32C of ``length`` bytes of ``fd`` from ``start``, continuing from ``value``.

    Returns ``(crc, bytes_read)``; ``bytes_read < length`` means the file is shorter.
    Reads with pread into one reused buffer, so memory does not grow with the file.
    """
    buf = buf if buf is not None else bytearray(min(4 << 20, max(length, 1)))
    mv = memoryview(buf)
    done = 0
    while done < length:
        want = min(len(buf), length - done)
        n = os.preadv(fd, [mv[:want]], start + done)
        if n == 0:
            break
        value = crc32c(mv[:n], value)
        done += n
    return value, done
