"""KPIs: Erlang C and A against independent formulas and published figures,
and the measured figures from finished calls."""

from __future__ import annotations

import math
from fractions import Fraction

import hypothesis.strategies as st
import pytest
from hypothesis import given

from pbx_controller.core import kpi
from pbx_controller.core.kpi import CompletedCall, Ewma

AHT = 180_000  # 3 minutes
T = 20_000  # the 80/20 threshold


def erlang_c_by_the_textbook(load: int, agents: int) -> Fraction:
    """The closed form with factorials, exactly, for integer loads."""
    a, n = Fraction(load), agents
    top = a**n / math.factorial(n) * n / (n - a)
    bottom = sum(a**k / math.factorial(k) for k in range(n)) + top
    return top / bottom


@pytest.mark.parametrize(("load", "agents"), [(1, 2), (10, 11), (10, 13), (10, 14), (50, 60)])
def test_erlang_c_matches_the_closed_form(load: int, agents: int) -> None:
    assert kpi.erlang_c(load, agents) == pytest.approx(
        float(erlang_c_by_the_textbook(load, agents)), rel=1e-12
    )


def test_the_classic_example_a_10_erlangs() -> None:
    # 200 calls an hour, 3-minute AHT, 80/20 target (the worked example in most
    # workforce-management texts): 11 agents give P(wait) 68.2 % and SL 39.0 %.
    assert kpi.erlang_c(10, 11) == pytest.approx(0.6821, abs=5e-5)
    assert kpi.service_level(10, 11, AHT, T) == pytest.approx(0.3896, abs=5e-5)
    assert kpi.service_level(10, 13, AHT, T) == pytest.approx(0.7956, abs=5e-5)
    assert kpi.service_level(10, 14, AHT, T) == pytest.approx(0.8884, abs=5e-5)
    assert kpi.average_speed_of_answer(10, 13, AHT) == pytest.approx(17_116, abs=1)
    assert kpi.average_speed_of_answer(10, 14, AHT) == pytest.approx(7_836, abs=1)
    assert kpi.agents_for_service_level(10, AHT, T, 0.80) == 14
    assert kpi.occupancy(10, 13) == pytest.approx(10 / 13)


def test_erlang_b_recursion() -> None:
    assert kpi.erlang_b(0, 3) == 0
    assert kpi.erlang_b(2, 0) == 1
    # B(A, 1) = A / (1 + A)
    assert kpi.erlang_b(3, 1) == pytest.approx(0.75)


