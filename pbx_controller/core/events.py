"""Events: what the core is told. Frozen, slotted, validated on construction.

The adapters turn ARI/AGI/timer happenings into these; the time of each
event is passed beside it to `Engine.handle(event, now)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


def _require(value: str, name: str) -> None:
    if not value:
        raise ValueError(f"{name} must not be empty")


@dataclass(frozen=True, slots=True)
class CallArrived:
    """A caller's channel entered the app from the dialplan with a DID."""

    call_id: str
    channel_id: str
    did: str
    caller_number: str = ""
    caller_name: str = ""
    answered: bool = False  # the dialplan answered it before handing it over

    def __post_init__(self) -> None:
        _require(self.call_id, "call_id")
        _require(self.channel_id, "channel_id")


@dataclass(frozen=True, slots=True)
class AgentLegAnswered:
    """An agent's phone answered the leg we originated for a call (its
    StasisStart, with the app arguments we gave it)."""

    channel_id: str
    call_id: str
    agent_id: str

    def __post_init__(self) -> None:
        _require(self.channel_id, "channel_id")
        _require(self.call_id, "call_id")
        _require(self.agent_id, "agent_id")


AGENT_COMMANDS = frozenset({"login", "logout", "pause", "unpause", "end_wrapup"})


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """An agent (feature code), a supervisor or ops (pbxctl) acting on an agent."""

    agent_id: str
    command: str
    reason: str = ""

    def __post_init__(self) -> None:
        _require(self.agent_id, "agent_id")
        if self.command not in AGENT_COMMANDS:
            raise ValueError(f"unknown agent command {self.command!r}")


@dataclass(frozen=True, slots=True)
class AgentRestored:
    """At start-up: the agent is logged back in as an earlier run left it
    (`core.agent.restoration` decides from the agent state log)."""

    agent_id: str
    paused_reason: str | None = None  # None: ready
    queue_ids: tuple[str, ...] = ()  # the queues it had logged in to; (): all

    def __post_init__(self) -> None:
        _require(self.agent_id, "agent_id")


@dataclass(frozen=True, slots=True)
class ControllerStopping:
    """The controller is shutting down: every logged-in agent is logged out."""


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """A playback ended. `completed` is false when it was cut short (the
    channel hung up, or the playback was stopped or failed)."""

    playback_id: str
    channel_id: str
    completed: bool = True

    def __post_init__(self) -> None:
        _require(self.playback_id, "playback_id")


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    channel_id: str
    digit: str
    duration_ms: int = 0

    def __post_init__(self) -> None:
        if len(self.digit) != 1 or self.digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {self.digit!r}")


@dataclass(frozen=True, slots=True)
class HangupRequested:
    """Someone asked for this channel to hang up (the caller, usually). It
    comes before the channel leaves the app, and before any PlaybackFinished
    that the hang-up cuts short."""

    channel_id: str
    cause: int = 16
    # Asterisk's own request (ops hanging it up, a shutdown, our own DELETE;
    # ARI's "soft"), not the far end's: the caller did not abandon.
    by_system: bool = False


@dataclass(frozen=True, slots=True)
class ChannelHungUp:
    """The channel is gone. `lost` is true when it vanished while we were
    not watching (found missing on a resync, e.g. after Asterisk restarted):
    nobody can say who hung up, so the call counts as failed."""

    channel_id: str
    cause: int = 16
    cause_text: str = ""
    lost: bool = False


@dataclass(frozen=True, slots=True)
class CallAdopted:
    """A caller found in our app at start-up, left there by an earlier run of
    the controller (stopped or killed mid-call). Its id and arrival come from
    Asterisk; `connected` when it is still bridged with its agent."""

    call_id: str
    channel_id: str
    did: str
    arrived_at: datetime
    caller_number: str = ""
    connected: AdoptedConnection | None = None

    def __post_init__(self) -> None:
        _require(self.call_id, "call_id")
        _require(self.channel_id, "channel_id")
        if self.arrived_at.utcoffset() is None:
            raise ValueError("arrived_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class AdoptedConnection:
    """The agent side of an adopted call that is still talking: its leg, the
    bridge they share, and when the agent answered (Asterisk's CDR)."""

    agent_channel_id: str
    agent_id: str
    queue_id: str
    bridge_id: str
    answered_at: datetime

    def __post_init__(self) -> None:
        for name in ("agent_channel_id", "agent_id", "queue_id", "bridge_id"):
            _require(getattr(self, name), name)
        if self.answered_at.utcoffset() is None:
            raise ValueError("answered_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class ChannelLeftApp:
    """StasisEnd: the channel left our app (hung up, or sent to the dialplan)."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    timer_id: str


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """The adapter could not carry out an action for this channel.

    `gone` is true when the channel no longer exists (a hang-up race): the
    flow treats that like a hang-up. Anything else sends the caller to the
    dialplan fallback so nobody is left in silence.

    `unanswered` is true when Asterisk gave no answer (timed out, websocket
    down): not anybody's refusal. An agent leg's originate failing so is not
    the agent's missed offer (an overloaded Asterisk must not auto-pause
    every agent).

    `caller_gone` is true when an agent leg's originate named the caller's
    channel as its originator and Asterisk no longer has that channel: the
    caller hung up while the leg was being made. Not the agent's miss.
    """

    channel_id: str
    action: str
    reason: str
    gone: bool = False
    unanswered: bool = False
    caller_gone: bool = False


@dataclass(frozen=True, slots=True)
class RecordingStarted:
    """A live recording (one leg) is being written."""

    name: str

    def __post_init__(self) -> None:
        _require(self.name, "name")


@dataclass(frozen=True, slots=True)
class RecordingFinished:
    """A live recording ended: stopped, its channel gone, or `failed`."""

    name: str
    failed: bool = False
    cause: str = ""

    def __post_init__(self) -> None:
        _require(self.name, "name")


CALL_COMMANDS = frozenset({"stop_recording", "pause_recording", "resume_recording"})


@dataclass(frozen=True, slots=True)
class CallCommand:
    """Ops (pbxctl) or an agent acting on a live call's recording. Scoped to
    the tenant: a command never reaches another tenant's call."""

    tenant_id: str
    call_id: str
    command: str

    def __post_init__(self) -> None:
        _require(self.tenant_id, "tenant_id")
        _require(self.call_id, "call_id")
        if self.command not in CALL_COMMANDS:
            raise ValueError(f"unknown call command {self.command!r}")


Event = (
    CallArrived
    | CallAdopted
    | AgentLegAnswered
    | AgentCommand
    | AgentRestored
    | ControllerStopping
    | PlaybackFinished
    | DtmfReceived
    | HangupRequested
    | ChannelHungUp
    | ChannelLeftApp
    | TimerFired
    | ActionFailed
    | RecordingStarted
    | RecordingFinished
    | CallCommand
)
