r"""`pbxctl billing export`: rate a period from the database, close it, write files.

The monthly cron job (BILLING.md applies unchanged; rule 14 is this module's):

  5 2 1 * * pbxctl billing export --period $(date -d yesterday +\%Y-\%m) --out /var/lib/pbx/billing

(On the 1st, yesterday is always in last month; `%` must be escaped in a
crontab. The database URL comes from PBX_DATABASE__URL or the --config file,
as for `pbxctl serve`.) Silent on success when stderr is not a terminal; on
a terminal it draws a progress bar. Exit 2 with `pbxctl: error: ...` when
something failed; the other tenants are still exported, and a rerun does
only what is left (closed periods are re-exported unchanged).

Per tenant, in one database transaction:

1. **Lock.** The `billing_period` row (tenant, period) is created if
   missing and locked: PostgreSQL `SELECT ... FOR UPDATE`, SQLite
   `BEGIN IMMEDIATE` (one writer for the whole database). A second export of
   the same period waits, then finds the period closed and re-exports it
   (on SQLite it waits the busy timeout, 10 s, then fails "database is
   locked"; the CDR writer's outbox likewise retries while an export holds
   a SQLite database). On PostgreSQL two tenants are exported at once, so
   the database marks one tenant's CDRs while Python rates another's.
2. **Open period: close it.** The period's unbilled answered CDRs (billing
   start within the period, `billing_period IS NULL`) are marked with the
   period in one UPDATE, and so are *late* CDRs: answered, unbilled, with a
   billing start in a closed earlier period of the tenant. Then exactly the
   marked rows are streamed back (server-side cursor, billing order: billing
   start, call_id) through `PeriodRater`: the period's calls with
   `add_call`, late ones with `add_late_call` (an `adjustments` line naming
   the call). Marking first, then rating what was marked, means a CDR
   inserted meanwhile is either rated and marked, or neither (it is then a
   late call next month); and the UPDATE's `billing_period IS NULL`
   condition means two exports can never both claim one call. Readiness
   comes from `agent_state_log` (`billing.readiness`), as the log stands at
   close: rule 14 re-bills late CDRs, not late log rows. The invoice and its
   lines are inserted, the files are written, and the period row becomes
   closed with `closed_at` and `export_sha256`.
3. **Closed period: re-export.** A closed invoice is never changed. The
   invoice and lines files are rendered from the stored rows; the calls file
   is rebuilt by re-rating exactly the CDRs marked with the period (their
   per-call figures are not stored). The files' checksum must equal the one
   stored at close, or nothing is written: a changed contract version or
   edited CDR shows up as an error rather than as a different invoice.

Both paths render the invoice from the stored rows (read back from the
database after the insert), so the first export and every re-export go
through the same code and are byte-identical.

Files, per tenant, in --out DIR (written to temporary names, renamed into
place after the commit):

- `<tenant>-<period>-invoice.json`: BILLING.md's expected.json format.
- `<tenant>-<period>-lines.csv`: the invoice lines.
- `<tenant>-<period>-calls.csv`: one row per billed CDR (the period's calls
  in billing order, then late calls), with billed seconds and amount. A
  call's `amount` is its own charge rounded for display; invoice lines
  round their exact totals once (rule 13), so the column may differ from
  the lines by cents.

`export_sha256` is `sha256sum` of the three files in name order, hashed
again: `sha256sum acme-2026-10-{calls.csv,invoice.json,lines.csv} | sha256sum`.

CSV formula injection: every text cell (caller, callee, DID, queue, agent,
line codes...; call ids are UUIDs, which cannot) that starts with `=`, `+`,
`-`, `@`, a tab or a CR gets a leading `'`, so a spreadsheet shows it as text. That includes
E.164 numbers such as `+48600100200`, which then read `'+48600100200`: the
price of never running a caller-supplied formula. Numeric and time cells are
produced by our own formatting (plain decimals, ISO 8601) and are left as
they are, so a future negative adjustment stays a number a spreadsheet sums.

Contract: the version with the latest `valid_from` on or before the
period's last day (the highest version on a tie) rates the whole period.
Tenants without such a version are skipped, unless named with --tenant,
which makes it an error. A period is exported only once it has ended in the
contract's time zone.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
import tempfile
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TextIO, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pbx_controller.billing.quote import render_json
from pbx_controller.billing.readiness import load_readiness
from pbx_controller.core.contract import Basis, Contract, ContractError, Direction, parse_contract
from pbx_controller.core.rating import (
    CallCharge,
    CallForRating,
    Invoice,
    InvoiceLine,
    LineCode,
    Period,
    PeriodRater,
    RatingError,
    ReadinessInterval,
    Unit,
    to_decimal,
)
from pbx_controller.core.readiness import StateChangeError
from pbx_controller.store import models
from pbx_controller.store.models import UTCDateTime, utcnow

__all__ = [
    "CALL_COLUMNS",
    "LINE_COLUMNS",
    "ExportError",
    "ExportProgress",
    "ExportReport",
    "NoProgress",
    "TenantExport",
    "TenantFailure",
    "export_files",
    "export_period",
    "files_sha256",
    "neutralise",
]

CALL_COLUMNS: Final = (
    "call_id",
    "billed_as",  # "period", or "adjustment" for a late call of a closed period
    "direction",
    "caller",
    "callee",
    "did",
    "queue",
    "agent",
    "arrived_at",
    "answered_at",
    "ended_at",
    "billing_start",
    "day",
    "day_kind",
    "billed_seconds",
    "included_seconds",
    "charged_seconds",
    "per_minute",
    "connect_fee",
    "amount",
)
LINE_COLUMNS: Final = ("seq", "code", "quantity", "unit", "unit_price", "amount", "call_id")

_FILE_KINDS: Final = ("calls.csv", "invoice.json", "lines.csv")  # sorted: the checksum order
_SAFE_TENANT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
_BATCH: Final = 2000

_cdr = cast(sa.Table, models.Cdr.__table__)
_period_table = cast(sa.Table, models.BillingPeriod.__table__)
_invoice = cast(sa.Table, models.Invoice.__table__)
_line = cast(sa.Table, models.InvoiceLine.__table__)


class ExportError(Exception):
    """A problem the operator can fix, worded for them. Never holds a password."""


# -- results and progress ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantExport:
    tenant: str
    period: Period
    action: Literal["closed", "reexported"]
    invoice: Invoice
    calls: int  # the period's billed calls
    late_calls: int  # earlier periods' calls billed here as adjustments
    files: tuple[Path, ...]
    sha256: str


@dataclass(frozen=True, slots=True)
class TenantFailure:
    tenant: str
    message: str


@dataclass(frozen=True, slots=True)
class ExportReport:
    period: Period
    exported: tuple[TenantExport, ...]
    failures: tuple[TenantFailure, ...]
    skipped: tuple[str, ...]  # tenants without a contract for the period

    @property
    def ok(self) -> bool:
        return not self.failures


class ExportProgress(Protocol):
    """What the export tells a progress display (tenants run concurrently)."""

    def started(self, tenants: int) -> None: ...

    def calls_rated(self, count: int) -> None: ...

    def tenant_finished(self, result: TenantExport) -> None: ...

    def finished(self) -> None: ...


class NoProgress:
    """Quiet: for cron, and for tests."""

    def started(self, tenants: int) -> None:
        pass

    def calls_rated(self, count: int) -> None:
        pass

    def tenant_finished(self, result: TenantExport) -> None:
        pass

    def finished(self) -> None:
        pass


# -- CSV --------------------------------------------------------------------


def neutralise(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _number(value: Decimal) -> str:
    return format(value, "f")  # never an exponent


def _seconds(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return _number(to_decimal(value))


def _instant(value: datetime | None, zone: ZoneInfo) -> str:
    return "" if value is None else value.astimezone(zone).isoformat(timespec="milliseconds")


def _csv_writer(file: TextIO) -> Any:
    # RFC 4180 line ends; QUOTE_MINIMAL quotes commas, quotes and newlines.
    return csv.writer(file, lineterminator="\r\n")


# -- planning ---------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    tenant: str
    contract: Contract
    version: int
    start: datetime  # the period's bounds in the contract's zone, UTC
    stop: datetime
    readiness: list[ReadinessInterval] = field(default_factory=list)


def _period_last_day(period: Period) -> date:
    return period.stop_day - timedelta(days=1)


async def _contracts(
    connection: AsyncConnection, period: Period, tenant: str | None
) -> dict[str, tuple[int, str]]:
    """tenant -> (version, TOML body) of the contract in force for the period."""
    table = models.Contract.__table__
    query = (
        sa.select(table.c.tenant_id, table.c.version, table.c.body)
        .where(table.c.valid_from <= _period_last_day(period))
        .order_by(table.c.tenant_id, table.c.valid_from.desc(), table.c.version.desc())
    )
    if tenant is not None:
        query = query.where(table.c.tenant_id == tenant)
    found: dict[str, tuple[int, str]] = {}
    for tenant_id, version, body in await connection.execute(query):
        found.setdefault(tenant_id, (version, body))
    return found


def _parse(tenant: str, version: int, body: str) -> Contract:
    where = f"contract version {version} of tenant {tenant}"
    try:
        contract = parse_contract(tomllib.loads(body))
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"{where}: invalid TOML: {exc}") from None
    except ContractError as exc:
        raise ExportError(f"{where}: {exc}") from None
    if contract.tenant != tenant:
        raise ExportError(f"{where}: names tenant {contract.tenant!r}")
    return contract


async def _plan(
    connection: AsyncConnection, period: Period, tenant: str | None, now: datetime
) -> tuple[list[_Plan], list[TenantFailure], list[str]]:
    tenants_query = sa.select(models.Tenant.__table__.c.id).order_by(models.Tenant.__table__.c.id)
    if tenant is not None:
        tenants_query = tenants_query.where(models.Tenant.__table__.c.id == tenant)
    tenants = list((await connection.execute(tenants_query)).scalars())
    if tenant is not None and not tenants:
        raise ExportError(f"unknown tenant {tenant!r}")
    contracts = await _contracts(connection, period, tenant)
    if tenant is not None and tenant not in contracts:
        raise ExportError(
            f"tenant {tenant} has no contract in force in {period}"
            f" (no version valid from {_period_last_day(period)} or earlier)"
        )
    plans: list[_Plan] = []
    failures: list[TenantFailure] = []
    skipped: list[str] = []
    for tenant_id in tenants:
        if tenant_id not in contracts:
            skipped.append(tenant_id)
            continue
        try:
            if not _SAFE_TENANT.fullmatch(tenant_id):
                raise ExportError(f"tenant id {tenant_id!r} cannot name a file")
            version, body = contracts[tenant_id]
            contract = _parse(tenant_id, version, body)
            start, stop = period.bounds(contract.zone)
            if now < stop:
                raise ExportError(
                    f"period {period} of tenant {tenant_id} has not ended yet (it ends"
                    f" {stop.astimezone(contract.zone).isoformat()}); it can be closed only after"
                )
        except ExportError as exc:
            failures.append(TenantFailure(tenant_id, str(exc)))
            continue
        plans.append(_Plan(tenant_id, contract, version, start, stop))
    if not plans and not failures:
        raise ExportError(f"no tenant has a contract in force in {period}")
    return plans, failures, skipped


async def _closed_tenants(connection: AsyncConnection, period: Period) -> set[str]:
    query = sa.select(_period_table.c.tenant_id).where(
        _period_table.c.period == str(period), _period_table.c.status == "closed"
    )
    return set((await connection.execute(query)).scalars())


# -- the CDR queries ----------------------------------------------------------


def _billing_start(contract: Contract) -> sa.ColumnElement[datetime]:
    """SQL for rule 2's billing start under this contract's bases."""
    column = {Basis.TALK: _cdr.c.answered_at, Basis.TOTAL: _cdr.c.arrived_at}
    # A direction without a rate: any column will do, the rater refuses the call.
    inbound, outbound = (
        column[rate.basis] if rate is not None else _cdr.c.answered_at
        for rate in (contract.rates.inbound, contract.rates.outbound)
    )
    if inbound is outbound:
        return inbound  # a plain column can use the (tenant_id, answered_at) index
    return sa.case((_cdr.c.direction == Direction.INBOUND.value, inbound), else_=outbound)


def _at(instant: datetime) -> sa.BindParameter[datetime]:
    return sa.literal(instant, UTCDateTime())


def _closed_before(periods: Iterable[str], contract: Contract) -> list[tuple[datetime, datetime]]:
    """Closed earlier periods as merged UTC ranges."""
    ranges: list[tuple[datetime, datetime]] = []
    for text in sorted(periods):
        start, stop = Period.parse(text).bounds(contract.zone)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], stop)
        else:
            ranges.append((start, stop))
    return ranges


async def _mark(connection: AsyncConnection, plan: _Plan, period: Period) -> None:
    """Claim the period's unbilled calls and late calls of closed earlier periods."""
    start = _billing_start(plan.contract)
    unbilled = sa.and_(
        _cdr.c.tenant_id == plan.tenant,
        _cdr.c.billing_period.is_(None),
        _cdr.c.answered_at.is_not(None),  # never answered: never billed
    )
    mark = sa.update(_cdr).values(billing_period=str(period))
    await connection.execute(mark.where(unbilled, start >= _at(plan.start), start < _at(plan.stop)))
    closed = await connection.execute(
        sa.select(_period_table.c.period).where(
            _period_table.c.tenant_id == plan.tenant,
            _period_table.c.status == "closed",
            _period_table.c.period < str(period),
        )
    )
    ranges = _closed_before(closed.scalars(), plan.contract)
    if ranges:
        in_closed = sa.or_(*(sa.and_(start >= _at(a), start < _at(b)) for a, b in ranges))
        await connection.execute(mark.where(unbilled, in_closed, start < _at(plan.start)))


