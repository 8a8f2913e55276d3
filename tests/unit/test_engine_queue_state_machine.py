"""Hypothesis drives a real Engine through the whole inbound queue flow.

Two tenants: Acme's "sales" rings all and overflows after its max wait to
Acme's "backup" (linear), Globex's "support" uses a strategy drawn per run.
Four agents with skills and penalties, some in both tenants' queues, and
random interleavings of arrivals (DIDs with a queue, without one, unknown),
greetings, agent commands, agent legs answering, failing and hanging up,
every timer the engine armed, caller hang-ups and the passing of time.

A `Ledger` keeps what the outside world has seen (every event fed, every
action returned) and holds each step to the contract:

- no call gets two Bridges and no agent is in two bridges at once; a Bridge
  joins the call's own caller with a leg originated for that call;
- every Originate rings an agent who was ready just before (its OfferMade
  row comes first), is a member of the call's queue and has the skills the
  queue still requires after the call's wait;
- an agent is ON_CALL iff it is in an open bridge of a live call, RESERVED
  iff exactly one of its legs rings, and a call is OFFERING iff one of its
  legs rings (and its ring timer is armed);
- every call that left emits exactly one CDR, in answer to its caller's
  channel leaving, with answered_at iff the disposition is answered iff the
  call was bridged, and one segment per leg originated;
- no action targets a channel after the engine saw it leave (a Hangup of an
  agent leg may race its end and is allowed);
- RecordAgentState rows chain: each row's previous state is the agent's last
  recorded state, and the log agrees with the board;
- the engine's waiting set only holds QUEUED calls;
- InvalidTransition is raised only for (state, event) pairs the tables lack,
  and a refused command changes nothing.

Timers fire only once armed, never after a CancelTimer, and never before
they are due (the clock jumps to the due time when one fires). Legs, timers
and playbacks come from the engine's own actions, so rules draw them from
the ledger (`st.data()` with a precondition) rather than from Bundles.

An overflow also cancels queue timers that already fired; that is harmless
and allowed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import (
    AGENT_TRANSITIONS,
    AUTO_PAUSE_REASON,
    AgentState,
    AgentStateRecord,
)
from pbx_controller.core.call_flow import CALL_TRANSITIONS, CallState
from pbx_controller.core.cdr import CdrRecord, Disposition, HangupSide, ms_between
from pbx_controller.core.engine import UNKNOWN_DID_CONTEXT, Engine
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    Directory,
    OverflowRule,
    Queue,
    QueueMembership,
    Relaxation,
    SkillRequirement,
    Strategy,
    Tenant,
)
from pbx_controller.core.routing import WaitingCall

S = AgentState
T0 = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)  # Warsaw's spring-forward night
SALES_DID, SUPPORT_DID, BARE_DID, UNKNOWN_DID = "100", "200", "101", "999"
TENANT_OF = {SALES_DID: "acme", BARE_DID: "acme", SUPPORT_DID: "globex"}
QUEUE_OF = {SALES_DID: "sales", SUPPORT_DID: "support"}
# Each queue has its own hold music, so a StartMoh tells which queue a caller entered.
QUEUE_OF_MUSIC = {"acme-sales": "sales", "acme-backup": "backup", "globex": "support"}
TENANT_OF_QUEUE = {"sales": "acme", "backup": "acme", "support": "globex"}
AGENT_IDS = ("ann", "bob", "cat", "dan")
COMMAND_EVENTS = {
    "login": "Login",
    "logout": "Logout",
    "pause": "Pause",
    "unpause": "Unpause",
    "end_wrapup": "WrapUpEnded",
}
QUEUE_TIMERS = ("maxwait", "relax", "announce")
# Where each queue overflows after its max wait (see the directory below).
OVERFLOW_TO = {"sales": "backup", "backup": "sales"}
MAX_CALLERS = 4  # live at once: enough to queue and compete, few enough to finish


def build_directory(support_strategy: Strategy) -> Directory:
    """Acme: "sales" rings all and overflows after 90 s to "backup", whose own
    overflow would loop back (so it goes to the dialplan). Globex: "support",
    with the drawn strategy, at most 3 waiting and no callers when unstaffed."""
    sales = Queue(
        "sales",
        "acme",
        strategy=Strategy.RING_ALL,
        skills=(SkillRequirement("en", 6, (Relaxation(20_000, min_level=3),)),),
        ring_timeout_ms=10_000,
        wrapup_ms=5_000,
        max_wait_ms=90_000,
        overflow=(OverflowRule(after_ms=90_000, queue_id="backup"),),
        announcements=Announcements("acme-sales", first_after_ms=15_000, every_ms=20_000),
    )
    backup = Queue(
        "backup",
        "acme",
        strategy=Strategy.LINEAR,
        ring_timeout_ms=10_000,
        wrapup_ms=5_000,
        max_wait_ms=60_000,
        overflow=(OverflowRule(after_ms=60_000, queue_id="sales"),),
        announcements=Announcements("acme-backup", position=False, first_after_ms=20_000),
    )
    support = Queue(
        "support",
        "globex",
        strategy=support_strategy,
        skills=(SkillRequirement("de", 5, (Relaxation(30_000, optional=True),)),),
        ring_timeout_ms=8_000,
        wrapup_ms=0,  # straight back to ready: routing runs inside the hang-up
        max_callers=3,
        overflow=(OverflowRule(when_unstaffed=True),),
        announcements=Announcements(
            "globex", estimated_wait=False, first_after_ms=10_000, every_ms=25_000
        ),
    )

    def member(queue: str, penalty: int = 0, order: int = 0, weight: int = 1) -> QueueMembership:
        return QueueMembership(queue, penalty=penalty, order=order, weight=weight)

    agents = [
        AgentProfile("ann", "Ann", "PJSIP/ann", {"en": 8}, (member("sales"),)),
        AgentProfile(
            "bob",
            "Bob",
            "PJSIP/bob",
            {"en": 4, "de": 6},
            (member("sales"), member("support", order=2, weight=3), member("backup", order=2)),
        ),
        AgentProfile("cat", "Cat", "PJSIP/cat", {"de": 3}, (member("support", order=1),)),
        AgentProfile(
            "dan",
            "Dan",
            "PJSIP/dan",
            {"en": 6, "de": 9},
            (
                member("sales", penalty=1),
                member("support", penalty=1, order=3),
                member("backup", order=1),
            ),
        ),
    ]
    return Directory.build(
        [Tenant("acme", "Acme"), Tenant("globex", "Globex", greeting=("sound:globex",))],
        TENANT_OF.items(),
        queues=[sales, backup, support],
        agents=agents,
        did_queues=[(did, queue) for did, queue in QUEUE_OF.items()],
    )


# -- the ledger: what the world saw, and the rules each step must keep ----------------------


@dataclass
class Caller:
    call_id: str
    channel_id: str
    did: str
    arrived_at: datetime
    greeting: str | None = None  # the first playback's id
    queue_id: str | None = None  # the queue it waits in (or waited in last)
    enqueued_at: datetime | None = None  # when it entered that queue
    first_enqueued_at: datetime | None = None
    moved: bool = False  # overflowed to another queue
    hangup_requested: bool = False  # the caller hung up (or its channel vanished)
    handed_off: bool = False  # we sent it to the dialplan or hung it up
    gone: bool = False  # its channel left the app
    bridge: Leg | None = None
    legs: list[Leg] = field(default_factory=list)
    cdrs: list[CdrRecord] = field(default_factory=list)
    last_action: str = ""  # the last request made on its channel
    music: bool = False  # hold music plays to it
    playing: str | None = None  # an announcement's playback, once in a queue


@dataclass
class Leg:
    channel_id: str
    call_id: str
    agent_id: str
    answered: bool = False
    hung_up: bool = False  # the engine asked for its hang-up
    gone: bool = False

    @property
    def ringing(self) -> bool:
        return not (self.answered or self.hung_up or self.gone)


class Ledger:
    """Every event fed and every action returned. `saw` checks one step and
    raises AssertionError at the first broken rule; `check_engine` compares
    the ledger with the engine's own state after the step."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.now = T0
        self.callers: dict[str, Caller] = {}
        self.caller_at: dict[str, Caller] = {}  # channel id -> caller
        self.legs: dict[str, Leg] = {}
        self.playbacks: dict[str, str] = {}  # playing now: playback id -> channel id
        self.timers: dict[str, datetime] = {}  # armed: timer id -> due
        self.bridges: dict[str, Leg] = {}  # open: bridge id -> the agent leg in it
        self.prepared: dict[str, str] = {}  # made while agents ring: bridge id -> call id
        self.agent_state: dict[str, AgentState] = dict.fromkeys(directory.agents, S.LOGGED_OUT)
        self._rows: dict[str, AgentStateRecord] = {}  # this step's last row per agent
        self._leaving: Caller | None = None

    # -- one step ---------------------------------------------------------------------

    def saw(self, event: e.Event, actions: Sequence[a.Action], now: datetime) -> None:
        self.now = now
        self._rows = {}
        self._leaving = None
        self._before(event)
        for action in actions:
            self._check(event, action)
        if self._leaving is not None:
            assert len(self._leaving.cdrs) == 1, f"{self._leaving.call_id} left without a CDR"

    def _before(self, event: e.Event) -> None:
        match event:
            case e.CallArrived(call_id, channel_id, did):
                assert call_id not in self.callers
                caller = Caller(call_id, channel_id, did, self.now)
                self.callers[call_id] = self.caller_at[channel_id] = caller
            case e.PlaybackFinished(playback_id, channel_id, completed):
                self.playbacks.pop(playback_id, None)
                listener = self.caller_at.get(channel_id)
                if listener is not None and listener.playing == playback_id:
                    listener.playing = None
                if (
                    listener is not None
                    and playback_id == listener.greeting
                    and completed
                    and listener.did in QUEUE_OF
                    and not (listener.hangup_requested or listener.gone)
                ):
                    listener.queue_id = QUEUE_OF[listener.did]
                    listener.enqueued_at = listener.first_enqueued_at = self.now
            case e.HangupRequested(channel_id) if channel_id in self.caller_at:
                self.caller_at[channel_id].hangup_requested = True
            case e.ActionFailed(channel_id, action, _, gone):
                if channel_id in self.caller_at and gone:
                    self.caller_at[channel_id].hangup_requested = True
                if channel_id in self.legs and action == "Originate":
                    self.legs[channel_id].gone = True
            case e.ChannelLeftApp(channel_id) | e.ChannelHungUp(channel_id):
                if channel_id in self.legs:
                    self.legs[channel_id].gone = True
                elif channel_id in self.caller_at:
                    caller = self.caller_at[channel_id]
                    if not caller.gone:
                        caller.gone = True
                        self._leaving = caller
                    for playback_id, on in list(self.playbacks.items()):
                        if on == channel_id:
                            del self.playbacks[playback_id]
            case e.AgentLegAnswered(channel_id) if channel_id in self.legs:
                self.legs[channel_id].answered = True
            case e.TimerFired(timer_id):
                due = self.timers.pop(timer_id)  # only armed timers fire
                assert due <= self.now, f"{timer_id} fired before it was due"

    def _caller(self, channel_id: str, action: a.Action) -> Caller:
        caller = self.caller_at.get(channel_id)
        assert caller is not None, f"{action} names a channel that is no caller's"
        assert not caller.gone, f"{action} after {channel_id} left"
        caller.last_action = type(action).__name__
        return caller

    def _check(self, event: e.Event, action: a.Action) -> None:
        match action:
            case a.StartMoh(channel_id, music):
                caller = self._caller(channel_id, action)
                announced = (
                    isinstance(event, e.PlaybackFinished) and event.playback_id != caller.greeting
                )
                deferred = isinstance(event, e.TimerFired) and "/hold/" in event.timer_id
                if deferred:  # the agent rang past the grace: music of the same queue
                    assert QUEUE_OF_MUSIC[music] == caller.queue_id, action
                elif not announced:  # the caller enters a queue
                    self._enter(event, caller, QUEUE_OF_MUSIC[music])
                caller.music = True
            case a.Answer(channel_id) | a.StopMoh(channel_id):
                self._caller(channel_id, action).music = False
                if isinstance(action, a.Answer):
                    assert isinstance(event, e.CallArrived), f"{action} outside the arrival"
                    assert event.channel_id == channel_id
            case a.Play(channel_id, playback_id, _):
                caller = self._caller(channel_id, action)
                assert playback_id.startswith(f"{caller.call_id}-pb")
                assert playback_id not in self.playbacks
                self.playbacks[playback_id] = channel_id
                if caller.greeting is None:
                    caller.greeting = playback_id
                if caller.enqueued_at is not None:
                    caller.playing = playback_id
            case a.Hangup(channel_id):
                if channel_id in self.legs:
                    self.legs[channel_id].hung_up = True  # may race the leg's end
                else:
                    self._caller(channel_id, action).handed_off = True
            case a.ContinueInDialplan(channel_id):
                self._caller(channel_id, action).handed_off = True
            case a.Originate():
                self._originate(action)
            case a.PrepareBridge(bridge_id):
                caller = self.callers.get(bridge_id.removesuffix("-bridge"))
                assert caller is not None, f"{action}: no such caller"
                assert not caller.gone, f"{action}: the caller is gone"
                assert bridge_id not in self.prepared, f"{action} twice"
                self.prepared[bridge_id] = caller.call_id
            case a.Bridge():
                self._bridge(event, action)
            case a.DestroyBridge(bridge_id):
                connected = self.bridges.pop(bridge_id, None) is not None
                assert self.prepared.pop(bridge_id, None) is not None, f"{action}: never made"
                assert connected or bridge_id not in self.bridges, action
            case a.RecordAgentState(record):
                last = self.agent_state[record.agent_id]
                assert record.previous is last, f"{record.agent_id}: row from {last} {record}"
                assert record.at == self.now
                self.agent_state[record.agent_id] = record.state
                self._rows[record.agent_id] = record
            case a.StartTimer(timer_id, delay_ms) if "/hold/" in timer_id:
                # The caller enters a queue and an agent rings at once: the
                # hold music waits (no music played yet, so it tells no queue).
                caller = self.callers[timer_id.split("/")[0]]
                assert caller.queue_id is not None, action
                entered = caller.queue_id
                if isinstance(event, e.TimerFired):  # an overflow
                    entered = OVERFLOW_TO[caller.queue_id]
                self._enter(event, caller, entered)
                self.timers[timer_id] = self.now + timedelta(milliseconds=delay_ms)
            case a.StartTimer(timer_id, delay_ms):
                assert timer_id not in self.timers, f"{timer_id} armed twice"
                assert delay_ms >= 0
                self.timers[timer_id] = self.now + timedelta(milliseconds=delay_ms)
            case a.CancelTimer(timer_id):
                # A queue timer that fired already may be cancelled again when
                # the caller overflows (harmless); ring and wrap-up timers never.
                armed = self.timers.pop(timer_id, None) is not None
                assert armed or timer_id.split("/")[1] in QUEUE_TIMERS, f"{action}: not armed"
            case a.EmitCdr(cdr):
                self._cdr(cdr)
            case a.StopPlayback():
                pass
            case _:
                raise AssertionError(f"unexpected action {action}")

    def _enter(self, event: e.Event, caller: Caller, queue_id: str) -> None:
        assert TENANT_OF_QUEUE[queue_id] == TENANT_OF.get(caller.did), (
            f"{caller.call_id} of {caller.did} entered {queue_id}: another tenant's queue"
        )
        if isinstance(event, e.PlaybackFinished):  # the greeting's end
            assert queue_id == caller.queue_id, f"{caller.call_id} entered {queue_id}"
            return
        assert isinstance(event, e.TimerFired), event
        assert "/maxwait/" in event.timer_id, event
        assert queue_id != caller.queue_id, f"{caller.call_id} overflowed to its own queue"
        caller.queue_id, caller.enqueued_at, caller.moved = queue_id, self.now, True

    def _originate(self, action: a.Originate) -> None:
        role, call_id, agent_id, queue_id = action.app_args.split(",")
        assert role == "agent"
        caller = self.callers[call_id]
        # The queue the offer is from: a restarted run adopts a talking call by it.
        assert queue_id in self.directory.queues, action
        going = caller.gone or caller.hangup_requested or caller.handed_off
        assert not going, f"{action} for a caller who is gone or going"
        assert caller.enqueued_at is not None, action
        assert caller.queue_id is not None, action
        assert action.channel_id.startswith(f"{call_id}-leg")
        assert action.originator == caller.channel_id, action  # the caller's codecs
        assert action.channel_id not in self.legs
        assert action.channel_id not in self.caller_at
        profile = self.directory.agents[agent_id]
        assert action.endpoint == profile.endpoint
        assert profile.membership(caller.queue_id) is not None, f"{agent_id} not in the queue"
        queue = self.directory.queues[caller.queue_id]
        needs = queue.requirements_after(ms_between(caller.enqueued_at, self.now))
        for skill, level in needs:
            assert profile.skills.get(skill, 0) >= level, f"{agent_id} lacks {skill} {level}"
        row = self._rows.get(agent_id)
        assert row is not None, f"{action}: no OfferMade row before it"
        assert (row.previous, row.state, row.event, row.call_id) == (
            S.READY,
            S.RESERVED,
            "OfferMade",
            call_id,
        ), f"{action} rings {agent_id}, who was not ready: {row}"
        assert not any(leg.agent_id == agent_id for leg in self.bridges.values()), (
            f"{action} rings {agent_id}, who is in a bridge"
        )
        assert not any(leg.ringing and leg.agent_id == agent_id for leg in self.legs.values()), (
            f"{action} rings {agent_id}, whose phone rings already"
        )
        leg = Leg(action.channel_id, call_id, agent_id)
        self.legs[leg.channel_id] = leg
        caller.legs.append(leg)

    def _bridge(self, event: e.Event, action: a.Bridge) -> None:
        assert len(action.channel_ids) == 2, action
        caller = self._caller(action.channel_ids[0], action)
        assert caller.bridge is None, f"second Bridge for {caller.call_id}"
        leg = self.legs.get(action.channel_ids[1])
        assert leg is not None, f"{action}: not a leg we originated"
        assert leg.call_id == caller.call_id, f"{action}: a leg of another call"
        assert not leg.gone, f"{action} after {leg.channel_id} left"
        assert event == e.AgentLegAnswered(leg.channel_id, leg.call_id, leg.agent_id), (
            f"{action} without that leg's answer"
        )
        assert not any(b.agent_id == leg.agent_id for b in self.bridges.values()), (
            f"{leg.agent_id} in two bridges"
        )
        state = self.agent_state[leg.agent_id]
        assert state is S.ON_CALL, f"{leg.agent_id} bridged while {state.value}"
        assert action.bridge_id not in self.bridges
        assert self.prepared.get(action.bridge_id) == caller.call_id, (
            f"{action}: not the bridge prepared for {caller.call_id}"
        )
        self.bridges[action.bridge_id] = leg
        caller.bridge = leg

    def _cdr(self, cdr: CdrRecord) -> None:
        caller = self.callers.get(cdr.call_id)
        assert caller is not None, cdr
        assert caller is self._leaving, f"CDR of {cdr.call_id} before its channel left"
        assert not caller.cdrs, f"second CDR for {cdr.call_id}"
        caller.cdrs.append(cdr)
        answered = cdr.answered_at is not None
        assert answered == (cdr.disposition is Disposition.ANSWERED), (
            f"{cdr.call_id}: answered_at {cdr.answered_at} with disposition {cdr.disposition.value}"
        )
        assert answered == (caller.bridge is not None), f"{cdr.call_id}: bridged? {caller.bridge}"
        if caller.bridge is not None:
            assert cdr.agent_id == caller.bridge.agent_id
        assert (cdr.arrived_at, cdr.ended_at, cdr.did) == (caller.arrived_at, self.now, caller.did)
        assert cdr.tenant_id == TENANT_OF.get(caller.did)
        assert (cdr.disposition is Disposition.UNKNOWN_DID) == (caller.did not in TENANT_OF)
        assert cdr.queue_id == (caller.queue_id if caller.enqueued_at else None), cdr
        if caller.enqueued_at is None or caller.first_enqueued_at is None:
            assert cdr.wait_ms == 0
        else:
            until = cdr.answered_at or self.now
            # The whole wait, across every queue the caller was moved through.
            assert cdr.wait_ms == ms_between(caller.first_enqueued_at, until)
        rung = Counter(leg.agent_id for leg in caller.legs)
        assert Counter(s.agent_id for s in cdr.segments) == rung, "one segment per leg"
        outcomes = [s.outcome for s in cdr.segments]
        assert outcomes.count("answered") == int(answered)
        assert set(outcomes) <= {"answered", "missed", "cancelled", "failed"}

    # -- the engine against the ledger, between steps -------------------------------------

    def check_engine(self, engine: Engine) -> None:
        live = {c.call_id for c in self.callers.values() if not c.gone}
        assert set(engine.calls) == live, "the engine tracks exactly the calls still here"
        for caller in self.callers.values():
            assert len(caller.cdrs) == int(caller.gone), caller.call_id
        for call_id in engine.waiting:
            assert engine.calls[call_id].state is CallState.QUEUED, (
                f"{call_id} waits in state {engine.calls[call_id].state}"
            )
        for leg in self.bridges.values():
            assert not self.callers[leg.call_id].gone, f"{leg.call_id}: bridge outlived the call"
        for call_id in self.prepared.values():
            # A bridge made for an offer nobody answered goes with the call.
            assert not self.callers[call_id].gone, f"{call_id}: prepared bridge outlived the call"
        in_bridge = {leg.agent_id for leg in self.bridges.values()}
        rings = Counter(leg.agent_id for leg in self.legs.values() if leg.ringing)
        for status in engine.board.statuses():
            agent_id = status.agent_id
            state = status.state.value
            assert status.state is self.agent_state[agent_id], f"{agent_id}: log and board"
            assert (status.state is S.ON_CALL) == (agent_id in in_bridge), (
                f"{agent_id} is {state}, in a bridge: {agent_id in in_bridge}"
            )
            assert rings[agent_id] == int(status.state is S.RESERVED), (
                f"{agent_id} is {state} with {rings[agent_id]} legs ringing"
            )
        ring_timers = Counter(
            t.split("/")[0] for t in self.timers if not t.startswith("agent:") and "/ring/" in t
        )
        for call_id, call in engine.calls.items():
            caller = self.callers[call_id]
            offering = call.state is CallState.OFFERING
            assert any(leg.ringing for leg in caller.legs) == offering, (call_id, call.state)
            assert ring_timers[call_id] == int(offering), (call_id, call.state)
            bridged = any(leg is caller.bridge for leg in self.bridges.values())
            assert bridged == (call.state is CallState.CONNECTED), (call_id, call.state)
        assert set(ring_timers) <= set(engine.calls), "a ring timer outlived its call"
        wrapping = Counter(t.split("/")[0][len("agent:") :] for t in self.timers if "/wrapup/" in t)
        for status in engine.board.statuses():
            assert wrapping[status.agent_id] == int(status.state is S.WRAP_UP), (
                f"{status.agent_id} is {status.state.value} with {wrapping[status.agent_id]} "
                "wrap-up timers"
            )

    # -- what the rules choose from ---------------------------------------------------

    def armed(self, *kinds: str) -> list[str]:
        return sorted(t for t in self.timers if t.split("/")[1] in kinds)

    def legs_where(self, *, answered: bool) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.answered is answered and not leg.gone]

    def callers_where(self, *, hung_up: bool | None = None) -> list[Caller]:
        out = [c for c in self.callers.values() if not c.gone]
        if hung_up is None:
            return [c for c in out if c.hangup_requested or c.handed_off]
        return [c for c in out if c.hangup_requested is hung_up]


