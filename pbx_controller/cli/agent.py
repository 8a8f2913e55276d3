"""`pbxctl agent`: log agents in and out, pause and unpause them, list them.

    pbxctl agent login anna
    pbxctl agent pause anna --reason lunch
    pbxctl agent unpause anna
    pbxctl agent logout anna
    pbxctl agent end-wrapup anna
    pbxctl agent list [--tenant acme] [--format table|json]

The same commands as the agents' feature codes (*21, *22, *23<reason>,
*24), sent to the running controller's loopback HTTP API at `http.host`,
`http.port` (pbx_controller.api). Exit status: 0 done, 1 refused by the
controller (unknown agent, or not possible in the agent's state: the
message says which), 2 an operator error (bad arguments, bad settings, the
controller not running).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from pbx_controller.cli.main import CliError
from pbx_controller.cli.serve import settings_from
from pbx_controller.config import HttpSettings

__all__ = [
    "COMMANDS",
    "api_token",
    "api_url",
    "format_table",
    "get_json",
    "post_command",
    "register",
    "request",
]

# CLI word -> API command.
COMMANDS = {
    "login": "login",
    "logout": "logout",
    "pause": "pause",
    "unpause": "unpause",
    "end-wrapup": "end_wrapup",
}
TIMEOUT_S = 10.0
# The API is on loopback: never through $http_proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (a lookup)

_HELP = {
    "login": "log an agent in to all its queues",
    "logout": "log an agent out (after its current call, if it has one)",
    "pause": "pause an agent with a reason code",
    "unpause": "make a paused agent ready again",
    "end_wrapup": "end an agent's wrap-up early",
}
_DONE = {
    "login": "logged in",
    "logout": "logged out",
    "pause": "paused",
    "unpause": "unpaused",
    "end_wrapup": "done with wrap-up",
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    agent = sub.add_parser(
        "agent",
        help="log agents in and out, pause, unpause, list (the running controller)",
        description="Log agents in and out, pause and unpause them, list them: "
        "the running controller's HTTP API (http.host, http.port) does it. "
        "Exit status: 0 done, 1 refused by the controller, 2 operator error.",
    )
    actions = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    for word, command in COMMANDS.items():
        parser = actions.add_parser(word, help=_HELP[command])
        parser.add_argument(
            "agent_id", metavar="AGENT", help="the agent's id (pbx.toml [agents.ID])"
        )
        if command == "pause":
            parser.add_argument(
                "--reason", required=True, help="the pause reason code (1 to 64 characters)"
            )
        parser.set_defaults(func=run_command, api_command=command)
    listing = actions.add_parser("list", help="every agent and its state")
    listing.add_argument("--tenant", help="only agents serving this tenant's queues")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=run_list)


def api_token(settings: HttpSettings) -> str | None:
    return settings.token.get_secret_value() if settings.token is not None else None


def api_url(settings: HttpSettings) -> str:
    """Where the controller's API answers; a wildcard bind is reached on loopback."""
    if settings.port == 0:
        raise CliError("http.port is 0 (any free port): set the port the controller listens on")
    host = _WILDCARD.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def request(
    base: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
) -> tuple[int, Any]:
    """One JSON request to the API: (status, decoded body). A controller that
    does not answer is a CliError."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(  # noqa: S310 (http:// built from our settings)
        base + path, data=data, method=method, headers=headers
    )
    try:
        with _OPENER.open(req, timeout=TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise CliError(f"controller not running at {base}") from None
        raise CliError(f"controller at {base} did not answer: {reason}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise CliError(f"controller at {base} answered HTTP {status} without JSON") from None


def post_command(
    args: argparse.Namespace, path: str, body: dict[str, Any], refusals: Sequence[str]
) -> dict[str, Any] | None:
    """POST a command to the running controller: its answer when done. A
    refusal in `refusals` is printed and gives None (exit status 1); any
    other failure is a CliError (exit status 2)."""
    http = settings_from(args).http
    status, answer = request(api_url(http), "POST", path, body, token=api_token(http))
    if not isinstance(answer, dict):
        raise CliError(f"controller answered HTTP {status} with no JSON object")
    result, message = answer.get("result"), answer.get("error", "")
    if status == 200 and result == "OK":
        return answer
    if result in refusals:
        print(f"pbxctl: {message or result}", file=sys.stderr)
        return None
    raise CliError(message or f"controller answered HTTP {status}")


def get_json(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """GET from the running controller: its JSON object, or a CliError."""
    http = settings_from(args).http
    status, answer = request(api_url(http), "GET", path, token=api_token(http))
    if status != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise CliError(error or f"controller answered HTTP {status}")
    return answer


def run_command(args: argparse.Namespace) -> int:
    command: str = args.api_command
    path = f"/agents/{urllib.parse.quote(args.agent_id, safe='')}/{command}"
    body = {"reason": args.reason} if command == "pause" else {}
    answer = post_command(args, path, body, ("UNKNOWN_AGENT", "INVALID_STATE"))
    if answer is None:
        return 1
    print(f"agent {args.agent_id}: {_DONE[command]}{_describe(answer.get('agent'))}")
    return 0


def _describe(agent: Any) -> str:
    if not isinstance(agent, dict):
        return ""
    state = str(agent.get("state", "?"))
    if agent.get("reason"):
        state += f" ({agent['reason']})"
    pending = agent.get("pending")
    if pending:
        what = "log out" if pending == "logout" else f"pause ({pending})"
        state += f"; will {what} when the current call is done"
    return f" - now {state}"


def run_list(args: argparse.Namespace) -> int:
    path = "/agents"
    if args.tenant is not None:
        path += "?" + urllib.parse.urlencode({"tenant": args.tenant})
    agents: list[dict[str, Any]] = get_json(args, path).get("agents", [])
    if args.format == "json":
        print(json.dumps(agents, indent=2))
        return 0
    print(render_table(agents))
    return 0


def render_table(agents: list[dict[str, Any]]) -> str:
    header = ("AGENT", "STATE", "REASON", "SINCE", "QUEUES", "CALL")
    rows = [header]
    for agent in agents:
        reason = agent.get("reason") or ""
        if agent.get("pending"):
            reason = (reason + " " if reason else "") + f"[pending {agent['pending']}]"
        since = (agent.get("since") or "")[:19].replace("T", " ")
        queues = ",".join(agent.get("queues") or []) or "-"
        rows.append(
            (
                str(agent.get("agent_id", "")),
                str(agent.get("state", "")),
                reason or "-",
                since or "-",
                queues,
                str(agent.get("call_id") or "-"),
            )
        )
    return format_table(rows)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
