"""The controller's parts beside ARI: the FastAGI server and the AMI client.

Each part is an async context manager started after ARI is connected and
stopped in reverse order (`Controller.parts`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pbx_controller.api.server import http_api
from pbx_controller.asterisk.agi import AgiServer, build_router, serve_agi
from pbx_controller.asterisk.ami import AmiClient

if TYPE_CHECKING:
    from pbx_controller.service import Controller

log = logging.getLogger(__name__)


class EngineDirectory:
    """The AGI `did/lookup` port, answered from the engine's live directory."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def tenant_for_did(self, did: str) -> str | None:
        tenant = self.controller.engine.directory.tenant_for_did(did)
        return tenant.id if tenant else None


class EngineAgents:
    """The AGI `agent/*` port: the calling phone's endpoint names the agent."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _command(self, endpoint: str, command: str, reason: str = "") -> str:
        agent = self.controller.engine.directory.agent_for_endpoint(endpoint)
        if agent is None:
            log.warning("agent %s from %s: no agent has this phone", command, endpoint)
            return "UNKNOWN_AGENT"
        result = self.controller.agent_command(agent.id, command, reason)
        log.info("agent %s %s%s: %s", agent.id, command, f" ({reason})" if reason else "", result)
        return result

    async def login(self, endpoint: str) -> str:
        return self._command(endpoint, "login")

    async def logout(self, endpoint: str) -> str:
        return self._command(endpoint, "logout")

    async def pause(self, endpoint: str, reason: str) -> str:
        return self._command(endpoint, "pause", reason)

    async def unpause(self, endpoint: str) -> str:
        return self._command(endpoint, "unpause")


@contextlib.asynccontextmanager
async def agi_server(controller: Controller) -> AsyncIterator[AgiServer]:
    router = build_router(EngineDirectory(controller), EngineAgents(controller))
    server = await serve_agi(controller.settings.agi, router)
    log.info("FastAGI listening on %s:%d", controller.settings.agi.host, server.port)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def ami_client(controller: Controller) -> AsyncIterator[AmiClient | None]:
    if not controller.settings.ami.enabled:
        yield None
        return
    client = AmiClient(controller.settings.ami)
    await client.connect(timeout_s=10)
    controller.ami = client
    try:
        yield client
    finally:
        controller.ami = None
        await client.close()


DEFAULT_PARTS = (agi_server, ami_client, http_api)
