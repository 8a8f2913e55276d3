"""Actions: what the core asks the adapters to do. Frozen and slotted.

Ids (playbacks, bridges, timers) are chosen by the core, derived from the
call id, so a run is deterministic and the adapters can arm waiters first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pbx_controller.core.cdr import CdrRecord
from pbx_controller.core.consent import ConsentEvidence
from pbx_controller.core.recording import RecordingJob

if TYPE_CHECKING:  # agent.py imports this module for its timers
    from pbx_controller.core.agent import AgentStateRecord


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
class Originate:
    """Ring an agent: a new channel `channel_id` to `endpoint`, entering our
    app with `app_args` when answered. Asterisk gives up after `timeout_ms`.
    `originator`: the caller's channel; the leg is asked for the codecs the
    caller has (no transcoding in their bridge) and shares its linkedid."""

    channel_id: str
    endpoint: str
    app_args: str
    caller_id: str = ""
    timeout_ms: int = 15_000
    originator: str = ""


@dataclass(frozen=True, slots=True)
class Bridge:
    """Put the channels into mixing bridge `bridge_id`, the one prepared for
    the call (created first if it was not), on the first channel's lane:
    after that caller's earlier actions."""

    bridge_id: str
    channel_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PrepareBridge:
    """Create the call's mixing bridge while its agents ring, so that the
    answer costs one request (add the channels), not two: a round trip less
    between the agent picking up and the caller hearing them. Empty until
    `Bridge`; destroyed with the call if nobody answers."""

    bridge_id: str


@dataclass(frozen=True, slots=True)
class DestroyBridge:
    bridge_id: str


@dataclass(frozen=True, slots=True)
class StartMoh:
    channel_id: str
    moh_class: str = "default"


@dataclass(frozen=True, slots=True)
class StopMoh:
    channel_id: str


@dataclass(frozen=True, slots=True)
class RecordAgentState:
    """An agent state change, for agent_state_log (readiness billing)."""

    record: AgentStateRecord


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


@dataclass(frozen=True, slots=True)
class OpenRecording:
    """Consent allowed a recording: write its row (with the evidence) now,
    while the call is up, so the CDR can point at it."""

    call_id: str
    tenant_id: str
    started_at: datetime
    evidence: ConsentEvidence


@dataclass(frozen=True, slots=True)
class RecordLeg:
    """Snoop on `target` (spy "in": what that party says) with a new channel
    `channel_id` entering our app with `app_args`, and record the snoop as
    `name`. Pause, resume and stop of the leg follow on the same lane."""

    channel_id: str
    target: str
    name: str
    app_args: str


@dataclass(frozen=True, slots=True)
class PauseRecording:
    channel_id: str  # the leg's snoop channel (its lane)
    name: str


@dataclass(frozen=True, slots=True)
class ResumeRecording:
    channel_id: str
    name: str


@dataclass(frozen=True, slots=True)
class StopRecording:
    """Stop the leg's recording at once and hang up its snoop channel."""

    channel_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ProcessRecording:
    """Every leg finished: merge to stereo, convert, describe, store (or
    erase, after a withdrawal)."""

    job: RecordingJob


Action = (
    Answer
    | Play
    | StopPlayback
    | Hangup
    | ContinueInDialplan
    | Originate
    | Bridge
    | PrepareBridge
    | DestroyBridge
    | StartMoh
    | StopMoh
    | RecordAgentState
    | StartTimer
    | CancelTimer
    | EmitCdr
    | OpenRecording
    | RecordLeg
    | PauseRecording
    | ResumeRecording
    | StopRecording
    | ProcessRecording
)
