"""The inbound queue flow through the engine, one story at a time.

Each test feeds events with explicit instants (a deterministic clock) and
checks the actions that come out: greeting -> queue -> offers -> agent legs
-> bridge -> CDR, and every way off that path (ring timeout, ring-all losers,
overflow, closed hours, relaxation, wrap-up, pending pause, announcements).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TypeVar

import pytest

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.agent import AgentState, AgentStateRecord
from pbx_controller.core.call_flow import CallState
from pbx_controller.core.cdr import CdrRecord, CdrSegment, Disposition, HangupSide
from pbx_controller.core.engine import (
    CLOSED_CONTEXT,
    HOLD_MUSIC_GRACE_MS,
    OVERFLOW_CONTEXT,
    Engine,
)
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    BusinessHours,
    Directory,
    OpenWindow,
    OverflowRule,
    Queue,
    QueueMembership,
    Relaxation,
    SkillRequirement,
    Strategy,
    Tenant,
)

S = AgentState
# Monday 2025-03-03 10:00 UTC = 11:00 in Warsaw: inside office hours.
T0 = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
GREETING = ("sound:acme-welcome",)
CALLER = "+48221234567"
ACME_DID, ACME_BARE_DID, GLOBEX_DID = "100", "101", "200"
OFFICE_HOURS = BusinessHours(tuple(OpenWindow(day, time(9), time(17)) for day in range(5)))

A = TypeVar("A", bound=a.Action)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def agent(agent_id: str, *queues: str, **skills: int) -> AgentProfile:
    return AgentProfile(
        agent_id,
        agent_id.title(),
        f"PJSIP/{agent_id}",
        skills=skills,
        memberships=tuple(QueueMembership(q) for q in queues),
    )


def sales(**changes: object) -> Queue:
    """Acme's queue (DID 100). No timers but the ones a test asks for."""
    settings: dict[str, object] = {
        "strategy": Strategy.LONGEST_IDLE,
        "ring_timeout_ms": 15_000,
        "wrapup_ms": 0,
        "announcements": Announcements(position=False, estimated_wait=False),
    }
    settings.update(changes)
    return Queue("sales", "acme", **settings)  # type: ignore[arg-type]


def support(**changes: object) -> Queue:
    """Globex's queue (DID 200)."""
    settings: dict[str, object] = {
        "wrapup_ms": 0,
        "announcements": Announcements(position=False, estimated_wait=False),
    }
    settings.update(changes)
    return Queue("support", "globex", **settings)  # type: ignore[arg-type]


class Desk:
    """An engine, the directory it routes with, and short ways to feed it."""

    def __init__(
        self,
        queues: Sequence[Queue],
        agents: Sequence[AgentProfile],
        *,
        hours: BusinessHours | None = None,
    ) -> None:
        tenants = [
            Tenant("acme", "Acme", greeting=GREETING, business_hours=hours),
            Tenant("globex", "Globex"),
        ]
        dids = [(ACME_DID, "acme"), (ACME_BARE_DID, "acme"), (GLOBEX_DID, "globex")]
        # Each tenant's queue DID leads to that tenant's first queue.
        did_for = {"acme": ACME_DID, "globex": GLOBEX_DID}
        first: dict[str, str] = {}
        for q in queues:
            first.setdefault(did_for[q.tenant_id], q.id)
        directory = Directory.build(
            tenants, dids, queues=queues, agents=agents, did_queues=first.items()
        )
        self.engine = Engine(directory)

    def feed(self, event: e.Event, when: float) -> list[a.Action]:
        return self.engine.handle(event, at(when))

    def login(self, *agent_ids: str, when: float = 0) -> None:
        for n, agent_id in enumerate(agent_ids):
            # A millisecond apart: the first logged in has been idle longest.
            self.feed(e.AgentCommand(agent_id, "login"), when + n / 1000)

    def command(self, agent_id: str, command: str, when: float, reason: str = "") -> list[a.Action]:
        return self.feed(e.AgentCommand(agent_id, command, reason), when)

    def arrive(self, n: int, when: float, did: str = ACME_DID) -> list[a.Action]:
        return self.feed(e.CallArrived(f"call-{n}", f"chan-{n}", did, CALLER), when)

    def queue_call(self, n: int, when: float, did: str = ACME_DID) -> list[a.Action]:
        """Arrive at `when`, greeting over at the same instant: the actions of
        the greeting's end (hold music, queue timers, any offer)."""
        self.arrive(n, when, did)
        return self.feed(e.PlaybackFinished(f"call-{n}-pb1", f"chan-{n}"), when)

    def answer(self, n: int, leg: int, agent_id: str, when: float) -> list[a.Action]:
        return self.feed(e.AgentLegAnswered(f"call-{n}-leg{leg}", f"call-{n}", agent_id), when)

    def caller_hangs_up(self, n: int, when: float) -> list[a.Action]:
        return self.feed(e.HangupRequested(f"chan-{n}"), when)

    def caller_leaves(self, n: int, when: float) -> CdrRecord:
        actions = self.feed(e.ChannelLeftApp(f"chan-{n}"), when)
        return one(actions, a.EmitCdr).cdr

    def call_state(self, n: int) -> CallState:
        return self.engine.calls[f"call-{n}"].state

    def state(self, agent_id: str) -> AgentState:
        return self.engine.board.status(agent_id).state


def only(actions: Sequence[a.Action], kind: type[A]) -> list[A]:
    return [x for x in actions if isinstance(x, kind)]


def one(actions: Sequence[a.Action], kind: type[A]) -> A:
    found = only(actions, kind)
    assert len(found) == 1, actions
    return found[0]


