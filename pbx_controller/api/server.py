"""The loopback HTTP API: health, Prometheus metrics, live state, agent commands.

    GET  /health                    200 {"status": "ok"|"degraded", ...}; 503 without ARI
    GET  /metrics                   Prometheus text exposition (format 0.0.4)
    GET  /calls[?tenant=T]          live calls, one tenant's only with `tenant`
    GET  /agents[?tenant=T]         agents; with `tenant`, those serving its queues
    POST /agents/{id}/login|logout|pause|unpause|end_wrapup
                                    pause takes {"reason": "..."}; answers
                                    {"result": ..., "agent": {...}}: 200 OK,
                                    404 UNKNOWN_AGENT, 409 INVALID_STATE, 400 BAD_REQUEST
    POST /calls/{id}/recording/stop|pause|resume?tenant=T
                                    a live call's recording (withdrawal, PCI
                                    pause); `tenant` is required: 200 OK,
                                    404 UNKNOWN_CALL, 409 NOT_RECORDING
    POST /config/reload             read the configuration again and apply it
                                    live (as SIGHUP does): 200 {"result": "OK",
                                    "tenants": n, ...}, 409 REFUSED with the
                                    reason (nothing changed)

`http_api(controller)` is a controller part (pbx_controller.parts): it binds
`settings.http` once ARI is connected and is cleaned up, connections and
all, when the controller stops.

Authentication: with `http.token` set, every endpoint but /health and
/metrics wants `Authorization: Bearer <token>` (401 otherwise). Without a
token the listener must stay on loopback (the default): a non-loopback bind
without one is logged as a warning at start.

Handlers read the engine synchronously, in the loop thread, as the
dispatcher does; they never await while holding a view of it, so each
answer is one consistent snapshot. Agent commands go through
`Controller.agent_command`, the same path as the agents' feature codes.

Tenant isolation: with `tenant=T`, `/calls` shows only T's calls, and
`/agents` shows only agents who are members of (or serve) one of T's queues,
with their queues and tenants narrowed to T's and the id of a call they
hold for another tenant left out. Without `tenant`, everything is shown:
that is the operator's view, for loopback clients.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pbx_controller.core.agent import MAX_REASON_LENGTH, AgentState, AgentStatus
from pbx_controller.core.call_flow import Call
from pbx_controller.core.engine import Engine
from pbx_controller.core.routing import queue_positions
from pbx_controller.service import ReloadRefused

if TYPE_CHECKING:
    from pbx_controller.service import Controller

__all__ = [
    "AGENT_COMMANDS",
    "METRICS_CONTENT_TYPE",
    "RESULT_STATUS",
    "HttpApi",
    "agents_view",
    "build_app",
    "calls_view",
    "health_view",
    "http_api",
    "render_metrics",
]

log = logging.getLogger(__name__)

AGENT_COMMANDS = ("login", "logout", "pause", "unpause", "end_wrapup")
# Controller.agent_command's result -> HTTP status.
RESULT_STATUS: Mapping[str, int] = {
    "OK": 200,
    "UNKNOWN_AGENT": 404,
    "INVALID_STATE": 409,
    "BAD_REQUEST": 400,
    "UNKNOWN_CALL": 404,
    "NOT_RECORDING": 409,
}
RECORDING_COMMANDS = ("stop", "pause", "resume")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request bodies are one small JSON object ({"reason": ...}).
MAX_BODY_BYTES = 4096
# In-flight requests get this long when the controller stops.
SHUTDOWN_TIMEOUT_S = 2.0

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class HttpApi:
    """Where the running API listens (the port is the bound one, so port 0 works)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextlib.asynccontextmanager
