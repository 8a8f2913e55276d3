"""Reconcile our CDRs with Asterisk's own, from cdr_csv's Master.csv.

The dialplan gives each inbound call its id (`PBX_CALL_ID=${UUID()}`) and
copies it into `CDR(userfield)` before `Stasis()`, so every call that was
handed to the controller has an Asterisk CDR row whose userfield is our
call id (asterisk_conf/cdr.conf: `loguserfield = yes`, the userfield is
the last column; `usegmtime = yes`, times are UTC). Asterisk writes one row
per channel leg; rows without a UUID in the userfield (the `;1` half of a
Local channel, agent legs, other dialplans) are not calls of ours and are
skipped.

The day is a UTC day, chosen by arrival (our `arrived_at`, Asterisk's
`start`): both sides store UTC, one UTC day is the same 24 hours for every
tenant, and a call to an unknown DID has no tenant whose zone could apply.
Tenant-local reports belong to billing, which reads the table itself.

A call near midnight may start on one side's day and arrive on the
other's: an id missing from one side's day is looked up on the other side
on any day before it is reported. An id that is not in the table yet but
waits in the local CDR outbox (the database was down) is reported as
waiting, not missing; it is still a difference, because it is not billed yet.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.store import models as m
from pbx_controller.store.outbox import scan_outbox

__all__ = [
    "AsteriskCdr",
    "OurCdr",
    "ReconcileInputError",
    "ReconcileReport",
    "read_master_csv",
    "reconcile",
    "render_json",
    "render_text",
    "utc_day",
]

# cdr_csv's fixed columns, then uniqueid (loguniqueid) and userfield (loguserfield).
_BASE_COLUMNS = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
_IN_CHUNK = 500


class ReconcileInputError(ValueError):
    """The Master.csv (or the day asked for) cannot be used; worded for an operator."""


@dataclass(frozen=True, slots=True)
class AsteriskCdr:
    call_id: str
    start: datetime
    end: datetime | None
    src: str
    dst: str
    dcontext: str
    channel: str
    lastapp: str
    disposition: str
    line: int


@dataclass(frozen=True, slots=True)
class OurCdr:
    call_id: str
    tenant_id: str | None
    did: str | None
    arrived_at: datetime
    ended_at: datetime
    disposition: str


@dataclass
class ReconcileReport:
    day: date
    asterisk: dict[str, AsteriskCdr]  # calls Asterisk saw that day, by call id
    ours: dict[str, OurCdr]  # our CDRs of that day
    missing_in_ours: list[AsteriskCdr] = field(default_factory=list)
    waiting_in_outbox: list[AsteriskCdr] = field(default_factory=list)
    missing_in_asterisk: list[OurCdr] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return (
            len(self.missing_in_ours) + len(self.waiting_in_outbox) + len(self.missing_in_asterisk)
        )

    @property
    def consistent(self) -> bool:
        return self.differences == 0


def utc_day(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _parse_csv_time(value: str, column: str, line: int) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ReconcileInputError(
            f"line {line}: {column} {value!r} is not 'YYYY-MM-DD HH:MM:SS'"
        ) from None
    return parsed.replace(tzinfo=UTC)


def read_master_csv(path: Path) -> dict[str, list[AsteriskCdr]]:
    """Every row of `path` whose userfield is a call id, by call id (all days)."""
    try:
        handle = path.open(newline="", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ReconcileInputError(f"{path} does not exist") from None
    except OSError as exc:
        raise ReconcileInputError(f"{path}: {exc.strerror}") from None
    calls: dict[str, list[AsteriskCdr]] = {}
    with handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) < len(_BASE_COLUMNS) + 1:
                raise ReconcileInputError(
                    f"{path} line {line}: {len(row)} columns; not a cdr_csv Master.csv with"
                    " its userfield (cdr.conf [csv] loguserfield = yes)"
                )
            try:
                call_id = str(uuid.UUID(row[-1].strip()))
            except ValueError:
                continue  # not one of our calls
            cols = dict(zip(_BASE_COLUMNS, row, strict=False))
            start = _parse_csv_time(cols["start"], "start", line)
            if start is None:
                raise ReconcileInputError(f"{path} line {line}: no start time")
            cdr = AsteriskCdr(
                call_id=call_id,
                start=start,
                end=_parse_csv_time(cols["end"], "end", line),
                src=cols["src"],
                dst=cols["dst"],
                dcontext=cols["dcontext"],
                channel=cols["channel"],
                lastapp=cols["lastapp"],
                disposition=cols["disposition"],
                line=line,
            )
            calls.setdefault(call_id, []).append(cdr)
    return calls


def _chunks(items: list[uuid.UUID]) -> Iterator[list[uuid.UUID]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]


async def _existing(sessions: async_sessionmaker[AsyncSession], ids: Iterable[str]) -> set[str]:
    wanted = [uuid.UUID(i) for i in ids]
    found: set[str] = set()
    async with sessions() as session:
        for chunk in _chunks(wanted):
            rows = await session.scalars(select(m.Cdr.call_id).where(m.Cdr.call_id.in_(chunk)))
            found.update(str(r) for r in rows)
    return found


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    master_csv: Path,
    day: date,
    *,
    outbox_dir: Path | None = None,
) -> ReconcileReport:
    """Compare one UTC day of the `cdr` table with Asterisk's Master.csv."""
    by_id = read_master_csv(master_csv)
    start, end = utc_day(day)
    asterisk = {
        call_id: min(rows, key=lambda r: r.start)
        for call_id, rows in by_id.items()
        if any(start <= r.start < end for r in rows)
    }
    async with sessions() as session:
        result = await session.execute(
            select(
                m.Cdr.call_id,
                m.Cdr.tenant_id,
                m.Cdr.did,
                m.Cdr.arrived_at,
                m.Cdr.ended_at,
                m.Cdr.disposition,
            )
            .where(m.Cdr.arrived_at >= start, m.Cdr.arrived_at < end)
            .order_by(m.Cdr.arrived_at)
        )
        ours = {
            str(call_id): OurCdr(str(call_id), tenant, did, arrived, ended, disposition)
            for call_id, tenant, did, arrived, ended, disposition in result.all()
        }
    report = ReconcileReport(day, asterisk, ours)
    unmatched = [i for i in asterisk if i not in ours]
    # Arrived on our side just after midnight, or (in Asterisk's whole
    # seconds) just before: present on another day is present.
    elsewhere = await _existing(sessions, unmatched) if unmatched else set()
    waiting: set[str] = set()
    if outbox_dir is not None:
        waiting = {c.call_id for c in scan_outbox(outbox_dir).pending}
    for call_id in unmatched:
        if call_id in elsewhere:
            continue
        target = report.waiting_in_outbox if call_id in waiting else report.missing_in_ours
        target.append(asterisk[call_id])
    report.missing_in_ours.sort(key=lambda r: r.start)
    report.waiting_in_outbox.sort(key=lambda r: r.start)
    report.missing_in_asterisk = [cdr for i, cdr in ours.items() if i not in by_id]
    return report


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z" if value else "-"


