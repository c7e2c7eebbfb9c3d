"""The public surface: everything in __all__ exists, is sorted, and nothing optional is
imported by ``import axlpy``."""

from __future__ import annotations

import subprocess
import sys

import axlpy
from axlpy import _errors, compat


def test_all_sorted_and_present():
    assert list(axlpy.__all__) == sorted(axlpy.__all__)
    for name in axlpy.__all__:
        assert hasattr(axlpy, name), name


def test_every_error_is_exported_and_rooted():
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        assert issubclass(cls, axlpy.AxlError)
        assert getattr(axlpy, name) is cls


def test_compat_all_present():
    for name in compat.__all__:
        assert hasattr(compat, name), name


def test_import_does_not_pull_optional_backends():
    code = ("import sys, axlpy, axlpy.compat; "
            "print(sorted(m for m in ('liburing', 'pyverbs', 'mpi4py', 'mfusepy')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