async def http_api(controller: Controller) -> AsyncIterator[HttpApi]:
    """The controller part: serve the API on `settings.http` until the controller stops."""
    settings = controller.settings.http
    if controller.settings.http.token is None and any(
        bind.startswith("http.") for bind in controller.settings.non_loopback_binds()
    ):
        log.warning(
            "HTTP API on %s:%d is off loopback and has no authentication: "
            "anyone who reaches it can log agents in and out",
            settings.host,
            settings.port,
        )
    runner = web.AppRunner(
        build_app(controller), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"HTTP API cannot listen on {settings.host}:{settings.port} "
                f"(http.host, http.port): {exc.strerror or exc}",
            ) from None
        port = _bound_port(runner, settings.port)
        api = HttpApi(settings.host, port)
        log.info("HTTP API listening on %s", api.url)
        yield api
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def build_app(controller: Controller) -> web.Application:
    api = _Handlers(controller)
    token = controller.settings.http.token
    middlewares = [_json_errors]
    if token is not None:
        middlewares.append(_bearer(token.get_secret_value()))
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    command = "{command:" + "|".join(AGENT_COMMANDS) + "}"
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/calls", api.calls)
    app.router.add_get("/agents", api.agents)
    app.router.add_post("/agents/{agent_id}/" + command, api.agent_command)
    recording = "{command:" + "|".join(RECORDING_COMMANDS) + "}"
    app.router.add_post("/calls/{call_id}/recording/" + recording, api.recording_command)
    app.router.add_post("/config/reload", api.config_reload)
    return app


