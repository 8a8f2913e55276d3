"""The AMI client against the real Asterisk: login, actions, an Originate and
its events, a refused login that leaks no secret, and a reconnect after
Asterisk restarts. Every await is bounded; nothing sleeps to wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbx_controller.asterisk.ami import (
    AmiActionError,
    AmiAuthError,
    AmiClient,
    AmiConnectionError,
    Message,
)
from pbx_controller.config import AmiSettings
from pbx_controller.sandbox.asterisk import SandboxAsterisk, free_port

pytestmark = pytest.mark.asterisk


def ami_settings(asterisk: SandboxAsterisk, **overrides: object) -> AmiSettings:
    e = asterisk.endpoints
    values: dict[str, object] = {
        "port": e.ami_port,
        "username": e.ami_username,
        "password": e.ami_password,
    }
    return AmiSettings(**(values | overrides))


@pytest.fixture
async def ami(asterisk: SandboxAsterisk) -> AsyncIterator[AmiClient]:
    client = AmiClient(ami_settings(asterisk))
    async with asyncio.timeout(10):
        await client.connect()
    try:
        yield client
    finally:
        async with asyncio.timeout(5):
            await client.close()


async def test_login_ping_and_core_settings(
    asterisk: SandboxAsterisk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = AmiClient(ami_settings(asterisk))
    try:
        async with asyncio.timeout(10):
            await client.connect()
            assert client.ready
            rtt = await client.ping()
            settings = await client.action({"Action": "CoreSettings"})
    finally:
        async with asyncio.timeout(5):
            await client.close()
    assert 0 < rtt < 1
    assert isinstance(settings, Message)
    assert settings.response == "Success"
    assert settings.asteriskversion.startswith("22.")
    assert client.logins == 1
    # panoramisk logs every message at DEBUG; the Login action must not be one.
    assert asterisk.endpoints.ami_password not in caplog.text


async def test_action_error_is_typed(ami: AmiClient) -> None:
    # manager.conf grants no `command` write class: least privilege, and a real
    # `Response: Error` to check.
    async with asyncio.timeout(10):
        with pytest.raises(AmiActionError) as error:
            await ami.action({"Action": "Command", "Command": "core show uptime"})
        # ...and the connection is still fine after it.
        await ami.ping()
    assert error.value.action == "Command"
    assert error.value.message == "Permission denied"
    assert str(error.value) == "AMI Command: Permission denied"


async def test_originate_and_its_events(ami: AmiClient) -> None:
    # Into pbx-lookup with no AGI server listening: AGI() fails at once, the
    # dialplan goes on to Hangup(). Two Local legs, each with its own events.
    did = "49" + "".join(secrets.choice("0123456789") for _ in range(9))
    prefix = f"Local/{did}@pbx-lookup-"
    events: list[Message] = []
    changed = asyncio.Event()

    async def record(event: Message) -> None:
        if event.channel.startswith(prefix):
            events.append(event)
            changed.set()

    async def until_seen(name: str, count: int) -> None:
        while len([e for e in events if e.event == name]) < count:
            changed.clear()
            await changed.wait()

    subscriptions = [ami.subscribe(name, record) for name in ("Newchannel", "Hangup", "Cdr")]
    async with asyncio.timeout(10):
        result = await ami.action(
            {
                "Action": "Originate",
                "Channel": f"Local/{did}@pbx-lookup",
                "Application": "Wait",
                "Data": "1",
                "Async": "true",
            },
            timeout_s=10,
        )
        await until_seen("Hangup", 2)
        await until_seen("Cdr", 2)
    for subscription in subscriptions:
        subscription.cancel()

    # An async Originate answers twice: queued, then the call's outcome. The
    # ;2 leg never answered (AGI, Verbose, Hangup), so the outcome is Failure:
    # a result, not an action error.
    assert isinstance(result, list)
    assert [m.response for m in result] == ["Success", "Failure"]
    assert result[1].event == "OriginateResponse"
    legs = {e.channel.rsplit(";", 1)[1] for e in events}
    assert legs == {"1", "2"}
    for leg in ("1", "2"):
        names = [e.event for e in events if e.channel.endswith(f";{leg}")]
        assert names[0] == "Newchannel"
        assert sorted(names[1:]) == ["Cdr", "Hangup"]
    cdr = next(e for e in events if e.event == "Cdr" and e.channel.endswith(";2"))
    assert cdr.destination == did
    assert cdr.destinationcontext == "pbx-lookup"
    assert cdr.disposition == "NO ANSWER"
    assert cdr.lastapplication == "Hangup"


async def test_no_events_until_subscribed(ami: AmiClient) -> None:
    """The session logs in with `Events: off`: an unsubscribed client is sent
    no events; a subscription turns them on before the next action."""
    raw: list[str] = []
    ami._manager.register_event("UserEvent", lambda _m, event: raw.append(event.userevent))
    await ami.action({"Action": "UserEvent", "UserEvent": "unseen"})
    seen = asyncio.Event()

    async def on_user_event(event: Message) -> None:
        if event.userevent == "seen":
            seen.set()

    subscription = ami.subscribe("UserEvent", on_user_event)
    await ami.action({"Action": "UserEvent", "UserEvent": "seen"})
    async with asyncio.timeout(5):
        await seen.wait()
    subscription.cancel()
    # Events reach a session in order: "unseen" would have come first.
    assert raw == ["seen"]


async def test_wrong_password_is_a_typed_error_and_never_logged(
    asterisk: SandboxAsterisk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_urlsafe(12)
    client = AmiClient(ami_settings(asterisk, password=wrong))
    async with asyncio.timeout(10):
        with pytest.raises(AmiAuthError) as error:
            await client.connect()
    assert "refused" in str(error.value)
    assert str(error.value).startswith("AMI login as 'pbx' refused")
    assert wrong not in str(error.value)
    assert wrong not in repr(client)
    assert caplog.records, "the refusal should be logged"
    assert wrong not in caplog.text
    for record in caplog.records:
        assert wrong not in record.getMessage()
    assert not client.ready


async def test_nothing_listening_is_a_typed_error() -> None:
    client = AmiClient(AmiSettings(port=free_port(), password="x"), reconnect_s=1)
    async with asyncio.timeout(5):
        with pytest.raises(
            AmiConnectionError, match=r"no AMI login at 127\.0\.0\.1:\d+ within 1\.5s"
        ):
            await client.connect(timeout_s=1.5)


async def test_reconnects_after_asterisk_restarts(fresh_asterisk: SandboxAsterisk) -> None:
    client = AmiClient(ami_settings(fresh_asterisk), reconnect_s=1)
    async with asyncio.timeout(10):
        await client.connect()
    try:
        async with asyncio.timeout(30):
            await asyncio.to_thread(fresh_asterisk.restart)
            # action() waits for the new login rather than writing into the
            # dead connection.
            await client.ping(timeout_s=10)
            settings = await client.action({"Action": "CoreSettings"})
    finally:
        async with asyncio.timeout(5):
            await client.close()
    assert client.logins == 2
    assert isinstance(settings, Message)
    assert settings.response == "Success"


async def test_heartbeat_notices_a_frozen_asterisk(fresh_asterisk: SandboxAsterisk) -> None:
    # SIGSTOP keeps the TCP connection up but answers nothing: only a checked
    # heartbeat can tell. Pending actions fail instead of hanging on.
    client = AmiClient(ami_settings(fresh_asterisk), reconnect_s=1, heartbeat_s=0.3)
    async with asyncio.timeout(10):
        await client.connect()
    assert fresh_asterisk.process is not None
    pid = fresh_asterisk.process.pid
    try:
        try:
            os.kill(pid, signal.SIGSTOP)
            # kill() returns before every thread has stopped: until they
            # have, Asterisk's AMI thread may still answer the Ping.
            await wait_until_stopped(pid)
            async with asyncio.timeout(10):
                with pytest.raises(AmiConnectionError, match="lost before the answer"):
                    await client.ping(timeout_s=8)
            assert not client.ready
        finally:
            os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(15):
            await client.ping(timeout_s=10)
    finally:
        async with asyncio.timeout(5):
            await client.close()
    assert client.logins == 2


async def wait_until_stopped(pid: int) -> None:
    """Until each of the process's threads is in state T (stopped)."""
    tasks = Path(f"/proc/{pid}/task")
    async with asyncio.timeout(5):
        while True:
            states = set()
            for stat in tasks.glob("*/stat"):
                with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                    # "pid (comm) S ...": comm may hold spaces; the state follows its ")".
                    states.add(stat.read_text().rpartition(")")[2].split()[0])
            if states == {"T"}:
                return
            await asyncio.sleep(0.005)
