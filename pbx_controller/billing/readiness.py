"""Readiness intervals per tenant, read from `agent_state_log` (BILLING.md rule 12).

Queue membership over time: each `agent_state_log` row carries `tenant_ids`,
the tenants whose queues the agent served from that instant. That column is
the only membership history there is (`queue_member` holds today's
membership only), so the writer of the log must add a row (same state, new
`tenant_ids`) whenever an agent joins or leaves a tenant's queue, not only
on state changes. The share is 1/k with k the number of distinct tenants in
the row, whether or not each of them is being billed.

The pure part, folding rows into spans and cutting spans per tenant, is
`pbx_controller.core.readiness`; this module only streams the rows: for
every agent, its last row before the window (its state when the window
opens) and every row inside it, in (agent, at, id) order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pbx_controller.core.rating import ReadinessInterval
from pbx_controller.core.readiness import (
    ReadinessTracker,
    ReadySpan,
    StateChange,
    readiness_by_tenant,
)
from pbx_controller.store.models import Agent, AgentStateLog, UTCDateTime

__all__ = ["load_readiness", "state_changes"]

_BATCH = 5000


async def state_changes(
    connection: AsyncConnection, start: datetime, stop: datetime
) -> AsyncIterator[StateChange]:
    """Rows that decide readiness within [start, stop), streamed in (agent, at, id) order."""
    log = AgentStateLog.__table__
    # The agent's state as the window opens is its last row before `start`;
    # a correlated max() per agent walks the (agent_id, at) index backwards,
    # instead of aggregating the whole history.
    anchor = (
        sa.select(sa.func.max(log.c.at))
        .where(log.c.agent_id == Agent.__table__.c.id, log.c.at < start)
        .correlate(Agent.__table__)
        .scalar_subquery()
    )
    anchors = sa.select(Agent.__table__.c.id.label("agent_id"), anchor.label("since")).subquery()
    since = sa.func.coalesce(anchors.c.since, sa.literal(start, UTCDateTime()))
    query = (
        sa.select(log.c.agent_id, log.c.at, log.c.state, log.c.tenant_ids)
        .join(anchors, anchors.c.agent_id == log.c.agent_id)
        .where(log.c.at >= since, log.c.at < stop)
        .order_by(log.c.agent_id, log.c.at, log.c.id)
        .execution_options(yield_per=_BATCH)
    )
    result = await connection.stream(query)
    async for rows in result.partitions():
        for agent_id, at, state, tenant_ids in rows:
            yield StateChange(agent_id, at, state, frozenset(tenant_ids or ()))


async def load_readiness(
    connection: AsyncConnection, windows: Mapping[str, tuple[datetime, datetime]]
) -> dict[str, list[ReadinessInterval]]:
    """Each tenant's readiness intervals, clipped to its [start, stop) window.

    One pass over the log for all tenants: the window read is the union of
    theirs. Memory holds the merged spans (a few per agent login), not rows.
    """
    if not windows:
        return {}
    start = min(window[0] for window in windows.values())
    stop = max(window[1] for window in windows.values())
    tracker = ReadinessTracker(start, stop)
    spans: list[ReadySpan] = []
    async for change in state_changes(connection, start, stop):
        span = tracker.add(change)
        if span is not None and not span.tenants.isdisjoint(windows):
            spans.append(span)
    spans.extend(span for span in tracker.finish() if not span.tenants.isdisjoint(windows))
    return readiness_by_tenant(spans, windows)
