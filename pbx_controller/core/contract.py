"""A tenant's billing contract, parsed from TOML into frozen dataclasses.

The parser is strict (BILLING.md, "The contract"): an unknown key, a value
of the wrong type, a malformed increment, a negative price, an unknown
timezone or an impossible date raises `ContractError`, whose `key` is the
full TOML path of the offending key (for example `rates.inbound.increment`).
Nothing is ever ignored.

This module is pure: it takes the dict `tomllib` already produced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "Basis",
    "Contract",
    "ContractError",
    "Direction",
    "Increment",
    "Rate",
    "Rates",
    "ReadinessRate",
    "Subscription",
    "add_months",
    "parse_contract",
]


class ContractError(ValueError):
    """A contract that cannot be used; `key` is the TOML path at fault."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def under(self, prefix: str) -> ContractError:
        """The same problem, with the key placed inside table `prefix`."""
        return ContractError(f"{prefix}.{self.key}", self.problem)


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Basis(StrEnum):
    """Where a call's billed time starts (BILLING.md rule 2)."""

    TALK = "talk"  # from the answer instant
    TOTAL = "total"  # from the arrival instant


_INCREMENT_RE: Final = re.compile(r"([0-9]+)/([0-9]+)")
# Plain decimal notation only: "1E+2" or " 1.5" in a price is a typo, not a price.
_DECIMAL_RE: Final = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")


def _check_count(key: str, value: int) -> None:
    # bool is an int subclass; `trial_days = true` must not mean 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(key, f"expected an integer, got {value!r}")
    if value < 0:
        raise ContractError(key, f"must not be negative, got {value}")


def _check_money(key: str, value: Decimal) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ContractError(key, f"expected a finite Decimal, got {value!r}")
    if value.is_signed():
        raise ContractError(key, f"must not be negative, got {value}")


def _check_date(key: str, value: date) -> None:
    # datetime is a date subclass; a contract day has no time of day.
    if isinstance(value, datetime) or not isinstance(value, date):
        raise ContractError(key, f"expected a date like 2026-10-01, got {value!r}")


@dataclass(frozen=True, slots=True)
class Increment:
    """Billing increment "F/N": a first block of F seconds, then N-second steps."""

    first: int
    step: int

    def __post_init__(self) -> None:
        for key, value in (("first", self.first), ("step", self.step)):
            _check_count(key, value)
            if value == 0:
                raise ContractError(key, "must be at least 1 second")

    @classmethod
    def parse(cls, text: str) -> Increment:
        match = _INCREMENT_RE.fullmatch(text)
        if match is None:
            raise ValueError(f'expected "F/N" in whole seconds like "30/6", got {text!r}')
        try:
            return cls(int(match[1]), int(match[2]))
        except ContractError as exc:
            raise ValueError(f"{text!r}: {exc.problem}") from None

    def bill(self, seconds: int) -> int:
        """Billed seconds for `seconds` of call time (rule 5)."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        if seconds == 0:
            return 0
        if seconds <= self.first:
            return self.first
        steps = -(-(seconds - self.first) // self.step)  # ceil without floats
        return self.first + steps * self.step

    def __str__(self) -> str:
        return f"{self.first}/{self.step}"


@dataclass(frozen=True, slots=True)
class Rate:
    """What one direction's calls cost."""

    per_minute: Decimal
    increment: Increment
    basis: Basis
    # None: the contract has no connect fee, so the invoice has no such line.
    connect_fee: Decimal | None = None

    def __post_init__(self) -> None:
        _check_money("per_minute", self.per_minute)
        if self.connect_fee is not None:
            _check_money("connect_fee", self.connect_fee)


@dataclass(frozen=True, slots=True)
class Rates:
    inbound: Rate | None = None
    outbound: Rate | None = None

    def __post_init__(self) -> None:
        if self.inbound is None and self.outbound is None:
            raise ContractError("rates", "needs [rates.inbound] or [rates.outbound]")

    def get(self, direction: Direction) -> Rate | None:
        return self.inbound if direction is Direction.INBOUND else self.outbound


@dataclass(frozen=True, slots=True)
class Subscription:
    monthly_fee: Decimal
    included_minutes: int = 0
    # Required when included_minutes > 0, so a forgotten rate is an error.
    unused_minute_rate: Decimal | None = None

    def __post_init__(self) -> None:
        _check_money("monthly_fee", self.monthly_fee)
        _check_count("included_minutes", self.included_minutes)
        if self.unused_minute_rate is not None:
            _check_money("unused_minute_rate", self.unused_minute_rate)
        elif self.included_minutes > 0:
            raise ContractError("unused_minute_rate", "required when included_minutes > 0")


