"""Routing: waiting calls x available agents -> offers. Pure and deterministic.

`Router.route(waiting, agents, now)` decides which waiting calls are offered
to which ready agents right now. Its memory (round-robin positions, the
pseudo-random stream of weighted random) lives in the router, so the same
sequence of inputs always gives the same offers.

How a round is decided:

1. **Order of calls** (`call_order_key`): higher `priority` first, then the
   earlier `enqueued_at`, then `seq`, then `call_id`. The order is global
   across queues, so an agent in several queues takes the call that has
   waited longest after priority (app_queue looks at one queue at a time).
   A re-queued call keeps its `enqueued_at` and `seq`: its old position.
2. **Eligibility**: the agent serves the call's queue and has every skill the
   queue still requires after the call's wait (relaxations lower a level or
   make a skill optional as time passes).
3. **Which calls are served**: walking calls in order, a call is served when
   it and every earlier served call can all get distinct eligible agents
   (augmenting paths; greedy on a transversal matroid). So a later call is
   never served instead of an earlier one, and an early call never takes the
   only agent a later call could have had when another agent could serve it.
4. **Which agent** a served call gets: the first in its ranking that still
   leaves every later served call an agent. The ranking is, in order:
   agents who missed this call last; lower membership `penalty` first; then
   the strategy's order; `agent_id` breaks any remaining tie:

   - longest_idle: the earliest `idle_since`.
   - least_calls: fewest `calls_taken`, then longest idle.
   - linear: membership `order` (then agent id), always from the first.
   - round_robin: the same order, starting after the agent the queue last
     offered to (memory per queue, across rounds and calls), wrapping.
   - weighted_random: a weighted random permutation (Efraimidis-Spirakis
     exponential keys, weight = membership `weight`) from the router's
     SplitMix64 stream or the `uniform` callable given to it.
   - ring_all: the primary agent is the longest idle; then every other
     eligible agent left over after all served calls have theirs, at the
     primary's penalty or lower, rings too.

No agent appears in two offers, no call in two. `OfferBook` tracks offers
that ring: the first answer wins, every other leg is cancelled, and a later
answer is told it lost, so two agents are never connected to one call.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pbx_controller.core.agent import AvailableAgent
from pbx_controller.core.cdr import ms_between
from pbx_controller.core.model import Queue, Strategy

__all__ = [
    "AnswerOutcome",
    "DuplicateOffer",
    "MissOutcome",
    "Offer",
    "OfferBook",
    "Router",
    "SplitMix64",
    "UnknownQueue",
    "WaitingCall",
    "call_order_key",
    "queue_positions",
]

_MASK64 = (1 << 64) - 1


class UnknownQueue(KeyError):
    """A waiting call names a queue the router has no configuration for."""


class DuplicateOffer(ValueError):
    """A call or agent that already rings was offered again."""


@dataclass(frozen=True, slots=True)
class WaitingCall:
    """A caller waiting in a queue, not ringing anyone right now."""

    call_id: str
    queue_id: str
    enqueued_at: datetime  # first entry to the queue; kept when re-queued
    priority: int = 0  # higher is served first
    seq: int = 0  # arrival serial: breaks ties between equal instants
    missed_by: frozenset[str] = frozenset()  # agents who let this call ring out

    def __post_init__(self) -> None:
        if not self.call_id or not self.queue_id:
            raise ValueError("call_id and queue_id must not be empty")
        if self.enqueued_at.utcoffset() is None:
            raise ValueError("enqueued_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Offer:
    """Ring `agent_ids` (several only for ring-all; the first is the primary)
    for at most `ring_timeout_ms`."""

    call_id: str
    queue_id: str
    agent_ids: tuple[str, ...]
    ring_timeout_ms: int
    strategy: Strategy


def call_order_key(call: WaitingCall) -> tuple[int, datetime, int, str]:
    return (-call.priority, call.enqueued_at, call.seq, call.call_id)


def queue_positions(waiting: Iterable[WaitingCall]) -> dict[str, int]:
    """Each call's 1-based place in its own queue, in routing order (for
    position announcements)."""
    positions: dict[str, int] = {}
    counts: dict[str, int] = {}
    for call in sorted(waiting, key=call_order_key):
        counts[call.queue_id] = counts.get(call.queue_id, 0) + 1
        positions[call.call_id] = counts[call.queue_id]
    return positions


class SplitMix64:
    """A tiny, well-mixed PRNG (Steele et al.): the core may not import random."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A float in [0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