# call, caller, callee, did, queue, agent
_CdrRow = tuple[CallForRating, str, str, str | None, str | None, str | None]


_CDR_COLUMNS: Final = (
    _cdr.c.call_id,
    _cdr.c.direction,
    _cdr.c.arrived_at,
    _cdr.c.answered_at,
    _cdr.c.ended_at,
    _cdr.c.caller,
    _cdr.c.callee,
    _cdr.c.did,
    _cdr.c.queue_id,
    _cdr.c.agent_id,
)


async def _billed(
    connection: AsyncConnection, plan: _Plan, period: Period, *, late: bool
) -> AsyncIterator[_CdrRow]:
    """The CDRs marked with the period, in billing order: its own or late ones."""
    start = _billing_start(plan.contract)
    in_range = start < _at(plan.start) if late else start >= _at(plan.start)
    query = (
        sa.select(*_CDR_COLUMNS)
        .where(_cdr.c.tenant_id == plan.tenant, _cdr.c.billing_period == str(period), in_range)
        .order_by(start, _cdr.c.call_id)
        .execution_options(yield_per=_BATCH)
    )
    result = await connection.stream(query)
    async for rows in result.partitions():
        for call_id, direction, arrived, answered, ended, caller, callee, did, queue, agent in rows:
            call = CallForRating(str(call_id), direction, arrived, answered, ended)
            yield call, caller, callee, did, queue, agent


