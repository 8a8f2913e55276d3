"""TransitionTable: the one place a machine's legal moves live."""

from __future__ import annotations

from enum import Enum

import pytest

from pbx_controller.core.call_flow import CALL_TRANSITIONS, CallState
from pbx_controller.core.machine import InvalidTransition, TransitionTable


class Door(Enum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"


D = Door

DOOR = TransitionTable(
    "door",
    {
        (D.OPEN, "Push"): frozenset({D.CLOSED}),
        (D.CLOSED, "Pull"): frozenset({D.OPEN}),
        (D.CLOSED, "Key"): frozenset({D.LOCKED}),
        (D.LOCKED, "Key"): frozenset({D.CLOSED, D.LOCKED}),
    },
)


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (D.OPEN, "Push", {D.CLOSED}),
        (D.CLOSED, "Pull", {D.OPEN}),
        (D.CLOSED, "Key", {D.LOCKED}),
        (D.LOCKED, "Key", {D.CLOSED, D.LOCKED}),
    ],
)
def test_targets_of_an_allowed_pair(state: Door, event: str, expected: set[Door]) -> None:
    assert DOOR.targets(state, event) == expected
    assert DOOR.allows(state, event)


@pytest.mark.parametrize(
    ("state", "event"),
    [(D.OPEN, "Pull"), (D.OPEN, "Key"), (D.LOCKED, "Push"), (D.CLOSED, "Kick")],
)
def test_targets_of_a_missing_pair_raise(state: Door, event: str) -> None:
    assert not DOOR.allows(state, event)
    with pytest.raises(InvalidTransition) as info:
        DOOR.targets(state, event)
    err = info.value
    assert (err.machine, err.state, err.event, err.target) == ("door", state, event, None)
    assert str(err) == f"door: {event} in state {state.value}"


def test_move_returns_the_chosen_target() -> None:
    assert DOOR.move(D.LOCKED, "Key", D.CLOSED) is D.CLOSED
    assert DOOR.move(D.LOCKED, "Key", D.LOCKED) is D.LOCKED
    assert DOOR.move(D.OPEN, "Push", D.CLOSED) is D.CLOSED


def test_move_to_a_target_the_table_does_not_list_names_it() -> None:
    with pytest.raises(InvalidTransition) as info:
        DOOR.move(D.CLOSED, "Key", D.OPEN)
    err = info.value
    assert err.target is D.OPEN
    assert str(err) == "door: Key in state closed cannot lead to open"


def test_move_on_a_missing_pair_has_no_target_in_the_message() -> None:
    with pytest.raises(InvalidTransition, match=r"^door: Push in state locked$"):
        DOOR.move(D.LOCKED, "Push", D.OPEN)


def test_events_lists_every_event_name() -> None:
    assert DOOR.events() == {"Push", "Pull", "Key"}


def test_iteration_yields_one_triple_per_edge_in_a_stable_order() -> None:
    assert list(DOOR) == [
        (D.OPEN, "Push", D.CLOSED),
        (D.CLOSED, "Pull", D.OPEN),
        (D.CLOSED, "Key", D.LOCKED),
        (D.LOCKED, "Key", D.CLOSED),
        (D.LOCKED, "Key", D.LOCKED),
    ]


def test_mermaid_of_a_small_table() -> None:
    assert DOOR.mermaid().splitlines() == [
        "stateDiagram-v2",
        "    open --> closed: Push",
        "    closed --> open: Pull",
        "    closed --> locked: Key",
        "    locked --> closed: Key",
        "    locked --> locked: Key",
    ]


def test_call_mermaid_has_every_edge_of_the_call_table() -> None:
    lines = CALL_TRANSITIONS.mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    expected = {
        f"    {state.value} --> {target.value}: {event}"
        for (state, event), targets in CALL_TRANSITIONS.edges.items()
        for target in targets
    }
    assert set(lines[1:]) == expected
    assert len(lines) - 1 == len(expected)  # no edge drawn twice


def test_call_mermaid_follows_table_changes() -> None:
    # Generated, not hand-written: a new edge shows up in the diagram.
    extended = TransitionTable(
        "call",
        {
            **CALL_TRANSITIONS.edges,
            (CallState.GREETING, "TimerFired"): frozenset({CallState.ENDING}),
        },
    )
    assert "    greeting --> ending: TimerFired" in extended.mermaid().splitlines()
    assert "    greeting --> ending: TimerFired" not in CALL_TRANSITIONS.mermaid().splitlines()
