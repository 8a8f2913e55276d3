"""What goes into the store comes back the same, on SQLite and PostgreSQL.

Instants come back aware UTC at millisecond precision, money comes back as
the exact Decimal that went in, naive datetimes and floats are refused, and
the constraints hold on both dialects (SQLite enforces foreign keys only
when the engine turns them on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

import pbx_controller.store as store
from pbx_controller.store import (
    Agent,
    AgentSkill,
    AgentStateLog,
    BillingPeriod,
    Cdr,
    CdrSegment,
    DatabaseUrlError,
    Invoice,
    InvoiceLine,
    NaiveDatetimeError,
    Queue,
    Recording,
    Tenant,
    make_engine,
    make_sessionmaker,
    redact_url,
    upgrade_to_head,
)

UTC = dt.UTC
WARSAW = ZoneInfo("Europe/Warsaw")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    try:
        async with make_sessionmaker(engine).begin() as session:
            session.add(Tenant(id="acme", name="Acme"))
            session.add(Queue(id="acme-sales", tenant_id="acme", name="sales"))
            session.add(Agent(id="anna", name="Anna", endpoint="PJSIP/anna"))
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


def a_cdr(**overrides: Any) -> Cdr:
    arrived = dt.datetime(2026, 10, 5, 9, 0, 0, 250_000, tzinfo=UTC)
    fields: dict[str, Any] = {
        "call_id": uuid.uuid4(),
        "tenant_id": "acme",
        "direction": "inbound",
        "did": "48221234567",
        "caller": "48600100200",
        "callee": "48221234567",
        "queue_id": "acme-sales",
        "agent_id": "anna",
        "arrived_at": arrived,
        "answered_at": arrived + dt.timedelta(seconds=12),
        "ended_at": arrived + dt.timedelta(seconds=190),
        "wait_ms": 12_000,
        "talk_ms": 178_000,
        "disposition": "answered",
        "hangup_side": "caller",
        "consent": "granted",
    }
    fields.update(overrides)
    return Cdr(**fields)


async def test_cdr_round_trips_aware_utc_instants_at_millisecond_precision(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    call_id = uuid.uuid4()
    # 11:00:00.123456 in Warsaw (CEST, UTC+2) is 09:00:00.123 UTC.
    arrived = dt.datetime(2026, 10, 5, 11, 0, 0, 123_456, tzinfo=WARSAW)
    answered = dt.datetime(2026, 10, 5, 9, 0, 12, 999_500, tzinfo=UTC)  # rounds up a second
    ended = dt.datetime(2026, 10, 5, 9, 3, 10, 1_499, tzinfo=UTC)
    recording_id = uuid.uuid4()
    async with sessions.begin() as session:
        session.add(
            Recording(
                id=recording_id,
                call_id=call_id,
                tenant_id="acme",
                path=f"acme/2026/10/05/{call_id}.wav",
                format="wav",
                retention_until=dt.datetime(2027, 1, 3, tzinfo=UTC),
                consent_policy="opt_in",
                consent_prompt_version="v3",
                consent_digit="1",
                consent_digit_at=arrived + dt.timedelta(seconds=4),
            )
        )
        await session.flush()  # the CDR references the recording
        session.add(
            a_cdr(
                call_id=call_id,
                arrived_at=arrived,
                answered_at=answered,
                ended_at=ended,
                recording_id=recording_id,
                segments=[
                    CdrSegment(
                        seq=0,
                        kind="offer",
                        agent_id="anna",
                        started_at=arrived + dt.timedelta(seconds=2),
                        ended_at=answered,
                        outcome="answered",
                    )
                ],
            )
        )

    async with sessions() as session:
        cdr = (
            await session.execute(
                sa.select(Cdr).where(Cdr.call_id == call_id).options(selectinload(Cdr.segments))
            )
        ).scalar_one()

    assert cdr.arrived_at == dt.datetime(2026, 10, 5, 9, 0, 0, 123_000, tzinfo=UTC)
    assert cdr.answered_at == dt.datetime(2026, 10, 5, 9, 0, 13, tzinfo=UTC)
    assert cdr.ended_at == dt.datetime(2026, 10, 5, 9, 3, 10, 1_000, tzinfo=UTC)
    instants = [cdr.arrived_at, cdr.answered_at, cdr.ended_at, cdr.created_at]
    instants += [cdr.segments[0].started_at, cdr.segments[0].ended_at]
    for instant in instants:
        assert instant is not None
        assert instant.tzinfo is UTC
    assert cdr.segments[0].started_at == dt.datetime(2026, 10, 5, 9, 0, 2, 123_000, tzinfo=UTC)
    assert (cdr.ended_at - cdr.arrived_at) // dt.timedelta(milliseconds=1) == 189_878
    assert cdr.recording_id == recording_id
    assert isinstance(cdr.call_id, uuid.UUID)


async def test_time_range_query_with_bounds_in_another_zone(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Tenant-local October 2026 in Warsaw: 2026-09-30T22:00Z .. 2026-10-31T23:00Z.
    start = dt.datetime(2026, 10, 1, tzinfo=WARSAW)
    end = dt.datetime(2026, 11, 1, tzinfo=WARSAW)
    answers = {
        "before": dt.datetime(2026, 9, 30, 21, 59, 59, 999_000, tzinfo=UTC),
        "first": dt.datetime(2026, 9, 30, 22, 0, tzinfo=UTC),
        "last": dt.datetime(2026, 10, 31, 22, 59, 59, 999_000, tzinfo=UTC),
        "after": dt.datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
    }
    async with sessions.begin() as session:
        for caller, answered in answers.items():
            session.add(
                a_cdr(
                    caller=caller,
                    arrived_at=answered - dt.timedelta(seconds=5),
                    answered_at=answered,
                    ended_at=answered + dt.timedelta(minutes=1),
                )
            )

    async with sessions() as session:
        callers = (
            await session.scalars(
                sa.select(Cdr.caller)
                .where(Cdr.tenant_id == "acme", Cdr.answered_at >= start, Cdr.answered_at < end)
                .order_by(Cdr.answered_at)
            )
        ).all()
    assert callers == ["first", "last"]


async def test_invoice_amounts_round_trip_as_exact_decimals(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # BILLING.md example b: a 17/31 month subscription keeps all 28 digits,
    # and unit prices keep their written scale ("310.00", "0").
    lines = [
        ("subscription_fee", "0.5483870967741935483870967742", "month", "310.00", "170.00"),
        ("included_minutes", "15", "min", "0", "0.00"),
        ("connect_fees_inbound", "2", "call", "0.10", "0.20"),
        ("unused_minutes", "2", "min", "0.20", "0.40"),
    ]
    async with sessions.begin() as session:
        session.add(BillingPeriod(tenant_id="acme", period="2026-10"))
        session.add(
            Invoice(
                tenant_id="acme",
                period="2026-10",
                currency="PLN",
                net=Decimal("170.600"),  # trailing zeros beyond the scale are exact
                vat=Decimal("39.24"),
                gross=Decimal("209.84"),
                lines=[
                    InvoiceLine(
                        seq=seq,
                        code=code,
                        quantity=Decimal(quantity),
                        unit=unit,
                        unit_price=Decimal(price),
                        amount=Decimal(amount),
                    )
                    for seq, (code, quantity, unit, price, amount) in enumerate(lines)
                ],
            )
        )

    async with sessions() as session:
        invoice = (
            await session.execute(sa.select(Invoice).options(selectinload(Invoice.lines)))
        ).scalar_one()

    assert [str(x) for x in (invoice.net, invoice.vat, invoice.gross)] == [
        "170.60",
        "39.24",
        "209.84",
    ]
    stored = [
        (line.code, str(line.quantity), line.unit, str(line.unit_price), str(line.amount))
        for line in invoice.lines
    ]
    assert stored == lines
    for line in invoice.lines:
        assert type(line.quantity) is Decimal
        assert type(line.amount) is Decimal
    assert sum((line.amount for line in invoice.lines), Decimal(0)) == invoice.net


async def test_naive_datetime_is_rejected(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        session.add(a_cdr(arrived_at=dt.datetime(2026, 10, 5, 9, 0)))
        with pytest.raises(StatementError) as caught:
            await session.flush()
        assert isinstance(caught.value.orig, NaiveDatetimeError)

    async with sessions() as session:
        with pytest.raises(StatementError) as caught:
            await session.execute(sa.select(Cdr).where(Cdr.arrived_at >= dt.datetime(2026, 10, 1)))
        assert isinstance(caught.value.orig, NaiveDatetimeError)


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        pytest.param(0.1, TypeError, id="float"),
        pytest.param(Decimal("0.105"), ValueError, id="sub-cent"),
        pytest.param(Decimal("1E+16"), ValueError, id="overflow"),
        pytest.param(Decimal("1E+40"), ValueError, id="far-overflow"),
        pytest.param(Decimal("NaN"), ValueError, id="nan"),
    ],
)
async def test_money_that_is_not_an_exact_amount_is_rejected(
    sessions: async_sessionmaker[AsyncSession], amount: Any, error: type[Exception]
) -> None:
    async with sessions() as session:
        session.add(BillingPeriod(tenant_id="acme", period="2026-10"))
        session.add(
            Invoice(
                tenant_id="acme",
                period="2026-10",
                currency="PLN",
                net=amount,
                vat=Decimal("0.00"),
                gross=Decimal("0.00"),
            )
        )
        with pytest.raises(StatementError) as caught:
            await session.flush()
        assert isinstance(caught.value.orig, error)


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(lambda: a_cdr(tenant_id="nobody"), id="unknown-tenant-fk"),
        pytest.param(lambda: a_cdr(agent_id="ghost"), id="unknown-agent-fk"),
        pytest.param(lambda: a_cdr(disposition="lost"), id="disposition-vocabulary"),
        pytest.param(lambda: a_cdr(tenant_id=None), id="tenant-only-null-for-unknown-did"),
        pytest.param(lambda: a_cdr(answered_at=None), id="answered-needs-answered-at"),
        pytest.param(lambda: a_cdr(talk_ms=-1), id="negative-duration"),
        pytest.param(lambda: a_cdr(billing_period="2026-10"), id="billed-in-missing-period"),
        pytest.param(lambda: AgentSkill(agent_id="anna", skill="pl", level=11), id="skill-level"),
        pytest.param(
            lambda: AgentStateLog(agent_id="anna", state="lunch", at=dt.datetime.now(UTC)),
            id="agent-state-vocabulary",
        ),
        pytest.param(
            lambda: BillingPeriod(tenant_id="acme", period="2026-10", status="closed"),
            id="closed-period-needs-closed-at",
        ),
    ],
)
async def test_constraints_hold_on_both_dialects(
    sessions: async_sessionmaker[AsyncSession], row: Any
) -> None:
    async with sessions() as session:
        session.add(row())
        with pytest.raises(IntegrityError):
            await session.flush()


async def test_a_cdr_for_an_unknown_did_needs_no_tenant(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The counterpart of the constraint above: this row must be accepted."""
    call = a_cdr(
        tenant_id=None,
        queue_id=None,
        agent_id=None,
        answered_at=None,
        talk_ms=0,
        disposition="unknown_did",
        hangup_side="system",
        consent="n/a",
    )
    async with sessions.begin() as session:
        session.add(call)
    async with sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Cdr)) == 1