class Router:
    def __init__(
        self,
        queues: Iterable[Queue] | Mapping[str, Queue],
        *,
        seed: int = 0,
        uniform: Callable[[], float] | None = None,
    ) -> None:
        self.reload(queues)
        self._uniform = uniform if uniform is not None else SplitMix64(seed).uniform
        # Round-robin memory: per queue, the (order, agent id) last offered to.
        self._rr_last: dict[str, tuple[int, str]] = {}

    def reload(self, queues: Iterable[Queue] | Mapping[str, Queue]) -> None:
        items = queues.values() if isinstance(queues, Mapping) else queues
        self.queues: dict[str, Queue] = {q.id: q for q in items}

    def route(
        self, waiting: Sequence[WaitingCall], agents: Sequence[AvailableAgent], now: datetime
    ) -> list[Offer]:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        if not waiting or not agents:
            return []
        calls = sorted(waiting, key=call_order_key)
        by_agent = {ag.agent_id: ag for ag in agents}
        if len(by_agent) != len(agents):
            raise ValueError("an agent is listed twice")
        if len({c.call_id for c in calls}) != len(calls):
            raise ValueError("a call is listed twice")
        pool = sorted(agents, key=lambda ag: ag.agent_id)

        # Step 3: which calls are served, in call order.
        candidates: dict[str, list[str]] = {}
        match: dict[str, str] = {}  # call id -> agent id
        owner: dict[str, str] = {}  # agent id -> call id
        served: list[WaitingCall] = []
        for call in calls:
            if len(owner) == len(pool):
                break  # every agent is spoken for: nobody later can be served
            eligible = candidates[call.call_id] = self._eligible(call, pool, now)
            if eligible and _augment(call.call_id, candidates, match, owner, frozenset()):
                served.append(call)

        # Step 4: each served call, in order, gets the best agent that keeps the rest served.
        fixed: set[str] = set()
        rankings: dict[str, list[str]] = {}
        for call in served:
            queue = self.queues[call.queue_id]
            ranking = self._rank(call, queue, [by_agent[i] for i in candidates[call.call_id]])
            rankings[call.call_id] = ranking
            for agent_id in ranking:
                if agent_id not in fixed and _take(
                    call.call_id, agent_id, candidates, match, owner, fixed
                ):
                    break
            chosen = match[call.call_id]
            fixed.add(chosen)
            if queue.strategy is Strategy.ROUND_ROBIN:
                self._rr_last[queue.id] = (by_agent[chosen].queues[queue.id].order, chosen)

        # Ring-all: the agents nobody got ring for the first ring-all call that can use them.
        spare = {ag.agent_id for ag in pool} - fixed
        offers: list[Offer] = []
        for call in served:
            queue = self.queues[call.queue_id]
            primary = match[call.call_id]
            agent_ids = [primary]
            if queue.strategy is Strategy.RING_ALL:
                tier = by_agent[primary].queues[queue.id].penalty
                for agent_id in rankings[call.call_id]:
                    if agent_id in spare and by_agent[agent_id].queues[queue.id].penalty <= tier:
                        agent_ids.append(agent_id)
                        spare.discard(agent_id)
            offers.append(
                Offer(
                    call.call_id, queue.id, tuple(agent_ids), queue.ring_timeout_ms, queue.strategy
                )
            )
        return offers

    def effective_requirements(
        self, call: WaitingCall, now: datetime
    ) -> tuple[tuple[str, int], ...]:
        """(skill, min level) the call's queue still requires at `now`."""
        return self._queue(call.queue_id).requirements_after(ms_between(call.enqueued_at, now))

    # -- internals ------------------------------------------------------------------

    def _queue(self, queue_id: str) -> Queue:
        try:
            return self.queues[queue_id]
        except KeyError:
            raise UnknownQueue(queue_id) from None

    def _eligible(
        self, call: WaitingCall, pool: Sequence[AvailableAgent], now: datetime
    ) -> list[str]:
        needs = self.effective_requirements(call, now)
        return [
            ag.agent_id
            for ag in pool
            if call.queue_id in ag.queues
            and all(ag.skills.get(skill, 0) >= level for skill, level in needs)
        ]

    def _rank(self, call: WaitingCall, queue: Queue, agents: list[AvailableAgent]) -> list[str]:
        q = queue.id
        strategy = queue.strategy
        draws: dict[str, float] = {}
        if strategy is Strategy.WEIGHTED_RANDOM:
            # One exponential clock per agent, in agent-id order: E/weight, smallest first.
            for ag in agents:
                draws[ag.agent_id] = -math.log(1.0 - self._uniform()) / ag.queues[q].weight
        last = self._rr_last.get(q)
        # Within one call every key has the same shape, so the tuples compare.
        keys: dict[str, tuple[Any, ...]] = {}
        for ag in agents:
            member = ag.queues[q]
            head = (ag.agent_id in call.missed_by, member.penalty)
            rest: tuple[Any, ...]
            if strategy is Strategy.LEAST_CALLS:
                rest = (ag.calls_taken, ag.idle_since)
            elif strategy is Strategy.LINEAR:
                rest = (member.order,)
            elif strategy is Strategy.ROUND_ROBIN:
                after_last = last is None or (member.order, ag.agent_id) > last
                rest = (not after_last, member.order)
            elif strategy is Strategy.WEIGHTED_RANDOM:
                rest = (draws[ag.agent_id],)
            else:  # longest idle, and ring-all's primary
                rest = (ag.idle_since,)
            keys[ag.agent_id] = (*head, *rest, ag.agent_id)
        return sorted(keys, key=keys.__getitem__)


