"""`pbxctl billing`: rate calls into invoices.

Each subcommand is one `_add_<name>(commands)` function listed in
`SUBCOMMANDS`; add `export` there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbx_controller.billing.quote import QuoteInputError, quote_files, render_json, render_table
from pbx_controller.cli.main import CliError
from pbx_controller.core.rating import Period

__all__ = ["SUBCOMMANDS", "parse_period", "register", "run_quote"]


def parse_period(text: str) -> Period:
    try:
        return Period.parse(text)
    except ValueError as exc:
        raise CliError(f"--period: {exc}") from None


def run_quote(args: argparse.Namespace) -> int:
    period = parse_period(args.period)
    try:
        result = quote_files(args.contract, args.cdrs, period, args.readiness)
    except QuoteInputError as exc:
        raise CliError(str(exc)) from None
    print(render_json(result.invoice) if args.format == "json" else render_table(result))
    return 0


def _add_quote(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "quote",
        help="price a contract on CDR files, without the database",
        description="Rate CDRs from a CSV file under a contract, for one period.",
    )
    parser.add_argument("--contract", required=True, type=Path, metavar="C.toml")
    parser.add_argument(
        "--cdrs",
        required=True,
        type=Path,
        metavar="CDRS.csv",
        help="columns call_id,direction,arrived_at,answered_at,ended_at",
    )
    parser.add_argument("--period", required=True, metavar="YYYY-MM")
    parser.add_argument(
        "--readiness", type=Path, metavar="R.csv", help="columns agent,started_at,ended_at,share"
    )
    parser.add_argument("--format", choices=("json", "table"), default="json")
    parser.set_defaults(func=run_quote)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[Any]], None], ...] = (_add_quote,)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("billing", help="invoices: quote from files, export periods")
    commands = parser.add_subparsers(dest="billing_command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(commands)
