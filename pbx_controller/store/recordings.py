"""The `recording` table: rows with their consent evidence, the link to the
CDR, erasure flags, the retention purge, and tenant-scoped look-ups.

One recording per call: the file layout is `<tenant>/<yyyy>/<mm>/<call>.<ext>`
(pbx_controller.recordings.storage). Each stored *file* is one row: the WAV
row is the recording the CDR links to (`cdr.recording_id`); an MP3 or Opus
copy is a row of its own (id derived from the WAV row's id, same call,
evidence and retention), so every file has its sha256 and is purged by the
same query.

Life of a row:

1. `add_recording` when the recording starts (the call is still up): path,
   format, consent evidence, `retention_until` = start + the tenant's
   `recording_retention_days`. Duration and sha256 are NULL until
2. `complete_recording` stores what post-processing measured, adds the
   copies' rows, or flags the recording for erasure when nothing was kept.
3. `flag_for_erasure` (consent withdrawn under the tenant's "delete" policy,
   or a data subject's request) sets `erase_requested_at`.
4. `purge` removes the file first, then sets `deleted_at`. The row stays:
   it is the evidence of what was recorded, with whose consent, and when it
   was destroyed.

The CDR link works in both orders, idempotently: the recording's writer
links an existing CDR, and the CDR's writer calls `link_cdrs` in its own
transaction to link an existing recording. Both take the same per-call lock
first (a PostgreSQL transaction advisory lock; SQLite has one writer at a
time anyway), so two concurrent transactions cannot each miss the other's
uncommitted row: whichever links second sees the first one committed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pbx_controller.store import models as m

if TYPE_CHECKING:
    from pbx_controller.core.consent import ConsentEvidence
    from pbx_controller.recordings.storage import RecordingStorage

log = logging.getLogger(__name__)

PRIMARY_FORMAT = "wav"
# Namespace of the ids of a recording's copies: uuid5(NS, f"{wav_id}/{format}").
_COPY_NAMESPACE = uuid.UUID("6f1d6c2e-3b0a-4d49-9a55-7c1f0f3b9e10")
# PostgreSQL advisory lock class for "linking a call's CDR and recording"
# (the two-int4 key space, apart from config_store's single bigint key).
_LINK_LOCK_CLASS = 0x52434C4B  # "RCLK"
PURGE_BATCH = 500
STATEMENT_TIMEOUT_S = 60.0

PurgeReason = Literal["retention", "erasure"]


class RecordingStoreError(Exception):
    """A recording row could not be written as asked."""


class UnknownTenant(RecordingStoreError):
    pass


class RecordingExists(RecordingStoreError):
    """The call already has a different recording (one per call)."""


class UnknownRecording(RecordingStoreError):
    pass


@dataclass(frozen=True, slots=True)
class ConsentProof:
    """The consent evidence a recording row keeps (as it was at the start)."""

    policy: m.ConsentPolicy
    prompt_version: str | None = None
    digit: str | None = None
    digit_at: dt.datetime | None = None
    channel: str | None = None  # the Asterisk channel that gave consent

    @classmethod
    def from_evidence(cls, evidence: ConsentEvidence) -> ConsentProof:
        return cls(
            evidence.policy.value,
            evidence.prompt_version,
            evidence.digit,
            evidence.at,
            evidence.channel_id,
        )


@dataclass(frozen=True, slots=True)
class NewRecording:
    recording_id: uuid.UUID
    call_id: uuid.UUID
    tenant_id: str
    path: str  # relative to the recordings base (RecordingStorage.path_for)
    started_at: dt.datetime
    consent: ConsentProof
    format: str = PRIMARY_FORMAT


class StoredFile(Protocol):
    """What post-processing tells about one file (postprocess.RecordingFile)."""

    @property
    def format(self) -> str: ...
    @property
    def relative(self) -> str: ...
    @property
    def duration_ms(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """One row as ops see it (`pbxctl recordings list|show`)."""

    id: uuid.UUID
    call_id: uuid.UUID
    tenant_id: str
    path: str
    format: str
    duration_ms: int | None
    sha256: str | None
    created_at: dt.datetime
    retention_until: dt.datetime
    consent_policy: str
    consent_prompt_version: str | None
    consent_digit: str | None
    consent_digit_at: dt.datetime | None
    consent_channel: str | None
    erase_requested_at: dt.datetime | None
    deleted_at: dt.datetime | None
    # From the call's CDR, when it has been written.
    cdr_consent: str | None
    cdr_recording_id: uuid.UUID | None

    @property
    def status(self) -> str:
        if self.deleted_at is not None:
            return "deleted"
        if self.erase_requested_at is not None:
            return "erase_requested"
        if self.sha256 is None:
            return "recording"  # not post-processed yet
        return "stored"


@dataclass(frozen=True, slots=True)
class PurgeItem:
    recording_id: uuid.UUID
    tenant_id: str
    call_id: uuid.UUID
    format: str
    path: str
    reason: PurgeReason
    # True removed, False was already missing, None dry run or not removed.
    file_removed: bool | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PurgeReport:
    items: tuple[PurgeItem, ...]

    @property
    def purged(self) -> tuple[PurgeItem, ...]:
        return tuple(i for i in self.items if i.error is None)

    @property
    def failed(self) -> tuple[PurgeItem, ...]:
        return tuple(i for i in self.items if i.error is not None)


def recording_id_for(call_id: uuid.UUID) -> uuid.UUID:
    """The row id of a call's recording (its WAV): one per call, stable, so
    a retried insert or a re-run after a crash lands on the same row."""
    return uuid.uuid5(_COPY_NAMESPACE, f"{call_id}/recording")


def copy_id(recording_id: uuid.UUID, fmt: str) -> uuid.UUID:
    """The row id of a recording's copy in `fmt` (stable: reruns upsert)."""
    return uuid.uuid5(_COPY_NAMESPACE, f"{recording_id}/{fmt}")