def render_text(report: ReconcileReport, master_csv: Path) -> str:
    out = [
        f"CDR reconcile for {report.day.isoformat()} (UTC day, by arrival)",
        f"  Asterisk ({master_csv}): {len(report.asterisk)} calls with a call id",
        f"  pbx-controller (table cdr): {len(report.ours)} CDRs",
    ]

    def asterisk_lines(title: str, rows: list[AsteriskCdr]) -> None:
        out.append(f"{title}: {len(rows)}")
        for r in rows:
            out.append(
                f"  {r.call_id}  start {_when(r.start)}  end {_when(r.end)}  src {r.src or '-'}"
                f"  dst {r.dst or '-'}@{r.dcontext or '-'}  last {r.lastapp or '-'}"
                f"  {r.disposition or '-'}  (line {r.line})"
            )

    asterisk_lines("Asterisk saw, no CDR in our table", report.missing_in_ours)
    if report.waiting_in_outbox:
        asterisk_lines(
            "Asterisk saw, CDR waiting in the local outbox (not in the table yet)",
            report.waiting_in_outbox,
        )
    out.append(f"CDR in our table, unknown to Asterisk: {len(report.missing_in_asterisk)}")
    for c in report.missing_in_asterisk:
        out.append(
            f"  {c.call_id}  arrived {_when(c.arrived_at)}  ended {_when(c.ended_at)}"
            f"  tenant {c.tenant_id or '-'}  DID {c.did or '-'}  {c.disposition}"
        )
    out.append("consistent" if report.consistent else f"{report.differences} difference(s)")
    return "\n".join(out)


def render_json(report: ReconcileReport) -> dict[str, Any]:
    def asterisk(r: AsteriskCdr) -> dict[str, Any]:
        return {
            "call_id": r.call_id,
            "start": r.start.isoformat(),
            "end": r.end.isoformat() if r.end else None,
            "src": r.src,
            "dst": r.dst,
            "dcontext": r.dcontext,
            "lastapp": r.lastapp,
            "disposition": r.disposition,
        }

    return {
        "day": report.day.isoformat(),
        "asterisk_calls": len(report.asterisk),
        "our_cdrs": len(report.ours),
        "missing_in_ours": [asterisk(r) for r in report.missing_in_ours],
        "waiting_in_outbox": [asterisk(r) for r in report.waiting_in_outbox],
        "missing_in_asterisk": [
            {
                "call_id": c.call_id,
                "arrived_at": c.arrived_at.isoformat(timespec="milliseconds"),
                "ended_at": c.ended_at.isoformat(timespec="milliseconds"),
                "tenant_id": c.tenant_id,
                "did": c.did,
                "disposition": c.disposition,
            }
            for c in report.missing_in_asterisk
        ],
        "consistent": report.consistent,
    }
