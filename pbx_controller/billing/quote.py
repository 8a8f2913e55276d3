"""`pbxctl billing quote`: the billing rules applied to files, without a database.

The file edge for `pbx_controller.core.rating`: it reads a contract (TOML),
CDRs and optional readiness intervals (CSV), and renders the invoice as the
JSON in `shared/billing-examples/*/expected.json` or as a table for people.
Every input problem raises `QuoteInputError` naming the file, the line and
the column.
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Final

from pbx_controller.core.contract import Contract, ContractError, Direction, parse_contract
from pbx_controller.core.rating import (
    DECIMAL_CONTEXT,
    CallForRating,
    DayKind,
    InvalidRecordError,
    Invoice,
    MissingRateError,
    Period,
    RatedPeriod,
    ReadinessInterval,
    call_period,
    rate_period,
)

__all__ = [
    "CDR_COLUMNS",
    "READINESS_COLUMNS",
    "CdrRow",
    "Quote",
    "QuoteInputError",
    "invoice_document",
    "load_contract",
    "quote",
    "quote_files",
    "read_cdrs",
    "read_readiness",
    "render_json",
    "render_table",
]

CDR_COLUMNS: Final = ("call_id", "direction", "arrived_at", "answered_at", "ended_at")
READINESS_COLUMNS: Final = ("agent", "started_at", "ended_at", "share")

_SHARE_RE: Final = re.compile(r"[0-9]+(\.[0-9]+)?|[0-9]+/[0-9]+")


class QuoteInputError(Exception):
    """A contract, CDR or readiness file that cannot be quoted; says where."""


# -- reading ----------------------------------------------------------------


def load_contract(path: Path) -> Contract:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise QuoteInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise QuoteInputError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise QuoteInputError(f"{path}: not UTF-8: {exc.reason}") from None
    try:
        return parse_contract(data)
    except ContractError as exc:
        raise QuoteInputError(f"{path}: {exc}") from None


class _Row:
    """One CSV record, for errors that say file:line: column N (name)."""

    def __init__(self, path: Path, line: int, header: Sequence[str], cells: Sequence[str]):
        self.path = path
        self.line = line
        self.header = header
        self.values = dict(zip(header, cells, strict=True))

    def error(self, column: str | None, problem: str) -> QuoteInputError:
        if column is None:
            return QuoteInputError(f"{self.path}:{self.line}: {problem}")
        number = self.header.index(column) + 1
        return QuoteInputError(f"{self.path}:{self.line}: column {number} ({column}): {problem}")

    def text(self, column: str) -> str:
        value = self.values[column].strip()
        if not value:
            raise self.error(column, "is empty")
        return value

    def instant(self, column: str) -> datetime:
        instant = self.optional_instant(column)
        if instant is None:
            raise self.error(column, "is empty")
        return instant

    def optional_instant(self, column: str) -> datetime | None:
        value = self.values[column].strip()
        if not value:
            return None
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            raise self.error(column, f"not an ISO 8601 timestamp: {value!r}") from None
        if instant.tzinfo is None:
            # A local time without its offset is ambiguous around DST changes.
            raise self.error(column, f"timestamp {value!r} has no UTC offset")
        return instant


def _rows(path: Path, columns: Sequence[str]) -> Iterator[_Row]:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, strict=True)
            line = 1
            try:
                header = [cell.strip() for cell in next(reader)]
            except StopIteration:
                raise QuoteInputError(
                    f"{path}:1: empty file, expected the header {','.join(columns)}"
                ) from None
            for number, name in enumerate(header, start=1):
                if name not in columns:
                    raise QuoteInputError(f"{path}:1: column {number}: unknown column {name!r}")
                if header.index(name) != number - 1:
                    raise QuoteInputError(f"{path}:1: column {number}: repeated column {name!r}")
            for name in columns:
                if name not in header:
                    raise QuoteInputError(f"{path}:1: missing column {name!r}")
            while True:
                line = reader.line_num + 1  # where the next record starts
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                if not cells:
                    continue  # a blank line
                if len(cells) != len(header):
                    raise QuoteInputError(
                        f"{path}:{line}: expected {len(header)} fields, got {len(cells)}"
                    )
                yield _Row(path, line, header, cells)
    except OSError as exc:
        raise QuoteInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise QuoteInputError(f"{path}: not UTF-8: {exc.reason}") from None
    except csv.Error as exc:
        raise QuoteInputError(f"{path}:{line}: malformed CSV: {exc}") from None


@dataclass(frozen=True, slots=True)
class CdrRow:
    line: int
    call: CallForRating


def read_cdrs(path: Path) -> list[CdrRow]:
    """Read CDRS.csv; an empty answered_at means the call was never answered."""
    rows: list[CdrRow] = []
    first_line: dict[str, int] = {}
    for row in _rows(path, CDR_COLUMNS):
        call_id = row.text("call_id")
        if call_id in first_line:
            raise row.error(
                "call_id",
                f"call {call_id!r} repeats line {first_line[call_id]}; a call is billed once",
            )
        first_line[call_id] = row.line
        direction = row.text("direction")
        if direction not in set(Direction):
            raise row.error("direction", f"expected inbound or outbound, got {direction!r}")
        arrived_at = row.instant("arrived_at")
        answered_at = row.optional_instant("answered_at")
        ended_at = row.instant("ended_at")
        try:
            call = CallForRating(call_id, Direction(direction), arrived_at, answered_at, ended_at)
        except InvalidRecordError as exc:
            raise row.error(exc.field, exc.problem) from None
        rows.append(CdrRow(row.line, call))
    return rows


def read_readiness(path: Path) -> list[ReadinessInterval]:
    """Read R.csv; share is a decimal ("0.5") or a fraction ("1/3")."""
    intervals: list[ReadinessInterval] = []
    for row in _rows(path, READINESS_COLUMNS):
        agent = row.text("agent")
        started_at = row.instant("started_at")
        ended_at = row.instant("ended_at")
        share_text = row.text("share")
        if not _SHARE_RE.fullmatch(share_text):
            raise row.error(
                "share", f'expected a share like "1", "0.5" or "1/3", got {share_text!r}'
            )
        try:
            share = Fraction(share_text)
        except ZeroDivisionError:
            raise row.error("share", f"division by zero in {share_text!r}") from None
        try:
            intervals.append(ReadinessInterval(agent, started_at, ended_at, share))
        except InvalidRecordError as exc:
            raise row.error(exc.field, exc.problem) from None
    return intervals


# -- quoting ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    rated: RatedPeriod
    other_periods: int  # answered calls billed in another period, left out
    unanswered: int  # never billed (rule 2)

    @property
    def invoice(self) -> Invoice:
        return self.rated.invoice

    @property
    def outside_service(self) -> int:
        """Calls on days the contract does not cover: not billed."""
        return sum(1 for call in self.rated.calls if call.day_kind is DayKind.OUTSIDE_SERVICE)


def quote(
    contract: Contract,
    period: Period,
    cdrs: Sequence[CdrRow],
    readiness: Sequence[ReadinessInterval] = (),
    *,
    cdrs_path: Path | str = "CDRS.csv",
) -> Quote:
    """Rate the CDRs whose billing start falls in `period`; others are counted."""
    in_period: list[CallForRating] = []
    other_periods = unanswered = 0
    for row in cdrs:
        try:
            belongs_to = call_period(contract, row.call)
        except MissingRateError as exc:
            raise QuoteInputError(f"{cdrs_path}:{row.line}: {exc}") from None
        if belongs_to is None:
            unanswered += 1
        elif belongs_to != period:
            other_periods += 1
        else:
            in_period.append(row.call)
    # As in the export, the period containing `end` is the last invoice, so a
    # quote for it shows any early_termination line.
    rated = rate_period(contract, period, in_period, readiness)
    return Quote(rated=rated, other_periods=other_periods, unanswered=unanswered)


def quote_files(
    contract_path: Path, cdrs_path: Path, period: Period, readiness_path: Path | None = None
) -> Quote:
    contract = load_contract(contract_path)
    cdrs = read_cdrs(cdrs_path)
    readiness: list[ReadinessInterval] = []
    if readiness_path is not None:
        if contract.readiness is None:
            # Quietly pricing readiness at nothing would mislead a sales quote.
            raise QuoteInputError(
                f"{readiness_path}: given, but {contract_path} has no [readiness] price"
            )
        readiness = read_readiness(readiness_path)
    return quote(contract, period, cdrs, readiness, cdrs_path=cdrs_path)


# -- rendering --------------------------------------------------------------


def _number(value: Decimal) -> str:
    # Fixed-point always: str() would print tiny quantities as 9.2E-8.
    return format(value, "f")


def invoice_document(invoice: Invoice) -> dict[str, object]:
    """The invoice as JSON-ready data, keys in expected.json's order."""
    lines: list[dict[str, str]] = []
    for line in invoice.lines:
        item = {
            "code": str(line.code),
            "quantity": _number(line.quantity),
            "unit": str(line.unit),
            "unit_price": _number(line.unit_price),
            "amount": _number(line.amount),
        }
        if line.call_id is not None:
            item["call_id"] = line.call_id  # adjustments name the original call
        lines.append(item)
    return {
        "tenant": invoice.tenant,
        "period": str(invoice.period),
        "currency": invoice.currency,
        "lines": lines,
        "net": _number(invoice.net),
        "vat": _number(invoice.vat),
        "gross": _number(invoice.gross),
    }


