"""The data model: typed SQLAlchemy 2 tables for PostgreSQL and SQLite.

Conventions that every table follows:

- Instants are `UTCDateTime`: aware datetimes in, aware UTC datetimes out,
  millisecond precision, naive datetimes rejected.
- Durations are integer milliseconds (`BigInteger`, `*_ms`).
- Money and quantities are `ExactDecimal`: `Decimal` in and out, never a float,
  on both dialects.
- Closed vocabularies are `Literal` aliases; the same tuple builds the CHECK
  constraint, so the table and the type cannot drift apart.
- Constraint and index names come from `NAMING_CONVENTION`, so migrations can
  name what they alter.
- Relationships are `lazy="raise"`: load them explicitly with `selectinload`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

# --------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------

ConsentPolicy = Literal["off", "notify", "opt_in"]
DtmfDigit = Literal["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#"]
# Extra formats besides the WAV: comma-separated, in this order (core RecordingRules).
RecordingFormats = Literal["", "mp3", "opus", "mp3,opus"]
WithdrawalPolicy = Literal["delete", "keep_until_withdrawal"]
Direction = Literal["inbound", "outbound"]
Disposition = Literal[
    "answered",
    "abandoned",
    "overflow",
    "voicemail",
    "message",
    "failed",
    "closed",
    "unknown_did",
    # Served by the controller alone (greeting, announcement), no agent:
    # core.cdr.Disposition.SERVED. Not in the original brief; the CHECK must
    # accept every value the core emits or the CDR would be stuck in the outbox.
    "served",
]
HangupSide = Literal["caller", "agent", "system"]
ConsentOutcome = Literal["n/a", "granted", "declined", "withdrawn", "not_asked"]
SegmentKind = Literal["offer", "transfer", "outbound_attempt"]
AgentStateName = Literal["logged_out", "ready", "paused", "reserved", "on_call", "wrap_up"]
PeriodStatus = Literal["open", "closed"]


def _one_of(column: str, vocabulary: Any) -> str:
    """SQL for `column IN (...)` built from a Literal alias."""
    values = ", ".join("'" + value.replace("'", "''") + "'" for value in get_args(vocabulary))
    return f"{column} IN ({values})"


# --------------------------------------------------------------------------
# Portable column types
# --------------------------------------------------------------------------


class NaiveDatetimeError(ValueError):
    """A naive datetime reached the database; instants must be timezone-aware."""


def utcnow() -> dt.datetime:
    """The current instant, aware UTC, truncated to the stored precision."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _to_stored_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(f"naive datetime {value.isoformat()} where an aware one is needed")
    value = value.astimezone(dt.UTC)
    # Round half up to whole milliseconds, as PostgreSQL's timestamptz(3) does,
    # so both dialects store the same instant.
    rounded = value + dt.timedelta(microseconds=500)
    return rounded.replace(microsecond=rounded.microsecond // 1000 * 1000)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An instant: stored in UTC with millisecond precision, returned aware.

    PostgreSQL stores `timestamptz(3)`. SQLite has no time zone type, so the
    value is stored as naive UTC text (SQLAlchemy's fixed-width format, which
    sorts chronologically) and UTC is attached again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            # Not through type_descriptor(): adapting to the driver's type
            # drops the precision from the DDL.
            return postgresql.TIMESTAMP(timezone=True, precision=3)
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        stored = _to_stored_utc(value)
        # SQLite's DATETIME would silently drop the offset; hand it naive UTC.
        return stored.replace(tzinfo=None) if dialect.name == "sqlite" else stored

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """A `Decimal` that no dialect turns into a float.

    PostgreSQL stores `NUMERIC(precision, scale)`, or unconstrained `NUMERIC`
    (which keeps every digit and the written scale, so `Decimal("310.00")`
    comes back as `310.00`). SQLite binds Decimals as floats, so there the
    value is stored as its exact decimal text.

    With a scale, a value with more fractional digits is an error rather than
    silently rounded: rounding money is the rating engine's decision, once.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int | None = None, scale: int | None = None) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Decimal | int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            raise TypeError(f"expected Decimal, got {type(value).__name__}")
        value = Decimal(value)
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite decimal")
        if self.precision is not None:
            integer_digits = self.precision - (self.scale or 0)
            if value != 0 and value.adjusted() >= integer_digits:
                raise ValueError(f"{value} does not fit NUMERIC({self.precision}, {self.scale})")
        if self.scale is not None:
            scaled = value.quantize(Decimal(1).scaleb(-self.scale))
            if scaled != value:  # "0.100" is fine at scale 2, "0.105" is not
                raise ValueError(f"{value} has more than {self.scale} decimal places")
            value = scaled
        return format(value, "f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


# Rowid alias on SQLite (only INTEGER PRIMARY KEY autoincrements there),
# BIGSERIAL on PostgreSQL. Not Identity(): SQLite has no identity columns and
# autogenerate would report a phantom default change on every compare.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
JSONDoc = JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = ExactDecimal(18, 2)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # A bare `Mapped[datetime]` must never become a naive DateTime column.
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        Decimal: ExactDecimal(),
    }


class CreatedAt:
    created_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


# --------------------------------------------------------------------------
# Configuration: tenants, DIDs, queues, agents
# --------------------------------------------------------------------------


class Tenant(CreatedAt, Base):
    """A client firm whose calls the call center answers and places."""

    __tablename__ = "tenant"
    __table_args__ = (
        CheckConstraint("id <> ''", name="id_not_empty"),
        CheckConstraint(_one_of("consent_policy", ConsentPolicy), name="consent_policy"),
        CheckConstraint(_one_of("consent_agree_digit", DtmfDigit), name="consent_agree_digit"),
        CheckConstraint(_one_of("consent_opt_out_digit", DtmfDigit), name="consent_opt_out_digit"),
        CheckConstraint("consent_agree_digit <> consent_opt_out_digit", name="consent_digits"),
        CheckConstraint("consent_timeout_ms > 0", name="consent_timeout_ms"),
        CheckConstraint(_one_of("recording_formats", RecordingFormats), name="recording_formats"),
        CheckConstraint(
            _one_of("recording_withdrawal", WithdrawalPolicy), name="recording_withdrawal"
        ),
        CheckConstraint("recording_retention_days > 0", name="recording_retention_days"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # slug, e.g. "acme"
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(
        String(64), server_default=text("'Europe/Warsaw'"), default="Europe/Warsaw"
    )
    # Recording consent (core.consent.ConsentRules); opt_in is the GDPR-safe
    # default. Rows from before migration 0002 keep the policy they had.
    consent_policy: Mapped[ConsentPolicy] = mapped_column(
        String(16), server_default=text("'opt_in'"), default="opt_in"
    )
    consent_agree_digit: Mapped[DtmfDigit] = mapped_column(
        String(1), server_default=text("'1'"), default="1"
    )
    consent_opt_out_digit: Mapped[DtmfDigit] = mapped_column(
        String(1), server_default=text("'9'"), default="9"
    )
    consent_timeout_ms: Mapped[int] = mapped_column(
        Integer, server_default=text("5000"), default=5000
    )
    consent_prompt_version: Mapped[str] = mapped_column(
        String(64), server_default=text("'v1'"), default="v1"
    )
    # Media URIs joined with "&" like greeting_sound; NULL: the policy's stock prompt.
    consent_prompt: Mapped[str | None] = mapped_column(String(255))
    greeting_sound: Mapped[str | None] = mapped_column(String(255))
    # Weekly hours and holidays as the call flow reads them; NULL: always open.
    business_hours: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    # How consented recordings are kept (core.consent.RecordingRules).
    recording_formats: Mapped[RecordingFormats] = mapped_column(
        String(32), server_default=text("''"), default=""
    )
    recording_withdrawal: Mapped[WithdrawalPolicy] = mapped_column(
        String(32), server_default=text("'delete'"), default="delete"
    )
    recording_retention_days: Mapped[int] = mapped_column(
        Integer, server_default=text("90"), default=90
    )
    active: Mapped[bool] = mapped_column(Boolean, server_default=true(), default=True)

    dids: Mapped[list[Did]] = relationship(back_populates="tenant", lazy="raise")
    queues: Mapped[list[Queue]] = relationship(back_populates="tenant", lazy="raise")


class Did(CreatedAt, Base):
    """A dialled number that belongs to one tenant."""

    __tablename__ = "did"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)  # E.164 digits
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id"), index=True)
    # The queue this number rings; NULL: the tenant's default call flow.
    queue_id: Mapped[str | None] = mapped_column(
        ForeignKey("queue.id", ondelete="SET NULL"), index=True
    )
    label: Mapped[str | None] = mapped_column(String(200))

    tenant: Mapped[Tenant] = relationship(back_populates="dids", lazy="raise")


class Queue(CreatedAt, Base):
    __tablename__ = "queue"
    __table_args__ = (
        CheckConstraint("id <> ''", name="id_not_empty"),
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint("ring_timeout_ms > 0", name="ring_timeout_ms"),
        CheckConstraint("wrapup_ms >= 0", name="wrapup_ms"),
        CheckConstraint("max_wait_ms > 0", name="max_wait_ms"),
        CheckConstraint("max_callers IS NULL OR max_callers > 0", name="max_callers"),
        CheckConstraint("service_level_ms > 0", name="service_level_ms"),
    )

    # Slug ids like tenants': they travel in channel variables, logs and CLIs.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id"))
    name: Mapped[str] = mapped_column(String(64))
    # The routing engine owns the vocabulary; no CHECK here on purpose.
    strategy: Mapped[str] = mapped_column(
        String(32), server_default=text("'longest_idle'"), default="longest_idle"
    )
    ring_timeout_ms: Mapped[int] = mapped_column(
        Integer, server_default=text("15000"), default=15000
    )
    wrapup_ms: Mapped[int] = mapped_column(Integer, server_default=text("5000"), default=5000)
    max_wait_ms: Mapped[int] = mapped_column(
        BigInteger, server_default=text("300000"), default=300000
    )
    max_callers: Mapped[int | None] = mapped_column(Integer)  # NULL: unlimited
    # Answer-time target for the service-level KPI (e.g. 80 % within 20 s).
    service_level_ms: Mapped[int] = mapped_column(
        Integer, server_default=text("20000"), default=20000
    )
    # Skill requirements, overflow target and announcements, read by the core.
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSONDoc, server_default=text("'{}'"), default=dict
    )

    tenant: Mapped[Tenant] = relationship(back_populates="queues", lazy="raise")
    members: Mapped[list[QueueMember]] = relationship(
        back_populates="queue", lazy="raise", passive_deletes=True
    )


class Agent(CreatedAt, Base):
    __tablename__ = "agent"
    __table_args__ = (CheckConstraint("id <> ''", name="id_not_empty"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # slug, e.g. "anna.k"
    name: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(64), unique=True)  # PJSIP endpoint name
    recording_consent: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    # Agents are deactivated, never deleted: CDRs and the state log point at them.
    active: Mapped[bool] = mapped_column(Boolean, server_default=true(), default=True)

    skills: Mapped[list[AgentSkill]] = relationship(
        back_populates="agent", lazy="raise", passive_deletes=True
    )
    memberships: Mapped[list[QueueMember]] = relationship(
        back_populates="agent", lazy="raise", passive_deletes=True
    )


class AgentSkill(Base):
    __tablename__ = "agent_skill"
    __table_args__ = (CheckConstraint("level BETWEEN 1 AND 10", name="level"),)

    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agent.id", ondelete="CASCADE"), primary_key=True
    )
    skill: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    level: Mapped[int] = mapped_column(Integer)

    agent: Mapped[Agent] = relationship(back_populates="skills", lazy="raise")


class QueueMember(Base):
    __tablename__ = "queue_member"
    __table_args__ = (CheckConstraint("penalty >= 0", name="penalty"),)

    queue_id: Mapped[str] = mapped_column(
        ForeignKey("queue.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agent.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    penalty: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)

    queue: Mapped[Queue] = relationship(back_populates="members", lazy="raise")
    agent: Mapped[Agent] = relationship(back_populates="memberships", lazy="raise")


# --------------------------------------------------------------------------
# Calls: CDRs and their segments, recordings, the agent state log
# --------------------------------------------------------------------------


class Recording(CreatedAt, Base):
    """One recording file and the consent evidence that allowed it."""

    __tablename__ = "recording"
    __table_args__ = (
        CheckConstraint(_one_of("consent_policy", ConsentPolicy), name="consent_policy"),
        CheckConstraint("duration_ms IS NULL OR duration_ms >= 0", name="duration_ms"),
        CheckConstraint("sha256 IS NULL OR length(sha256) = 64", name="sha256"),
        Index(None, "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    # No foreign key: the recording row is written while the call is still up,
    # before its CDR exists.
    call_id: Mapped[uuid.UUID] = mapped_column(Uuid(), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id"))
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    format: Mapped[str] = mapped_column(String(16))  # "wav", "mp3", ...
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)  # known after post-processing
    sha256: Mapped[str | None] = mapped_column(String(64))
    retention_until: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    # Consent evidence, as it was when the recording started.
    consent_policy: Mapped[ConsentPolicy] = mapped_column(String(16))
    consent_prompt_version: Mapped[str | None] = mapped_column(String(64))
    consent_digit: Mapped[str | None] = mapped_column(String(1))
    consent_digit_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    consent_channel: Mapped[str | None] = mapped_column(String(128))  # Asterisk channel id
    erase_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Cdr(CreatedAt, Base):
    """One row per call, keyed by the call's UUID (the idempotent upsert key)."""

    __tablename__ = "cdr"
    __table_args__ = (
        CheckConstraint(_one_of("direction", Direction), name="direction"),
        CheckConstraint(_one_of("disposition", Disposition), name="disposition"),
        CheckConstraint(_one_of("hangup_side", HangupSide), name="hangup_side"),
        CheckConstraint(_one_of("consent", ConsentOutcome), name="consent"),
        # Only a call to a number nobody owns has no tenant.
        CheckConstraint(
            "tenant_id IS NOT NULL OR disposition = 'unknown_did'", name="tenant_or_unknown_did"
        ),
        CheckConstraint(
            "disposition <> 'answered' OR answered_at IS NOT NULL", name="answered_has_answered_at"
        ),
        # No ordering CHECKs between instants: they come from wall clocks
        # (ours, and Asterisk's for adopted calls) that can step back, and a
        # rejected row would sit in the CDR outbox forever.
        CheckConstraint("wait_ms >= 0 AND talk_ms >= 0 AND hold_ms >= 0", name="durations"),
        CheckConstraint(
            "billing_period IS NULL OR (length(billing_period) = 7"
            " AND substr(billing_period, 5, 1) = '-')",
            name="billing_period",
        ),
        # A billed CDR names an existing period of its own tenant.
        ForeignKeyConstraint(
            ["tenant_id", "billing_period"], ["billing_period.tenant_id", "billing_period.period"]
        ),
        Index(None, "tenant_id", "answered_at"),
        Index(None, "tenant_id", "arrived_at"),
        Index(None, "tenant_id", "billing_period"),
        Index(None, "queue_id", "arrived_at"),
        Index(None, "agent_id", "answered_at"),
    )

    call_id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenant.id"))
    direction: Mapped[Direction] = mapped_column(String(8))
    did: Mapped[str | None] = mapped_column(String(32))  # as dialled; DIDs move, CDRs stay
    caller: Mapped[str] = mapped_column(String(128))
    callee: Mapped[str] = mapped_column(String(128))
    queue_id: Mapped[str | None] = mapped_column(ForeignKey("queue.id"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agent.id"))
    arrived_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    wait_ms: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), default=0)
    talk_ms: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), default=0)
    hold_ms: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), default=0)
    disposition: Mapped[Disposition] = mapped_column(String(16))
    hangup_side: Mapped[HangupSide] = mapped_column(String(8))
    consent: Mapped[ConsentOutcome] = mapped_column(String(16))
    recording_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("recording.id", ondelete="SET NULL"), index=True
    )
    billing_period: Mapped[str | None] = mapped_column(String(7))  # "YYYY-MM", set when billed

    segments: Mapped[list[CdrSegment]] = relationship(
        back_populates="cdr",
        lazy="raise",
        order_by="CdrSegment.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class CdrSegment(Base):
    """One agent offer, transfer or outbound attempt within a call."""

    __tablename__ = "cdr_segment"
    __table_args__ = (
        UniqueConstraint("call_id", "seq"),
        CheckConstraint(_one_of("kind", SegmentKind), name="kind"),
        CheckConstraint("seq >= 0", name="seq"),
        Index(None, "agent_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    call_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cdr.call_id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[SegmentKind] = mapped_column(String(16))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agent.id"))
    target: Mapped[str | None] = mapped_column(String(128))  # number dialled, if not an agent
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The call flow owns the vocabulary ("answered", "no_answer", "busy", ...).
    outcome: Mapped[str] = mapped_column(String(32))

    cdr: Mapped[Cdr] = relationship(back_populates="segments", lazy="raise")


class AgentStateLog(Base):
    """An agent state change; readiness for billing is derived from these rows."""

    __tablename__ = "agent_state_log"
    __table_args__ = (
        CheckConstraint(_one_of("state", AgentStateName), name="state"),
        Index(None, "agent_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agent.id"))
    state: Mapped[AgentStateName] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))  # pause reason
    # Tenants whose queues the agent served from this instant: the 1/k share.
    tenant_ids: Mapped[list[str]] = mapped_column(
        JSONDoc, server_default=text("'[]'"), default=list
    )
    # The queues it served from this instant: a restarted controller logs the
    # agent back in to these. [] in rows older than revision 0003.
    queue_ids: Mapped[list[str]] = mapped_column(JSONDoc, server_default=text("'[]'"), default=list)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


