"""Rendering for the command line: terminal-safe text, sizes, ages, tables, JSON.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import re
from collections.abc import Iterator
from typing import IO, Any

import click

#: what must not reach a terminal raw: C0/C1 controls and DEL (escape sequences, \\n that
#: splits a row, \\r that overwrites it), line/paragraph separators, and bidi overrides
#: that reorder what is displayed
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _safe(text: str) -> str:
    """Text for a terminal, as ``ls -b`` shows names: control characters become visible
    escapes (``\\n``, ``\\x1b``, ``\\u202e``). Human output only; JSON stays exact."""
    return _UNSAFE.sub(_escape_char, text)


def _safe_lines(text: str) -> str:
    """:func:`_safe` for each line of a multi-line message (its own newlines stay)."""
    return "\n".join(_safe(line) for line in text.split("\n"))


def _say(text: str = "", *, err: bool = False) -> None:
    """Print human-readable output. Every field was escaped where it was formatted; this
    is the last guard for anything that was not (an error text, a log line)."""
    click.echo(_safe_lines(text), err=err)


def _show(p: bytes | str) -> str:
    """A path for people: bytes that are not UTF-8 are shown as ``\\xNN``, control
    characters escaped (see :func:`_safe`)."""
    b = os.fsencode(p) if isinstance(p, str) else p
    return _safe(b.decode("utf-8", "backslashreplace"))


def _path_fields(key: str, p: bytes | None) -> dict[str, Any]:
    """``{key: str}`` for JSON, plus ``{key}_b64`` with the raw bytes when they are not
    valid UTF-8 (the str then holds ``\\udcNN`` escapes, Python's surrogateescape)."""
    if p is None:
        return {key: None}
    out: dict[str, Any] = {key: os.fsdecode(p)}
    try:
        p.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(p).decode("ascii")
    return out


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _human_duration(sec: float) -> str:
    sec = max(0, int(sec))
    if sec < 3600:
        return f"{sec // 60}:{sec % 60:02d}"
    return f"{sec // 3600}:{sec % 3600 // 60:02d}:{sec % 60:02d}"


def _human_age(sec: float) -> str:
    sec = max(0.0, sec)
    if sec < 60:
        return f"{sec:.0f}s"
    if sec < 3600:
        return f"{sec / 60:.0f}m"
    if sec < 86400:
        return f"{sec / 3600:.1f}h"
    return f"{sec / 86400:.1f}d"


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC).isoformat(timespec="milliseconds")


def _crc_hex(v: int | None) -> str | None:
    return None if v is None else f"{v & 0xFFFFFFFF:08x}"


def _emit_json(obj: Any) -> None:
    # ensure_ascii: a path with undecodable bytes becomes "\udcNN", never invalid output
    files = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(files, Iterator):
        click.echo(json.dumps(obj, ensure_ascii=True, sort_keys=False))
        return
    # A generator of files (status): the rest first, then the list streamed in batches,
    # so 100,000 files are never one string in memory.
    head = json.dumps({k: v for k, v in obj.items() if k != "files"}, ensure_ascii=True)
    click.echo(head[:-1] + (', "files": [' if head != "{}" else '{"files": ['), nl=False)
    enc = json.JSONEncoder(ensure_ascii=True).encode
    sep, buf = "", []
    for f in files:
        buf.append(sep + enc(f))
        sep = ", "
        if len(buf) >= 2000:
            click.echo("".join(buf), nl=False)
            buf = []
    click.echo("".join(buf) + "]}")


def _table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[_safe(c) for c in r] for r in rows]  # a \\n in a name must not split a row
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def _admission_text(counts: dict[str, int]) -> str:
    """``admitted 12, waited 3, ...``: admission counters in a fixed order."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
