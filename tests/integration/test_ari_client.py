"""Our ARI client against the real Asterisk: bridging two channels, typed
errors, and the event stream's reconnect."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from pbx_controller.asterisk.ari import (
    AriAuthError,
    AriBadRequest,
    AriClient,
    AriConflict,
    AriError,
    AriUnavailable,
    BridgeGone,
    ChannelGone,
    Rest,
    StreamConnected,
)
from pbx_controller.asterisk.executor import Executor
from pbx_controller.core import actions as act
from pbx_controller.core import events as ev
from pbx_controller.sandbox.asterisk import SandboxAsterisk, free_port

pytestmark = pytest.mark.asterisk


async def connected(
    asterisk: SandboxAsterisk, *, rest_over_websocket: bool = False, request_timeout_s: float = 5.0
) -> AsyncIterator[AriClient]:
    e = asterisk.endpoints
    # Its own app name: this test's events never reach another test's client.
    client = AriClient(
        e.ari_url,
        e.ari_username,
        e.ari_password,
        f"test-{uuid.uuid4().hex[:8]}",
        rest_over_websocket=rest_over_websocket,
        request_timeout_s=request_timeout_s,
    )
    reader = asyncio.create_task(client.run_events())
    try:
        async with asyncio.timeout(10):
            assert isinstance(await client.events.get(), StreamConnected)
        yield client
    finally:
        reader.cancel()
        await client.close()


@pytest.fixture
async def ari(asterisk: SandboxAsterisk) -> AsyncIterator[AriClient]:
    async for client in connected(asterisk):
        yield client


@pytest.fixture
async def ws_ari(asterisk: SandboxAsterisk) -> AsyncIterator[AriClient]:
    async for client in connected(asterisk, rest_over_websocket=True):
        yield client


async def next_event(client: AriClient, kind: str, **match: str) -> dict:
    async with asyncio.timeout(10):
        while True:
            item = await client.events.get()
            if not isinstance(item, dict) or item.get("type") != kind:
                continue
            channel = item.get("channel", {})
            if all(channel.get(k) == v for k, v in match.items()):
                return item


async def test_two_channels_are_bridged(ari: AriClient) -> None:
    a_id, b_id, bridge_id = (f"t-{uuid.uuid4()}" for _ in range(3))
    # Echo() answers the far end of each Local pair, so our halves come up.
    for channel_id in (a_id, b_id):
        await ari.originate("Local/echo@pbx-test", channel_id=channel_id, app_args="leg")
    # Either may come up first: take both StasisStarts as they come.
    started = {(await next_event(ari, "StasisStart"))["channel"]["id"] for _ in range(2)}
    assert started == {a_id, b_id}

    await ari.create_bridge(bridge_id)
    await ari.add_to_bridge(bridge_id, [a_id, b_id])  # one request: channel=a,b
    entered = {(await next_event(ari, "ChannelEnteredBridge"))["channel"]["id"] for _ in range(2)}
    assert entered == {a_id, b_id}
    bridge = await ari.get_bridge(bridge_id)
    assert sorted(bridge["channels"]) == sorted([a_id, b_id])
    assert bridge["bridge_type"] == "mixing"

    await ari.hangup(a_id)
    await ari.hangup(b_id)
    await ari.destroy_bridge(bridge_id)
    async with asyncio.timeout(10):
        while True:  # Asterisk destroys it asynchronously: await its event
            item = await ari.events.get()
            if isinstance(item, dict) and item.get("type") == "BridgeDestroyed":
                break
    assert item["bridge"]["id"] == bridge_id
    with pytest.raises(BridgeGone):
        await ari.get_bridge(bridge_id)


async def test_typed_errors(ari: AriClient, asterisk: SandboxAsterisk) -> None:
    with pytest.raises(ChannelGone):
        await ari.hangup("no-such-channel")
    with pytest.raises(AriBadRequest):
        await ari.request("POST", "/channels", {"app": ari.app})  # no endpoint

    e = asterisk.endpoints
    async with AriClient(e.ari_url, e.ari_username, "wrong-password", "x") as wrong:
        with pytest.raises(AriAuthError) as info:
            await wrong.info()
    assert "wrong-password" not in str(info.value)

    async with AriClient(f"http://127.0.0.1:{free_port()}/ari", "u", "p", "x") as nobody:
        with pytest.raises(AriUnavailable):
            await nobody.ping()


async def test_event_stream_reconnects_after_server_side_close(
    ari: AriClient, asterisk: SandboxAsterisk
) -> None:
    await asyncio.to_thread(asterisk.cli, "ari shutdown websocket sessions")
    async with asyncio.timeout(10):
        while True:
            item = await ari.events.get()
            if isinstance(item, StreamConnected):
                break
    assert item.reconnect is True
    # Still subscribed: a new channel into the app is seen.
    channel_id = f"t-{uuid.uuid4()}"
    await ari.originate("Local/echo@pbx-test", channel_id=channel_id)
    started = await next_event(ari, "StasisStart", id=channel_id)
    assert started["application"] == ari.app
    await ari.hangup(channel_id)


async def test_rest_over_the_websocket(ws_ari: AriClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ws_ari  # REST over its websocket

    def no_http(*args: object, **kwargs: object) -> None:
        raise AssertionError("an HTTP request while the websocket is up")

    monkeypatch.setattr(client.session, "request", no_http)
    bridge = f"ws-{uuid.uuid4().hex[:8]}"
    created = await client.create_bridge(bridge)
    assert created["id"] == bridge
    assert (await client.get_bridge(bridge))["channels"] == []
    with pytest.raises(ChannelGone):
        await client.get_channel("no-such-channel")
    await client.destroy_bridge(bridge)
    # The websocket goes: a request waiting for its answer fails at once
    # (AriUnavailable), it is never left hanging.
    monkeypatch.setattr(client, "_answered", lambda response: None)  # answers lost
    waiting = asyncio.create_task(client.request("GET", "/asterisk/info"))
    await asyncio.sleep(0.2)  # deliberate: the request is out, its answer dropped
    assert not waiting.done()
    assert client._ws is not None
    await client._ws.close()
    with pytest.raises(AriUnavailable):
        async with asyncio.timeout(5):
            await waiting


async def test_an_asterisk_that_never_answers_over_the_websocket_gets_http(
    ws_ari: AriClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = ws_ari
    assert await client.check_rest_over_websocket() is True
    # An older Asterisk: RESTRequest frames are never answered.
    monkeypatch.setattr(client, "_answered", lambda response: None)
    assert await client.check_rest_over_websocket(timeout_s=0.3) is False
    assert client.rest_over_websocket is False
    assert "ping" in await client.ping()  # over HTTP now, at once


class Outcomes:
    """What pipelined requests heard back, in the order they were answered."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, AriError | None]] = []
        self.changed = asyncio.Event()

    def done(self, name: str) -> Callable[[AriError | None], None]:
        def record(error: AriError | None) -> None:
            self.heard.append((name, error))
            self.changed.set()

        return record

    async def wait_for(self, count: int) -> list[tuple[str, AriError | None]]:
        async with asyncio.timeout(10):
            while len(self.heard) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.heard


