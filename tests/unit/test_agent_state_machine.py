"""Hypothesis drives the agent board (with an OfferBook, as the engine will)
through random interleavings of commands, offers, answers, misses, hang-ups
and timers.

Across any interleaving:
- the board raises InvalidTransition exactly for the (state, event) pairs
  the table lacks, and a refused command changes nothing;
- every change of (state, reason) yields exactly one log row, which chains
  from the previous state; anything else yields none;
- no agent is reserved or on a call for two calls, and no call has two
  agents on it (ring-all has one winner);
- wrap-up ends in ready, or in the pause or logout commanded meanwhile;
- auto-pause comes after exactly K consecutive misses;
- a controller restart logs everyone out with SHUTDOWN_REASON, and the log
  rows alone (through `restoration`) put each agent back as it was after a
  short stop, and nobody after a long one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pbx_controller.core.actions import CancelTimer, StartTimer
from pbx_controller.core.agent import (
    AGENT_TRANSITIONS,
    AUTO_PAUSE_REASON,
    LOST_REASON,
    SHUTDOWN_REASON,
    AgentBoard,
    AgentState,
    AgentStatus,
    BoardChange,
    CallMismatch,
    LoggedState,
    lost_run_logout,
    restoration,
)
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import AgentProfile, Queue, QueueMembership, Strategy
from pbx_controller.core.routing import Offer, OfferBook, WaitingCall

S = AgentState
K = 2
T0 = datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # Warsaw's fall-back night
AGENTS = ("ann", "bob", "cat")
QUEUES = (Queue("q1", "acme", wrapup_ms=5_000), Queue("q2", "globex", wrapup_ms=0))
PROFILES = tuple(
    AgentProfile(a, a, f"PJSIP/{a}", memberships=(QueueMembership("q1"), QueueMembership("q2")))
    for a in AGENTS
)
agents = st.sampled_from(AGENTS)
reasons = st.sampled_from(["lunch", "break", "training"])


@dataclass
class Shadow:
    """What the test itself expects, kept apart from the board's own counters."""

    misses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(AGENTS, 0))
    timers: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # id -> agent, due
    cancelled: list[str] = field(default_factory=list)


class AgentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.board = AgentBoard(PROFILES, QUEUES, auto_pause_after=K)
        self.book = OfferBook()
        self.shadow = Shadow()
        self.now = T0
        self.calls = 0

    def tick(self, seconds: int = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    # -- the one way commands go in ------------------------------------------------

    def feed(
        self, agent: str, event: str, command: Callable[[], BoardChange]
    ) -> BoardChange | None:
        before = self.board.status(agent)
        refused: InvalidTransition | None = None
        try:
            change = command()
        except InvalidTransition as err:
            refused = err
        if refused is not None:
            assert not AGENT_TRANSITIONS.allows(before.state, event), (before.state, event)
            assert (refused.state, refused.event) == (before.state, event)
            assert self.board.status(agent) == before  # refused, not half-done
            hypothesis.event(f"refused {event} in {before.state.value}")
            return None
        assert AGENT_TRANSITIONS.allows(before.state, event), (before.state, event)
        after = self.board.status(agent)
        self.check_rows(agent, event, before, after, change)
        self.check_timers(agent, change)
        if after.state in (S.PAUSED, S.LOGGED_OUT) or event == "OfferAnswered":
            self.shadow.misses[agent] = 0
        return change

    def check_rows(
        self, agent: str, event: str, before: AgentStatus, after: AgentStatus, change: BoardChange
    ) -> None:
        changed = (before.state, before.reason) != (after.state, after.reason)
        assert len(change.records) == (1 if changed else 0), (event, before, after)
        for row in change.records:
            assert (row.agent_id, row.previous, row.state) == (agent, before.state, after.state)
            assert (row.reason, row.at, row.event) == (after.reason, self.now, event)
            assert row.queues == after.queues
            assert row.tenants == (() if row.state is S.LOGGED_OUT else ("acme", "globex"))
            if event == "Shutdown":
                assert (row.state, row.reason) == (S.LOGGED_OUT, SHUTDOWN_REASON)
            else:
                assert (row.reason is not None) == (row.state is S.PAUSED)

    def check_timers(self, agent: str, change: BoardChange) -> None:
        for timer in change.timers:
            if isinstance(timer, StartTimer):
                assert timer.timer_id not in self.shadow.timers
                assert self.board.owns_timer(timer.timer_id)
                due = self.now + timedelta(milliseconds=timer.delay_ms)
                self.shadow.timers[timer.timer_id] = (agent, due)
            else:
                assert isinstance(timer, CancelTimer)
                owner, _ = self.shadow.timers.pop(timer.timer_id)
                assert owner == agent
                self.shadow.cancelled.append(timer.timer_id)

    @initialize(paused=st.lists(st.booleans(), min_size=len(AGENTS), max_size=len(AGENTS)))
    def everyone_logs_in(self, paused: list[bool]) -> None:
        # Start logged in so short runs reach offers, wrap-up and auto-pause.
        now = self.tick()
        for agent, is_paused in zip(AGENTS, paused, strict=True):
            reason = "late" if is_paused else None
            self.feed(
                agent, "Login", lambda a=agent, r=reason: self.board.login(a, now, paused_reason=r)
            )

    # -- agent commands (any agent, any state: the table decides) ------------------------

    @rule(agent=agents, paused=st.none() | reasons, subset=st.booleans())
    def login(self, agent: str, paused: str | None, subset: bool) -> None:
        now = self.tick()
        queues = ["q1", "q2"] if subset else None
        self.feed(
            agent,
            "Login",
            lambda: self.board.login(agent, now, queues=queues, paused_reason=paused),
        )

    @rule(agent=agents)
    def logout(self, agent: str) -> None:
        now = self.tick()
        self.feed(agent, "Logout", lambda: self.board.logout(agent, now))

    @rule(agent=agents, reason=reasons)
    def pause(self, agent: str, reason: str) -> None:
        before = self.board.status(agent)
        now = self.tick()
        if self.feed(agent, "Pause", lambda: self.board.pause(agent, reason, now)) is None:
            return
        after = self.board.status(agent)
        if before.state in (S.RESERVED, S.ON_CALL):  # waits; a pending logout outranks it
            assert after.pending == ("logout" if before.pending == "logout" else reason)
        else:
            assert (after.state, after.reason) == (S.PAUSED, reason)

    @rule(agent=agents)
    def unpause(self, agent: str) -> None:
        now = self.tick()
        self.feed(agent, "Unpause", lambda: self.board.unpause(agent, now))

    @rule(agent=agents)
    def end_wrapup(self, agent: str) -> None:
        before = self.board.status(agent)
        now = self.tick()
        if self.feed(agent, "WrapUpEnded", lambda: self.board.end_wrapup(agent, now)):
            self.check_wrapup_end(before, self.board.status(agent))

    # -- offers, as the engine makes them -----------------------------------------------

    @rule(data=st.data(), ring_all=st.booleans(), queue=st.sampled_from(["q1", "q2"]))
    def offer(self, data: st.DataObject, ring_all: bool, queue: str) -> None:
        ready = [a for a in AGENTS if self.board.status(a).state is S.READY]
        if not ready:
            return
        chosen = data.draw(st.lists(st.sampled_from(ready), min_size=1, unique=True))
        if not ring_all:
            chosen = chosen[:1]
        self.calls += 1
        call_id = f"c{self.calls}"
        now = self.tick()
        strategy = Strategy.RING_ALL if ring_all else Strategy.LONGEST_IDLE
        self.book.open(
            Offer(call_id, queue, tuple(chosen), 15_000, strategy),
            WaitingCall(call_id, queue, now),
        )
        for agent in chosen:
            self.feed(
                agent, "OfferMade", lambda a=agent: self.board.offer_made(a, call_id, queue, now)
            )

    def ringing_agents(self) -> list[str]:
        return [a for a in AGENTS if self.book.call_of(a) is not None]

    def ringing_calls(self) -> list[str]:
        return sorted({c for a in AGENTS if (c := self.book.call_of(a)) is not None})

    @precondition(lambda self: self.ringing_agents())
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.ringing_agents()))
        call_id = self.book.call_of(agent)
        assert call_id is not None
        now = self.tick()
        outcome = self.book.answered(call_id, agent)
        assert outcome.won  # it was ringing, and nobody else had answered
        self.feed(agent, "OfferAnswered", lambda: self.board.offer_answered(agent, call_id, now))
        for loser in outcome.cancel:
            self.feed(
                loser, "OfferCancelled", lambda a=loser: self.board.offer_cancelled(a, call_id, now)
            )
        # A loser's late answer loses: never two agents on one call.
        for loser in outcome.cancel:
            assert not self.book.answered(call_id, loser).won
        if outcome.cancel:
            hypothesis.event("ring-all won, other legs cancelled")

    def miss_one(self, agent: str, call_id: str, now: datetime) -> None:
        before = self.board.status(agent)
        expected_count = self.shadow.misses[agent] + 1
        change = self.feed(
            agent, "OfferMissed", lambda: self.board.offer_missed(agent, call_id, now)
        )
        assert change is not None
        after = self.board.status(agent)
        if before.pending == "logout":
            assert after.state is S.LOGGED_OUT
            assert not change.auto_paused
        elif expected_count == K:
            hypothesis.event("auto-paused")
            assert change.auto_paused, "not paused after exactly K misses"
            assert (after.state, after.reason) == (S.PAUSED, AUTO_PAUSE_REASON)
        else:
            assert not change.auto_paused, "paused before K misses"
            assert after.state is (S.READY if before.pending is None else S.PAUSED)
            self.shadow.misses[agent] = expected_count if after.state is S.READY else 0

    @precondition(lambda self: self.ringing_agents())
    @rule(data=st.data())
    def decline(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.ringing_agents()))
        call_id = self.book.call_of(agent)
        assert call_id is not None
        outcome = self.book.missed(call_id, agent)
        assert outcome.counted
        self.miss_one(agent, call_id, self.tick())
        if outcome.requeue is not None:
            assert agent in outcome.requeue.missed_by

    @precondition(lambda self: self.ringing_agents())
    @rule(data=st.data())
    def ring_timeout(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(self.ringing_calls()))
        now = self.tick(15)
        missed, requeue = self.book.expire(call_id)
        assert missed
        assert requeue is not None
        for agent in missed:
            self.miss_one(agent, call_id, now)

    @precondition(lambda self: self.ringing_agents())
    @rule(data=st.data())
    def caller_left(self, data: st.DataObject) -> None:
        call_id = data.draw(st.sampled_from(self.ringing_calls()))
        now = self.tick()
        for agent in self.book.withdraw(call_id):
            count = self.shadow.misses[agent]
            self.feed(
                agent, "OfferCancelled", lambda a=agent: self.board.offer_cancelled(a, call_id, now)
            )
            if self.board.status(agent).state is S.READY:
                assert self.board.status(agent).missed_in_row == count  # neither counts nor resets

    def in_state(self, state: AgentState) -> list[str]:
        return [a for a in AGENTS if self.board.status(a).state is state]

    @precondition(lambda self: self.in_state(S.ON_CALL))
    @rule(data=st.data())
    def hang_up(self, data: st.DataObject) -> None:
        self.end_call(data.draw(st.sampled_from(self.in_state(S.ON_CALL))))

    @rule(agent=agents)
    def hang_up_anyone(self, agent: str) -> None:
        self.end_call(agent)  # mostly refused: only an agent on a call has one to end

    def end_call(self, agent: str) -> None:
        before = self.board.status(agent)
        call_id = before.call_id or "c0"
        now = self.tick(30)
        change = self.feed(agent, "CallEnded", lambda: self.board.call_ended(agent, call_id, now))
        if change is None:
            return
        after = self.board.status(agent)
        if before.queue_id == "q1":  # 5 s of wrap-up: pending commands wait for its end
            assert after.state is S.WRAP_UP
            assert after.pending == before.pending
        else:  # no wrap-up: straight to ready, or to what was commanded meanwhile
            expected = {None: S.READY, "logout": S.LOGGED_OUT}.get(before.pending, S.PAUSED)
            assert after.state is expected

    @precondition(lambda self: self.shadow.timers)
    @rule(data=st.data())
    def wrapup_timer_fires(self, data: st.DataObject) -> None:
        timer_id = data.draw(st.sampled_from(sorted(self.shadow.timers)))
        agent, due = self.shadow.timers.pop(timer_id)
        before = self.board.status(agent)
        self.now = max(self.now, due)
        change = self.feed(agent, "WrapUpEnded", lambda: self.board.timer_fired(timer_id, self.now))
        assert change is not None
        assert change.records
        self.check_wrapup_end(before, self.board.status(agent))

    @precondition(lambda self: self.shadow.cancelled)
    @rule(data=st.data())
    def stale_timer_fires(self, data: st.DataObject) -> None:
        timer_id = data.draw(st.sampled_from(self.shadow.cancelled))
        before = self.board.statuses()
        assert self.board.timer_fired(timer_id, self.tick()) == BoardChange()
        assert self.board.statuses() == before

    @rule(agent=agents, call=st.sampled_from(["c0", "nope"]))
    def wrong_call(self, agent: str, call: str) -> None:
        status = self.board.status(agent)
        if status.state is not S.RESERVED:
            return
        with pytest.raises(CallMismatch):
            self.board.offer_answered(agent, call, self.now)
        assert self.board.status(agent) == status

    @rule(agent=agents, queue=st.sampled_from(["q1", "q2"]))
    def adopt(self, agent: str, queue: str) -> None:
        """A restarted controller finds the agent still talking on a call."""
        before = self.board.status(agent)
        self.calls += 1
        call_id = f"c{self.calls}"
        now = self.tick()
        change = self.feed(
            agent, "CallAdopted", lambda: self.board.call_adopted(agent, call_id, queue, now)
        )
        if change is None:
            return
        after = self.board.status(agent)
        assert (after.state, after.call_id, after.queue_id) == (S.ON_CALL, call_id, queue)
        # Paused before: paused again, for the same reason, once the call ends.
        assert after.pending == (before.reason if before.state is S.PAUSED else None)
        if before.state is S.LOGGED_OUT:
            assert after.queues == ("q1", "q2")
        self.shadow.misses[agent] = before.missed_in_row if before.state is not S.LOGGED_OUT else 0

    @rule(stopped_s=st.sampled_from([5, 899, 901, 3600]), killed=st.booleans())
    def restart(self, stopped_s: int, killed: bool) -> None:
        """The controller stops (every agent out), or is killed (the next run
        logs them out as of the kill: `lost_run_logout`), then starts again
        after `stopped_s`; each agent comes back from its last two log rows only."""
        now = self.tick()
        before = {a: self.board.status(a) for a in AGENTS}
        last_rows: dict[str, list[LoggedState]] = {}
        for agent in AGENTS:
            status = before[agent]
            if status.state is S.LOGGED_OUT:
                last_rows[agent] = []  # its last row (if any) says logged out
                assert self.board.status(agent).state is S.LOGGED_OUT
                continue
            assert status.since is not None
            previous = LoggedState(status.state, status.reason, status.queues, status.since)
            self.shadow.misses[agent] = 0
            if killed:
                # No word from the dying run; its stamp says `now`. The board
                # dies with it: the next run starts a new one.
                last_rows[agent] = [previous]
                continue
            change = self.feed(agent, "Shutdown", lambda a=agent: self.board.shutdown(a, now))
            assert change is not None
            (row,) = change.records
            last_rows[agent] = [LoggedState(row.state, row.reason, row.queues, row.at), previous]
        if killed:
            self.board = AgentBoard(PROFILES, QUEUES, auto_pause_after=K)
            self.book = OfferBook()
            self.shadow.timers.clear()
        for call_id in self.ringing_calls():
            self.book.withdraw(call_id)
        assert not self.board.available()
        start = self.tick(stopped_s)
        for agent in AGENTS:
            rows = last_rows[agent]
            logout = lost_run_logout(rows[0] if rows else None, now, start)
            if killed and rows:
                assert logout == LoggedState(S.LOGGED_OUT, LOST_REASON, (), now)
                rows = [logout, *rows]
            else:
                assert logout is None  # logged out already, by the stop or by the agent
            back = restoration(rows, start, timedelta(seconds=900))
            was = before[agent]
            if was.state is S.LOGGED_OUT or stopped_s > 900:
                assert back is None
                continue
            assert back is not None
            self.feed(
                agent,
                "Restore",
                lambda a=agent, b=back: self.board.restore(
                    a, start, queues=b.queues, paused_reason=b.paused_reason
                ),
            )
            after = self.board.status(agent)
            expected = (S.PAUSED, was.reason) if was.state is S.PAUSED else (S.READY, None)
            assert (after.state, after.reason) == expected
            assert after.queues == was.queues
        hypothesis.event(f"{'kill' if killed else 'stop'}, restart after {stopped_s} s")

    def check_wrapup_end(self, before: AgentStatus, after: AgentStatus) -> None:
        assert before.state is S.WRAP_UP
        hypothesis.event(f"wrap-up ended into {after.state.value}")
        if before.pending is None:
            assert after.state is S.READY
        elif before.pending == "logout":
            assert after.state is S.LOGGED_OUT
        else:
            assert (after.state, after.reason) == (S.PAUSED, before.pending)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def one_call_per_agent_and_one_agent_per_call(self) -> None:
        on_call: dict[str, str] = {}
        for status in self.board.statuses():
            if status.state in (S.RESERVED, S.ON_CALL, S.WRAP_UP):
                assert status.call_id is not None
            else:
                assert status.call_id is None
            if status.state is S.RESERVED:
                assert self.book.call_of(status.agent_id) == status.call_id
            else:
                assert self.book.call_of(status.agent_id) is None
            if status.state is S.ON_CALL:
                assert status.call_id not in on_call, f"{status.call_id} has two agents"
                on_call[str(status.call_id)] = status.agent_id

    @invariant()
    def wrap_up_has_exactly_one_armed_timer(self) -> None:
        in_wrap_up = {s.agent_id: s for s in self.board.statuses() if s.state is S.WRAP_UP}
        armed = {agent: due for agent, due in self.shadow.timers.values()}
        assert armed.keys() == in_wrap_up.keys()
        assert len(armed) == len(self.shadow.timers)
        for agent, status in in_wrap_up.items():
            assert status.wrapup_until == armed[agent]

    @invariant()
    def only_ready_agents_are_available(self) -> None:
        ready = {s.agent_id for s in self.board.statuses() if s.state is S.READY}
        assert {a.agent_id for a in self.board.available()} == ready

    @invariant()
    def miss_counts_agree(self) -> None:
        for status in self.board.statuses():
            assert status.missed_in_row == self.shadow.misses[status.agent_id]
            assert status.missed_in_row < K


TestAgentMachine = AgentMachine.TestCase
TestAgentMachine.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