# -- writing -----------------------------------------------------------------------


def _insert(session: AsyncSession, table: type[m.Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with the dialect's ON CONFLICT clauses."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def lock_calls(session: AsyncSession, call_ids: Sequence[uuid.UUID]) -> None:
    """The calls' link locks, held until the transaction ends (PostgreSQL;
    SQLite has one writer at a time already). One round trip for a whole
    batch of CDRs, taken in ascending key order."""
    if not call_ids or session.get_bind().dialect.name != "postgresql":
        return
    # Two calls sharing a key only wait for each other: harmless.
    keys = sorted({int.from_bytes(c.bytes[:4], "big", signed=True) for c in call_ids})
    await session.execute(
        sa.text(
            "SELECT count(pg_advisory_xact_lock(:lock_class, k))"
            " FROM (SELECT unnest(CAST(:keys AS integer[])) AS k ORDER BY 1) AS ordered"
        ),
        {"lock_class": _LINK_LOCK_CLASS, "keys": keys},
    )


async def link_cdrs(session: AsyncSession, call_ids: Sequence[uuid.UUID]) -> int:
    """Within the caller's transaction: point each call's CDR at its recording
    when both rows exist and the CDR has no link yet. Returns CDRs linked.

    For the CDR writer, right after its insert (same transaction), and for
    the recording writer. A CDR the core wrote with consent 'n/a' (not
    known) becomes 'granted': a recording starts only with consent. Any
    other outcome the core wrote ('withdrawn', ...) is left as it is.
    """
    if not call_ids:
        return 0
    await lock_calls(session, call_ids)
    primary = (
        sa.select(m.Recording.id)
        .where(
            m.Recording.call_id == m.Cdr.call_id,
            m.Recording.tenant_id == m.Cdr.tenant_id,
            m.Recording.format == PRIMARY_FORMAT,
        )
        .order_by(m.Recording.created_at, m.Recording.id)
        .limit(1)
        .scalar_subquery()
    )
    result = await session.execute(
        sa.update(m.Cdr)
        .where(
            m.Cdr.call_id.in_(call_ids),
            m.Cdr.recording_id.is_(None),
            primary.is_not(None),
        )
        .values(
            recording_id=primary,
            consent=sa.case((m.Cdr.consent == "n/a", "granted"), else_=m.Cdr.consent),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def link_cdr(sessions: async_sessionmaker[AsyncSession], call_id: uuid.UUID) -> bool:
    async with sessions() as session, session.begin():
        return await link_cdrs(session, [call_id]) > 0


async def add_recording(
    sessions: async_sessionmaker[AsyncSession], new: NewRecording
) -> dt.datetime:
    """Insert the row as the recording starts (idempotent on its id) and
    link the CDR if it is there already. Returns the retention date."""
    if new.started_at.tzinfo is None or new.started_at.utcoffset() is None:
        raise ValueError("started_at must be timezone-aware")
    async with sessions() as session, session.begin():
        await lock_calls(session, [new.call_id])
        days = await session.scalar(
            sa.select(m.Tenant.recording_retention_days).where(m.Tenant.id == new.tenant_id)
        )
        if days is None:
            raise UnknownTenant(f"no tenant {new.tenant_id!r}")
        retention_until = new.started_at + dt.timedelta(days=days)
        consent = new.consent
        await session.execute(
            _insert(session, m.Recording)
            .values(
                id=new.recording_id,
                call_id=new.call_id,
                tenant_id=new.tenant_id,
                path=new.path,
                format=new.format,
                created_at=new.started_at,
                retention_until=retention_until,
                consent_policy=consent.policy,
                consent_prompt_version=consent.prompt_version,
                consent_digit=consent.digit,
                consent_digit_at=consent.digit_at,
                consent_channel=consent.channel,
            )
            .on_conflict_do_nothing()
        )
        row = await session.get(m.Recording, new.recording_id)
        if row is None or (row.call_id, row.path) != (new.call_id, new.path):
            raise RecordingExists(
                f"call {new.call_id} already has a recording at {new.path}"
                if row is None
                else f"recording {new.recording_id} exists for another call or path"
            )
        await link_cdrs(session, [new.call_id])
        return row.retention_until


async def complete_recording(
    sessions: async_sessionmaker[AsyncSession],
    recording_id: uuid.UUID,
    files: Sequence[StoredFile],
    *,
    now: dt.datetime,
) -> None:
    """Store what post-processing measured: the WAV's duration and sha256,
    and one row per copy (MP3, Opus). No files (nothing left to keep):
    the recording is flagged for erasure instead. Idempotent."""
    async with sessions() as session, session.begin():
        row = await session.get(m.Recording, recording_id, with_for_update=True)
        if row is None:
            raise UnknownRecording(f"no recording {recording_id}")
        if not files:
            if row.erase_requested_at is None:
                row.erase_requested_at = now
            return
        primary, *copies = files
        if (primary.format, primary.relative) != (row.format, row.path):
            raise RecordingStoreError(
                f"recording {recording_id} is {row.path}, post-processing wrote {primary.relative}"
            )
        row.duration_ms, row.sha256 = primary.duration_ms, primary.sha256
        for file in copies:
            statement = _insert(session, m.Recording).values(
                id=copy_id(recording_id, file.format),
                call_id=row.call_id,
                tenant_id=row.tenant_id,
                path=file.relative,
                format=file.format,
                duration_ms=file.duration_ms,
                sha256=file.sha256,
                created_at=row.created_at,
                retention_until=row.retention_until,
                consent_policy=row.consent_policy,
                consent_prompt_version=row.consent_prompt_version,
                consent_digit=row.consent_digit,
                consent_digit_at=row.consent_digit_at,
                consent_channel=row.consent_channel,
                erase_requested_at=row.erase_requested_at,
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["id"],
                    set_={"duration_ms": file.duration_ms, "sha256": file.sha256},
                )
            )


async def flag_for_erasure(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    call_id: uuid.UUID,
    *,
    now: dt.datetime,
    withdrawn: bool = False,
) -> int:
    """Mark the call's recording (every file) for the next purge. With
    `withdrawn`, the CDR's consent becomes 'withdrawn' too. Returns the rows
    newly flagged (0: none, another tenant's call, or flagged already)."""
    async with sessions() as session, session.begin():
        await lock_calls(session, [call_id])
        result = await session.execute(
            sa.update(m.Recording)
            .where(
                m.Recording.tenant_id == tenant_id,
                m.Recording.call_id == call_id,
                m.Recording.erase_requested_at.is_(None),
                m.Recording.deleted_at.is_(None),
            )
            .values(erase_requested_at=now)
            .execution_options(synchronize_session=False)
        )
        if withdrawn:
            await session.execute(
                sa.update(m.Cdr)
                .where(
                    m.Cdr.tenant_id == tenant_id,
                    m.Cdr.call_id == call_id,
                    m.Cdr.consent.in_(("granted", "n/a")),
                )
                .values(consent="withdrawn")
                .execution_options(synchronize_session=False)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- purge ----------------------------------------------------------------------------


async def purge(
    sessions: async_sessionmaker[AsyncSession],
    storage: RecordingStorage,
    *,
    now: dt.datetime,
    dry_run: bool = False,
    tenant_id: str | None = None,
    batch: int = PURGE_BATCH,
) -> PurgeReport:
    """Delete every file past its retention or flagged for erasure, then
    mark its row `deleted_at`. File first, then row: a crash in between
    leaves a row whose file is gone, which the next run logs and marks.
    Each removal is logged (tenant, call, reason, path)."""
    from pbx_controller.recordings.storage import UnsafePath

    due = sa.and_(
        m.Recording.deleted_at.is_(None),
        sa.or_(m.Recording.retention_until <= now, m.Recording.erase_requested_at.is_not(None)),
    )
    if tenant_id is not None:
        due = sa.and_(due, m.Recording.tenant_id == tenant_id)
    items: list[PurgeItem] = []
    after: uuid.UUID | None = None
    while True:
        query = sa.select(m.Recording).where(due).order_by(m.Recording.id).limit(batch)
        if after is not None:
            query = query.where(m.Recording.id > after)
        async with asyncio.timeout(STATEMENT_TIMEOUT_S), sessions() as session:
            rows = (await session.scalars(query)).all()
        if not rows:
            break
        after = rows[-1].id
        done: list[uuid.UUID] = []
        for row in rows:
            reason: PurgeReason = "erasure" if row.erase_requested_at is not None else "retention"
            item = PurgeItem(row.id, row.tenant_id, row.call_id, row.format, row.path, reason, None)
            what = f"tenant {row.tenant_id} call {row.call_id} {row.format} ({reason}) {row.path}"
            if dry_run:
                log.info("would purge recording: %s", what)
                items.append(item)
                continue
            try:
                stored = storage.resolve(row.path)
                removed = await asyncio.to_thread(storage.remove, stored)
            except (UnsafePath, OSError) as exc:
                log.error("recording not purged: %s: %s", what, exc)
                items.append(_replace_item(item, None, str(exc)))
                continue
            if removed:
                log.info("purged recording: %s", what)
            else:
                log.warning("purged recording: %s: the file was already missing", what)
            items.append(_replace_item(item, removed, None))
            done.append(row.id)
        if done:
            async with (
                asyncio.timeout(STATEMENT_TIMEOUT_S),
                sessions() as session,
                session.begin(),
            ):
                await session.execute(
                    sa.update(m.Recording)
                    .where(m.Recording.id.in_(done), m.Recording.deleted_at.is_(None))
                    .values(deleted_at=now)
                    .execution_options(synchronize_session=False)
                )
    return PurgeReport(tuple(items))


def _replace_item(item: PurgeItem, removed: bool | None, error: str | None) -> PurgeItem:
    return PurgeItem(
        item.recording_id,
        item.tenant_id,
        item.call_id,
        item.format,
        item.path,
        item.reason,
        removed,
        error,
    )


# -- look-ups (always within one tenant) ---------------------------------------------------


async def tenant_exists(sessions: async_sessionmaker[AsyncSession], tenant_id: str) -> bool:
    async with sessions() as session:
        return await session.get(m.Tenant, tenant_id) is not None


def _info_query() -> Any:  # Select's generic form differs between SQLAlchemy 2.0 and 2.1
    return sa.select(m.Recording, m.Cdr.consent, m.Cdr.recording_id).outerjoin(
        m.Cdr,
        sa.and_(m.Cdr.call_id == m.Recording.call_id, m.Cdr.tenant_id == m.Recording.tenant_id),
    )


def _info(
    row: m.Recording, cdr_consent: str | None, cdr_recording: uuid.UUID | None
) -> RecordingInfo:
    return RecordingInfo(
        row.id,
        row.call_id,
        row.tenant_id,
        row.path,
        row.format,
        row.duration_ms,
        row.sha256,
        row.created_at,
        row.retention_until,
        row.consent_policy,
        row.consent_prompt_version,
        row.consent_digit,
        row.consent_digit_at,
        row.consent_channel,
        row.erase_requested_at,
        row.deleted_at,
        cdr_consent,
        cdr_recording,
    )


async def list_recordings(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    include_deleted: bool = False,
) -> list[RecordingInfo]:
    """The tenant's recordings started in [since, until), oldest first."""
    query = _info_query().where(m.Recording.tenant_id == tenant_id)
    if since is not None:
        query = query.where(m.Recording.created_at >= since)
    if until is not None:
        query = query.where(m.Recording.created_at < until)
    if not include_deleted:
        query = query.where(m.Recording.deleted_at.is_(None))
    query = query.order_by(m.Recording.created_at, m.Recording.call_id, m.Recording.format)
    async with sessions() as session:
        return [_info(*row) for row in await session.execute(query)]


async def recordings_of_call(
    sessions: async_sessionmaker[AsyncSession], tenant_id: str, call_id: uuid.UUID
) -> list[RecordingInfo]:
    """Every file of the call's recording, WAV first; [] when the call has
    none in this tenant (another tenant's call looks exactly like no call)."""
    query = (
        _info_query()
        .where(m.Recording.tenant_id == tenant_id, m.Recording.call_id == call_id)
        .order_by(sa.case((m.Recording.format == PRIMARY_FORMAT, 0), else_=1), m.Recording.format)
    )
    async with sessions() as session:
        return [_info(*row) for row in await session.execute(query)]


__all__ = [
    "PRIMARY_FORMAT",
    "ConsentProof",
    "NewRecording",
    "PurgeItem",
    "PurgeReason",
    "PurgeReport",
    "RecordingExists",
    "RecordingInfo",
    "RecordingStoreError",
    "StoredFile",
    "UnknownRecording",
    "UnknownTenant",
    "add_recording",
    "complete_recording",
    "copy_id",
    "flag_for_erasure",
    "link_cdr",
    "link_cdrs",
    "list_recordings",
    "lock_calls",
    "purge",
    "recordings_of_call",
    "tenant_exists",
]
