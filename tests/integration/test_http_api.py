"""The loopback HTTP API of a real controller on the sandbox Asterisk:
health, metrics, agent commands changing the board, tenant isolation of
the live state with a real waiting call, and `pbxctl agent` as a separate
process talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from pbx_controller.api.server import METRICS_CONTENT_TYPE, agents_view, calls_view, http_api
from pbx_controller.config import AmiSettings, HttpSettings, Settings
from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentState
from pbx_controller.core.call_flow import CallState
from pbx_controller.core.engine import Engine
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    Directory,
    Queue,
    QueueMembership,
    Tenant,
)
from pbx_controller.sandbox.asterisk import SandboxAsterisk, controller_settings, free_port
from pbx_controller.service import Controller, LoggingCdrSink
from tests.integration.helpers import Watcher, watch

# Tests that use the `asterisk` fixture are marked `asterisk` by the
# fixture's conftest; the pure view test at the end needs no PBX.

ACME_DID = "48226101"
BETA_DID = "48226201"
ACME_CALLER = "485550101"
QUIET = Announcements(position=False, estimated_wait=False)


def directory() -> Directory:
    queues = [
        Queue("acme-sales", "acme", announcements=QUIET),
        Queue("beta-support", "beta", announcements=QUIET),
    ]
    agents = [
        AgentProfile("anna", "Anna", "PJSIP/agent-anna", {}, (QueueMembership("acme-sales"),)),
        AgentProfile("bob", "Bob", "PJSIP/agent-bob", {}, (QueueMembership("beta-support"),)),
        AgentProfile(
            "cyd",
            "Cyd",
            "PJSIP/agent-cyd",
            {},
            (QueueMembership("acme-sales"), QueueMembership("beta-support")),
        ),
    ]
    return Directory.build(
        [
            Tenant("acme", "Acme", greeting=("sound:beep",)),
            Tenant("beta", "Beta", greeting=("sound:beep",)),
        ],
        [(ACME_DID, "acme"), (BETA_DID, "beta")],
        queues=queues,
        agents=agents,
        did_queues=[(ACME_DID, "acme-sales"), (BETA_DID, "beta-support")],
    )


@dataclasses.dataclass
class Api:
    controller: Controller
    watcher: Watcher
    session: aiohttp.ClientSession
    base: str
    port: int

    async def get(self, path: str) -> tuple[int, Any]:
        async with asyncio.timeout(5), self.session.get(self.base + path) as response:
            return response.status, await response.json()

    async def text(self, path: str) -> tuple[int, str, str]:
        async with asyncio.timeout(5), self.session.get(self.base + path) as response:
            return response.status, response.headers["Content-Type"], await response.text()

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            asyncio.timeout(5),
            self.session.post(self.base + path, json=body) as response,
        ):
            return response.status, await response.json()

    def state(self, agent_id: str) -> AgentState:
        return self.controller.engine.board.status(agent_id).state


@pytest.fixture
async def api(asterisk: SandboxAsterisk) -> AsyncIterator[Api]:
    port = free_port()
    settings = controller_settings(asterisk, http={"host": "127.0.0.1", "port": port})
    async with contextlib.AsyncExitStack() as stack:
        controller = await stack.enter_async_context(
            Controller(settings, directory(), LoggingCdrSink())
        )
        stack.push_async_callback(hang_up_everything, controller)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Api(controller, watch(controller), session, f"http://127.0.0.1:{port}", port)


async def hang_up_everything(controller: Controller) -> None:
    for channel_id in controller.engine.channel_ids():
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await controller.ari.hangup(channel_id)


METRIC_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>-?[0-9.eE+]+|NaN)$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A strict reader of the Prometheus text format: every sample belongs to
    a family declared with HELP and TYPE before it, nothing else appears."""
    assert text.endswith("\n")
    helped: set[str] = set()
    typed: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter"), line
            assert name not in typed, f"{name} typed twice"
            typed[name] = kind
        else:
            match = METRIC_LINE.match(line)
            assert match, f"not a sample: {line!r}"
            name = match["name"]
            assert name in typed, f"{name} has no TYPE"
            assert name in helped, f"{name} has no HELP"
            if typed[name] == "counter":
                assert name.endswith("_total"), name
            labels = frozenset(LABEL.findall(match["labels"] or ""))
            key = (name, labels)
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(match["value"])
    return samples


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_health_and_metrics(api: Api) -> None:
    status, health = await api.get("/health")
    assert status == 200
    assert health == {
        "status": "ok",
        "ari_connected": True,
        "ami_logged_in": True,
        "live_calls": 0,
        "waiting": 0,
        "reconnects": 0,
    }
    status, content_type, text = await api.text("/metrics")
    assert status == 200
    assert content_type == METRICS_CONTENT_TYPE
    samples = parse_metrics(text)
    assert sample(samples, "pbx_calls_live") == 0
    assert sample(samples, "pbx_calls_waiting", queue="acme-sales", tenant="acme") == 0
    assert sample(samples, "pbx_calls_waiting", queue="beta-support", tenant="beta") == 0
    assert sample(samples, "pbx_agents", state="logged_out") == 3
    assert sum(v for (name, _), v in samples.items() if name == "pbx_agents") == 3
    assert {dict(labels)["state"] for name, labels in samples if name == "pbx_agents"} == {
        s.value for s in AgentState
    }
    assert sample(samples, "pbx_ari_connected") == 1
    assert sample(samples, "pbx_ari_reconnects_total") == 0
    # Start-up asked Asterisk things (the event filter, the channels in our app).
    ari = api.controller.ari
    assert sample(samples, "pbx_ari_requests_total") == ari.requests_sent >= 2
    assert sample(samples, "pbx_ari_events_total") == ari.events_received
    # Errors are JSON too.
    status, body = await api.get("/nowhere")
    assert status == 404
    assert "error" in body