# -- rating into the calls file -----------------------------------------------


class _CallCells:
    """Formats calls-file rows, caching the figures that repeat across calls.

    Calls share a few hundred (billed, included, charged seconds, price)
    combinations; pricing one with Fractions costs more than the rest of the
    row, so each combination is formatted once. The cache is bounded.
    """

    _MAX_CACHED = 65_536

    def __init__(self, zone: ZoneInfo) -> None:
        self._zone = zone
        self._figures: dict[tuple[object, ...], tuple[str, ...]] = {}

    def _figures_of(self, charge: CallCharge) -> tuple[str, ...]:
        included, charged = charge.included_seconds, charge.charged_seconds
        key = (
            charge.billed_seconds,
            included.numerator,
            included.denominator,
            charged.numerator,
            charged.denominator,
            charge.per_minute,
            charge.connect_fee,
        )
        figures = self._figures.get(key)
        if figures is None:
            figures = (
                str(charge.billed_seconds),
                _seconds(included),
                _seconds(charged),
                _number(charge.per_minute),
                "" if charge.connect_fee is None else _number(charge.connect_fee),
                _number(charge.amount),
            )
            if len(self._figures) < self._MAX_CACHED:
                self._figures[key] = figures
        return figures

    def __call__(self, row: _CdrRow, charge: CallCharge) -> list[str]:
        call, caller, callee, did, queue, agent = row
        zone = self._zone
        arrived = call.arrived_at.astimezone(zone).isoformat(timespec="milliseconds")
        answered = _instant(call.answered_at, zone)
        if charge.billing_start == call.answered_at:
            start = answered
        elif charge.billing_start == call.arrived_at:
            start = arrived
        else:
            start = _instant(charge.billing_start, zone)
        return [
            call.call_id,  # str(UUID): hex digits and dashes, nothing to neutralise
            "adjustment" if charge.late else "period",
            call.direction.value,
            neutralise(caller),
            neutralise(callee),
            neutralise(did or ""),
            neutralise(queue or ""),
            neutralise(agent or ""),
            arrived,
            answered,
            call.ended_at.astimezone(zone).isoformat(timespec="milliseconds"),
            start,
            charge.day.isoformat(),
            charge.day_kind.value,
            *self._figures_of(charge),
        ]


