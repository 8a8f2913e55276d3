"""Queues and skills routing, end to end on the real Asterisk: SIP callers
from sipp reach a tenant's queue by DID; agent phones are sipp UAS on PJSIP
endpoints; the controller offers, bridges, wraps up and overflows."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from pbx_controller.asterisk.ari import BridgeGone
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentState
from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    BusinessHours,
    Directory,
    OpenWindow,
    OverflowRule,
    Queue,
    QueueMembership,
    Relaxation,
    SkillRequirement,
    Strategy,
    Tenant,
)
from pbx_controller.sandbox import sipp
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings
from pbx_controller.service import Controller, LoggingCdrSink
from tests.integration.helpers import Watcher, watch

pytestmark = pytest.mark.asterisk

DID = "48221100"
NO_ANNOUNCEMENTS = {"position": False, "estimated_wait": False}


def agent(name: str, queue: str = "sales", **skills: int) -> AgentProfile:
    return AgentProfile(
        name, name.title(), f"PJSIP/agent-{name}", skills, (QueueMembership(queue),)
    )


def directory(queue: Queue, agents: Sequence[AgentProfile], **tenant: object) -> Directory:
    queue = dataclasses.replace(queue, announcements=Announcements(**NO_ANNOUNCEMENTS))
    return Directory.build(
        [Tenant("acme", "Acme", greeting=("sound:beep",), **tenant)],  # type: ignore[arg-type]
        [(DID, "acme")],
        queues=[queue],
        agents=agents,
        did_queues=[(DID, queue.id)],
    )


@contextlib.asynccontextmanager
async def call_center(
    asterisk: SandboxAsterisk, directory: Directory, phones: dict[str, sipp.AgentPhone]
) -> AsyncIterator[tuple[Controller, Watcher, LoggingCdrSink]]:
    async with contextlib.AsyncExitStack() as stack:
        for phone in phones.values():
            await stack.enter_async_context(phone)
        await asyncio.to_thread(
            asterisk.set_agent_phones, {f"agent-{n}": p.address for n, p in phones.items()}
        )
        sink = LoggingCdrSink()
        controller = Controller(controller_settings(asterisk), directory, sink)
        await stack.enter_async_context(controller)
        stack.push_async_callback(hang_up_everything, controller)
        yield controller, watch(controller), sink


async def hang_up_everything(controller: Controller) -> None:
    # A failed test must not leave callers for the next test's controller.
    for channel_id in controller.engine.channel_ids():
        with contextlib.suppress(Exception):
            await controller.ari.hangup(channel_id)


async def place_caller(asterisk: SandboxAsterisk) -> asyncio.Task[sipp.SippResult]:
    return asyncio.create_task(sipp.call(asterisk.endpoints.sip_port, DID, calls=1))


async def cdr_of(watcher: Watcher, n: int = 1, timeout: float = 20) -> list[CdrRecord]:
    found = await watcher.wait_for(
        lambda: len(watcher.actions(a.EmitCdr)) >= n and watcher.actions(a.EmitCdr), timeout
    )
    return [x.cdr for x in found]


async def test_caller_and_agent_are_bridged(asterisk) -> None:
    queue = Queue("sales", "acme", ring_timeout_ms=5000, wrapup_ms=0)
    phones = {"anna": sipp.AgentPhone(ring_ms=300, talk_ms=1500)}
    async with call_center(asterisk, directory(queue, [agent("anna")]), phones) as (c, w, _):
        assert c.agent_command("anna", "login") == "OK"
        caller = await place_caller(asterisk)
        bridge = (await w.wait_for(lambda: w.actions(a.Bridge)))[0]
        # Asterisk itself holds the caller and the agent in one bridge.
        held: set[str] = set()
        async with asyncio.timeout(5):
            while len(held) < 2:
                with contextlib.suppress(BridgeGone):  # not created yet
                    held = set((await c.ari.get_bridge(bridge.bridge_id))["channels"])
                await asyncio.sleep(0.02)
        assert held == set(bridge.channel_ids)
        cdr = (await cdr_of(w))[0]
        result = await caller
    assert (result.successful, result.failed) == (1, 0)
    assert cdr.disposition is Disposition.ANSWERED
    assert (cdr.queue_id, cdr.agent_id) == ("sales", "anna")
    assert cdr.hangup_side is HangupSide.AGENT  # the agent phone hung up first
    # The agent talked about 1.5 s; the wait includes about 0.3 s of ringing.
    assert 1000 <= cdr.talk_ms <= 3000
    assert 250 <= cdr.wait_ms <= 3000
    assert [(s.agent_id, s.outcome) for s in cdr.segments] == [("anna", "answered")]
    originated = w.actions(a.Originate)
    assert [o.endpoint for o in originated] == ["PJSIP/agent-anna"]


@pytest.mark.parametrize(
    ("ring_ms", "music"), [(50, False), (1500, True)], ids=["auto-answer", "rings"]
)
async def test_hold_music_waits_for_a_phone_that_rings(asterisk, ring_ms, music) -> None:
    """Asterisk's own MusicOnHold events on the caller's channel: none when
    the agent's phone answers at once, music while a phone rings past the
    grace, stopped before the bridge."""
    queue = Queue("sales", "acme", ring_timeout_ms=5000, wrapup_ms=0)
    phones = {"anna": sipp.AgentPhone(ring_ms=ring_ms, talk_ms=1000)}
    async with call_center(asterisk, directory(queue, [agent("anna")]), phones) as (c, w, _):
        assert c.ami is not None
        heard: list[tuple[str, str]] = []

        async def on_music(event: Any) -> None:
            heard.append((event.event, event.uniqueid))

        subscription = c.ami.subscribe("MusicOnHold*", on_music)
        try:
            assert c.agent_command("anna", "login") == "OK"
            caller = await place_caller(asterisk)
            cdr = (await cdr_of(w))[0]
            assert (await caller).successful == 1
        finally:
            subscription.cancel()
    assert cdr.disposition is Disposition.ANSWERED
    channel = w.events(e.CallArrived)[0].channel_id
    on_caller = [name for name, uniqueid in heard if uniqueid == channel]
    assert on_caller == (["MusicOnHoldStart", "MusicOnHoldStop"] if music else [])
    if music:
        # Started after the grace (300 ms) of ringing, not at once.
        assert cdr.wait_ms >= 1400


async def test_skills_decide_and_relaxation_widens(asterisk) -> None:
    queue = Queue(
        "sales",
        "acme",
        ring_timeout_ms=5000,
        wrapup_ms=0,
        skills=(SkillRequirement("polish", 7, (Relaxation(1500, min_level=3),)),),
    )
    agents = [agent("anna", polish=8), agent("bob", polish=4)]
    phones = {n: sipp.AgentPhone(ring_ms=100, talk_ms=500) for n in ("anna", "bob")}
    async with call_center(asterisk, directory(queue, agents), phones) as (c, w, _):
        # Only bob (polish 4) is in: the call waits until the requirement relaxes.
        assert c.agent_command("bob", "login") == "OK"
        first = await place_caller(asterisk)
        cdr = (await cdr_of(w))[0]
        await first
        assert cdr.agent_id == "bob"
        assert cdr.wait_ms >= 1500
        # With anna (polish 8) ready too, she gets the next call at once.
        assert c.agent_command("anna", "login") == "OK"
        second = await place_caller(asterisk)
        cdrs = await cdr_of(w, 2)
        await second
    assert cdrs[1].agent_id == "anna"
    assert cdrs[1].wait_ms < 1500


async def test_ring_all_connects_exactly_one_agent(asterisk) -> None:
    queue = Queue("sales", "acme", strategy=Strategy.RING_ALL, ring_timeout_ms=5000, wrapup_ms=0)
    agents = [agent("anna"), agent("bob"), agent("cyd")]
    phones = {
        "anna": sipp.AgentPhone(ring_ms=1200, talk_ms=800),
        "bob": sipp.AgentPhone(ring_ms=300, talk_ms=800),
        "cyd": sipp.AgentPhone(answers=False),
    }
    async with call_center(asterisk, directory(queue, agents), phones) as (c, w, _):
        for name in ("anna", "bob", "cyd"):
            assert c.agent_command(name, "login") == "OK"
        caller = await place_caller(asterisk)
        cdr = (await cdr_of(w))[0]
        await caller
    assert len(w.actions(a.Originate)) == 3
    assert len(w.actions(a.Bridge)) == 1
    assert cdr.agent_id == "bob"
    outcomes = sorted((s.agent_id, s.outcome) for s in cdr.segments)
    assert outcomes == [("anna", "cancelled"), ("bob", "answered"), ("cyd", "cancelled")]
    # Every losing leg was hung up by the controller.
    losing = {o.channel_id for o in w.actions(a.Originate)} - set(
        w.actions(a.Bridge)[0].channel_ids
    )
    assert losing <= {h.channel_id for h in w.actions(a.Hangup)}


async def test_wrap_up_holds_the_agent_back(asterisk) -> None:
    queue = Queue("sales", "acme", ring_timeout_ms=5000, wrapup_ms=2500)
    phones = {"anna": sipp.AgentPhone(ring_ms=100, talk_ms=400)}
    async with call_center(asterisk, directory(queue, [agent("anna")]), phones) as (c, w, _):
        assert c.agent_command("anna", "login") == "OK"
        first = await place_caller(asterisk)
        first_cdr = (await cdr_of(w))[0]
        assert c.engine.board.status("anna").state is AgentState.WRAP_UP
        second = await place_caller(asterisk)
        cdrs = await cdr_of(w, 2)
        await asyncio.gather(first, second)
    second_offer = cdrs[1].segments[0].started_at
    # The second caller waited for the agent's wrap-up to end.
    assert second_offer - first_cdr.ended_at >= timedelta(milliseconds=2400)
    states = [r.record.state for r in w.actions(a.RecordAgentState)]
    assert states.count(AgentState.WRAP_UP) == 2


async def test_missed_offer_requeues_the_call(asterisk) -> None:
    queue = Queue("sales", "acme", strategy=Strategy.LINEAR, ring_timeout_ms=1200, wrapup_ms=0)
    agents = [
        AgentProfile("anna", "Anna", "PJSIP/agent-anna", {}, (QueueMembership("sales", order=0),)),
        AgentProfile("bob", "Bob", "PJSIP/agent-bob", {}, (QueueMembership("sales", order=1),)),
    ]
    phones = {
        "anna": sipp.AgentPhone(answers=False),
        "bob": sipp.AgentPhone(ring_ms=100, talk_ms=400),
    }
    async with call_center(asterisk, directory(queue, agents), phones) as (c, w, _):
        assert c.agent_command("anna", "login") == "OK"
        caller = await place_caller(asterisk)
        # Anna's phone rings out: the call goes back to the queue at its old
        # place (and, anna being the only agent, rings her again).
        await w.wait_for(
            lambda: any(
                r.record.agent_id == "anna" and r.record.event == "OfferMissed"
                for r in w.actions(a.RecordAgentState)
            ),
            timeout=10,
        )
        assert c.agent_command("bob", "login") == "OK"
        cdr = (await cdr_of(w))[0]
        await caller
    offers = [(s.agent_id, s.outcome) for s in cdr.segments]
    assert offers[0] == ("anna", "missed")
    assert offers[-1] == ("bob", "answered")
    assert set(offers[:-1]) == {("anna", "missed")}
    assert cdr.agent_id == "bob"
    # Its wait counts from the first time it was queued, not from the re-queue.
    assert cdr.wait_ms >= 1200 * len(offers[:-1])


async def test_max_wait_overflows_and_closed_hours_close(asterisk) -> None:
    queue = Queue("sales", "acme", max_wait_ms=1000, overflow=(OverflowRule(after_ms=1000),))
    async with call_center(asterisk, directory(queue, [agent("anna")]), {}) as (_, w, _sink):
        caller = await place_caller(asterisk)
        cdr = (await cdr_of(w))[0]
        result = await caller
    assert (result.successful, result.failed) == (1, 0)  # the overflow message, then bye
    assert cdr.disposition is Disposition.OVERFLOW
    assert [x.context for x in w.actions(a.ContinueInDialplan)] == ["pbx-overflow"]

    # Open only on a day that is not today: the closed message.
    today = datetime.now(UTC).astimezone().weekday()
    hours = BusinessHours((OpenWindow((today + 3) % 7, time(8), time(9)),))
    async with call_center(asterisk, directory(queue, [], business_hours=hours), {}) as (
        _,
        w,
        _sink,
    ):
        caller = await place_caller(asterisk)
        closed = (await cdr_of(w))[0]
        await caller
    assert closed.disposition is Disposition.CLOSED
    assert [x.context for x in w.actions(a.ContinueInDialplan)] == ["pbx-closed"]


async def test_feature_codes_log_in_and_pause_from_the_phone(asterisk) -> None:
    queue = Queue("sales", "acme")
    phones = {"anna": sipp.AgentPhone()}
    async with call_center(asterisk, directory(queue, [agent("anna")]), phones) as (c, w, _):
        port = asterisk.endpoints.sip_port
        for code, expected in (
            ("*21", AgentState.READY),
            ("*23lunch", AgentState.PAUSED),
            ("*24", AgentState.READY),
            ("*22", AgentState.LOGGED_OUT),
        ):
            result = await sipp.call(port, code, from_user="agent-anna")
            assert (result.successful, result.failed) == (1, 0), result.output[-1500:]
            assert c.engine.board.status("anna").state is expected, code
        reasons = [r.record.reason for r in w.actions(a.RecordAgentState)]
    assert "lunch" in reasons
    # A phone that is no agent's gets UNKNOWN_AGENT, and nothing changes.
    assert not any(isinstance(ev, e.AgentCommand) and ev.agent_id != "anna" for ev, _ in w.steps)


async def test_the_agent_leg_is_asked_for_the_callers_codecs(asterisk) -> None:
    """The agent's leg is originated with the caller as its originator: a
    G.711 caller's agent leg is G.711 too, with no transcoding between them.
    Without it, an ARI-originated Local leg takes every format and picks
    slin192: Asterisk resampled the hold music and the talk to 192 kHz."""
    local = AgentProfile(
        "lena", "Lena", "Local/2201@pbx-bench-agent", {}, (QueueMembership("sales"),)
    )
    queue = Queue("sales", "acme", ring_timeout_ms=5000, wrapup_ms=0)
    asterisk.cli("dialplan set global BENCH_TALK 3")
    try:
        async with call_center(asterisk, directory(queue, [local]), {}) as (c, w, _):
            assert c.agent_command("lena", "login") == "OK"
            caller = await place_caller(asterisk)  # sipp: PCMU
            bridge = (await w.wait_for(lambda: w.actions(a.Bridge), 15))[0]
            leg = bridge.channel_ids[1]
            shown = asterisk.cli(f"core show channel {leg}")
            native = next(line for line in shown.splitlines() if "NativeFormats" in line)
            assert "ulaw" in native, native
            assert "slin" not in native, native
            await cdr_of(w)
            await caller
    finally:
        asterisk.cli("dialplan set global BENCH_TALK 1")
