"""Properties of the rating engine that must hold for any traffic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from random import Random
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_controller.core.contract import (
    Basis,
    Contract,
    Direction,
    Increment,
    Rate,
    Rates,
    ReadinessRate,
    Subscription,
)
from pbx_controller.core.rating import (
    CallForRating,
    DayKind,
    LineCode,
    Period,
    PeriodRater,
    ReadinessInterval,
    billed_seconds,
    billing_order_key,
    call_period,
    period_paid_days,
    rate_period,
    round_half_up,
    whole_seconds,
)

OCT = Period(2026, 10)
OCT_START, OCT_STOP = OCT.bounds(ZoneInfo("Europe/Warsaw"))

increments = st.builds(Increment, st.integers(1, 120), st.integers(1, 120))


@given(st.integers(0, 10**8), st.integers(0, 10**6), increments)
def test_billed_seconds_cover_the_call_and_grow_with_it(
    ms: int, more_ms: int, increment: Increment
) -> None:
    billed = billed_seconds(ms, increment)
    assert billed * 1000 >= ms  # never less than the call
    assert (billed == 0) == (ms == 0)  # only a 0 s call is free
    assert billed_seconds(ms + more_ms, increment) >= billed  # monotone
    if billed:
        # F, then whole steps of N, and never a whole step too many.
        assert billed >= increment.first
        assert (billed - increment.first) % increment.step == 0
        assert billed - whole_seconds(ms) < max(increment.first, increment.step)


# -- random contracts and traffic in October 2026 ----------------------------


def rates_strategy() -> st.SearchStrategy[Rate]:
    money = st.integers(0, 500).map(lambda cents: Decimal(cents).scaleb(-2))
    return st.builds(
        Rate,
        per_minute=money,
        increment=increments,
        basis=st.sampled_from(Basis),
        connect_fee=st.none() | money,
    )


contracts = st.builds(
    Contract,
    tenant=st.just("t"),
    currency=st.just("PLN"),
    timezone=st.just("Europe/Warsaw"),
    start=st.dates(date(2026, 9, 1), date(2026, 10, 31)),
    vat_percent=st.sampled_from([Decimal("0"), Decimal("8"), Decimal("23")]),
    rates=st.builds(Rates, inbound=rates_strategy(), outbound=rates_strategy()),
    end=st.none() | st.dates(date(2026, 10, 31), date(2027, 1, 31)),
    trial_days=st.integers(0, 20),
    subscription=st.none()
    | st.builds(
        Subscription,
        monthly_fee=st.sampled_from([Decimal("0.00"), Decimal("99.99"), Decimal("310.00")]),
        included_minutes=st.integers(0, 120),
        unused_minute_rate=st.sampled_from([Decimal("0.00"), Decimal("0.20"), Decimal("0.33")]),
    ),
    readiness=st.none() | st.just(ReadinessRate(Decimal("14.50"))),
)

SPAN_MS = int((OCT_STOP - OCT_START) / timedelta(milliseconds=1))


@dataclass(frozen=True)
class Traffic:
    calls: list[CallForRating]
    readiness: list[ReadinessInterval]


@st.composite
def traffic(draw: st.DrawFn) -> Traffic:
    calls = []
    for index in range(draw(st.integers(0, 25))):
        arrived = OCT_START + timedelta(milliseconds=draw(st.integers(0, SPAN_MS - 1)))
        # Few distinct instants, so ties in billing start actually happen.
        arrived = arrived.replace(second=0, microsecond=0) if draw(st.booleans()) else arrived
        wait = timedelta(milliseconds=draw(st.integers(0, 120_000)))
        talk = timedelta(milliseconds=draw(st.integers(0, 1_800_000)))
        answered = draw(st.booleans()) or draw(st.booleans())
        calls.append(
            CallForRating(
                call_id=f"c{index:03d}",
                direction=draw(st.sampled_from(Direction)),
                arrived_at=arrived,
                answered_at=arrived + wait if answered else None,
                ended_at=arrived + wait + talk,
            )
        )
    readiness = []
    for _ in range(draw(st.integers(0, 6))):
        started = OCT_START + timedelta(milliseconds=draw(st.integers(-86_400_000, SPAN_MS)))
        length = timedelta(milliseconds=draw(st.integers(0, 3 * 86_400_000)))
        share = Fraction(1, draw(st.integers(1, 7)))
        readiness.append(ReadinessInterval("agent", started, started + length, share))
    return Traffic(calls, readiness)


def in_october(contract: Contract, calls: list[CallForRating]) -> list[CallForRating]:
    # A call arriving near midnight on Oct 31 may be answered in November.
    return [c for c in calls if call_period(contract, c) in (OCT, None)]


@settings(max_examples=150, deadline=None)
@given(contracts, traffic(), st.randoms(use_true_random=False))
def test_invoice_does_not_depend_on_input_order(
    contract: Contract, feed: Traffic, random: Random
) -> None:
    calls = in_october(contract, feed.calls)
    first = rate_period(contract, OCT, calls, feed.readiness)
    shuffled_calls, shuffled_readiness = list(calls), list(feed.readiness)
    random.shuffle(shuffled_calls)
    random.shuffle(shuffled_readiness)
    second = rate_period(contract, OCT, shuffled_calls, shuffled_readiness)
    assert first == second


@settings(max_examples=200, deadline=None)
@given(contracts, traffic())
def test_invoice_adds_up(contract: Contract, feed: Traffic) -> None:
    calls = in_october(contract, feed.calls)
    rated = rate_period(contract, OCT, calls, feed.readiness)
    invoice = rated.invoice

    # Rule 13: each line rounded once, zero lines left out, totals add up.
    for line in invoice.lines:
        assert line.exact_quantity > 0
        assert line.amount == round_half_up(line.exact_quantity * Fraction(line.unit_price))
    assert invoice.net == sum((line.amount for line in invoice.lines), Decimal("0.00"))
    assert invoice.vat == round_half_up(
        Fraction(invoice.net) * Fraction(contract.vat_percent) / 100
    )
    assert invoice.gross == invoice.net + invoice.vat
    codes = [line.code for line in invoice.lines]
    assert codes == sorted(codes, key=list(LineCode).index)  # the fixed line order

    def minutes(code: LineCode) -> Fraction:
        return sum((line.exact_quantity for line in invoice.lines if line.code is code), Fraction())

    # Rule 9: every billed second of a paid-day call is either included or
    # charged, and the allowance is either used or billed as unused.
    paid = [c for c in rated.calls if c.day_kind is DayKind.PAID]
    trial = [c for c in rated.calls if c.day_kind is DayKind.TRIAL]
    assert sum(c.billed_seconds for c in paid) == 60 * (
        minutes(LineCode.INCLUDED_MINUTES)
        + minutes(LineCode.INBOUND_MINUTES)
        + minutes(LineCode.OUTBOUND_MINUTES)
    )
    assert sum(c.billed_seconds for c in trial) == 60 * minutes(LineCode.TRIAL_CALLS)
    subscription = contract.subscription
    if subscription is not None:
        proration = Fraction(period_paid_days(contract, OCT).days, OCT.days)
        allowance = subscription.included_minutes * proration
        assert minutes(LineCode.INCLUDED_MINUTES) + minutes(LineCode.UNUSED_MINUTES) == allowance

    # The per-call detail accounts for every usage line, before rounding.
    usage = {
        LineCode.INBOUND_MINUTES,
        LineCode.OUTBOUND_MINUTES,
        LineCode.CONNECT_FEES_INBOUND,
        LineCode.CONNECT_FEES_OUTBOUND,
    }
    exact_usage = sum(
        (
            line.exact_quantity * Fraction(line.unit_price)
            for line in invoice.lines
            if line.code in usage
        ),
        Fraction(),
    )
    assert sum((c.exact_amount for c in rated.calls), Fraction()) == exact_usage

    # Unanswered calls never reach the invoice.
    billed_ids = {c.call_id for c in rated.calls}
    assert all(c.call_id in billed_ids for c in calls if c.answered_at is not None)
    assert not any(c.call_id in billed_ids for c in calls if c.answered_at is None)


@settings(max_examples=100, deadline=None)
@given(contracts, traffic())
def test_streaming_equals_rating_in_one_go(contract: Contract, feed: Traffic) -> None:
    calls = in_october(contract, feed.calls)
    ordered = sorted(
        (c for c in calls if c.answered_at is not None),
        key=lambda c: billing_order_key(contract, c) or (OCT_START, ""),
    )
    rater = PeriodRater(contract, OCT)
    charges = [rater.add_call(c) for c in ordered]
    for interval in feed.readiness:
        rater.add_readiness(interval)
    rated = rate_period(contract, OCT, calls, feed.readiness)
    assert rater.finish() == rated.invoice
    assert tuple(charges) == rated.calls
