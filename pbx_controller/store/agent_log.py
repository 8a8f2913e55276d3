"""agent_state_log rows from the engine's agent state changes.

Readiness billing is derived from these rows, so they are written in order
by one task, and a database outage only delays them: the writer retries
with capped backoff and keeps the backlog in memory.

Rows are written in batches, one INSERT executed for many rows: after the
first row of a batch the writer waits up to `linger_s` (or until `batch`
rows wait) for more. A row per transaction cost the controller as much CPU
as everything else it does for a call; the log lags by at most `linger_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.backoff import backoff_s
from pbx_controller.core.agent import (
    AgentState,
    AgentStateRecord,
    LoggedState,
    lost_run_logout,
    restoration,
)
from pbx_controller.core.events import AgentRestored
from pbx_controller.store import models as m
from pbx_controller.store.outbox import describe_database_error, is_permanent_database_error

log = logging.getLogger(__name__)

# A Core INSERT on the table: the ORM's bulk path costs more CPU than the rows.
AGENT_STATE_LOG = m.Base.metadata.tables[m.AgentStateLog.__tablename__]


def log_values(record: AgentStateRecord) -> dict[str, object]:
    """The agent_state_log row of a state change, for a Core INSERT of many rows."""
    return {
        "agent_id": record.agent_id,
        "state": record.state.value,
        "reason": record.reason,
        "tenant_ids": list(record.tenants),
        "queue_ids": list(record.queues),
        "at": record.at,
    }


async def restorations(
    sessions: async_sessionmaker[AsyncSession],
    agent_ids: Iterable[str],
    now: datetime,
    within: timedelta,
    *,
    alive_at: datetime | None = None,
) -> list[AgentRestored]:
    """The agents (of those configured) a starting controller logs back in:
    each agent's last two rows, judged by `core.agent.restoration`. One
    query per agent, each a short walk of the (agent_id, at) index: the log
    grows for ever, and a window over all of it would be read at every start.

    An agent the last run left logged in (that run died) is first logged
    out as of `alive_at`, the dead run's liveness stamp
    (`core.agent.lost_run_logout`): those rows are written here, before
    anything of the new run. That includes agents no longer configured (a
    `config apply` while the controller was down): nothing else would ever
    end their readiness."""
    log_table = AGENT_STATE_LOG
    last_two = (
        sa.select(log_table.c.state, log_table.c.reason, log_table.c.queue_ids, log_table.c.at)
        .where(log_table.c.agent_id == sa.bindparam("agent_id"))
        .order_by(log_table.c.at.desc(), log_table.c.id.desc())
        .limit(2)
    )
    out = []
    lost: list[dict[str, object]] = []
    configured = set(agent_ids)
    async with sessions() as session, session.begin():
        others = await session.scalars(sa.select(m.Agent.id).where(m.Agent.id.not_in(configured)))
        for agent in [*sorted(configured), *others]:
            rows = [
                LoggedState(AgentState(state), reason, tuple(queue_ids or ()), at)
                for state, reason, queue_ids, at in await session.execute(
                    last_two, {"agent_id": agent}
                )
            ]
            logout = lost_run_logout(rows[0] if rows else None, alive_at, now)
            if logout is not None:
                rows = [logout, rows[0]]
                lost.append(
                    {
                        "agent_id": agent,
                        "state": logout.state.value,
                        "reason": logout.reason,
                        "tenant_ids": [],
                        "queue_ids": [],
                        "at": logout.at,
                    }
                )
            back = restoration(rows, now, within) if agent in configured else None
            if back is not None:
                out.append(AgentRestored(agent, back.paused_reason, back.queues))
        if lost:
            await session.execute(insert(AGENT_STATE_LOG), lost)
    if lost:
        log.warning(
            "the last run ended without logging %d agent(s) out (killed?); logged out as of"
            " %s, the last time it was known running: no readiness for the time it was down",
            len(lost),
            "its last log rows" if alive_at is None else alive_at.isoformat(timespec="seconds"),
        )
    return out


class DatabaseAgentLog:
    """An AgentLogSink: `write` queues the row; `run` writes them in order."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        batch: int = 200,
        # Measured at 100 rows/s on SQLite: 0.15 s -> 0.16 ms of CPU per row,
        # 1 s -> 0.05 ms. The log lags by at most this; live state is in memory.
        linger_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.batch = batch
        self.linger_s = linger_s
        self._queue: asyncio.Queue[AgentStateRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._enough = asyncio.Event()  # a full batch waits, or close(): stop lingering
        self._closing = False
        self.refused = 0  # rows the database refused for good (logged, dropped)

    def write(self, record: AgentStateRecord) -> None:
        self._queue.put_nowait(record)
        if self._queue.qsize() + 1 >= self.batch:  # with the one the writer holds
            self._enough.set()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="agent-log")

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Write what is queued (within the timeout), then stop."""
        self._closing = True
        self._enough.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.backlog:
            log.error("%d agent state changes were not written", self.backlog)

    async def _run(self) -> None:
        while True:
            records = [await self._queue.get()]
            await self._linger()
            while len(records) < self.batch and not self._queue.empty():
                records.append(self._queue.get_nowait())
            await self._write([log_values(r) for r in records])
            for _ in records:
                self._queue.task_done()

    async def _write(self, rows: list[dict[str, object]]) -> None:
        """Insert the rows, waiting out a database that is down (capped
        backoff). Rows it refuses for good (a constraint: say, an agent
        deleted from the configuration while logged in) are tried one by one,
        so one bad row never holds back the rest; a refused row is logged
        whole, for an operator to replay, and dropped."""
        failures = 0
        while True:
            try:
                async with self.sessions() as session, session.begin():
                    await session.execute(insert(AGENT_STATE_LOG), rows)
                return
            except Exception as exc:
                if is_permanent_database_error(exc):
                    refusal = describe_database_error(exc)
                    break
                failures += 1
                delay = backoff_s(failures, 0.25, 5.0)
                log.warning(
                    "agent state log not written (%s); retrying in %.1fs",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
        if len(rows) > 1:
            for row in rows:
                await self._write([row])
            return
        self.refused += 1
        log.error(
            "agent state change refused by the database (%s), not logged: %s",
            refusal,
            json.dumps(rows[0], default=str, sort_keys=True),
        )

    async def _linger(self) -> None:
        """Give more rows `linger_s` to join the batch (not when closing or full)."""
        if self._closing or self.linger_s <= 0 or self._queue.qsize() + 1 >= self.batch:
            return
        self._enough.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger_s):
                await self._enough.wait()
