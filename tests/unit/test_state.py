"""The transition table, and hypothesis over random walks through it."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from axlpy import FileState, InvalidTransitionError, TransferState
from axlpy._state import (
    FILE_TRANSITIONS,
    TRANSITIONS,
    check_file_transition,
    check_transition,
)

T = TransferState


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        (T.CREATED, T.DISPATCHED),
        (T.DISPATCHED, T.RENAMED),
        (T.RENAMED, T.COMPLETED),
        (T.DISPATCHED, T.FAILED),
        (T.FAILED, T.DISPATCHED),
        (T.CREATED, T.CANCELLED),
        (T.DISPATCHED, T.CANCELLED),
        (T.PAUSED, T.DISPATCHED),
    ],
)
def test_legal(current, requested):
    check_transition(current, requested)


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        (T.CREATED, T.RENAMED),
        (T.CREATED, T.COMPLETED),
        (T.COMPLETED, T.CANCELLED),
        (T.CANCELLED, T.DISPATCHED),
        (T.DISPATCHED, T.CREATED),
        (T.RENAMED, T.DISPATCHED),
    ],
)
def test_illegal_names_both_states(current, requested):
    with pytest.raises(InvalidTransitionError) as info:
        check_transition(current, requested, "ckpt")
    assert info.value.current == current.value
    assert info.value.requested == requested.value
    assert current.value in str(info.value) and requested.value in str(info.value)
    assert "ckpt" in str(info.value)


def test_every_state_has_a_row_and_ends_are_final():
    assert set(TRANSITIONS) == set(TransferState)
    assert set(FILE_TRANSITIONS) == set(FileState)
    assert TRANSITIONS[T.COMPLETED] == frozenset()
    assert TRANSITIONS[T.CANCELLED] == frozenset()


def test_file_illegal():
    with pytest.raises(InvalidTransitionError):
        check_file_transition(FileState.CANCELLED, FileState.PUBLISHED, "x")


@given(st.lists(st.sampled_from(list(TransferState)), max_size=30))
def test_random_walks_never_leave_the_table(steps):
    """Any walk accepted by check_transition only uses table edges, and every walk that
    reaches COMPLETED went through DISPATCHED and RENAMED first."""
    state = T.CREATED
    seen = [state]
    for nxt in steps:
        if nxt in TRANSITIONS[state]:
            check_transition(state, nxt)
            state = nxt
            seen.append(state)
        else:
            with pytest.raises(InvalidTransitionError):
                check_transition(state, nxt)
    if T.COMPLETED in seen:
        i = seen.index(T.COMPLETED)
        assert seen[i - 1] == T.RENAMED
        assert T.DISPATCHED in seen[:i]
    if state.is_final:
        assert all(s not in TRANSITIONS[state] for s in TransferState)
