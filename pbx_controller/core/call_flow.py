"""The per-call state machine: its transition table and the call record.

Stages today: DID -> tenant, answer, greeting, hang-up. The queue, the
agent leg and the bridge slot in between GREETING and ENDING as routing
lands; the table below is where each new edge is declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from pbx_controller.core.cdr import Disposition, HangupSide
from pbx_controller.core.machine import TransitionTable


class CallState(Enum):
    NEW = "new"
    GREETING = "greeting"
    ENDING = "ending"  # we asked Asterisk to hang up or to take the call back
    ENDED = "ended"


S = CallState

CALL_TRANSITIONS: TransitionTable[CallState] = TransitionTable(
    "call",
    {
        # Known DID: answer and greet. Unknown DID: back to the dialplan's message.
        (S.NEW, "CallArrived"): frozenset({S.GREETING, S.ENDING}),
        # Left behind by a killed run: hand it to the dialplan fallback.
        (S.NEW, "CallAdopted"): frozenset({S.ENDING}),
        (S.GREETING, "PlaybackFinished"): frozenset({S.GREETING, S.ENDING}),
        (S.GREETING, "ActionFailed"): frozenset({S.ENDING}),
        (S.GREETING, "ChannelHungUp"): frozenset({S.ENDED}),
        (S.GREETING, "ChannelLeftApp"): frozenset({S.ENDED}),
        (S.GREETING, "DtmfReceived"): frozenset({S.GREETING}),
        # A greeting cut short by a hang-up: the end follows.
        (S.GREETING, "HangupRequested"): frozenset({S.ENDING}),
        # While ending, late events of the same call are expected and harmless.
        (S.ENDING, "PlaybackFinished"): frozenset({S.ENDING}),
        (S.ENDING, "ActionFailed"): frozenset({S.ENDING}),
        (S.ENDING, "DtmfReceived"): frozenset({S.ENDING}),
        (S.ENDING, "HangupRequested"): frozenset({S.ENDING}),
        (S.ENDING, "ChannelHungUp"): frozenset({S.ENDED}),
        (S.ENDING, "ChannelLeftApp"): frozenset({S.ENDED}),
    },
)


@dataclass(slots=True)
class Call:
    """One inbound call as the core tracks it. Mutated only by the engine."""

    call_id: str
    channel_id: str
    did: str
    caller: str
    arrived_at: datetime
    tenant_id: str | None = None
    state: CallState = CallState.NEW
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    disposition: Disposition = Disposition.FAILED
    hangup_side: HangupSide = HangupSide.CALLER
    playbacks: int = 0

    def next_playback_id(self) -> str:
        self.playbacks += 1
        return f"{self.call_id}-pb{self.playbacks}"
