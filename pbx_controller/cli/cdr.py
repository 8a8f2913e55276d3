"""`pbxctl cdr`: call detail records.

    pbxctl cdr reconcile --date 2025-03-30 [--csv /var/log/asterisk/cdr-csv/Master.csv]

Compares one UTC day of the `cdr` table with Asterisk's own CDRs
(pbx_controller.store.reconcile explains the matching). Exit status: 0
consistent, 1 differences found, 2 bad input or the database unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from pbx_controller.cli.main import CliError
from pbx_controller.cli.serve import settings_from
from pbx_controller.config import Settings
from pbx_controller.logs import setup_logging

__all__ = ["MASTER_CSV", "SUBCOMMANDS", "parse_day", "register", "run_reconcile"]

_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Where Debian's Asterisk writes cdr_csv's file (the sandbox: <run dir>/log/cdr-csv/).
MASTER_CSV = Path("/var/log/asterisk/cdr-csv/Master.csv")


def parse_day(text: str) -> date:
    if not _DAY_RE.match(text):
        raise CliError(f"--date: {text!r} is not YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--date: {exc}") from None


def run_reconcile(args: argparse.Namespace) -> int:
    day = parse_day(args.date)
    settings = settings_from(args)
    setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    from pbx_controller.store.reconcile import ReconcileInputError, render_json, render_text

    try:
        report = asyncio.run(_reconcile(settings, args.csv, day))
    except ReconcileInputError as exc:
        raise CliError(f"--csv: {exc}") from None
    if args.format == "json":
        print(json.dumps(render_json(report), indent=2))
    else:
        print(render_text(report, args.csv))
    return 0 if report.consistent else 1


async def _reconcile(settings: Settings, master_csv: Path, day: date) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.store.db import (
        DatabaseUrlError,
        make_engine,
        make_sessionmaker,
        redact_url,
    )
    from pbx_controller.store.outbox import describe_database_error
    from pbx_controller.store.reconcile import read_master_csv, reconcile

    read_master_csv(master_csv)  # bad input fails before the database is asked
    url = settings.database.url.get_secret_value()
    try:
        engine = make_engine(url)
    except (DatabaseUrlError, OSError) as exc:
        raise CliError(str(exc)) from None
    try:
        async with asyncio.timeout(30):
            return await reconcile(
                make_sessionmaker(engine),
                master_csv,
                day,
                outbox_dir=settings.data_dir / "outbox",
            )
    except TimeoutError:
        raise CliError(f"database {redact_url(url)} did not answer within 30s") from None
    except (OSError, SQLAlchemyError) as exc:
        raise CliError(
            f"database {redact_url(url)} is unreachable: {describe_database_error(exc, url)}"
        ) from None
    finally:
        await engine.dispose()


def _add_reconcile(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "reconcile",
        help="compare a day of CDRs with Asterisk's Master.csv",
        description=(
            "Report calls Asterisk saw (inbound calls with our call id in the CDR userfield)"
            " that have no CDR in our table, and CDRs Asterisk has no record of."
            " Exit 0 consistent, 1 differences, 2 bad input."
        ),
    )
    parser.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="a UTC day")
    parser.add_argument(
        "--csv",
        type=Path,
        default=MASTER_CSV,
        metavar="PATH",
        help=f"Asterisk's cdr_csv Master.csv (default {MASTER_CSV})",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run_reconcile)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[Any]], None], ...] = (_add_reconcile,)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("cdr", help="call detail records: reconcile with Asterisk")
    commands = parser.add_subparsers(dest="cdr_command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(commands)
