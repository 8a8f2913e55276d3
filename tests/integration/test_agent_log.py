"""The agent state log on both dialects: rows in order, and a row the
database refuses for good never holds back the rows after it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pbx_controller.billing.readiness import load_readiness
from pbx_controller.core.agent import LOST_REASON, SHUTDOWN_REASON, AgentState, AgentStateRecord
from pbx_controller.core.events import AgentRestored
from pbx_controller.core.rating import ReadinessInterval
from pbx_controller.store import models as m
from pbx_controller.store.agent_log import DatabaseAgentLog, restorations
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def change(agent_id: str, state: AgentState, second: int) -> AgentStateRecord:
    return AgentStateRecord(
        agent_id=agent_id,
        state=state,
        reason=None,
        tenants=("acme",),
        queues=("sales",),
        at=T0 + timedelta(seconds=second),
        previous=AgentState.READY,
        event="Test",
    )


async def test_a_refused_row_is_logged_and_the_rest_are_written(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="acme", name="Acme"))
            session.add(m.Agent(id="anna", name="Anna", endpoint="PJSIP/anna"))
        agent_log = DatabaseAgentLog(sessions, linger_s=0.2)
        agent_log.start()
        # "gone" is not in the agent table (deleted from the configuration
        # while the controller still had it): the foreign key refuses it.
        agent_log.write(change("anna", AgentState.RESERVED, 1))
        agent_log.write(change("gone", AgentState.ON_CALL, 2))
        agent_log.write(change("anna", AgentState.ON_CALL, 3))
        with caplog.at_level(logging.ERROR, logger="pbx_controller.store.agent_log"):
            await agent_log.close(flush_timeout_s=10)
        # The log goes on after it: a later batch is written too.
        agent_log = DatabaseAgentLog(sessions, linger_s=0)
        agent_log.start()
        agent_log.write(change("anna", AgentState.READY, 4))
        await agent_log.close(flush_timeout_s=10)
        async with sessions() as session:
            query = select(m.AgentStateLog).order_by(m.AgentStateLog.at)
            rows = (await session.scalars(query)).all()
    finally:
        await engine.dispose()
    assert [(r.agent_id, r.state) for r in rows] == [
        ("anna", "reserved"),
        ("anna", "on_call"),
        ("anna", "ready"),
    ]
    refused = [r for r in caplog.records if "refused by the database" in r.getMessage()]
    assert len(refused) == 1
    assert '"agent_id": "gone"' in refused[0].getMessage()


def row(
    agent_id: str, state: AgentState, second: int, reason: str | None = None
) -> AgentStateRecord:
    return AgentStateRecord(
        agent_id=agent_id,
        state=state,
        reason=reason,
        tenants=("acme",) if state is not AgentState.LOGGED_OUT else (),
        queues=("sales",) if state is not AgentState.LOGGED_OUT else (),
        at=T0 + timedelta(seconds=second),
        previous=AgentState.LOGGED_OUT,
        event="Test",
    )


async def test_restorations_read_each_agents_last_two_rows(database_url: str) -> None:
    S = AgentState
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            for agent_id in ("anna", "bert", "cleo", "dora", "emil", "finn"):
                session.add(m.Agent(id=agent_id, name=agent_id, endpoint=f"PJSIP/{agent_id}"))
        agent_log = DatabaseAgentLog(sessions, linger_s=0)
        agent_log.start()
        for record in [
            # anna: paused, then a clean stop 60 s before the start: back paused.
            row("anna", S.READY, 0),
            row("anna", S.PAUSED, 10, "lunch"),
            row("anna", S.LOGGED_OUT, 100, SHUTDOWN_REASON),
            # bert: on a call when the last run died: back ready.
            row("bert", S.READY, 0),
            row("bert", S.ON_CALL, 50),
            # cleo logged out herself, after an older stop: stays out.
            row("cleo", S.LOGGED_OUT, 5, SHUTDOWN_REASON),
            row("cleo", S.READY, 20),
            row("cleo", S.LOGGED_OUT, 30),
            # dora: two rows at one instant; the later id decides (ready).
            row("dora", S.PAUSED, 40, "break"),
            row("dora", S.READY, 40),
            # emil: stopped 1000 s before the start (over the 900 s): stays out.
            row("emil", S.READY, -900),
            row("emil", S.LOGGED_OUT, -840, SHUTDOWN_REASON),
            # finn: ready, but no longer configured: not asked about.
            row("finn", S.READY, 0),
        ]:
            agent_log.write(record)
        await agent_log.close(flush_timeout_s=10)
        configured = ["anna", "bert", "cleo", "dora", "emil"]
        back = await restorations(
            sessions, configured, T0 + timedelta(seconds=160), timedelta(seconds=900)
        )
    finally:
        await engine.dispose()
    assert sorted(back, key=lambda r: r.agent_id) == [
        AgentRestored("anna", "lunch", ("sales",)),
        AgentRestored("bert", None, ("sales",)),
        AgentRestored("dora", None, ("sales",)),
    ]


async def test_a_dead_run_s_agents_are_logged_out_as_of_its_stamp(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The last run died at T0+70 s (its stamp) with anna on a call and bert
    paused; the new run starts at T0+160 s. Both get a logged_out row at the
    stamp, before anything of the new run, and come back as they were:
    readiness stops at the stamp, not at the new start. So does dora's, who
    was ready too but is no longer configured; she does not come back."""
    S = AgentState
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="acme", name="Acme"))
            for agent_id in ("anna", "bert", "cleo", "dora"):
                session.add(m.Agent(id=agent_id, name=agent_id, endpoint=f"PJSIP/{agent_id}"))
        agent_log = DatabaseAgentLog(sessions, linger_s=0)
        agent_log.start()
        for record in [
            row("anna", S.READY, 0),
            row("anna", S.ON_CALL, 50),
            row("bert", S.PAUSED, 20, "lunch"),
            row("cleo", S.READY, 10),
            row("cleo", S.LOGGED_OUT, 30),  # logged out herself: no row for her
            row("dora", S.READY, 40),
        ]:
            agent_log.write(record)
        await agent_log.close(flush_timeout_s=10)
        start = T0 + timedelta(seconds=160)
        with caplog.at_level(logging.WARNING, logger="pbx_controller.store.agent_log"):
            back = await restorations(
                sessions,
                ["anna", "bert", "cleo"],
                start,
                timedelta(seconds=900),
                alive_at=T0 + timedelta(seconds=70),
            )
        async with sessions() as session:
            query = select(m.AgentStateLog).order_by(m.AgentStateLog.at, m.AgentStateLog.id)
            rows = (await session.scalars(query)).all()
        async with engine.connect() as connection:
            readiness = await load_readiness(connection, {"acme": (T0, start)})
    finally:
        await engine.dispose()
    assert sorted(back, key=lambda r: r.agent_id) == [
        AgentRestored("anna", None, ("sales",)),
        AgentRestored("bert", "lunch", ("sales",)),
    ]
    lost = [(r.agent_id, r.state, r.reason, r.at) for r in rows if r.reason == LOST_REASON]
    stamp = T0 + timedelta(seconds=70)
    assert lost == [
        ("anna", "logged_out", LOST_REASON, stamp),
        ("bert", "logged_out", LOST_REASON, stamp),
        ("dora", "logged_out", LOST_REASON, stamp),
    ]
    assert "without logging 3 agent(s) out" in caplog.text
    # anna was ready from 0 to the stamp (70 s), not to the new start (160 s).
    assert sorted(readiness["acme"], key=lambda i: i.agent) == [
        ReadinessInterval("anna", T0, stamp),
        ReadinessInterval("cleo", T0 + timedelta(seconds=10), T0 + timedelta(seconds=30)),
        ReadinessInterval("dora", T0 + timedelta(seconds=40), stamp),
    ]
