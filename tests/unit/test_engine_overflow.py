"""Overflow to another queue of the same tenant: the caller moves, the old
queue's timers are cancelled, and a loop back is a goodbye instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pbx_controller.core import actions as a
from pbx_controller.core import events as e
from pbx_controller.core.call_flow import CallState
from pbx_controller.core.cdr import Disposition
from pbx_controller.core.engine import OVERFLOW_CONTEXT, Engine
from pbx_controller.core.model import (
    AgentProfile,
    Announcements,
    Directory,
    OverflowRule,
    Queue,
    QueueMembership,
    Tenant,
)

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
QUIET = Announcements(position=False, estimated_wait=False)


def engine(first_overflow_to: str, second_overflow_to: str | None) -> Engine:
    sales = Queue(
        "sales",
        "acme",
        max_wait_ms=1000,
        announcements=QUIET,
        overflow=(OverflowRule(after_ms=1000, queue_id=first_overflow_to),),
    )
    backup = Queue(
        "backup",
        "acme",
        max_wait_ms=2000,
        announcements=QUIET,
        overflow=(OverflowRule(after_ms=2000, queue_id=second_overflow_to),),
    )
    other = Queue("other", "beta", announcements=QUIET)
    agents = [AgentProfile("bob", "Bob", "PJSIP/agent-bob", {}, (QueueMembership("backup"),))]
    return Engine(
        Directory.build(
            [Tenant("acme", "Acme"), Tenant("beta", "Beta")],
            [("100", "acme")],
            queues=[sales, backup, other],
            agents=agents,
            did_queues=[("100", "sales")],
        )
    )


def queued_call(eng: Engine) -> list[a.Action]:
    greeting = eng.handle(e.CallArrived("c1", "ch1", "100"), T0)
    play = next(x for x in greeting if isinstance(x, a.Play))
    return eng.handle(e.PlaybackFinished(play.playback_id, "ch1"), T0)


def fire(eng: Engine, actions: list[a.Action], kind: str, at: datetime) -> list[a.Action]:
    timer = next(x for x in actions if isinstance(x, a.StartTimer) and f"/{kind}/" in x.timer_id)
    return eng.handle(e.TimerFired(timer.timer_id), at)


def test_max_wait_moves_the_caller_to_the_backup_queue_where_bob_answers() -> None:
    eng = engine("backup", None)
    assert eng.handle(e.AgentCommand("bob", "login"), T0)
    entered = queued_call(eng)
    moved = fire(eng, entered, "maxwait", T0 + timedelta(seconds=1))
    # The old queue's timer is cancelled and the call rings bob in "backup".
    cancelled = {x.timer_id for x in moved if isinstance(x, a.CancelTimer)}
    assert any("/maxwait/" in t for t in cancelled)
    originate = [x for x in moved if isinstance(x, a.Originate)]
    assert [o.endpoint for o in originate] == ["PJSIP/agent-bob"]
    assert eng.calls["c1"].queue_id == "backup"
    assert eng.calls["c1"].state is CallState.OFFERING
    assert not any(isinstance(x, a.ContinueInDialplan) for x in moved)


def test_overflow_never_loops_and_never_crosses_tenants() -> None:
    eng = engine("backup", "sales")  # sales -> backup -> sales would loop
    entered = queued_call(eng)
    moved = fire(eng, entered, "maxwait", T0 + timedelta(seconds=1))
    assert eng.calls["c1"].queue_id == "backup"
    gone = fire(eng, moved, "maxwait", T0 + timedelta(seconds=3))
    assert [x.context for x in gone if isinstance(x, a.ContinueInDialplan)] == [OVERFLOW_CONTEXT]
    ended = eng.handle(e.ChannelLeftApp("ch1"), T0 + timedelta(seconds=4))
    cdr = next(x for x in ended if isinstance(x, a.EmitCdr)).cdr
    assert cdr.disposition is Disposition.OVERFLOW

    crossing = engine("other", None)  # a queue of tenant beta
    entered = queued_call(crossing)
    gone = fire(crossing, entered, "maxwait", T0 + timedelta(seconds=1))
    assert [x.context for x in gone if isinstance(x, a.ContinueInDialplan)] == [OVERFLOW_CONTEXT]
