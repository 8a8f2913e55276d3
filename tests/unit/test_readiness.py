"""core.readiness: agent state changes -> ready spans -> per-tenant intervals (rule 12)."""

from __future__ import annotations

import datetime as dt
import itertools
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx_controller.core.rating import ReadinessInterval
from pbx_controller.core.readiness import (
    AGENT_STATES,
    READY_STATES,
    ReadinessTracker,
    ReadySpan,
    StateChange,
    StateChangeError,
    readiness_by_tenant,
    ready_spans,
)

UTC = dt.UTC
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def change(agent: str, minutes: float, state: str, *tenants: str) -> StateChange:
    return StateChange(agent, at(minutes), state, frozenset(tenants))


def spans(changes: list[StateChange], start: float = 0, stop: float = 1000) -> list[ReadySpan]:
    return list(ready_spans(changes, at(start), at(stop)))


def test_ready_states_merge_into_one_span_until_paused() -> None:
    result = spans(
        [
            change("anna", 10, "ready", "acme"),
            change("anna", 20, "reserved", "acme"),
            change("anna", 21, "on_call", "acme"),
            change("anna", 30, "wrap_up", "acme"),
            change("anna", 31, "ready", "acme"),
            change("anna", 40, "paused", "acme"),
            change("anna", 50, "ready", "acme"),
            change("anna", 60, "logged_out"),
        ]
    )
    assert result == [
        ReadySpan("anna", at(10), at(40), frozenset({"acme"})),
        ReadySpan("anna", at(50), at(60), frozenset({"acme"})),
    ]


def test_a_change_of_tenants_splits_the_span_and_the_share() -> None:
    result = spans(
        [
            change("anna", 0, "ready", "acme"),
            change("anna", 30, "ready", "acme", "smallco"),
            change("anna", 90, "logged_out"),
        ]
    )
    assert [(s.started_at, s.ended_at, s.share) for s in result] == [
        (at(0), at(30), Fraction(1)),
        (at(30), at(90), Fraction(1, 2)),
    ]


def test_spans_are_clipped_to_the_window_and_open_ones_end_at_stop() -> None:
    result = spans(
        [
            change("anna", -60, "ready", "acme"),  # the state as the window opens
            change("anna", 30, "logged_out"),
            change("bob", 900, "on_call", "acme"),  # never logs out
            change("carol", -90, "ready", "acme"),
            change("carol", -10, "paused", "acme"),  # over before the window
        ],
        start=0,
        stop=1000,
    )
    assert [(s.agent, s.started_at, s.ended_at) for s in result] == [
        ("anna", at(0), at(30)),
        ("bob", at(900), at(1000)),
    ]


def test_changes_at_or_after_stop_only_close() -> None:
    result = spans(
        [change("anna", 900, "ready", "acme"), change("anna", 1200, "ready", "beta")],
        stop=1000,
    )
    assert [(s.started_at, s.ended_at, s.tenants) for s in result] == [
        (at(900), at(1000), frozenset({"acme"}))
    ]


def test_ready_without_queues_and_paused_never_count() -> None:
    assert spans([change("anna", 0, "ready"), change("anna", 10, "paused", "acme")]) == []


def test_equal_instants_are_fine_and_the_later_row_wins() -> None:
    result = spans(
        [
            change("anna", 10, "ready", "acme"),
            change("anna", 20, "paused", "acme"),
            change("anna", 20, "ready", "acme"),
            change("anna", 30, "logged_out"),
        ]
    )
    assert [(s.started_at, s.ended_at) for s in result] == [(at(10), at(20)), (at(20), at(30))]


def test_agents_may_interleave_but_each_must_go_forward() -> None:
    tracker = ReadinessTracker(at(0), at(100))
    tracker.add(change("anna", 10, "ready", "acme"))
    tracker.add(change("bob", 5, "ready", "acme"))
    with pytest.raises(StateChangeError, match=r"agent anna: .* in time order"):
        tracker.add(change("anna", 9, "paused"))
    assert [s.agent for s in tracker.finish()] == ["anna", "bob"]
    with pytest.raises(StateChangeError, match="finished"):
        tracker.finish()
    with pytest.raises(StateChangeError, match="finished"):
        tracker.add(change("anna", 50, "paused"))


@pytest.mark.parametrize(
    ("agent", "when", "state", "tenants", "problem"),
    [
        ("", T0, "ready", frozenset({"acme"}), "agent"),
        ("anna", T0, "lunch", frozenset({"acme"}), "unknown agent state 'lunch'"),
        ("anna", T0.replace(tzinfo=None), "ready", frozenset({"acme"}), "aware"),
        ("anna", T0, "ready", frozenset({""}), "tenants"),
    ],
)
def test_bad_state_changes_are_refused(
    agent: str, when: dt.datetime, state: str, tenants: frozenset[str], problem: str
) -> None:
    with pytest.raises(StateChangeError, match=problem):
        StateChange(agent, when, state, tenants)


def test_states_match_the_store_vocabulary() -> None:
    from typing import get_args

    from pbx_controller.store.models import AgentStateName

    assert frozenset(get_args(AgentStateName)) == AGENT_STATES
    assert {"logged_out", "paused"} == AGENT_STATES - READY_STATES


def test_by_tenant_clips_to_each_window_and_keeps_k_of_all_tenants() -> None:
    shared = ReadySpan("anna", at(0), at(120), frozenset({"acme", "beta", "gamma"}))
    alone = ReadySpan("bob", at(60), at(90), frozenset({"beta"}))
    result = readiness_by_tenant(
        [shared, alone],
        {"acme": (at(0), at(60)), "beta": (at(30), at(200)), "idle": (at(0), at(10))},
    )
    assert result == {
        "acme": [ReadinessInterval("anna", at(0), at(60), Fraction(1, 3))],
        "beta": [
            ReadinessInterval("anna", at(30), at(120), Fraction(1, 3)),
            ReadinessInterval("bob", at(60), at(90), Fraction(1)),
        ],
        "idle": [],
    }


STATES = sorted(AGENT_STATES)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["anna", "bob"]),
            st.integers(0, 30),  # minutes since the previous change of the agent
            st.sampled_from(STATES),
            st.sets(st.sampled_from(["acme", "beta"])),
        ),
        max_size=40,
    ),
    st.integers(-50, 200),
    st.integers(0, 300),
)
def test_spans_equal_minute_by_minute_readiness(
    steps: list[tuple[str, int, str, set[str]]], start: int, length: int
) -> None:
    """Property: a span covers a minute iff the agent was ready then, for those tenants."""
    clock = {"anna": -100, "bob": -100}
    changes = []
    for agent, gap, state, tenants in steps:
        clock[agent] += gap
        changes.append(change(agent, clock[agent], state, *tenants))
    stop = start + length
    found = spans(changes, start, stop)

    def state_at(agent: str, minute: int) -> StateChange | None:
        current = None
        for item in changes:  # the last change at or before `minute` wins
            if item.agent == agent and item.at <= at(minute):
                current = item
        return current

    for agent in ("anna", "bob"):
        for minute in range(start, stop):
            current = state_at(agent, minute)
            expected = current.tenants if current is not None and current.ready else None
            covering = [
                s for s in found if s.agent == agent and s.started_at <= at(minute) < s.ended_at
            ]
            assert len(covering) <= 1
            assert (covering[0].tenants if covering else None) == expected
    # Maximal: an agent's spans never touch with the same tenants.
    ordered = sorted(found, key=lambda s: (s.agent, s.started_at))
    for first, second in itertools.pairwise(ordered):
        if first.agent == second.agent and first.ended_at == second.started_at:
            assert first.tenants != second.tenants
