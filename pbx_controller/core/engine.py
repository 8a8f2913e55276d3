"""The decision engine: `engine.handle(event, now) -> list[Action]`.

Pure: no IO, no clock, no randomness. The service feeds it every event with
the time it happened and carries out the actions it returns.

It owns the live calls (call_flow.py), the agents (agent.py's board) and the
routing (routing.py). After anything that can free an agent or queue a
caller, it routes: waiting calls x available agents -> offers -> agent legs.
"""

from __future__ import annotations

from datetime import datetime

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentBoard, AgentState, BoardChange
from pbx_controller.core.call_flow import CALL_TRANSITIONS, Call, CallState
from pbx_controller.core.cdr import CdrRecord, CdrSegment, Disposition, HangupSide, ms_between
from pbx_controller.core.consent import NEVER_RECORD, Consent, ConsentState, recording_allowed
from pbx_controller.core.kpi import Ewma, estimated_wait_ms
from pbx_controller.core.model import Directory, Queue
from pbx_controller.core.recording import (
    ROLES,
    SNOOP_ROLE,
    LiveRecording,
    RecordedLeg,
    RecordingState,
    recordable_call_id,
)
from pbx_controller.core.routing import OfferBook, Router, WaitingCall, queue_positions

# Dialplan contexts the engine hands channels back to (dialplan/pbx-controller.conf).
UNKNOWN_DID_CONTEXT = "pbx-unknown-did"
FALLBACK_CONTEXT = "pbx-fallback"
CLOSED_CONTEXT = "pbx-closed"
OVERFLOW_CONTEXT = "pbx-overflow"
# A call's bridge is "<call id>-bridge": a restarted run finds it by that.
BRIDGE_SUFFIX = "-bridge"
# App arguments of an agent leg: "agent,<call id>,<agent id>,<queue id>"
# (the queue lets a restarted controller adopt a call still talking).
AGENT_ROLE = "agent"
# How long a stopped recording waits for Asterisk to report its legs
# finished before it is processed with what there is (Asterisk restarted).
RECORDING_WAIT_MS = 30_000
# A caller offered to an agent at once hears hold music only if the agent
# takes longer than this to answer: an auto-answer headset answers within it
# (no blip of music), a ringing phone does not (music while it rings). A
# pause of this length after the greeting is not heard as dead air.
HOLD_MUSIC_GRACE_MS = 300
# In-call feature codes an agent keys on the phone: *7 pause the recording
# (card data), *8 resume it, *9 stop it for good (the caller withdrew).
AGENT_CALL_CODES = {"7": "pause_recording", "8": "resume_recording", "9": "stop_recording"}


class DuplicateCall(ValueError):
    """A CallArrived for a call id or channel the engine already tracks."""


class UnknownCall(LookupError):
    """No live call with this id for this tenant (another tenant's calls
    are unknown too: their existence is not disclosed)."""


class NotRecording(ValueError):
    """Pause or resume asked of a call that is not being recorded."""


