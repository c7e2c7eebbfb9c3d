"""CRC32C (Castagnoli) of bytes and files, through the ``crc32c`` package.

``crc32c.crc32c`` takes any buffer (memoryviews included), continues from ``value``, and
releases the GIL on large inputs, so worker threads checksum in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

import os

import crc32c as _crc32c

__all__ = ["crc32c", "file_crc32c"]


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` (the CRC of what came before)."""
    return int(_crc32c.crc32c(data, value=value))


def file_crc32c(fd: int, length: int, *, start: int = 0, value: int = 0,
                buf: bytearray | None = None) -> tuple[int, int]:
    """CRC32C of ``length`` bytes of ``fd`` from ``start``, continuing from ``value``.

    Returns ``(crc, bytes_read)``; ``bytes_read < length`` means the file is shorter.
    Reads with pread into one reused buffer, so memory does not grow with the file.
    """
    buf = buf if buf is not None else bytearray(4 << 20)
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