def _augment(
    start: str,
    candidates: Mapping[str, Sequence[str]],
    match: dict[str, str],
    owner: dict[str, str],
    banned: frozenset[str] | set[str],
) -> bool:
    """Find an agent for `start` by moving matched calls along an alternating
    path (breadth first, no recursion). Changes nothing when there is none."""
    via: dict[str, str] = {}  # agent -> the call that reached it
    todo = deque([start])
    while todo:
        call_id = todo.popleft()
        for agent_id in candidates[call_id]:
            if agent_id in banned or agent_id in via:
                continue
            via[agent_id] = call_id
            holder = owner.get(agent_id)
            if holder is not None:
                todo.append(holder)
                continue
            # A free agent: flip the path back to `start`.
            while True:
                caller = via[agent_id]
                previous = match.get(caller)
                match[caller] = agent_id
                owner[agent_id] = caller
                if caller == start or previous is None:
                    return True
                agent_id = previous
    return False


def _take(
    call_id: str,
    agent_id: str,
    candidates: Mapping[str, Sequence[str]],
    match: dict[str, str],
    owner: dict[str, str],
    fixed: set[str],
) -> bool:
    """Give `agent_id` to `call_id` if every other unfixed served call can
    still be matched; commit and return True, else change nothing."""
    holder = owner.get(agent_id)
    if holder == call_id:
        return True
    trial_match, trial_owner = dict(match), dict(owner)
    del trial_owner[trial_match[call_id]]
    trial_match[call_id] = agent_id
    trial_owner[agent_id] = call_id
    if holder is not None:
        del trial_match[holder]
        # Only `holder` lacks an agent: one augmenting path from it decides.
        if not _augment(holder, candidates, trial_match, trial_owner, fixed | {agent_id}):
            return False
    match.clear()
    match.update(trial_match)
    owner.clear()
    owner.update(trial_owner)
    return True


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    """`won`: bridge this agent. `cancel`: hang up these agents' legs and tell
    the board `offer_cancelled` for each. A loser's own leg must be hung up."""

    won: bool
    cancel: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MissOutcome:
    """`counted`: the agent was ringing for this call (tell the board
    `offer_missed`). `requeue`: no leg rings any more; put this back."""

    counted: bool
    requeue: WaitingCall | None = None


