"""The monthly billing export over a million CDRs on PostgreSQL.

A throw-away database gets 50 tenants with varied contracts (subscriptions,
trials, connect fees, `total` basis, readiness), 100 agents with a month of
state log, and BENCH_CDRS CDRs (default 1,000,000; 10 % unanswered, 20 %
outbound) generated server-side with generate_series. Then:

- the export of 2026-10 for all tenants is timed (rate, close, write files);
- the re-export of the closed period is timed (re-rate + checksum check);
- peak RSS (getrusage) shows the export's memory does not follow the CDRs.

Ends with one JSON line. With BENCH_CDRS below a million, billing_export_1m_s
is extrapolated linearly and "extrapolated" is true. The database is dropped
afterwards. PBX_BENCH_PG_URL points at another server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from pbx_controller.billing.export import export_period
from pbx_controller.core.rating import Period
from pbx_controller.store.db import make_engine, upgrade_to_head

CDRS = int(os.environ.get("BENCH_CDRS", "1000000"))
TENANTS = 50
AGENTS = 100
PERIOD = Period(2026, 10)
SERVER_URL = os.environ.get("PBX_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# After the period, so the export may close it.
NOW = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def contract(index: int) -> str:
    tenant = f"bench-{index:02d}"
    start = "2026-10-10" if index % 10 == 3 else "2026-01-01"
    lines = [
        f'tenant = "{tenant}"',
        'currency = "PLN"',
        'timezone = "Europe/Warsaw"',
        f"start = {start}",
        'vat_percent = "23"',
    ]
    if index % 10 == 3:
        lines.append("trial_days = 7")
    inbound_basis = "total" if index % 4 == 1 else "talk"
    lines += [
        "[rates.inbound]",
        f'per_minute = "0.{40 + index % 20}"',
        f'increment = "{"30/6" if index % 2 else "60/60"}"',
        f'basis = "{inbound_basis}"',
    ]
    if index % 3 == 0:
        lines.append('connect_fee = "0.10"')
    lines += ["[rates.outbound]", 'per_minute = "0.60"', 'increment = "1/1"', 'basis = "talk"']
    if index % 5 == 0:
        lines += [
            "[subscription]",
            'monthly_fee = "310.00"',
            "included_minutes = 3000",
            'unused_minute_rate = "0.20"',
        ]
    if index % 2 == 0:
        lines += ["[readiness]", 'per_hour = "14.50"']
    return "\n".join(lines) + "\n"


async def seed(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.executemany(
            "INSERT INTO tenant (id, name, created_at) VALUES ($1, $2, now())",
            [(f"bench-{i:02d}", f"Bench {i}") for i in range(TENANTS)],
        )
        await connection.executemany(
            "INSERT INTO contract (tenant_id, version, body, valid_from, created_at)"
            " VALUES ($1, 1, $2, $3, now())",
            [(f"bench-{i:02d}", contract(i), dt.date(2026, 1, 1)) for i in range(TENANTS)],
        )
        await connection.executemany(
            "INSERT INTO agent (id, name, endpoint, created_at) VALUES ($1, $1, $2, now())",
            [(f"agent-{a:03d}", f"PJSIP/agent-{a:03d}") for a in range(AGENTS)],
        )
        # Each agent serves one to three tenants; every working day: log in at
        # 08:00 local, reserved/on_call/wrap_up cycles, a pause, log out at 16:00.
        await connection.execute(
            """
            INSERT INTO agent_state_log (agent_id, state, tenant_ids, at)
            SELECT 'agent-' || lpad(a::text, 3, '0'), s.state,
                   (SELECT jsonb_agg('bench-' || lpad(((a + k * 17) % $1)::text, 2, '0'))
                      FROM generate_series(0, a % 3) k),
                   (d + s.at) AT TIME ZONE 'Europe/Warsaw'
            FROM generate_series(0, $2 - 1) a,
                 generate_series(timestamp '2026-09-30', timestamp '2026-10-31',
                                 interval '1 day') d,
                 (VALUES ('ready', interval '8 hours'), ('reserved', interval '9 hours'),
                         ('on_call', interval '9 hours 1 minute'),
                         ('wrap_up', interval '9 hours 7 minutes'),
                         ('ready', interval '9 hours 8 minutes'),
                         ('paused', interval '12 hours'), ('ready', interval '12 hours 30 minutes'),
                         ('logged_out', interval '16 hours')) s(state, at)
            """,
            TENANTS,
            AGENTS,
        )
        # Calls spread over the month in Warsaw (2026-09-30T22:00Z + 31 days),
        # pseudo-random but deterministic in i; i % 50 is the tenant, so the
        # kind of call depends on i / 50.
        await connection.execute(
            """
            INSERT INTO cdr (call_id, tenant_id, direction, did, caller, callee,
                             arrived_at, answered_at, ended_at, wait_ms, talk_ms, hold_ms,
                             disposition, hangup_side, consent, created_at)
            SELECT md5('bench-call-' || i)::uuid,
                   'bench-' || lpad((i % $2)::text, 2, '0'),
                   CASE WHEN i / $2 % 5 = 0 THEN 'outbound' ELSE 'inbound' END,
                   '4822' || lpad((i % $2)::text, 7, '0'),
                   '48600' || lpad((i * 7 % 1000000)::text, 6, '0'),
                   '4822' || lpad((i % $2)::text, 7, '0'),
                   arrived,
                   CASE WHEN i / $2 % 10 = 7 THEN NULL ELSE arrived + wait END,
                   arrived + wait + talk,
                   (extract(epoch FROM wait) * 1000)::bigint,
                   CASE WHEN i / $2 % 10 = 7 THEN 0
                        ELSE (extract(epoch FROM talk) * 1000)::bigint END,
                   0,
                   CASE WHEN i / $2 % 10 = 7 THEN 'abandoned' ELSE 'answered' END,
                   'caller', 'n/a', now()
            FROM (
                SELECT i,
                       timestamptz '2026-09-30 22:00:00+00'
                         + (i::bigint * 2654435761 % 2678000000) * interval '1 millisecond'
                         AS arrived,
                       (i * 37 % 60000) * interval '1 millisecond' AS wait,
                       (i::bigint * 7919 % 900000) * interval '1 millisecond' AS talk
                FROM generate_series(1, $1) i
            ) calls
            """,
            CDRS,
            TENANTS,
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def files_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def main() -> None:
    server = make_url(SERVER_URL).set(drivername="postgresql")
    name = f"pbx_bench_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = server.set(database=name).render_as_string(hide_password=False)
    url = server.set(drivername="postgresql+asyncpg", database=name)
    try:
        await upgrade_to_head(url)
        started = time.perf_counter()
        await seed(dsn)
        seed_s = time.perf_counter() - started
        print(f"seeded {CDRS:,} CDRs, {TENANTS} tenants, {AGENTS} agents in {seed_s:.1f} s")
        rss_before = peak_rss_mb()

        engine = make_engine(url)
        try:
            with tempfile.TemporaryDirectory(prefix="pbx-bench-billing-") as out:
                started = time.perf_counter()
                report = await export_period(engine, PERIOD, Path(out), now=NOW)
                export_s = time.perf_counter() - started
                if not report.ok:
                    sys.exit(f"export failed: {report.failures}")
                calls = sum(result.calls for result in report.exported)
                size = files_size(Path(out))
                started = time.perf_counter()
                again = await export_period(engine, PERIOD, Path(out), now=NOW)
                reexport_s = time.perf_counter() - started
                if not again.ok or {r.action for r in again.exported} != {"reexported"}:
                    sys.exit(f"re-export failed: {again.failures}")
        finally:
            await engine.dispose()
        rss = peak_rss_mb()
        gross = sum(result.invoice.gross for result in report.exported)
        print(
            f"export: {export_s:.1f} s for {calls:,} billed calls of {CDRS:,} CDRs"
            f" ({CDRS / export_s:,.0f} CDRs/s), {len(report.exported)} invoices,"
            f" gross {gross} PLN, {size / 1e6:.0f} MB of files"
        )
        print(f"re-export (closed, verified): {reexport_s:.1f} s ({CDRS / reexport_s:,.0f} CDRs/s)")
        print(f"peak RSS: {rss:.0f} MB (before the export: {rss_before:.0f} MB)")
        scale = 1_000_000 / CDRS
        print(
            json.dumps(
                {
                    "bench": "billing_export",
                    "cdrs": CDRS,
                    "tenants": TENANTS,
                    "billing_export_1m_s": round(export_s * scale, 2),
                    "billing_reexport_1m_s": round(reexport_s * scale, 2),
                    "extrapolated": CDRS != 1_000_000,
                    "cdrs_per_s": round(CDRS / export_s),
                    "peak_rss_mb": round(rss, 1),
                    "seed_s": round(seed_s, 1),
                }
            )
        )
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
