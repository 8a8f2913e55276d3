"""Call-center KPIs: Erlang C and A expectations, and the measured figures
(service level, ASA, abandonment, AHT, occupancy) from finished calls.

Units: offered load in erlangs (arrival rate x average handle time),
durations in milliseconds, rates as fractions 0..1.

Measured service level is "answered within T / (answered + abandoned after
T)": a caller who gave up before T neither helps nor hurts, one who gave up
after T counts as a miss. With no abandons it is Erlang C's P(wait <= T).

Estimated wait for announcements (`estimated_wait_ms`): the caller at
position k, with N agents staffed and all busy, waits for k agent
completions; with exponential handle times each of the N busy agents
finishes at rate 1/AHT, so the k-th completion comes after k * AHT / N on
average (the M/M/N conditional wait). AHT is an EWMA (`Ewma`) of recent
handle times (talk + wrap-up) so announcements follow the day's mix; the
Erlang C ASA is the queue-wide mean and not conditioned on the position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CompletedCall",
    "ErlangA",
    "Ewma",
    "Kpis",
    "abandonment_rate",
    "agents_for_service_level",
    "average_handle_ms",
    "average_speed_of_answer",
    "erlang_a",
    "erlang_b",
    "erlang_c",
    "estimated_wait_ms",
    "measured_asa_ms",
    "measured_occupancy",
    "measured_service_level",
    "occupancy",
    "service_level",
    "summarize",
]

# -- Erlang C (M/M/N, callers never abandon) ---------------------------------------------


def _check_load(load: float, agents: int) -> None:
    if load < 0 or not math.isfinite(load):
        raise ValueError(f"offered load must be a finite non-negative number, got {load}")
    if agents < 0:
        raise ValueError(f"agents must not be negative, got {agents}")


def erlang_b(load: float, agents: int) -> float:
    """Blocking probability of N servers, no queue (the stable recursion)."""
    _check_load(load, agents)
    b = 1.0
    for n in range(1, agents + 1):
        b = load * b / (n + load * b)
    return b


def erlang_c(load: float, agents: int) -> float:
    """Probability that a caller waits at all. 1 when N <= A (the queue grows
    without bound)."""
    _check_load(load, agents)
    if agents <= load:
        return 1.0
    b = erlang_b(load, agents)
    return agents * b / (agents - load * (1 - b))


def service_level(load: float, agents: int, aht_ms: float, threshold_ms: float) -> float:
    """P(wait <= T) = 1 - C * exp(-(N - A) * T / AHT)."""
    if aht_ms <= 0 or threshold_ms < 0:
        raise ValueError("aht_ms must be positive and threshold_ms non-negative")
    if agents <= load:
        return 0.0
    return 1.0 - erlang_c(load, agents) * math.exp(-(agents - load) * threshold_ms / aht_ms)


def average_speed_of_answer(load: float, agents: int, aht_ms: float) -> float:
    """ASA in ms = C * AHT / (N - A); infinite when N <= A."""
    if aht_ms <= 0:
        raise ValueError("aht_ms must be positive")
    if agents <= load:
        return math.inf
    return erlang_c(load, agents) * aht_ms / (agents - load)


def occupancy(load: float, agents: int) -> float:
    """Share of staffed time agents are busy: A / N (capped at 1)."""
    _check_load(load, agents)
    if agents == 0:
        return 1.0 if load > 0 else 0.0
    return min(load / agents, 1.0)


def agents_for_service_level(
    load: float, aht_ms: float, threshold_ms: float, target: float, *, max_agents: int = 10_000
) -> int:
    """The fewest agents whose Erlang C service level reaches `target`."""
    if not 0 <= target < 1:
        raise ValueError("target must be in [0, 1)")
    agents = max(1, math.floor(load) + 1)
    while service_level(load, agents, aht_ms, threshold_ms) < target:
        agents += 1
        if agents > max_agents:
            raise ValueError(f"more than {max_agents} agents needed")
    return agents


# -- Erlang A (M/M/N+M: exponential patience) ----------------------------------------------


_ERLANG_A_MAX_STATES = 1_000_000


@dataclass(frozen=True, slots=True)
class ErlangA:
    p_wait: float  # an arriving caller finds every agent busy
    p_abandon: float  # a caller gives up before an agent answers
    mean_wait_ms: float  # time in queue, averaged over every caller (served or not)
    occupancy: float


def erlang_a(load: float, agents: int, aht_ms: float, patience_ms: float) -> ErlangA:
    """Erlang A by the birth-death chain, truncated once the tail is negligible.

    In units of AHT: arrivals at rate A, N agents finish at rate 1 each, each
    of the q callers queued gives up at rate theta = AHT / patience.
    """
    _check_load(load, agents)
    if aht_ms <= 0 or patience_ms <= 0:
        raise ValueError("aht_ms and patience_ms must be positive")
    if agents == 0:
        return ErlangA(1.0, 1.0 if load > 0 else 0.0, patience_ms if load > 0 else 0.0, 0.0)
    if load == 0:
        return ErlangA(0.0, 0.0, 0.0, 0.0)
    theta = aht_ms / patience_ms
    # log p_n up to a constant; logs keep A^n/n! finite for large loads.
    logs = [0.0]
    top = 0.0
    n = 0
    while True:
        n += 1
        death = min(n, agents) + max(n - agents, 0) * theta
        logs.append(logs[-1] + math.log(load) - math.log(death))
        top = max(top, logs[-1])
        # Past N and falling 40 nats below the peak, the rest is < 1e-17 of the mass.
        if n > agents and logs[-1] < logs[-2] and logs[-1] < top - 40:
            break
        if n > _ERLANG_A_MAX_STATES:
            raise ValueError("patience too long for this overload: use Erlang C")
    weights = [math.exp(x - top) for x in logs]
    total = math.fsum(weights)
    p = [w / total for w in weights]
    p_wait = math.fsum(p[agents:])
    queued = math.fsum((k - agents) * p[k] for k in range(agents + 1, len(p)))
    p_abandon = theta * queued / load
    busy = math.fsum(min(k, agents) * p[k] for k in range(len(p)))
    return ErlangA(p_wait, p_abandon, queued / load * aht_ms, busy / agents)


# -- measured KPIs from finished calls ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletedCall:
    """A call that left a queue: answered by an agent, or abandoned."""

    queue_id: str
    wait_ms: int
    answered: bool
    handle_ms: int = 0  # talk + wrap-up, for answered calls

    def __post_init__(self) -> None:
        if self.wait_ms < 0 or self.handle_ms < 0:
            raise ValueError("wait_ms and handle_ms must not be negative")


@dataclass(frozen=True, slots=True)
class Kpis:
    offered: int
    answered: int
    abandoned: int
    service_level: float | None  # None when nothing counts toward it
    asa_ms: float | None
    abandonment_rate: float | None
    aht_ms: float | None


def measured_service_level(calls: Iterable[CompletedCall], threshold_ms: int) -> float | None:
    good = counted = 0
    for call in calls:
        if call.answered:
            counted += 1
            good += call.wait_ms <= threshold_ms
        elif call.wait_ms > threshold_ms:
            counted += 1
    return good / counted if counted else None


def measured_asa_ms(calls: Iterable[CompletedCall]) -> float | None:
    waits = [c.wait_ms for c in calls if c.answered]
    return math.fsum(waits) / len(waits) if waits else None


def abandonment_rate(calls: Iterable[CompletedCall]) -> float | None:
    flags = [not c.answered for c in calls]
    return sum(flags) / len(flags) if flags else None


def average_handle_ms(calls: Iterable[CompletedCall]) -> float | None:
    handles = [c.handle_ms for c in calls if c.answered]
    return math.fsum(handles) / len(handles) if handles else None


def summarize(calls: Iterable[CompletedCall], threshold_ms: int) -> Kpis:
    items = list(calls)
    answered = sum(c.answered for c in items)
    return Kpis(
        offered=len(items),
        answered=answered,
        abandoned=len(items) - answered,
        service_level=measured_service_level(items, threshold_ms),
        asa_ms=measured_asa_ms(items),
        abandonment_rate=abandonment_rate(items),
        aht_ms=average_handle_ms(items),
    )


def measured_occupancy(busy_ms: int, staffed_ms: int) -> float | None:
    """Busy (reserved, on call, wrap-up) over staffed (logged in, not paused)."""
    if busy_ms < 0 or staffed_ms < 0 or busy_ms > staffed_ms:
        raise ValueError("need 0 <= busy_ms <= staffed_ms")
    return busy_ms / staffed_ms if staffed_ms else None


# -- estimated wait for announcements ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ewma:
    """Exponentially weighted moving average; the first sample seeds it.
    `alpha` is the weight of each new sample."""

    alpha: float = 0.1
    value: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")

    def add(self, sample: float) -> Ewma:
        if self.value is None:
            return Ewma(self.alpha, float(sample))
        return Ewma(self.alpha, self.value + self.alpha * (sample - self.value))


def estimated_wait_ms(position: int, staffed: int, aht_ms: float) -> int | None:
    """k * AHT / N for the caller at position k (1 = next); None when nobody
    staffs the queue (no honest number to announce)."""
    if position < 1:
        raise ValueError("position starts at 1")
    if aht_ms < 0:
        raise ValueError("aht_ms must not be negative")
    if staffed <= 0:
        return None
    return round(position * aht_ms / staffed)