def timer(actions: Sequence[a.Action], kind: str) -> a.StartTimer:
    found = [x for x in only(actions, a.StartTimer) if x.timer_id.split("/")[1] == kind]
    assert len(found) == 1, actions
    return found[0]


def moves(actions: Sequence[a.Action]) -> list[tuple[str, S, S, str]]:
    """The agent state log rows: (agent, from, to, table event)."""
    rows: list[AgentStateRecord] = [x.record for x in only(actions, a.RecordAgentState)]
    return [(r.agent_id, r.previous, r.state, r.event) for r in rows]


def legs_rung(actions: Sequence[a.Action]) -> list[tuple[str, str]]:
    return [(o.channel_id, o.endpoint) for o in only(actions, a.Originate)]


def outcomes(cdr: CdrRecord) -> set[tuple[str | None, str]]:
    return {(s.agent_id, s.outcome) for s in cdr.segments}


# -- a bridged call, end to end ------------------------------------------------------------


def test_a_queued_call_rings_the_agent_and_is_bridged_on_answer() -> None:
    desk = Desk([sales(max_wait_ms=120_000)], [agent("ann", "sales")])
    desk.login("ann")
    assert desk.arrive(1, when=1) == [
        a.Answer("chan-1"),
        a.Play("chan-1", "call-1-pb1", GREETING),
    ]
    ann = desk.engine.board.status("ann")
    assert desk.feed(e.PlaybackFinished("call-1-pb1", "chan-1"), 3) == [
        a.StartTimer("call-1/maxwait/1", 120_000),
        # Made while Ann rings: her answer then costs one request, not two.
        a.PrepareBridge("call-1-bridge"),
        a.RecordAgentState(
            AgentStateRecord(
                "ann",
                S.RESERVED,
                None,
                ("acme",),
                ("sales",),
                at(3),
                S.READY,
                "OfferMade",
                "call-1",
            )
        ),
        a.Originate(
            "call-1-leg1",
            "PJSIP/ann",
            "agent,call-1,ann,sales",
            caller_id=CALLER,
            timeout_ms=17_000,
            originator="chan-1",  # the agent's leg gets the caller's codecs
        ),
        a.StartTimer("call-1/ring/2", 15_000),
        # Ann rings at once: hold music only if she takes longer than the grace.
        a.StartTimer("call-1/hold/3", HOLD_MUSIC_GRACE_MS),
    ]
    assert ann.state is S.READY
    assert desk.call_state(1) is CallState.OFFERING
    # Past the grace, ringing still: hold music while she picks up.
    assert desk.feed(e.TimerFired("call-1/hold/3"), 3.3) == [a.StartMoh("chan-1", "default")]

    answered = desk.answer(1, leg=1, agent_id="ann", when=8)
    assert answered[1:] == [
        a.CancelTimer("call-1/ring/2"),
        # Connected: the queue's max wait will not fire into the call later.
        a.CancelTimer("call-1/maxwait/1"),
        a.StopMoh("chan-1"),
        a.Bridge("call-1-bridge", ("chan-1", "call-1-leg1")),
    ]
    assert moves(answered) == [("ann", S.RESERVED, S.ON_CALL, "OfferAnswered")]
    assert desk.call_state(1) is CallState.CONNECTED


def test_an_agent_who_answers_within_the_grace_is_bridged_with_no_music_at_all() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.login("ann")
    desk.arrive(1, when=1)
    queued = desk.feed(e.PlaybackFinished("call-1-pb1", "chan-1"), 3)
    assert not only(queued, a.StartMoh)
    (hold,) = [t for t in only(queued, a.StartTimer) if "/hold/" in t.timer_id]
    answered = desk.answer(1, leg=1, agent_id="ann", when=3.1)  # an auto-answer headset
    assert not only(answered, a.StopMoh)
    assert a.CancelTimer(hold.timer_id) in answered
    assert only(answered, a.Bridge) == [a.Bridge("call-1-bridge", ("chan-1", "call-1-leg1"))]


def test_a_caller_with_no_agent_free_gets_hold_music_at_once() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])  # ann is not logged in
    desk.arrive(1, when=1)
    queued = desk.feed(e.PlaybackFinished("call-1-pb1", "chan-1"), 3)
    assert queued[0] == a.StartMoh("chan-1", "default")
    assert not [t for t in only(queued, a.StartTimer) if "/hold/" in t.timer_id]


def test_the_cdr_of_a_bridged_call_carries_wait_talk_agent_queue_and_segments() -> None:
    desk = Desk([sales(wrapup_ms=5_000)], [agent("ann", "sales")])
    desk.login("ann")
    desk.arrive(1, when=1)
    desk.feed(e.PlaybackFinished("call-1-pb1", "chan-1"), 3)  # queued at 3 s
    desk.answer(1, leg=1, agent_id="ann", when=8)
    hung_up = desk.caller_hangs_up(1, when=68)
    assert hung_up == [
        a.Hangup("call-1-leg1"),
        a.DestroyBridge("call-1-bridge"),
        hung_up[2],  # ann's wrap-up row
        a.StartTimer("agent:ann/wrapup/1", 5_000),
    ]
    assert moves(hung_up) == [("ann", S.ON_CALL, S.WRAP_UP, "CallEnded")]
    cdr = desk.caller_leaves(1, when=68.5)
    assert cdr == CdrRecord(
        call_id="call-1",
        tenant_id="acme",
        direction="inbound",
        did=ACME_DID,
        caller=CALLER,
        arrived_at=at(1),
        answered_at=at(8),
        ended_at=at(68.5),
        disposition=Disposition.ANSWERED,
        hangup_side=HangupSide.CALLER,
        queue_id="sales",
        agent_id="ann",
        wait_ms=5_000,  # from the end of the greeting (queued) to the answer
        talk_ms=60_000,  # to the hang-up request, not to the channel's departure
        consent="not_asked",  # the tenant's policy is off
        segments=(CdrSegment("offer", "ann", at(3), at(8), "answered"),),
    )
    assert "call-1" not in desk.engine.calls
    assert desk.engine.channel_ids() == []