def unstarted_controller(port: int) -> Controller:
    """A controller that was never started: its ARI stream never connected."""
    settings = Settings(http=HttpSettings(port=port), ami=AmiSettings(enabled=False))
    return Controller(settings, directory(), LoggingCdrSink())


async def close_unstarted(controller: Controller) -> None:
    controller.executor.close()
    await controller.ari.close()


async def test_health_is_503_without_ari() -> None:
    # The API served for real says the controller cannot take calls. Port 0:
    # the part reports the port it was given.
    controller = unstarted_controller(0)
    try:
        async with (
            http_api(controller) as served,
            aiohttp.ClientSession() as session,
            asyncio.timeout(5),
        ):
            assert served.port > 0
            assert served.url == f"http://127.0.0.1:{served.port}"
            async with session.get(served.url + "/health") as response:
                assert response.status == 503
                body = await response.json()
            async with session.get(served.url + "/metrics") as response:
                samples = parse_metrics(await response.text())
    finally:
        await close_unstarted(controller)
    assert body["status"] == "degraded"
    assert body["ari_connected"] is False
    assert body["ami_logged_in"] is None  # AMI disabled
    assert sample(samples, "pbx_ari_connected") == 0


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        controller = unstarted_controller(taken.getsockname()[1])
        try:
            with pytest.raises(OSError, match=r"HTTP API cannot listen on 127\.0\.0\.1:\d+"):
                async with asyncio.timeout(5), http_api(controller):
                    pass
        finally:
            await close_unstarted(controller)


async def test_agent_commands_change_the_board(api: Api) -> None:
    status, body = await api.post("/agents/anna/login")
    assert (status, body["result"]) == (200, "OK")
    assert body["agent"]["state"] == "ready"
    assert body["agent"]["queues"] == ["acme-sales"]
    assert api.state("anna") is AgentState.READY

    status, body = await api.post("/agents/anna/pause", {"reason": "lunch"})
    assert (status, body["result"]) == (200, "OK")
    board = api.controller.engine.board.status("anna")
    assert (board.state, board.reason) == (AgentState.PAUSED, "lunch")
    _, agents = await api.get("/agents")
    anna = next(x for x in agents["agents"] if x["agent_id"] == "anna")
    assert (anna["state"], anna["reason"]) == ("paused", "lunch")
    samples = parse_metrics((await api.text("/metrics"))[2])
    assert sample(samples, "pbx_agents", state="paused") == 1

    # A pause needs a reason; a reason longer than the log column is refused.
    for bad in (None, {}, {"reason": ""}, {"reason": 5}, ["lunch"]):
        status, body = await api.post("/agents/anna/pause", bad)
        assert status == 400, bad
        assert "reason" in body["error"]
    for bad in ({"reason": "x" * 65}, {"reason": "lunch\nINFO forged log line"}):
        status, body = await api.post("/agents/anna/pause", bad)
        assert status == 400, bad
        assert "64 printable characters" in body["error"]
    assert api.controller.engine.board.status("anna").reason == "lunch"

    status, body = await api.post("/agents/anna/unpause")
    assert (status, body["result"]) == (200, "OK")
    assert api.state("anna") is AgentState.READY

    status, body = await api.post("/agents/anna/logout")
    assert (status, body["result"]) == (200, "OK")
    assert api.state("anna") is AgentState.LOGGED_OUT

    # Not possible in this state: 409, saying why; the board is unchanged.
    for command in ("logout", "pause", "unpause", "end_wrapup"):
        status, body = await api.post(f"/agents/anna/{command}", {"reason": "lunch"})
        assert (status, body["result"]) == (409, "INVALID_STATE"), command
        assert "logged_out" in body["error"]
    assert api.state("anna") is AgentState.LOGGED_OUT

    status, body = await api.post("/agents/nobody/login")
    assert (status, body["result"]) == (404, "UNKNOWN_AGENT")
    assert "nobody" in body["error"]
    status, body = await api.post("/agents/anna/dance")
    assert status == 404
    async with asyncio.timeout(5), api.session.get(api.base + "/agents/anna/login") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]