async def test_a_cdr_from_a_clock_that_stepped_back_is_still_stored(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Wall clocks step back; the CDR must land anyway, never wait in the outbox."""
    arrived = dt.datetime(2026, 10, 25, 9, 0, 5, tzinfo=UTC)
    call = a_cdr(
        arrived_at=arrived,
        answered_at=arrived - dt.timedelta(seconds=1),
        ended_at=arrived - dt.timedelta(milliseconds=1),
        wait_ms=0,
        talk_ms=0,
        segments=[
            CdrSegment(
                seq=0,
                kind="offer",
                agent_id="anna",
                started_at=arrived,
                ended_at=arrived - dt.timedelta(seconds=2),
                outcome="answered",
            )
        ],
    )
    async with sessions.begin() as session:
        session.add(call)
    async with sessions() as session:
        stored = await session.get(Cdr, call.call_id)
    assert stored is not None
    assert stored.ended_at < stored.arrived_at


async def test_concurrent_writers_all_commit(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Many sessions writing at once: SQLite waits on its busy timeout, never fails."""

    async def write_one(n: int) -> None:
        async with sessions.begin() as session:
            session.add(a_cdr(caller=f"caller-{n}"))
            await session.flush()
            session.add(
                AgentStateLog(
                    agent_id="anna", state="ready", tenant_ids=["acme"], at=dt.datetime.now(UTC)
                )
            )

    async with asyncio.timeout(60):
        await asyncio.gather(*(write_one(n) for n in range(30)))
    async with sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Cdr)) == 30
        logs = (await session.scalars(sa.select(AgentStateLog))).all()
    assert len(logs) == 30
    assert all(log.tenant_ids == ["acme"] for log in logs)