@dataclass(slots=True)
class _Rated:
    rater: PeriodRater
    calls: int = 0
    late_calls: int = 0


async def _rate_into(
    connection: AsyncConnection,
    plan: _Plan,
    period: Period,
    calls_file: TextIO,
    progress: ExportProgress,
) -> _Rated:
    """Stream the period's marked CDRs through a rater, one calls-file row each."""
    rated = _Rated(PeriodRater(plan.contract, period))
    writer = _csv_writer(calls_file)
    try:
        writer.writerow(CALL_COLUMNS)
    except OSError as exc:
        raise ExportError(f"{calls_file.name}: {exc.strerror or exc}") from None
    cells = _CallCells(plan.contract.zone)
    for late in (False, True):
        add: Callable[[CallForRating], CallCharge | None] = (
            rated.rater.add_late_call if late else rated.rater.add_call
        )
        pending = 0
        async for row in _billed(connection, plan, period, late=late):
            charge = add(row[0])
            if charge is None:  # only answered calls are marked
                raise ExportError(f"call {row[0].call_id} is marked billed but unanswered")
            try:
                writer.writerow(cells(row, charge))
            except OSError as exc:
                raise ExportError(f"{calls_file.name}: {exc.strerror or exc}") from None
            pending += 1
            if pending == _BATCH:
                progress.calls_rated(pending)
                pending = 0
            if late:
                rated.late_calls += 1
            else:
                rated.calls += 1
        progress.calls_rated(pending)
    return rated


