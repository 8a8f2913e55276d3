"""From a real call to an invoice line: a sipp caller reaches a tenant's
queue through the real Asterisk, an agent's sipp phone (logged in with *21)
answers, the controller writes the CDR, the segments and the agent's state
log to the database, and the billing export bills the call's talk time and
the agent's readiness under the tenant's contract."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from pbx_controller import configfile
from pbx_controller.billing.export import export_period
from pbx_controller.core.rating import Period
from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings
from pbx_controller.service import Controller
from pbx_controller.store import models as m
from pbx_controller.store.agent_log import DatabaseAgentLog
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.config_store import apply_config
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head
from pbx_controller.store.directory import load_directory

pytestmark = pytest.mark.asterisk

CONFIG = """
[tenants.billco]
name = "Bill Co"
greeting = ["sound:beep"]
[[tenants.billco.dids]]
number = "48227700"
queue = "billco-desk"

[queues.billco-desk]
tenant = "billco"
ring_timeout_s = 5
wrapup_s = 0
[queues.billco-desk.announcements]
position = false
estimated_wait = false

[agents.ola]
name = "Ola"
endpoint = "PJSIP/agent-ola"
queues = ["billco-desk"]
"""

CONTRACT = """
tenant = "billco"
currency = "PLN"
timezone = "Europe/Warsaw"
start = 2026-01-01
vat_percent = "23"

[rates.inbound]
per_minute = "0.50"
increment = "1/1"
basis = "talk"

[readiness]
per_hour = "36.00"
"""


async def test_a_real_answered_call_is_billed(
    asterisk: SandboxAsterisk, database_url: str, tmp_path: Path
) -> None:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        await apply_config(sessions, configfile.parse(CONFIG))
        async with sessions() as session, session.begin():
            session.add(
                m.Contract(
                    tenant_id="billco", version=1, body=CONTRACT, valid_from=date(2026, 1, 1)
                )
            )
        agent_log = DatabaseAgentLog(sessions)
        agent_log.start()
        phone = sipp.AgentPhone(ring_ms=200, talk_ms=2500)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(phone)
            asterisk.set_agent_phones({"agent-ola": phone.address})
            controller = Controller(
                controller_settings(asterisk),
                await load_directory(sessions),
                DatabaseCdrSink(sessions),
                agent_log=agent_log,
            )
            await stack.enter_async_context(controller)
            port = asterisk.endpoints.sip_port
            login = await sipp.call(port, "*21", from_user="agent-ola")
            assert (login.successful, login.failed) == (1, 0)
            call = await sipp.call(port, "48227700")
            assert (call.successful, call.failed) == (1, 0)
            logout = await sipp.call(port, "*22", from_user="agent-ola")
            assert (logout.successful, logout.failed) == (1, 0)
            await controller.executor.drain()
        await agent_log.close()

        async def one_cdr() -> list[m.Cdr]:
            async with sessions() as session:
                return list((await session.scalars(select(m.Cdr))).all())

        rows: list[m.Cdr] = []

        async def poll() -> bool:
            rows[:] = await one_cdr()
            return len(rows) == 1

        await wait_until_async(poll)
        cdr = rows[0]
        async with sessions() as session:
            states = [
                r.state
                for r in (
                    await session.scalars(select(m.AgentStateLog).order_by(m.AgentStateLog.at))
                ).all()
            ]

        # The month is over (as cron sees it on the 1st), and billing runs.
        zone = ZoneInfo("Europe/Warsaw")
        period = Period(
            cdr.answered_at.astimezone(zone).year, cdr.answered_at.astimezone(zone).month
        )
        start, end = period.bounds(zone)
        report = await export_period(engine, period, tmp_path, now=end + timedelta(hours=2))
    finally:
        await engine.dispose()

    assert (cdr.tenant_id, cdr.queue_id, cdr.agent_id, cdr.disposition) == (
        "billco",
        "billco-desk",
        "ola",
        "answered",
    )
    assert 2000 <= cdr.talk_ms <= 4000
    assert states == ["ready", "reserved", "on_call", "ready", "logged_out"]
    assert report.ok, report.failures
    invoice = json.loads(next(tmp_path.glob("billco-*-invoice.json")).read_text())
    lines = {line["code"]: line for line in invoice["lines"]}
    # Rule 4: from the agent's answer to the end, in ms, rounded up to whole
    # seconds; 1/1 increments bill exactly that, at 0.50 a minute.
    billed_ms = (cdr.ended_at - cdr.answered_at) // timedelta(milliseconds=1)
    seconds = -(-billed_ms // 1000)
    assert Decimal(lines["inbound_minutes"]["quantity"]) * 60 == pytest.approx(Decimal(seconds))
    expected = (Decimal(seconds) / 60 * Decimal("0.50")).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert Decimal(lines["inbound_minutes"]["amount"]) == expected
    # Ola was ready for a few seconds: readiness is billed from her state log.
    assert Decimal(lines["readiness"]["quantity"]) > 0
    calls_csv = next(tmp_path.glob("billco-*-calls.csv")).read_text()
    assert str(cdr.call_id) in calls_csv
    assert start <= cdr.answered_at < end


async def wait_until_async(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)
