"""The agent state log on both dialects: rows in order, and a row the
database refuses for good never holds back the rows after it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pbx_controller.core.agent import AgentState, AgentStateRecord
from pbx_controller.store import models as m
from pbx_controller.store.agent_log import DatabaseAgentLog
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
