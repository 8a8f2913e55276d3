"""Actions: what the core asks the adapters to do. Frozen and slotted.

Ids (playbacks, bridges, timers) are chosen by the core, derived from the
call id, so a run is deterministic and the adapters can arm waiters first.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbx_controller.core.cdr import CdrRecord


@dataclass(frozen=True, slots=True)
class Answer:
    channel_id: str


@dataclass(frozen=True, slots=True)
class Play:
    channel_id: str
    playback_id: str
    media: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopPlayback:
    playback_id: str


@dataclass(frozen=True, slots=True)
class Hangup:
    channel_id: str
    reason: str = "normal"


@dataclass(frozen=True, slots=True)
class ContinueInDialplan:
    """Hand the channel back to Asterisk's dialplan (fallbacks, messages)."""

    channel_id: str
    context: str
    extension: str = "s"
    priority: int = 1


@dataclass(frozen=True, slots=True)
class StartTimer:
    timer_id: str
    delay_ms: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer_id: str


@dataclass(frozen=True, slots=True)
class EmitCdr:
    """A finished call: the service makes it durable (outbox, then database)."""

    cdr: CdrRecord


Action = (
    Answer | Play | StopPlayback | Hangup | ContinueInDialplan | StartTimer | CancelTimer | EmitCdr
)
