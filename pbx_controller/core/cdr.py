"""The call detail record the core assembles from its own call state.

Not Asterisk's CDR: Asterisk splits a call per leg and counts queue waits
as talk. Ours is one record per call, keyed by the call id the dialplan
gave it, with every instant UTC-aware and every duration in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class Disposition(Enum):
    ANSWERED = "answered"
    ABANDONED = "abandoned"
    OVERFLOW = "overflow"
    VOICEMAIL = "voicemail"
    MESSAGE = "message"
    FAILED = "failed"
    CLOSED = "closed"
    UNKNOWN_DID = "unknown_did"
    # Served by the controller itself (greeting, announcement) with no agent.
    SERVED = "served"


class HangupSide(Enum):
    CALLER = "caller"
    AGENT = "agent"
    SYSTEM = "system"


def _aware(value: datetime | None, name: str) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def ms_between(start: datetime, end: datetime) -> int:
    """Whole milliseconds from start to end (never negative)."""
    delta = end - start
    ms = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    return max(ms, 0)


@dataclass(frozen=True, slots=True)
class CdrSegment:
    """One agent offer of the call (a row of cdr_segment): who rang, from
    when to when, and how it ended (answered, missed, cancelled)."""

    kind: str
    agent_id: str | None
    started_at: datetime
    ended_at: datetime
    outcome: str


@dataclass(frozen=True, slots=True)
class CdrRecord:
    call_id: str
    tenant_id: str | None
    direction: str
    did: str
    caller: str
    arrived_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    disposition: Disposition
    hangup_side: HangupSide
    queue_id: str | None = None
    agent_id: str | None = None
    wait_ms: int = 0
    talk_ms: int = 0
    hold_ms: int = 0
    consent: str = "n/a"
    recording_id: str | None = None
    segments: tuple[CdrSegment, ...] = ()

    def __post_init__(self) -> None:
        _aware(self.arrived_at, "arrived_at")
        _aware(self.answered_at, "answered_at")
        _aware(self.ended_at, "ended_at")
        if self.ended_at < self.arrived_at:
            raise ValueError("ended_at is before arrived_at")
        for name in ("wait_ms", "talk_ms", "hold_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
