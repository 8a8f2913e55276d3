"""Write the core's CDRs to the `cdr` table, idempotently.

An upsert keyed by the call id: writing the same CDR twice leaves one row.
(The durable outbox in front of this writer makes delivery at-least-once.)
"""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.core.cdr import CdrRecord
from pbx_controller.core.engine import NEVER_RECORDED_OUTCOMES
from pbx_controller.store import models as m
from pbx_controller.store.recordings import link_cdrs

CDR = m.Base.metadata.tables[m.Cdr.__tablename__]
CDR_SEGMENT = m.Base.metadata.tables[m.CdrSegment.__tablename__]


def cdr_row(cdr: CdrRecord) -> dict[str, object]:
    return {
        "call_id": uuid.UUID(cdr.call_id),
        "tenant_id": cdr.tenant_id,
        "direction": cdr.direction,
        "did": cdr.did,
        "caller": cdr.caller,
        "callee": cdr.did,
        "queue_id": cdr.queue_id,
        "agent_id": cdr.agent_id,
        "arrived_at": cdr.arrived_at,
        "answered_at": cdr.answered_at,
        "ended_at": cdr.ended_at,
        "wait_ms": cdr.wait_ms,
        "talk_ms": cdr.talk_ms,
        "hold_ms": cdr.hold_ms,
        "disposition": cdr.disposition.value,
        "hangup_side": cdr.hangup_side.value,
        "consent": cdr.consent,
    }


class DatabaseCdrSink:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def write(self, cdr: CdrRecord) -> None:
        await self.write_many([cdr])

    async def write_many(self, cdrs: list[CdrRecord]) -> None:
        if not cdrs:
            return
        rows = [cdr_row(c) for c in cdrs]
        segments = [
            {
                "call_id": uuid.UUID(c.call_id),
                "seq": seq,
                "kind": s.kind,
                "agent_id": s.agent_id,
                "started_at": s.started_at,
                "ended_at": s.ended_at,
                "outcome": s.outcome,
            }
            for c in cdrs
            for seq, s in enumerate(c.segments)
        ]
        async with self.sessions() as session, session.begin():
            dialect = session.get_bind().dialect.name
            insert = pg_insert if dialect == "postgresql" else sqlite_insert
            # One statement executed for many rows (compiled once), and the
            # first write wins: a replay of the same call changes nothing.
            # Core statements on the tables: the ORM's bulk path costs more CPU
            # than the database does for these plain rows.
            await session.execute(
                insert(CDR).on_conflict_do_nothing(index_elements=["call_id"]), rows
            )
            # A recording written before its CDR gets linked now (either order
            # works). A call that was never recorded has nothing to link.
            maybe_recorded = [
                uuid.UUID(c.call_id) for c in cdrs if c.consent not in NEVER_RECORDED_OUTCOMES
            ]
            await link_cdrs(session, maybe_recorded)
            if segments:
                await session.execute(
                    insert(CDR_SEGMENT).on_conflict_do_nothing(index_elements=["call_id", "seq"]),
                    segments,
                )
