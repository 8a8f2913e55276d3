"""One call's recording, as the core tracks it: pure bookkeeping.

A recording exists only when `consent.recording_allowed` said yes at the
moment the caller and the agent were bridged. Each party is recorded
through its own snoop channel (spy "in": what that party says), so the
stored file can be stereo, caller left and agent right.

Everything is measured on the *recording timeline*: milliseconds since the
engine decided to record (`started_at`). The legs' own start offsets, the
paused spans (PCI) and the masked spans (DTMF tones) are on it, and
post-processing lays the leg files out on it.

    RECORDING --pause--> PAUSED --resume--> RECORDING
    RECORDING|PAUSED --stop (call over, withdrawal)--> STOPPING
    STOPPING --every started leg finished--> DONE (ProcessRecording)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from pbx_controller.core.cdr import ms_between
from pbx_controller.core.consent import ConsentEvidence, RecordingRules, WithdrawalPolicy
from pbx_controller.core.machine import TransitionTable

# Only calls with a dialplan-born UUID are recorded: the recording's row id
# and file name derive from it (the store does that, not the core).
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# App arguments of a snoop channel: "snoop,<call id>,<role>". The adapters
# ignore its StasisStart: the core never routes or answers a snoop.
SNOOP_ROLE = "snoop"
ROLES = ("caller", "agent")
# A DTMF tone is reported when it ends, with its length; mask a little
# more on either side (the tone's ramp, and the 20 ms frames around it).
DTMF_MARGIN_MS = 60


class RecordingState(Enum):
    RECORDING = "recording"
    PAUSED = "paused"
    STOPPING = "stopping"
    DONE = "done"


R = RecordingState
RECORDING_TRANSITIONS: TransitionTable[RecordingState] = TransitionTable(
    "recording",
    {
        (R.RECORDING, "pause"): frozenset({R.PAUSED}),
        (R.PAUSED, "resume"): frozenset({R.RECORDING}),
        (R.RECORDING, "stop"): frozenset({R.STOPPING}),
        (R.PAUSED, "stop"): frozenset({R.STOPPING}),
        # Every leg finished (some may have before the stop: a snoop hangs up
        # with its call), or Asterisk never said (it restarted).
        (R.STOPPING, "finished"): frozenset({R.DONE}),
        (R.STOPPING, "gave_up"): frozenset({R.DONE}),
    },
)


def recordable_call_id(call_id: str) -> bool:
    """False for a call id that is not a UUID (a channel that did not come
    through our dialplan): such a call is not recorded."""
    return _UUID.match(call_id) is not None


@dataclass(frozen=True, slots=True)
class RecordedLeg:
    role: str  # "caller" or "agent"
    channel_id: str  # the party's channel, spied on
    snoop_id: str  # the snoop channel we create
    name: str  # the ARI live recording's name (and file name in the spool)


@dataclass(frozen=True, slots=True)
class RecordingJob:
    """Everything post-processing needs, once every leg has finished."""

    call_id: str
    tenant_id: str
    started_at: datetime
    evidence: ConsentEvidence  # as it was when the recording started
    legs: tuple[RecordedLeg, ...]
    # Per leg name: where its recording started on the timeline; a leg that
    # never started is absent (a silent channel).
    leg_starts_ms: tuple[tuple[str, int], ...]
    paused: tuple[tuple[int, int], ...]
    masked: tuple[tuple[int, int], ...]
    formats: tuple[str, ...]
    # Consent withdrawn: keep the audio before this instant only (0: none).
    trim_at_ms: int | None
    # The recording must go (withdrawn under a "delete" policy).
    erase: bool
    withdrawn: bool


@dataclass
class LiveRecording:
    """Mutated only by the engine, through these methods."""

    call_id: str
    tenant_id: str
    started_at: datetime
    rules: RecordingRules
    evidence: ConsentEvidence
    legs: tuple[RecordedLeg, ...]
    state: RecordingState = RecordingState.RECORDING
    leg_starts_ms: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    paused: list[tuple[int, int]] = field(default_factory=list)
    paused_since_ms: int | None = None
    masked: list[tuple[int, int]] = field(default_factory=list)
    withdrawn_at_ms: int | None = None
    wait_timer: str | None = None

    def at(self, now: datetime) -> int:
        return ms_between(self.started_at, now)

    def leg(self, name: str) -> RecordedLeg | None:
        return next((leg for leg in self.legs if leg.name == name), None)

    @property
    def live(self) -> bool:
        return self.state in (R.RECORDING, R.PAUSED)

    def pause(self, now: datetime) -> bool:
        """False when there is nothing to pause (paused or stopped already)."""
        if self.state is not R.RECORDING:
            return False
        self.state = RECORDING_TRANSITIONS.move(self.state, "pause", R.PAUSED)
        self.paused_since_ms = self.at(now)
        return True

    def resume(self, now: datetime) -> bool:
        if self.state is not R.PAUSED:
            return False
        self.state = RECORDING_TRANSITIONS.move(self.state, "resume", R.RECORDING)
        self._close_pause(now)
        return True

    def stop(self, now: datetime, *, withdrawn: bool = False) -> bool:
        if not self.live:
            return False
        if self.state is R.PAUSED:
            self._close_pause(now)
        self.state = RECORDING_TRANSITIONS.move(self.state, "stop", R.STOPPING)
        if withdrawn:
            self.withdrawn_at_ms = self.at(now)
        return True

    def mask_dtmf(self, now: datetime, duration_ms: int) -> None:
        """Silence a tone in the file (card digits, menu choices)."""
        if self.state is not R.RECORDING:
            return  # paused: nothing is being written
        end = self.at(now)
        start = max(0, end - max(duration_ms, 0) - DTMF_MARGIN_MS)
        self.masked.append((start, end + DTMF_MARGIN_MS))

    def leg_started(self, name: str, now: datetime) -> None:
        self.leg_starts_ms.setdefault(name, self.at(now))

    def leg_finished(self, name: str) -> bool:
        """Record a finished (or failed) leg; True once the recording is DONE."""
        self.finished.add(name)
        return self.complete_if_finished()

    def complete_if_finished(self) -> bool:
        """Stopped, and every leg finished: DONE (True)."""
        if self.state is not R.STOPPING or not self.finished >= {leg.name for leg in self.legs}:
            return False
        self.state = RECORDING_TRANSITIONS.move(self.state, "finished", R.DONE)
        return True

    def give_up_waiting(self) -> None:
        """Asterisk never reported some legs (it restarted): finish anyway."""
        self.state = RECORDING_TRANSITIONS.move(self.state, "gave_up", R.DONE)

    def job(self) -> RecordingJob:
        withdrawn = self.withdrawn_at_ms is not None
        erase = withdrawn and self.rules.withdrawal is WithdrawalPolicy.DELETE
        return RecordingJob(
            call_id=self.call_id,
            tenant_id=self.tenant_id,
            started_at=self.started_at,
            evidence=self.evidence,
            legs=self.legs,
            leg_starts_ms=tuple(sorted(self.leg_starts_ms.items())),
            paused=tuple(self.paused),
            masked=tuple(self.masked),
            formats=self.rules.formats,
            trim_at_ms=self.withdrawn_at_ms,
            erase=erase,
            withdrawn=withdrawn,
        )

    def _close_pause(self, now: datetime) -> None:
        if self.paused_since_ms is not None:
            end = self.at(now)
            if end > self.paused_since_ms:
                self.paused.append((self.paused_since_ms, end))
            self.paused_since_ms = None
