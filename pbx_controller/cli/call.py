"""`pbxctl call`: act on a live call's recording, and list live calls.

    pbxctl call list --tenant acme
    pbxctl call stop-recording CALL --tenant acme     # withdrawal, for good
    pbxctl call pause-recording CALL --tenant acme    # PCI: card data follows
    pbxctl call resume-recording CALL --tenant acme

Sent to the running controller's loopback HTTP API, like `pbxctl agent`.
The tenant is required: ops act on one client firm's calls, and another
firm's call is reported as unknown. Exit status: 0 done, 1 refused by the
controller (no such live call, or not being recorded), 2 operator error.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from pbx_controller.cli.agent import format_table, get_json, post_command

__all__ = ["COMMANDS", "register"]

# CLI word -> API path word.
COMMANDS = {"stop-recording": "stop", "pause-recording": "pause", "resume-recording": "resume"}
_HELP = {
    "stop": "stop recording now and for the rest of the call (consent withdrawn)",
    "pause": "pause the recording (card data): the file gets silence",
    "resume": "resume a paused recording",
}
_DONE = {"stop": "recording stopped", "pause": "recording paused", "resume": "recording resumed"}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    call = sub.add_parser(
        "call",
        help="live calls: list them, stop, pause or resume their recording",
        description="Act on live calls through the running controller's HTTP API "
        "(http.host, http.port). Exit status: 0 done, 1 refused by the controller, "
        "2 operator error.",
    )
    actions = call.add_subparsers(dest="call_command", required=True, metavar="ACTION")
    for word, command in COMMANDS.items():
        parser = actions.add_parser(word, help=_HELP[command])
        parser.add_argument("call_id", metavar="CALL", help="the call's id (pbxctl call list)")
        parser.add_argument("--tenant", required=True, help="the tenant the call belongs to")
        parser.set_defaults(func=run_command, api_command=command)
    listing = actions.add_parser("list", help="one tenant's live calls")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(func=run_list)


def run_command(args: argparse.Namespace) -> int:
    command: str = args.api_command
    path = (
        f"/calls/{urllib.parse.quote(args.call_id, safe='')}/recording/{command}?"
        + urllib.parse.urlencode({"tenant": args.tenant})
    )
    if post_command(args, path, {}, ("UNKNOWN_CALL", "NOT_RECORDING")) is None:
        return 1
    print(f"call {args.call_id}: {_DONE[command]}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    path = "/calls?" + urllib.parse.urlencode({"tenant": args.tenant})
    calls: list[dict[str, Any]] = get_json(args, path).get("calls", [])
    if args.format == "json":
        print(json.dumps(calls, indent=2))
        return 0
    header = ("CALL", "STATE", "CALLER", "QUEUE", "AGENT", "CONSENT", "RECORDED")
    rows = [header] + [
        (
            str(c.get("call_id")),
            str(c.get("state")),
            str(c.get("caller") or "-"),
            str(c.get("queue") or "-"),
            str(c.get("agent") or "-"),
            str(c.get("consent") or "-"),
            "yes" if c.get("recorded") else "no",
        )
        for c in calls
    ]
    print(format_table(rows))
    return 0
