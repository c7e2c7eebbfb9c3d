"""Third-party modules loaded without the machinery axlpy never needs.

Start-up time of every ``axlpy`` command and of ``import axlpy`` is the reason this module
exists (docs/benchmarks.md). :func:`crc32c_function` loads the ``crc32c`` package's
extension module without running the package's ``__init__``, which reads its own version
through ``importlib.metadata`` (about 35 ms of CPU, a quarter of a short command's
budget); :func:`dist_version` reads an installed distribution's version from its
``.dist-info`` directory name for the same reason.

:func:`sqlite_utils` imports ``sqlite_utils`` without the ``numpy``/``pandas`` it tries
(over 100 ms); it is needed only to create a new journal's tables: every other journal
read and write is plain :mod:`sqlite3` on the same connection (issue 14.5).

Nothing here writes to the disk.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable
from types import ModuleType

__all__ = ["crc32c_function", "dist_version", "sqlite_utils"]

#: imports ``sqlite_utils`` tries and axlpy has no use for
_UNWANTED = ("numpy", "pandas")

_lock = threading.Lock()


def sqlite_utils() -> ModuleType:
    """The ``sqlite_utils`` module, imported once, without ``numpy``/``pandas``: they are
    refused only in this thread and only while ``sqlite_utils`` itself is being imported
    (another thread importing them meanwhile keeps them, and ``sqlite_utils`` then sees
    them, as it would anyway)."""
    import importlib

    if "sqlite_utils" in sys.modules:  # import_module waits for a half-done import
        return importlib.import_module("sqlite_utils")
    import importlib.abc

    thread = threading.get_ident()
    refused = frozenset(n for n in _UNWANTED if n not in sys.modules)

    class NotHere(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: object = None,
                      target: object = None) -> None:
            if fullname in refused and threading.get_ident() == thread:
                raise ModuleNotFoundError(
                    f"{fullname} is not imported for sqlite_utils by axlpy", name=fullname)
            return None

    with _lock:
        if "sqlite_utils" in sys.modules:
            return importlib.import_module("sqlite_utils")
        blocker = NotHere()
        sys.meta_path.insert(0, blocker)
        try:
            return importlib.import_module("sqlite_utils")
        finally:
            sys.meta_path.remove(blocker)


def crc32c_function() -> Callable[..., int]:
    """``crc32c.crc32c`` (``(data, value=0) -> int``), loaded without the package's
    ``__init__`` when its extension module is found beside it, else imported normally."""
    if "crc32c" not in sys.modules:
        import importlib.machinery
        import importlib.util

        spec = importlib.util.find_spec("crc32c")  # locates, runs nothing
        for loc in (spec.submodule_search_locations or []) if spec else []:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(loc, "_crc32c" + suffix)
                if not os.path.isfile(path):
                    continue
                loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                ext = importlib.util.spec_from_file_location("crc32c._crc32c", path,
                                                            loader=loader)
                if ext is None:
                    continue
                mod = importlib.util.module_from_spec(ext)
                loader.exec_module(mod)
                fn: Callable[..., int] = mod.crc32c
                return fn
    from crc32c import crc32c

    return crc32c


_DIST_INFO = re.compile(r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<version>[^-]+)\.dist-info$")


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``None`` if not installed): the
    first ``<name>-<version>.dist-info`` along ``sys.path``, as ``importlib.metadata``
    finds it, else ``importlib.metadata`` itself (egg-info and other layouts)."""
    want = re.sub(r"[-_.]+", "_", name).lower()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for d in names:
            m = _DIST_INFO.match(d)
            if m and re.sub(r"[-_.]+", "_", m["name"]).lower() == want:
                return m["version"]
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
