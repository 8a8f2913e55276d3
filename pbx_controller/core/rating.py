"""Pure rating: a contract, one period's calls and readiness -> an invoice.

Implements BILLING.md rules 1-15 exactly. Quantities are exact `Fraction`s
until a line is priced; each line's amount is rounded half-up to 0.01 once.

Streaming: `PeriodRater` takes calls one at a time, in ascending
`(billing start, call_id)` order, and keeps only running totals, so a
million CDRs need constant memory. The order matters because calls use up
the included allowance in billing-start order (rule 9); ties on the instant
are broken by `call_id` (compared as Python strings, i.e. by code point,
which for lowercase UUID text is PostgreSQL's uuid order) so that two runs
always split the allowance the same way. A call out of order raises
`CallOrderError`. `rate_period` sorts for callers that hold all calls.

Pure: no IO, no clock, no asyncio; stdlib only.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo

from pbx_controller.core.contract import Basis, Contract, Direction, Increment, Rate, add_months

__all__ = [
    "DECIMAL_CONTEXT",
    "CallCharge",
    "CallForRating",
    "CallOrderError",
    "CallOutsidePeriodError",
    "DayKind",
    "DayRange",
    "InvalidRecordError",
    "Invoice",
    "InvoiceLine",
    "LateCallError",
    "LineCode",
    "MissingRateError",
    "Period",
    "PeriodRater",
    "RatedPeriod",
    "RaterFinishedError",
    "RatingError",
    "ReadinessInterval",
    "Unit",
    "billed_seconds",
    "billing_order_key",
    "billing_start",
    "call_period",
    "day_kind",
    "early_termination_months",
    "epoch_ms",
    "local_day",
    "local_midnight",
    "period_paid_days",
    "period_service_days",
    "period_trial_days",
    "rate_period",
    "round_half_up",
    "to_decimal",
    "whole_seconds",
]

# Every Decimal operation names this context, so a caller's thread-local
# decimal context can never change an invoice. 28 digits is Python's
# default precision, which is how expected.json prints 17/31 of a month.
DECIMAL_CONTEXT: Final = Context(prec=28, rounding=ROUND_HALF_EVEN)

_MS_PER_SECOND: Final = 1000
_SECONDS_PER_MINUTE: Final = 60
_MS_PER_HOUR: Final = 3_600_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO: Final = Fraction(0)
_NO_PRICE: Final = Decimal(0)  # trial and included minutes: printed as "0"


# -- errors -----------------------------------------------------------------


class RatingError(ValueError):
    """Base class: input the rating rules cannot price."""


class InvalidRecordError(RatingError):
    """A call or readiness record with an impossible field; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class CallOrderError(RatingError):
    """A call fed to `PeriodRater.add_call` out of (billing start, call_id) order."""


class CallOutsidePeriodError(RatingError):
    """A call whose billing start lies outside the period being rated."""


class LateCallError(RatingError):
    """A late call that does not belong to an earlier period, or a repeated one."""


class MissingRateError(RatingError):
    """An answered call in a direction the contract has no rate for."""


class RaterFinishedError(RatingError):
    """Input after `PeriodRater.finish()`."""


# -- time -------------------------------------------------------------------


