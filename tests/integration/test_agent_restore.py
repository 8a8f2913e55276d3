"""A controller restart neither logs the agents out nor cuts their calls. `pbxctl serve` stopped
(SIGTERM) or killed (kill -9) and started again puts each agent back as it
was, ready or paused with its reason, in the queues it had chosen; a real
call through Asterisk then reaches a restored agent with nobody dialling
the login code again. After a stop longer than `agents_restore_within_s`
they start logged out. The agent state log says the same as the
controller throughout: readiness billing reads it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pbx_controller.asterisk.ari import AriClient
from pbx_controller.core.agent import LOST_REASON, SHUTDOWN_REASON
from pbx_controller.sandbox.asterisk import SandboxAsterisk
from pbx_controller.store import models as m
from pbx_controller.store.db import make_engine, make_sessionmaker
from tests.integration.cdr_support import (
    agents,
    apoll,
    cdr_rows,
    configured_serve,
    pbxctl,
    place_call,
    poll,
)

pytestmark = pytest.mark.asterisk

DID = "48227100"
CONFIG = f"""
[tenants.rst]
name = "Restart Co"
greeting = ["sound:beep"]
consent_policy = "off"

[[tenants.rst.dids]]
number = "{DID}"
queue = "rst-front"

[queues.rst-front]
tenant = "rst"
strategy = "longest_idle"
ring_timeout_s = 5
wrapup_s = 0

[queues.rst-front.announcements]
position = false
estimated_wait = false

[queues.rst-back]
tenant = "rst"
wrapup_s = 0

[queues.rst-back.announcements]
position = false
estimated_wait = false

# Local-channel agents (dialplan/pbx-bench.conf): they answer at once and
# hang up after a second.
[agents.ann]
name = "Ann"
endpoint = "Local/2001@pbx-bench-agent"
queues = ["rst-front", "rst-back"]