@dataclass(slots=True)
class _Ringing:
    call: WaitingCall
    offer: Offer
    ringing: list[str]
    missed: set[str]


class OfferBook:
    """Offers that ring now. Guarantees one winner per offer."""

    def __init__(self) -> None:
        self._by_call: dict[str, _Ringing] = {}
        self._by_agent: dict[str, str] = {}

    def open(self, offer: Offer, call: WaitingCall) -> None:
        if offer.call_id != call.call_id:
            raise ValueError(f"offer for {offer.call_id} opened with call {call.call_id}")
        if not offer.agent_ids or len(set(offer.agent_ids)) != len(offer.agent_ids):
            raise ValueError("an offer names each agent once, and at least one")
        if offer.call_id in self._by_call:
            raise DuplicateOffer(f"call {offer.call_id} already rings")
        busy = [a for a in offer.agent_ids if a in self._by_agent]
        if busy:
            raise DuplicateOffer(f"agents {busy} already ring for another call")
        self._by_call[offer.call_id] = _Ringing(call, offer, list(offer.agent_ids), set())
        for agent_id in offer.agent_ids:
            self._by_agent[agent_id] = offer.call_id

    def answered(self, call_id: str, agent_id: str) -> AnswerOutcome:
        entry = self._by_call.get(call_id)
        if entry is None or agent_id not in entry.ringing:
            return AnswerOutcome(won=False)  # lost the race, or not ringing for this call
        self._close(call_id)
        return AnswerOutcome(True, tuple(a for a in entry.ringing if a != agent_id))

    def missed(self, call_id: str, agent_id: str, *, agents_fault: bool = True) -> MissOutcome:
        """One leg stopped ringing unanswered (declined, failed). Not the
        agent's fault (the PBX never placed the leg): the call may be offered
        to that agent again."""
        entry = self._by_call.get(call_id)
        if entry is None or agent_id not in entry.ringing:
            return MissOutcome(counted=False)
        entry.ringing.remove(agent_id)
        if agents_fault:
            entry.missed.add(agent_id)
        del self._by_agent[agent_id]
        if entry.ringing:
            return MissOutcome(counted=True)
        self._close(call_id)
        return MissOutcome(True, replace(entry.call, missed_by=entry.call.missed_by | entry.missed))

    def expire(self, call_id: str) -> tuple[tuple[str, ...], WaitingCall | None]:
        """The ring timeout: every leg still ringing missed. Returns those
        agents and the call to re-queue (None if the offer is gone)."""
        entry = self._by_call.get(call_id)
        if entry is None:
            return (), None
        agents = tuple(entry.ringing)
        self._close(call_id)
        missed = entry.missed | set(agents)
        return agents, replace(entry.call, missed_by=entry.call.missed_by | missed)

    def withdraw(self, call_id: str) -> tuple[str, ...]:
        """The caller left while it rang: the agents to cancel."""
        entry = self._by_call.get(call_id)
        if entry is None:
            return ()
        self._close(call_id)
        return tuple(entry.ringing)

    def ringing(self, call_id: str) -> tuple[str, ...]:
        entry = self._by_call.get(call_id)
        return () if entry is None else tuple(entry.ringing)

    def call_of(self, agent_id: str) -> str | None:
        return self._by_agent.get(agent_id)

    def offer(self, call_id: str) -> Offer | None:
        entry = self._by_call.get(call_id)
        return None if entry is None else entry.offer

    def _close(self, call_id: str) -> None:
        entry = self._by_call.pop(call_id)
        for agent_id in entry.ringing:
            self._by_agent.pop(agent_id, None)