@pytest.mark.parametrize("side", [HangupSide.CALLER, HangupSide.AGENT])
def test_who_hung_up_first_is_the_hangup_side(side: HangupSide) -> None:
    desk = Desk([sales(wrapup_ms=5_000)], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.answer(1, leg=1, agent_id="ann", when=10)
    if side is HangupSide.AGENT:
        actions = desk.feed(e.ChannelLeftApp("call-1-leg1"), 40)
        # The agent's leg is gone already: the caller is hung up, never the leg.
        assert a.Hangup("chan-1") in actions
        assert a.Hangup("call-1-leg1") not in actions
        assert desk.caller_hangs_up(1, when=40.1) == []  # our own hang-up, echoed
    else:
        actions = desk.caller_hangs_up(1, when=40)
        assert a.Hangup("call-1-leg1") in actions
        assert a.Hangup("chan-1") not in actions
        assert desk.feed(e.ChannelLeftApp("call-1-leg1"), 40.1) == []  # ours too
    assert a.DestroyBridge("call-1-bridge") in actions
    assert desk.state("ann") is S.WRAP_UP
    cdr = desk.caller_leaves(1, when=40.2)
    assert cdr.hangup_side is side
    assert cdr.disposition is Disposition.ANSWERED
    assert (cdr.answered_at, cdr.talk_ms) == (at(10), 30_000)


def test_a_waiting_caller_hung_up_by_asterisk_itself_did_not_abandon() -> None:
    # Ops' `channel request hangup`, or a PBX shutdown: a soft hang-up.
    desk = Desk([sales()], [agent("ann", "sales")])  # nobody logged in: the caller waits
    desk.queue_call(1, when=0)
    desk.feed(e.HangupRequested("chan-1", 32, by_system=True), 20)
    cdr = desk.caller_leaves(1, when=20.1)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.FAILED, HangupSide.SYSTEM)


def test_a_connected_call_hung_up_by_asterisk_itself_ends_on_the_system_side() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.answer(1, leg=1, agent_id="ann", when=10)
    actions = desk.feed(e.HangupRequested("chan-1", 32, by_system=True), 40)
    assert a.Hangup("call-1-leg1") in actions
    cdr = desk.caller_leaves(1, when=40.1)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.ANSWERED, HangupSide.SYSTEM)


# -- ring-all --------------------------------------------------------------------------------


def ring_all_desk() -> Desk:
    desk = Desk(
        [sales(strategy=Strategy.RING_ALL)],
        [agent("ann", "sales"), agent("bob", "sales"), agent("cat", "sales")],
    )
    desk.login("ann", "bob", "cat")
    return desk


def test_ring_all_rings_every_ready_agent_and_the_first_answer_wins() -> None:
    desk = ring_all_desk()
    offered = desk.queue_call(1, when=3)
    assert only(offered, a.Originate) == [
        a.Originate(
            f"call-1-leg{n}", f"PJSIP/{who}", f"agent,call-1,{who},sales", CALLER, 17_000, "chan-1"
        )
        for n, who in ((1, "ann"), (2, "bob"), (3, "cat"))
    ]
    # One ring timer for all three legs.
    assert [t.timer_id for t in only(offered, a.StartTimer)] == ["call-1/ring/1", "call-1/hold/2"]
    assert moves(offered) == [
        (who, S.READY, S.RESERVED, "OfferMade") for who in ("ann", "bob", "cat")
    ]

    won = desk.answer(1, leg=2, agent_id="bob", when=6)
    assert only(won, a.Bridge) == [a.Bridge("call-1-bridge", ("chan-1", "call-1-leg2"))]
    assert set(only(won, a.Hangup)) == {a.Hangup("call-1-leg1"), a.Hangup("call-1-leg3")}
    assert sorted(moves(won)) == [
        ("ann", S.RESERVED, S.READY, "OfferCancelled"),
        ("bob", S.RESERVED, S.ON_CALL, "OfferAnswered"),
        ("cat", S.RESERVED, S.READY, "OfferCancelled"),
    ]
    # A loser's cancelled offer is not a miss.
    assert desk.engine.board.status("ann").missed_in_row == 0

    # Ann's phone answered in the same instant: her leg is hung up, nothing else.
    assert desk.answer(1, leg=1, agent_id="ann", when=6.1) == [a.Hangup("call-1-leg1")]
    assert desk.feed(e.ChannelHungUp("call-1-leg3"), 6.2) == []
    assert desk.state("ann") is S.READY
    assert desk.state("bob") is S.ON_CALL

    desk.caller_hangs_up(1, when=20)
    cdr = desk.caller_leaves(1, when=20)
    assert cdr.agent_id == "bob"
    assert outcomes(cdr) == {("ann", "cancelled"), ("bob", "answered"), ("cat", "cancelled")}


def test_ring_all_a_loser_answering_after_the_winner_never_gets_a_second_bridge() -> None:
    desk = ring_all_desk()
    desk.queue_call(1, when=3)
    desk.answer(1, leg=3, agent_id="cat", when=5)
    for leg, who in ((1, "ann"), (2, "bob")):
        assert desk.answer(1, leg=leg, agent_id=who, when=5) == [a.Hangup(f"call-1-leg{leg}")]
    assert desk.engine.calls["call-1"].agent_id == "cat"


