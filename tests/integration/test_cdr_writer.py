"""The CDR writer on both dialects: one row per call with its offer
segments, and a replay changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from pbx_controller.core.cdr import CdrRecord, CdrSegment, Disposition, HangupSide
from pbx_controller.store import models as m
from pbx_controller.store.cdr_writer import DatabaseCdrSink
from pbx_controller.store.db import make_engine, make_sessionmaker, upgrade_to_head

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def answered_call(call_id: str) -> CdrRecord:
    return CdrRecord(
        call_id=call_id,
        tenant_id="acme",
        direction="inbound",
        did="48221001",
        caller="48600100200",
        arrived_at=T0,
        answered_at=T0 + timedelta(seconds=9),
        ended_at=T0 + timedelta(seconds=70),
        disposition=Disposition.ANSWERED,
        hangup_side=HangupSide.CALLER,
        agent_id="anna",
        wait_ms=8000,
        talk_ms=61000,
        segments=(
            CdrSegment(
                "offer", "bob", T0 + timedelta(seconds=1), T0 + timedelta(seconds=5), "missed"
            ),
            CdrSegment(
                "offer", "anna", T0 + timedelta(seconds=5), T0 + timedelta(seconds=9), "answered"
            ),
        ),
    )


async def test_cdr_with_segments_is_written_once(database_url: str) -> None:
    await upgrade_to_head(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            session.add(m.Tenant(id="acme", name="Acme"))
            session.add_all([m.Agent(id=n, name=n, endpoint=f"agent-{n}") for n in ("anna", "bob")])
        call_id = str(uuid.uuid4())
        sink = DatabaseCdrSink(sessions)
        await sink.write(answered_call(call_id))
        await sink.write_many([answered_call(call_id)])  # a replay, as the outbox may do

        async with sessions() as session:
            cdrs = (await session.scalars(select(m.Cdr))).all()
            segments = (
                await session.scalars(select(m.CdrSegment).order_by(m.CdrSegment.seq))
            ).all()
    finally:
        await engine.dispose()
    assert [str(c.call_id) for c in cdrs] == [call_id]
    assert (cdrs[0].agent_id, cdrs[0].talk_ms, cdrs[0].answered_at) == (
        "anna",
        61000,
        T0 + timedelta(seconds=9),
    )
    assert [(s.seq, s.agent_id, s.outcome) for s in segments] == [
        (0, "bob", "missed"),
        (1, "anna", "answered"),
    ]