async def test_tenant_filter_isolates_calls_and_agents(api: Api, asterisk: SandboxAsterisk) -> None:
    assert api.controller.ami is not None
    # A caller for acme: nobody is logged in to acme-sales, so it waits.
    await asyncio.wait_for(
        api.controller.ami.action(
            {
                "Action": "Originate",
                "Channel": f"Local/{ACME_DID}@pbx-inbound",
                "Application": "Wait",
                "Data": "20",
                "CallerID": f'"Caller" <{ACME_CALLER}>',
                "Async": "true",
            },
            # Not as a list: the controller's AMI session takes no events,
            # so OriginateResponse would never come to end one.
            as_list=False,
        ),
        timeout=5,
    )
    engine = api.controller.engine
    call = await api.watcher.wait_for(
        lambda: next((c for c in engine.calls.values() if c.state is CallState.QUEUED), None)
    )
    assert call is not None
    assert call.tenant_id == "acme"

    status, acme = await api.get("/calls?tenant=acme")
    assert status == 200
    [shown] = acme["calls"]
    assert shown["call_id"] == call.call_id
    assert (shown["tenant"], shown["did"], shown["state"]) == ("acme", ACME_DID, "queued")
    assert (shown["queue"], shown["position"]) == ("acme-sales", 1)
    assert shown["caller"] == ACME_CALLER
    assert shown["waited_ms"] >= 0

    async with asyncio.timeout(5), api.session.get(api.base + "/calls?tenant=beta") as response:
        assert response.status == 200
        raw = await response.text()
    assert ACME_CALLER not in raw
    assert call.call_id not in raw
    status, beta = await api.get("/calls?tenant=beta")
    assert beta == {"calls": []}
    _, everything = await api.get("/calls")
    assert [c["call_id"] for c in everything["calls"]] == [call.call_id]

    _, health = await api.get("/health")
    assert (health["live_calls"], health["waiting"]) == (1, 1)
    samples = parse_metrics((await api.text("/metrics"))[2])
    assert sample(samples, "pbx_calls_live") == 1
    assert sample(samples, "pbx_calls_waiting", queue="acme-sales", tenant="acme") == 1
    assert sample(samples, "pbx_calls_waiting", queue="beta-support", tenant="beta") == 0

    # Agents: only members of the tenant's queues, narrowed to its queues
    # (bob serves beta only, so logging him in leaves acme's caller waiting).
    assert api.controller.agent_command("bob", "login") == "OK"
    _, agents = await api.get("/agents?tenant=beta")
    by_id = {x["agent_id"]: x for x in agents["agents"]}
    assert set(by_id) == {"bob", "cyd"}
    assert (by_id["bob"]["state"], by_id["bob"]["queues"]) == ("ready", ["beta-support"])
    assert by_id["cyd"]["member_of"] == ["beta-support"]
    _, agents = await api.get("/agents?tenant=acme")
    by_id = {x["agent_id"]: x for x in agents["agents"]}
    assert set(by_id) == {"anna", "cyd"}
    assert by_id["cyd"]["member_of"] == ["acme-sales"]
    assert call.state is CallState.QUEUED

    status, body = await api.get("/calls?tenant=nope")
    assert status == 404
    assert "nope" in body["error"]
    status, _ = await api.get("/agents?tenant=")
    assert status == 400


