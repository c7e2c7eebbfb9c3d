"""The io_uring probe's verdict, remembered per boot so each command does not re-probe.

The probe (``probe_queue("uring")``) runs a child Python that opens a ring: about half a
second of a short command's start-up. Its verdict depends on the kernel, its settings and
the liburing build, none of which change while the machine is up, so it is kept in
``$XDG_CACHE_HOME/axlpy/probe-uring.json`` (``~/.cache``), keyed by the boot id
(``/proc/sys/kernel/random/boot_id``), the liburing version, the Python executable and
the probe's own code. The file is the user's own (directory 0700, file 0600, written to a
temp and renamed). ``AXLPY_PROBE_CACHE=0`` turns the cache off.

A cached verdict is only ever a shortcut, never a risk: the liburing version is checked
in this process before the cache is read (an unsupported build, which can die with
SIGILL, is never imported whatever the file says), and a ring that then fails to open
falls back to POSIX as without a cache. Any entry that is not exactly what this process
would write — unreadable, another owner, group/other permissions, a symlink, not JSON,
another key, a verdict of the wrong type — is ignored and the probe runs again.

On disk if the process dies while writing: at worst a stray ``probe-uring.json.<random>``
temp in the cache directory (ignored, replaced by the next write); the entry itself is
either the old one or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["ENV_PROBE_CACHE", "cache_path", "cached_verdict", "probe_key"]

#: ``AXLPY_PROBE_CACHE=0`` disables the cache (every process probes)
ENV_PROBE_CACHE = "AXLPY_PROBE_CACHE"

#: bigger than any entry this module writes
_MAX_BYTES = 64 << 10


def cache_path(name: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "axlpy", f"probe-{name}.json")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def probe_key(lib_version: str, probe_code: str) -> dict[str, str] | None:
    """What a verdict depends on; ``None`` (do not cache) when there is no boot id."""
    boot = _boot_id()
    if boot is None:
        return None
    return {
        "boot_id": boot,
        "lib_version": lib_version,
        "python": sys.executable,
        "probe": hashlib.sha256(probe_code.encode()).hexdigest(),
        "uid": str(os.geteuid()),
    }


def _read(path: str) -> Any:
    """The JSON in ``path`` if it is the user's own private regular file, else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o077 or st.st_size > _MAX_BYTES):
            return None
        data = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except ValueError:
        return None


def _write(path: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` to ``path`` (0600, temp + rename); errors are ignored."""
    d = os.path.dirname(path)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return  # someone else's or a shared directory: do not write there
    except OSError:
        return
    tmp = f"{path}.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def cached_verdict(name: str, key: dict[str, str] | None,
                   probe: Callable[[], str | None]) -> str | None:
    """``probe()``'s verdict (``None`` = works, else the reason), from the cache when an
    entry for exactly ``key`` is there, else probed now and stored."""
    if key is None or os.environ.get(ENV_PROBE_CACHE, "1") == "0":
        return probe()
    path = cache_path(name)
    entry = _read(path)
    if (isinstance(entry, dict) and set(entry) == {"key", "verdict"}
            and entry["key"] == key
            and (entry["verdict"] is None or isinstance(entry["verdict"], str))):
        verdict: str | None = entry["verdict"]
        return verdict
    verdict = probe()
    # A probe that could not run at all (timeout, fork failure) says nothing lasting.
    if verdict is None or not verdict.startswith("probe failed to run"):
        _write(path, {"key": key, "verdict": verdict})
    return verdict
