"""A real call through the real Asterisk: Stasis, answer, greeting, hang-up,
and the event stream surviving a websocket cut from the server side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.cdr import Disposition, HangupSide
from pbx_controller.core.model import Directory, Tenant
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings
from pbx_controller.service import Controller, LoggingCdrSink
from tests.integration.cdr_support import apoll
from tests.integration.helpers import watch

pytestmark = pytest.mark.asterisk

DIRECTORY = Directory.build(
    [
        Tenant("acme", "Acme", greeting=("sound:beep",)),
        # Long enough to cut the websocket while it plays.
        Tenant("slowco", "Slow Co", greeting=("sound:silence/3",)),
    ],
    [("1001", "acme"), ("1002", "slowco")],
)


@pytest.fixture(params=["rest-over-websocket", "rest-over-http"])
async def controller(
    asterisk: SandboxAsterisk, request: pytest.FixtureRequest
) -> AsyncIterator[Controller]:
    """Each test runs twice: REST pipelined over the event websocket (the
    default), and over HTTP (an older Asterisk), where the executor's lanes
    order a channel's requests."""
    settings = controller_settings(asterisk)
    over_websocket = request.param == "rest-over-websocket"
    ari = settings.ari.model_copy(update={"rest_over_websocket": over_websocket})
    settings = settings.model_copy(update={"ari": ari})
    async with Controller(settings, DIRECTORY, LoggingCdrSink()) as c:
        assert c.ari.pipelining is over_websocket
        yield c


def place_call(asterisk: SandboxAsterisk, did: str) -> None:
    """A caller dials the DID: a Local channel into the inbound dialplan."""
    asterisk.cli(f"channel originate Local/{did}@pbx-inbound application Wait 20")


async def test_call_is_answered_greeted_and_hung_up(asterisk, controller) -> None:
    watcher = watch(controller)
    place_call(asterisk, "1001")

    arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
    assert arrived.did == "1001"
    # The dialplan gave the call its id; it is a UUID, not the channel id.
    uuid.UUID(arrived.call_id)
    cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr)))[0].cdr

    # [pbx-inbound] answered it before Stasis: Asterisk says so, and the
    # controller does not answer again.
    assert arrived.answered
    assert not watcher.actions(a.Answer)
    played = watcher.actions(a.Play)
    assert played[0].media == ("sound:beep",)
    finished = watcher.events(e.PlaybackFinished)
    assert [f.playback_id for f in finished] == [played[0].playback_id]
    assert watcher.actions(a.Hangup)[0].channel_id == arrived.channel_id
    assert not watcher.events(e.ActionFailed)

    assert cdr.call_id == arrived.call_id
    assert cdr.tenant_id == "acme"
    assert cdr.disposition is Disposition.SERVED
    assert cdr.hangup_side is HangupSide.SYSTEM
    assert cdr.arrived_at <= cdr.ended_at
    # Asterisk agrees the channel is gone (the CDR is written as the
    # controller hangs up, a moment before Asterisk has destroyed it).
    await apoll(lambda: _gone(controller, arrived.channel_id), timeout=5)


async def _gone(controller: Controller, channel_id: str) -> bool:
    return channel_id not in {c["id"] for c in await controller.ari.list_channels()}


async def test_unknown_did_goes_back_to_the_dialplan_message(asterisk, controller) -> None:
    watcher = watch(controller)
    place_call(asterisk, "9999")
    cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr)))[0].cdr
    handed_back = watcher.actions(a.ContinueInDialplan)
    assert [h.context for h in handed_back] == ["pbx-unknown-did"]
    assert not watcher.actions(a.Answer)
    assert cdr.disposition is Disposition.UNKNOWN_DID
    assert cdr.tenant_id is None


async def test_call_survives_websocket_cut_by_asterisk(asterisk, controller) -> None:
    watcher = watch(controller)
    place_call(asterisk, "1002")
    arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
    await watcher.wait_for(lambda: watcher.actions(a.Play))

    # Asterisk closes our event websocket while the greeting plays.
    output = await asyncio.to_thread(asterisk.cli, "ari shutdown websocket sessions")
    assert "Shutting down" in output or output == "" or "session" in output.lower()
    async with asyncio.timeout(10):
        while controller.reconnects < 1 or not controller.ari.connected.is_set():
            await asyncio.sleep(0.02)

    # The call that was already in Stasis is still ours: the greeting ends,
    # the controller hangs it up, and exactly one CDR is written.
    cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr), timeout=15))[0].cdr
    assert cdr.call_id == arrived.call_id
    assert cdr.disposition is Disposition.SERVED
    assert watcher.actions(a.Hangup)[0].channel_id == arrived.channel_id
    assert len(watcher.actions(a.EmitCdr)) == 1


@pytest.mark.parametrize(
    ("half", "disposition", "side"),
    [
        # The caller's end (the ;1 half of the Local pair), as a caller would.
        ("1", Disposition.ABANDONED, HangupSide.CALLER),
        # The channel in our app itself, by ops' CLI (a shutdown does the
        # same): a soft hang-up, Asterisk's doing, not an abandon.
        ("2", Disposition.FAILED, HangupSide.SYSTEM),
    ],
    ids=["caller-hangs-up", "ops-hang-up"],
)
async def test_hanging_up_during_greeting(asterisk, controller, half, disposition, side) -> None:
    watcher = watch(controller)
    place_call(asterisk, "1002")
    arrived = (await watcher.wait_for(lambda: watcher.events(e.CallArrived)))[0]
    await watcher.wait_for(lambda: watcher.actions(a.Play))
    name = (await controller.ari.get_channel(arrived.channel_id))["name"]
    assert name.endswith(";2")
    await asyncio.to_thread(asterisk.cli, f"channel request hangup {name[:-1]}{half}")
    cdr = (await watcher.wait_for(lambda: watcher.actions(a.EmitCdr)))[0].cdr
    assert (cdr.disposition, cdr.hangup_side) == (disposition, side)
    assert not watcher.actions(a.Hangup)