@dataclass(frozen=True, slots=True)
class ReadinessRate:
    per_hour: Decimal

    def __post_init__(self) -> None:
        _check_money("per_hour", self.per_hour)


def add_months(day: date, months: int) -> date:
    """`day` moved by whole calendar months, clamped to the month's last day.

    Always counted from the same anchor: 2026-01-31 + 2 is 2026-03-31, not
    the 28th that stepping through February would give.
    """
    index = day.year * 12 + day.month - 1 + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    next_first = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    last = (next_first - date(year, month, 1)).days
    return date(year, month, min(day.day, last))


@dataclass(frozen=True, slots=True)
class Contract:
    """One tenant's contract. Days are local dates in `timezone`."""

    tenant: str
    currency: str
    timezone: str
    start: date  # first service day
    vat_percent: Decimal
    rates: Rates
    end: date | None = None  # last service day, inclusive
    trial_days: int = 0
    minimum_term_months: int | None = None
    subscription: Subscription | None = None
    readiness: ReadinessRate | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tenant, str) or not self.tenant.strip():
            raise ContractError("tenant", "must be a non-empty string")
        if not isinstance(self.currency, str) or not _CURRENCY_RE.fullmatch(self.currency):
            raise ContractError("currency", f"expected a code like 'PLN', got {self.currency!r}")
        _load_zone(self.timezone)
        _check_date("start", self.start)
        _check_money("vat_percent", self.vat_percent)
        if self.end is not None:
            _check_date("end", self.end)
            if self.end < self.start:
                raise ContractError("end", f"{self.end} is before start {self.start}")
        _check_count("trial_days", self.trial_days)
        try:
            self.first_paid_day  # noqa: B018 - computed only to prove it exists
        except (ValueError, OverflowError):
            raise ContractError("trial_days", f"too large: {self.trial_days}") from None
        if self.minimum_term_months is not None:
            _check_count("minimum_term_months", self.minimum_term_months)
            # The early-termination fee is counted in monthly fees; without a
            # subscription the key would silently do nothing.
            if self.subscription is None:
                raise ContractError("minimum_term_months", "requires a [subscription]")
            try:
                self.minimum_term_end  # noqa: B018
            except (ValueError, OverflowError):
                raise ContractError(
                    "minimum_term_months", f"too large: {self.minimum_term_months}"
                ) from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key

    @property
    def first_paid_day(self) -> date:
        """The day after the trial; may lie after `end`."""
        return date.fromordinal(self.start.toordinal() + self.trial_days)

    @property
    def ends_within_trial(self) -> bool:
        return self.end is not None and self.end < self.first_paid_day

    @property
    def minimum_term_end(self) -> date | None:
        """The first day after the minimum term, or None without one."""
        if self.minimum_term_months is None:
            return None
        return add_months(self.start, self.minimum_term_months)


