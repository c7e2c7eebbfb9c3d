"""Fault-injection harness for axlpy: kill at every step, fail syscalls, cut the power.

Every case runs one axlpy operation in a child process (:mod:`fault_injection.child`), kills
or fails it, recovers in a fresh process and checks the invariants of
:mod:`fault_injection.invariants`. The sweeps live in :mod:`fault_injection.sweeps`; the
command line is ``python -m fault_injection`` (see ``docs/fault-injection.md``).
"""

from __future__ import annotations

__all__: list[str] = []