async def test_sqlite_engine_turns_on_foreign_keys_wal_and_busy_timeout(
    sqlite_database_url: str,
) -> None:
    engine = make_engine(sqlite_database_url)
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("foreign_keys", "journal_mode", "busy_timeout", "synchronous")
            }
    finally:
        await engine.dispose()
    assert pragmas == {
        "foreign_keys": 1,
        "journal_mode": "wal",
        "busy_timeout": 10_000,
        "synchronous": 2,  # FULL
    }


def test_redact_url_hides_passwords() -> None:
    url = "postgresql+asyncpg://pbx:s3cr%40t@db.example:5432/pbx?sslpassword=hunter2&ssl=require"
    redacted = redact_url(url)
    assert "s3cr" not in redacted
    assert "hunter2" not in redacted
    assert redacted.startswith("postgresql+asyncpg://pbx:***@db.example:5432/pbx?")
    assert "ssl=require" in redacted
    assert redact_url("sqlite+aiosqlite:///var/pbx.db") == "sqlite+aiosqlite:///var/pbx.db"
    assert "secret" not in redact_url("not a url :secret@")


async def test_make_engine_logs_the_redacted_url_and_refuses_other_databases(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="pbx_controller.store.db"):
        engine = make_engine("postgresql://pbx:topsecret@127.0.0.1:1/pbx")
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
    finally:
        await engine.dispose()
    assert "topsecret" not in caplog.text
    assert "pbx:***@127.0.0.1:1/pbx" in caplog.text
    with pytest.raises(DatabaseUrlError) as caught:
        make_engine("mysql://root:topsecret@localhost/pbx")
    assert "topsecret" not in str(caught.value)


def test_store_exports_every_public_name() -> None:
    # Other store modules may add to the package's __all__; these two must be in it.
    assert set(store.db.__all__) | set(store.models.__all__) <= set(store.__all__)
    assert len(store.__all__) == len(set(store.__all__))
    assert all(hasattr(store, name) for name in store.__all__)
    for module in (store.db, store.models):
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            is_api = inspect.isclass(value) or inspect.isfunction(value)
            if is_api and defined_here and not name.startswith("_"):
                assert name in module.__all__, f"{module.__name__}.{name} not exported"
        for name in module.__all__:
            assert getattr(store, name) is getattr(module, name)
