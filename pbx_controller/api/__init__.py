"""The loopback HTTP API (aiohttp) for pbxctl and monitoring: health,
Prometheus metrics, live state, agent commands. See `server.py`."""

from pbx_controller.api.server import AGENT_COMMANDS, RESULT_STATUS, HttpApi, build_app, http_api

__all__ = ["AGENT_COMMANDS", "RESULT_STATUS", "HttpApi", "build_app", "http_api"]