def test_agents_view_hides_another_tenants_call() -> None:
    """Pure: cyd serves both tenants and talks to an acme caller; beta's view
    shows cyd busy, but not acme's call or queue."""
    engine = Engine(directory())
    now = datetime(2026, 3, 2, 10, tzinfo=UTC)
    engine.handle(e.AgentCommand("cyd", "login"), now)
    arrived = engine.handle(e.CallArrived("call-1", "chan-1", ACME_DID, ACME_CALLER), now)
    [play] = [x for x in arrived if isinstance(x, a.Play)]
    later = now + timedelta(seconds=1)
    queued = engine.handle(e.PlaybackFinished(play.playback_id, "chan-1"), later)
    [leg] = [x for x in queued if isinstance(x, a.Originate)]
    engine.handle(e.AgentLegAnswered(leg.channel_id, "call-1", "cyd"), later)
    assert engine.board.status("cyd").state is AgentState.ON_CALL

    [cyd_beta] = [x for x in agents_view(engine, "beta") if x["agent_id"] == "cyd"]
    assert cyd_beta["state"] == "on_call"
    assert (cyd_beta["call_id"], cyd_beta["queue"]) == (None, None)
    [cyd_acme] = [x for x in agents_view(engine, "acme") if x["agent_id"] == "cyd"]
    assert (cyd_acme["call_id"], cyd_acme["queue"]) == ("call-1", "acme-sales")
    assert calls_view(engine, later, "beta") == []
    [acme_call] = calls_view(engine, later, "acme")
    assert (acme_call["agent"], acme_call["state"]) == ("cyd", "connected")


async def pbxctl(port: int, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PBX_HTTP__PORT": str(port)}
    env.pop("PBX_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pbx_controller.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_pbxctl_agent_talks_to_the_running_controller(api: Api) -> None:
    code, out, err = await pbxctl(api.port, "agent", "login", "anna")
    assert (code, err) == (0, ""), err
    assert out.strip() == "agent anna: logged in - now ready"
    assert api.state("anna") is AgentState.READY

    # Refused by the controller: exit 1, and the message says why.
    code, _, err = await pbxctl(api.port, "agent", "login", "anna")
    assert code == 1, err
    assert "agent anna is ready: cannot login" in err
    code, _, err = await pbxctl(api.port, "agent", "unpause", "nobody")
    assert code == 1, err
    assert "no agent 'nobody'" in err

    code, out, err = await pbxctl(api.port, "agent", "pause", "anna", "--reason", "lunch")
    assert code == 0, err
    status = api.controller.engine.board.status("anna")
    assert (status.state, status.reason) == (AgentState.PAUSED, "lunch")

    code, out, err = await pbxctl(api.port, "agent", "list", "--tenant", "acme")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["AGENT", "STATE", "REASON", "SINCE", "QUEUES", "CALL"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"anna", "cyd"}
    assert rows["anna"][1:3] == ["paused", "lunch"]

    # Operator errors: exit 2.
    (
        (bad_code, _, bad_err),
        (down_code, _, down_err),
        (tenant_code, _, tenant_err),
    ) = await asyncio.gather(
        pbxctl(api.port, "agent", "pause", "anna"),  # no --reason
        pbxctl(free_port(), "agent", "logout", "anna"),  # nothing listens there
        pbxctl(api.port, "agent", "list", "--tenant", "nope"),
    )
    assert bad_code == 2, bad_err
    assert "--reason" in bad_err
    assert down_code == 2, down_err
    assert "controller not running at http://127.0.0.1:" in down_err
    assert tenant_code == 2, tenant_err
    assert "unknown tenant 'nope'" in tenant_err

    code, _, err = await pbxctl(api.port, "agent", "logout", "anna")
    assert code == 0, err
    assert api.state("anna") is AgentState.LOGGED_OUT


async def test_a_token_guards_everything_but_health_and_metrics(
    asterisk: SandboxAsterisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    token = "s3cret-" + os.urandom(8).hex()
    settings = controller_settings(
        asterisk, http={"host": "127.0.0.1", "port": port, "token": token}
    )
    async with (
        Controller(settings, directory(), LoggingCdrSink()) as controller,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{port}"
        for path in ("/health", "/metrics"):
            async with session.get(base + path) as response:
                assert response.status == 200, path
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
            async with session.get(base + "/agents", headers=wrong) as response:
                assert response.status == 401
                assert token not in await response.text()
            async with session.post(base + "/agents/anna/login", headers=wrong) as response:
                assert response.status == 401
        assert controller.engine.board.status("anna").state is AgentState.LOGGED_OUT
        good = {"Authorization": f"Bearer {token}"}
        async with session.get(base + "/agents", headers=good) as response:
            assert response.status == 200
        # pbxctl reads the token from the same settings (here: the environment).
        with monkeypatch.context() as env:
            env.setenv("PBX_HTTP__TOKEN", token)
            code, out, _ = await pbxctl(port, "agent", "login", "anna")
        assert (code, out.startswith("agent anna: logged in")) == (0, True)
        code, _, err = await pbxctl(port, "agent", "logout", "anna")  # no token
        assert code == 2
        assert "bearer token" in err
        await hang_up_everything(controller)
