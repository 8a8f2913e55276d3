"""The decision engine: `engine.handle(event, now) -> list[Action]`.

Pure: no IO, no clock, no randomness. The service feeds it every event with
the time it happened and carries out the actions it returns.
"""

from __future__ import annotations

from datetime import datetime

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.call_flow import CALL_TRANSITIONS, Call, CallState
from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide
from pbx_controller.core.model import Directory

# Dialplan contexts the engine hands channels back to (dialplan/pbx-controller.conf).
UNKNOWN_DID_CONTEXT = "pbx-unknown-did"
FALLBACK_CONTEXT = "pbx-fallback"


class DuplicateCall(ValueError):
    """A CallArrived for a call id or channel the engine already tracks."""


class Engine:
    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.calls: dict[str, Call] = {}
        self._by_channel: dict[str, str] = {}
        self._by_playback: dict[str, str] = {}

    def reload(self, directory: Directory) -> None:
        """New configuration applies to calls that arrive from now on."""
        self.directory = directory

    # -- entry point ---------------------------------------------------------------

    def handle(self, event: e.Event, now: datetime) -> list[a.Action]:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        if isinstance(event, e.CallArrived):
            return self._arrived(event, now)
        if isinstance(event, e.CallAdopted):
            return self._adopted(event)
        call = self._call_for(event)
        if call is None:
            return []  # not ours, or a late event of a finished call
        name = type(event).__name__
        CALL_TRANSITIONS.targets(call.state, name)  # raises InvalidTransition
        match event:
            case e.PlaybackFinished():
                return self._playback_finished(call, event)
            case e.DtmfReceived():
                return self._move(call, name, call.state)
            case e.HangupRequested():
                return self._hangup_requested(call)
            case e.ActionFailed():
                return self._action_failed(call, event)
            case e.ChannelHungUp() | e.ChannelLeftApp():
                return self._ended(call, event, now)
            case _:
                return []

    def channel_ids(self) -> list[str]:
        """Channels of live calls: what a resync must check with Asterisk."""
        return list(self._by_channel)

    def playback_ids(self) -> list[str]:
        return list(self._by_playback)

    # -- handlers -------------------------------------------------------------------

    def _arrived(self, event: e.CallArrived, now: datetime) -> list[a.Action]:
        if event.call_id in self.calls or event.channel_id in self._by_channel:
            raise DuplicateCall(f"call {event.call_id} on {event.channel_id} already tracked")
        call = Call(event.call_id, event.channel_id, event.did, event.caller_number, now)
        self.calls[call.call_id] = call
        self._by_channel[call.channel_id] = call.call_id
        tenant = self.directory.tenant_for_did(event.did)
        if tenant is None:
            call.disposition = Disposition.UNKNOWN_DID
            call.hangup_side = HangupSide.SYSTEM
            self._move(call, "CallArrived", CallState.ENDING)
            return [a.ContinueInDialplan(call.channel_id, UNKNOWN_DID_CONTEXT)]
        call.tenant_id = tenant.id
        self._move(call, "CallArrived", CallState.GREETING)
        return [a.Answer(call.channel_id), self._play(call, tenant.greeting)]

    def _adopted(self, event: e.CallAdopted) -> list[a.Action]:
        if event.call_id in self.calls or event.channel_id in self._by_channel:
            raise DuplicateCall(f"call {event.call_id} on {event.channel_id} already tracked")
        call = Call(
            event.call_id, event.channel_id, event.did, event.caller_number, event.arrived_at
        )
        tenant = self.directory.tenant_for_did(event.did)
        call.tenant_id = tenant.id if tenant else None
        call.disposition = Disposition.FAILED if tenant else Disposition.UNKNOWN_DID
        call.hangup_side = HangupSide.SYSTEM
        self.calls[call.call_id] = call
        self._by_channel[call.channel_id] = call.call_id
        self._move(call, "CallAdopted", CallState.ENDING)
        return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

    def _playback_finished(self, call: Call, event: e.PlaybackFinished) -> list[a.Action]:
        self._by_playback.pop(event.playback_id, None)
        if call.state is not CallState.GREETING:
            return self._move(call, "PlaybackFinished", call.state)
        call.hangup_side = HangupSide.SYSTEM
        self._move(call, "PlaybackFinished", CallState.ENDING)
        if event.completed:
            call.disposition = Disposition.SERVED
            return [a.Hangup(call.channel_id)]
        # The greeting failed or was stopped with the caller still there (a
        # hang-up would have come first): never leave them in silence.
        call.disposition = Disposition.FAILED
        return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

    def _hangup_requested(self, call: Call) -> list[a.Action]:
        if call.state is CallState.GREETING:
            call.disposition = Disposition.ABANDONED
            call.hangup_side = HangupSide.CALLER
            return self._move(call, "HangupRequested", CallState.ENDING)
        return self._move(call, "HangupRequested", call.state)

    def _action_failed(self, call: Call, event: e.ActionFailed) -> list[a.Action]:
        if call.state is CallState.ENDING:
            return self._move(call, "ActionFailed", CallState.ENDING)
        self._move(call, "ActionFailed", CallState.ENDING)
        if event.gone:
            # The channel vanished under our request: the caller hung up.
            call.disposition = Disposition.ABANDONED
            call.hangup_side = HangupSide.CALLER
            return []  # the end of the channel follows
        call.disposition = Disposition.FAILED
        call.hangup_side = HangupSide.SYSTEM
        # Never leave a caller in silence: the dialplan has a fallback.
        return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

    def _ended(
        self, call: Call, event: e.ChannelHungUp | e.ChannelLeftApp, now: datetime
    ) -> list[a.Action]:
        if call.state is CallState.GREETING:
            if isinstance(event, e.ChannelHungUp) and event.lost:
                # Vanished unseen (Asterisk restarted): nobody hung up on purpose.
                call.disposition = Disposition.FAILED
                call.hangup_side = HangupSide.SYSTEM
            else:
                call.disposition = Disposition.ABANDONED
                call.hangup_side = HangupSide.CALLER
        self._move(call, type(event).__name__, CallState.ENDED)
        # Clocks can step back, and an adopted call's arrival is Asterisk's
        # clock: never let that cost the CDR.
        call.ended_at = max(now, call.arrived_at)
        cdr = self._cdr(call, call.ended_at)
        self._forget(call)
        return [a.EmitCdr(cdr)]

    # -- helpers -----------------------------------------------------------------------

    def _move(self, call: Call, event_name: str, target: CallState) -> list[a.Action]:
        call.state = CALL_TRANSITIONS.move(call.state, event_name, target)
        return []

    def _play(self, call: Call, media: tuple[str, ...]) -> a.Play:
        playback_id = call.next_playback_id()
        self._by_playback[playback_id] = call.call_id
        return a.Play(call.channel_id, playback_id, media)

    def _call_for(self, event: e.Event) -> Call | None:
        if isinstance(event, e.PlaybackFinished):
            call_id = self._by_playback.get(event.playback_id)
        elif isinstance(event, e.TimerFired):
            call_id = event.timer_id.split("/", 1)[0]
        else:
            call_id = self._by_channel.get(getattr(event, "channel_id", ""))
        return self.calls.get(call_id) if call_id else None

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.call_id, None)
        self._by_channel.pop(call.channel_id, None)
        for playback_id in [p for p, c in self._by_playback.items() if c == call.call_id]:
            del self._by_playback[playback_id]

    @staticmethod
    def _cdr(call: Call, ended_at: datetime) -> CdrRecord:
        return CdrRecord(
            call_id=call.call_id,
            tenant_id=call.tenant_id,
            direction="inbound",
            did=call.did,
            caller=call.caller,
            arrived_at=call.arrived_at,
            answered_at=call.answered_at,
            ended_at=ended_at,
            disposition=call.disposition,
            hangup_side=call.hangup_side,
        )