# -- the stored invoice ------------------------------------------------------


async def _store_invoice(
    connection: AsyncConnection, plan: _Plan, period: Period, invoice: Invoice
) -> None:
    invoice_id = (
        await connection.execute(
            sa.insert(_invoice)
            .values(
                tenant_id=plan.tenant,
                period=str(period),
                currency=invoice.currency,
                net=invoice.net,
                vat=invoice.vat,
                gross=invoice.gross,
            )
            .returning(_invoice.c.id)
        )
    ).scalar_one()
    if invoice.lines:
        await connection.execute(
            sa.insert(_line),
            [
                {
                    "invoice_id": invoice_id,
                    "seq": seq,
                    "code": str(line.code),
                    "quantity": line.quantity,
                    "unit": str(line.unit),
                    "unit_price": line.unit_price,
                    "amount": line.amount,
                    "call_id": None if line.call_id is None else uuid.UUID(line.call_id),
                }
                for seq, line in enumerate(invoice.lines)
            ],
        )


async def _load_invoice(connection: AsyncConnection, plan: _Plan, period: Period) -> Invoice | None:
    """The stored invoice as the rating engine's type, for the renderers.

    `exact_quantity` is the stored decimal: display only, nothing is re-priced.
    """
    head = (
        await connection.execute(
            sa.select(
                _invoice.c.id, _invoice.c.currency, _invoice.c.net, _invoice.c.vat, _invoice.c.gross
            ).where(_invoice.c.tenant_id == plan.tenant, _invoice.c.period == str(period))
        )
    ).one_or_none()
    if head is None:
        return None
    invoice_id, currency, net, vat, gross = head
    rows = await connection.execute(
        sa.select(
            _line.c.code,
            _line.c.quantity,
            _line.c.unit,
            _line.c.unit_price,
            _line.c.amount,
            _line.c.call_id,
        )
        .where(_line.c.invoice_id == invoice_id)
        .order_by(_line.c.seq)
    )
    lines = tuple(
        InvoiceLine(
            code=LineCode(code),
            quantity=quantity,
            unit=Unit(unit),
            unit_price=unit_price,
            amount=amount,
            exact_quantity=Fraction(quantity),
            call_id=None if call_id is None else str(call_id),
        )
        for code, quantity, unit, unit_price, amount, call_id in rows
    )
    return Invoice(
        tenant=plan.tenant,
        period=period,
        currency=currency,
        lines=lines,
        vat_percent=plan.contract.vat_percent,
        net=net,
        vat=vat,
        gross=gross,
    )


