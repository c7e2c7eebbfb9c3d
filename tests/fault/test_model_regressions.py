"""Counterexamples the state-machine sweep (``python -m fault_injection model``) found,
replayed step by step as fixed tests (each step is a real child process, killed at a real
crash point)."""

from __future__ import annotations

from fault_injection.model import _machine


def _replay(steps: list[tuple[str, str | None]]) -> list[str]:
    problems: list[str] = []
    m = _machine(None, problems)()
    try:
        m.on_disk()
        for rule, crash in steps:
            getattr(m, rule)(crash=crash)
            m.on_disk()
    except AssertionError as exc:
        problems.append(str(exc))
    finally:
        m.teardown()
    return problems


def test_resume_after_a_cancel_died_removing_published_files_of_a_renamed_transfer():
    """Found 2026-12-01: start died after RENAMED was committed, a cancel died after
    unlinking published files, and resume committed COMPLETED over the missing files (it
    skipped straight to COMPLETED from RENAMED). Resume now finishes the cancel."""
    assert _replay([("start", "renamed.after_commit"),
                    ("cancel", "cancel.after_unlink_final"),
                    ("resume", None)]) == []