# -- the machine ----------------------------------------------------------------------------


def check_refusal(err: InvalidTransition) -> None:
    """Refused only for a pair its table lacks, never for a move the engine chose."""
    assert err.target is None, f"the engine broke its own table: {err}"
    if isinstance(err.state, AgentState):
        assert not AGENT_TRANSITIONS.allows(err.state, err.event), err
    else:
        assert isinstance(err.state, CallState), err
        assert not CALL_TRANSITIONS.allows(err.state, err.event), err


def _only(actions: Sequence[a.Action], kind: type[a.Bridge]) -> list[a.Bridge]:
    return [x for x in actions if isinstance(x, kind)]


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(build_directory(Strategy.LONGEST_IDLE))
        self.ledger = Ledger(self.engine.directory)
        self.now = T0
        self.serial = 0

    def feed(self, event: e.Event) -> list[a.Action]:
        before = self.engine.board.statuses()
        refused: InvalidTransition | None = None
        actions: list[a.Action] = []
        try:
            actions = self.engine.handle(event, self.now)
        except InvalidTransition as err:
            refused = err
        if refused is not None:
            check_refusal(refused)
            assert self.engine.board.statuses() == before, "refused, yet changed"
            hypothesis.event(f"refused {refused.event} in {refused.state.value}")
        self.ledger.saw(event, actions, self.now)
        return actions

    @initialize(
        strategy=st.sampled_from(list(Strategy)),
        absent=st.sets(st.sampled_from(AGENT_IDS), max_size=2),
        seed=st.integers(0, 2**32),
    )
    def open_the_center(self, strategy: Strategy, absent: set[str], seed: int) -> None:
        # Most agents start logged in, so short runs reach offers and bridges.
        self.engine = Engine(build_directory(strategy), seed=seed)
        self.ledger = Ledger(self.engine.directory)
        for agent_id in AGENT_IDS:
            if agent_id not in absent:
                self.feed(e.AgentCommand(agent_id, "login"))

    # -- callers ----------------------------------------------------------------------

    @precondition(lambda self: len(self.ledger.callers_where(hung_up=False)) < MAX_CALLERS)
    @rule(
        did=st.sampled_from(
            [SALES_DID, SALES_DID, SUPPORT_DID, SUPPORT_DID, BARE_DID, UNKNOWN_DID]
        ),
        listens=st.booleans(),
    )
    def call_arrives(self, did: str, listens: bool) -> None:
        """A call arrives; with `listens` its greeting plays to the end at once
        (otherwise `playback_finishes` ends it later, or the caller hangs up)."""
        self.serial += 1
        call_id, channel_id = f"call-{self.serial}", f"chan-{self.serial}"
        actions = self.feed(e.CallArrived(call_id, channel_id, did, f"+4860{self.serial:05d}"))
        if did == UNKNOWN_DID:
            assert actions == [a.ContinueInDialplan(channel_id, UNKNOWN_DID_CONTEXT)]
            return
        assert [type(x) for x in actions] == [a.Answer, a.Play]
        if listens:
            self.feed(e.PlaybackFinished(f"{call_id}-pb1", channel_id))

    @precondition(lambda self: self.ledger.playbacks)
    @rule(data=st.data(), completed=st.sampled_from([True, True, True, False]))
    def playback_finishes(self, data: st.DataObject, completed: bool) -> None:
        """The greeting (then the caller queues) or an announcement ends."""
        playback_id = data.draw(st.sampled_from(sorted(self.ledger.playbacks)))
        self.feed(e.PlaybackFinished(playback_id, self.ledger.playbacks[playback_id], completed))

    @precondition(lambda self: self.ledger.callers_where(hung_up=False))
    @rule(data=st.data(), how=st.sampled_from(["hangs up", "hangs up and leaves", "vanishes"]))
    def caller_hangs_up(self, data: st.DataObject, how: str) -> None:
        """The caller hangs up (HangupRequested, then or later ChannelLeftApp),
        or its channel vanishes under our last request (a hang-up race)."""
        caller = data.draw(st.sampled_from(self.ledger.callers_where(hung_up=False)))
        if how == "vanishes":
            self.vanish(caller)
            return
        actions = self.feed(e.HangupRequested(caller.channel_id))
        # Other calls may be offered to agents it freed; this one never again.
        assert not [
            x for x in actions if isinstance(x, a.Originate) and f",{caller.call_id}," in x.app_args
        ]
        assert not [
            x for x in actions if isinstance(x, a.Bridge) and caller.channel_id in x.channel_ids
        ]
        if how == "hangs up and leaves":
            self.leave(caller)

    def vanish(self, caller: Caller) -> None:
        event = e.ActionFailed(caller.channel_id, caller.last_action, "gone", gone=True)
        actions = self.feed(event)
        assert not [x for x in actions if isinstance(x, a.ContinueInDialplan)], actions

    @precondition(lambda self: self.ledger.callers_where())
    @rule(data=st.data())
    def caller_channel_leaves(self, data: st.DataObject) -> None:
        """A caller who hung up, or whom we handed to the dialplan, leaves the app."""
        self.leave(data.draw(st.sampled_from(self.ledger.callers_where())))

    def leave(self, caller: Caller) -> None:
        # A hang-up cuts any playback short before the channel leaves the app.
        for playback_id, channel_id in sorted(self.ledger.playbacks.items()):
            if channel_id == caller.channel_id:
                self.feed(e.PlaybackFinished(playback_id, channel_id, completed=False))
        actions = self.feed(e.ChannelLeftApp(caller.channel_id))
        cdr = caller.cdrs[0]
        hypothesis.event(f"cdr {cdr.disposition.value}")
        if caller.moved:
            hypothesis.event(f"overflowed to backup, then {cdr.disposition.value}")
        assert sum(isinstance(x, a.EmitCdr) for x in actions) == 1
        if cdr.hangup_side is HangupSide.AGENT:
            hypothesis.event("the agent hung up first")

    # -- agents ----------------------------------------------------------------------------

    @rule(
        data=st.data(),
        agent_id=st.sampled_from(AGENT_IDS),
        any_command=st.integers(0, 3),
        reason=st.sampled_from(["lunch", "coaching"]),
    )
    def agent_command(
        self, data: st.DataObject, agent_id: str, any_command: int, reason: str
    ) -> None:
        """Mostly a command the agent's state takes; one in four times any
        command at all (then the table decides, and a refusal changes nothing)."""
        before = self.engine.board.status(agent_id)
        commands = sorted(COMMAND_EVENTS)
        if any_command:
            commands = [
                c for c in commands if AGENT_TRANSITIONS.allows(before.state, COMMAND_EVENTS[c])
            ]
        command = data.draw(st.sampled_from(commands), label="command")
        self.feed(e.AgentCommand(agent_id, command, reason if command == "pause" else ""))
        after = self.engine.board.status(agent_id)
        if command == "pause" and before.state in (S.RESERVED, S.ON_CALL):
            assert after.state is before.state  # pending, applied when the call is over
            hypothesis.event("pause pending")

    @precondition(lambda self: self.ledger.legs_where(answered=False))
    @rule(data=st.data())
    def leg_answers(self, data: st.DataObject) -> None:
        """An agent's phone answers: it rings, or we hung it up and it raced us."""
        leg = data.draw(st.sampled_from(self.ledger.legs_where(answered=False)))
        was_ringing = leg.ringing
        caller = self.ledger.callers[leg.call_id]
        actions = self.feed(e.AgentLegAnswered(leg.channel_id, leg.call_id, leg.agent_id))
        if was_ringing:
            # It rang for a call still offered: the first answer always wins.
            assert _only(actions, a.Bridge) == [
                a.Bridge(f"{leg.call_id}-bridge", (caller.channel_id, leg.channel_id))
            ]
            hypothesis.event("bridged")
        else:
            assert actions == [a.Hangup(leg.channel_id)]
            hypothesis.event("a late answer was hung up")

    @precondition(lambda self: self.ledger.legs_where(answered=False))
    @rule(
        data=st.data(),
        how=st.sampled_from(["declined", "no answer", "originate failed", "asterisk silent"]),
    )
    def leg_fails(self, data: st.DataObject, how: str) -> None:
        leg = data.draw(st.sampled_from(self.ledger.legs_where(answered=False)))
        event: e.Event
        if how == "originate failed":
            event = e.ActionFailed(leg.channel_id, "Originate", "no such endpoint")
        elif how == "asterisk silent":  # the originate timed out: not the agent's miss
            event = e.ActionFailed(leg.channel_id, "Originate", "no answer", unanswered=True)
        else:
            event = e.ChannelHungUp(leg.channel_id, cause=21 if how == "declined" else 19)
        misses = self.engine.board.status(leg.agent_id).missed_in_row
        actions = self.feed(event)
        if how == "asterisk silent":
            assert self.engine.board.status(leg.agent_id).missed_in_row in (0, misses)
            assert not any(
                r.record.agent_id == leg.agent_id and r.record.reason == AUTO_PAUSE_REASON
                for r in actions
                if isinstance(r, a.RecordAgentState)
            ), "auto-paused for Asterisk's silence"

    @precondition(lambda self: self.ledger.legs_where(answered=True))
    @rule(data=st.data())
    def agent_leg_hangs_up(self, data: st.DataObject) -> None:
        leg = data.draw(st.sampled_from(self.ledger.legs_where(answered=True)))
        bridged = any(b is leg for b in self.ledger.bridges.values())
        caller = self.ledger.callers[leg.call_id]
        actions = self.feed(e.ChannelLeftApp(leg.channel_id))
        if bridged:
            assert a.Hangup(caller.channel_id) in actions
        assert self.feed(e.ChannelHungUp(leg.channel_id)) == []

    # -- timers and time -------------------------------------------------------------------

    def fire(self, data: st.DataObject, kinds: tuple[str, ...]) -> None:
        timer_id = data.draw(st.sampled_from(self.ledger.armed(*kinds)))
        self.now = max(self.now, self.ledger.timers[timer_id])  # never before it is due
        hypothesis.event(f"{timer_id.split('/')[1]} timer fired")
        self.feed(e.TimerFired(timer_id))

    @precondition(lambda self: self.ledger.armed("ring"))
    @rule(data=st.data())
    def ring_timer_fires(self, data: st.DataObject) -> None:
        self.fire(data, ("ring",))

    @precondition(lambda self: self.ledger.armed("announce", "maxwait", "relax"))
    @rule(data=st.data())
    def call_timer_fires(self, data: st.DataObject) -> None:
        self.fire(data, ("announce", "maxwait", "relax"))

    @precondition(lambda self: self.ledger.armed("hold"))
    @rule(data=st.data())
    def hold_music_grace_ends(self, data: st.DataObject) -> None:
        self.fire(data, ("hold",))

    @precondition(lambda self: self.ledger.armed("wrapup"))
    @rule(data=st.data())
    def wrapup_timer_fires(self, data: st.DataObject) -> None:
        self.fire(data, ("wrapup",))

    @rule(ms=st.integers(0, 45_000))
    def time_passes(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def the_engine_agrees_with_the_ledger(self) -> None:
        self.ledger.check_engine(self.engine)

    @invariant()
    def a_waiting_caller_is_never_left_in_silence(self) -> None:
        """Hold music or an announcement, or an agent ringing within the
        hold music's grace (its timer armed): never silence for good."""
        ledger = self.ledger
        for caller in ledger.callers.values():
            waiting = caller.enqueued_at is not None and caller.bridge is None
            there = not (caller.gone or caller.hangup_requested or caller.handed_off)
            if waiting and there and not caller.music and caller.playing is None:
                prefix = f"{caller.call_id}/hold/"
                assert any(t.startswith(prefix) for t in ledger.timers), f"{caller} in silence"


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase


# -- the ledger's own rules can fire -----------------------------------------------------------
#
# Each case replays a real, valid call (ann answers call-1), then shows the
# ledger one step with a deliberately wrong action list.


class Replay:
    def __init__(self) -> None:
        self.engine = Engine(build_directory(Strategy.LONGEST_IDLE))
        self.ledger = Ledger(self.engine.directory)
        self.now = T0

    def feed(self, event: e.Event, seconds: float = 0) -> list[a.Action]:
        self.now += timedelta(seconds=seconds)
        actions = self.engine.handle(event, self.now)
        self.ledger.saw(event, actions, self.now)
        return actions

    def bad(self, event: e.Event, actions: list[a.Action]) -> None:
        self.ledger.saw(event, actions, self.now)


def offered_call() -> Replay:
    """Ann rings for call-1 (dan is paused, the others logged out)."""
    replay = Replay()
    replay.feed(e.AgentCommand("ann", "login"))
    replay.feed(e.AgentCommand("dan", "login"))
    replay.feed(e.AgentCommand("dan", "pause", "lunch"))
    replay.feed(e.CallArrived("call-1", "chan-1", SALES_DID), 1)
    replay.feed(e.PlaybackFinished("call-1-pb1", "chan-1"), 2)
    replay.ledger.check_engine(replay.engine)
    return replay


def answered_call() -> Replay:
    """Ann answered call-1 at T0 + 6 s."""
    replay = offered_call()
    replay.feed(e.AgentLegAnswered("call-1-leg1", "call-1", "ann"), 3)
    replay.ledger.check_engine(replay.engine)
    return replay


ANSWER = e.AgentLegAnswered("call-1-leg1", "call-1", "ann")
LEFT = e.ChannelLeftApp("chan-1")


def _row(
    agent_id: str, previous: S, state: S, event: str, call_id: str | None, *, seconds: int = 6
) -> a.Action:
    at = T0 + timedelta(seconds=seconds)
    return a.RecordAgentState(
        AgentStateRecord(agent_id, state, None, ("acme",), ("sales",), at, previous, event, call_id)
    )


def _cdr(disposition: Disposition, answered: bool) -> a.Action:
    start = T0 + timedelta(seconds=1)
    return a.EmitCdr(
        CdrRecord(
            "call-1",
            "acme",
            "inbound",
            SALES_DID,
            "",
            start,
            start + timedelta(seconds=2) if answered else None,
            T0 + timedelta(seconds=6),
            disposition,
            HangupSide.CALLER,
        )
    )


WRONG_STEPS: list[tuple[str, e.Event, list[a.Action], str]] = [
    (
        "two bridges for one call",
        ANSWER,
        [a.Bridge("again", ("chan-1", "call-1-leg1"))],
        "second Bridge",
    ),
    (
        "a bridge with a channel that is no caller's",
        ANSWER,
        [a.Bridge("x", ("call-1-leg1", "chan-1"))],
        "no caller's",
    ),
    (
        "ringing an agent who is paused",
        e.AgentCommand("dan", "unpause"),
        [a.Originate("call-1-leg2", "PJSIP/dan", "agent,call-1,dan,sales", originator="chan-1")],
        "no OfferMade row",
    ),
    (
        "ringing an agent outside the queue",
        e.AgentCommand("cat", "login"),
        [
            _row("cat", S.LOGGED_OUT, S.READY, "Login", None),
            _row("cat", S.READY, S.RESERVED, "OfferMade", "call-1"),
            a.Originate("call-1-leg2", "PJSIP/cat", "agent,call-1,cat,sales", originator="chan-1"),
        ],
        "not in the queue",
    ),
    (
        "a log row that does not chain",
        e.AgentCommand("ann", "pause", "lunch"),
        [_row("ann", S.READY, S.PAUSED, "Pause", None)],
        "row from",
    ),
    (
        "an action for a channel that left",
        LEFT,
        [a.StartMoh("chan-1")],
        "after chan-1 left",
    ),
    (
        "a call that left without its CDR",
        LEFT,
        [a.DestroyBridge("call-1-bridge")],
        "without a CDR",
    ),
    (
        "answered_at without the answered disposition",
        LEFT,
        [a.DestroyBridge("call-1-bridge"), _cdr(Disposition.FAILED, answered=True)],
        "answered_at .* with disposition failed",
    ),
    (
        "a CDR before the channel left",
        e.HangupRequested("chan-1"),
        [_cdr(Disposition.ANSWERED, answered=True)],
        "before its channel left",
    ),
    (
        "cancelling a ring timer never armed",
        e.AgentCommand("ann", "pause", "lunch"),
        [a.CancelTimer("call-1/ring/9")],
        "not armed",
    ),
]


@pytest.mark.parametrize(
    ("event", "actions", "message"),
    [case[1:] for case in WRONG_STEPS],
    ids=[case[0] for case in WRONG_STEPS],
)
def test_the_ledger_rejects_a_wrong_step(
    event: e.Event, actions: list[a.Action], message: str
) -> None:
    replay = answered_call()
    with pytest.raises(AssertionError, match=message):
        replay.bad(event, actions)


# The same, one step earlier: ann's leg rings, nobody has answered.
WRONG_STEPS_WHILE_RINGING: list[tuple[str, e.Event, list[a.Action], str]] = [
    (
        "a bridge with a leg nobody originated",
        e.AgentLegAnswered("call-1-leg9", "call-1", "ann"),
        [a.Bridge("call-1-bridge", ("chan-1", "call-1-leg9"))],
        "not a leg we originated",
    ),
    (
        "a bridge before the leg answered",
        e.AgentCommand("bob", "login"),
        [
            _row("ann", S.RESERVED, S.ON_CALL, "OfferAnswered", "call-1", seconds=3),
            a.Bridge("call-1-bridge", ("chan-1", "call-1-leg1")),
        ],
        "without that leg's answer",
    ),
    (
        "a bridge while the agent is not on the call",
        ANSWER,
        [a.Bridge("call-1-bridge", ("chan-1", "call-1-leg1"))],
        "bridged while reserved",
    ),
    (
        "ringing an agent twice",
        e.AgentCommand("ann", "unpause"),
        [
            _row("ann", S.RESERVED, S.READY, "OfferCancelled", "call-1", seconds=3),
            _row("ann", S.READY, S.RESERVED, "OfferMade", "call-1", seconds=3),
            a.Originate("call-1-leg2", "PJSIP/ann", "agent,call-1,ann,sales", originator="chan-1"),
        ],
        "rings already",
    ),
    (
        "a timer armed twice",
        e.AgentCommand("bob", "login"),
        [a.StartTimer("call-1/ring/4", 10_000)],
        "armed twice",
    ),
]


@pytest.mark.parametrize(
    ("event", "actions", "message"),
    [case[1:] for case in WRONG_STEPS_WHILE_RINGING],
    ids=[case[0] for case in WRONG_STEPS_WHILE_RINGING],
)
def test_the_ledger_rejects_a_wrong_step_while_ringing(
    event: e.Event, actions: list[a.Action], message: str
) -> None:
    replay = offered_call()
    with pytest.raises(AssertionError, match=message):
        replay.bad(event, actions)


def test_the_ledger_accepts_the_real_steps() -> None:
    replay = answered_call()
    replay.feed(e.HangupRequested("chan-1"), 60)
    replay.feed(LEFT)
    replay.ledger.check_engine(replay.engine)
    assert [c.disposition for c in replay.ledger.callers["call-1"].cdrs] == [Disposition.ANSWERED]


def test_check_engine_sees_a_connected_call_in_the_waiting_set() -> None:
    replay = answered_call()
    replay.engine.waiting["call-1"] = WaitingCall("call-1", "sales", T0)
    with pytest.raises(AssertionError, match="waits in state"):
        replay.ledger.check_engine(replay.engine)


def test_check_engine_sees_an_agent_on_call_without_a_bridge() -> None:
    replay = answered_call()
    replay.ledger.bridges.clear()
    with pytest.raises(AssertionError, match="ann is on_call, in a bridge: False"):
        replay.ledger.check_engine(replay.engine)


def test_check_engine_sees_a_ringing_leg_the_engine_forgot() -> None:
    replay = answered_call()
    replay.ledger.legs["call-1-leg1"].answered = False  # as if it still rang
    with pytest.raises(AssertionError, match="ann"):
        replay.ledger.check_engine(replay.engine)


@pytest.mark.parametrize(
    ("err", "fires"),
    [
        (InvalidTransition("agent", S.READY, "Login"), False),  # absent from the table
        (InvalidTransition("call", CallState.GREETING, "TimerFired"), False),
        (InvalidTransition("agent", S.LOGGED_OUT, "Login"), True),  # the table allows it
        (InvalidTransition("call", CallState.QUEUED, "TimerFired"), True),
        (InvalidTransition("call", CallState.QUEUED, "Offered", CallState.ENDED), True),
    ],
    ids=repr,
)
def test_check_refusal_fires_only_for_pairs_the_tables_allow(
    err: InvalidTransition, fires: bool
) -> None:
    if fires:
        with pytest.raises(AssertionError):
            check_refusal(err)
    else:
        check_refusal(err)
