"""FastAGI against the real Asterisk: the dialplan's AGI() reaches our server,
and what the handler set is what the dialplan sees next.

Calls are Local channels originated over AMI into the project's own
contexts (`pbx-lookup`, `pbx-agents`); the evidence is Asterisk's own AMI
events for that channel (VarSet, Newexten), awaited, never slept for.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from pbx_controller.asterisk.agi import (
    RESULT_NO_ENDPOINT,
    AgiRouter,
    AgiServer,
    build_router,
    serve_agi,
)
from pbx_controller.asterisk.ami import AmiClient, Message
from pbx_controller.config import AgiSettings, AmiSettings
from pbx_controller.sandbox.asterisk import SandboxAsterisk

pytestmark = pytest.mark.asterisk


class Directory:
    def __init__(self) -> None:
        self.tenants: dict[str, str] = {}
        self.asked: list[str] = []

    async def tenant_for_did(self, did: str) -> str | None:
        self.asked.append(did)
        return self.tenants.get(did)


@dataclass
class Agents:
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def login(self, endpoint: str) -> str:
        self.calls.append(("login", endpoint))
        return "OK"

    async def logout(self, endpoint: str) -> str:
        self.calls.append(("logout", endpoint))
        return "OK"

    async def pause(self, endpoint: str, reason: str) -> str:
        self.calls.append(("pause", endpoint, reason))
        return "OK"

    async def unpause(self, endpoint: str) -> str:
        self.calls.append(("unpause", endpoint))
        return "OK"


@pytest.fixture
async def ami(asterisk: SandboxAsterisk) -> AsyncIterator[AmiClient]:
    e = asterisk.endpoints
    settings = AmiSettings(port=e.ami_port, username=e.ami_username, password=e.ami_password)
    client = AmiClient(settings)
    async with asyncio.timeout(10):
        await client.connect()
    try:
        yield client
    finally:
        async with asyncio.timeout(5):
            await client.close()


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def agents() -> Agents:
    return Agents()


async def start_agi(asterisk: SandboxAsterisk, router: AgiRouter) -> AgiServer:
    async with asyncio.timeout(5):
        return await serve_agi(AgiSettings(port=asterisk.endpoints.agi_port), router)


@pytest.fixture
async def agi(
    asterisk: SandboxAsterisk, directory: Directory, agents: Agents
) -> AsyncIterator[AgiServer]:
    server = await start_agi(asterisk, build_router(directory, agents))
    try:
        yield server
    finally:
        async with asyncio.timeout(5):
            await server.close()


class ChannelEvents:
    """Every AMI event of the Local channels placed to one `exten@context`."""

    def __init__(self, ami: AmiClient, exten: str, context: str) -> None:
        self.prefix = f"Local/{exten}@{context}-"
        self.events: list[Message] = []
        self._changed = asyncio.Event()
        self.subscription = ami.subscribe("*", self._on_event)

    async def _on_event(self, event: Message) -> None:
        if event.channel.startswith(self.prefix):
            self.events.append(event)
            self._changed.set()

    async def wait_for(self, predicate: Callable[[Message], bool]) -> Message:
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            self._changed.clear()
            await self._changed.wait()

    def named(self, name: str, **headers: str) -> list[Message]:
        return [
            e
            for e in self.events
            if e.event == name and all(e.get(k) == v for k, v in headers.items())
        ]


def var_set(name: str) -> Callable[[Message], bool]:
    return lambda e: e.event == "VarSet" and e.variable == name


def hangup_of_leg(leg: str) -> Callable[[Message], bool]:
    return lambda e: e.event == "Hangup" and e.channel.endswith(leg)


async def originate(ami: AmiClient, exten: str, context: str) -> None:
    """A Local channel into `exten@context`; its ;2 leg runs the dialplan."""
    await ami.action(
        {
            "Action": "Originate",
            "Channel": f"Local/{exten}@{context}",
            "Application": "Wait",
            "Data": "1",
            "Async": "true",
        },
        timeout_s=10,
    )


def new_did() -> str:
    return "48" + "".join(secrets.choice("0123456789") for _ in range(9))


async def test_did_lookup_sets_pbx_tenant_seen_by_the_dialplan(
    asterisk: SandboxAsterisk, ami: AmiClient, agi: AgiServer, directory: Directory
) -> None:
    did = new_did()
    directory.tenants[did] = "acme"
    events = ChannelEvents(ami, did, "pbx-lookup")
    async with asyncio.timeout(10):
        await originate(ami, did, "pbx-lookup")
        tenant = await events.wait_for(var_set("PBX_TENANT"))
        # The dialplan went on after AGI() and read the variable we set.
        verbose = await events.wait_for(
            lambda e: e.event == "Newexten" and e.application == "Verbose"
        )
        await events.wait_for(hangup_of_leg(";2"))
    assert tenant.value == "acme"
    assert tenant.channel.endswith(";2")
    assert verbose.appdata == f"1,pbx-controller lookup {did}: acme"
    assert events.named("VarSet", Variable="AGISTATUS")[0].value == "SUCCESS"
    assert directory.asked == [did]
    assert agi.handled == 1


async def test_unknown_did_sets_empty_tenant(
    ami: AmiClient, agi: AgiServer, directory: Directory
) -> None:
    did = new_did()
    events = ChannelEvents(ami, did, "pbx-lookup")
    async with asyncio.timeout(10):
        await originate(ami, did, "pbx-lookup")
        tenant = await events.wait_for(var_set("PBX_TENANT"))
        verbose = await events.wait_for(
            lambda e: e.event == "Newexten" and e.application == "Verbose"
        )
    assert tenant.value == ""
    # (AMI trims the trailing space of the empty value.)
    assert verbose.appdata == f"1,pbx-controller lookup {did}:"
    assert directory.asked == [did]


@pytest.mark.parametrize("code", ["*21", "*22", "*23lunch", "*24"])
async def test_agent_feature_code_from_a_local_channel_is_an_error_result(
    ami: AmiClient, agi: AgiServer, agents: Agents, code: str
) -> None:
    # A Local channel is named `Local/*21@pbx-agents-0000000a;2`: there is no
    # PJSIP endpoint to name the agent by, so the answer is an error result.
    events = ChannelEvents(ami, code, "pbx-agents")
    async with asyncio.timeout(10):
        await originate(ami, code, "pbx-agents")
        result = await events.wait_for(var_set("PBX_RESULT"))
        status = await events.wait_for(var_set("AGISTATUS"))
    assert result.value == RESULT_NO_ENDPOINT
    assert result.channel.startswith(f"Local/{code}@pbx-agents-")
    assert status.value == "SUCCESS"  # handled: the dialplan goes on to its Hangup()
    assert agents.calls == []


async def test_unknown_script_answers_verbose_and_hangup_to_asterisk(
    asterisk: SandboxAsterisk, ami: AmiClient
) -> None:
    # A server without `did/lookup`: the real Asterisk gets VERBOSE + HANGUP.
    server = await start_agi(asterisk, AgiRouter())
    try:
        did = new_did()
        events = ChannelEvents(ami, did, "pbx-lookup")
        async with asyncio.timeout(10):
            await originate(ami, did, "pbx-lookup")
            status = await events.wait_for(var_set("AGISTATUS"))
            await events.wait_for(hangup_of_leg(";2"))
    finally:
        async with asyncio.timeout(5):
            await server.close()
    # Our HANGUP ended the call inside AGI(): the dialplan's Verbose never ran.
    assert status.value == "HANGUP"
    assert not [e for e in events.named("Newexten") if e.application == "Verbose"]
    assert server.refused == 1
    assert server.handled == 0