def _utc(field: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidRecordError(field, f"expected a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRecordError(field, f"naive datetime {value.isoformat()} has no UTC offset")
    return value.astimezone(UTC)


def epoch_ms(instant: datetime) -> int:
    """Whole milliseconds since 1970 (UTC), truncating any microseconds.

    Rule 4 computes durations "on UTC instants in milliseconds", so each
    instant is taken to the millisecond first, then subtracted.
    """
    return (_utc("instant", instant) - _EPOCH) // timedelta(milliseconds=1)


def whole_seconds(duration_ms: int) -> int:
    """Duration rounded up to whole seconds: 1,400 ms is 2 s (rule 4)."""
    if duration_ms < 0:
        raise ValueError(f"duration must not be negative, got {duration_ms} ms")
    return -(-duration_ms // _MS_PER_SECOND)


def billed_seconds(duration_ms: int, increment: Increment) -> int:
    """Seconds billed for a duration under an "F/N" increment (rules 4-5)."""
    return increment.bill(whole_seconds(duration_ms))


def local_day(instant: datetime, zone: ZoneInfo) -> date:
    return _utc("instant", instant).astimezone(zone).date()


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which local `day` begins.

    fold=0: if midnight falls in a DST gap (not in Europe/Warsaw, where
    clocks move at 02:00/03:00), this is the instant the gap ends.
    """
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _next_day(day: date) -> date:
    return day if day == date.max else day + timedelta(days=1)


# -- periods and days -----------------------------------------------------

_PERIOD_RE: Final = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A calendar month in the contract's timezone (rule 1)."""

    year: int
    month: int

    def __post_init__(self) -> None:
        # Bounded so that local midnights in any zone stay within datetime.
        if not 1900 <= self.year <= 9998:
            raise ValueError(f"period year must be within 1900-9998, got {self.year}")
        if not 1 <= self.month <= 12:
            raise ValueError(f"period month must be within 1-12, got {self.month}")

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"expected a period like 2026-10, got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def containing(cls, day: date) -> Period:
        return cls(day.year, day.month)

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def stop_day(self) -> date:
        """The first day of the next period."""
        return self.next().first_day

    @property
    def days(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]

    @property
    def day_range(self) -> DayRange:
        return DayRange(self.first_day, self.stop_day)

    def next(self) -> Period:
        return Period(self.year + 1, 1) if self.month == 12 else Period(self.year, self.month + 1)

    def previous(self) -> Period:
        return Period(self.year - 1, 12) if self.month == 1 else Period(self.year, self.month - 1)

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, stop) of the period as UTC instants."""
        return local_midnight(self.first_day, zone), local_midnight(self.stop_day, zone)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class DayRange:
    """Local days `first` <= day < `stop`; empty when stop <= first."""

    first: date
    stop: date

    @property
    def days(self) -> int:
        return max(0, (self.stop - self.first).days)

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.first <= day < self.stop

    def clip(self, other: DayRange) -> DayRange:
        first, stop = max(self.first, other.first), min(self.stop, other.stop)
        return DayRange(first, stop) if first < stop else DayRange(first, first)


class DayKind(StrEnum):
    TRIAL = "trial"
    PAID = "paid"
    OUTSIDE_SERVICE = "outside_service"  # before start or after end


def _service_days(contract: Contract) -> DayRange:
    stop = date.max if contract.end is None else _next_day(contract.end)
    return DayRange(contract.start, stop)


def _trial_days(contract: Contract) -> DayRange:
    return _service_days(contract).clip(DayRange(contract.start, contract.first_paid_day))


def _paid_days(contract: Contract) -> DayRange:
    service = _service_days(contract)
    return service.clip(DayRange(contract.first_paid_day, service.stop))


def period_service_days(contract: Contract, period: Period) -> DayRange:
    """Service days (rule 6) within the period."""
    return _service_days(contract).clip(period.day_range)


def period_trial_days(contract: Contract, period: Period) -> DayRange:
    """Trial days, the first `trial_days` service days, within the period."""
    return _trial_days(contract).clip(period.day_range)


def period_paid_days(contract: Contract, period: Period) -> DayRange:
    """Paid days, the service days after the trial, within the period."""
    return _paid_days(contract).clip(period.day_range)


def day_kind(contract: Contract, day: date) -> DayKind:
    if day in _trial_days(contract):
        return DayKind.TRIAL
    if day in _paid_days(contract):
        return DayKind.PAID
    return DayKind.OUTSIDE_SERVICE


def early_termination_months(contract: Contract) -> int:
    """Months, or parts of months, of the minimum term left after `end` (rule 15).

    Term months are counted from `start` (2026-10-15 + 6 months has months
    10-15..11-14, ..., 2027-03-15..04-14), not as calendar months.
    Zero without an end, without a minimum term, or when the contract ends
    within the trial.
    """
    end, months = contract.end, contract.minimum_term_months
    if end is None or months is None or contract.ends_within_trial:
        return 0
    resume = _next_day(end)  # the first day no longer served
    # served = the number of whole term months that end on or before `end`:
    # the largest n with add_months(start, n) <= resume.
    start = contract.start
    served = (resume.year - start.year) * 12 + resume.month - start.month
    if add_months(start, served) > resume:
        served -= 1
    return max(0, months - max(0, served))


# -- inputs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallForRating:
    """The fields of one CDR that rating needs. Instants are stored in UTC."""

    call_id: str
    direction: Direction
    arrived_at: datetime
    answered_at: datetime | None  # None: never answered, never billed
    ended_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.call_id, str) or not self.call_id:
            raise InvalidRecordError("call_id", f"must be a non-empty string, got {self.call_id!r}")
        try:
            object.__setattr__(self, "direction", Direction(self.direction))
        except ValueError:
            raise InvalidRecordError(
                "direction", f"expected inbound or outbound, got {self.direction!r}"
            ) from None
        arrived = _utc("arrived_at", self.arrived_at)
        ended = _utc("ended_at", self.ended_at)
        object.__setattr__(self, "arrived_at", arrived)
        object.__setattr__(self, "ended_at", ended)
        if self.answered_at is not None:
            answered = _utc("answered_at", self.answered_at)
            object.__setattr__(self, "answered_at", answered)
            if answered < arrived:
                raise InvalidRecordError("answered_at", "is before arrived_at")
            if ended < answered:
                raise InvalidRecordError("ended_at", "is before answered_at")
        elif ended < arrived:
            raise InvalidRecordError("ended_at", "is before arrived_at")

    def billing_start(self, basis: Basis) -> datetime | None:
        """Rule 2: answer for `talk`, arrival for `total`; None if unanswered."""
        if self.answered_at is None:
            return None
        return self.answered_at if basis is Basis.TALK else self.arrived_at


@dataclass(frozen=True, slots=True)
class ReadinessInterval:
    """Time an agent was ready for this tenant, with the tenant's share of it.

    `share` is 1/k when the agent served k tenants at once (rule 12); a
    Decimal is converted to an exact Fraction.
    """

    agent: str
    started_at: datetime
    ended_at: datetime
    share: Fraction | Decimal = Fraction(1)

    def __post_init__(self) -> None:
        if not isinstance(self.agent, str) or not self.agent:
            raise InvalidRecordError("agent", f"must be a non-empty string, got {self.agent!r}")
        started = _utc("started_at", self.started_at)
        ended = _utc("ended_at", self.ended_at)
        if ended < started:
            raise InvalidRecordError("ended_at", "is before started_at")
        if isinstance(self.share, Decimal) and not self.share.is_finite():
            raise InvalidRecordError("share", f"must be a finite number, got {self.share}")
        if not isinstance(self.share, Fraction | Decimal):
            raise InvalidRecordError("share", f"expected a Fraction or Decimal, got {self.share!r}")
        share = Fraction(self.share)
        if not 0 < share <= 1:
            raise InvalidRecordError("share", f"must be > 0 and <= 1, got {self.share}")
        object.__setattr__(self, "started_at", started)
        object.__setattr__(self, "ended_at", ended)
        object.__setattr__(self, "share", share)


def _rate(contract: Contract, call: CallForRating) -> Rate:
    rate = contract.rates.get(call.direction)
    if rate is None:
        raise MissingRateError(
            f"call {call.call_id}: contract for {contract.tenant} has no rates.{call.direction}"
        )
    return rate


def billing_start(contract: Contract, call: CallForRating) -> datetime | None:
    """The call's billing start under its direction's basis; None if unanswered."""
    if call.answered_at is None:
        return None  # checked first: an unanswered call needs no rate
    return call.billing_start(_rate(contract, call).basis)


def billing_order_key(contract: Contract, call: CallForRating) -> tuple[datetime, str] | None:
    """The order `PeriodRater.add_call` needs: (billing start, call_id)."""
    start = billing_start(contract, call)
    return None if start is None else (start, call.call_id)


def call_period(contract: Contract, call: CallForRating) -> Period | None:
    """The period a call is billed in (rule 3); None if it is never billed."""
    start = billing_start(contract, call)
    return None if start is None else Period.containing(local_day(start, contract.zone))


# -- outputs ----------------------------------------------------------------


class LineCode(StrEnum):
    """Invoice line codes, in the order lines appear on an invoice."""

    TRIAL_CALLS = "trial_calls"
    INCLUDED_MINUTES = "included_minutes"
    INBOUND_MINUTES = "inbound_minutes"
    OUTBOUND_MINUTES = "outbound_minutes"
    CONNECT_FEES_INBOUND = "connect_fees_inbound"
    CONNECT_FEES_OUTBOUND = "connect_fees_outbound"
    SUBSCRIPTION_FEE = "subscription_fee"
    UNUSED_MINUTES = "unused_minutes"
    READINESS = "readiness"
    EARLY_TERMINATION = "early_termination"
    ADJUSTMENTS = "adjustments"


_MINUTES_CODE: Final = {
    Direction.INBOUND: LineCode.INBOUND_MINUTES,
    Direction.OUTBOUND: LineCode.OUTBOUND_MINUTES,
}
_CONNECT_CODE: Final = {
    Direction.INBOUND: LineCode.CONNECT_FEES_INBOUND,
    Direction.OUTBOUND: LineCode.CONNECT_FEES_OUTBOUND,
}


class Unit(StrEnum):
    MINUTE = "min"
    CALL = "call"
    MONTH = "month"
    HOUR = "h"


def to_decimal(value: Fraction) -> Decimal:
    """A quantity as a Decimal of at most 28 significant digits.

    Exact when the fraction terminates (174/60 -> 2.9, 120/60 -> 2), else
    rounded half-even at the 28th digit (17/31 -> 0.548...7742), as in
    expected.json. Only for display: amounts use the exact fraction.
    """
    return DECIMAL_CONTEXT.divide(Decimal(value.numerator), Decimal(value.denominator))


def round_half_up(value: Fraction, places: int = 2) -> Decimal:
    """`value` rounded half away from zero to `places` decimals (rule 13)."""
    magnitude = math.floor(abs(value) * 10**places + Fraction(1, 2))
    return Decimal(-magnitude if value < 0 else magnitude).scaleb(-places, DECIMAL_CONTEXT)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    code: LineCode
    quantity: Decimal  # to_decimal(exact_quantity)
    unit: Unit
    unit_price: Decimal
    amount: Decimal  # exact_quantity * unit_price, rounded half-up once
    exact_quantity: Fraction
    call_id: str | None = None  # the original call, on adjustments lines only

    @classmethod
    def priced(
        cls,
        code: LineCode,
        exact_quantity: Fraction,
        unit: Unit,
        unit_price: Decimal,
        call_id: str | None = None,
    ) -> InvoiceLine:
        return cls(
            code=code,
            quantity=to_decimal(exact_quantity),
            unit=unit,
            unit_price=unit_price,
            amount=round_half_up(exact_quantity * Fraction(unit_price)),
            exact_quantity=exact_quantity,
            call_id=call_id,
        )


@dataclass(frozen=True, slots=True)
class Invoice:
    tenant: str
    period: Period
    currency: str
    lines: tuple[InvoiceLine, ...]
    vat_percent: Decimal
    net: Decimal
    vat: Decimal
    gross: Decimal

    def line(self, code: LineCode) -> InvoiceLine | None:
        """The line with `code` (for adjustments, the first one), if any."""
        return next((line for line in self.lines if line.code == code), None)


@dataclass(frozen=True, slots=True)
class CallCharge:
    """How one call was rated: one row of the call-detail export."""

    call_id: str
    direction: Direction
    billing_start: datetime  # UTC
    day: date  # local day of the billing start
    day_kind: DayKind
    billed_seconds: int  # after the increment
    included_seconds: Fraction  # taken from the allowance (may be fractional)
    charged_seconds: Fraction  # priced at per_minute
    per_minute: Decimal  # the price of charged seconds (0 on a trial day)
    connect_fee: Decimal | None  # the connect fee this call paid, if any
    codes: tuple[LineCode, ...]  # invoice lines this call contributed to
    late: bool = False  # billed on adjustments lines of a later period

    @property
    def exact_amount(self) -> Fraction:
        """Charged minutes at per_minute plus the connect fee, unrounded."""
        amount = self.charged_seconds / _SECONDS_PER_MINUTE * Fraction(self.per_minute)
        return amount + Fraction(self.connect_fee or 0)

    @property
    def amount(self) -> Decimal:
        """Rounded for display; lines round their own exact totals (rule 13)."""
        return round_half_up(self.exact_amount)


# -- the rater --------------------------------------------------------------


class _Measured(NamedTuple):
    """What rules 2-6 say about one answered call."""

    rate: Rate
    start: datetime  # billing start
    day: date  # its local day
    kind: DayKind
    seconds: int  # billed seconds after the increment


class PeriodRater:
    """Rates one tenant's period from calls fed one by one.

    Precondition: `add_call` receives the period's calls in strictly
    ascending `billing_order_key` order, (billing start, call_id);
    unanswered calls may come anywhere and are not billed. Readiness
    intervals and late calls may come in any order. `finish()` once.

    Memory is constant in the number of calls; late calls (few, by nature)
    are kept until `finish()` to list them in a stable order.
    """

    def __init__(
        self, contract: Contract, period: Period, *, last_invoice: bool | None = None
    ) -> None:
        """`last_invoice` defaults to "the period contains `end`" (rule 15)."""
        if last_invoice and contract.end is None:
            raise RatingError("last_invoice needs a contract with an end date")
        self._contract = contract
        self._period = period
        self._zone = contract.zone
        self._period_start, self._period_stop = period.bounds(self._zone)
        self._last_invoice = (
            last_invoice
            if last_invoice is not None
            else contract.end is not None and Period.containing(contract.end) == period
        )
        paid = period_paid_days(contract, period)
        # Readiness is clipped to the paid days at local midnight (rule 12);
        # paid days in a period are contiguous, so one window suffices.
        self._paid_window_ms: tuple[int, int] | None = (
            (
                epoch_ms(local_midnight(paid.first, self._zone)),
                epoch_ms(local_midnight(paid.stop, self._zone)),
            )
            if paid.days
            else None
        )
        self._proration = Fraction(paid.days, period.days)  # rule 8's f
        subscription = contract.subscription
        minutes = 0 if subscription is None else subscription.included_minutes
        self._allowance = minutes * _SECONDS_PER_MINUTE * self._proration
        self._allowance_left = self._allowance
        self._trial_seconds = 0
        self._included_seconds = Fraction(0)
        # Charged seconds: whole ones as ints, plus the fractional remainder
        # of the call that exhausted a prorated allowance.
        self._charged_whole = dict.fromkeys(Direction, 0)
        self._charged_part = dict.fromkeys(Direction, _ZERO)
        self._connects = dict.fromkeys(Direction, 0)
        self._readiness_ms = Fraction(0)  # sum of ms * share
        self._last_key: tuple[datetime, str] | None = None
        self._late: list[tuple[tuple[datetime, str], list[InvoiceLine]]] = []
        self._late_ids: set[str] = set()
        self._finished = False

    @property
    def period(self) -> Period:
        return self._period

    @property
    def proration(self) -> Fraction:
        """Paid days in the period / days in the month (rule 8)."""
        return self._proration

    @property
    def allowance_seconds(self) -> Fraction:
        return self._allowance

    @property
    def allowance_left_seconds(self) -> Fraction:
        return self._allowance_left

    def _check_open(self) -> None:
        if self._finished:
            raise RaterFinishedError(f"the rater for {self._period} has already finished")

    def _measure(self, call: CallForRating) -> _Measured | None:
        if call.answered_at is None:
            return None
        rate = _rate(self._contract, call)
        start = call.answered_at if rate.basis is Basis.TALK else call.arrived_at
        day = local_day(start, self._zone)
        return _Measured(
            rate=rate,
            start=start,
            day=day,
            kind=day_kind(self._contract, day),
            seconds=billed_seconds(epoch_ms(call.ended_at) - epoch_ms(start), rate.increment),
        )

    def add_call(self, call: CallForRating) -> CallCharge | None:
        """Rate one call of this period; None if it was never answered.

        Raises `CallOrderError` if the call does not come strictly after the
        previous one in (billing start, call_id) order, and
        `CallOutsidePeriodError` if its billing start is in another period.
        """
        self._check_open()
        measured = self._measure(call)
        if measured is None:
            return None
        rate, start, day, kind, seconds = measured
        if not self._period_start <= start < self._period_stop:
            raise CallOutsidePeriodError(
                f"call {call.call_id}: billing start {start.isoformat()} (local day {day})"
                f" is not in period {self._period}"
            )
        key = (start, call.call_id)
        if self._last_key is not None and key <= self._last_key:
            previous_start, previous_id = self._last_key
            raise CallOrderError(
                f"call {call.call_id} ({start.isoformat()}) does not come after call"
                f" {previous_id} ({previous_start.isoformat()}); calls must be fed in"
                " ascending (billing start, call_id) order, each once"
            )
        self._last_key = key

        included = charged = _ZERO
        connect_fee = None
        codes: list[LineCode] = []
        if kind is DayKind.TRIAL:
            self._trial_seconds += seconds  # free, uses no allowance (rule 7)
            codes.append(LineCode.TRIAL_CALLS)
        elif kind is DayKind.PAID:
            if self._allowance_left:
                included = min(Fraction(seconds), self._allowance_left)
                charged = seconds - included  # fractional once: at the split
                self._allowance_left -= included
                self._included_seconds += included
                self._charged_part[call.direction] += charged
                if included:
                    codes.append(LineCode.INCLUDED_MINUTES)
            else:
                # The common case once the allowance is gone: whole seconds,
                # summed as ints (a million Fraction additions are slow).
                charged = Fraction(seconds)
                self._charged_whole[call.direction] += seconds
            if charged:
                codes.append(_MINUTES_CODE[call.direction])
            if rate.connect_fee is not None:
                connect_fee = rate.connect_fee
                self._connects[call.direction] += 1
                codes.append(_CONNECT_CODE[call.direction])
        # DayKind.OUTSIDE_SERVICE: no contract covers the day; nothing is billed.
        return CallCharge(
            call_id=call.call_id,
            direction=call.direction,
            billing_start=start,
            day=day,
            day_kind=kind,
            billed_seconds=seconds,
            included_seconds=included,
            charged_seconds=charged,
            per_minute=rate.per_minute if kind is DayKind.PAID else _NO_PRICE,
            connect_fee=connect_fee,
            codes=tuple(codes),
        )

    def add_late_call(self, call: CallForRating) -> CallCharge | None:
        """Bill a call of an earlier, closed period on `adjustments` lines (rule 14).

        Priced at its direction's per_minute plus connect fee, with no
        allowance: its own period's allowance was settled when that period
        closed. A call whose day was a trial day is listed at price 0.
        """
        self._check_open()
        measured = self._measure(call)
        if measured is None:
            return None
        rate, start, day, kind, seconds = measured
        if start >= self._period_start:
            raise LateCallError(
                f"call {call.call_id}: billing start {start.isoformat()} is not before period"
                f" {self._period}; it is not a late call here"
            )
        if call.call_id in self._late_ids:
            raise LateCallError(f"call {call.call_id} was already given as a late call")
        self._late_ids.add(call.call_id)
        minutes = Fraction(seconds, _SECONDS_PER_MINUTE)
        lines: list[InvoiceLine] = []
        connect_fee = None
        if kind is DayKind.TRIAL:
            lines.append(self._adjustment(minutes, Unit.MINUTE, _NO_PRICE, call))
        elif kind is DayKind.PAID:
            lines.append(self._adjustment(minutes, Unit.MINUTE, rate.per_minute, call))
            if rate.connect_fee is not None:
                connect_fee = rate.connect_fee
                lines.append(self._adjustment(Fraction(1), Unit.CALL, connect_fee, call))
        lines = [line for line in lines if line.exact_quantity]
        self._late.append(((start, call.call_id), lines))
        return CallCharge(
            call_id=call.call_id,
            direction=call.direction,
            billing_start=start,
            day=day,
            day_kind=kind,
            billed_seconds=seconds,
            included_seconds=_ZERO,
            charged_seconds=Fraction(seconds) if kind is DayKind.PAID else _ZERO,
            per_minute=rate.per_minute if kind is DayKind.PAID else _NO_PRICE,
            connect_fee=connect_fee,
            codes=(LineCode.ADJUSTMENTS,) if lines else (),
            late=True,
        )

    @staticmethod
    def _adjustment(
        quantity: Fraction, unit: Unit, price: Decimal, call: CallForRating
    ) -> InvoiceLine:
        return InvoiceLine.priced(LineCode.ADJUSTMENTS, quantity, unit, price, call.call_id)

    def add_readiness(self, interval: ReadinessInterval) -> None:
        """Count readiness time on this period's paid days (rule 12)."""
        self._check_open()
        if self._paid_window_ms is None:
            return
        low, high = self._paid_window_ms
        start = max(epoch_ms(interval.started_at), low)
        stop = min(epoch_ms(interval.ended_at), high)
        if stop > start:
            self._readiness_ms += (stop - start) * Fraction(interval.share)

    def finish(self) -> Invoice:
        """The period's invoice. The rater accepts nothing afterwards."""
        self._check_open()
        self._finished = True
        contract = self._contract
        lines: list[InvoiceLine] = []

        def add(code: LineCode, quantity: Fraction, unit: Unit, price: Decimal) -> None:
            if quantity:  # zero-quantity lines are left out (rule 13)
                lines.append(InvoiceLine.priced(code, quantity, unit, price))

        minute = Fraction(1, _SECONDS_PER_MINUTE)
        add(LineCode.TRIAL_CALLS, self._trial_seconds * minute, Unit.MINUTE, _NO_PRICE)
        add(LineCode.INCLUDED_MINUTES, self._included_seconds * minute, Unit.MINUTE, _NO_PRICE)
        for direction in Direction:
            rate = contract.rates.get(direction)
            if rate is not None:
                seconds = self._charged_whole[direction] + self._charged_part[direction]
                add(_MINUTES_CODE[direction], seconds * minute, Unit.MINUTE, rate.per_minute)
        for direction in Direction:
            rate = contract.rates.get(direction)
            if rate is not None and rate.connect_fee is not None:
                count = Fraction(self._connects[direction])
                add(_CONNECT_CODE[direction], count, Unit.CALL, rate.connect_fee)
        subscription = contract.subscription
        if subscription is not None:
            fee = subscription.monthly_fee
            add(LineCode.SUBSCRIPTION_FEE, self._proration, Unit.MONTH, fee)
            if subscription.unused_minute_rate is not None:
                unused = self._allowance_left * minute
                add(LineCode.UNUSED_MINUTES, unused, Unit.MINUTE, subscription.unused_minute_rate)
        if contract.readiness is not None:
            hours = self._readiness_ms / _MS_PER_HOUR
            add(LineCode.READINESS, hours, Unit.HOUR, contract.readiness.per_hour)
        if self._last_invoice and subscription is not None:
            months = Fraction(early_termination_months(contract))
            add(LineCode.EARLY_TERMINATION, months, Unit.MONTH, subscription.monthly_fee)
        for _, late_lines in sorted(self._late, key=lambda item: item[0]):
            lines.extend(late_lines)

        net = Decimal("0.00")
        for line in lines:
            net = DECIMAL_CONTEXT.add(net, line.amount)
        vat = round_half_up(Fraction(net) * Fraction(contract.vat_percent) / 100)
        return Invoice(
            tenant=contract.tenant,
            period=self._period,
            currency=contract.currency,
            lines=tuple(lines),
            vat_percent=contract.vat_percent,
            net=net,
            vat=vat,
            gross=DECIMAL_CONTEXT.add(net, vat),
        )


@dataclass(frozen=True, slots=True)
class RatedPeriod:
    invoice: Invoice
    calls: tuple[CallCharge, ...]  # billed calls in billing order, then late calls


def rate_period(
    contract: Contract,
    period: Period,
    calls: Iterable[CallForRating],
    readiness: Iterable[ReadinessInterval] = (),
    late_calls: Iterable[CallForRating] = (),
    *,
    last_invoice: bool | None = None,
) -> RatedPeriod:
    """Rate a period whose calls fit in memory; sorts them for `PeriodRater`.

    Every answered call must belong to `period` (see `call_period`).
    """
    rater = PeriodRater(contract, period, last_invoice=last_invoice)
    keyed = []
    for call in calls:
        key = billing_order_key(contract, call)
        if key is not None:
            keyed.append((key, call))
    keyed.sort(key=lambda item: item[0])
    charges: list[CallCharge] = []
    for _, call in keyed:
        charge = rater.add_call(call)
        if charge is not None:
            charges.append(charge)
    for call in late_calls:
        charge = rater.add_late_call(call)
        if charge is not None:
            charges.append(charge)
    for interval in readiness:
        rater.add_readiness(interval)
    return RatedPeriod(invoice=rater.finish(), calls=tuple(charges))
