"""Sweep f: a hypothesis ``RuleBasedStateMachine`` over the API verbs.

Rules: ``start``, ``resume`` and ``cancel``, each in a child process and each optionally
killed at a crash point hypothesis chooses. The model is what must be on disk: NONE (no
transfer yet), OPEN (started, not finished: any temps, no partial final), COMPLETED
(acknowledged: every destination correct, journal COMPLETED), CANCELLED (nothing under
the destinations, journal CANCELLED). After every step the invariants of the model state
are checked, and "no final name holds a partial or wrong file; sources intact" always.

Not modelled here: power loss (sweep e covers it; remounting FUSE per step would make
each example take tens of seconds) and concurrent verbs from two live processes
(ownership is tested in tests/unit).
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any

from .invariants import check, check_crashed, journal_info
from .runner import CaseResult, base_env, run_child, scratch
from .scenarios import SCENARIOS, build

__all__ = ["model_cases"]

_START_POINTS = ("create.after_commit", "dispatch.after_commit", "stage.after_write",
                 "stage.after_commit", "publish.after_rename", "publish.after_commit",
                 "renamed.after_commit", "complete.after_commit")
_RESUME_POINTS = ("resume.after_takeover", "stage.after_write", "publish.after_rename",
                  "renamed.after_commit")
_CANCEL_POINTS = ("cancel.after_unlink_temp", "cancel.after_unlink_final",
                  "cancel.after_rmdir", "cancel.after_dir_fsync", "cancel.after_commit")


def _machine(planted: str | None, problems: list[str]) -> type[Any]:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    scen = SCENARIOS["tree"]

    class TransferMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.root = scratch("model")
            self.lay, self.man = build(scen, self.root)
            self.spec = functools.partial(self.lay.spec, scen, "sync")
            self.env = base_env(planted=planted)
            self.model = "NONE"

        def teardown(self) -> None:
            shutil.rmtree(self.root, ignore_errors=True)

        def _run(self, op: str, crash: str | None) -> str:
            e = dict(self.env)
            if crash:
                e["AXLPY_CRASH_AT"] = crash
            r = run_child(self.spec(op), e)
            if r.killed:
                return "killed"
            if r.ok:
                return "ok"
            return f"{(r.result or {}).get('error_type')}: {(r.result or {}).get('error')}"

        def _state(self) -> str | None:
            s = journal_info(self.lay.journal).get("state")
            return None if s is None else str(s)

        @precondition(lambda self: self.model == "NONE")
        @rule(crash=st.sampled_from((None, *_START_POINTS)))
        def start(self, crash: str | None) -> None:
            out = self._run("start", crash)
            if out == "ok":
                self.model = "COMPLETED"
            elif out == "killed":
                self.model = "OPEN" if self._state() is not None else "NONE"
            else:
                raise AssertionError(f"start failed: {out}")

        @precondition(lambda self: self.model != "NONE")
        @rule(crash=st.sampled_from((None, *_RESUME_POINTS)))
        def resume(self, crash: str | None) -> None:
            out = self._run("resume", crash)
            state = self._state()
            if self.model == "CANCELLED":
                if out == "ok" or state != "CANCELLED":
                    raise AssertionError(f"resume of a cancelled transfer: {out}, {state}")
            elif out == "ok":
                self.model = "COMPLETED"
            elif out == "killed":
                self.model = "COMPLETED" if state == "COMPLETED" else "OPEN"
            elif state == "CREATED" and "dispatch it first" in out:
                pass  # documented: an undispatched transfer is not resumable
            elif state == "CANCELLED":
                self.model = "CANCELLED"
            else:
                raise AssertionError(f"resume failed: {out}")

        @precondition(lambda self: self.model != "NONE")
        @rule(crash=st.sampled_from((None, *_CANCEL_POINTS)))
        def cancel(self, crash: str | None) -> None:
            out = self._run("cancel", crash)
            state = self._state()
            if self.model == "COMPLETED":
                if out == "ok" or state != "COMPLETED":
                    raise AssertionError(f"cancel of a completed transfer: {out}, {state}")
            elif out == "ok":
                self.model = "CANCELLED"
            elif out == "killed":
                self.model = "CANCELLED" if state == "CANCELLED" else "OPEN"
            elif state == "COMPLETED":
                self.model = "COMPLETED"
            else:
                raise AssertionError(f"cancel failed: {out}")

        @invariant()
        def on_disk(self) -> None:
            bad = check_crashed(self.lay, self.man)
            if self.model == "COMPLETED":
                bad += check(self.lay, self.man, "complete")
            elif self.model == "CANCELLED":
                bad += check(self.lay, self.man, "cancelled")
            elif self.model == "OPEN":
                s = self._state()
                if s not in ("CREATED", "DISPATCHED", "RENAMED", "FAILED", "COMPLETED"):
                    bad.append(f"model OPEN but journal says {s}")
            if bad:
                problems.extend(bad)
                raise AssertionError("; ".join(bad))

    return TransferMachine


def model_case(planted: str | None = None, examples: int = 25) -> CaseResult:
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    problems: list[str] = []
    machine = _machine(planted, problems)
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=examples, stateful_step_count=5, deadline=None, database=None,
            suppress_health_check=list(HealthCheck)))
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {str(exc)[:3000]}")
    return CaseResult("f:model", f"state machine ({examples} examples, <=5 steps)",
                      "ok" if not problems else "counterexample", problems)


def model_cases(planted: str | None = None) -> list[Any]:
    return [functools.partial(model_case, planted)]


_ = os