def test_a_declined_ring_all_leg_frees_its_agent_while_the_others_ring_on() -> None:
    desk = ring_all_desk()
    desk.queue_call(1, when=3)
    declined = desk.feed(e.ChannelHungUp("call-1-leg1", cause=21), 4)
    assert moves(declined) == [("ann", S.RESERVED, S.READY, "OfferMissed")]
    assert not only(declined, a.CancelTimer)  # bob and cat still ring
    assert desk.call_state(1) is CallState.OFFERING
    assert desk.engine.board.status("ann").missed_in_row == 1


# -- misses, overflow, hours -----------------------------------------------------------------


def test_a_ring_timeout_requeues_the_call_at_its_old_position() -> None:
    desk = Desk([sales()], [agent("ann", "sales"), agent("bob", "sales")])
    desk.login("ann")
    offered = desk.queue_call(1, when=2)
    ring = timer(offered, "ring")
    assert ring.delay_ms == 15_000
    # Ann asks for a pause while her phone rings: it waits for the offer's end.
    assert desk.command("ann", "pause", 5, reason="lunch") == []

    timed_out = desk.feed(e.TimerFired(ring.timer_id), 17)
    assert only(timed_out, a.Hangup) == [a.Hangup("call-1-leg1")]
    assert moves(timed_out) == [("ann", S.RESERVED, S.PAUSED, "OfferMissed")]
    assert desk.call_state(1) is CallState.QUEUED
    waiting = desk.engine.waiting["call-1"]
    assert (waiting.enqueued_at, waiting.seq, waiting.missed_by) == (at(2), 1, frozenset({"ann"}))
    # The same timer again (a race) changes nothing.
    assert desk.feed(e.TimerFired(ring.timer_id), 17.5) == []

    desk.queue_call(2, when=20)  # a later caller
    desk.login("bob", when=30)
    assert desk.call_state(1) is CallState.OFFERING  # the older call first
    assert desk.call_state(2) is CallState.QUEUED
    desk.answer(1, leg=2, agent_id="bob", when=31)
    desk.caller_hangs_up(1, when=40)
    cdr = desk.caller_leaves(1, when=40)
    assert cdr.wait_ms == 29_000  # measured from the first entry, 2 s
    assert [(s.agent_id, s.outcome, s.started_at, s.ended_at) for s in cdr.segments] == [
        ("ann", "missed", at(2), at(17)),
        ("bob", "answered", at(30), at(31)),
    ]


@pytest.mark.parametrize(
    ("rules", "context"),
    [((), OVERFLOW_CONTEXT), ((OverflowRule(after_ms=60_000, dialplan_context="vm"),), "vm")],
)
def test_max_wait_overflows_to_the_dialplan_and_leaves_no_leg_ringing(
    rules: tuple[OverflowRule, ...], context: str
) -> None:
    desk = Desk(
        [sales(max_wait_ms=60_000, ring_timeout_ms=30_000, overflow=rules)],
        [agent("ann", "sales")],
    )
    queued = desk.queue_call(1, when=2)
    maxwait = timer(queued, "maxwait")
    assert maxwait.delay_ms == 60_000
    desk.login("ann", when=50)  # ann's phone rings from 50 s
    ring = desk.engine.calls["call-1"].ring_timer
    assert ring is not None

    overflowed = desk.feed(e.TimerFired(maxwait.timer_id), 62)
    assert overflowed[-1] == a.ContinueInDialplan("chan-1", context)
    assert a.Hangup("call-1-leg1") in overflowed
    assert a.CancelTimer(ring) in overflowed
    assert moves(overflowed) == [("ann", S.RESERVED, S.READY, "OfferCancelled")]
    assert desk.engine.offers.ringing("call-1") == ()
    assert "call-1" not in desk.engine.waiting
    # Ann's phone picked up just too late: hung up, never bridged.
    assert desk.answer(1, leg=1, agent_id="ann", when=62.1) == [a.Hangup("call-1-leg1")]

    cdr = desk.caller_leaves(1, when=62.5)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.OVERFLOW, HangupSide.SYSTEM)
    assert cdr.answered_at is None
    assert outcomes(cdr) == {("ann", "cancelled")}


@pytest.mark.parametrize(
    ("local", "is_open"),
    [
        (datetime(2025, 3, 3, 9, 0), True),  # Monday at opening
        (datetime(2025, 3, 3, 16, 59, 59), True),
        (datetime(2025, 3, 3, 17, 0), False),  # closing time is closed
        (datetime(2025, 3, 8, 12, 0), False),  # Saturday noon
    ],
)
def test_closed_hours_send_the_caller_to_the_closed_message(local: datetime, is_open: bool) -> None:
    desk = Desk([sales()], [agent("ann", "sales")], hours=OFFICE_HOURS)
    # Warsaw is UTC+1 in March before the last Sunday.
    when = (local - timedelta(hours=1)).replace(tzinfo=UTC)
    actions = desk.engine.handle(e.CallArrived("call-1", "chan-1", ACME_DID, CALLER), when)
    if is_open:
        assert actions == [a.Answer("chan-1"), a.Play("chan-1", "call-1-pb1", GREETING)]
        return
    assert actions == [a.ContinueInDialplan("chan-1", CLOSED_CONTEXT)]
    cdr = one(desk.engine.handle(e.ChannelLeftApp("chan-1"), when), a.EmitCdr).cdr
    assert (cdr.disposition, cdr.hangup_side, cdr.tenant_id) == (
        Disposition.CLOSED,
        HangupSide.SYSTEM,
        "acme",
    )
    assert (cdr.answered_at, cdr.queue_id, cdr.wait_ms) == (None, None, 0)