# --------------------------------------------------------------------------
# Billing: contracts, periods, invoices
# --------------------------------------------------------------------------


class Contract(CreatedAt, Base):
    """A versioned tenant contract; `body` is the TOML the rating engine parses."""

    __tablename__ = "contract"
    __table_args__ = (
        CheckConstraint("version >= 1", name="version"),
        Index(None, "tenant_id", "valid_from"),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    valid_from: Mapped[dt.date] = mapped_column(Date)  # tenant-local day


class BillingPeriod(CreatedAt, Base):
    __tablename__ = "billing_period"
    __table_args__ = (
        CheckConstraint("length(period) = 7 AND substr(period, 5, 1) = '-'", name="period_format"),
        CheckConstraint(_one_of("status", PeriodStatus), name="status"),
        CheckConstraint(
            "(status = 'open' AND closed_at IS NULL)"
            " OR (status = 'closed' AND closed_at IS NOT NULL)",
            name="closed_at",
        ),
        CheckConstraint(
            "export_sha256 IS NULL OR length(export_sha256) = 64", name="export_sha256"
        ),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)  # "YYYY-MM", tenant-local
    status: Mapped[PeriodStatus] = mapped_column(
        String(8), server_default=text("'open'"), default="open"
    )
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Checksum of the exported files: re-exports must be byte-identical.
    export_sha256: Mapped[str | None] = mapped_column(String(64))


class Invoice(CreatedAt, Base):
    __tablename__ = "invoice"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period"),
        ForeignKeyConstraint(
            ["tenant_id", "period"], ["billing_period.tenant_id", "billing_period.period"]
        ),
        CheckConstraint("length(currency) = 3", name="currency"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(7))
    currency: Mapped[str] = mapped_column(String(3))  # ISO 4217
    net: Mapped[Decimal] = mapped_column(Money)
    vat: Mapped[Decimal] = mapped_column(Money)
    gross: Mapped[Decimal] = mapped_column(Money)

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        lazy="raise",
        order_by="InvoiceLine.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_line"
    __table_args__ = (CheckConstraint("seq >= 0", name="seq"),)

    invoice_id: Mapped[int] = mapped_column(
        ForeignKey("invoice.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32))  # "inbound_minutes", "adjustments", ...
    # Exact, unbounded: a prorated quantity such as 17/31 month keeps every
    # digit, so a re-export of a closed period is byte-identical.
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    unit: Mapped[str] = mapped_column(String(16))  # "min", "call", "month", "h"
    unit_price: Mapped[Decimal] = mapped_column(ExactDecimal())
    amount: Mapped[Decimal] = mapped_column(Money)
    call_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("cdr.call_id"), index=True)

    invoice: Mapped[Invoice] = relationship(back_populates="lines", lazy="raise")


__all__ = [
    "NAMING_CONVENTION",
    "Agent",
    "AgentSkill",
    "AgentStateLog",
    "AgentStateName",
    "Base",
    "BillingPeriod",
    "Cdr",
    "CdrSegment",
    "ConsentOutcome",
    "ConsentPolicy",
    "Contract",
    "CreatedAt",
    "Did",
    "Direction",
    "Disposition",
    "DtmfDigit",
    "ExactDecimal",
    "HangupSide",
    "Invoice",
    "InvoiceLine",
    "NaiveDatetimeError",
    "PeriodStatus",
    "Queue",
    "QueueMember",
    "Recording",
    "RecordingFormats",
    "SegmentKind",
    "Tenant",
    "UTCDateTime",
    "WithdrawalPolicy",
    "utcnow",
]
