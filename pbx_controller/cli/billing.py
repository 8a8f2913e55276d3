"""`pbxctl billing`: rate calls into invoices.

Each subcommand is one `_add_<name>(commands)` function listed in
`SUBCOMMANDS`: `quote` prices files, `export` closes a period from the
database (the monthly cron job, see `pbx_controller.billing.export`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pbx_controller.billing.quote import QuoteInputError, quote_files, render_json, render_table
from pbx_controller.cli.main import CliError
from pbx_controller.core.rating import Period

if TYPE_CHECKING:
    from pbx_controller.billing.export import ExportReport, TenantExport

__all__ = [
    "SUBCOMMANDS",
    "TerminalProgress",
    "database_error",
    "parse_period",
    "register",
    "run_export",
    "run_quote",
]


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


# -- export -------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


class TerminalProgress:
    """A progress bar on a terminal: tenants done, calls rated; a line per tenant.

    Redrawn at most 10 times a second.
    """

    _WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tenants = 0
        self._done = 0
        self._calls = 0
        self._drawn_at = 0.0

    def started(self, tenants: int) -> None:
        self._tenants = tenants
        self._draw(force=True)

    def calls_rated(self, count: int) -> None:
        self._calls += count
        self._draw()

    def tenant_finished(self, result: TenantExport) -> None:
        self._done += 1
        invoice = result.invoice
        late = f" + {result.late_calls} late" if result.late_calls else ""
        verb = "closed" if result.action == "closed" else "re-exported (unchanged)"
        self._line(
            f"{result.tenant} {result.period}: {verb}, {_count(result.calls, 'call')}{late},"
            f" gross {invoice.gross} {invoice.currency}\n"
        )
        self._draw(force=True)

    def finished(self) -> None:
        self._stream.write("\n")  # keep the last bar on screen
        self._stream.flush()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        filled = self._WIDTH * self._done // self._tenants if self._tenants else self._WIDTH
        bar = "#" * filled + "-" * (self._WIDTH - filled)
        self._line(f"[{bar}] {self._done}/{self._tenants} tenants, {self._calls:,} calls rated")

    def _line(self, text: str) -> None:
        self._stream.write("\r\x1b[K" + text)  # back to column 0, clear the line
        self._stream.flush()


def database_error(exc: BaseException, url: str) -> str:
    """An operator's message for a database failure, without any password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, ProgrammingError

    from pbx_controller.store.db import redact_url

    detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = (str(detail).strip().splitlines() or [type(detail).__name__])[0]
    message = f"database {redact_url(url)}: {reason}"
    if isinstance(exc, ProgrammingError) or "no such table" in reason:
        message += " (is it migrated? run `pbxctl db upgrade`)"
    try:
        password = make_url(url).password
    except Exception:  # an unparseable URL: redact_url already showed nothing of it
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message


def run_export(args: argparse.Namespace) -> int:
    period = parse_period(args.period)
    # Imported here: `pbxctl billing quote` should not pay for SQLAlchemy.
    from sqlalchemy.exc import SQLAlchemyError

    from pbx_controller.billing.export import ExportError, NoProgress, export_period
    from pbx_controller.cli.serve import settings_from
    from pbx_controller.store.db import DatabaseUrlError, make_engine

    url = settings_from(args).database.url.get_secret_value()
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else NoProgress()

    async def export() -> ExportReport:
        engine = make_engine(url)
        try:
            return await export_period(
                engine, period, args.out, tenant=args.tenant, progress=progress
            )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(export())
    except ExportError as exc:
        raise CliError(str(exc)) from None
    except DatabaseUrlError as exc:
        raise CliError(f"database: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        # OSError: asyncpg's connection refused / unreachable host.
        raise CliError(database_error(exc, url)) from None
    if isinstance(progress, TerminalProgress):
        for tenant in report.skipped:
            print(f"{tenant}: no contract in force in {period}, skipped", file=sys.stderr)
    if report.failures:
        details = "; ".join(f"{failure.tenant}: {failure.message}" for failure in report.failures)
        done = len(report.exported)
        raise CliError(
            f"billing export of {period} failed for {len(report.failures)} tenant(s)"
            f" ({done} exported): {details}"
        )
    return 0


def _add_export(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "export",
        help="close a billing period: invoices and CSV files from the database",
        description=(
            "Rate a period's CDRs and agent readiness from the database, close the"
            " period and write <tenant>-<period>-{invoice.json,lines.csv,calls.csv}."
            " Re-exporting a closed period rewrites the same bytes. Quiet unless"
            " stderr is a terminal."
        ),
    )
    parser.add_argument("--period", required=True, metavar="YYYY-MM")
    parser.add_argument("--tenant", metavar="T", help="only this tenant (default: all)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.set_defaults(func=run_export)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[Any]], None], ...] = (
    _add_quote,
    _add_export,
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("billing", help="invoices: quote from files, export periods")
    commands = parser.add_subparsers(dest="billing_command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(commands)
