"""Parse ``strace -f -y -o FILE`` output into a list of completed syscalls."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

__all__ = ["Call", "parse", "strace_unavailable_reason"]

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(?:\s+(\w+))?")
_FD = re.compile(r"^(-?\d+|AT_FDCWD)<(.*)>$")


@dataclass
class Call:
    """One completed syscall. ``paths`` resolves fd and name arguments to absolute paths."""

    idx: int
    pid: int
    name: str
    args: list[str]
    ret: int
    err: str | None
    injected: bool
    raw: str
    paths: list[str] = field(default_factory=list)
    data: str = ""


def strace_unavailable_reason() -> str | None:
    """Why the strace sweeps cannot run here, or None."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    return None


def _split_args(s: str) -> list[str]:
    """Split a strace argument list on top-level commas (strings and brackets respected)."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    i = 0
    in_str = False
    while i < len(s):
        c = s[i]
        if in_str:
            cur.append(c)
            if c == "\\" and i + 1 < len(s):
                cur.append(s[i + 1])
                i += 2
                continue
            if c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            cur.append(c)
        elif c in "[{(<":
            depth += 1
            cur.append(c)
        elif c in "]})>":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


def _unquote(s: str) -> str:
    s = s.rstrip(".")
    if s.startswith('"') and s.endswith('"'):
        s = s[1:-1]
    return s.encode("latin-1", "backslashreplace").decode("unicode_escape", "replace")


def _fd_path(arg: str) -> str | None:
    m = _FD.match(arg)
    return m.group(2).removesuffix(" (deleted)") if m else None


def _join(dirarg: str, name: str) -> str:
    n = _unquote(name)
    if n.startswith("/"):
        return os.path.normpath(n)
    d = _fd_path(dirarg) or ""
    return os.path.normpath(os.path.join(d, n))


def parse(text: str) -> list[Call]:
    """Completed calls in completion order (``<unfinished ...>`` pairs are joined)."""
    pending: dict[int, str] = {}
    calls: list[Call] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        if rest.startswith("<..."):
            head = pending.pop(pid, "")
            tail = rest.split("resumed>", 1)[1] if "resumed>" in rest else ""
            rest = head + tail
        cm = _CALL.match(rest)
        if not cm:
            continue
        name, argstr, ret, err = cm.groups()
        args = _split_args(argstr)
        c = Call(len(calls), pid, name, args, int(ret) if ret != "?" else -1, err,
                 "(INJECTED)" in rest, rest)
        _resolve(c)
        calls.append(c)
    return calls


def _resolve(c: Call) -> None:
    a = c.args
    n = c.name
    try:
        if n in ("write", "pwrite64", "pwritev", "pwritev2", "writev", "fsync", "fdatasync",
                 "close", "ftruncate", "syncfs"):
            p = _fd_path(a[0])
            c.paths = [p] if p else []
            if n == "write" and len(a) > 1:
                c.data = _unquote(a[1])
        elif n == "openat":
            c.paths = [_join(a[0], a[1])]
        elif n in ("renameat", "renameat2"):
            c.paths = [_join(a[0], a[1]), _join(a[2], a[3])]
        elif n == "rename":
            c.paths = [os.path.normpath(_unquote(a[0])), os.path.normpath(_unquote(a[1]))]
        elif n in ("unlinkat", "mkdirat"):
            c.paths = [_join(a[0], a[1])]
        elif n in ("unlink", "mkdir", "rmdir"):
            c.paths = [os.path.normpath(_unquote(a[0]))]
    except IndexError:
        pass