def _lines_text(invoice: Invoice) -> str:
    file = io.StringIO(newline="")
    writer = _csv_writer(file)
    writer.writerow(LINE_COLUMNS)
    for seq, line in enumerate(invoice.lines, start=1):
        writer.writerow(
            [
                str(seq),
                neutralise(str(line.code)),
                _number(line.quantity),
                neutralise(str(line.unit)),
                _number(line.unit_price),
                _number(line.amount),
                neutralise(line.call_id or ""),
            ]
        )
    return file.getvalue()


# -- files -------------------------------------------------------------------


def export_files(out_dir: Path, tenant: str, period: Period) -> dict[str, Path]:
    """kind ("calls.csv", "invoice.json", "lines.csv") -> path in `out_dir`."""
    return {kind: out_dir / f"{tenant}-{period}-{kind}" for kind in _FILE_KINDS}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """`sha256sum` of the files (in the given order), hashed: the stored checksum."""
    names = names or [path.name for path in paths]
    manifest = "".join(
        f"{_sha256_file(path)}  {name}\n" for path, name in zip(paths, names, strict=True)
    )
    return hashlib.sha256(manifest.encode()).hexdigest()


def _file_error(path: Path, exc: OSError) -> ExportError:
    # Files fail as ExportError (one tenant fails); a bare OSError is the
    # database connection's and stops the run.
    return ExportError(f"{path}: {exc.strerror or exc}")


