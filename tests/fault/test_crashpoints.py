"""Issue 2 item 9: SIGKILL a child at every registered crash point, then recover.

Each registered point is one test per recovery verb (and per transfer type for the
engine's own ``stage.*`` points): a small transfer is killed at that point — points that
only recovery reaches are reached by killing the transfer first and then killing the
recovery there — and a fresh process resumes or cancels. The invariants are the harness's
(``fault_injection.invariants``): destinations byte-identical and COMPLETED after resume;
no temps, no partial finals, sources intact and CANCELLED after cancel; journal integrity.
"""

from __future__ import annotations

from typing import Any

import pytest

from axlpy._crashpoints import CRASH_POINTS
from fault_injection.lifecycle import LIFECYCLE_OPS, LifecycleCase, is_lifecycle_point
from fault_injection.scenarios import SCENARIOS, available_types
from fault_injection.sweeps import COVERED_BY_TESTS, KillCase, code_crash_points

pytestmark = pytest.mark.timeout(300)

TYPES = available_types()

#: points only recovery reaches: (crash the start here first, tamper, recovery verb)
RECOVERY_ONLY: dict[str, tuple[str, str | None, str]] = {
    "cancel.after_unlink_temp": ("stage.after_commit", None, "cancel"),
    "cancel.after_unlink_final": ("publish.after_commit", None, "cancel"),
    "cancel.after_rmdir": ("stage.after_commit", None, "cancel"),
    "cancel.after_dir_fsync": ("stage.after_commit", None, "cancel"),
    "cancel.after_commit": ("stage.after_commit", None, "cancel"),
    "resume.after_takeover": ("stage.after_write", None, "resume"),
    "resume.after_remove_temp": ("stage.after_write", None, "resume"),
    "resume.after_reset_file": ("stage.after_commit", "drop-temp", "resume"),
}


def _cases() -> list[Any]:
    out: list[Any] = []
    for point in sorted(set(CRASH_POINTS) - set(COVERED_BY_TESTS)):
        types = TYPES if point.startswith("stage.") else TYPES[:1]
        # the lifecycle's points (pointer, prune) run after a commit, recovered by
        # prune or by gc + latest --repair (fault_injection.lifecycle)
        ops = LIFECYCLE_OPS if is_lifecycle_point(point) else ("resume", "cancel")
        for ttype in types:
            for op in ops:
                out.append(pytest.param(point, ttype, op, id=f"{point}-{ttype}-{op}"))
    return out


def _case(point: str, ttype: str, op: str) -> KillCase | LifecycleCase:
    if is_lifecycle_point(point):
        return LifecycleCase(point, 1, op)
    scen = SCENARIOS["move" if point.startswith(("move.", "renamed.")) else "tree"]
    if point in RECOVERY_ONLY:
        first, tamper, verb = RECOVERY_ONLY[point]
        return KillCase(scen, ttype, first, 1, op, tamper=tamper,
                        rec_crash=(point, 1), sweep="b", _rec_verb=verb)
    return KillCase(scen, ttype, point, 1, op)


@pytest.mark.parametrize(("point", "ttype", "op"), _cases())
def test_kill_at_point_then_recover(point: str, ttype: str, op: str) -> None:
    case = _case(point, ttype, op)
    res = case()
    assert res.skipped is None, f"{point} was not reached: {res.outcome}"
    assert point in res.reached, f"{point} not reached (reached: {sorted(res.reached)})"
    assert res.ok, "\n".join([res.outcome, *res.problems])


def test_registry_matches_code() -> None:
    in_code = code_crash_points()
    assert in_code - set(CRASH_POINTS) == set(), "crash_point names missing from registry"
    assert set(CRASH_POINTS) - in_code == set(), "registered points never called"


def test_tamper_moves_to_the_next_hit_when_the_group_held_nothing_to_corrupt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first publish group's content depends on the order files finished (a 0-byte
    file can be all of it): the corrupt-tamper case then takes the next hit instead of
    failing the sweep on its own precondition. The first crash here really published
    content; the tamper is made to report nothing once, as such a group would."""
    from fault_injection import sweeps

    real, calls = sweeps._tamper, []

    def nothing_the_first_time(lay: object, how: str) -> list[str]:
        calls.append(how)
        return [sweeps._NOTHING_TO_CORRUPT] if len(calls) == 1 else real(lay, how)

    monkeypatch.setattr(sweeps, "_tamper", nothing_the_first_time)
    res = KillCase(SCENARIOS["tree"], TYPES[0], "publish.after_commit", 1, "resume",
                   tamper="corrupt", sweep="g:tamper")()
    assert calls == ["corrupt", "corrupt"]
    assert "publish.after_commit#2/" in res.case, res.case
    assert res.skipped is None, res.outcome  # the tree publishes in two groups
    assert res.ok, "\n".join([res.outcome, *res.problems])