def test_the_other_tenant_keeps_its_own_hours() -> None:
    # Acme is closed on Saturday; Globex has no hours at all (always open).
    desk = Desk([sales(), support()], [], hours=OFFICE_HOURS)
    saturday = datetime(2025, 3, 8, 11, 0, tzinfo=UTC)
    actions = desk.engine.handle(e.CallArrived("call-1", "chan-1", GLOBEX_DID), saturday)
    assert actions[0] == a.Answer("chan-1")


# -- relaxation, wrap-up, pending pause ------------------------------------------------------


def test_the_relaxation_timer_makes_a_waiting_call_routable() -> None:
    english = SkillRequirement("en", 8, (Relaxation(20_000, min_level=4),))
    desk = Desk(
        [sales(skills=(english,))],
        [agent("ann", "sales", en=5), agent("bob", "sales", en=2)],
    )
    desk.login("ann")
    queued = desk.queue_call(1, when=2)
    assert only(queued, a.Originate) == []  # ann's English (5) is below 8
    relax = timer(queued, "relax")
    assert relax.delay_ms == 20_000
    # Routing runs again before the relaxation point: still nobody eligible.
    assert only(desk.command("bob", "login", 21.9), a.Originate) == []

    relaxed = desk.feed(e.TimerFired(relax.timer_id), 22)
    assert legs_rung(relaxed) == [("call-1-leg1", "PJSIP/ann")]  # 5 >= 4; bob's 2 is not


def test_an_optional_skill_stops_mattering_after_its_relaxation() -> None:
    german = SkillRequirement("de", 5, (Relaxation(30_000, optional=True),))
    desk = Desk([sales(skills=(german,))], [agent("ann", "sales")])
    desk.login("ann")
    relax = timer(desk.queue_call(1, when=0), "relax")
    assert legs_rung(desk.feed(e.TimerFired(relax.timer_id), 30)) == [("call-1-leg1", "PJSIP/ann")]