def test_overload_waits_forever() -> None:
    assert kpi.erlang_c(10, 10) == 1.0
    assert kpi.service_level(10, 9, AHT, T) == 0.0
    assert kpi.average_speed_of_answer(10, 10, AHT) == math.inf
    assert kpi.occupancy(12, 10) == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: kpi.erlang_c(-1, 3), "offered load"),
        (lambda: kpi.erlang_c(math.nan, 3), "offered load"),
        (lambda: kpi.erlang_b(1, -1), "agents"),
        (lambda: kpi.service_level(1, 2, 0, T), "aht_ms"),
        (lambda: kpi.agents_for_service_level(10, AHT, T, 1.0), "target"),
        (lambda: kpi.erlang_a(10, 13, AHT, 0), "patience_ms"),
    ],
)
def test_nonsense_inputs_are_refused(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


@given(st.floats(0.1, 80), st.integers(1, 120))
def test_erlang_c_is_a_probability_and_falls_with_more_agents(load: float, agents: int) -> None:
    c = kpi.erlang_c(load, agents)
    assert 0 <= c <= 1
    assert kpi.erlang_c(load, agents + 1) <= c + 1e-12
    sl = kpi.service_level(load, agents, AHT, T)
    assert 0 <= sl <= 1
    if agents > load:
        # SL at threshold 0 is the chance of not waiting at all.
        assert kpi.service_level(load, agents, AHT, 0) == pytest.approx(1 - c)


def test_erlang_a_tends_to_erlang_c_as_patience_grows() -> None:
    a = kpi.erlang_a(10, 13, AHT, 1e12)
    assert a.p_wait == pytest.approx(kpi.erlang_c(10, 13), rel=1e-6)
    assert a.mean_wait_ms == pytest.approx(kpi.average_speed_of_answer(10, 13, AHT), rel=1e-6)
    assert a.p_abandon < 1e-6


@given(st.floats(0.5, 40), st.integers(1, 40), st.floats(5_000, 600_000))
def test_erlang_a_balances_the_flows(load: float, agents: int, patience: float) -> None:
    a = kpi.erlang_a(load, agents, AHT, patience)
    assert 0 <= a.p_abandon <= a.p_wait <= 1
    # Served work equals busy agents: A (1 - P(abandon)) = N * occupancy.
    assert load * (1 - a.p_abandon) == pytest.approx(agents * a.occupancy, rel=1e-9)
    # Each queued caller abandons at rate 1/patience: P(ab) = E[wait] / patience.
    assert a.p_abandon == pytest.approx(a.mean_wait_ms / patience, rel=1e-9)


def test_erlang_a_copes_with_overload_and_no_agents() -> None:
    a = kpi.erlang_a(12, 10, AHT, 120_000)
    assert 0.15 < a.p_abandon < 0.3  # overloaded, yet stable: patience drains the queue
    assert kpi.erlang_a(5, 0, AHT, 60_000).p_abandon == 1.0
    assert kpi.erlang_a(0, 3, AHT, 60_000).p_wait == 0.0


# -- measured -------------------------------------------------------------------------------


CALLS = [
    CompletedCall("q", 5_000, True, 200_000),
    CompletedCall("q", 20_000, True, 100_000),  # exactly at the threshold: in
    CompletedCall("q", 40_000, True, 300_000),
    CompletedCall("q", 10_000, False),  # gave up before T: neither good nor bad
    CompletedCall("q", 60_000, False),  # gave up after T: a miss
]


def test_measured_service_level_asa_abandonment_aht() -> None:
    assert kpi.measured_service_level(CALLS, T) == pytest.approx(2 / 4)
    assert kpi.measured_asa_ms(CALLS) == pytest.approx(65_000 / 3)
    assert kpi.abandonment_rate(CALLS) == pytest.approx(2 / 5)
    assert kpi.average_handle_ms(CALLS) == pytest.approx(200_000)
    summary = kpi.summarize(CALLS, T)
    assert (summary.offered, summary.answered, summary.abandoned) == (5, 3, 2)
    assert summary.service_level == pytest.approx(0.5)


def test_measured_figures_of_nothing_are_none() -> None:
    empty = kpi.summarize([], T)
    assert (empty.service_level, empty.asa_ms, empty.abandonment_rate, empty.aht_ms) == (
        None,
        None,
        None,
        None,
    )
    only_quick_abandons = [CompletedCall("q", 1_000, False)]
    assert kpi.measured_service_level(only_quick_abandons, T) is None
    assert kpi.abandonment_rate(only_quick_abandons) == 1.0
    with pytest.raises(ValueError, match="negative"):
        CompletedCall("q", -1, True)


def test_measured_occupancy() -> None:
    assert kpi.measured_occupancy(45, 60) == 0.75
    assert kpi.measured_occupancy(0, 0) is None
    with pytest.raises(ValueError, match="busy_ms"):
        kpi.measured_occupancy(61, 60)


# -- estimated wait ---------------------------------------------------------------------------


def test_estimated_wait_is_position_times_aht_over_staff() -> None:
    assert kpi.estimated_wait_ms(1, 10, AHT) == 18_000
    assert kpi.estimated_wait_ms(5, 10, AHT) == 90_000
    assert kpi.estimated_wait_ms(3, 0, AHT) is None  # nobody staffs the queue
    with pytest.raises(ValueError, match="position"):
        kpi.estimated_wait_ms(0, 3, AHT)


def test_ewma_seeds_with_the_first_sample_and_follows_recent_ones() -> None:
    e = Ewma(alpha=0.5)
    assert e.value is None
    e = e.add(100_000)
    assert e.value == 100_000
    e = e.add(200_000)
    assert e.value == 150_000
    for _ in range(30):
        e = e.add(60_000)
    assert e.value == pytest.approx(60_000, abs=1)
    with pytest.raises(ValueError, match="alpha"):
        Ewma(alpha=0)