class _Staged:
    """Files written under temporary names in the target directory.

    `publish()` renames them into place (atomic per file); leaving the
    context without publishing removes them.
    """

    def __init__(self, targets: dict[str, Path]) -> None:
        self.targets = targets
        self.paths: dict[str, Path] = {}

    def __enter__(self) -> _Staged:
        for kind, target in self.targets.items():
            try:
                handle, name = tempfile.mkstemp(
                    prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
                )
            except OSError as exc:
                self.__exit__()
                raise _file_error(target.parent, exc) from None
            os.close(handle)
            self.paths[kind] = Path(name)
        return self

    def open(self, kind: str) -> TextIO:
        try:
            # newline="": the csv module writes its own line ends.
            return self.paths[kind].open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise _file_error(self.paths[kind], exc) from None

    def close(self, file: TextIO) -> None:
        try:
            file.close()  # flushes: a full disk shows here
        except OSError as exc:
            raise _file_error(Path(file.name), exc) from None

    def write(self, kind: str, text: str) -> None:
        try:
            with self.open(kind) as file:
                file.write(text)
        except OSError as exc:
            raise _file_error(self.paths[kind], exc) from None

    def sha256(self) -> str:
        kinds = sorted(self.paths)
        try:
            return files_sha256(
                [self.paths[kind] for kind in kinds], [self.targets[kind].name for kind in kinds]
            )
        except OSError as exc:
            raise _file_error(self.targets[kinds[0]].parent, exc) from None

    def publish(self) -> tuple[Path, ...]:
        for kind, path in list(self.paths.items()):
            try:
                os.replace(path, self.targets[kind])
            except OSError as exc:
                raise _file_error(self.targets[kind], exc) from None
            del self.paths[kind]
        return tuple(self.targets[kind] for kind in sorted(self.targets))

    def __exit__(self, *_exc: object) -> None:
        for path in self.paths.values():
            path.unlink(missing_ok=True)


# -- one tenant ----------------------------------------------------------------


async def _lock_period(connection: AsyncConnection, tenant: str, period: Period) -> tuple[Any, ...]:
    """Create the billing_period row if missing and hold it until the transaction ends."""
    dialect = connection.dialect.name
    values = {"tenant_id": tenant, "period": str(period), "status": "open"}
    if dialect == "sqlite":
        # One writer for the whole file until commit: the SQLite lock. Python's
        # sqlite3 would otherwise begin a deferred transaction at the first write.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
        insert: Any = sqlite.insert(_period_table)
    else:
        insert = postgresql.insert(_period_table)
    await connection.execute(
        insert.values(**values).on_conflict_do_nothing(index_elements=["tenant_id", "period"])
    )
    row = (
        await connection.execute(
            sa.select(_period_table.c.status, _period_table.c.export_sha256)
            .where(_period_table.c.tenant_id == tenant, _period_table.c.period == str(period))
            .with_for_update()  # PostgreSQL; SQLite holds the database already
        )
    ).one()
    return tuple(row)


