"""Discrete-event simulation of a call center around the pure core.

Callers arrive per queue as a Poisson process; handle times and patience
are exponential. The simulator plays the engine's part: it asks
`Router.route` for offers whenever a caller waits and an agent is ready,
tracks ringing offers in an `OfferBook`, and reports every agent event to
the `AgentBoard`, honouring the timers the board asks for. So the numbers it
reports come from the same routing and agent code the service runs.

Only calls that arrive in [warmup_ms, duration_ms) are counted; arrivals
stop at duration_ms and the run continues until every caller has left.
The same config and seed always give the same report.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from types import MappingProxyType

from pbx_controller.core.actions import StartTimer
from pbx_controller.core.agent import (
    READINESS_STATES,
    AgentBoard,
    AgentState,
    BoardChange,
)
from pbx_controller.core.kpi import CompletedCall, Kpis, measured_occupancy, summarize
from pbx_controller.core.model import AgentProfile, Queue
from pbx_controller.core.routing import OfferBook, Router, WaitingCall

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)  # any instant: the core only sees differences
_BUSY = frozenset({AgentState.RESERVED, AgentState.ON_CALL, AgentState.WRAP_UP})


@dataclass(frozen=True, slots=True)
class Traffic:
    """Callers for one queue."""

    queue_id: str
    calls_per_hour: float
    mean_handle_ms: int  # talk time; the queue's wrap-up comes on top
    mean_patience_ms: int | None = None  # None: callers never give up
    priority: int = 0

    def __post_init__(self) -> None:
        if self.calls_per_hour <= 0 or self.mean_handle_ms <= 0:
            raise ValueError("calls_per_hour and mean_handle_ms must be positive")
        if self.mean_patience_ms is not None and self.mean_patience_ms <= 0:
            raise ValueError("mean_patience_ms must be positive")


@dataclass(frozen=True, slots=True)
class SimConfig:
    queues: tuple[Queue, ...]
    agents: tuple[AgentProfile, ...]
    traffic: tuple[Traffic, ...]
    warmup_ms: int = 0
    # Agent behaviour on an offer: answer after about answer_delay_ms (0.5-1.5x,
    # so ring-all legs race), or let it ring out with miss_probability.
    answer_delay_ms: int = 0
    miss_probability: float = 0.0
    auto_pause_after: int = 0
    auto_unpause_ms: int = 60_000  # an auto-paused agent comes back after this

    def __post_init__(self) -> None:
        known = {q.id for q in self.queues}
        unknown = {t.queue_id for t in self.traffic} - known
        if unknown:
            raise ValueError(f"traffic for unknown queues {sorted(unknown)}")
        if not 0 <= self.miss_probability < 1:
            raise ValueError("miss_probability must be in [0, 1)")
        if self.answer_delay_ms < 0 or self.warmup_ms < 0:
            raise ValueError("answer_delay_ms and warmup_ms must not be negative")


@dataclass(frozen=True, slots=True)
class QueueReport:
    queue_id: str
    threshold_ms: int  # the queue's service_level_ms
    kpis: Kpis

    @property
    def service_level(self) -> float | None:
        return self.kpis.service_level

    @property
    def asa_ms(self) -> float | None:
        return self.kpis.asa_ms

    @property
    def abandonment_rate(self) -> float | None:
        return self.kpis.abandonment_rate


@dataclass(frozen=True, slots=True)
class Report:
    queues: Mapping[str, QueueReport]
    occupancy: float | None  # busy / staffed agent time inside the counted window
    offers: int
    missed_offers: int
    auto_pauses: int
    state_records: int
    end_ms: int  # when the last caller left


class _Kind(IntEnum):
    # Ties at one instant resolve in this order: agents free up before callers arrive.
    TIMER = 0
    END = 1
    ANSWER = 2
    RING_TIMEOUT = 3
    UNPAUSE = 4
    ABANDON = 5
    ARRIVE = 6


@dataclass(slots=True)
class _Call:
    call_id: str
    queue_id: str
    arrived_ms: int
    handle_ms: int
    counted: bool
    answered_ms: int | None = None


class _Run:
    def __init__(self, config: SimConfig, seed: int, duration_ms: int) -> None:
        self.config = config
        self.duration_ms = duration_ms
        self.rng = random.Random(seed)
        self.queues = {q.id: q for q in config.queues}
        self.board = AgentBoard(
            config.agents, config.queues, auto_pause_after=config.auto_pause_after
        )
        self.router = Router(config.queues, seed=self.rng.getrandbits(64))
        self.book = OfferBook()
        self.heap: list[tuple[int, int, int, str, str]] = []
        self.serial = 0
        self.call_serial = 0
        self.waiting: dict[str, WaitingCall] = {}
        self.calls: dict[str, _Call] = {}
        self.ring_serial: dict[str, int] = {}
        self.done: list[CompletedCall] = []
        self.offers = self.missed = self.auto_pauses = self.records = 0
        self.last: dict[str, tuple[AgentState, int]] = {}
        self.busy_ms = self.staffed_ms = 0
        self.now_ms = 0

    # -- plumbing -------------------------------------------------------------------

    def push(self, at_ms: int, kind: _Kind, a: str = "", b: str = "") -> None:
        self.serial += 1
        heapq.heappush(self.heap, (at_ms, kind, self.serial, a, b))

    def when(self, at_ms: int) -> datetime:
        return T0 + timedelta(milliseconds=at_ms)

    def exp_ms(self, mean_ms: float) -> int:
        return max(1, round(self.rng.expovariate(1.0 / mean_ms)))

    def apply(self, change: BoardChange) -> BoardChange:
        for record in change.records:
            self.records += 1
            self.close_span(record.agent_id)
            self.last[record.agent_id] = (record.state, self.now_ms)
        for timer in change.timers:
            if isinstance(timer, StartTimer):
                self.push(self.now_ms + timer.delay_ms, _Kind.TIMER, timer.timer_id)
            # A cancelled timer that fires anyway is ignored by the board itself.
        if change.auto_paused:
            self.auto_pauses += 1
        return change

    def close_span(self, agent_id: str) -> None:
        """Occupancy from the agent_state_log rows, clipped to the counted window."""
        previous = self.last.get(agent_id)
        if previous is None:
            return
        state, since = previous
        start, end = max(since, self.config.warmup_ms), min(self.now_ms, self.duration_ms)
        if end > start:
            if state in READINESS_STATES:
                self.staffed_ms += end - start
            if state in _BUSY:
                self.busy_ms += end - start

    # -- the run --------------------------------------------------------------------

    def run(self) -> Report:
        for agent_id in self.board.agent_ids():
            self.apply(self.board.login(agent_id, self.when(0)))
        for index, traffic in enumerate(self.config.traffic):
            self.push(self.exp_ms(3_600_000 / traffic.calls_per_hour), _Kind.ARRIVE, str(index))
        while self.heap:
            at_ms, kind, _, a, b = heapq.heappop(self.heap)
            self.now_ms = at_ms
            now = self.when(at_ms)
            if kind is _Kind.ARRIVE:
                self.arrive(int(a), now)
            elif kind is _Kind.ANSWER:
                self.answer(a, b, now)
            elif kind is _Kind.END:
                self.end(a, b, now)
            elif kind is _Kind.TIMER:
                self.apply(self.board.timer_fired(a, now))
            elif kind is _Kind.RING_TIMEOUT:
                self.ring_timeout(a, int(b), now)
            elif kind is _Kind.ABANDON:
                self.abandon(a, now)
            elif kind is _Kind.UNPAUSE and self.board.status(a).state is AgentState.PAUSED:
                self.apply(self.board.unpause(a, now))
            self.dispatch(now)
        end_ms = self.now_ms
        self.now_ms = max(end_ms, self.duration_ms)
        for agent_id in self.board.agent_ids():  # every agent's last span
            self.close_span(agent_id)
        return self.report(end_ms)

    def arrive(self, index: int, now: datetime) -> None:
        traffic = self.config.traffic[index]
        at_ms = self.now_ms
        next_ms = at_ms + self.exp_ms(3_600_000 / traffic.calls_per_hour)
        if next_ms < self.duration_ms:
            self.push(next_ms, _Kind.ARRIVE, str(index))
        self.call_serial += 1
        call_id = f"c{self.call_serial}"
        counted = at_ms >= self.config.warmup_ms
        self.calls[call_id] = _Call(
            call_id, traffic.queue_id, at_ms, self.exp_ms(traffic.mean_handle_ms), counted
        )
        self.waiting[call_id] = WaitingCall(
            call_id, traffic.queue_id, now, traffic.priority, seq=self.call_serial
        )
        if traffic.mean_patience_ms is not None:
            self.push(at_ms + self.exp_ms(traffic.mean_patience_ms), _Kind.ABANDON, call_id)

    def dispatch(self, now: datetime) -> None:
        if not self.waiting:
            return
        agents = self.board.available()
        if not agents:
            return
        for offer in self.router.route(list(self.waiting.values()), agents, now):
            call = self.waiting.pop(offer.call_id)
            self.book.open(offer, call)
            self.offers += 1
            serial = self.ring_serial[offer.call_id] = self.ring_serial.get(offer.call_id, 0) + 1
            for agent_id in offer.agent_ids:
                self.apply(self.board.offer_made(agent_id, offer.call_id, offer.queue_id, now))
            instant = self.config.answer_delay_ms == 0 and self.config.miss_probability == 0
            if instant:  # Erlang C's world: the primary picks up at once
                self.answer(offer.call_id, offer.agent_ids[0], now)
                continue
            self.push(
                self.now_ms + offer.ring_timeout_ms, _Kind.RING_TIMEOUT, call.call_id, str(serial)
            )
            for agent_id in offer.agent_ids:
                if self.rng.random() >= self.config.miss_probability:
                    delay = round(self.config.answer_delay_ms * self.rng.uniform(0.5, 1.5))
                    if delay < offer.ring_timeout_ms:
                        self.push(self.now_ms + delay, _Kind.ANSWER, call.call_id, agent_id)

    def answer(self, call_id: str, agent_id: str, now: datetime) -> None:
        outcome = self.book.answered(call_id, agent_id)
        if not outcome.won:
            return  # a ring-all loser: its offer was already cancelled
        self.apply(self.board.offer_answered(agent_id, call_id, now))
        for loser in outcome.cancel:
            self.apply(self.board.offer_cancelled(loser, call_id, now))
        call = self.calls[call_id]
        call.answered_ms = self.now_ms
        self.push(self.now_ms + call.handle_ms, _Kind.END, call_id, agent_id)

    def end(self, call_id: str, agent_id: str, now: datetime) -> None:
        call = self.calls.pop(call_id)
        queue = self.queues[call.queue_id]
        self.apply(self.board.call_ended(agent_id, call_id, now))
        assert call.answered_ms is not None
        if call.counted:
            wait = call.answered_ms - call.arrived_ms
            self.done.append(
                CompletedCall(call.queue_id, wait, True, call.handle_ms + queue.wrapup_ms)
            )

    def ring_timeout(self, call_id: str, serial: int, now: datetime) -> None:
        if self.ring_serial.get(call_id) != serial:
            return  # an older offer of a re-queued call
        agents, requeue = self.book.expire(call_id)
        for agent_id in agents:
            self.missed += 1
            if self.apply(self.board.offer_missed(agent_id, call_id, now)).auto_paused:
                self.push(self.now_ms + self.config.auto_unpause_ms, _Kind.UNPAUSE, agent_id)
        if requeue is not None:
            self.waiting[call_id] = requeue

    def abandon(self, call_id: str, now: datetime) -> None:
        call = self.calls.get(call_id)
        if call is None or call.answered_ms is not None:
            return  # answered, or finished: patience no longer matters
        if self.waiting.pop(call_id, None) is None:
            for agent_id in self.book.withdraw(call_id):
                self.apply(self.board.offer_cancelled(agent_id, call_id, now))
        del self.calls[call_id]
        if call.counted:
            self.done.append(CompletedCall(call.queue_id, self.now_ms - call.arrived_ms, False))

    def report(self, end_ms: int) -> Report:
        by_queue: dict[str, list[CompletedCall]] = {q.id: [] for q in self.config.queues}
        for done in self.done:
            by_queue[done.queue_id].append(done)
        reports = {
            queue_id: QueueReport(
                queue_id,
                self.queues[queue_id].service_level_ms,
                summarize(calls, self.queues[queue_id].service_level_ms),
            )
            for queue_id, calls in by_queue.items()
        }
        return Report(
            queues=MappingProxyType(reports),
            occupancy=measured_occupancy(self.busy_ms, self.staffed_ms),
            offers=self.offers,
            missed_offers=self.missed,
            auto_pauses=self.auto_pauses,
            state_records=self.records,
            end_ms=end_ms,
        )


def simulate(config: SimConfig, seed: int, duration_ms: int) -> Report:
    """Run the call center for `duration_ms` of arrivals (plus the drain)."""
    if duration_ms <= config.warmup_ms:
        raise ValueError("duration_ms must exceed warmup_ms")
    return _Run(config, seed, duration_ms).run()