class _ApiError(Exception):
    """A request the API refuses, with the status and the message to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals, and the router's own errors (404, 405, 413), as JSON."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)


OPEN_PATHS = frozenset({"/health", "/metrics"})


def _bearer(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            # Constant time: the token is a secret.
            if not hmac.compare_digest(given, expected):
                raise _ApiError(401, "missing or wrong bearer token (http.token)")
        return await handler(request)

    return check


class _Handlers:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def health(self, request: web.Request) -> web.Response:
        status, body = health_view(self.controller)
        return web.json_response(body, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(self.controller).encode(),
            headers={"Content-Type": METRICS_CONTENT_TYPE},
        )

    async def calls(self, request: web.Request) -> web.Response:
        tenant = _tenant(request, self.controller.engine)
        calls = calls_view(self.controller.engine, self.controller.clock(), tenant)
        return web.json_response({"calls": calls})

    async def agents(self, request: web.Request) -> web.Response:
        tenant = _tenant(request, self.controller.engine)
        return web.json_response({"agents": agents_view(self.controller.engine, tenant)})

    async def config_reload(self, request: web.Request) -> web.Response:
        try:
            directory = await self.controller.reload_configuration()
        except ReloadRefused as exc:
            log.error("configuration not reloaded (HTTP API): %s", exc)
            return web.json_response({"result": "REFUSED", "error": str(exc)}, status=409)
        return web.json_response(
            {
                "result": "OK",
                "tenants": len(directory.tenants),
                "dids": len(directory.dids),
                "queues": len(directory.queues),
                "agents": len(directory.agents),
            }
        )

    async def agent_command(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        command = request.match_info["command"]
        reason = ""
        if command == "pause":
            reason = await _pause_reason(request)
        result = self.controller.agent_command(agent_id, command, reason)
        log.info(
            "agent %s %s%s via HTTP API: %s",
            agent_id,
            command,
            f" ({reason})" if reason else "",
            result,
        )
        body: Json = {"result": result}
        board = self.controller.engine.board
        if agent_id in board.agent_ids():
            body["agent"] = agent_json(board.status(agent_id), self.controller.engine, None)
        if result != "OK":
            body["error"] = _refusal(result, agent_id, command, body.get("agent"))
        return web.json_response(body, status=RESULT_STATUS.get(result, 500))

    async def recording_command(self, request: web.Request) -> web.Response:
        # Always one tenant's call: ops name the tenant, and another tenant's
        # call is as unknown as a call that does not exist.
        tenant = _tenant(request, self.controller.engine)
        if tenant is None:
            raise _ApiError(400, "tenant is required: ?tenant=T")
        call_id = request.match_info["call_id"]
        command = request.match_info["command"] + "_recording"
        result = self.controller.call_command(tenant, call_id, command)
        log.info("call %s %s via HTTP API: %s", call_id, command, result)
        body: Json = {"result": result}
        if result == "UNKNOWN_CALL":
            body["error"] = f"no live call {call_id!r} for tenant {tenant!r}"
        elif result == "NOT_RECORDING":
            body["error"] = f"call {call_id} is not being recorded"
        elif result != "OK":
            body["error"] = f"call {call_id}: {command} refused as malformed"
        return web.json_response(body, status=RESULT_STATUS.get(result, 500))


def _tenant(request: web.Request, engine: Engine) -> str | None:
    if "tenant" not in request.query:
        return None
    tenant = request.query["tenant"]
    if not tenant:
        raise _ApiError(400, "tenant must not be empty")
    if tenant not in engine.directory.tenants:
        raise _ApiError(404, f"unknown tenant {tenant!r}")
    return tenant


async def _pause_reason(request: web.Request) -> str:
    try:
        body = await request.json()
    except ValueError:
        raise _ApiError(400, 'pause takes a JSON body {"reason": "..."}') from None
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        raise _ApiError(400, 'pause takes a JSON body {"reason": "..."} with a non-empty reason')
    reason = reason.strip()
    if not reason.isprintable() or len(reason) > MAX_REASON_LENGTH:
        raise _ApiError(400, f"a pause reason has 1 to {MAX_REASON_LENGTH} printable characters")
    return reason


def _refusal(result: str, agent_id: str, command: str, agent: Json | None) -> str:
    if result == "UNKNOWN_AGENT" or agent is None:
        return f"no agent {agent_id!r}"
    if result == "BAD_REQUEST":
        return f"agent {agent_id}: {command} refused as malformed"
    state = agent["state"] + (f" ({agent['reason']})" if agent.get("reason") else "")
    return f"agent {agent_id} is {state}: cannot {command.replace('_', ' ')}"


# -- views: synchronous reads of the engine, one consistent snapshot each ----------------


def health_view(controller: Controller) -> tuple[int, Json]:
    """ARI down: 503 (no call can be served). AMI down: degraded, still 200."""
    ari = controller.ari.connected.is_set()
    ami_enabled = controller.settings.ami.enabled
    ami = controller.ami is not None and controller.ami.ready
    body: Json = {
        "status": "ok" if ari and (ami or not ami_enabled) else "degraded",
        "ari_connected": ari,
        # null when AMI is disabled in the settings.
        "ami_logged_in": ami if ami_enabled else None,
        "live_calls": len(controller.engine.calls),
        "waiting": len(controller.engine.waiting),
        "reconnects": controller.reconnects,
    }
    return (200 if ari else 503), body


def calls_view(engine: Engine, now: datetime, tenant: str | None = None) -> list[Json]:
    """Live calls, earliest first; only `tenant`'s when given."""
    positions = queue_positions(engine.waiting.values())
    calls = [c for c in engine.calls.values() if tenant is None or c.tenant_id == tenant]
    calls.sort(key=lambda c: (c.arrived_at, c.call_id))
    return [_call_json(c, now, positions.get(c.call_id)) for c in calls]


def _call_json(call: Call, now: datetime, position: int | None) -> Json:
    waited_ms = None
    if call.enqueued_at is not None:
        until = call.answered_at or now
        waited_ms = max(0, int((until - call.enqueued_at).total_seconds() * 1000))
    return {
        "call_id": call.call_id,
        "tenant": call.tenant_id,
        "did": call.did,
        "caller": call.caller,
        "state": call.state.value,
        "queue": call.queue_id,
        "position": position,
        "agent": call.agent_id,
        "ringing": sorted(call.ringing),
        "arrived_at": _iso(call.arrived_at),
        "enqueued_at": _iso(call.enqueued_at),
        "answered_at": _iso(call.answered_at),
        "waited_ms": waited_ms,
        "consent": call.consent.state.value if call.consent else None,
        "recorded": call.recorded,
    }