async def _export_tenant(
    engine: AsyncEngine,
    plan: _Plan,
    period: Period,
    out_dir: Path,
    now: datetime,
    progress: ExportProgress,
) -> TenantExport:
    with _Staged(export_files(out_dir, plan.tenant, period)) as staged:
        async with engine.connect() as connection:
            status, stored_sha256 = await _lock_period(connection, plan.tenant, period)
            closing = status != "closed"
            if closing:
                await _mark(connection, plan, period)
            calls_file = staged.open("calls.csv")
            try:
                rated = await _rate_into(connection, plan, period, calls_file, progress)
            finally:
                staged.close(calls_file)
            if closing:
                for interval in plan.readiness:
                    rated.rater.add_readiness(interval)
                await _store_invoice(connection, plan, period, rated.rater.finish())
            invoice = await _load_invoice(connection, plan, period)
            if invoice is None or (not closing and stored_sha256 is None):
                raise ExportError(
                    f"period {period} of tenant {plan.tenant} is closed without an invoice or"
                    " a checksum: it was not closed by the export; nothing written"
                )
            staged.write("invoice.json", render_json(invoice))
            staged.write("lines.csv", _lines_text(invoice))
            sha256 = staged.sha256()
            if closing:
                await connection.execute(
                    sa.update(_period_table)
                    .where(
                        _period_table.c.tenant_id == plan.tenant,
                        _period_table.c.period == str(period),
                    )
                    .values(status="closed", closed_at=now, export_sha256=sha256)
                )
                await connection.commit()
            else:
                await connection.rollback()  # nothing was changed; release the lock
                if sha256 != stored_sha256:
                    raise ExportError(
                        f"period {period} of tenant {plan.tenant} is closed, but its files"
                        f" rebuilt now have checksum {sha256}, not {stored_sha256} as at close"
                        " (a contract version or a billed CDR changed since?); nothing written"
                    )
        files = staged.publish()
    result = TenantExport(
        tenant=plan.tenant,
        period=period,
        action="closed" if closing else "reexported",
        invoice=invoice,
        calls=rated.calls,
        late_calls=rated.late_calls,
        files=files,
        sha256=sha256,
    )
    progress.tenant_finished(result)
    return result


# -- the whole period -----------------------------------------------------------


def _prepare(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--out {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ExportError(f"--out {out_dir}: not writable")


async def export_period(
    engine: AsyncEngine,
    period: Period,
    out_dir: Path,
    *,
    tenant: str | None = None,
    now: datetime | None = None,
    progress: ExportProgress | None = None,
    concurrency: int = 2,
) -> ExportReport:
    """Export (close, or re-export if closed) `period` for one tenant or all.

    Raises `ExportError` for a problem with the whole run (unknown tenant,
    no contract, unwritable directory); a problem with one tenant is a
    `TenantFailure` in the report and the others go on. Database errors
    propagate. `now` is the clock, for the "has the period ended" check and
    `closed_at`. Up to `concurrency` tenants are exported at once
    (PostgreSQL only).
    """
    now = utcnow() if now is None else now
    progress = NoProgress() if progress is None else progress
    _prepare(out_dir)

    async with engine.connect() as connection:
        plans, failures, skipped = await _plan(connection, period, tenant, now)
        closed = await _closed_tenants(connection, period)
        # Readiness is needed only to close; one pass over the log serves all.
        windows = {
            plan.tenant: (plan.start, plan.stop)
            for plan in plans
            if plan.tenant not in closed and plan.contract.readiness is not None
        }
        try:
            readiness = await load_readiness(connection, windows)
        except StateChangeError as exc:
            raise ExportError(f"agent_state_log: {exc}") from None
    for plan in plans:
        plan.readiness = readiness.get(plan.tenant, [])

    # Tenants run side by side on PostgreSQL, each in its own transaction:
    # while one is rated here (Python, one core), the database marks the
    # CDRs of the next. SQLite has one writer at a time anyway.
    workers = 1 if engine.dialect.name == "sqlite" else max(1, concurrency)
    slots = asyncio.Semaphore(workers)

    async def run(plan: _Plan) -> TenantExport | TenantFailure:
        async with slots:
            try:
                return await _export_tenant(engine, plan, period, out_dir, now, progress)
            except (ExportError, RatingError) as exc:
                # The tenant's transaction was rolled back; the others go on.
                return TenantFailure(plan.tenant, str(exc))

    progress.started(len(plans))
    # return_exceptions: a database error in one tenant must not leave the
    # others' transactions running unobserved; the first one is raised below.
    outcomes = await asyncio.gather(*(run(plan) for plan in plans), return_exceptions=True)
    progress.finished()
    exported: list[TenantExport] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, TenantFailure):
            failures.append(outcome)
        else:
            exported.append(outcome)
    failures.sort(key=lambda failure: failure.tenant)
    return ExportReport(period, tuple(exported), tuple(failures), tuple(skipped))