async def test_pipelined_requests_run_in_the_order_sent(ws_ari: AriClient) -> None:
    channel_id, bridge_id = f"p-{uuid.uuid4()}", f"p-{uuid.uuid4().hex[:8]}"
    await ws_ari.originate("Local/echo@pbx-test", channel_id=channel_id, app_args="leg")
    await next_event(ws_ari, "StasisStart", id=channel_id)
    outcomes = Outcomes()
    # All four go out before any answer is back, and each outcome depends on
    # the one before: the channel can join only a created bridge, and the
    # bridge is gone for the last request only if the third came first.
    sent = [
        ws_ari.send(Rest.create_bridge(bridge_id), outcomes.done("create")),
        ws_ari.send(Rest.add_to_bridge(bridge_id, [channel_id]), outcomes.done("add")),
        ws_ari.send(Rest.destroy_bridge(bridge_id), outcomes.done("destroy")),
        ws_ari.send(Rest.add_to_bridge(bridge_id, [channel_id]), outcomes.done("add again")),
    ]
    assert sent == [True] * 4
    heard = await outcomes.wait_for(4)
    assert [name for name, _ in heard] == ["create", "add", "destroy", "add again"]
    assert [error for _, error in heard[:3]] == [None, None, None]
    # Gone from our app: 404, or 409 while Asterisk still finishes destroying
    # it. Either way a typed error, as when awaited; sent first, it succeeds.
    assert isinstance(heard[3][1], BridgeGone | AriConflict)
    entered = await next_event(ws_ari, "ChannelEnteredBridge", id=channel_id)
    assert entered["bridge"]["id"] == bridge_id
    await ws_ari.hangup(channel_id)


