"""The rating rules of BILLING.md, one hand-computed case at a time.

Every expected value below is worked out in the comment above it from the
rules, not copied from the engine's output. Times are written with their
Europe/Warsaw offset (+01:00 in winter, +02:00 in summer).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbx_controller.core import contract as contract_module
from pbx_controller.core import rating as rating_module
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
    CallOrderError,
    CallOutsidePeriodError,
    DayKind,
    DayRange,
    InvalidRecordError,
    Invoice,
    LateCallError,
    LineCode,
    MissingRateError,
    Period,
    PeriodRater,
    RaterFinishedError,
    RatingError,
    ReadinessInterval,
    billed_seconds,
    billing_order_key,
    call_period,
    day_kind,
    early_termination_months,
    epoch_ms,
    local_midnight,
    period_paid_days,
    period_service_days,
    period_trial_days,
    rate_period,
    round_half_up,
    to_decimal,
    whole_seconds,
)

WARSAW = ZoneInfo("Europe/Warsaw")
IN, OUT = Direction.INBOUND, Direction.OUTBOUND

# Per-second billing keeps hand arithmetic simple where increments are not the point.
PER_SECOND_IN = Rate(Decimal("0.60"), Increment(1, 1), Basis.TALK)
PER_SECOND_OUT = Rate(Decimal("0.90"), Increment(1, 1), Basis.TALK)
BASE = Contract(
    tenant="t1",
    currency="PLN",
    timezone="Europe/Warsaw",
    start=date(2026, 1, 1),
    vat_percent=Decimal("23"),
    rates=Rates(inbound=PER_SECOND_IN, outbound=PER_SECOND_OUT),
)
SUB_310 = Subscription(Decimal("310.00"), 31, Decimal("0.20"))
OCT, NOV, DEC = Period(2026, 10), Period(2026, 11), Period(2026, 12)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def call(
    call_id: str,
    answered: str | None,
    ended: str,
    *,
    arrived: str | None = None,
    direction: Direction = IN,
) -> CallForRating:
    arrived_text = arrived or answered
    assert arrived_text is not None
    return CallForRating(
        call_id,
        direction,
        at(arrived_text),
        None if answered is None else at(answered),
        at(ended),
    )


def rate(
    contract: Contract,
    period: Period,
    calls: Iterable[CallForRating] = (),
    readiness: Iterable[ReadinessInterval] = (),
    late: Iterable[CallForRating] = (),
    last_invoice: bool | None = None,
) -> Invoice:
    return rate_period(contract, period, calls, readiness, late, last_invoice=last_invoice).invoice


def table(invoice: Invoice) -> list[tuple[str, str, str, str, str]]:
    """Lines as (code, quantity, unit, unit_price, amount) strings."""
    return [
        (
            str(line.code),
            format(line.quantity, "f"),
            str(line.unit),
            str(line.unit_price),
            str(line.amount),
        )
        for line in invoice.lines
    ]


def totals(invoice: Invoice) -> tuple[str, str, str]:
    return str(invoice.net), str(invoice.vat), str(invoice.gross)


# -- rules 4 and 5: durations and increments --------------------------------


@pytest.mark.parametrize(
    ("ms", "seconds"),
    [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2), (1400, 2), (59_999, 60), (60_000, 60)],
)
def test_whole_seconds_round_up(ms: int, seconds: int) -> None:
    assert whole_seconds(ms) == seconds


def test_billed_seconds_applies_increment_after_rounding_up() -> None:
    # 30_001 ms -> 31 s -> 30/6 bills 36 (rule 5's own example after rule 4).
    assert billed_seconds(30_001, Increment(30, 6)) == 36
    assert billed_seconds(30_000, Increment(30, 6)) == 30
    assert billed_seconds(0, Increment(30, 6)) == 0
    with pytest.raises(ValueError, match="negative"):
        whole_seconds(-1)


def test_fractional_milliseconds_in_timestamps() -> None:
    contract = BASE
    # 1,400 ms of talk -> 2 s -> 2/60 min x 0.60 = 0.02.
    charge = rate_period(
        contract,
        OCT,
        [call("x", "2026-10-05T10:00:00.000+02:00", "2026-10-05T10:00:01.400+02:00")],
    ).calls[0]
    assert charge.billed_seconds == 2
    # Instants are taken to the whole millisecond first (rule 4 says "on UTC
    # instants in milliseconds"): .000999 is .000, so exactly 1 s.
    charge = rate_period(
        contract,
        OCT,
        [call("y", "2026-10-05T10:00:00+02:00", "2026-10-05T10:00:01.000999+02:00")],
    ).calls[0]
    assert charge.billed_seconds == 1
    assert epoch_ms(at("1970-01-01T00:00:01.0019+00:00")) == 1001


def test_dst_spring_forward_does_not_stretch_a_call() -> None:
    # Warsaw, 2026-03-29: 02:00 CET becomes 03:00 CEST. 01:59 CET is 00:59Z,
    # 03:01 CEST is 01:01Z: 2 minutes, although the wall clock moved 62.
    # 120 s x 0.60/60 = 1.20.
    invoice = rate(
        BASE,
        Period(2026, 3),
        [call("x", "2026-03-29T01:59:00+01:00", "2026-03-29T03:01:00+02:00")],
    )
    assert table(invoice) == [("inbound_minutes", "2", "min", "0.60", "1.20")]


def test_dst_fall_back_does_not_shrink_a_call() -> None:
    # Warsaw, 2026-10-25: 03:00 CEST becomes 02:00 CET. 02:30 CEST is 00:30Z,
    # 02:10 CET is 01:10Z: 40 minutes, although the wall clock went back 20.
    # 40 x 0.60 = 24.00; VAT 23% = 5.52.
    invoice = rate(BASE, OCT, [call("x", "2026-10-25T02:30:00+02:00", "2026-10-25T02:10:00+01:00")])
    assert table(invoice) == [("inbound_minutes", "40", "min", "0.60", "24.00")]
    assert totals(invoice) == ("24.00", "5.52", "29.52")


# -- rules 1-3: periods and days ---------------------------------------------


def test_period_parsing_and_arithmetic() -> None:
    assert Period.parse("2026-10") == OCT
    assert str(Period(2027, 1)) == "2027-01"
    assert DEC.next() == Period(2027, 1)
    assert Period(2027, 1).previous() == DEC
    assert Period(2028, 2).days == 29
    assert Period(2026, 2).days == 28
    for bad in ("2026-1", "26-10", "2026-13", "2026-00", "2026/10", " 2026-10", "2026-10-01"):
        with pytest.raises(ValueError, match="period"):
            Period.parse(bad)


def test_period_bounds_are_local_midnights() -> None:
    # March 2026 starts in CET (+01:00) and ends in CEST (+02:00).
    assert Period(2026, 3).bounds(WARSAW) == (
        datetime(2026, 2, 28, 23, 0, tzinfo=UTC),
        datetime(2026, 3, 31, 22, 0, tzinfo=UTC),
    )
    assert local_midnight(date(2026, 10, 25), WARSAW) == datetime(2026, 10, 24, 22, tzinfo=UTC)
    assert local_midnight(date(2026, 10, 26), WARSAW) == datetime(2026, 10, 25, 23, tzinfo=UTC)


def test_call_at_year_end_belongs_to_december() -> None:
    # Answered 23:59:50 local on Dec 31, ended 00:00:20 on Jan 1: 30 s, all
    # in December (rule 3: never split). 30 s x 0.60/60 = 0.30.
    year_end = call("x", "2026-12-31T23:59:50+01:00", "2027-01-01T00:00:20+01:00")
    assert call_period(BASE, year_end) == DEC
    invoice = rate(BASE, DEC, [year_end])
    assert table(invoice) == [("inbound_minutes", "0.5", "min", "0.60", "0.30")]
    with pytest.raises(CallOutsidePeriodError, match="2027-01"):
        rate(BASE, Period(2027, 1), [year_end])


def test_local_date_not_utc_date_decides_the_period() -> None:
    # 00:00:10 local on Jan 1 is still Dec 31 in UTC (23:00:10Z).
    new_year = call("y", "2027-01-01T00:00:10+01:00", "2027-01-01T00:01:10+01:00")
    assert new_year.answered_at is not None
    assert new_year.answered_at.date() == date(2026, 12, 31)
    assert call_period(BASE, new_year) == Period(2027, 1)


def test_basis_total_bills_from_arrival_talk_from_answer() -> None:
    contract = replace(
        BASE,
        rates=Rates(
            inbound=Rate(Decimal("1.00"), Increment(1, 1), Basis.TOTAL),
            outbound=Rate(Decimal("1.00"), Increment(1, 1), Basis.TALK),
        ),
    )
    # Both calls: arrive 10:00:00, answered 10:00:30, end 10:01:30.
    # inbound (total): 90 s = 1.5 min x 1.00 = 1.50
    # outbound (talk): 60 s = 1 min x 1.00 = 1.00
    calls = [
        call(
            "i",
            "2026-10-05T10:00:30+02:00",
            "2026-10-05T10:01:30+02:00",
            arrived="2026-10-05T10:00:00+02:00",
        ),
        call(
            "o",
            "2026-10-05T10:00:30+02:00",
            "2026-10-05T10:01:30+02:00",
            arrived="2026-10-05T10:00:00+02:00",
            direction=OUT,
        ),
    ]
    assert table(rate(contract, OCT, calls)) == [
        ("inbound_minutes", "1.5", "min", "1.00", "1.50"),
        ("outbound_minutes", "1", "min", "1.00", "1.00"),
    ]
    # The basis also decides the period: arrived in September, answered in
    # October. Inbound (total) is September's; outbound (talk) October's.
    late_answer = {
        "answered": "2026-10-01T00:00:30+02:00",
        "ended": "2026-10-01T00:01:00+02:00",
        "arrived": "2026-09-30T23:59:30+02:00",
    }
    inbound = call(
        "i2", late_answer["answered"], late_answer["ended"], arrived=late_answer["arrived"]
    )
    outbound = replace(inbound, call_id="o2", direction=OUT)
    assert call_period(contract, inbound) == Period(2026, 9)
    assert call_period(contract, outbound) == OCT


def test_unanswered_calls_are_never_billed_whatever_the_basis() -> None:
    contract = replace(
        BASE,
        rates=Rates(inbound=Rate(Decimal("1.00"), Increment(60, 60), Basis.TOTAL, Decimal("0.10"))),
    )
    # Ten minutes in the queue, then the caller hung up: nothing at all.
    abandoned = call("x", None, "2026-10-05T10:10:00+02:00", arrived="2026-10-05T10:00:00+02:00")
    assert call_period(contract, abandoned) is None
    assert billing_order_key(contract, abandoned) is None
    rater = PeriodRater(contract, OCT)
    assert rater.add_call(abandoned) is None
    invoice = rater.finish()
    assert invoice.lines == ()
    assert totals(invoice) == ("0.00", "0.00", "0.00")
    # Unanswered outbound calls need no outbound rate either.
    assert call_period(contract, replace(abandoned, direction=OUT)) is None


# -- rules 6 and 7: service, trial and paid days ----------------------------


def test_service_trial_and_paid_days_in_periods() -> None:
    # start Oct 1 with 14 trial days, end Dec 15: trial Oct 1..14, paid
    # Oct 15..Dec 15.
    contract = replace(BASE, start=date(2026, 10, 1), trial_days=14, end=date(2026, 12, 15))
    counts = {
        str(p): (
            period_service_days(contract, p).days,
            period_trial_days(contract, p).days,
            period_paid_days(contract, p).days,
        )
        for p in (Period(2026, 9), OCT, NOV, DEC, Period(2027, 1))
    }
    assert counts == {
        "2026-09": (0, 0, 0),
        "2026-10": (31, 14, 17),
        "2026-11": (30, 0, 30),
        "2026-12": (15, 0, 15),
        "2027-01": (0, 0, 0),
    }
    assert period_paid_days(contract, OCT) == DayRange(date(2026, 10, 15), date(2026, 11, 1))
    assert [day_kind(contract, date(2026, 10, d)) for d in (14, 15)] == [
        DayKind.TRIAL,
        DayKind.PAID,
    ]
    assert day_kind(contract, date(2026, 9, 30)) is DayKind.OUTSIDE_SERVICE
    assert day_kind(contract, date(2026, 12, 16)) is DayKind.OUTSIDE_SERVICE


def test_trial_that_outlasts_the_contract() -> None:
    contract = replace(BASE, start=date(2026, 10, 1), trial_days=30, end=date(2026, 10, 10))
    assert period_trial_days(contract, OCT).days == 10
    assert period_paid_days(contract, OCT).days == 0


def test_trial_boundary_uses_the_local_date() -> None:
    contract = replace(BASE, start=date(2026, 10, 1), trial_days=14)
    calls = [
        # 21:59Z on the 14th is 23:59 CEST on the 14th: a trial day, free.
        call("trial", "2026-10-14T21:59:00+00:00", "2026-10-14T22:00:00+00:00"),
        # 22:30Z on the 14th is 00:30 CEST on the 15th: the first paid day.
        call("paid", "2026-10-14T22:30:00+00:00", "2026-10-14T22:31:00+00:00"),
    ]
    rated = rate_period(contract, OCT, calls)
    # Each call is 60 s = 1 min; the paid one costs 1 x 0.60.
    assert table(rated.invoice) == [
        ("trial_calls", "1", "min", "0", "0.00"),
        ("inbound_minutes", "1", "min", "0.60", "0.60"),
    ]
    assert [(c.call_id, c.day, c.day_kind) for c in rated.calls] == [
        ("trial", date(2026, 10, 14), DayKind.TRIAL),
        ("paid", date(2026, 10, 15), DayKind.PAID),
    ]


def test_trial_calls_use_no_allowance_and_pay_no_connect_fee() -> None:
    rates = Rates(inbound=Rate(Decimal("0.50"), Increment(60, 60), Basis.TALK, Decimal("0.10")))
    contract = replace(
        BASE, start=date(2026, 10, 1), trial_days=14, rates=rates, subscription=SUB_310
    )
    # Paid days Oct 15..31 = 17 of 31: allowance 31 x 60 x 17/31 = 1020 s.
    # The trial call (10 min) leaves it whole: 17 unused minutes x 0.20 = 3.40.
    # Subscription 310.00 x 17/31 = 170.00. net 173.40, VAT 39.882 -> 39.88.
    invoice = rate(
        contract, OCT, [call("t", "2026-10-02T10:00:00+02:00", "2026-10-02T10:10:00+02:00")]
    )
    assert table(invoice) == [
        ("trial_calls", "10", "min", "0", "0.00"),
        ("subscription_fee", "0.5483870967741935483870967742", "month", "310.00", "170.00"),
        ("unused_minutes", "17", "min", "0.20", "3.40"),
    ]
    assert totals(invoice) == ("173.40", "39.88", "213.28")


def test_calls_outside_service_days_are_not_billed() -> None:
    contract = replace(BASE, start=date(2026, 10, 10), end=date(2026, 10, 20))
    rated = rate_period(
        contract,
        OCT,
        [
            call("before", "2026-10-09T12:00:00+02:00", "2026-10-09T12:05:00+02:00"),
            call("after", "2026-10-21T12:00:00+02:00", "2026-10-21T12:05:00+02:00"),
        ],
    )
    assert rated.invoice.lines == ()
    assert [(c.day_kind, c.codes, c.exact_amount) for c in rated.calls] == [
        (DayKind.OUTSIDE_SERVICE, (), Fraction(0)),
        (DayKind.OUTSIDE_SERVICE, (), Fraction(0)),
    ]


# -- rules 8, 9, 11: subscription, allowance, unused minutes ---------------


def test_allowance_is_used_in_billing_start_order_and_splits_a_call() -> None:
    contract = replace(BASE, subscription=Subscription(Decimal("100.00"), 10, Decimal("0.10")))
    # Full month: allowance 10 min = 600 s.
    #   first (inbound, 500 s): all included, 100 s left
    #   second (outbound, 200 s): 100 s included, 100 s at 0.90/min
    # outbound_minutes = 100/60 = 5/3 min -> 1.50.
    # Lines: included 600 s = 10 min; no unused minutes (zero quantity).
    # net 1.50 + 100.00 = 101.50; VAT 23.345 -> 23.35 (half-up); gross 124.85.
    calls = [
        # Given out of order: rate_period sorts by billing start.
        call("b", "2026-10-06T09:00:00+02:00", "2026-10-06T09:03:20+02:00", direction=OUT),
        call("a", "2026-10-05T09:00:00+02:00", "2026-10-05T09:08:20+02:00"),
    ]
    rated = rate_period(contract, OCT, calls)
    assert table(rated.invoice) == [
        ("included_minutes", "10", "min", "0", "0.00"),
        ("outbound_minutes", "1.666666666666666666666666667", "min", "0.90", "1.50"),
        ("subscription_fee", "1", "month", "100.00", "100.00"),
    ]
    assert totals(rated.invoice) == ("101.50", "23.35", "124.85")
    first, second = rated.calls
    assert first.call_id == "a"
    assert (first.included_seconds, first.charged_seconds) == (Fraction(500), Fraction(0))
    assert second.call_id == "b"
    assert (second.included_seconds, second.charged_seconds) == (Fraction(100), Fraction(100))
    assert second.codes == (LineCode.INCLUDED_MINUTES, LineCode.OUTBOUND_MINUTES)
    assert second.exact_amount == Fraction(3, 2)
    assert second.amount == Decimal("1.50")


def test_prorated_allowance_is_exact_not_rounded() -> None:
    # start Oct 15: paid days 15..31 = 17 of 31, so f = 17/31.
    # Allowance 10 min x 60 x 17/31 = 10200/31 s (329.03... s), not rounded.
    # One 400 s call: 10200/31 s included, 400 - 10200/31 = 2200/31 s charged.
    # included_minutes = 10200/31/60 = 170/31 = 5.48387096774193548387096774193...
    #   -> 28 significant digits: 5.483870967741935483870967742
    # inbound_minutes = 2200/31/60 = 110/93 = 1.18279569892473118279569892473...
    #   -> 1.182795698924731182795698925; x 0.50 = 55/93 = 0.5913... -> 0.59
    # subscription 100.00 x 17/31 = 54.8387... -> 54.84
    # net 55.43; VAT 12.7489 -> 12.75; gross 68.18
    contract = replace(
        BASE,
        start=date(2026, 10, 15),
        rates=Rates(inbound=Rate(Decimal("0.50"), Increment(1, 1), Basis.TALK)),
        subscription=Subscription(Decimal("100.00"), 10, Decimal("0.10")),
    )
    rater = PeriodRater(contract, OCT)
    assert rater.proration == Fraction(17, 31)
    assert rater.allowance_seconds == Fraction(10200, 31)
    rater.add_call(call("x", "2026-10-20T10:00:00+02:00", "2026-10-20T10:06:40+02:00"))
    assert rater.allowance_left_seconds == 0
    invoice = rater.finish()
    assert table(invoice) == [
        ("included_minutes", "5.483870967741935483870967742", "min", "0", "0.00"),
        ("inbound_minutes", "1.182795698924731182795698925", "min", "0.50", "0.59"),
        ("subscription_fee", "0.5483870967741935483870967742", "month", "100.00", "54.84"),
    ]
    assert totals(invoice) == ("55.43", "12.75", "68.18")


def test_partial_first_month_then_full_month() -> None:
    contract = replace(BASE, start=date(2026, 10, 20), subscription=SUB_310)
    # October: paid days 20..31 = 12 of 31. Fee 310 x 12/31 = 120.00.
    # Allowance 31 x 60 x 12/31 = 720 s = 12 min, all unused: 12 x 0.20 = 2.40.
    # 12/31 = 0.387096774193548387096774193548... -> 0.3870967741935483870967741935
    # net 122.40; VAT 28.152 -> 28.15; gross 150.55.
    october = rate(contract, OCT)
    assert table(october) == [
        ("subscription_fee", "0.3870967741935483870967741935", "month", "310.00", "120.00"),
        ("unused_minutes", "12", "min", "0.20", "2.40"),
    ]
    assert totals(october) == ("122.40", "28.15", "150.55")
    # November: the whole month. 310.00 and 31 unused minutes = 6.20.
    assert table(rate(contract, NOV)) == [
        ("subscription_fee", "1", "month", "310.00", "310.00"),
        ("unused_minutes", "31", "min", "0.20", "6.20"),
    ]
    # September: no service days, nothing at all.
    assert rate(contract, Period(2026, 9)).lines == ()


def test_proration_with_trial_inside_the_month() -> None:
    # start Oct 10 with 14 trial days: trial Oct 10..23, paid 24..31 = 8 days.
    # 310 x 8/31 = 80.00; allowance 8 min -> 1.60 unused.
    contract = replace(BASE, start=date(2026, 10, 10), trial_days=14, subscription=SUB_310)
    assert [line[4] for line in table(rate(contract, OCT))] == ["80.00", "1.60"]


def test_proration_in_february() -> None:
    # start Feb 15, 2026: paid 15..28 = 14 of 28 days = 1/2; 100.00 -> 50.00.
    contract = replace(BASE, start=date(2026, 2, 15), subscription=Subscription(Decimal("100.00")))
    assert table(rate(contract, Period(2026, 2))) == [
        ("subscription_fee", "0.5", "month", "100.00", "50.00")
    ]


def test_ties_in_billing_start_are_broken_by_call_id() -> None:
    contract = replace(BASE, subscription=Subscription(Decimal("0.00"), 10, Decimal("0.00")))
    same = ("2026-10-05T10:00:00+02:00", "2026-10-05T10:08:20+02:00")  # 500 s
    same_short = ("2026-10-05T10:00:00+02:00", "2026-10-05T10:03:20+02:00")  # 200 s
    # "a" inbound 500 s goes first: 500 included; "b" outbound 200 s: 100
    # included, 100 s x 0.90/60 = 1.50.
    invoice = rate(contract, OCT, [call("b", *same_short, direction=OUT), call("a", *same)])
    assert [(code, amount) for code, _, _, _, amount in table(invoice)] == [
        ("included_minutes", "0.00"),
        ("outbound_minutes", "1.50"),
        ("subscription_fee", "0.00"),  # a free subscription still has quantity 1
    ]
    # Swap the ids: "a" outbound 200 s included; "b" inbound 400 included,
    # 100 s x 0.60/60 = 1.00.
    invoice = rate(contract, OCT, [call("b", *same), call("a", *same_short, direction=OUT)])
    assert [(code, amount) for code, _, _, _, amount in table(invoice)] == [
        ("included_minutes", "0.00"),
        ("inbound_minutes", "1.00"),
        ("subscription_fee", "0.00"),
    ]


def test_rater_rejects_calls_out_of_order() -> None:
    rater = PeriodRater(BASE, OCT)
    rater.add_call(call("b", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00"))
    # Same instant, smaller id: must have come first.
    with pytest.raises(CallOrderError, match="call a"):
        rater.add_call(call("a", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00"))
    # Earlier instant.
    with pytest.raises(CallOrderError):
        rater.add_call(call("c", "2026-10-05T09:00:00+02:00", "2026-10-05T09:01:00+02:00"))
    # The same call twice.
    with pytest.raises(CallOrderError):
        rater.add_call(call("b", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00"))
    # The rejected calls left no trace: one minute at 0.60.
    assert table(rater.finish()) == [("inbound_minutes", "1", "min", "0.60", "0.60")]


def test_rater_streams_and_returns_each_calls_charge() -> None:
    rater = PeriodRater(BASE, OCT)
    charge = rater.add_call(call("x", "2026-10-05T10:00:00+02:00", "2026-10-05T10:00:01.400+02:00"))
    assert charge is not None
    assert (charge.billed_seconds, charge.codes) == (2, (LineCode.INBOUND_MINUTES,))
    # 2 s at 0.60/min = 0.02 exactly.
    assert charge.exact_amount == Fraction(2, 100)
    rater.finish()
    with pytest.raises(RaterFinishedError):
        rater.add_call(call("y", "2026-10-06T10:00:00+02:00", "2026-10-06T10:00:01+02:00"))
    with pytest.raises(RaterFinishedError):
        rater.finish()


# -- rule 10: connect fees ----------------------------------------------------


def test_connect_fees_per_answered_call_on_paid_days() -> None:
    contract = replace(
        BASE,
        rates=Rates(
            inbound=Rate(Decimal("0.00"), Increment(1, 1), Basis.TALK, Decimal("0.10")),
            outbound=Rate(Decimal("0.00"), Increment(1, 1), Basis.TALK, Decimal("0.25")),
        ),
        subscription=Subscription(Decimal("0.00"), 100, Decimal("0.00")),
    )
    # Three inbound, one outbound, all inside the allowance: the allowance
    # never covers connect fees. 3 x 0.10 = 0.30; 1 x 0.25 = 0.25.
    # A 0 s answered call (answered and hung up at once) still connected.
    calls = [
        call("i1", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00"),
        call("i2", "2026-10-05T11:00:00+02:00", "2026-10-05T11:01:00+02:00"),
        call("i3", "2026-10-05T12:00:00+02:00", "2026-10-05T12:00:00+02:00"),
        call("o1", "2026-10-05T13:00:00+02:00", "2026-10-05T13:01:00+02:00", direction=OUT),
        call("no", None, "2026-10-05T14:01:00+02:00", arrived="2026-10-05T14:00:00+02:00"),
    ]
    rated = rate_period(contract, OCT, calls)
    lines = {code: (qty, amount) for code, qty, _, _, amount in table(rated.invoice)}
    assert lines["connect_fees_inbound"] == ("3", "0.30")
    assert lines["connect_fees_outbound"] == ("1", "0.25")
    # 3 minutes used of 100: included 3, unused 97 at price 0 -> 0.00.
    assert lines["included_minutes"] == ("3", "0.00")
    # The 0 s call used no allowance; it only paid its connect fee.
    zero = next(c for c in rated.calls if c.call_id == "i3")
    assert (zero.billed_seconds, zero.codes) == (0, (LineCode.CONNECT_FEES_INBOUND,))
    assert zero.exact_amount == Fraction(1, 10)


# -- rule 12: readiness ---------------------------------------------------------


def ready(start: str, end: str, share: Fraction | Decimal = Fraction(1)) -> ReadinessInterval:
    return ReadinessInterval("agent-1", at(start), at(end), share)


READY_CONTRACT = replace(BASE, readiness=ReadinessRate(Decimal("14.50")))


def test_readiness_share_rounds_once_per_line() -> None:
    # One hour at share 1/3, three times: 3 x 1/3 h = 1 h x 14.50 = 14.50.
    # Rounding per interval would give 3 x 4.83 = 14.49.
    third = Fraction(1, 3)
    intervals = [
        ready(f"2026-10-05T{h:02d}:00:00+02:00", f"2026-10-05T{h + 1:02d}:00:00+02:00", third)
        for h in (8, 10, 12)
    ]
    assert table(rate(READY_CONTRACT, OCT, readiness=intervals)) == [
        ("readiness", "1", "h", "14.50", "14.50")
    ]


def test_readiness_decimal_share() -> None:
    # 3 h at share 0.5 = 1.5 h x 14.50 = 21.75.
    interval = ready("2026-10-05T08:00:00+02:00", "2026-10-05T11:00:00+02:00", Decimal("0.5"))
    assert interval.share == Fraction(1, 2)
    assert table(rate(READY_CONTRACT, OCT, readiness=[interval])) == [
        ("readiness", "1.5", "h", "14.50", "21.75")
    ]


def test_readiness_clipped_to_paid_days_at_local_midnight() -> None:
    contract = replace(READY_CONTRACT, start=date(2026, 10, 1), trial_days=14)
    # 20:00 on the 14th (trial) to 02:00 on the 15th (paid): only the 2 h
    # after local midnight count. 2 x 14.50 = 29.00.
    interval = ready("2026-10-14T20:00:00+02:00", "2026-10-15T02:00:00+02:00")
    assert table(rate(contract, OCT, readiness=[interval])) == [
        ("readiness", "2", "h", "14.50", "29.00")
    ]


def test_readiness_clipped_to_the_period_and_the_contract_end() -> None:
    contract = replace(READY_CONTRACT, end=date(2026, 11, 30))
    # 23:00 Oct 31 to 01:00 Nov 1 (CET): one hour in each period.
    across = ready("2026-10-31T23:00:00+01:00", "2026-11-01T01:00:00+01:00")
    assert table(rate(contract, OCT, readiness=[across]))[0][1] == "1"
    assert table(rate(contract, NOV, readiness=[across]))[0][1] == "1"
    # 22:00 Nov 30 to 03:00 Dec 1: the contract ends with Nov 30, so 2 h.
    at_end = ready("2026-11-30T22:00:00+01:00", "2026-12-01T03:00:00+01:00")
    assert table(rate(contract, NOV, readiness=[at_end]))[0][1] == "2"
    assert rate(contract, DEC, readiness=[at_end]).lines == ()


def test_readiness_over_dst_days() -> None:
    # Oct 25, 2026 has 25 hours in Warsaw: 25 x 14.50 = 362.50.
    day = ready("2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00")
    assert table(rate(READY_CONTRACT, OCT, readiness=[day])) == [
        ("readiness", "25", "h", "14.50", "362.50")
    ]
    # Mar 29, 2026 has 23 hours: 23 x 14.50 = 333.50.
    day = ready("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert table(rate(READY_CONTRACT, Period(2026, 3), readiness=[day])) == [
        ("readiness", "23", "h", "14.50", "333.50")
    ]


def test_readiness_without_a_price_is_not_billed() -> None:
    interval = ready("2026-10-05T08:00:00+02:00", "2026-10-05T11:00:00+02:00")
    assert rate(BASE, OCT, readiness=[interval]).lines == ()


# -- rule 13: rounding and zero lines ----------------------------------------


def test_half_up_at_half_a_cent() -> None:
    contract = replace(
        BASE, rates=Rates(inbound=Rate(Decimal("0.05"), Increment(6, 6), Basis.TALK))
    )
    # One 6 s call = 0.1 min x 0.05 = 0.005 -> 0.01 (half-even would give 0.00).
    # VAT 23% of 0.01 = 0.0023 -> 0.00.
    one = [call("x", "2026-10-05T10:00:00+02:00", "2026-10-05T10:00:06+02:00")]
    invoice = rate(contract, OCT, one)
    assert table(invoice) == [("inbound_minutes", "0.1", "min", "0.05", "0.01")]
    assert totals(invoice) == ("0.01", "0.00", "0.01")
    # Three such calls round once, on the line: 0.3 x 0.05 = 0.015 -> 0.02
    # (per call it would be 3 x 0.01 = 0.03).
    three = [
        call(f"x{m}", f"2026-10-05T10:0{m}:00+02:00", f"2026-10-05T10:0{m}:06+02:00")
        for m in range(3)
    ]
    assert table(rate(contract, OCT, three))[0][4] == "0.02"


def test_vat_is_rounded_half_up() -> None:
    # 150 s x 0.60/60 = 1.50 net; VAT 23% = 0.345 -> 0.35 (half-even: 0.34).
    invoice = rate(BASE, OCT, [call("x", "2026-10-05T10:00:00+02:00", "2026-10-05T10:02:30+02:00")])
    assert totals(invoice) == ("1.50", "0.35", "1.85")


def test_zero_quantity_lines_are_left_out() -> None:
    contract = replace(
        BASE,
        rates=Rates(
            inbound=Rate(Decimal("0.60"), Increment(1, 1), Basis.TALK, Decimal("0.10")),
            outbound=Rate(Decimal("0.90"), Increment(1, 1), Basis.TALK, Decimal("0.10")),
        ),
        subscription=Subscription(Decimal("10.00"), 10, Decimal("0.20")),
        readiness=ReadinessRate(Decimal("14.50")),
    )
    # One inbound call of exactly the 600 s allowance: no inbound_minutes,
    # no unused_minutes, nothing outbound, no readiness, no trial.
    invoice = rate(
        contract, OCT, [call("x", "2026-10-05T10:00:00+02:00", "2026-10-05T10:10:00+02:00")]
    )
    assert [line.code for line in invoice.lines] == [
        LineCode.INCLUDED_MINUTES,
        LineCode.CONNECT_FEES_INBOUND,
        LineCode.SUBSCRIPTION_FEE,
    ]
    # 0.10 + 10.00 = 10.10; VAT 2.323 -> 2.32.
    assert totals(invoice) == ("10.10", "2.32", "12.42")


def test_round_half_up_and_to_decimal_helpers() -> None:
    assert round_half_up(Fraction(1, 200)) == Decimal("0.01")
    assert round_half_up(Fraction(-1, 200)) == Decimal("-0.01")
    assert round_half_up(Fraction(1, 201)) == Decimal("0.00")
    assert str(round_half_up(Fraction(0))) == "0.00"
    assert round_half_up(Fraction(2, 3)) == Decimal("0.67")
    assert str(to_decimal(Fraction(174, 60))) == "2.9"
    assert str(to_decimal(Fraction(120, 60))) == "2"
    # Not 1E+1: invoice_line.quantity keeps the Decimal as written.
    assert str(to_decimal(Fraction(600, 60))) == "10"
    # 2/3 to 28 significant digits, the last rounded: 0.666...6667.
    assert str(to_decimal(Fraction(2, 3))) == "0." + "6" * 27 + "7"


# -- rule 14: late calls as adjustments ----------------------------------------


ADJ_CONTRACT = replace(
    BASE,
    start=date(2026, 10, 1),
    trial_days=14,
    rates=Rates(inbound=Rate(Decimal("0.50"), Increment(60, 60), Basis.TALK, Decimal("0.10"))),
    subscription=SUB_310,
)


def test_late_calls_become_adjustment_lines_naming_the_call() -> None:
    late_paid = call("L-paid", "2026-10-20T10:00:00+02:00", "2026-10-20T10:01:30+02:00")
    late_trial = call("L-trial", "2026-10-03T10:00:00+02:00", "2026-10-03T10:00:30+02:00")
    # November is a full paid month: subscription 310.00, 31 unused min = 6.20
    # (late calls leave this period's allowance alone).
    # L-trial (Oct 3, a trial day): 30 s -> 60 s = 1 min at price 0.
    # L-paid (Oct 20): 90 s -> 120 s = 2 min x 0.50 = 1.00, plus 0.10 connect.
    # Listed by billing start, though given in the other order.
    # net 310 + 6.20 + 1.00 + 0.10 = 317.30; VAT 72.979 -> 72.98; gross 390.28.
    rated = rate_period(ADJ_CONTRACT, NOV, [], late_calls=[late_paid, late_trial])
    assert table(rated.invoice) == [
        ("subscription_fee", "1", "month", "310.00", "310.00"),
        ("unused_minutes", "31", "min", "0.20", "6.20"),
        ("adjustments", "1", "min", "0", "0.00"),
        ("adjustments", "2", "min", "0.50", "1.00"),
        ("adjustments", "1", "call", "0.10", "0.10"),
    ]
    assert [line.call_id for line in rated.invoice.lines] == [
        None,
        None,
        "L-trial",
        "L-paid",
        "L-paid",
    ]
    assert totals(rated.invoice) == ("317.30", "72.98", "390.28")
    paid_charge = next(c for c in rated.calls if c.call_id == "L-paid")
    assert paid_charge.late
    assert paid_charge.exact_amount == Fraction(11, 10)


def test_late_call_must_come_from_an_earlier_period_and_only_once() -> None:
    rater = PeriodRater(ADJ_CONTRACT, NOV)
    this_month = call("x", "2026-11-02T10:00:00+01:00", "2026-11-02T10:01:00+01:00")
    with pytest.raises(LateCallError, match="not before period 2026-11"):
        rater.add_late_call(this_month)
    late = call("y", "2026-10-20T10:00:00+02:00", "2026-10-20T10:01:00+02:00")
    rater.add_late_call(late)
    with pytest.raises(LateCallError, match="already"):
        rater.add_late_call(late)


# -- rule 15: minimum term --------------------------------------------------


TERM_CONTRACT = replace(
    BASE,
    start=date(2026, 10, 1),
    minimum_term_months=6,
    subscription=Subscription(Decimal("310.00")),
    end=date(2026, 12, 15),
)


def test_early_termination_on_the_last_invoice() -> None:
    # Term: Oct 2026 .. Mar 2027. End Dec 15 leaves part of December plus
    # January, February and March: 4 months x 310.00 = 1240.00.
    # December's own fee: 15 of 31 days, 310 x 15/31 = 150.00.
    # net 1390.00; VAT 319.70; gross 1709.70.
    invoice = rate(TERM_CONTRACT, DEC)
    assert table(invoice) == [
        ("subscription_fee", "0.4838709677419354838709677419", "month", "310.00", "150.00"),
        ("early_termination", "4", "month", "310.00", "1240.00"),
    ]
    assert totals(invoice) == ("1390.00", "319.70", "1709.70")
    # Not the last invoice: November is an ordinary month.
    assert table(rate(TERM_CONTRACT, NOV)) == [
        ("subscription_fee", "1", "month", "310.00", "310.00")
    ]
    # The caller may say which invoice is the last one.
    assert len(rate(TERM_CONTRACT, DEC, last_invoice=False).lines) == 1
    assert rate(TERM_CONTRACT, NOV, last_invoice=True).lines[-1].code is LineCode.EARLY_TERMINATION


def test_no_early_termination_when_ending_within_the_trial() -> None:
    contract = replace(TERM_CONTRACT, trial_days=14, end=date(2026, 10, 10))
    assert early_termination_months(contract) == 0
    assert rate(contract, OCT).lines == ()
    # The last trial day is still within the trial; the day after is not:
    # ending Oct 15 leaves the rest of October and 5 more months = 6.
    assert early_termination_months(replace(contract, end=date(2026, 10, 14))) == 0
    assert early_termination_months(replace(contract, end=date(2026, 10, 15))) == 6


def test_no_early_termination_when_serving_the_whole_term() -> None:
    # Oct 1 + 6 months = Apr 1: ending Mar 31 serves it all.
    assert early_termination_months(replace(TERM_CONTRACT, end=date(2027, 3, 31))) == 0
    assert early_termination_months(replace(TERM_CONTRACT, end=date(2027, 6, 30))) == 0
    assert early_termination_months(replace(TERM_CONTRACT, end=None)) == 0


@pytest.mark.parametrize(
    ("end", "months"),
    [
        # Term months from Oct 15: [10-15, 11-15), [11-15, 12-15), [12-15, 1-15),
        # [1-15, 2-15), [2-15, 3-15), [3-15, 4-15).
        (date(2026, 10, 15), 6),  # most of the first month is left
        (date(2026, 12, 14), 4),  # two whole months served
        (date(2026, 12, 20), 4),  # calendar months would say 5 (Dec..Apr)
        (date(2027, 1, 14), 3),
        (date(2027, 4, 13), 1),  # Apr 14 is still left
        (date(2027, 4, 14), 0),
    ],
)
def test_early_termination_counts_term_months_from_start(end: date, months: int) -> None:
    contract = replace(TERM_CONTRACT, start=date(2026, 10, 15), end=end)
    assert early_termination_months(contract) == months


def test_early_termination_from_a_month_end_start() -> None:
    # Start Jan 31, 1 month: the term is Jan 31 .. Feb 27 (Feb 28 = Jan 31 + 1 month).
    contract = replace(TERM_CONTRACT, start=date(2026, 1, 31), minimum_term_months=1)
    assert early_termination_months(replace(contract, end=date(2026, 2, 27))) == 0
    assert early_termination_months(replace(contract, end=date(2026, 2, 26))) == 1


def test_last_invoice_needs_an_end() -> None:
    with pytest.raises(RatingError, match="end"):
        PeriodRater(replace(TERM_CONTRACT, end=None), DEC, last_invoice=True)


# -- input validation ----------------------------------------------------------


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(InvalidRecordError, match="arrived_at: naive") as info:
        CallForRating("x", IN, datetime(2026, 10, 5, 10), None, at("2026-10-05T10:00:00+02:00"))
    assert info.value.field == "arrived_at"
    with pytest.raises(InvalidRecordError, match="started_at"):
        ReadinessInterval("a", datetime(2026, 10, 5), at("2026-10-05T10:00:00+02:00"))
    with pytest.raises(InvalidRecordError, match="instant"):
        epoch_ms(datetime(2026, 10, 5))


@pytest.mark.parametrize(
    ("arrived", "answered", "ended", "field"),
    [
        ("10:00:10", "10:00:00", "10:01:00", "answered_at"),
        ("10:00:00", "10:00:10", "10:00:05", "ended_at"),
        ("10:00:10", None, "10:00:00", "ended_at"),
    ],
)
def test_impossible_call_order_is_rejected(
    arrived: str, answered: str | None, ended: str, field: str
) -> None:
    def t(clock: str) -> datetime:
        return at(f"2026-10-05T{clock}+02:00")

    with pytest.raises(InvalidRecordError) as info:
        CallForRating("x", IN, t(arrived), None if answered is None else t(answered), t(ended))
    assert info.value.field == field


def test_call_record_is_normalised_to_utc() -> None:
    record = call("x", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00")
    assert record.answered_at == datetime(2026, 10, 5, 8, tzinfo=UTC)
    assert record.answered_at is not None
    assert record.answered_at.tzinfo is UTC
    with pytest.raises(InvalidRecordError, match="direction"):
        CallForRating("x", "sideways", record.arrived_at, None, record.ended_at)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="call_id"):
        replace(record, call_id="")


@pytest.mark.parametrize("share", [Fraction(0), Fraction(-1, 2), Fraction(3, 2), Decimal("NaN")])
def test_readiness_share_must_be_within_0_and_1(share: Fraction | Decimal) -> None:
    with pytest.raises(InvalidRecordError, match="share"):
        ready("2026-10-05T08:00:00+02:00", "2026-10-05T09:00:00+02:00", share)


def test_missing_rate_for_a_direction() -> None:
    contract = replace(BASE, rates=Rates(inbound=PER_SECOND_IN))
    outbound = call("o", "2026-10-05T10:00:00+02:00", "2026-10-05T10:01:00+02:00", direction=OUT)
    with pytest.raises(MissingRateError, match=r"rates\.outbound"):
        rate(contract, OCT, [outbound])


# -- architecture: core/ is pure -------------------------------------------------


@pytest.mark.parametrize("module", [rating_module, contract_module])
def test_core_billing_modules_import_only_the_stdlib(module: object) -> None:
    source = Path(getattr(module, "__file__", "")).read_text()
    forbidden = {"asyncio", "socket", "time", "os", "io", "pathlib", "random", "subprocess"}
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert name.startswith("pbx_controller.core") or top in sys.stdlib_module_names, name
            assert top not in forbidden, name


def test_public_names_are_exported() -> None:
    for module in (rating_module, contract_module):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        assert public <= set(module.__all__), public - set(module.__all__)
