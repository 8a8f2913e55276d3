"""The per-call state machine: its transition table and the call record.

    NEW --CallArrived--> GREETING --PlaybackFinished--> [CONSENT] --> QUEUED --Offered--> OFFERING
    OFFERING --AgentLegAnswered--> CONNECTED --(either side hangs up)--> ENDING --> ENDED
    OFFERING --(ring timeout, leg failed)--> QUEUED   (back at its old position)
    any live state --(caller hangs up)--> ENDING/ENDED

Unknown DIDs, closed hours and overflow hand the call back to the dialplan
(ENDING). `Offered` and `Overflowed` are the engine's own moves (routing
and overflow decisions), listed here so the table holds every edge.

CONSENT is the recording announcement (tenants whose policy is not off):
the caller's digits, the end of the prompt or a timeout decide, and the
caller is queued whatever they decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from pbx_controller.core.cdr import CdrSegment, Disposition, HangupSide
from pbx_controller.core.consent import Consent
from pbx_controller.core.machine import TransitionTable


class CallState(Enum):
    NEW = "new"
    GREETING = "greeting"
    CONSENT = "consent"
    QUEUED = "queued"
    OFFERING = "offering"
    CONNECTED = "connected"
    ENDING = "ending"  # we asked Asterisk to hang up or to take the call back
    ENDED = "ended"


S = CallState
_LIVE = (S.GREETING, S.CONSENT, S.QUEUED, S.OFFERING, S.CONNECTED)

_EDGES: dict[tuple[CallState, str], frozenset[CallState]] = {
    # Known DID: answer and greet. Unknown DID or closed: back to the dialplan.
    (S.NEW, "CallArrived"): frozenset({S.GREETING, S.ENDING}),
    # Left behind by a stopped or killed run: still talking to its agent,
    # it goes on (connected); otherwise it goes to the dialplan fallback.
    (S.NEW, "CallAdopted"): frozenset({S.ENDING, S.CONNECTED}),
    # The greeting ends: ask for recording consent, or queue the caller, or
    # (no queue) say goodbye; a greeting cut short with the caller still
    # there goes to the fallback.
    (S.GREETING, "PlaybackFinished"): frozenset({S.CONSENT, S.QUEUED, S.ENDING}),
    # The consent prompt: a digit, its end or a timeout decides; a failed
    # prompt is no consent. The caller is queued either way.
    (S.CONSENT, "PlaybackFinished"): frozenset({S.CONSENT, S.QUEUED}),
    (S.CONSENT, "DtmfReceived"): frozenset({S.CONSENT, S.QUEUED}),
    (S.CONSENT, "TimerFired"): frozenset({S.CONSENT, S.QUEUED}),
    (S.CONSENT, "ActionFailed"): frozenset({S.CONSENT, S.QUEUED, S.ENDING}),
    (S.CONSENT, "HangupRequested"): frozenset({S.ENDING}),
    (S.GREETING, "ActionFailed"): frozenset({S.ENDING}),
    (S.GREETING, "DtmfReceived"): frozenset({S.GREETING}),
    (S.GREETING, "HangupRequested"): frozenset({S.ENDING}),
    # Waiting: routing offers the call; timers announce or overflow it.
    (S.QUEUED, "Offered"): frozenset({S.OFFERING}),
    # Overflow: to another queue of the tenant, or back to the dialplan.
    (S.QUEUED, "Overflowed"): frozenset({S.QUEUED, S.ENDING}),
    (S.QUEUED, "TimerFired"): frozenset({S.QUEUED, S.ENDING}),
    (S.QUEUED, "PlaybackFinished"): frozenset({S.QUEUED}),
    (S.QUEUED, "DtmfReceived"): frozenset({S.QUEUED}),
    (S.QUEUED, "HangupRequested"): frozenset({S.ENDING}),
    (S.QUEUED, "ActionFailed"): frozenset({S.QUEUED, S.ENDING}),
    # Ringing agents: the first answer connects; misses go back to the queue.
    # A leg that Asterisk could not make because the caller's channel is
    # gone (the caller hung up meanwhile) ends the call.
    (S.OFFERING, "AgentLegAnswered"): frozenset({S.CONNECTED, S.OFFERING}),
    (S.OFFERING, "AgentLegGone"): frozenset({S.OFFERING, S.QUEUED, S.ENDING}),
    (S.OFFERING, "TimerFired"): frozenset({S.OFFERING, S.QUEUED, S.ENDING}),
    (S.OFFERING, "Overflowed"): frozenset({S.QUEUED, S.ENDING}),
    (S.OFFERING, "PlaybackFinished"): frozenset({S.OFFERING}),
    (S.OFFERING, "DtmfReceived"): frozenset({S.OFFERING}),
    (S.OFFERING, "HangupRequested"): frozenset({S.ENDING}),
    (S.OFFERING, "ActionFailed"): frozenset({S.OFFERING, S.ENDING}),
    # Talking: either side hanging up ends it; the agent enters wrap-up.
    (S.CONNECTED, "AgentLegGone"): frozenset({S.ENDING}),
    (S.CONNECTED, "HangupRequested"): frozenset({S.ENDING}),
    (S.CONNECTED, "DtmfReceived"): frozenset({S.CONNECTED}),
    (S.CONNECTED, "PlaybackFinished"): frozenset({S.CONNECTED}),
    (S.CONNECTED, "ActionFailed"): frozenset({S.ENDING}),
    (S.CONNECTED, "TimerFired"): frozenset({S.CONNECTED}),
    # While ending, late events of the same call are expected and harmless.
    (S.ENDING, "PlaybackFinished"): frozenset({S.ENDING}),
    (S.ENDING, "ActionFailed"): frozenset({S.ENDING}),
    (S.ENDING, "DtmfReceived"): frozenset({S.ENDING}),
    (S.ENDING, "HangupRequested"): frozenset({S.ENDING}),
    (S.ENDING, "AgentLegGone"): frozenset({S.ENDING}),
    (S.ENDING, "AgentLegAnswered"): frozenset({S.ENDING}),
    (S.ENDING, "TimerFired"): frozenset({S.ENDING}),
}
# The caller's channel leaving the app or vanishing ends the call from anywhere live.
for _state in (*_LIVE, S.ENDING):
    _EDGES[(_state, "ChannelHungUp")] = frozenset({S.ENDED})
    _EDGES[(_state, "ChannelLeftApp")] = frozenset({S.ENDED})
# A leg answering after another agent won (or after the offer timed out) is hung up.
_EDGES[(S.QUEUED, "AgentLegAnswered")] = frozenset({S.QUEUED})
_EDGES[(S.CONNECTED, "AgentLegAnswered")] = frozenset({S.CONNECTED})
_EDGES[(S.QUEUED, "AgentLegGone")] = frozenset({S.QUEUED})
# Ops or the agent acting on the recording: the call flow does not move,
# except that "stop recording" while the caller is asked decides consent
# (declined), which queues the caller as a digit would.
for _state in (*_LIVE, S.ENDING):
    _EDGES[(_state, "CallCommand")] = frozenset({_state})
_EDGES[(S.CONSENT, "CallCommand")] = frozenset({S.CONSENT, S.QUEUED, S.ENDING})

CALL_TRANSITIONS: TransitionTable[CallState] = TransitionTable("call", _EDGES)
# Table events that are the engine's own decisions rather than core events.
ENGINE_MOVES = frozenset({"Offered", "Overflowed", "AgentLegGone"})


@dataclass(slots=True)
class Call:
    """One call as the core tracks it. Mutated only by the engine."""

    call_id: str
    channel_id: str
    did: str
    caller: str
    arrived_at: datetime
    tenant_id: str | None = None
    queue_id: str | None = None
    state: CallState = CallState.NEW
    enqueued_at: datetime | None = None  # in the current queue (routing, relaxation)
    first_enqueued_at: datetime | None = None
    seq: int = 0
    priority: int = 0
    missed_by: frozenset[str] = frozenset()
    queues_visited: tuple[str, ...] = ()
    queue_timers: list[str] = field(default_factory=list)
    answered_at: datetime | None = None
    agent_id: str | None = None
    agent_channel: str | None = None
    bridge_id: str | None = None
    ring_timer: str | None = None
    talk_ended_at: datetime | None = None
    ended_at: datetime | None = None
    disposition: Disposition = Disposition.FAILED
    hangup_side: HangupSide = HangupSide.CALLER
    playbacks: int = 0
    legs: int = 0
    timers: int = 0
    announcing: bool = False
    announcement: str | None = None  # the playback id of the current announcement
    hold_music: str | None = None  # the class playing to the caller; None: no music
    hold_timer: str | None = None  # the hold music waits for it (HOLD_MUSIC_GRACE_MS)
    # Open offers: agent id -> (its leg's channel id, when it started ringing).
    ringing: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    segments: list[CdrSegment] = field(default_factory=list)
    # Recording consent (None: never asked, e.g. no queue to wait in).
    consent: Consent | None = None
    consent_prompt: str | None = None  # the prompt's playback id while it plays
    consent_timer: str | None = None
    recorded: bool = False  # a recording was started
    agent_digit: str = ""  # the agent's last digit, for in-call feature codes

    def next_playback_id(self) -> str:
        self.playbacks += 1
        return f"{self.call_id}-pb{self.playbacks}"

    def next_leg_id(self) -> str:
        self.legs += 1
        return f"{self.call_id}-leg{self.legs}"

    def timer_id(self, kind: str) -> str:
        """Timer ids start with the call id, so a fired timer finds its call."""
        self.timers += 1
        return f"{self.call_id}/{kind}/{self.timers}"
