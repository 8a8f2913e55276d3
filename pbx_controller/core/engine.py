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
from pbx_controller.core.agent import AgentBoard, BoardChange
from pbx_controller.core.call_flow import CALL_TRANSITIONS, Call, CallState
from pbx_controller.core.cdr import CdrRecord, CdrSegment, Disposition, HangupSide, ms_between
from pbx_controller.core.kpi import Ewma, estimated_wait_ms
from pbx_controller.core.model import Directory, Queue
from pbx_controller.core.routing import OfferBook, Router, WaitingCall, queue_positions

# Dialplan contexts the engine hands channels back to (dialplan/pbx-controller.conf).
UNKNOWN_DID_CONTEXT = "pbx-unknown-did"
FALLBACK_CONTEXT = "pbx-fallback"
CLOSED_CONTEXT = "pbx-closed"
OVERFLOW_CONTEXT = "pbx-overflow"
# App arguments of an agent leg: "agent,<call id>,<agent id>".
AGENT_ROLE = "agent"


class DuplicateCall(ValueError):
    """A CallArrived for a call id or channel the engine already tracks."""


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

    def reload(self, directory: Directory, now: datetime) -> list[a.Action]:
        """New configuration: new calls use it at once; agents keep their state."""
        self.directory = directory
        self.router.reload(directory.queues)
        change = self.board.reconfigure(directory.agents.values(), directory.queues, now)
        return self._board(change) + self._route(now)

    # -- entry point ---------------------------------------------------------------

    def handle(self, event: e.Event, now: datetime) -> list[a.Action]:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        match event:
            case e.CallArrived():
                return self._arrived(event, now)
            case e.CallAdopted():
                return self._adopted(event)
            case e.AgentCommand():
                return self._agent_command(event, now)
            case e.TimerFired() if self.board.owns_timer(event.timer_id):
                return self._board(self.board.timer_fired(event.timer_id, now)) + self._route(now)
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
                return self._move(call, name, call.state)
            case e.HangupRequested():
                return self._hangup_requested(call, now)
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
        self._track(call)
        self._move(call, "CallAdopted", CallState.ENDING)
        return [a.ContinueInDialplan(call.channel_id, FALLBACK_CONTEXT)]

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
            return self._enqueue(call, queue, now)
        if call.announcing and call.state in (CallState.QUEUED, CallState.OFFERING):
            call.announcing = False
            self._move(call, "PlaybackFinished", call.state)
            return [a.StartMoh(call.channel_id, self._queue(call).announcements.hold_music)]
        return self._move(call, "PlaybackFinished", call.state)

    def _hangup_requested(self, call: Call, now: datetime) -> list[a.Action]:
        state = call.state
        if state in (CallState.GREETING, CallState.QUEUED, CallState.OFFERING):
            call.disposition = Disposition.ABANDONED
            call.hangup_side = HangupSide.CALLER
            self._move(call, "HangupRequested", CallState.ENDING)
            return self._leave_queue(call, now)
        if state is CallState.CONNECTED:
            call.hangup_side = HangupSide.CALLER
            self._move(call, "HangupRequested", CallState.ENDING)
            return self._end_agent_side(call, now)
        return self._move(call, "HangupRequested", state)

    def _action_failed(self, call: Call, event: e.ActionFailed, now: datetime) -> list[a.Action]:
        if call.state is CallState.ENDING:
            return self._move(call, "ActionFailed", CallState.ENDING)
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
                return [a.StartMoh(call.channel_id, self._queue(call).announcements.hold_music)]
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
        return self._move(call, "TimerFired", call.state)  # a stale timer

    def _ended(
        self, call: Call, event: e.ChannelHungUp | e.ChannelLeftApp, now: datetime
    ) -> list[a.Action]:
        actions: list[a.Action] = []
        if call.state in (CallState.GREETING, CallState.QUEUED, CallState.OFFERING):
            if isinstance(event, e.ChannelHungUp) and event.lost:
                # Vanished unseen (Asterisk restarted): nobody hung up on purpose.
                call.disposition = Disposition.FAILED
                call.hangup_side = HangupSide.SYSTEM
            else:
                call.disposition = Disposition.ABANDONED
                call.hangup_side = HangupSide.CALLER
            actions += self._leave_queue(call, now)
        elif call.state is CallState.CONNECTED:
            lost = isinstance(event, e.ChannelHungUp) and event.lost
            call.hangup_side = HangupSide.SYSTEM if lost else HangupSide.CALLER
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
        if self.board.staffed(queue.id) == 0 and any(r.when_unstaffed for r in queue.overflow):
            return self._overflow(call, now, "unstaffed")
        self.waiting[call.call_id] = WaitingCall(
            call.call_id, queue.id, now, call.priority, call.seq
        )
        actions: list[a.Action] = [a.StartMoh(call.channel_id, queue.announcements.hold_music)]
        if queue.max_wait_ms is not None:
            actions.append(self._queue_timer(call, "maxwait", queue.max_wait_ms))
        # Requirements relax with the wait: look again at each relaxation point.
        for after_ms in sorted({r.after_ms for req in queue.skills for r in req.relaxations}):
            actions.append(self._queue_timer(call, "relax", after_ms))
        if queue.announcements.position or queue.announcements.estimated_wait:
            actions.append(self._queue_timer(call, "announce", queue.announcements.first_after_ms))
        return actions + self._route(now)

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
                        f"{AGENT_ROLE},{call.call_id},{agent_id}",
                        caller_id=call.caller,
                        # Asterisk gives up a little after our own ring timeout.
                        timeout_ms=offer.ring_timeout_ms + 2000,
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
        actions += [a.CancelTimer(t) for t in call.queue_timers]
        call.queue_timers.clear()
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
            a.StopMoh(call.channel_id),
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
            actions += [a.StopMoh(call.channel_id), play]
        return actions

    def _leave_queue(self, call: Call, now: datetime) -> list[a.Action]:
        """The caller is gone or handed back: drop its place and its offers."""
        self.waiting.pop(call.call_id, None)
        actions: list[a.Action] = self._cancel_ring_timer(call)
        for agent_id in self.offers.withdraw(call.call_id):
            actions += self._drop_leg(call, agent_id, now, "cancelled")
            actions += self._board(self.board.offer_cancelled(agent_id, call.call_id, now))
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
        if isinstance(event, e.HangupRequested | e.DtmfReceived | e.PlaybackFinished):
            return []  # the leg's end follows; digits from the agent are not consent
        if isinstance(event, e.ActionFailed) and event.action not in ("Originate", "Bridge"):
            return []
        # The leg is gone: ended, failed to originate, or could not be bridged.
        self._legs.pop(channel_id, None)
        if call is None:
            return []
        CALL_TRANSITIONS.targets(call.state, "AgentLegGone")
        if call.state is CallState.OFFERING and agent_id in call.ringing:
            started = call.ringing.pop(agent_id)[1]
            call.segments.append(CdrSegment("offer", agent_id, started, now, "missed"))
            outcome = self.offers.missed(call.call_id, agent_id)
            actions: list[a.Action] = []
            if outcome.counted:
                actions += self._board(self.board.offer_missed(agent_id, call.call_id, now))
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
        call.bridge_id = f"{call.call_id}-bridge"
        call.disposition = Disposition.ANSWERED
        self._move(call, "AgentLegAnswered", CallState.CONNECTED)
        if call.announcing and call.announcement is not None:
            # The agent is there: cut the announcement, do not make them wait.
            actions.append(a.StopPlayback(call.announcement))
        call.announcing = False
        return [
            *actions,
            *self._cancel_ring_timer(call),
            a.StopMoh(call.channel_id),
            a.Bridge(call.bridge_id, (call.channel_id, event.channel_id)),
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
        actions: list[a.Action] = []
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
            segments=tuple(call.segments),
        )
