"""The agent board: commands in, agent_state_log rows and timers out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from pbx_controller.core.actions import CancelTimer, StartTimer
from pbx_controller.core.agent import (
    AGENT_TRANSITIONS,
    AUTO_PAUSE_REASON,
    LOST_REASON,
    SHUTDOWN_REASON,
    AgentBoard,
    AgentState,
    AgentStateRecord,
    CallMismatch,
    LoggedState,
    NotAMember,
    Restoration,
    UnknownAgent,
    lost_run_logout,
    restoration,
)
from pbx_controller.core.machine import InvalidTransition
from pbx_controller.core.model import AgentProfile, Queue, QueueMembership

S = AgentState
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


QUEUES = (
    Queue("acme-sales", "acme", wrapup_ms=10_000),
    Queue("acme-support", "acme", wrapup_ms=30_000),
    Queue("globex", "globex", wrapup_ms=0),
)


def profile(agent_id: str, *queues: str) -> AgentProfile:
    return AgentProfile(
        agent_id,
        agent_id.title(),
        f"PJSIP/{agent_id}",
        skills={"english": 7},
        memberships=tuple(QueueMembership(q) for q in queues),
    )


def board(auto_pause_after: int = 3) -> AgentBoard:
    return AgentBoard(
        [
            profile("ann", "acme-sales", "globex"),
            profile("bob", "acme-sales", "acme-support"),
            profile("cat", "globex"),
        ],
        QUEUES,
        auto_pause_after=auto_pause_after,
    )


def one(records: tuple[AgentStateRecord, ...]) -> AgentStateRecord:
    assert len(records) == 1, records
    return records[0]


def test_login_writes_a_row_with_the_tenants_and_queues_served() -> None:
    b = board()
    row = one(b.login("ann", at(0)).records)
    assert row == AgentStateRecord(
        agent_id="ann",
        state=S.READY,
        reason=None,
        tenants=("acme", "globex"),
        queues=("acme-sales", "globex"),
        at=at(0),
        previous=S.LOGGED_OUT,
        event="Login",
    )
    assert b.status("ann").idle_since == at(0)


def test_login_to_a_subset_of_queues_and_not_to_a_foreign_one() -> None:
    b = board()
    row = one(b.login("ann", at(0), queues=["globex"]).records)
    assert (row.queues, row.tenants) == (("globex",), ("globex",))
    with pytest.raises(NotAMember):
        board().login("ann", at(0), queues=["acme-support"])


def test_login_paused_and_unpause() -> None:
    b = board()
    row = one(b.login("bob", at(0), paused_reason="briefing").records)
    assert (row.state, row.reason) == (S.PAUSED, "briefing")
    assert b.available() == ()
    row = one(b.unpause("bob", at(60)).records)
    assert (row.state, row.reason, row.previous) == (S.READY, None, S.PAUSED)
    assert b.status("bob").idle_since == at(60)


def test_commands_the_table_lacks_raise_the_named_error() -> None:
    b = board()
    with pytest.raises(InvalidTransition) as err:
        b.logout("ann", at(0))
    assert (err.value.machine, err.value.state, err.value.event) == (
        "agent",
        S.LOGGED_OUT,
        "Logout",
    )
    b.login("ann", at(0))
    for command in (
        lambda: b.login("ann", at(1)),
        lambda: b.unpause("ann", at(1)),
        lambda: b.offer_answered("ann", "c1", at(1)),
        lambda: b.call_ended("ann", "c1", at(1)),
        lambda: b.end_wrapup("ann", at(1)),
    ):
        with pytest.raises(InvalidTransition):
            command()
    assert b.status("ann").state is S.READY  # refused, not half-done


def test_an_agent_cannot_be_reserved_for_two_calls() -> None:
    b = board()
    b.login("ann", at(0))
    b.offer_made("ann", "c1", "acme-sales", at(1))
    with pytest.raises(InvalidTransition):
        b.offer_made("ann", "c2", "globex", at(1))
    assert b.status("ann").call_id == "c1"


def test_unknown_agent_mismatched_call_foreign_queue_naive_time() -> None:
    b = board()
    with pytest.raises(UnknownAgent):
        b.login("zed", at(0))
    b.login("cat", at(0))
    with pytest.raises(NotAMember):
        b.offer_made("cat", "c1", "acme-sales", at(1))
    b.offer_made("cat", "c1", "globex", at(1))
    with pytest.raises(CallMismatch):
        b.offer_answered("cat", "c2", at(2))
    with pytest.raises(ValueError, match="timezone-aware"):
        b.offer_answered("cat", "c1", datetime(2025, 3, 3, 8, 0))
    with pytest.raises(ValueError, match="reason"):
        b.pause("cat", "", at(3))


def test_a_call_from_offer_to_wrap_up_to_ready() -> None:
    b = board()
    b.login("bob", at(0))
    rows = [one(b.offer_made("bob", "c1", "acme-support", at(5)).records)]
    rows.append(one(b.offer_answered("bob", "c1", at(8)).records))
    ended = b.call_ended("bob", "c1", at(100))
    rows.append(one(ended.records))
    (timer,) = ended.timers
    assert isinstance(timer, StartTimer)
    assert timer.delay_ms == 30_000  # acme-support's wrap-up
    assert b.owns_timer(timer.timer_id)
    assert b.status("bob").wrapup_until == at(130)
    done = b.timer_fired(timer.timer_id, at(130))
    rows.append(one(done.records))
    assert [(r.previous, r.state, r.event, r.call_id) for r in rows] == [
        (S.READY, S.RESERVED, "OfferMade", "c1"),
        (S.RESERVED, S.ON_CALL, "OfferAnswered", "c1"),
        (S.ON_CALL, S.WRAP_UP, "CallEnded", "c1"),
        (S.WRAP_UP, S.READY, "WrapUpEnded", None),
    ]
    status = b.status("bob")
    assert (status.calls_taken, status.idle_since, status.call_id) == (1, at(130), None)
    # The fired timer is spent: firing it again changes nothing.
    assert b.timer_fired(timer.timer_id, at(131)).records == ()


def test_wrap_up_length_is_the_queue_s_and_blocks_every_queue() -> None:
    b = board()
    b.login("bob", at(0))
    b.offer_made("bob", "c1", "acme-sales", at(1))
    b.offer_answered("bob", "c1", at(2))
    (timer,) = b.call_ended("bob", "c1", at(60)).timers
    assert isinstance(timer, StartTimer)
    assert timer.delay_ms == 10_000  # acme-sales, not acme-support's 30 s
    # Wrapping up after a sales call, bob is offered nothing from support either.
    assert all(a.agent_id != "bob" for a in b.available())
    with pytest.raises(InvalidTransition):
        b.offer_made("bob", "c2", "acme-support", at(61))


def test_no_wrap_up_goes_straight_to_ready_and_override_wins() -> None:
    b = board()
    b.login("cat", at(0))
    b.offer_made("cat", "c1", "globex", at(1))
    b.offer_answered("cat", "c1", at(2))
    change = b.call_ended("cat", "c1", at(30))
    assert change.timers == ()
    assert one(change.records).state is S.READY
    b.offer_made("cat", "c2", "globex", at(31))
    b.offer_answered("cat", "c2", at(32))
    (timer,) = b.call_ended("cat", "c2", at(40), wrapup_ms=5_000).timers
    assert timer == StartTimer(timer.timer_id, 5_000)


def _in_wrap_up(b: AgentBoard, agent: str = "bob") -> str:
    b.login(agent, at(0))
    b.offer_made(agent, "c1", "acme-sales", at(1))
    b.offer_answered(agent, "c1", at(2))
    (timer,) = b.call_ended(agent, "c1", at(60)).timers
    return timer.timer_id


def test_pause_in_wrap_up_is_immediate_and_cancels_the_timer() -> None:
    b = board()
    timer_id = _in_wrap_up(b)
    change = b.pause("bob", "lunch", at(62))
    assert change.timers == (CancelTimer(timer_id),)
    row = one(change.records)
    assert (row.state, row.reason, row.previous) == (S.PAUSED, "lunch", S.WRAP_UP)
    assert b.timer_fired(timer_id, at(70)).records == ()  # cancelled, raced: ignored
    assert b.status("bob").state is S.PAUSED


def test_logout_in_wrap_up_is_immediate_and_serves_nobody() -> None:
    b = board()
    timer_id = _in_wrap_up(b)
    change = b.logout("bob", at(62))
    assert change.timers == (CancelTimer(timer_id),)
    row = one(change.records)
    assert (row.state, row.tenants, row.queues) == (S.LOGGED_OUT, (), ())


def test_end_wrap_up_early() -> None:
    b = board()
    timer_id = _in_wrap_up(b)
    change = b.end_wrapup("bob", at(63))
    assert change.timers == (CancelTimer(timer_id),)
    assert one(change.records).state is S.READY
    assert b.status("bob").idle_since == at(63)


def test_pause_during_a_call_waits_for_the_end_of_wrap_up() -> None:
    b = board()
    b.login("bob", at(0))
    b.offer_made("bob", "c1", "acme-sales", at(1))
    b.offer_answered("bob", "c1", at(2))
    assert b.pause("bob", "break", at(10)).records == ()  # pending
    assert b.status("bob").pending == "break"
    (timer,) = b.call_ended("bob", "c1", at(60)).timers
    assert b.status("bob").state is S.WRAP_UP  # the notes still get written
    row = one(b.timer_fired(timer.timer_id, at(70)).records)
    assert (row.state, row.reason, row.event) == (S.PAUSED, "break", "WrapUpEnded")
    assert b.status("bob").pending is None


def test_unpause_cancels_a_pending_pause() -> None:
    b = board()
    b.login("bob", at(0))
    b.offer_made("bob", "c1", "acme-sales", at(1))
    b.pause("bob", "break", at(2))
    assert b.unpause("bob", at(3)).records == ()
    assert b.status("bob").pending is None
    assert one(b.offer_missed("bob", "c1", at(20)).records).state is S.READY


def test_pending_logout_outranks_pause_and_auto_pause() -> None:
    b = board(auto_pause_after=1)
    b.login("ann", at(0))
    b.offer_made("ann", "c1", "globex", at(1))
    b.logout("ann", at(2))
    b.pause("ann", "break", at(3))
    b.unpause("ann", at(4))
    assert b.status("ann").pending == "logout"
    change = b.offer_missed("ann", "c1", at(16))
    assert not change.auto_paused
    assert one(change.records).state is S.LOGGED_OUT


def _miss(b: AgentBoard, agent: str, call: str, t: float) -> bool:
    b.offer_made(agent, call, "globex", at(t))
    return b.offer_missed(agent, call, at(t + 15)).auto_paused


def test_auto_pause_after_exactly_k_consecutive_misses() -> None:
    b = board(auto_pause_after=3)
    b.login("cat", at(0))
    assert not _miss(b, "cat", "c1", 10)
    assert not _miss(b, "cat", "c2", 30)
    assert b.status("cat").missed_in_row == 2
    b.offer_made("cat", "c3", "globex", at(50))
    b.offer_answered("cat", "c3", at(52))  # an answer resets the count
    b.call_ended("cat", "c3", at(60))
    assert not _miss(b, "cat", "c4", 70)
    assert not _miss(b, "cat", "c5", 90)
    # A cancelled offer (another agent won, the caller left) neither counts nor resets.
    b.offer_made("cat", "c6", "globex", at(110))
    b.offer_cancelled("cat", "c6", at(111))
    assert b.status("cat").missed_in_row == 2
    b.offer_made("cat", "c7", "globex", at(120))
    change = b.offer_missed("cat", "c7", at(135))
    assert change.auto_paused
    row = one(change.records)
    assert (row.state, row.reason, row.event) == (S.PAUSED, AUTO_PAUSE_REASON, "OfferMissed")
    # Unpaused, the agent starts counting afresh.
    b.unpause("cat", at(200))
    assert b.status("cat").missed_in_row == 0
    assert not _miss(b, "cat", "c8", 210)


def test_auto_pause_disabled_with_zero() -> None:
    b = board(auto_pause_after=0)
    b.login("cat", at(0))
    assert not any(_miss(b, "cat", f"c{i}", 20 * i) for i in range(10))
    assert b.status("cat").state is S.READY


def test_missed_and_cancelled_offers_keep_the_agent_s_idle_place() -> None:
    b = board()
    b.login("cat", at(0))
    _miss(b, "cat", "c1", 10)
    b.offer_made("cat", "c2", "globex", at(40))
    b.offer_cancelled("cat", "c2", at(41))
    (view,) = (a for a in b.available() if a.agent_id == "cat")
    assert view.idle_since == at(0)
    assert view.queues.keys() == {"globex"}


def test_same_pause_reason_is_no_change_a_new_one_is() -> None:
    b = board()
    b.login("ann", at(0))
    b.pause("ann", "lunch", at(1))
    assert b.pause("ann", "lunch", at(2)).records == ()
    row = one(b.pause("ann", "training", at(3)).records)
    assert (row.previous, row.state, row.reason) == (S.PAUSED, S.PAUSED, "training")


def test_staffed_counts_logged_in_unpaused_members() -> None:
    b = board()
    b.login("ann", at(0))
    b.login("bob", at(0))
    b.login("cat", at(0), paused_reason="late")
    assert (b.staffed("acme-sales"), b.staffed("globex"), b.staffed("acme-support")) == (2, 1, 1)
    b.offer_made("ann", "c1", "globex", at(1))  # reserved still counts
    assert b.staffed("globex") == 1


def test_reconfigure_writes_a_row_when_the_served_tenants_change() -> None:
    b = board()
    b.login("cat", at(0))
    new = [
        profile("ann", "acme-sales", "globex"),
        profile("bob", "acme-sales", "acme-support"),
        profile("cat", "globex", "acme-sales"),
    ]
    row = one(b.reconfigure(new, QUEUES, at(50)).records)
    assert (row.event, row.state, row.tenants) == ("Reconfigured", S.READY, ("acme", "globex"))
    assert b.reconfigure(new, QUEUES, at(60)).records == ()
    with pytest.raises(ValueError, match="log them out"):
        b.reconfigure(new[:2], QUEUES, at(70))
    b.logout("cat", at(80))
    b.reconfigure(new[:2], QUEUES, at(90))
    assert b.agent_ids() == ("ann", "bob")


def test_rows_fit_agent_state_log_and_yield_readiness() -> None:
    readiness = pytest.importorskip("pbx_controller.core.readiness")
    b = board()
    rows = list(b.login("ann", at(0)).records)  # acme + globex: half each
    rows += b.offer_made("ann", "c1", "globex", at(600)).records
    rows += b.offer_answered("ann", "c1", at(610)).records
    rows += b.call_ended("ann", "c1", at(900)).records  # globex: no wrap-up
    rows += b.pause("ann", "lunch", at(1800)).records
    rows += b.unpause("ann", at(3600)).records
    rows += b.logout("ann", at(5400)).records
    # Each row holds what the table stores: a known state name, a short reason, tenants.
    assert {r.state.value for r in rows} <= readiness.AGENT_STATES
    assert all(r.reason is None or len(r.reason) <= 64 for r in rows)
    changes = [
        readiness.StateChange(r.agent_id, r.at, r.state.value, frozenset(r.tenants)) for r in rows
    ]
    spans = list(readiness.ready_spans(changes, at(0), at(7200)))
    assert [(s.started_at, s.ended_at, s.share) for s in spans] == [
        (at(0), at(1800), Fraction(1, 2)),  # ready, reserved, on call, ready: one span
        (at(3600), at(5400), Fraction(1, 2)),
    ]
    with pytest.raises(ValueError, match="64"):
        b.pause("bob", "x" * 65, at(1))


def test_every_table_event_has_a_board_command() -> None:
    commands = {
        "Login": "login",
        "Logout": "logout",
        "Pause": "pause",
        "Unpause": "unpause",
        "OfferMade": "offer_made",
        "OfferAnswered": "offer_answered",
        "OfferMissed": "offer_missed",
        "OfferCancelled": "offer_cancelled",
        "CallEnded": "call_ended",
        "WrapUpEnded": "end_wrapup",
        "Restore": "restore",
        "CallAdopted": "call_adopted",
        "Shutdown": "shutdown",
    }
    assert AGENT_TRANSITIONS.events() == commands.keys()
    assert all(callable(getattr(AgentBoard, name)) for name in commands.values())
    diagram = AGENT_TRANSITIONS.mermaid()
    assert "wrap_up --> ready: WrapUpEnded" in diagram
    assert "reserved --> paused: OfferMissed" in diagram


# -- a run that died: logged out for it, as of its last liveness stamp -----------------


def test_a_dead_run_s_agent_is_logged_out_as_of_the_stamp_and_comes_back() -> None:
    on_call = LoggedState(S.ON_CALL, None, ("acme-sales",), at(10))
    logout = lost_run_logout(on_call, alive_at=at(14), now=at(60))
    assert logout == LoggedState(S.LOGGED_OUT, LOST_REASON, (), at(14))
    # Within the restore window of the stamp: back ready, in its queues.
    assert restoration([logout, on_call], at(60), timedelta(seconds=900)) == Restoration(
        None, ("acme-sales",)
    )
    # Down longer than the window (the night): out, as after a long clean stop.
    assert restoration([logout, on_call], at(14 + 901), timedelta(seconds=900)) is None


def test_a_dead_run_s_logout_never_leaves_the_log_out_of_order() -> None:
    paused = LoggedState(S.PAUSED, "lunch", ("globex",), at(30))
    # No stamp (first start, new data dir): as of the agent's last row.
    assert lost_run_logout(paused, None, at(60)) == LoggedState(
        S.LOGGED_OUT, LOST_REASON, (), at(30)
    )
    # A stamp older than the last row (written between stamps): the row's time.
    assert lost_run_logout(paused, at(25), at(60)).at == at(30)  # type: ignore[union-attr]
    # A stamp in the future (the clock was stepped back): now.
    assert lost_run_logout(paused, at(90), at(60)).at == at(60)  # type: ignore[union-attr]
    logout = lost_run_logout(paused, at(35), at(60))
    assert logout is not None
    assert restoration([logout, paused], at(60), timedelta(seconds=900)) == Restoration(
        "lunch", ("globex",)
    )


def test_no_dead_run_logout_for_an_agent_logged_out_already() -> None:
    for reason in (None, SHUTDOWN_REASON, LOST_REASON):
        out = LoggedState(S.LOGGED_OUT, reason, (), at(5))
        assert lost_run_logout(out, at(20), at(60)) is None
    assert lost_run_logout(None, at(20), at(60)) is None
