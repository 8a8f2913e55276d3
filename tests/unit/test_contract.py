"""Contract parsing: strict, and every error names the TOML key path."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx_controller.core.contract import (
    Basis,
    Contract,
    ContractError,
    Direction,
    Increment,
    Rate,
    Rates,
    ReadinessRate,
    Subscription,
    add_months,
    parse_contract,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "billing"

FULL = """
tenant = "smallco"
currency = "PLN"
timezone = "Europe/Warsaw"
start = 2026-10-01
end = 2027-03-31
trial_days = 14
minimum_term_months = 6
vat_percent = "23"

[rates.inbound]
per_minute = "0.50"
increment = "60/60"
connect_fee = "0.10"
basis = "talk"

[rates.outbound]
per_minute = "0.60"
increment = "30/6"
basis = "total"

[subscription]
monthly_fee = "310.00"
included_minutes = 31
unused_minute_rate = "0.20"

[readiness]
per_hour = "14.50"
"""


def full() -> dict[str, Any]:
    return tomllib.loads(FULL)


def error_key(data: dict[str, Any]) -> str:
    with pytest.raises(ContractError) as info:
        parse_contract(data)
    # The message starts with the key, so the operator sees it first.
    assert str(info.value).startswith(f"{info.value.key}: ")
    return info.value.key


def test_full_contract_parses_every_key() -> None:
    contract = parse_contract(full())
    assert contract == Contract(
        tenant="smallco",
        currency="PLN",
        timezone="Europe/Warsaw",
        start=date(2026, 10, 1),
        end=date(2027, 3, 31),
        trial_days=14,
        minimum_term_months=6,
        vat_percent=Decimal("23"),
        rates=Rates(
            inbound=Rate(Decimal("0.50"), Increment(60, 60), Basis.TALK, Decimal("0.10")),
            outbound=Rate(Decimal("0.60"), Increment(30, 6), Basis.TOTAL, None),
        ),
        subscription=Subscription(Decimal("310.00"), 31, Decimal("0.20")),
        readiness=ReadinessRate(Decimal("14.50")),
    )
    # The written scale is kept: "0.50" prints as 0.50 on the invoice.
    assert str(contract.rates.inbound.per_minute) == "0.50"  # type: ignore[union-attr]
    assert contract.first_paid_day == date(2026, 10, 15)
    assert contract.minimum_term_end == date(2027, 4, 1)
    assert contract.zone.key == "Europe/Warsaw"


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_example_contracts_parse(name: str) -> None:
    with (DATA / name / "contract.toml").open("rb") as file:
        contract = parse_contract(tomllib.load(file))
    assert contract.currency == "PLN"


def test_optional_keys_default() -> None:
    data = full()
    for key in ("end", "trial_days", "minimum_term_months", "subscription", "readiness"):
        del data[key]
    del data["rates"]["inbound"]["connect_fee"]
    contract = parse_contract(data)
    assert contract.end is None
    assert contract.trial_days == 0
    assert contract.minimum_term_months is None
    assert contract.subscription is None
    assert contract.readiness is None
    assert contract.rates.inbound is not None
    assert contract.rates.inbound.connect_fee is None
    assert contract.ends_within_trial is False


def test_one_direction_is_enough() -> None:
    data = full()
    del data["rates"]["outbound"]
    contract = parse_contract(data)
    assert contract.rates.get(Direction.OUTBOUND) is None
    assert contract.rates.get(Direction.INBOUND) is not None


def set_path(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *tables, key = path.split(".")
    target = data
    for table in tables:
        target = target[table]
    target[key] = value
    return data


def drop_path(data: dict[str, Any], path: str) -> dict[str, Any]:
    *tables, key = path.split(".")
    target = data
    for table in tables:
        target = target[table]
    del target[key]
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # unknown keys at every level, never ignored
        ("colour", "blue"),
        ("rates.inbound.per_minut", "0.50"),
        ("rates.internal", {"per_minute": "0.10", "increment": "1/1", "basis": "talk"}),
        ("subscription.included_hours", 3),
        ("readiness.per_minute", "1.00"),
    ],
)
def test_unknown_key_is_named(path: str, value: object) -> None:
    assert error_key(set_path(full(), path, value)) == path


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("rates.inbound.increment", "60"),
        ("rates.inbound.increment", "60/"),
        ("rates.inbound.increment", "0/60"),
        ("rates.inbound.increment", "60/0"),
        ("rates.inbound.increment", "-1/6"),
        ("rates.inbound.increment", "1.5/6"),
        ("rates.inbound.increment", " 30/6"),
        ("rates.inbound.increment", 60),
        ("rates.outbound.increment", "30:6"),
        ("rates.inbound.basis", "answer"),
        ("rates.inbound.basis", "Talk"),
        ("rates.inbound.per_minute", "-0.50"),
        ("rates.inbound.per_minute", "-0"),
        ("rates.inbound.per_minute", 0.5),  # a float already lost the exact price
        ("rates.inbound.per_minute", 1),
        ("rates.inbound.per_minute", "1e2"),
        ("rates.inbound.per_minute", "NaN"),
        ("rates.inbound.per_minute", "0,50"),
        ("rates.inbound.per_minute", ""),
        ("rates.outbound.connect_fee", "-0.10"),
        ("subscription.monthly_fee", "-310.00"),
        ("subscription.included_minutes", -1),
        ("subscription.included_minutes", "31"),
        ("subscription.included_minutes", True),
        ("subscription.included_minutes", 31.0),
        ("subscription.unused_minute_rate", "-0.20"),
        ("readiness.per_hour", "-14.50"),
        ("vat_percent", 23),
        ("vat_percent", "-23"),
        ("timezone", "Europe/Warsow"),
        ("timezone", "../../etc/passwd"),
        ("timezone", ""),
        ("timezone", 1),
        ("start", "2026-10-01"),  # a string, not a TOML date
        ("start", datetime(2026, 10, 1, 0, 0)),
        ("end", date(2026, 9, 30)),  # before start
        ("trial_days", -1),
        ("trial_days", True),
        ("trial_days", 10**9),  # no such first paid day
        ("minimum_term_months", -6),
        ("minimum_term_months", 10**9),
        ("tenant", ""),
        ("tenant", 7),
        ("currency", "zł"),
        ("currency", "pln"),
        ("rates", "cheap"),
        ("rates.inbound", "0.50"),
        ("subscription", 310),
    ],
)
def test_bad_value_is_named(path: str, value: object) -> None:
    assert error_key(set_path(full(), path, value)) == path


@pytest.mark.parametrize(
    "path",
    [
        "tenant",
        "currency",
        "timezone",
        "start",
        "vat_percent",
        "rates",
        "rates.inbound.per_minute",
        "rates.inbound.increment",
        "rates.outbound.basis",
        "subscription.monthly_fee",
        "readiness.per_hour",
    ],
)
def test_missing_required_key_is_named(path: str) -> None:
    assert error_key(drop_path(full(), path)) == path


def test_rates_need_a_direction() -> None:
    data = full()
    data["rates"] = {}
    assert error_key(data) == "rates"


def test_included_minutes_need_an_unused_minute_rate() -> None:
    # A forgotten rate would otherwise bill unused minutes at nothing.
    data = drop_path(full(), "subscription.unused_minute_rate")
    assert error_key(data) == "subscription.unused_minute_rate"
    data["subscription"]["included_minutes"] = 0
    assert parse_contract(data).subscription == Subscription(Decimal("310.00"), 0, None)


def test_minimum_term_needs_a_subscription() -> None:
    # The early-termination fee is counted in monthly fees.
    assert error_key(drop_path(full(), "subscription")) == "minimum_term_months"


def test_unknown_key_is_reported_before_a_missing_one() -> None:
    # A typo is the likely cause of a "missing" key; name the typo.
    data = full()
    data["rates"]["inbound"]["per_minut"] = data["rates"]["inbound"].pop("per_minute")
    assert error_key(data) == "rates.inbound.per_minut"


def test_toml_error_message_is_readable() -> None:
    with pytest.raises(ContractError, match=r"^rates\.inbound\.increment: .*'60'"):
        parse_contract(set_path(full(), "rates.inbound.increment", "60"))


def test_dataclasses_validate_on_construction() -> None:
    with pytest.raises(ContractError, match="per_minute"):
        Rate(Decimal("-1"), Increment(1, 1), Basis.TALK)
    rates = Rates(inbound=Rate(Decimal("1"), Increment(1, 1), Basis.TALK))
    with pytest.raises(ContractError, match="timezone"):
        Contract("t", "PLN", "Mars/Olympus", date(2026, 1, 1), Decimal(23), rates)
    with pytest.raises(ContractError, match="step"):
        Increment(30, 0)


@pytest.mark.parametrize(
    ("seconds", "billed"),
    [
        # BILLING.md rule 5's own examples for 30/6.
        (0, 0),
        (1, 30),
        (30, 30),
        (31, 36),
        (36, 36),
        (37, 42),
    ],
)
def test_increment_30_6(seconds: int, billed: int) -> None:
    assert Increment.parse("30/6").bill(seconds) == billed


def test_increment_60_60_and_1_1() -> None:
    assert [Increment(60, 60).bill(s) for s in (1, 60, 61, 120, 121)] == [60, 60, 120, 120, 180]
    assert [Increment(1, 1).bill(s) for s in (0, 1, 59, 3600)] == [0, 1, 59, 3600]
    assert str(Increment(30, 6)) == "30/6"


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 10, 1), 6, date(2027, 4, 1)),
        (date(2026, 1, 31), 1, date(2026, 2, 28)),  # clamped
        (date(2026, 1, 31), 2, date(2026, 3, 31)),  # from the anchor, not from Feb 28
        (date(2027, 12, 15), 1, date(2028, 1, 15)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),  # leap year
        (date(2026, 5, 20), 0, date(2026, 5, 20)),
    ],
)
def test_add_months(day: date, months: int, expected: date) -> None:
    assert add_months(day, months) == expected


def test_ends_within_trial() -> None:
    contract = parse_contract(full())
    # Trial days are Oct 1..14; ending on the 14th is within the trial.
    assert replace(contract, end=date(2026, 10, 14)).ends_within_trial
    assert not replace(contract, end=date(2026, 10, 15)).ends_within_trial
    assert not replace(contract, trial_days=0, end=date(2026, 10, 1)).ends_within_trial


# -- fuzz: parse it, or raise ContractError; never anything else ------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["0.50", "-1", "30/6", "0/0", "talk", "total", "Europe/Warsaw", "1e9"]),
    st.dates(),
    st.datetimes(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_PATHS = [
    "tenant",
    "currency",
    "timezone",
    "start",
    "end",
    "trial_days",
    "minimum_term_months",
    "vat_percent",
    "rates",
    "rates.inbound",
    "rates.inbound.per_minute",
    "rates.inbound.increment",
    "rates.inbound.connect_fee",
    "rates.inbound.basis",
    "rates.outbound.increment",
    "subscription",
    "subscription.monthly_fee",
    "subscription.included_minutes",
    "subscription.unused_minute_rate",
    "readiness",
    "readiness.per_hour",
    "extra",
]


@given(st.lists(st.tuples(st.sampled_from(_PATHS), _VALUES), min_size=1, max_size=4))
def test_parse_or_contract_error_never_anything_else(changes: list[tuple[str, object]]) -> None:
    data = copy.deepcopy(full())
    for path, value in changes:
        try:
            set_path(data, path, value)
        except (KeyError, TypeError):
            continue  # the parent table was replaced by a scalar earlier
    try:
        contract: Contract | None = parse_contract(data)
    except ContractError as exc:
        contract, key = None, exc.key
    else:
        key = ""
    # Either a contract, or an error that names where.
    assert isinstance(contract, Contract) or key