def agents_view(engine: Engine, tenant: str | None = None) -> list[Json]:
    """Every agent; with `tenant`, those who are members of or serve one of
    its queues, narrowed to what concerns that tenant."""
    out = []
    for status in sorted(engine.board.statuses(), key=lambda s: s.agent_id):
        agent = agent_json(status, engine, tenant)
        if tenant is None or agent["member_of"] or agent["queues"]:
            out.append(agent)
    return out


def agent_json(status: AgentStatus, engine: Engine, tenant: str | None) -> Json:
    queues = engine.directory.queues
    profile = engine.directory.agents.get(status.agent_id)
    member_of = [m.queue_id for m in profile.memberships] if profile else []
    serving = list(status.queues)
    tenants = list(status.tenants)
    call_id, queue_id = status.call_id, status.queue_id
    if tenant is not None:
        mine = {q.id for q in queues.values() if q.tenant_id == tenant}
        member_of = [q for q in member_of if q in mine]
        serving = [q for q in serving if q in mine]
        tenants = [t for t in tenants if t == tenant]
        if queue_id not in mine:
            call_id = queue_id = None  # busy for another tenant: not this tenant's business
    return {
        "agent_id": status.agent_id,
        "name": profile.name if profile else None,
        "state": status.state.value,
        "reason": status.reason,
        "pending": status.pending,
        "queues": serving,
        "tenants": tenants,
        "member_of": sorted(member_of),
        "since": _iso(status.since),
        "idle_since": _iso(status.idle_since),
        "calls_taken": status.calls_taken,
        "missed_in_row": status.missed_in_row,
        "call_id": call_id,
        "queue": queue_id,
        "wrapup_until": _iso(status.wrapup_until),
    }


def render_metrics(controller: Controller) -> str:
    """Prometheus text exposition, by hand (no client library needed for a few series)."""
    engine = controller.engine
    waiting: dict[str, int] = dict.fromkeys(engine.directory.queues, 0)
    for call in engine.waiting.values():
        waiting[call.queue_id] = waiting.get(call.queue_id, 0) + 1
    agents: dict[str, int] = {state.value: 0 for state in AgentState}
    for status in engine.board.statuses():
        agents[status.state.value] += 1
    tenant_of = {q.id: q.tenant_id for q in engine.directory.queues.values()}
    lines: list[str] = []
    _family(
        lines,
        "pbx_calls_live",
        "gauge",
        "Calls the controller handles now.",
        [({}, len(engine.calls))],
    )
    _family(
        lines,
        "pbx_calls_waiting",
        "gauge",
        "Callers waiting in a queue, not ringing an agent.",
        (({"queue": q, "tenant": tenant_of.get(q, "")}, n) for q, n in sorted(waiting.items())),
    )
    _family(
        lines,
        "pbx_agents",
        "gauge",
        "Agents by state.",
        (({"state": s}, n) for s, n in agents.items()),
    )
    _family(
        lines,
        "pbx_ari_reconnects_total",
        "counter",
        "ARI event stream reconnects since start.",
        [({}, controller.reconnects)],
    )
    _family(
        lines,
        "pbx_ari_requests_total",
        "counter",
        "ARI requests sent since start.",
        [({}, controller.ari.requests_sent)],
    )
    _family(
        lines,
        "pbx_ari_events_total",
        "counter",
        "ARI events received since start (after the app's event filter).",
        [({}, controller.ari.events_received)],
    )
    _family(
        lines,
        "pbx_ari_connected",
        "gauge",
        "1 while the ARI event stream is connected.",
        [({}, int(controller.ari.connected.is_set()))],
    )
    return "\n".join(lines) + "\n"


def _family(
    lines: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[Mapping[str, str], int]],
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        rendered = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant is not None else None