class Engine:
    def __init__(self, directory: Directory, *, seed: int = 0) -> None:
        self.directory = directory
        self.board = AgentBoard(directory.agents.values(), directory.queues)
        self.router = Router(directory.queues, seed=seed)
        self.offers = OfferBook()
        self.calls: dict[str, Call] = {}
        self.waiting: dict[str, WaitingCall] = {}
        self._by_channel: dict[str, str] = {}
        self._by_playback: dict[str, str] = {}
        # Agent legs: channel id -> (call id, agent id).
        self._legs: dict[str, tuple[str, str]] = {}
        self._seq = 0
        # Recent handle time (talk + wrap-up) per queue, for wait estimates.
        self._aht: dict[str, Ewma] = {}
        # Recordings by call id: they outlive the call until every leg's
        # file is finished. Their legs by recording name and by snoop channel.
        self.recordings: dict[str, LiveRecording] = {}
        self._recording_names: dict[str, str] = {}
        self._snoops: dict[str, tuple[str, str]] = {}  # snoop id -> (call id, name)
        self._recording_timers: dict[str, str] = {}  # timer id -> call id

    def reload(self, directory: Directory, now: datetime) -> list[a.Action]:
        """New configuration, live: calls and agents keep their state; the
        queues' new rules apply from now on (a waiting caller's next offer,
        ring timeout or overflow check), new DIDs, queues and agents at once.

        Refused (ValueError; nothing changed) while it would drop a queue a
        live call is in, or an agent who is logged in: the operator reloads
        once they are done, or logs the agent out first."""
        busy = sorted(
            {
                call.queue_id
                for call in self.calls.values()
                if call.queue_id is not None and call.queue_id not in directory.queues
            }
        )
        if busy:
            raise ValueError(f"queues {busy} still have live calls: reload when they are over")
        change = self.board.reconfigure(directory.agents.values(), directory.queues, now)
        self.directory = directory
        self.router.reload(directory.queues)
        return self._board(change) + self._route(now)

    # -- entry point ---------------------------------------------------------------

    def handle(self, event: e.Event, now: datetime) -> list[a.Action]:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        match event:
            case e.CallArrived():
                return self._arrived(event, now)
            case e.CallAdopted():
                return self._adopted(event, now)
            case e.AgentCommand():
                return self._agent_command(event, now)
            case e.AgentRestored():
                change = self.board.restore(
                    event.agent_id, now, queues=event.queue_ids, paused_reason=event.paused_reason
                )
                return self._board(change) + self._route(now)
            case e.ControllerStopping():
                return self._shutdown(now)
            case e.TimerFired() if self.board.owns_timer(event.timer_id):
                return self._board(self.board.timer_fired(event.timer_id, now)) + self._route(now)
            case e.TimerFired() if event.timer_id in self._recording_timers:
                return self._recording_wait_over(event.timer_id)
            case e.RecordingStarted() | e.RecordingFinished():
                return self._recording_event(event, now)
            case e.CallCommand():
                return self._call_command(event, now)
            case e.ActionFailed() if event.channel_id in self._snoops:
                _, name = self._snoops[event.channel_id]
                return self._recording_event(e.RecordingFinished(name, True, event.reason), now)
        leg = self._legs.get(getattr(event, "channel_id", ""))
        if leg is not None or isinstance(event, e.AgentLegAnswered):
            return self._leg_event(event, leg, now)
        call = self._call_for(event)
        if call is None:
            return []  # not ours, or a late event of a finished call
        name = type(event).__name__
        CALL_TRANSITIONS.targets(call.state, name)  # raises InvalidTransition
        match event:
            case e.PlaybackFinished():
                return self._playback_finished(call, event, now)
            case e.DtmfReceived():
                return self._caller_digit(call, event, now)
            case e.HangupRequested():
                return self._hangup_requested(call, event, now)
            case e.ActionFailed():
                return self._action_failed(call, event, now)
            case e.TimerFired():
                return self._call_timer(call, event, now)
            case e.ChannelHungUp() | e.ChannelLeftApp():
                return self._ended(call, event, now)
        return []

    def channel_ids(self) -> list[str]:
        """Channels of live calls and agent legs: what a resync must check."""
        return [*self._by_channel, *self._legs]

    def playback_ids(self) -> list[str]:
        return list(self._by_playback)

    # -- arrival -----------------------------------------------------------------------

    def _arrived(self, event: e.CallArrived, now: datetime) -> list[a.Action]:
        if event.call_id in self.calls or event.channel_id in self._by_channel:
            raise DuplicateCall(f"call {event.call_id} on {event.channel_id} already tracked")
        call = Call(event.call_id, event.channel_id, event.did, event.caller_number, now)
        self._track(call)
        tenant = self.directory.tenant_for_did(event.did)
        if tenant is None:
            call.disposition = Disposition.UNKNOWN_DID
            call.hangup_side = HangupSide.SYSTEM
            self._move(call, "CallArrived", CallState.ENDING)
            return [a.ContinueInDialplan(call.channel_id, UNKNOWN_DID_CONTEXT)]
        call.tenant_id = tenant.id
        if tenant.business_hours is not None and not tenant.business_hours.is_open(
            now, tenant.timezone
        ):
            call.disposition = Disposition.CLOSED
            call.hangup_side = HangupSide.SYSTEM
            self._move(call, "CallArrived", CallState.ENDING)
            return [a.ContinueInDialplan(call.channel_id, CLOSED_CONTEXT)]
        self._move(call, "CallArrived", CallState.GREETING)
        # [pbx-inbound] answers in the dialplan (one ARI request less per call);
        # a channel sent here unanswered by another path is answered now.
        answer = [] if event.answered else [a.Answer(call.channel_id)]
        return [*answer, self._play(call, tenant.greeting)]

    def _adopted(self, event: e.CallAdopted, now: datetime) -> list[a.Action]:
        if event.call_id in self.calls or event.channel_id in self._by_channel:
            raise DuplicateCall(f"call {event.call_id} on {event.channel_id} already tracked")
        call = Call(
            event.call_id, event.channel_id, event.did, event.caller_number, event.arrived_at
        )
        tenant = self.directory.tenant_for_did(event.did)
        call.tenant_id = tenant.id if tenant else None
        link = event.connected
        if (
            tenant is not None
            and link is not None
            and link.queue_id in self.directory.queues
            and link.agent_id in self.directory.agents
        ):
            return self._adopted_connected(call, link, now)
        call.disposition = Disposition.FAILED if tenant else Disposition.UNKNOWN_DID
        call.hangup_side = HangupSide.SYSTEM
        self._track(call)
        self._move(call, "CallAdopted", CallState.ENDING)
        return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

    def _adopted_connected(
        self, call: Call, link: e.AdoptedConnection, now: datetime
    ) -> list[a.Action]:
        """Still talking: the call goes on where the last run left it. What
        that run knew and Asterisk does not (the offers, the wait, consent)
        is gone: one answered segment, wait counted from arrival, consent
        n/a (its recording legs were stopped)."""
        actions = self._board(
            self.board.call_adopted(link.agent_id, call.call_id, link.queue_id, now)
        )  # refuses (InvalidTransition) an agent already on another call
        call.queue_id = link.queue_id
        call.queues_visited = (link.queue_id,)
        call.first_enqueued_at = call.enqueued_at = call.arrived_at
        call.answered_at = link.answered_at
        call.agent_id = link.agent_id
        call.agent_channel = link.agent_channel_id
        call.bridge_id = link.bridge_id
        call.disposition = Disposition.ANSWERED
        call.segments.append(
            CdrSegment("offer", link.agent_id, link.answered_at, link.answered_at, "answered")
        )
        self._track(call)
        self._legs[link.agent_channel_id] = (call.call_id, link.agent_id)
        self._move(call, "CallAdopted", CallState.CONNECTED)
        return actions

    # -- caller channel events ---------------------------------------------------------

    def _playback_finished(
        self, call: Call, event: e.PlaybackFinished, now: datetime
    ) -> list[a.Action]:
        self._by_playback.pop(event.playback_id, None)
        if call.state is CallState.GREETING:
            if not event.completed:
                # Cut short with the caller still there (a hang-up would have
                # come first): never leave them in silence.
                call.disposition = Disposition.FAILED
                call.hangup_side = HangupSide.SYSTEM
                self._move(call, "PlaybackFinished", CallState.ENDING)
                return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]
            queue = self.directory.queue_for_did(call.did)
            if queue is None:
                call.disposition = Disposition.SERVED
                call.hangup_side = HangupSide.SYSTEM
                self._move(call, "PlaybackFinished", CallState.ENDING)
                return [a.Hangup(call.channel_id)]
            return self._ask_consent(call, queue, now)
        if call.state is CallState.CONSENT:
            return self._consent_prompt_over(call, event, now)
        if call.announcing and call.state in (CallState.QUEUED, CallState.OFFERING):
            call.announcing = False
            self._move(call, "PlaybackFinished", call.state)
            return self._music_on(call)
        return self._move(call, "PlaybackFinished", call.state)

    @staticmethod
    def _caller_gone(call: Call, *, by_system: bool) -> None:
        """The caller's side ended the call: the caller, or Asterisk itself
        (ops, a shutdown, a crash), which is no abandon. A connected call
        keeps its disposition (answered)."""
        call.hangup_side = HangupSide.SYSTEM if by_system else HangupSide.CALLER
        if call.state is not CallState.CONNECTED:
            call.disposition = Disposition.FAILED if by_system else Disposition.ABANDONED

    def _hangup_requested(
        self, call: Call, event: e.HangupRequested, now: datetime
    ) -> list[a.Action]:
        state = call.state
        if state in (CallState.GREETING, CallState.CONSENT, CallState.QUEUED, CallState.OFFERING):
            self._caller_gone(call, by_system=event.by_system)
            self._move(call, "HangupRequested", CallState.ENDING)
            return self._leave_queue(call, now)
        if state is CallState.CONNECTED:
            self._caller_gone(call, by_system=event.by_system)
            self._move(call, "HangupRequested", CallState.ENDING)
            return self._end_agent_side(call, now)
        return self._move(call, "HangupRequested", state)

    def _action_failed(self, call: Call, event: e.ActionFailed, now: datetime) -> list[a.Action]:
        if call.state is CallState.ENDING:
            return self._move(call, "ActionFailed", CallState.ENDING)
        if call.state is CallState.CONSENT and not event.gone:
            # The prompt could not be played: no consent, full service anyway.
            assert call.consent is not None
            if call.consent.state is ConsentState.ANNOUNCED:
                call.consent.withdraw(now)
            call.consent_prompt = None
            return self._consent_decided(call, "ActionFailed", now)
        if (
            not event.gone
            and event.action in ("StartMoh", "StopMoh", "Play")
            and call.state in (CallState.QUEUED, CallState.OFFERING)
        ):
            # Hold music or an announcement failed: the caller still waits,
            # and a failed announcement gives the hold music back.
            self._move(call, "ActionFailed", call.state)
            if call.announcing and event.action == "Play":
                call.announcing = False
                return self._music_on(call)
            call.announcing = False
            return []
        was_connected = call.state is CallState.CONNECTED
        self._move(call, "ActionFailed", CallState.ENDING)
        actions = self._end_agent_side(call, now) if was_connected else self._leave_queue(call, now)
        if event.gone:
            # The channel vanished under our request: the caller hung up.
            if not was_connected:
                call.disposition = Disposition.ABANDONED
            call.hangup_side = HangupSide.CALLER
            return actions  # the end of the channel follows
        call.disposition = Disposition.FAILED
        call.hangup_side = HangupSide.SYSTEM
        if was_connected:
            # The bridge never formed: nothing was talked, nothing is billed.
            call.answered_at = None
            call.talk_ended_at = None
        # Never leave a caller in silence: the dialplan has a fallback.
        return [*actions, a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

    def _call_timer(self, call: Call, event: e.TimerFired, now: datetime) -> list[a.Action]:
        kind = event.timer_id.split("/")[1]
        if (
            kind == "ring"
            and call.state is CallState.OFFERING
            and event.timer_id == call.ring_timer
        ):
            return self._ring_timeout(call, now)
        if kind == "maxwait" and call.state in (CallState.QUEUED, CallState.OFFERING):
            return self._overflow(call, now, "max_wait")
        if kind == "announce" and call.state in (CallState.QUEUED, CallState.OFFERING):
            return self._announce(call, now)
        if kind == "relax" and call.state is CallState.QUEUED:
            self._move(call, "TimerFired", call.state)
            return self._route(now)
        if kind == "hold" and event.timer_id == call.hold_timer:
            # The agent did not answer within the grace: music while it rings.
            call.hold_timer = None
            self._move(call, "TimerFired", call.state)
            return [] if call.announcing else self._music_on(call)
        if (
            kind == "consent"
            and call.state is CallState.CONSENT
            and event.timer_id == call.consent_timer
        ):
            assert call.consent is not None
            call.consent_timer = None
            call.consent.timed_out(now)
            return self._consent_decided(call, "TimerFired", now)
        return self._move(call, "TimerFired", call.state)  # a stale timer

    def _ended(
        self, call: Call, event: e.ChannelHungUp | e.ChannelLeftApp, now: datetime
    ) -> list[a.Action]:
        actions: list[a.Action] = []
        # Vanished unseen (Asterisk restarted): nobody hung up on purpose.
        lost = isinstance(event, e.ChannelHungUp) and event.lost
        if call.state in (
            CallState.GREETING,
            CallState.CONSENT,
            CallState.QUEUED,
            CallState.OFFERING,
        ):
            self._caller_gone(call, by_system=lost)
            actions += self._leave_queue(call, now)
        elif call.state is CallState.CONNECTED:
            self._caller_gone(call, by_system=lost)
            actions += self._end_agent_side(call, now)
        self._move(call, type(event).__name__, CallState.ENDED)
        # Clocks can step back, and an adopted call's arrival is Asterisk's
        # clock: never let that cost the CDR.
        call.ended_at = max(now, call.arrived_at)
        cdr = self._cdr(call)
        self._forget(call)
        return [*actions, a.EmitCdr(cdr), *self._route(now)]

    # -- the queue ---------------------------------------------------------------------

    def _enqueue(
        self, call: Call, queue: Queue, now: datetime, via: str = "PlaybackFinished"
    ) -> list[a.Action]:
        call.queue_id = queue.id
        call.queues_visited += (queue.id,)
        call.enqueued_at = now
        if call.first_enqueued_at is None:
            call.first_enqueued_at = now  # the caller's whole wait, across overflows
        self._seq += 1
        call.seq = self._seq
        call.priority = queue.priority_for(call.caller, call.did)
        waiting_here = sum(1 for w in self.waiting.values() if w.queue_id == queue.id)
        self._move(call, via, CallState.QUEUED)
        if not queue.admits(waiting_here):
            return self._overflow(call, now, "max_callers")
        # The rule first: counting the staff scans every agent.
        if any(r.when_unstaffed for r in queue.overflow) and self.board.staffed(queue.id) == 0:
            return self._overflow(call, now, "unstaffed")
        self.waiting[call.call_id] = WaitingCall(
            call.call_id, queue.id, now, call.priority, call.seq
        )
        actions: list[a.Action] = []
        if queue.max_wait_ms is not None:
            actions.append(self._queue_timer(call, "maxwait", queue.max_wait_ms))
        # Requirements relax with the wait: look again at each relaxation point.
        for after_ms in sorted({r.after_ms for req in queue.skills for r in req.relaxations}):
            actions.append(self._queue_timer(call, "relax", after_ms))
        if queue.announcements.position or queue.announcements.estimated_wait:
            actions.append(self._queue_timer(call, "announce", queue.announcements.first_after_ms))
        actions += self._route(now)
        if call.state is CallState.OFFERING and call.hold_music is None:
            # An agent rings already: hold music only if they take longer than
            # the grace. An auto-answer headset picks up well within it, and
            # the caller hears no blip of music before the agent.
            call.hold_timer = call.timer_id("hold")  # cancelled with the offer's end
            return [*actions, a.StartTimer(call.hold_timer, HOLD_MUSIC_GRACE_MS)]
        return [*self._music_on(call), *actions]

    def _music_on(self, call: Call) -> list[a.Action]:
        """Hold music for a waiting caller, in its queue's class (once)."""
        music = self._queue(call).announcements.hold_music
        if call.hold_music == music:
            return []
        call.hold_music = music
        return [a.StartMoh(call.channel_id, music)]

    def _music_off(self, call: Call) -> list[a.Action]:
        """No more hold music, nor music still to come."""
        actions = self._cancel_hold_timer(call)
        if call.hold_music is not None:
            call.hold_music = None
            actions.append(a.StopMoh(call.channel_id))
        return actions

    @staticmethod
    def _cancel_hold_timer(call: Call) -> list[a.Action]:
        timer, call.hold_timer = call.hold_timer, None
        return [] if timer is None else [a.CancelTimer(timer)]

    @staticmethod
    def _cancel_queue_timers(call: Call) -> list[a.Action]:
        timers, call.queue_timers = call.queue_timers, []
        return [a.CancelTimer(t) for t in timers]

    @staticmethod
    def _queue_timer(call: Call, kind: str, delay_ms: int) -> a.StartTimer:
        # Remembered, so leaving the queue (overflow elsewhere) cancels them.
        timer = a.StartTimer(call.timer_id(kind), delay_ms)
        call.queue_timers.append(timer.timer_id)
        return timer

    def _route(self, now: datetime) -> list[a.Action]:
        if not self.waiting:
            return []
        offers = self.router.route(list(self.waiting.values()), self.board.available(), now)
        actions: list[a.Action] = []
        for offer in offers:
            call = self.calls[offer.call_id]
            waiting = self.waiting.pop(offer.call_id)
            self.offers.open(offer, waiting)
            self._move(call, "Offered", CallState.OFFERING)
            if call.bridge_id is None:  # the first offer: the bridge is made while they ring
                call.bridge_id = call.call_id + BRIDGE_SUFFIX
                actions.append(a.PrepareBridge(call.bridge_id))
            for agent_id in offer.agent_ids:
                actions += self._board(
                    self.board.offer_made(agent_id, call.call_id, offer.queue_id, now)
                )
                leg = call.next_leg_id()
                call.ringing[agent_id] = (leg, now)
                self._legs[leg] = (call.call_id, agent_id)
                actions.append(
                    a.Originate(
                        leg,
                        self.directory.agents[agent_id].endpoint,
                        f"{AGENT_ROLE},{call.call_id},{agent_id},{offer.queue_id}",
                        caller_id=call.caller,
                        # Asterisk gives up a little after our own ring timeout.
                        timeout_ms=offer.ring_timeout_ms + 2000,
                        originator=call.channel_id,
                    )
                )
            call.ring_timer = call.timer_id("ring")
            actions.append(a.StartTimer(call.ring_timer, offer.ring_timeout_ms))
        return actions

    def _ring_timeout(self, call: Call, now: datetime) -> list[a.Action]:
        call.ring_timer = None
        agents, requeue = self.offers.expire(call.call_id)
        actions: list[a.Action] = []
        for agent_id in agents:
            actions += self._drop_leg(call, agent_id, now, "missed")
            actions += self._board(self.board.offer_missed(agent_id, call.call_id, now))
        self._requeue(call, requeue)
        return actions + self._route(now)

    def _requeue(self, call: Call, waiting: WaitingCall | None) -> None:
        # Back at its old position: enqueued_at and seq are kept.
        if waiting is not None:
            call.missed_by = waiting.missed_by
            self.waiting[call.call_id] = waiting
        self._move(call, "AgentLegGone", CallState.QUEUED)

    def _overflow(self, call: Call, now: datetime, why: str) -> list[a.Action]:
        queue = self._queue(call)
        rule = next(
            (
                r
                for r in queue.overflow
                if (why == "max_wait" and r.after_ms is not None)
                or (why == "unstaffed" and r.when_unstaffed)
                or why == "max_callers"
            ),
            None,
        )
        actions = self._leave_queue(call, now)
        target = self.directory.queues.get(rule.queue_id) if rule and rule.queue_id else None
        # Another queue of the same tenant, once per queue (no A -> B -> A loops).
        if (
            target is not None
            and target.tenant_id == call.tenant_id
            and target.id not in call.queues_visited
        ):
            return actions + self._enqueue(call, target, now, via="Overflowed")
        call.disposition = Disposition.OVERFLOW
        call.hangup_side = HangupSide.SYSTEM
        self._move(call, "Overflowed", CallState.ENDING)
        context = rule.dialplan_context if rule and rule.dialplan_context else OVERFLOW_CONTEXT
        return [
            *actions,
            *self._music_off(call),
            a.ContinueInDialplan(call.channel_id, context),
        ]

    def _announce(self, call: Call, now: datetime) -> list[a.Action]:
        queue = self._queue(call)
        settings = queue.announcements
        actions: list[a.Action] = [self._queue_timer(call, "announce", settings.every_ms)]
        media: list[str] = []
        position = queue_positions(
            [w for w in self.waiting.values() if w.queue_id == queue.id]
        ).get(call.call_id)
        if settings.position and position is not None:
            media += (
                ["sound:queue-youarenext"]
                if position == 1
                else ["sound:queue-thereare", f"number:{position - 1}", "sound:queue-callswaiting"]
            )
        if settings.estimated_wait and position is not None:
            aht = self._aht.get(queue.id, Ewma()).value
            wait = estimated_wait_ms(position, self.board.staffed(queue.id), aht or 0.0)
            if wait is not None and wait >= 60_000:
                minutes = -(-wait // 60_000)  # rounded up: never promise too short a wait
                media += ["sound:queue-holdtime", f"number:{minutes}", "sound:queue-minutes"]
        self._move(call, "TimerFired", call.state)
        if media and not call.announcing:
            call.announcing = True
            play = self._play(call, tuple(media))
            call.announcement = play.playback_id
            actions += [*self._music_off(call), play]
        return actions

    def _leave_queue(self, call: Call, now: datetime) -> list[a.Action]:
        """The caller is gone or handed back: drop its place and its offers."""
        self.waiting.pop(call.call_id, None)
        actions: list[a.Action] = [
            *self._cancel_ring_timer(call),
            *self._cancel_hold_timer(call),
            *self._cancel_queue_timers(call),
        ]
        if call.consent_timer is not None:
            actions.append(a.CancelTimer(call.consent_timer))
            call.consent_timer = None
        for agent_id in self.offers.withdraw(call.call_id):
            actions += self._drop_leg(call, agent_id, now, "cancelled")
            actions += self._board(self.board.offer_cancelled(agent_id, call.call_id, now))
        if call.bridge_id is not None:  # prepared for an agent who never answered
            actions.append(a.DestroyBridge(call.bridge_id))
            call.bridge_id = None
        return actions

    # -- agent legs -------------------------------------------------------------------

    def _leg_event(
        self, event: e.Event, leg: tuple[str, str] | None, now: datetime
    ) -> list[a.Action]:
        if isinstance(event, e.AgentLegAnswered):
            call = self.calls.get(event.call_id)
            if call is None or self._legs.get(event.channel_id) != (call.call_id, event.agent_id):
                return [a.Hangup(event.channel_id)]  # a leg of a call we no longer have
            return self._leg_answered(call, event, now)
        assert leg is not None
        call_id, agent_id = leg
        call = self.calls.get(call_id)
        channel_id = getattr(event, "channel_id", "")
        if isinstance(event, e.DtmfReceived):
            return self._agent_digit(call, event, now) if call is not None else []
        if isinstance(event, e.HangupRequested | e.PlaybackFinished):
            return []  # the leg's end follows
        if isinstance(event, e.ActionFailed) and event.action not in ("Originate", "Bridge"):
            return []
        # The leg is gone: ended, failed to originate, or could not be bridged.
        self._legs.pop(channel_id, None)
        if call is None:
            return []
        CALL_TRANSITIONS.targets(call.state, "AgentLegGone")
        if call.state is CallState.OFFERING and agent_id in call.ringing:
            started = call.ringing.pop(agent_id)[1]
            failed = event if isinstance(event, e.ActionFailed) else None
            caller_gone = failed is not None and failed.caller_gone
            # Asterisk never answered the originate, or the caller left
            # before the leg was made: the agent missed nothing.
            theirs = failed is None or not (failed.unanswered or caller_gone)
            outcome_name = "missed" if theirs else "cancelled" if caller_gone else "failed"
            call.segments.append(CdrSegment("offer", agent_id, started, now, outcome_name))
            outcome = self.offers.missed(call.call_id, agent_id, agents_fault=theirs)
            actions: list[a.Action] = []
            if outcome.counted:
                ended = self.board.offer_missed if theirs else self.board.offer_cancelled
                actions += self._board(ended(agent_id, call.call_id, now))
            if caller_gone:
                # Asterisk says the caller's channel is gone: its hang-up is
                # on the way. Offering the call again meanwhile would make
                # every next leg fail the same way.
                self._caller_gone(call, by_system=False)
                self._move(call, "AgentLegGone", CallState.ENDING)
                return actions + self._leave_queue(call, now)
            if outcome.requeue is not None:
                actions += self._cancel_ring_timer(call)
                self._requeue(call, outcome.requeue)
            else:
                self._move(call, "AgentLegGone", CallState.OFFERING)
            return actions + self._route(now)
        if call.state is CallState.CONNECTED and agent_id == call.agent_id:
            call.hangup_side = HangupSide.AGENT
            self._move(call, "AgentLegGone", CallState.ENDING)
            return [*self._end_agent_side(call, now, leg_gone=True), a.Hangup(call.channel_id)]
        return self._move(call, "AgentLegGone", call.state)

    def _leg_answered(self, call: Call, event: e.AgentLegAnswered, now: datetime) -> list[a.Action]:
        CALL_TRANSITIONS.targets(call.state, "AgentLegAnswered")
        if call.state is not CallState.OFFERING:
            self._legs.pop(event.channel_id, None)
            self._move(call, "AgentLegAnswered", call.state)
            return [a.Hangup(event.channel_id)]
        outcome = self.offers.answered(call.call_id, event.agent_id)
        if not outcome.won:
            # Ring-all: another agent was first. Two agents never share a call.
            self._legs.pop(event.channel_id, None)
            self._move(call, "AgentLegAnswered", CallState.OFFERING)
            return [a.Hangup(event.channel_id)]
        actions = self._board(self.board.offer_answered(event.agent_id, call.call_id, now))
        for agent_id in outcome.cancel:
            actions += self._drop_leg(call, agent_id, now, "cancelled")
            actions += self._board(self.board.offer_cancelled(agent_id, call.call_id, now))
        started = call.ringing.pop(event.agent_id)[1]
        call.segments.append(CdrSegment("offer", event.agent_id, started, now, "answered"))
        call.answered_at = now
        call.agent_id = event.agent_id
        call.agent_channel = event.channel_id
        assert call.bridge_id is not None  # prepared at the first offer
        call.disposition = Disposition.ANSWERED
        self._move(call, "AgentLegAnswered", CallState.CONNECTED)
        if call.announcing and call.announcement is not None:
            # The agent is there: cut the announcement, do not make them wait.
            actions.append(a.StopPlayback(call.announcement))
        call.announcing = False
        return [
            *actions,
            *self._cancel_ring_timer(call),
            *self._cancel_queue_timers(call),  # no overflow, relaxing or announcing now
            *self._music_off(call),
            a.Bridge(call.bridge_id, (call.channel_id, event.channel_id)),
            *self._start_recording(call, event.agent_id, event.channel_id, now),
        ]

    def _drop_leg(self, call: Call, agent_id: str, now: datetime, outcome: str) -> list[a.Action]:
        leg, started = call.ringing.pop(agent_id, ("", now))
        if not leg:
            return []
        self._legs.pop(leg, None)
        call.segments.append(CdrSegment("offer", agent_id, started, now, outcome))
        return [a.Hangup(leg)]

    def _end_agent_side(
        self, call: Call, now: datetime, *, leg_gone: bool = False
    ) -> list[a.Action]:
        """The talk is over: the agent's leg goes, the agent wraps up."""
        actions: list[a.Action] = self._stop_recording(call.call_id, now)
        if call.agent_channel is not None:
            self._legs.pop(call.agent_channel, None)
            if not leg_gone:
                actions.append(a.Hangup(call.agent_channel))
            call.agent_channel = None
        if call.bridge_id is not None:
            actions.append(a.DestroyBridge(call.bridge_id))
            call.bridge_id = None
        if call.agent_id is not None and call.answered_at is not None:
            queue = self._queue(call)
            talk = ms_between(call.answered_at, now)
            self._aht[queue.id] = self._aht.get(queue.id, Ewma()).add(talk + queue.wrapup_ms)
            status = self.board.status(call.agent_id)
            if status.call_id == call.call_id:
                actions += self._board(self.board.call_ended(call.agent_id, call.call_id, now))
            call.talk_ended_at = now
        return actions + self._route(now)

    # -- recording consent -------------------------------------------------------------

    def _ask_consent(self, call: Call, queue: Queue, now: datetime) -> list[a.Action]:
        """After the greeting: announce the recording (unless the tenant's
        policy is off), then queue the caller whatever they decide."""
        tenant = self.directory.tenants.get(call.tenant_id or "")
        rules = tenant.consent if tenant is not None else NEVER_RECORD
        call.consent = Consent(rules)
        if call.consent.start(now) is ConsentState.NOT_ASKED:
            return self._enqueue(call, queue, now)
        call.queue_id = queue.id  # where the caller goes once decided
        self._move(call, "PlaybackFinished", CallState.CONSENT)
        play = self._play(call, rules.prompt_media())
        call.consent_prompt = play.playback_id
        return [play]

    def _consent_prompt_over(
        self, call: Call, event: e.PlaybackFinished, now: datetime
    ) -> list[a.Action]:
        consent = call.consent
        assert consent is not None
        call.consent_prompt = None
        if consent.state is ConsentState.ANNOUNCED:
            if event.completed:
                consent.announcement_done(now)  # notify: staying on is consent
            else:
                consent.withdraw(now)  # cut short, undecided: no consent
        if consent.state is ConsentState.ANNOUNCED:
            # opt_in: the prompt is over, the agree digit may still come.
            call.consent_timer = call.timer_id("consent")
            self._move(call, "PlaybackFinished", CallState.CONSENT)
            return [a.StartTimer(call.consent_timer, consent.rules.answer_timeout_ms)]
        return self._consent_decided(call, "PlaybackFinished", now)

    def _consent_decided(self, call: Call, via: str, now: datetime) -> list[a.Action]:
        actions: list[a.Action] = []
        if call.consent_timer is not None:
            actions.append(a.CancelTimer(call.consent_timer))
            call.consent_timer = None
        queue = self.directory.queues.get(call.queue_id or "")
        if queue is None:  # reconfigured away while the caller decided
            call.disposition = Disposition.FAILED
            call.hangup_side = HangupSide.SYSTEM
            self._move(call, via, CallState.QUEUED)
            self._move(call, "Overflowed", CallState.ENDING)
            return [*actions, a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]
        return actions + self._enqueue(call, queue, now, via=via)

    def _caller_digit(self, call: Call, event: e.DtmfReceived, now: datetime) -> list[a.Action]:
        consent = call.consent
        recording = self.recordings.get(call.call_id)
        if recording is not None:
            recording.mask_dtmf(now, event.duration_ms)
        live = call.state in (
            CallState.CONSENT,
            CallState.QUEUED,
            CallState.OFFERING,
            CallState.CONNECTED,
        )
        if (
            consent is None
            or not live
            or (recording is not None and recording.state is RecordingState.PAUSED)
        ):
            # Paused for card data: those digits are the card's, not consent.
            return self._move(call, "DtmfReceived", call.state)
        before = consent.state
        after = consent.digit_pressed(event.digit, call.channel_id, now)
        if call.state is CallState.CONSENT:
            if after is ConsentState.ANNOUNCED:
                return self._move(call, "DtmfReceived", CallState.CONSENT)
            if call.consent_prompt is not None:
                # Decided mid-prompt: cut it; its end queues the caller.
                self._move(call, "DtmfReceived", CallState.CONSENT)
                return [a.StopPlayback(call.consent_prompt)]
            return self._consent_decided(call, "DtmfReceived", now)
        self._move(call, "DtmfReceived", call.state)
        if before is ConsentState.GRANTED and after is ConsentState.WITHDRAWN:
            return self._stop_recording(call.call_id, now, withdrawn=True)
        return []

    def _agent_digit(self, call: Call, event: e.DtmfReceived, now: datetime) -> list[a.Action]:
        """The agent's in-call feature codes (*7, *8, *9); the tones are
        masked in the recording like the caller's."""
        if call.state is not CallState.CONNECTED or event.channel_id != call.agent_channel:
            return []
        recording = self.recordings.get(call.call_id)
        if recording is not None:
            recording.mask_dtmf(now, event.duration_ms)
        command = AGENT_CALL_CODES.get(event.digit) if call.agent_digit == "*" else None
        call.agent_digit = event.digit
        if command is None or call.tenant_id is None:
            return []
        try:
            return self._call_command(e.CallCommand(call.tenant_id, call.call_id, command), now)
        except NotRecording:
            return []

    def _call_command(self, event: e.CallCommand, now: datetime) -> list[a.Action]:
        """Raises UnknownCall, or NotRecording for a pause or resume of a
        call that is not being recorded."""
        call = self.calls.get(event.call_id)
        if call is None or call.tenant_id != event.tenant_id:
            raise UnknownCall(f"no live call {event.call_id} for tenant {event.tenant_id}")
        self._move(call, "CallCommand", call.state)
        recording = self.recordings.get(call.call_id)
        if event.command == "stop_recording":
            # Withdrawn for good, recording or not: it can never start later.
            if call.consent is not None:
                call.consent.withdraw(now)
                if call.state is CallState.CONSENT:
                    # Decided while the caller was being asked, as by a digit:
                    # cut the prompt (its end queues the caller) or queue now.
                    if call.consent_prompt is not None:
                        return [a.StopPlayback(call.consent_prompt)]
                    return self._consent_decided(call, "CallCommand", now)
            return self._stop_recording(call.call_id, now, withdrawn=True)
        if recording is None or not recording.live:
            raise NotRecording(f"call {event.call_id} is not being recorded")
        if event.command == "pause_recording":
            if not recording.pause(now):
                return []  # paused already
            return [a.PauseRecording(leg.snoop_id, leg.name) for leg in recording.legs]
        if not recording.resume(now):
            return []
        return [a.ResumeRecording(leg.snoop_id, leg.name) for leg in recording.legs]

    # -- recording ------------------------------------------------------------------------

    def _start_recording(
        self, call: Call, agent_id: str, agent_channel: str, now: datetime
    ) -> list[a.Action]:
        """The bridge is forming: record if, and only if, consent allows."""
        agent = self.directory.agents.get(agent_id)
        tenant = self.directory.tenants.get(call.tenant_id or "")
        if tenant is None or agent is None or call.consent is None:
            return []
        if not recording_allowed(call.consent, agent.recording_consent):
            return []
        if not recordable_call_id(call.call_id):
            return []
        channels = {"caller": call.channel_id, "agent": agent_channel}
        legs = tuple(
            RecordedLeg(
                role, channels[role], f"{call.call_id}-snoop-{role}", f"{call.call_id}-{role}"
            )
            for role in ROLES
        )
        evidence = call.consent.evidence()
        recording = LiveRecording(call.call_id, tenant.id, now, tenant.recording, evidence, legs)
        self.recordings[call.call_id] = recording
        for leg in legs:
            self._recording_names[leg.name] = call.call_id
            self._snoops[leg.snoop_id] = (call.call_id, leg.name)
        call.recorded = True
        return [
            a.OpenRecording(call.call_id, tenant.id, now, evidence),
            *(
                a.RecordLeg(
                    leg.snoop_id,
                    leg.channel_id,
                    leg.name,
                    f"{SNOOP_ROLE},{call.call_id},{leg.role}",
                )
                for leg in legs
            ),
        ]

    def _stop_recording(
        self, call_id: str, now: datetime, *, withdrawn: bool = False
    ) -> list[a.Action]:
        recording = self.recordings.get(call_id)
        if recording is None or not recording.stop(now, withdrawn=withdrawn):
            return []
        actions: list[a.Action] = [
            a.StopRecording(leg.snoop_id, leg.name) for leg in recording.legs
        ]
        if recording.complete_if_finished():
            return actions + self._process(recording)
        recording.wait_timer = f"recording/{call_id}"
        self._recording_timers[recording.wait_timer] = call_id
        return [*actions, a.StartTimer(recording.wait_timer, RECORDING_WAIT_MS)]

    def _recording_event(
        self, event: e.RecordingStarted | e.RecordingFinished, now: datetime
    ) -> list[a.Action]:
        call_id = self._recording_names.get(event.name)
        recording = self.recordings.get(call_id) if call_id is not None else None
        if recording is None or recording.leg(event.name) is None:
            return []  # not ours, or processed already
        if isinstance(event, e.RecordingStarted):
            recording.leg_started(event.name, now)
            return []
        if recording.leg_finished(event.name):
            return self._process(recording)
        return []

    def _recording_wait_over(self, timer_id: str) -> list[a.Action]:
        call_id = self._recording_timers.pop(timer_id)
        recording = self.recordings.get(call_id)
        if recording is None:
            return []
        recording.wait_timer = None
        recording.give_up_waiting()
        return self._process(recording)

    def _process(self, recording: LiveRecording) -> list[a.Action]:
        actions: list[a.Action] = []
        if recording.wait_timer is not None:
            self._recording_timers.pop(recording.wait_timer, None)
            actions.append(a.CancelTimer(recording.wait_timer))
            recording.wait_timer = None
        self.recordings.pop(recording.call_id, None)
        for leg in recording.legs:
            self._recording_names.pop(leg.name, None)
            self._snoops.pop(leg.snoop_id, None)
        return [*actions, a.ProcessRecording(recording.job())]

    # -- agents -------------------------------------------------------------------------

    def _agent_command(self, event: e.AgentCommand, now: datetime) -> list[a.Action]:
        """Raises UnknownAgent or InvalidTransition for the caller to report."""
        match event.command:
            case "login":
                change = self.board.login(event.agent_id, now)
            case "logout":
                change = self.board.logout(event.agent_id, now)
            case "pause":
                change = self.board.pause(event.agent_id, event.reason or "break", now)
            case "unpause":
                change = self.board.unpause(event.agent_id, now)
            case _:
                change = self.board.end_wrapup(event.agent_id, now)
        return self._board(change) + self._route(now)

    def _shutdown(self, now: datetime) -> list[a.Action]:
        actions: list[a.Action] = []
        for status in self.board.statuses():
            if status.state is not AgentState.LOGGED_OUT:
                actions += self._board(self.board.shutdown(status.agent_id, now))
        return actions

    def _board(self, change: BoardChange) -> list[a.Action]:
        return [*(a.RecordAgentState(r) for r in change.records), *change.timers]

    # -- helpers -----------------------------------------------------------------------

    def _move(self, call: Call, event_name: str, target: CallState) -> list[a.Action]:
        call.state = CALL_TRANSITIONS.move(call.state, event_name, target)
        return []

    def _queue(self, call: Call) -> Queue:
        assert call.queue_id is not None
        return self.directory.queues[call.queue_id]

    @staticmethod
    def _cancel_ring_timer(call: Call) -> list[a.Action]:
        timer, call.ring_timer = call.ring_timer, None
        return [a.CancelTimer(timer)] if timer else []

    def _play(self, call: Call, media: tuple[str, ...]) -> a.Play:
        playback_id = call.next_playback_id()
        self._by_playback[playback_id] = call.call_id
        return a.Play(call.channel_id, playback_id, media)

    def _track(self, call: Call) -> None:
        self.calls[call.call_id] = call
        self._by_channel[call.channel_id] = call.call_id

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
        self.waiting.pop(call.call_id, None)
        self._by_channel.pop(call.channel_id, None)
        for playback_id in [p for p, c in self._by_playback.items() if c == call.call_id]:
            del self._by_playback[playback_id]
        for leg in [leg for leg, (c, _) in self._legs.items() if c == call.call_id]:
            del self._legs[leg]

    @staticmethod
    def _cdr(call: Call) -> CdrRecord:
        assert call.ended_at is not None
        ended = call.ended_at
        answered = call.answered_at
        waited_until = answered or ended
        talk_end = call.talk_ended_at or ended
        return CdrRecord(
            call_id=call.call_id,
            tenant_id=call.tenant_id,
            direction="inbound",
            did=call.did,
            caller=call.caller,
            arrived_at=call.arrived_at,
            answered_at=answered,
            ended_at=ended,
            disposition=call.disposition,
            hangup_side=call.hangup_side,
            queue_id=call.queue_id,
            agent_id=call.agent_id,
            wait_ms=(
                ms_between(call.first_enqueued_at, waited_until) if call.first_enqueued_at else 0
            ),
            talk_ms=ms_between(answered, talk_end) if answered else 0,
            consent=_consent_outcome(call.consent),
            segments=tuple(call.segments),
        )


# The CDR consent outcomes under which no recording was ever started (only
# "granted" and "withdrawn" follow a consent; "n/a" is not known).
NEVER_RECORDED_OUTCOMES = frozenset({"not_asked", "declined"})


def _consent_outcome(consent: Consent | None) -> str:
    """The CDR's consent column: what was decided, whatever the policy."""
    if consent is None:
        return "n/a"
    return {
        ConsentState.NOT_ASKED: "not_asked",
        ConsentState.GRANTED: "granted",
        ConsentState.WITHDRAWN: "withdrawn",
    }.get(consent.state, "declined")