@pytest.mark.parametrize("early", [False, True], ids=["timer", "end_wrapup"])
def test_the_end_of_wrap_up_frees_the_agent_for_the_next_waiting_call(early: bool) -> None:
    desk = Desk([sales(wrapup_ms=5_000)], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.queue_call(2, when=1)  # waits: ann is busy
    desk.answer(1, leg=1, agent_id="ann", when=2)
    ended = desk.caller_hangs_up(1, when=30)
    wrapup = timer(ended, "wrapup")
    assert wrapup == a.StartTimer("agent:ann/wrapup/1", 5_000)
    assert only(ended, a.Originate) == []  # wrap-up first
    assert desk.call_state(2) is CallState.QUEUED

    if early:
        freed = desk.command("ann", "end_wrapup", 32)
        assert a.CancelTimer(wrapup.timer_id) in freed
    else:
        freed = desk.feed(e.TimerFired(wrapup.timer_id), 35)
    assert moves(freed) == [
        ("ann", S.WRAP_UP, S.READY, "WrapUpEnded"),
        ("ann", S.READY, S.RESERVED, "OfferMade"),
    ]
    assert legs_rung(freed) == [("call-2-leg1", "PJSIP/ann")]


def test_a_pause_asked_for_on_a_call_applies_after_wrap_up() -> None:
    desk = Desk([sales(wrapup_ms=5_000)], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.answer(1, leg=1, agent_id="ann", when=2)
    assert desk.command("ann", "pause", 10, reason="lunch") == []  # pending, no row yet
    assert desk.engine.board.status("ann").pending == "lunch"
    desk.queue_call(2, when=11)

    ended = desk.caller_hangs_up(1, when=20)
    assert moves(ended) == [("ann", S.ON_CALL, S.WRAP_UP, "CallEnded")]
    paused = desk.feed(e.TimerFired(timer(ended, "wrapup").timer_id), 25)
    assert moves(paused) == [("ann", S.WRAP_UP, S.PAUSED, "WrapUpEnded")]
    assert only(paused, a.RecordAgentState)[0].record.reason == "lunch"
    assert only(paused, a.Originate) == []  # call-2 keeps waiting

    back = desk.command("ann", "unpause", 40)
    assert legs_rung(back) == [("call-2-leg1", "PJSIP/ann")]


def test_the_caller_hanging_up_while_legs_ring_cancels_every_offer() -> None:
    desk = ring_all_desk()
    offered = desk.queue_call(1, when=3)
    ring = timer(offered, "ring")
    gone = desk.caller_hangs_up(1, when=6)
    assert set(only(gone, a.Hangup)) == {a.Hangup(f"call-1-leg{n}") for n in (1, 2, 3)}
    assert a.CancelTimer(ring.timer_id) in gone
    assert sorted(moves(gone)) == [
        (who, S.RESERVED, S.READY, "OfferCancelled") for who in ("ann", "bob", "cat")
    ]
    for who in ("ann", "bob", "cat"):
        status = desk.engine.board.status(who)
        assert (status.state, status.missed_in_row, status.call_id) == (S.READY, 0, None)
    assert desk.answer(1, leg=2, agent_id="bob", when=6.1) == [a.Hangup("call-1-leg2")]

    cdr = desk.caller_leaves(1, when=6.2)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.ABANDONED, HangupSide.CALLER)
    assert cdr.answered_at is None
    assert cdr.wait_ms == 3_200
    assert outcomes(cdr) == {(who, "cancelled") for who in ("ann", "bob", "cat")}


def test_a_bridge_prepared_for_an_unanswered_offer_goes_with_the_caller() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.login("ann")
    offered = desk.queue_call(1, when=0)
    assert offered.count(a.PrepareBridge("call-1-bridge")) == 1
    gone = desk.caller_hangs_up(1, when=3)  # before Ann answered
    assert a.DestroyBridge("call-1-bridge") in gone
    assert a.Hangup("call-1-leg1") in gone


def test_a_missed_offer_keeps_the_prepared_bridge_for_the_next_agent() -> None:
    desk = Desk([sales(ring_timeout_ms=5_000)], [agent("ann", "sales"), agent("bob", "sales")])
    desk.login("ann")
    ring = timer(desk.queue_call(1, when=0), "ring")
    desk.login("bob", when=1)
    again = desk.feed(e.TimerFired(ring.timer_id), 5)  # Ann missed it; Bob rings
    assert legs_rung(again) == [("call-1-leg2", "PJSIP/bob")]
    assert not only(again, a.PrepareBridge)
    assert not only(again, a.DestroyBridge)
    answered = desk.answer(1, leg=2, agent_id="bob", when=6)
    assert a.Bridge("call-1-bridge", ("chan-1", "call-1-leg2")) in answered


def test_a_caller_who_hangs_up_while_waiting_leaves_no_queue_timer_behind() -> None:
    desk = Desk([sales(max_wait_ms=120_000)], [agent("ann", "sales")])  # ann not logged in
    maxwait = timer(desk.queue_call(1, when=3), "maxwait")
    gone = desk.caller_hangs_up(1, when=6)
    assert a.CancelTimer(maxwait.timer_id) in gone


# -- cross-queue fairness ---------------------------------------------------------------------


@pytest.mark.parametrize("first", [ACME_DID, GLOBEX_DID])
def test_an_agent_in_two_tenants_queues_takes_the_longest_waiting_call(first: str) -> None:
    desk = Desk([sales(), support()], [agent("ann", "sales", "support")])
    desk.login("ann")
    desk.command("ann", "pause", 0.5, reason="briefing")
    second = GLOBEX_DID if first == ACME_DID else ACME_DID
    desk.queue_call(1, when=1, did=first)
    desk.queue_call(2, when=2, did=second)
    assert desk.engine.board.status("ann").tenants == ("acme", "globex")

    back = desk.command("ann", "unpause", 10)
    assert legs_rung(back) == [("call-1-leg1", "PJSIP/ann")]
    assert desk.call_state(2) is CallState.QUEUED


def test_priority_beats_waiting_time_across_queues() -> None:
    desk = Desk([sales(), support(default_priority=5)], [agent("ann", "sales", "support")])
    desk.login("ann")
    desk.command("ann", "pause", 0.5, reason="briefing")
    desk.queue_call(1, when=1, did=ACME_DID)
    desk.queue_call(2, when=2, did=GLOBEX_DID)
    assert legs_rung(desk.command("ann", "unpause", 10)) == [("call-2-leg1", "PJSIP/ann")]


# -- announcements ----------------------------------------------------------------------------


def test_position_announcements_pause_the_hold_music_around_the_playback() -> None:
    settings = Announcements("acme-jazz", position=True, estimated_wait=True, first_after_ms=15_000)
    desk = Desk([sales(announcements=settings)], [])
    announce = {n: timer(desk.queue_call(n, when=n), "announce") for n in (1, 2, 3)}
    assert announce[3] == a.StartTimer("call-3/announce/1", 15_000)

    third = desk.feed(e.TimerFired(announce[3].timer_id), 18)
    assert third == [
        a.StartTimer("call-3/announce/2", 30_000),  # the next one
        a.StopMoh("chan-3"),
        a.Play(
            "chan-3",
            "call-3-pb2",
            ("sound:queue-thereare", "number:2", "sound:queue-callswaiting"),
        ),
    ]
    # Nobody staffs the queue: no estimated wait is promised.
    assert desk.feed(e.PlaybackFinished("call-3-pb2", "chan-3"), 24) == [
        a.StartMoh("chan-3", "acme-jazz")
    ]
    first = desk.feed(e.TimerFired(announce[1].timer_id), 16)
    assert only(first, a.Play)[0].media == ("sound:queue-youarenext",)


def test_the_estimated_wait_is_announced_in_whole_minutes_rounded_up() -> None:
    settings = Announcements(position=True, estimated_wait=True, first_after_ms=15_000)
    desk = Desk([sales(announcements=settings, wrapup_ms=60_000)], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.answer(1, leg=1, agent_id="ann", when=1)
    desk.caller_hangs_up(1, when=101)  # 100 s talk + 60 s wrap-up: AHT 160 s
    desk.caller_leaves(1, when=101)
    announce = timer(desk.queue_call(2, when=102), "announce")  # ann wraps up until 161 s
    played = only(desk.feed(e.TimerFired(announce.timer_id), 117), a.Play)
    # 1 caller x 160 s / 1 agent staffed = 2 min 40 s: "3 minutes".
    assert played[0].media == (
        "sound:queue-youarenext",
        "sound:queue-holdtime",
        "number:3",
        "sound:queue-minutes",
    )


def test_no_announcement_while_the_call_rings_an_agent() -> None:
    settings = Announcements(position=True, estimated_wait=False, first_after_ms=5_000)
    desk = Desk([sales(announcements=settings, ring_timeout_ms=60_000)], [agent("ann", "sales")])
    desk.login("ann")
    announce = timer(desk.queue_call(1, when=0), "announce")
    assert desk.feed(e.TimerFired(announce.timer_id), 5) == [
        a.StartTimer("call-1/announce/4", 30_000)
    ]


# -- bugs found while writing these tests ---------------------------------------------------


def test_a_failed_announcement_restarts_the_hold_music() -> None:
    settings = Announcements("acme-jazz", position=True, estimated_wait=False, first_after_ms=1)
    desk = Desk([sales(announcements=settings)], [])
    announce = timer(desk.queue_call(1, when=0), "announce")
    played = desk.feed(e.TimerFired(announce.timer_id), 1)
    assert a.StopMoh("chan-1") in played  # the music is off for the announcement
    failed = desk.feed(e.ActionFailed("chan-1", "Play", "ARI 500"), 1.1)
    assert failed == [a.StartMoh("chan-1", "acme-jazz")]


def test_a_bridge_that_failed_is_not_billed_as_answered() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.login("ann")
    desk.queue_call(1, when=0)
    desk.answer(1, leg=1, agent_id="ann", when=5)
    failed = desk.feed(e.ActionFailed("chan-1", "Bridge", "ARI 500"), 5.1)
    assert failed[-1] == a.ContinueInDialplan("chan-1", "pbx-fallback")
    cdr = desk.caller_leaves(1, when=65)
    assert cdr.disposition is Disposition.FAILED
    assert cdr.answered_at is None, "answered_at on a failed call: billed as talk"


def test_a_vanished_caller_under_hold_music_is_never_offered() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.queue_call(1, when=0)  # nobody logged in: the caller waits with hold music
    vanished = e.ActionFailed("chan-1", "StartMoh", "Channel not found", gone=True)
    desk.feed(vanished, 0.1)
    # ActionFailed's contract: gone=True is treated like a hang-up, so nobody rings.
    assert only(desk.command("ann", "login", 0.2), a.Originate) == []


def test_the_cdr_wait_after_an_overflow_to_another_queue_counts_both_queues() -> None:
    desk = Desk(
        [
            sales(max_wait_ms=60_000, overflow=(OverflowRule(after_ms=60_000, queue_id="backup"),)),
            Queue("backup", "acme", wrapup_ms=0),
        ],
        [agent("ann", "backup")],
    )
    desk.login("ann")
    maxwait = timer(desk.queue_call(1, when=2), "maxwait")  # ann serves "backup" only
    moved = desk.feed(e.TimerFired(maxwait.timer_id), 62)
    assert legs_rung(moved) == [("call-1-leg1", "PJSIP/ann")]
    desk.answer(1, leg=1, agent_id="ann", when=65)
    desk.caller_hangs_up(1, when=100)
    cdr = desk.caller_leaves(1, when=100)
    assert cdr.queue_id == "backup"
    assert cdr.wait_ms == 63_000  # 60 s in sales, then 3 s in backup


# -- a controller restart --------------------------------------------------------------------


def test_a_stopping_engine_logs_every_agent_out_and_a_new_one_puts_them_back() -> None:
    queues = [sales(), support()]
    profiles = [agent("ann", "sales", "support"), agent("bob", "sales"), agent("cy", "sales")]
    desk = Desk(queues, profiles)
    desk.login("ann", "bob")
    desk.command("bob", "pause", 1, "lunch")
    ringing = desk.queue_call(1, 2)
    assert legs_rung(ringing) == [("call-1-leg1", "PJSIP/ann")]

    stopping = desk.feed(e.ControllerStopping(), 3)
    assert sorted(moves(stopping)) == [
        ("ann", S.RESERVED, S.LOGGED_OUT, "Shutdown"),
        ("bob", S.PAUSED, S.LOGGED_OUT, "Shutdown"),
    ]  # cy was never logged in: no row

    # The next run: ann (ringing at the stop) comes back ready, bob paused
    # for lunch, and ann takes the first call in the queue she chose.
    again = Desk(queues, profiles)
    assert moves(again.feed(e.AgentRestored("ann", None, ("sales",)), 10)) == [
        ("ann", S.LOGGED_OUT, S.READY, "Restore")
    ]
    again.feed(e.AgentRestored("bob", "lunch"), 10)
    assert again.engine.board.status("bob").reason == "lunch"
    assert again.engine.board.status("ann").queues == ("sales",)
    assert legs_rung(again.queue_call(1, 11)) == [("call-1-leg1", "PJSIP/ann")]
    with pytest.raises(InvalidTransition):  # already back
        again.feed(e.AgentRestored("ann"), 12)


# -- a live reload ---------------------------------------------------------------------------


def test_a_live_reload_keeps_calls_and_agents_and_refuses_to_drop_what_is_in_use() -> None:
    profiles = [agent("ann", "sales"), agent("bob", "sales")]
    desk = Desk([sales(), support()], profiles)
    desk.login("ann")
    desk.command("ann", "pause", 0.5, "brief")
    desk.queue_call(1, 1)  # waits: nobody ready
    engine = desk.engine
    before = engine.directory

    # Dropping the queue the caller waits in, or the logged-in ann: refused, nothing changed.
    no_sales = Directory.build([Tenant("globex", "Globex")], [], queues=[support()])
    with pytest.raises(ValueError, match=r"\['sales'\] still have live calls"):
        engine.reload(no_sales, at(2))
    only_bob = Directory.build(
        [Tenant("acme", "Acme")],
        [(ACME_DID, "acme")],
        queues=[sales()],
        agents=profiles[1:],
        did_queues=[(ACME_DID, "sales")],
    )
    with pytest.raises(ValueError, match="logged in"):
        engine.reload(only_bob, at(2))
    assert engine.directory is before
    assert desk.state("ann") is S.PAUSED

    # A new agent: the reload adds him, ann stays paused, the caller keeps her
    # place, and the newcomer's login gets him the call at once.
    carl = agent("carl", "sales")
    grown = Directory.build(
        [Tenant("acme", "Acme")],
        [(ACME_DID, "acme")],
        queues=[sales(ring_timeout_ms=9_000)],
        agents=[*profiles, carl],
        did_queues=[(ACME_DID, "sales")],
    )
    assert engine.reload(grown, at(3)) == []
    assert desk.state("ann") is S.PAUSED
    assert desk.call_state(1) is CallState.QUEUED
    rung = desk.command("carl", "login", 4)
    assert legs_rung(rung) == [("call-1-leg1", "PJSIP/carl")]
    assert timer(rung, "ring").delay_ms == 9_000  # the reloaded queue's rule


def adopted(n: int, agent_id: str, *, arrived: float, answered: float) -> e.CallAdopted:
    return e.CallAdopted(
        f"call-{n}",
        f"chan-{n}",
        ACME_DID,
        at(arrived),
        CALLER,
        e.AdoptedConnection(f"call-{n}-leg1", agent_id, "sales", f"call-{n}-bridge", at(answered)),
    )


def test_a_restarted_engine_adopts_a_call_still_talking_and_bills_its_whole_talk() -> None:
    desk = Desk([sales(wrapup_ms=2_000)], [agent("ann", "sales"), agent("bob", "sales")])
    desk.login("bob")
    desk.command("bob", "pause", 1, "lunch")
    # Found at start-up (t=100): arrived at 10, answered by bob at 15.
    actions = desk.feed(adopted(1, "bob", arrived=10, answered=15), 100)
    assert moves(actions) == [("bob", S.PAUSED, S.ON_CALL, "CallAdopted")]
    assert desk.call_state(1) is CallState.CONNECTED
    assert desk.engine.board.status("bob").pending == "lunch"
    # A second caller is not offered to bob, who is busy.
    desk.login("ann", when=101)
    assert legs_rung(desk.queue_call(2, 102)) == [("call-2-leg1", "PJSIP/ann")]

    # The agent hangs up at 160: caller hung up, bridge gone, bob wraps up
    # and is paused again after it.
    ended = desk.feed(e.ChannelLeftApp("call-1-leg1"), 160)
    assert a.Hangup("chan-1") in ended
    assert a.DestroyBridge("call-1-bridge") in ended
    assert moves(ended) == [("bob", S.ON_CALL, S.WRAP_UP, "CallEnded")]
    assert desk.engine.board.status("bob").pending == "lunch"
    cdr = desk.caller_leaves(1, 161)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.ANSWERED, HangupSide.AGENT)
    assert (cdr.agent_id, cdr.queue_id) == ("bob", "sales")
    assert (cdr.arrived_at, cdr.answered_at) == (at(10), at(15))
    assert cdr.talk_ms == 145_000  # from the answer before the restart to the end
    assert outcomes(cdr) == {("bob", "answered")}


def test_an_adopted_call_whose_agent_or_queue_is_gone_goes_to_the_fallback() -> None:
    desk = Desk([sales()], [agent("ann", "sales")])
    actions = desk.feed(adopted(1, "zed", arrived=0, answered=5), 100)  # zed: not configured
    assert actions == [a.ContinueInDialplan("chan-1", "pbx-fallback")]
    assert desk.call_state(1) is CallState.ENDING


def test_a_leg_asterisk_could_not_make_because_the_caller_left_ends_the_call() -> None:
    """The caller hangs up while the agents' legs are being originated:
    Asterisk refuses the next originate (its originator, the caller's
    channel, is gone) before the caller's hang-up reaches the engine. Not
    the agent's miss, and the call is not offered again; the other legs are
    hung up and their agents freed."""
    desk = ring_all_desk()
    desk.queue_call(1, when=3)
    gone = e.ActionFailed(
        "call-1-leg1", "Originate", "originator channel was not found", caller_gone=True
    )
    ended = desk.feed(gone, 3.1)
    assert not only(ended, a.Originate)  # not offered again
    assert set(only(ended, a.Hangup)) == {a.Hangup("call-1-leg2"), a.Hangup("call-1-leg3")}
    assert sorted(moves(ended)) == [
        (who, S.RESERVED, S.READY, "OfferCancelled") for who in ("ann", "bob", "cat")
    ]
    assert desk.engine.board.status("ann").missed_in_row == 0
    assert desk.call_state(1) is CallState.ENDING
    # The caller's hang-up follows and changes nothing more.
    assert not only(desk.caller_hangs_up(1, 3.2), a.Originate)
    cdr = desk.caller_leaves(1, 3.2)
    assert (cdr.disposition, cdr.hangup_side) == (Disposition.ABANDONED, HangupSide.CALLER)
    assert outcomes(cdr) == {("ann", "cancelled"), ("bob", "cancelled"), ("cat", "cancelled")}


def test_originates_asterisk_never_answered_are_not_the_agents_misses() -> None:
    """An overloaded Asterisk times the originates out: the call is offered
    again, to the same agent, and nobody is auto-paused for it (three real
    misses would pause her)."""
    desk = Desk([sales()], [agent("ann", "sales")])
    desk.login("ann")
    rung = desk.queue_call(1, 1)
    for n in range(1, 5):
        assert legs_rung(rung) == [(f"call-1-leg{n}", "PJSIP/ann")]
        timeout = e.ActionFailed(f"call-1-leg{n}", "Originate", "no answer", unanswered=True)
        rung = desk.feed(timeout, 1 + n * 5)
        assert ("ann", S.RESERVED, S.READY, "OfferCancelled") in moves(rung)
    assert desk.engine.board.status("ann").missed_in_row == 0
    desk.answer(1, 5, "ann", 30)
    cdr = desk.caller_leaves(1, 40)
    assert [s.outcome for s in cdr.segments] == ["failed"] * 4 + ["answered"]