def render_json(invoice: Invoice) -> str:
    """expected.json's layout: one-space indent, no trailing newline."""
    return json.dumps(invoice_document(invoice), indent=1, ensure_ascii=False)


_TABLE_PLACES: Final = Decimal("0.0001")


def _short_quantity(value: Decimal) -> str:
    shown = value.quantize(_TABLE_PLACES, rounding=ROUND_HALF_UP, context=DECIMAL_CONTEXT)
    text = _number(shown).rstrip("0").rstrip(".") if "." in _number(shown) else _number(shown)
    return text if shown == value else f"~{text}"


def render_table(result: Quote) -> str:
    """A table for people; quantities shown to 4 places (~ marks rounding)."""
    invoice = result.invoice
    header = ("line", "quantity", "unit", "unit price", "amount")
    rows = [
        (
            line.code + (f" {line.call_id}" if line.call_id else ""),
            _short_quantity(line.quantity),
            str(line.unit),
            _number(line.unit_price),
            _number(line.amount),
        )
        for line in invoice.lines
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    total_width = sum(widths) + 2 * (len(widths) - 1)

    def format_row(row: Sequence[str]) -> str:
        left = row[0].ljust(widths[0])
        right = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([left, *right]).rstrip()

    def total(label: str, value: Decimal) -> str:
        amount = f"{_number(value)} {invoice.currency}"
        return label + amount.rjust(total_width - len(label) + len(invoice.currency) + 1)

    out = [
        f"Quote for {invoice.tenant}, period {invoice.period}",
        "",
        format_row(header),
        "-" * total_width,
        *(format_row(row) for row in rows),
    ]
    if not rows:
        out.append("(nothing to bill)")
    out += [
        "-" * total_width,
        total("net", invoice.net),
        total(f"VAT {_number(invoice.vat_percent)}%", invoice.vat),
        total("gross", invoice.gross),
    ]
    notes = [
        (result.unanswered, "never answered, not billed"),
        (result.other_periods, "billed in another period, left out"),
        (result.outside_service, "on days outside the contract's service, not billed"),
    ]
    for count, what in notes:
        if count:
            out.append(f"note: {count} call{'s' if count != 1 else ''} {what}")
    return "\n".join(out)
