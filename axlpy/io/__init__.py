"""IO queues behind one small interface (see ``_base``), found by name in one registry.

Backends are imported lazily, on first use, so ``import axlpy`` works without liburing
or pyverbs. Asking for one whose library, kernel feature or device is missing raises
:class:`~axlpy.BackendUnavailableError` with an install hint;
:func:`open_default_queue` catches that and falls back to POSIX, logging why once.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from typing import Any

from .._errors import BackendUnavailableError, UsageError
from ._base import Completion, IOOp, IOQueue, IORequest, SubmitError
from ._fallback import BackendStats, FallbackIOQueue
from ._faulty import FaultyIOQueue
from ._memory import MemoryFiles, MemoryIOQueue
from ._posix import PosixIOQueue

__all__ = [
    "ENV_QUEUE",
    "REGISTRY",
    "BackendStats",
    "Completion",
    "FallbackIOQueue",
    "FaultyIOQueue",
    "IOOp",
    "IOQueue",
    "IORequest",
    "MemoryFiles",
    "MemoryIOQueue",
    "PosixIOQueue",
    "SubmitError",
    "available_queues",
    "default_queue_name",
    "get_queue_class",
    "open_default_queue",
    "open_queue",
    "probe_queue",
]

log = logging.getLogger("axlpy.io")

#: environment variable that overrides :func:`default_queue_name` ("posix", "uring", ...)
ENV_QUEUE = "AXLPY_IO_QUEUE"

#: name -> where the class lives and what to do when it cannot be loaded
REGISTRY: dict[str, dict[str, str]] = {
    "posix": {"class": "axlpy.io._posix.PosixIOQueue", "err": ""},
    "memory": {"class": "axlpy.io._memory.MemoryIOQueue", "err": ""},
    "uring": {
        "class": "axlpy.io._uring.UringIOQueue",
        "err": "io_uring needs liburing==2024.5.3: pip install 'axlpy[uring]'",
    },
    "rdma": {
        "class": "axlpy.io._rdma.VerbsIOQueue",
        "err": "RDMA needs pyverbs matching the system's libibverbs and an RDMA device: "
        "pip install 'axlpy[rdma]' (or apt install python3-pyverbs)",
    },
    "fallback": {"class": "axlpy.io._fallback.FallbackIOQueue", "err": ""},
}

#: the order :func:`default_queue_name` tries, fastest first
_PREFERENCE = ("uring", "posix")


def get_queue_class(name: str) -> type[IOQueue]:
    """Import and return the class registered as ``name``.

    Raises:
        UsageError: no queue is registered under ``name``.
        BackendUnavailableError: its module cannot be imported (the message says how to
            install what is missing).
    """
    try:
        entry = REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown IO queue {name!r}; known: {sorted(REGISTRY)}") from None
    module_name, _, cls_name = entry["class"].rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"{entry['err'] or name}: {exc}") from exc
    cls: type[IOQueue] = getattr(module, cls_name)
    return cls


def open_queue(name: str = "posix", **kwargs: Any) -> IOQueue:
    """Open the queue registered as ``name`` with its constructor's keyword arguments.

    ``open_queue("fallback", primary="uring", fallback="posix", **options)`` builds a
    :class:`FallbackIOQueue` over two registered queues (the POSIX fallback is opened
    with ``reopen_direct=True``); ``depth`` is passed to both.

    Raises:
        UsageError: unknown name.
        BackendUnavailableError: the backend cannot run here (library, kernel feature or
            device missing); nothing was opened.
    """
    if name == "fallback":
        primary_name = kwargs.pop("primary", "uring")
        fallback_name = kwargs.pop("fallback", "posix")
        depth = kwargs.pop("depth", 64)
        fb_kwargs: dict[str, Any] = {"depth": depth}
        if fallback_name == "posix":
            fb_kwargs["reopen_direct"] = True
        primary = open_queue(primary_name, depth=depth)
        try:
            return FallbackIOQueue(primary, open_queue(fallback_name, **fb_kwargs), **kwargs)
        except BaseException:
            primary.close()
            raise
    cls = get_queue_class(name)
    return cls(**kwargs)


@functools.cache
def probe_queue(name: str) -> str | None:
    """Can ``name`` run here? ``None`` if it can, else the reason. Cached per process.

    io_uring is probed in a child process (the parent checks the installed liburing
    version first and never imports an unsupported build), which opens a ring and
    moves a few bytes through it; its verdict is also cached per boot on disk (see
    ``_probe_cache``). RDMA is probed by listing devices.
    """
    if name in ("posix", "memory", "fallback"):
        return None
    if name == "uring":
        try:
            version = _check_liburing_version()
        except BackendUnavailableError as exc:
            return str(exc)
        from ._probe_cache import cached_verdict, probe_key

        return cached_verdict("uring", probe_key(version, _URING_PROBE),
                              lambda: _probe_in_child(_URING_PROBE))
    if name == "rdma":
        from ._rdma import probe_rdma

        return probe_rdma()
    return f"unknown IO queue {name!r}"


def available_queues() -> list[str]:
    """Registered queues that can run here, in registry order."""
    return [name for name in REGISTRY if probe_queue(name) is None]


def default_queue_name() -> str:
    """The fastest queue that works here: ``"uring"`` if it can run, else ``"posix"``.

    ``AXLPY_IO_QUEUE`` overrides the choice (it must name a registered queue).
    """
    forced = os.environ.get(ENV_QUEUE)
    if forced:
        if forced not in REGISTRY:
            raise UsageError(f"{ENV_QUEUE}={forced!r} is not one of {sorted(REGISTRY)}")
        return forced
    for name in _PREFERENCE:
        reason = probe_queue(name)
        if reason is None:
            return name
        _log_once(name, reason)
    return "posix"  # pragma: no cover - posix always probes fine


def open_default_queue(depth: int = 64, **fallback_options: Any) -> IOQueue:
    """Open the fastest available queue, wrapped so failed IO is retried on POSIX.

    With io_uring available this is ``FallbackIOQueue(UringIOQueue(depth),
    PosixIOQueue(depth, reopen_direct=True), **fallback_options)``; without it, a
    ``PosixIOQueue``. A backend that probes fine but fails to open is logged once and
    skipped, never raised.
    """
    name = default_queue_name()
    if name in ("posix", "memory"):
        return open_queue(name, depth=depth)
    try:
        if name == "fallback":
            return open_queue("fallback", depth=depth, **fallback_options)
        return open_queue(
            "fallback", primary=name, fallback="posix", depth=depth, **fallback_options
        )
    except BackendUnavailableError as exc:
        _log_once(name, str(exc))
        return PosixIOQueue(depth)


@functools.cache
def _log_once(name: str, reason: str) -> None:
    log.info("IO queue %s unavailable, falling back: %s", name, reason)


def _check_liburing_version() -> str:
    """The installed liburing's version if it is the one axlpy supports, else
    BackendUnavailableError: :func:`axlpy.io._uring.check_liburing_version`, the one
    check (it never imports liburing)."""
    from ._uring import check_liburing_version

    return check_liburing_version()


_URING_PROBE = """
import os, tempfile
from axlpy.io._uring import UringIOQueue
q = UringIOQueue(4)
with tempfile.TemporaryFile() as f:
    q.prep_write(f.fileno(), b"axlpy-probe", 0)
    q.submit()
    [c] = q.reap(1, 10.0)
    assert c.result == 11, c.result
    buf = bytearray(16)
    q.prep_read(f.fileno(), buf, 0)
    q.submit()
    [c] = q.reap(1, 10.0)
    assert c.result == 11 and bytes(buf[:11]) == b"axlpy-probe", (c.result, buf)
q.close()
"""


def _probe_in_child(code: str) -> str | None:
    import subprocess  # here: only a probe that is not cached needs it (start-up time)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probe failed to run: {exc}"
    if proc.returncode == 0:
        return None
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return f"probe exited {proc.returncode}: {tail}"