def _load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ContractError("timezone", f"expected an IANA name like 'Europe/Warsaw', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: keys like "../x" that are not valid zone paths at all.
        raise ContractError("timezone", f"unknown timezone {name!r}") from None


# -- parsing ---------------------------------------------------------------

_MISSING: Final = object()


class _Table:
    """One TOML table; every key must be taken, or it is reported as unknown."""

    def __init__(self, data: object, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(data, Mapping):
            raise ContractError(path or "<contract>", f"expected a table, got {data!r}")
        self.path = path
        self.data = data
        for key in data:
            if key not in allowed:
                raise ContractError(self.key(str(key)), "unknown key")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str) -> object:
        return self.data.get(name, _MISSING)

    def require(self, name: str) -> object:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            raise ContractError(self.key(name), "missing")
        return value

    def text(self, name: str) -> str:
        value = self.require(name)
        if not isinstance(value, str):
            raise ContractError(self.key(name), f"expected a string, got {value!r}")
        return value

    def money(self, name: str) -> Decimal:
        return self._money(self.key(name), self.require(name))

    def optional_money(self, name: str) -> Decimal | None:
        value = self.get(name)
        return None if value is _MISSING else self._money(self.key(name), value)

    @staticmethod
    def _money(key: str, value: object) -> Decimal:
        # A TOML float has already lost the exact price; an int is refused
        # too, so that every price is written one way.
        if not isinstance(value, str) or not _DECIMAL_RE.fullmatch(value):
            raise ContractError(key, f'expected a decimal string like "0.50", got {value!r}')
        amount = Decimal(value)
        if amount.is_signed():
            raise ContractError(key, f"must not be negative, got {value!r}")
        return amount

    def count(self, name: str) -> int | None:
        value = self.get(name)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(self.key(name), f"expected an integer, got {value!r}")
        if value < 0:
            raise ContractError(self.key(name), f"must not be negative, got {value}")
        return value

    def day(self, name: str) -> date:
        return self._day(self.key(name), self.require(name))

    def optional_day(self, name: str) -> date | None:
        value = self.get(name)
        return None if value is _MISSING else self._day(self.key(name), value)

    @staticmethod
    def _day(key: str, value: object) -> date:
        if isinstance(value, datetime) or not isinstance(value, date):
            raise ContractError(key, f"expected a TOML date like 2026-10-01, got {value!r}")
        return value


_TOP_KEYS: Final = frozenset(
    {
        "tenant",
        "currency",
        "timezone",
        "start",
        "end",
        "trial_days",
        "minimum_term_months",
        "vat_percent",
        "rates",
        "subscription",
        "readiness",
    }
)
_RATE_KEYS: Final = frozenset({"per_minute", "increment", "connect_fee", "basis"})
_SUBSCRIPTION_KEYS: Final = frozenset({"monthly_fee", "included_minutes", "unused_minute_rate"})
_READINESS_KEYS: Final = frozenset({"per_hour"})


def _parse_rate(data: object, path: str) -> Rate:
    table = _Table(data, path, _RATE_KEYS)
    per_minute = table.money("per_minute")
    increment_text = table.text("increment")
    try:
        increment = Increment.parse(increment_text)
    except ValueError as exc:
        raise ContractError(table.key("increment"), str(exc)) from None
    basis_text = table.text("basis")
    try:
        basis = Basis(basis_text)
    except ValueError:
        raise ContractError(
            table.key("basis"), f'expected "talk" or "total", got {basis_text!r}'
        ) from None
    connect_fee = table.optional_money("connect_fee")
    try:
        return Rate(per_minute, increment, basis, connect_fee)
    except ContractError as exc:  # relations between values; name them in full
        raise exc.under(path) from None


def _parse_subscription(data: object) -> Subscription:
    table = _Table(data, "subscription", _SUBSCRIPTION_KEYS)
    monthly_fee = table.money("monthly_fee")
    included = table.count("included_minutes") or 0
    unused_minute_rate = table.optional_money("unused_minute_rate")
    try:
        return Subscription(monthly_fee, included, unused_minute_rate)
    except ContractError as exc:
        raise exc.under("subscription") from None


def _parse_rates(data: object) -> Rates:
    table = _Table(data, "rates", frozenset(Direction))
    found: dict[Direction, Rate] = {}
    for direction in Direction:
        raw = table.get(direction)
        if raw is not _MISSING:
            found[direction] = _parse_rate(raw, f"rates.{direction}")
    return Rates(inbound=found.get(Direction.INBOUND), outbound=found.get(Direction.OUTBOUND))


def parse_contract(data: Mapping[str, object]) -> Contract:
    """Build a `Contract` from a `tomllib`-parsed document.

    Raises `ContractError` naming the key path of the first problem found.
    """
    table = _Table(data, "", _TOP_KEYS)
    raw_subscription = table.get("subscription")
    raw_readiness = table.get("readiness")
    # Keyword arguments are evaluated in order, so problems are reported in
    # the order the keys usually appear in the file. Contract.__post_init__
    # then checks how the values relate (end after start, ...).
    return Contract(
        tenant=table.text("tenant"),
        currency=table.text("currency"),
        timezone=table.text("timezone"),
        start=table.day("start"),
        end=table.optional_day("end"),
        trial_days=table.count("trial_days") or 0,
        minimum_term_months=table.count("minimum_term_months"),
        vat_percent=table.money("vat_percent"),
        rates=_parse_rates(table.require("rates")),
        subscription=(
            None if raw_subscription is _MISSING else _parse_subscription(raw_subscription)
        ),
        readiness=(
            None
            if raw_readiness is _MISSING
            else ReadinessRate(
                _Table(raw_readiness, "readiness", _READINESS_KEYS).money("per_hour")
            )
        ),
    )