async def test_a_pipelined_request_without_an_answer_times_out(
    asterisk: SandboxAsterisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for client in connected(asterisk, rest_over_websocket=True, request_timeout_s=0.3):
        monkeypatch.setattr(client, "_answered", lambda response: None)  # answers lost
        outcomes = Outcomes()
        assert client.send(Rest.stop_moh("no-such-channel"), outcomes.done("moh")) is True
        [(_, error)] = await outcomes.wait_for(1)
        assert isinstance(error, AriUnavailable)
        assert "no answer" in str(error)


async def test_send_refuses_when_rest_goes_over_http(ari: AriClient) -> None:
    outcomes = Outcomes()
    assert ari.send(Rest.stop_moh("no-such-channel"), outcomes.done("moh")) is False
    await asyncio.sleep(0.1)  # deliberate: nothing may come back for it
    assert outcomes.heard == []


@pytest.mark.parametrize("rest_over_websocket", [False, True], ids=["http", "websocket"])
async def test_an_agent_leg_whose_caller_is_gone_is_reported_as_such(
    asterisk: SandboxAsterisk, rest_over_websocket: bool
) -> None:
    """The executor tells Asterisk's refusal of an originate whose originator
    (the caller's channel) is gone from any other failed originate: only the
    first is the caller's doing (the engine then neither blames the agent
    nor offers the call again)."""
    fed: list[ev.Event] = []
    async for client in connected(asterisk, rest_over_websocket=rest_over_websocket):
        executor = Executor(client, fed.append, cdrs=_NoCdrs())
        executor.submit(
            [
                act.Originate(
                    f"t-{uuid.uuid4()}", "Local/echo@pbx-test", "agent", "", 5000, "no-such-caller"
                ),
                act.Originate(f"t-{uuid.uuid4()}", "Nonsense/x", "agent", "", 5000, ""),
            ]
        )
        async with asyncio.timeout(10):
            await executor.drain()
    failed = [x for x in fed if isinstance(x, ev.ActionFailed)]
    # Two lanes over HTTP: either may fail first.
    assert sorted((f.action, f.caller_gone, f.gone, f.unanswered) for f in failed) == [
        ("Originate", False, False, False),
        ("Originate", True, False, False),
    ]


class _NoCdrs:
    def write(self, cdr: object) -> None:
        raise AssertionError("no CDR expected")


async def test_a_websocket_that_lost_its_app_to_a_killed_connection_is_made_again(
    asterisk: SandboxAsterisk,
) -> None:
    """A killed controller's websocket ends without a close handshake. When
    the next one connects at once, Asterisk now and then cleans the dead
    connection up just after the new one registered the app, and takes the
    registration with it: the new websocket hears nothing. The client
    notices and connects again, so that whenever it says connected, the app
    is registered and events come. The race is real and rare: connect as
    often as it takes to meet it (a few percent of tries)."""
    e = asterisk.endpoints
    app = f"test-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": aiohttp.encode_basic_auth(e.ari_username, e.ari_password)}
    events_url = e.ari_url.replace("http", "ws", 1).rstrip("/") + f"/events?app={app}"
    deaf = tries = 0
    async with aiohttp.ClientSession(headers=auth) as raw:
        while deaf == 0 and tries < 300:
            tries += 1
            killed = await raw.ws_connect(events_url)
            killed.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # no close frame
            client = AriClient(e.ari_url, e.ari_username, e.ari_password, app)
            reader = asyncio.create_task(client.run_events())
            try:
                async with asyncio.timeout(10):
                    assert isinstance(await client.events.get(), StreamConnected)
                assert await client.app_registered()
                deaf += client.deaf_connections
                if deaf:
                    # And it hears: a call entering the app reaches it.
                    channel_id = f"t-{uuid.uuid4()}"
                    await client.originate(
                        "Local/echo@pbx-test", channel_id=channel_id, app_args="leg"
                    )
                    started = await next_event(client, "StasisStart", id=channel_id)
                    assert started["application"] == app
                    await client.hangup(channel_id)
            finally:
                reader.cancel()
                await client.close()
                await killed.close()
    assert deaf >= 1, f"the race did not occur in {tries} tries"
