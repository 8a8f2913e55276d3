"""Pure readiness: agent state changes -> per-tenant readiness intervals.

BILLING.md rule 12: readiness is the time an agent is logged in and not
paused (ready, reserved, on a call, or in wrap-up) while a member of a
tenant's queues; an agent serving k tenants at once gives each a 1/k share.

Input is the agent state log, one `StateChange` per row: from `at` on, the
agent is in `state`, serving the queues of `tenants`. A change of queue
membership without a change of state is a row too (same state, new
tenants), so each row says everything about the agent until the next one.

`ReadinessTracker` folds each agent's changes, in time order, into maximal
`ReadySpan`s: a run of ready states (ready -> reserved -> on_call ->
wrap_up -> ready ...) with one tenant set is one span, so a busy month of
calls yields a few spans per login, not one per state change. Spans are
clipped to the tracker's window; `ReadySpan.interval` cuts a span to one
tenant's window with that tenant's 1/k share.

Pure: no IO, no clock; stdlib only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Final

from pbx_controller.core.rating import ReadinessInterval

__all__ = [
    "AGENT_STATES",
    "READY_STATES",
    "ReadinessTracker",
    "ReadySpan",
    "StateChange",
    "StateChangeError",
    "readiness_by_tenant",
    "ready_spans",
]

# The agent state machine's states (store.models.AgentStateName).
AGENT_STATES: Final = frozenset({"logged_out", "ready", "paused", "reserved", "on_call", "wrap_up"})
# Logged in and not paused: the states readiness is billed for.
READY_STATES: Final = frozenset({"ready", "reserved", "on_call", "wrap_up"})


class StateChangeError(ValueError):
    """A state change the tracker cannot use: unknown state, naive time, out of order."""


def _aware_utc(field: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise StateChangeError(f"{field}: expected an aware datetime, got {value!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One agent_state_log row: from `at` on, `agent` is in `state`, serving `tenants`."""

    agent: str
    at: datetime
    state: str
    tenants: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.agent, str) or not self.agent:
            raise StateChangeError(f"agent: must be a non-empty string, got {self.agent!r}")
        if self.state not in AGENT_STATES:
            raise StateChangeError(
                f"state: unknown agent state {self.state!r} for agent {self.agent}"
            )
        object.__setattr__(self, "at", _aware_utc("at", self.at))
        tenants = frozenset(self.tenants)
        if not all(isinstance(tenant, str) and tenant for tenant in tenants):
            raise StateChangeError(
                f"tenants: expected tenant ids, got {sorted(map(repr, tenants))}"
            )
        object.__setattr__(self, "tenants", tenants)

    @property
    def ready(self) -> bool:
        """Counts as readiness: logged in, not paused, serving at least one tenant."""
        return self.state in READY_STATES and bool(self.tenants)


@dataclass(frozen=True, slots=True)
class ReadySpan:
    """An agent ready without a break for one set of tenants, [started_at, ended_at)."""

    agent: str
    started_at: datetime
    ended_at: datetime
    tenants: frozenset[str]

    @property
    def share(self) -> Fraction:
        """Each tenant's share of the span: 1/k for k tenants served at once."""
        return Fraction(1, len(self.tenants))

    def clip(self, start: datetime, stop: datetime) -> ReadySpan | None:
        """The part within [start, stop); None if nothing of it is."""
        started, ended = max(self.started_at, start), min(self.ended_at, stop)
        if ended <= started:
            return None
        return ReadySpan(self.agent, started, ended, self.tenants)

    def interval(self, tenant: str, start: datetime, stop: datetime) -> ReadinessInterval | None:
        """`tenant`'s readiness from this span within [start, stop), with its share."""
        if tenant not in self.tenants:
            return None
        clipped = self.clip(start, stop)
        if clipped is None:
            return None
        return ReadinessInterval(self.agent, clipped.started_at, clipped.ended_at, self.share)


@dataclass(slots=True)
class _Open:
    started_at: datetime
    tenants: frozenset[str]


class ReadinessTracker:
    """Folds state changes into ready spans clipped to [start, stop).

    Each agent's changes must come in time order (equal instants are fine:
    the later row wins, as in the log's (at, id) order); agents may be
    interleaved. A change before `start` sets the agent's state at `start`;
    changes at or after `stop` only close what is open. `finish()` closes
    spans still open at `stop`: an agent with no later row stayed as it was.
    """

    def __init__(self, start: datetime, stop: datetime) -> None:
        self._start = _aware_utc("start", start)
        self._stop = _aware_utc("stop", stop)
        if self._stop < self._start:
            raise StateChangeError("stop: is before start")
        self._open: dict[str, _Open] = {}
        self._last_at: dict[str, datetime] = {}
        self._finished = False

    def add(self, change: StateChange) -> ReadySpan | None:
        """Feed one change; returns the span it closes (clipped), if any."""
        if self._finished:
            raise StateChangeError("the tracker has already finished")
        last = self._last_at.get(change.agent)
        if last is not None and change.at < last:
            raise StateChangeError(
                f"agent {change.agent}: change at {change.at.isoformat()} comes after one at"
                f" {last.isoformat()}; feed each agent's changes in time order"
            )
        self._last_at[change.agent] = change.at
        current = self._open.get(change.agent)
        if current is not None and change.ready and change.tenants == current.tenants:
            return None  # still ready for the same tenants: one span
        closed = None
        if current is not None:
            del self._open[change.agent]
            span = ReadySpan(change.agent, current.started_at, change.at, current.tenants)
            closed = span.clip(self._start, self._stop)
        if change.ready and change.at < self._stop:
            self._open[change.agent] = _Open(change.at, change.tenants)
        return closed

    def finish(self) -> list[ReadySpan]:
        """Spans still open, ended at `stop`, in agent order."""
        if self._finished:
            raise StateChangeError("the tracker has already finished")
        self._finished = True
        spans = []
        for agent in sorted(self._open):
            current = self._open[agent]
            span = ReadySpan(agent, current.started_at, self._stop, current.tenants)
            clipped = span.clip(self._start, self._stop)
            if clipped is not None:
                spans.append(clipped)
        self._open.clear()
        return spans


def ready_spans(
    changes: Iterable[StateChange], start: datetime, stop: datetime
) -> Iterator[ReadySpan]:
    """Every ready span within [start, stop), streaming."""
    tracker = ReadinessTracker(start, stop)
    for change in changes:
        span = tracker.add(change)
        if span is not None:
            yield span
    yield from tracker.finish()


def readiness_by_tenant(
    spans: Iterable[ReadySpan], windows: Mapping[str, tuple[datetime, datetime]]
) -> dict[str, list[ReadinessInterval]]:
    """Readiness intervals of each tenant in `windows`, clipped to its window.

    `windows` maps a tenant to its [start, stop) (its billing period, in
    its own time zone). Tenants in a span but not in `windows` are ignored;
    they still count in k, the number of tenants sharing the agent.
    """
    result: dict[str, list[ReadinessInterval]] = {tenant: [] for tenant in windows}
    for span in spans:
        for tenant in sorted(span.tenants):
            window = windows.get(tenant)
            if window is None:
                continue
            interval = span.interval(tenant, *window)
            if interval is not None:
                result[tenant].append(interval)
    return result
