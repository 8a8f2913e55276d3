"""Routing: skills decide, relaxation widens the choice, priority and the
longest wait come first across queues, each strategy keeps its documented
order, ring-all has exactly one winner. Also the queue, agent and
business-hours configuration the router and the engine read (model.py)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from pbx_controller.core.agent import AgentBoard, AvailableAgent
from pbx_controller.core.model import (
    AgentProfile,
    BusinessHours,
    OpenWindow,
    PriorityRule,
    Queue,
    QueueMembership,
    Relaxation,
    SkillRequirement,
    Strategy,
)
from pbx_controller.core.routing import (
    DuplicateOffer,
    Offer,
    OfferBook,
    Router,
    SplitMix64,
    UnknownQueue,
    WaitingCall,
    queue_positions,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def agent(
    agent_id: str,
    queues: Mapping[str, QueueMembership] | Iterable[str] = ("q",),
    *,
    skills: Mapping[str, int] | None = None,
    idle: float = 0,
    calls: int = 0,
) -> AvailableAgent:
    members = (
        dict(queues) if isinstance(queues, Mapping) else {q: QueueMembership(q) for q in queues}
    )
    return AvailableAgent(
        agent_id,
        MappingProxyType(dict(skills or {})),
        MappingProxyType(members),
        at(idle),
        calls,
    )


def call(
    call_id: str, queue: str = "q", *, waited_since: float = 0, priority: int = 0, seq: int = 0
) -> WaitingCall:
    return WaitingCall(call_id, queue, at(waited_since), priority, seq)


def router(*queues: Queue, seed: int = 0) -> Router:
    return Router(queues or (Queue("q", "acme"),), seed=seed)


def pairs(offers: Iterable[Offer]) -> dict[str, tuple[str, ...]]:
    return {o.call_id: o.agent_ids for o in offers}


# -- skills and relaxation ------------------------------------------------------------


SPANISH = SkillRequirement(
    "spanish",
    min_level=7,
    relaxations=(Relaxation(30_000, min_level=4), Relaxation(60_000, optional=True)),
)


def test_skills_decide_who_is_eligible() -> None:
    r = router(Queue("q", "acme", skills=(SPANISH,)))
    agents = [
        agent("novice", skills={"spanish": 4}, idle=0),  # longest idle, but not good enough
        agent("expert", skills={"spanish": 8}, idle=50),
        agent("none", idle=0),
    ]
    assert pairs(r.route([call("c1", waited_since=100)], agents, at(100))) == {"c1": ("expert",)}


def test_relaxation_widens_the_choice_over_time() -> None:
    r = router(Queue("q", "acme", skills=(SPANISH,)))
    agents = [agent("novice", skills={"spanish": 4}), agent("none")]
    c = call("c1")
    assert r.effective_requirements(c, at(29.999)) == (("spanish", 7),)
    assert r.route([c], agents, at(29.999)) == []
    assert r.effective_requirements(c, at(30)) == (("spanish", 4),)
    assert pairs(r.route([c], agents, at(30))) == {"c1": ("novice",)}
    assert r.effective_requirements(c, at(60)) == ()
    assert pairs(r.route([c], [agent("none")], at(60))) == {"c1": ("none",)}


def test_a_re_queued_call_keeps_its_relaxation_clock() -> None:
    book = OfferBook()
    r = router(Queue("q", "acme", skills=(SPANISH,)))
    c = call("c1")
    (offer,) = r.route([c], [agent("expert", skills={"spanish": 9})], at(25))
    book.open(offer, c)
    _, requeued = book.expire("c1")
    assert requeued is not None
    assert requeued.enqueued_at == c.enqueued_at
    assert r.effective_requirements(requeued, at(40)) == (("spanish", 4),)


@pytest.mark.parametrize(
    "steps",
    [
        (Relaxation(10, min_level=5), Relaxation(5, min_level=3)),  # out of order
        (Relaxation(10, min_level=8),),  # tightens
        (Relaxation(10, optional=True), Relaxation(20, min_level=2)),  # after optional
    ],
)
def test_relaxations_only_widen(steps: tuple[Relaxation, ...]) -> None:
    with pytest.raises(ValueError, match="relaxation"):
        SkillRequirement("spanish", 7, steps)


def test_relaxation_needs_exactly_one_effect_and_levels_are_1_to_10() -> None:
    with pytest.raises(ValueError, match="either"):
        Relaxation(10)
    with pytest.raises(ValueError, match="either"):
        Relaxation(10, min_level=3, optional=True)
    with pytest.raises(ValueError, match="1-10"):
        SkillRequirement("x", 11)
    with pytest.raises(ValueError, match="1-10"):
        AgentProfile("a", "A", "PJSIP/a", skills={"x": 0})


# -- call order: priority, then the longest wait, across queues ----------------------------


def test_priority_first_then_longest_wait() -> None:
    r = router()
    calls = [
        call("old", waited_since=0),
        call("vip", waited_since=50, priority=5),
        call("new", waited_since=60),
    ]
    assert pairs(r.route(calls, [agent("a")], at(100))) == {"vip": ("a",)}
    assert pairs(r.route(calls, [agent("a"), agent("b", idle=1)], at(100))) == {
        "vip": ("a",),
        "old": ("b",),
    }


def test_equal_instants_break_ties_by_seq() -> None:
    r = router()
    calls = [call("x", seq=2), call("y", seq=1)]
    assert pairs(r.route(calls, [agent("a")], at(5))) == {"y": ("a",)}


def test_an_agent_in_two_queues_takes_the_call_that_waited_longest() -> None:
    r = router(Queue("sales", "acme"), Queue("support", "globex"))
    both = agent("a", ["sales", "support"])
    for first, second in (("sales", "support"), ("support", "sales")):
        calls = [call("later", second, waited_since=20), call("earlier", first, waited_since=10)]
        assert pairs(r.route(calls, [both], at(30))) == {"earlier": ("a",)}


def test_queue_priority_rules_outrank_the_wait_across_queues() -> None:
    vip = Queue("vip", "acme", priority_rules=(PriorityRule(9, caller_prefix="+4860"),))
    assert vip.priority_for("+48601234567", "100") == 9
    assert vip.priority_for("+48221234567", "100") == 0
    r = router(vip, Queue("plain", "acme"))
    calls = [
        call("plain", "plain", waited_since=0),
        call("vip", "vip", waited_since=50, priority=9),
    ]
    assert pairs(r.route(calls, [agent("a", ["vip", "plain"])], at(60))) == {"vip": ("a",)}


def test_an_early_call_does_not_take_the_only_agent_a_later_call_could_have() -> None:
    r = router(Queue("sales", "acme"), Queue("support", "acme"))
    x = agent("x", ["sales", "support"], idle=0)  # longest idle: sales' first choice
    y = agent("y", ["sales"], idle=10)
    calls = [call("s1", "sales", waited_since=0), call("t1", "support", waited_since=5)]
    assert pairs(r.route(calls, [x, y], at(20))) == {"s1": ("y",), "t1": ("x",)}
    # With only x, the earlier call wins it.
    assert pairs(r.route(calls, [x], at(20))) == {"s1": ("x",)}


# -- strategies ---------------------------------------------------------------------------


def test_longest_idle_orders_by_idle_since_then_agent_id() -> None:
    r = router()
    agents = [agent("b", idle=30), agent("c", idle=10), agent("a", idle=10), agent("d", idle=20)]
    calls = [call(f"c{i}", waited_since=i) for i in range(3)]
    assert pairs(r.route(calls, agents, at(60))) == {"c0": ("a",), "c1": ("c",), "c2": ("d",)}


def test_least_calls_then_longest_idle() -> None:
    r = router(Queue("q", "acme", strategy=Strategy.LEAST_CALLS))
    agents = [
        agent("a", calls=3, idle=0),
        agent("b", calls=1, idle=20),
        agent("c", calls=1, idle=10),
    ]
    calls = [call("c0", waited_since=0), call("c1", waited_since=1)]
    assert pairs(r.route(calls, agents, at(60))) == {"c0": ("c",), "c1": ("b",)}


def _ordered(*ids: str, queue: str = "q") -> list[AvailableAgent]:
    # Membership order deliberately differs from the id order.
    return [agent(i, {queue: QueueMembership(queue, order=n)}) for n, i in enumerate(ids)]


def test_linear_always_starts_from_the_first() -> None:
    r = router(Queue("q", "acme", strategy=Strategy.LINEAR))
    agents = _ordered("zed", "amy", "kim")
    for n in range(3):
        assert pairs(r.route([call(f"c{n}")], agents, at(n))) == {f"c{n}": ("zed",)}
    assert pairs(r.route([call("c9")], agents[1:], at(9))) == {"c9": ("amy",)}


def test_round_robin_memory_continues_after_the_last_agent_across_calls() -> None:
    r = router(Queue("q", "acme", strategy=Strategy.ROUND_ROBIN))
    agents = _ordered("zed", "amy", "kim")
    got = [r.route([call(f"c{n}")], agents, at(n))[0].agent_ids[0] for n in range(4)]
    assert got == ["zed", "amy", "kim", "zed"]
    # amy is busy: the turn passes to kim, the next after zed that is free.
    assert r.route([call("c4")], [agents[0], agents[2]], at(5))[0].agent_ids == ("kim",)
    # Two calls in one round continue the cycle too.
    offers = r.route([call("c5", waited_since=0), call("c6", waited_since=1)], agents, at(6))
    assert pairs(offers) == {"c5": ("zed",), "c6": ("amy",)}


def test_round_robin_memory_is_per_queue() -> None:
    r = router(
        Queue("q", "acme", strategy=Strategy.ROUND_ROBIN),
        Queue("p", "acme", strategy=Strategy.ROUND_ROBIN),
    )
    both = [
        agent(i, {"q": QueueMembership("q", order=n), "p": QueueMembership("p", order=n)})
        for n, i in enumerate(["a", "b", "c"])
    ]
    assert r.route([call("q1", "q")], both, at(0))[0].agent_ids == ("a",)
    assert r.route([call("q2", "q")], both, at(1))[0].agent_ids == ("b",)
    assert r.route([call("p1", "p")], both, at(2))[0].agent_ids == ("a",)


def test_weighted_random_is_deterministic_per_seed_and_follows_weights() -> None:
    queue = Queue("q", "acme", strategy=Strategy.WEIGHTED_RANDOM)
    agents = [
        agent("light", {"q": QueueMembership("q", weight=1)}),
        agent("heavy", {"q": QueueMembership("q", weight=3)}),
    ]

    def picks(seed: int, n: int) -> list[str]:
        r = router(queue, seed=seed)
        return [r.route([call(f"c{i}")], agents, at(i))[0].agent_ids[0] for i in range(n)]

    assert picks(7, 50) == picks(7, 50)
    assert picks(7, 50) != picks(8, 50)
    share = Counter(picks(1, 4000))["heavy"] / 4000
    assert share == pytest.approx(0.75, abs=0.03)


def test_weighted_random_takes_an_injected_uniform() -> None:
    queue = Queue("q", "acme", strategy=Strategy.WEIGHTED_RANDOM)
    agents = [agent("a"), agent("b")]
    # Draws are taken in agent-id order; the smallest clock -ln(1 - u) / weight wins.
    for draws, expected in (([0.1, 0.9], "a"), ([0.9, 0.1], "b")):
        stream = iter(draws)
        r = Router([queue], uniform=lambda s=stream: next(s))
        assert r.route([call("c1")], agents, at(1))[0].agent_ids == (expected,)


def test_splitmix64_matches_the_reference_outputs() -> None:
    g = SplitMix64(0)
    assert [g.next_u64() for _ in range(3)] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    assert 0 <= SplitMix64(5).uniform() < 1


def test_lower_penalty_first_higher_when_the_lower_are_busy() -> None:
    r = router()
    low = agent("low", {"q": QueueMembership("q", penalty=0)}, idle=50)
    high = agent("high", {"q": QueueMembership("q", penalty=2)}, idle=0)
    assert pairs(r.route([call("c1")], [low, high], at(60))) == {"c1": ("low",)}
    assert pairs(r.route([call("c1")], [high], at(60))) == {"c1": ("high",)}


def test_an_agent_who_missed_the_call_comes_last_for_it() -> None:
    r = router()
    missed = WaitingCall("c1", "q", at(0), missed_by=frozenset({"a"}))
    agents = [agent("a", idle=0), agent("b", idle=30)]
    assert pairs(r.route([missed], agents, at(60))) == {"c1": ("b",)}
    assert pairs(r.route([missed], agents[:1], at(60))) == {"c1": ("a",)}


def test_the_offer_carries_the_queue_s_ring_timeout() -> None:
    r = router(Queue("q", "acme", ring_timeout_ms=12_000))
    (offer,) = r.route([call("c1")], [agent("a")], at(1))
    assert (offer.ring_timeout_ms, offer.strategy, offer.queue_id) == (
        12_000,
        Strategy.LONGEST_IDLE,
        "q",
    )


# -- ring-all ---------------------------------------------------------------------------------


RING = Queue("q", "acme", strategy=Strategy.RING_ALL, skills=(SkillRequirement("fr", 5),))


def test_ring_all_offers_every_eligible_agent_in_the_lowest_tier() -> None:
    r = router(RING)
    agents = [
        agent("b", skills={"fr": 6}, idle=20),
        agent("a", skills={"fr": 9}, idle=10),  # longest idle: the primary
        agent("c", skills={"fr": 2}, idle=0),  # not skilled enough
        agent("d", {"q": QueueMembership("q", penalty=3)}, skills={"fr": 9}),  # higher tier
    ]
    assert pairs(r.route([call("c1")], agents, at(60))) == {"c1": ("a", "b")}


def test_ring_all_exactly_one_wins_and_the_others_are_cancelled() -> None:
    board = AgentBoard(
        [AgentProfile(i, i, f"PJSIP/{i}", {"fr": 7}, (QueueMembership("q"),)) for i in "abc"],
        [RING],
    )
    for n, agent_id in enumerate("abc"):
        board.login(agent_id, at(n))
    book = OfferBook()
    c = call("c1", waited_since=5)
    (offer,) = router(RING).route([c], board.available(), at(10))
    assert offer.agent_ids == ("a", "b", "c")
    book.open(offer, c)
    for agent_id in offer.agent_ids:
        board.offer_made(agent_id, "c1", "q", at(10))
    first = book.answered("c1", "b")
    assert first.won
    assert first.cancel == ("a", "c")
    board.offer_answered("b", "c1", at(12))
    for loser in first.cancel:
        board.offer_cancelled(loser, "c1", at(12))
    # a's phone was answered a moment later, before the cancel reached it: it loses.
    late = book.answered("c1", "a")
    assert not late.won
    assert late.cancel == ()
    on_call = [s.agent_id for s in board.statuses() if s.call_id == "c1"]
    assert on_call == ["b"]
    assert {a.agent_id for a in board.available()} == {"a", "c"}


def test_ring_all_does_not_starve_a_later_call() -> None:
    r = router(RING)
    agents = [agent(i, skills={"fr": 9}, idle=n) for n, i in enumerate("abc")]
    offers = r.route([call("c1", waited_since=0), call("c2", waited_since=1)], agents, at(30))
    assert pairs(offers) == {"c1": ("a", "c"), "c2": ("b",)}


# -- the offer book --------------------------------------------------------------------------


def test_offer_book_refuses_double_offers() -> None:
    book = OfferBook()
    book.open(Offer("c1", "q", ("a", "b"), 15_000, Strategy.RING_ALL), call("c1"))
    with pytest.raises(DuplicateOffer):
        book.open(Offer("c1", "q", ("c",), 15_000, Strategy.LINEAR), call("c1"))
    with pytest.raises(DuplicateOffer):
        book.open(Offer("c2", "q", ("b",), 15_000, Strategy.LINEAR), call("c2"))
    with pytest.raises(ValueError, match="once"):
        book.open(Offer("c3", "q", ("d", "d"), 15_000, Strategy.RING_ALL), call("c3"))


def test_a_missed_offer_re_queues_the_call_at_its_old_position() -> None:
    book = OfferBook()
    r = router()
    old = call("old", waited_since=0, seq=1)
    (offer,) = r.route([old], [agent("a")], at(10))
    book.open(offer, old)
    outcome = book.missed("old", "a")
    assert outcome.counted
    assert outcome.requeue is not None
    assert book.missed("old", "a") == type(outcome)(counted=False)  # already closed
    newer = call("new", waited_since=5, seq=2)
    again = r.route([newer, outcome.requeue], [agent("a"), agent("b", idle=1)], at(20))
    # Back at the head of the line; the agent who missed it comes last for it.
    assert pairs(again) == {"old": ("b",), "new": ("a",)}


def test_ring_all_legs_missing_one_by_one_re_queue_after_the_last() -> None:
    book = OfferBook()
    book.open(Offer("c1", "q", ("a", "b"), 15_000, Strategy.RING_ALL), call("c1"))
    first = book.missed("c1", "a")
    assert first.counted
    assert first.requeue is None
    assert book.ringing("c1") == ("b",)
    last = book.missed("c1", "b")
    assert last.requeue is not None
    assert last.requeue.missed_by == {"a", "b"}
    assert book.call_of("a") is None


def test_withdraw_and_expire() -> None:
    book = OfferBook()
    book.open(Offer("c1", "q", ("a", "b"), 15_000, Strategy.RING_ALL), call("c1"))
    assert book.withdraw("c1") == ("a", "b")
    assert book.withdraw("c1") == ()
    assert book.expire("c1") == ((), None)
    assert not book.answered("c1", "a").won


# -- validation and positions ------------------------------------------------------------------


def test_unknown_queue_and_duplicates_are_errors() -> None:
    r = router()
    with pytest.raises(UnknownQueue):
        r.route([call("c1", "nowhere")], [agent("a")], at(1))
    with pytest.raises(ValueError, match="twice"):
        r.route([call("c1"), call("c1")], [agent("a")], at(1))
    with pytest.raises(ValueError, match="twice"):
        r.route([call("c1")], [agent("a"), agent("a")], at(1))
    with pytest.raises(ValueError, match="timezone-aware"):
        WaitingCall("c1", "q", datetime(2025, 1, 1))


def test_queue_positions_follow_routing_order_per_queue() -> None:
    calls = [
        call("a1", "a", waited_since=10),
        call("b1", "b", waited_since=0),
        call("a2", "a", waited_since=5),
        call("a3", "a", waited_since=20, priority=1),
    ]
    assert queue_positions(calls) == {"a3": 1, "a2": 2, "a1": 3, "b1": 1}


# -- properties over random instances ---------------------------------------------------------

QUEUE_IDS = ("q1", "q2", "q3")
STRATEGIES = list(Strategy)


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[Queue], list[WaitingCall], list[AvailableAgent]]:
    queues = [
        Queue(
            q,
            "acme",
            strategy=draw(st.sampled_from(STRATEGIES)),
            skills=tuple(
                SkillRequirement(s, draw(st.integers(1, 10)))
                for s in draw(st.lists(st.sampled_from("xyz"), unique=True, max_size=2))
            ),
        )
        for q in QUEUE_IDS
    ]
    n_calls = draw(st.integers(0, 6))
    calls = [
        WaitingCall(
            f"c{i}",
            draw(st.sampled_from(QUEUE_IDS)),
            at(draw(st.integers(0, 3))),
            draw(st.integers(0, 2)),
            seq=i,
        )
        for i in range(n_calls)
    ]
    n_agents = draw(st.integers(0, 6))
    agents = [
        agent(
            f"a{i}",
            {
                q: QueueMembership(
                    q, penalty=draw(st.integers(0, 2)), order=draw(st.integers(0, 3))
                )
                for q in draw(st.lists(st.sampled_from(QUEUE_IDS), unique=True, min_size=1))
            },
            skills={s: draw(st.integers(1, 10)) for s in draw(st.lists(st.sampled_from("xyz")))},
            idle=draw(st.integers(0, 3)),
            calls=draw(st.integers(0, 3)),
        )
        for i in range(n_agents)
    ]
    return queues, calls, agents


def _eligible(queues: dict[str, Queue], c: WaitingCall, a: AvailableAgent) -> bool:
    needs = queues[c.queue_id].requirements_after(0)
    return c.queue_id in a.queues and all(a.skills.get(s, 0) >= lvl for s, lvl in needs)


def _matchable(calls: list[WaitingCall], agents: list[AvailableAgent], ok: object) -> bool:
    """Brute force: can every call get its own eligible agent?"""
    if len(calls) > len(agents):
        return False
    return any(
        all(ok(c, a) for c, a in zip(calls, perm, strict=False))  # type: ignore[operator]
        for perm in itertools.permutations(agents, len(calls))
    )


@settings(max_examples=300, deadline=None)
@given(instances())
def test_offers_are_disjoint_eligible_and_serve_the_earliest_calls(
    instance: tuple[list[Queue], list[WaitingCall], list[AvailableAgent]],
) -> None:
    queues, calls, agents = instance
    by_queue = {q.id: q for q in queues}
    now = at(3)  # no relaxations: waits do not matter for eligibility
    offers = Router(queues, seed=1).route(calls, agents, now)
    offered_agents = [a for o in offers for a in o.agent_ids]
    assert len(offered_agents) == len(set(offered_agents)), "an agent got two offers"
    assert len({o.call_id for o in offers}) == len(offers), "a call got two offers"
    by_call = {c.call_id: c for c in calls}
    by_agent = {a.agent_id: a for a in agents}
    for o in offers:
        for agent_id in o.agent_ids:
            assert _eligible(by_queue, by_call[o.call_id], by_agent[agent_id])
        if by_queue[o.queue_id].strategy is not Strategy.RING_ALL:
            assert len(o.agent_ids) == 1

    def ok(c: WaitingCall, a: AvailableAgent) -> bool:
        return _eligible(by_queue, c, a)

    # The served calls are the greedy-in-order maximum: a call is left waiting
    # only if it could not be served together with every earlier served call.
    served_ids = {o.call_id for o in offers}
    ordered = sorted(calls, key=lambda c: (-c.priority, c.enqueued_at, c.seq))
    chosen: list[WaitingCall] = []
    for c in ordered:
        if _matchable([*chosen, c], agents, ok):
            chosen.append(c)
    assert served_ids == {c.call_id for c in chosen}


# -- configuration: queues, agents, business hours --------------------------------------------


def test_queue_and_profile_validation() -> None:
    with pytest.raises(ValueError, match="twice"):
        Queue("q", "acme", skills=(SkillRequirement("x"), SkillRequirement("x", 3)))
    with pytest.raises(ValueError, match="positive"):
        Queue("q", "acme", ring_timeout_ms=0)
    with pytest.raises(ValueError, match="negative"):
        Queue("q", "acme", wrapup_ms=-1)
    with pytest.raises(ValueError, match="twice"):
        AgentProfile("a", "A", "PJSIP/a", memberships=(QueueMembership("q"), QueueMembership("q")))
    skills = {"x": 3}
    p = AgentProfile("a", "A", "PJSIP/a", skills=skills, memberships=(QueueMembership("q", 2),))
    skills["x"] = 9  # the profile keeps its own read-only copy
    assert p.skills["x"] == 3
    with pytest.raises(TypeError):
        p.skills["x"] = 5  # type: ignore[index]
    assert p.membership("q") == QueueMembership("q", 2)
    assert p.membership("other") is None
    assert Queue("q", "acme", max_callers=2).admits(1)
    assert not Queue("q", "acme", max_callers=2).admits(2)


WARSAW = ZoneInfo("Europe/Warsaw")
WEEKDAYS_8_TO_18 = tuple(OpenWindow(d, time(8), time(18)) for d in range(5))


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=WARSAW).astimezone(UTC)  # type: ignore[misc]


def test_business_hours_in_tenant_local_time_across_dst() -> None:
    hours = BusinessHours(WEEKDAYS_8_TO_18)
    # Monday 31 March 2025, first weekday of summer time: 08:00 local is 06:00 UTC.
    assert not hours.is_open(datetime(2025, 3, 31, 5, 59, tzinfo=UTC), "Europe/Warsaw")
    assert hours.is_open(datetime(2025, 3, 31, 6, 0, tzinfo=UTC), "Europe/Warsaw")
    # Friday 24 January 2025 (winter): 17:59 local open, 18:00 closed.
    assert hours.is_open(local(2025, 1, 24, 17, 59), WARSAW)
    assert not hours.is_open(local(2025, 1, 24, 18, 0), WARSAW)
    assert not hours.is_open(local(2025, 1, 25, 12, 0), WARSAW)  # Saturday
    with pytest.raises(ValueError, match="timezone-aware"):
        hours.is_open(datetime(2025, 1, 24, 12), WARSAW)


def test_holidays_close_the_whole_local_day() -> None:
    hours = BusinessHours(WEEKDAYS_8_TO_18, holidays=frozenset({date(2025, 11, 11)}))
    assert not hours.is_open(local(2025, 11, 11, 12, 0), WARSAW)  # a Tuesday
    assert hours.is_open(local(2025, 11, 12, 12, 0), WARSAW)


def test_overnight_and_all_day_windows() -> None:
    night = BusinessHours((OpenWindow(4, time(22), time(6)),))  # Friday 22:00 -> Saturday 06:00
    assert night.is_open(local(2025, 1, 24, 23, 0), WARSAW)
    assert night.is_open(local(2025, 1, 25, 5, 59), WARSAW)
    assert not night.is_open(local(2025, 1, 25, 6, 0), WARSAW)
    assert not night.is_open(local(2025, 1, 24, 21, 59), WARSAW)
    sunday = BusinessHours((OpenWindow(6, time(0), time(0)),))
    assert sunday.is_open(local(2025, 1, 26, 0, 0), WARSAW)
    assert sunday.is_open(local(2025, 1, 26, 23, 59), WARSAW)
    assert not sunday.is_open(local(2025, 1, 27, 0, 0), WARSAW)
    with pytest.raises(ValueError, match="weekday"):
        OpenWindow(7, time(8), time(9))


def test_public_names_are_exported() -> None:
    from pbx_controller.core import agent as agent_module
    from pbx_controller.core import kpi as kpi_module
    from pbx_controller.core import routing as routing_module

    for module in (agent_module, routing_module, kpi_module):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        assert public <= set(module.__all__), public - set(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