[agents.bob]
name = "Bob"
endpoint = "Local/2002@pbx-bench-agent"
queues = ["rst-front"]
"""


async def last_rows(url: str) -> dict[str, tuple[str, str | None, list[str]]]:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            rows = (
                await session.scalars(select(m.AgentStateLog).order_by(m.AgentStateLog.id))
            ).all()
    finally:
        await engine.dispose()
    return {r.agent_id: (r.state, r.reason, r.queue_ids) for r in rows}


async def rows_since(url: str, agent: str, since: datetime) -> list[m.AgentStateLog]:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            query = (
                select(m.AgentStateLog)
                .where(m.AgentStateLog.agent_id == agent, m.AgentStateLog.at >= since)
                .order_by(m.AgentStateLog.at, m.AgentStateLog.id)
            )
            return list((await session.scalars(query)).all())
    finally:
        await engine.dispose()


async def answered_by(url: str, asterisk: SandboxAsterisk, calls_before: int) -> str | None:
    place_call(asterisk, DID)
    rows = await apoll(lambda: _more_cdrs(url, calls_before), timeout=20)
    (cdr,) = rows[calls_before:]
    assert cdr.disposition == "answered", (cdr.disposition, cdr.hangup_cause)
    return cdr.agent_id


async def _more_cdrs(url: str, n: int) -> list[m.Cdr] | None:
    rows = await cdr_rows(url)
    return rows if len(rows) > n else None


async def test_agents_come_back_after_a_stop_and_a_kill(
    asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    serve = await configured_serve(asterisk, tmp_path, CONFIG)
    url = serve.database_url
    try:
        await serve.start()
        pbxctl(serve, "agent", "login", "ann")
        pbxctl(serve, "agent", "login", "bob")
        pbxctl(serve, "agent", "pause", "bob", "--reason", "lunch")
        before = agents(serve)
        assert before == {
            "ann": ("ready", None, ["rst-back", "rst-front"]),
            "bob": ("paused", "lunch", ["rst-front"]),
        }

        # SIGTERM: both logged out in the log, saying why.
        assert await serve.terminate() == 0
        assert await last_rows(url) == {
            "ann": ("logged_out", SHUTDOWN_REASON, []),
            "bob": ("logged_out", SHUTDOWN_REASON, []),
        }
        await serve.start()
        assert "2 agent(s) back as the last run left them (1 paused)" in serve.log()
        assert agents(serve) == before
        assert await answered_by(url, asterisk, 0) == "ann"  # no login code dialled

        # kill -9 mid-run: no word from the dying run. The next one logs
        # them out as of the dead run's liveness stamp (no readiness for the
        # time it was down), then puts them back as they were.
        serve.kill9()
        killed_at = datetime.now(UTC)
        await serve.start()
        assert agents(serve) == before
        assert await answered_by(url, asterisk, 1) == "ann"
        rows = await last_rows(url)
        assert rows["bob"] == ("paused", "lunch", ["rst-front"])
        for agent in ("ann", "bob"):
            since_kill = await rows_since(url, agent, killed_at - timedelta(seconds=10))
            (i,) = [i for i, r in enumerate(since_kill) if r.reason == LOST_REASON]
            lost, back = since_kill[i : i + 2]
            assert lost.state == "logged_out"
            # Stamped every 5 s while it ran: at most that before the kill.
            assert killed_at - timedelta(seconds=6) <= lost.at <= killed_at
            assert back.state == before[agent][0]
            assert back.at > killed_at  # the new run's restore
        assert "the last run ended without logging 2 agent(s) out" in serve.log()

        # A stop longer than agents_restore_within_s: everyone starts out.
        assert await serve.terminate() == 0
        serve.env["PBX_AGENTS_RESTORE_WITHIN_S"] = "0"
        await asyncio.sleep(0.01)  # the stop is now older than 0 s
        await serve.start()
        assert {k: v[0] for k, v in agents(serve).items()} == {
            "ann": "logged_out",
            "bob": "logged_out",
        }
        assert "back as the last run left them" not in serve.log()
    finally:
        asterisk.cli("channel request hangup all")  # nothing for the next test to adopt
        serve.cleanup()


async def test_a_call_goes_on_through_a_kill_and_its_whole_talk_is_billed(
    asterisk: SandboxAsterisk, tmp_path: Path
) -> None:
    """kill -9 mid-conversation: the caller and the agent go on talking, and
    the next run takes the call over; its CDR has the talk from the answer
    before the kill to the end. An empty call bridge left behind is swept."""
    serve = await configured_serve(asterisk, tmp_path, CONFIG)
    url = serve.database_url
    e = asterisk.endpoints
    ari = AriClient(e.ari_url, e.ari_username, e.ari_password, "restart-test")
    asterisk.cli("dialplan set global BENCH_TALK 5")
    try:
        await serve.start()
        pbxctl(serve, "agent", "login", "ann")
        place_call(asterisk, DID)
        await poll(lambda: agents(serve)["ann"][0] == "on_call", timeout=15)
        serve.kill9()
        # What a run killed between an offer and its answer leaves: a bridge.
        await ari.create_bridge("killed-call-bridge")
        await serve.start()
        # Adopted as the new run connects to ARI, around its "ready" line.
        await poll(lambda: "was left talking by an earlier run; it goes on" in serve.log())
        assert "bridge killed-call-bridge left by an earlier run" in serve.log()
        assert agents(serve)["ann"][0] == "on_call"  # not offered another call

        (cdr,) = await apoll(lambda: _more_cdrs(url, 0), timeout=20)
        assert (cdr.disposition, cdr.agent_id, cdr.queue_id) == ("answered", "ann", "rst-front")
        assert cdr.answered_at is not None
        assert (cdr.ended_at - cdr.answered_at).total_seconds() >= 4.9  # the whole talk
        assert cdr.talk_ms >= 4_900
        await poll(lambda: agents(serve)["ann"][0] == "ready", timeout=10)
        await apoll(lambda: _no_bridges(ari), timeout=10)
    finally:
        asterisk.cli("dialplan set global BENCH_TALK 1")
        asterisk.cli("channel request hangup all")  # nothing for the next test to adopt
        await ari.close()
        serve.cleanup()


async def _no_bridges(ari: AriClient) -> bool:
    return not await ari.list_bridges()
