"""The agent state machine, and the board that runs it for every agent.

States: logged_out, ready, paused(reason), reserved (an offer rings the
agent), on_call, wrap_up. The legal moves are the table below; the board
decides which target applies and raises `InvalidTransition` for anything
the table lacks.

Every change of (state, pause reason, queues served) becomes one
`AgentStateRecord`, a row of `agent_state_log`: readiness billing
(BILLING.md rule 12) is derived from these rows alone (core/readiness.py
reads them as `StateChange(agent_id, at, state.value, tenants)`).

Rules the board keeps:

- Wrap-up belongs to the agent, not to a queue: while wrapping up after a
  call of queue A the agent gets no call from queue B either (app_queue
  only learned this with `shared_lastcall`). Its length is the ended call's
  queue's `wrapup_ms`.
- Pause and logout are immediate when the agent has no call (ready, paused,
  wrap-up). While an offer rings or a call is up they are *pending* and
  apply where the agent would otherwise become ready; unpause cancels a
  pending pause. Precedence then: pending logout > auto-pause > pending
  pause > ready.
- Auto-pause: after exactly `auto_pause_after` consecutive missed offers
  the agent is paused with reason `AUTO_PAUSE_REASON`. An answered offer,
  any pause and any logout reset the count; a cancelled offer (ring-all
  loser, caller gone) neither counts nor resets. 0 disables it.
- `idle_since` (longest-idle routing) is the instant the agent last became
  ready after login, unpause or the end of a call; a missed or cancelled
  offer keeps the agent's place.
- `calls_taken` (least-calls routing) counts answered offers since login.
- A stopping controller logs every agent out (`shutdown`, reason
  `SHUTDOWN_REASON`): nobody is served, or paid readiness for, while it is
  down. A run that died without a word (kill -9, power) could not: the
  next run logs them out for it (`lost_run_logout`, reason `LOST_REASON`),
  as of the last moment the dead run was known alive. The next run then
  puts each agent back as the log left it (`restoration`, then `restore`),
  so a restart does not make every agent dial the login code again.

Timers: the board names its own timers (`agent:<id>/wrapup/<n>`) and returns
`StartTimer`/`CancelTimer` actions; feed a fired one back to `timer_fired`.
A fired timer the board no longer holds (cancelled, raced) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from types import MappingProxyType

from pbx_controller.core.actions import CancelTimer, StartTimer
from pbx_controller.core.machine import TransitionTable
from pbx_controller.core.model import AgentProfile, Queue, QueueMembership

__all__ = [
    "AGENT_TIMER_PREFIX",
    "AGENT_TRANSITIONS",
    "AUTO_PAUSE_REASON",
    "LOST_REASON",
    "MAX_REASON_LENGTH",
    "READINESS_STATES",
    "SHUTDOWN_REASON",
    "AgentBoard",
    "AgentState",
    "AgentStateRecord",
    "AgentStatus",
    "AvailableAgent",
    "BoardChange",
    "CallMismatch",
    "LoggedState",
    "NotAMember",
    "Restoration",
    "UnknownAgent",
    "lost_run_logout",
    "restoration",
]

AUTO_PAUSE_REASON = "auto:missed-offers"
# The reason on the logged_out rows a stopping controller writes: the next
# run knows the agent did not log out, and puts it back.
SHUTDOWN_REASON = "controller-stopped"
# The same, written by a starting controller for a run that died without
# logging anyone out (see lost_run_logout).
LOST_REASON = "controller-lost"
MAX_REASON_LENGTH = 64  # agent_state_log.reason
AGENT_TIMER_PREFIX = "agent:"


class AgentState(Enum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    PAUSED = "paused"
    RESERVED = "reserved"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"


_A = AgentState
# Logged in and not paused: the time a tenant pays readiness for (BILLING.md 12).
READINESS_STATES = frozenset({_A.READY, _A.RESERVED, _A.ON_CALL, _A.WRAP_UP})
# Where an agent lands when it would become ready: a pending command or auto-pause
# may send it to paused or logged out instead.
_FREED = frozenset({_A.READY, _A.PAUSED, _A.LOGGED_OUT})

AGENT_TRANSITIONS: TransitionTable[AgentState] = TransitionTable(
    "agent",
    {
        (_A.LOGGED_OUT, "Login"): frozenset({_A.READY, _A.PAUSED}),
        (_A.READY, "Logout"): frozenset({_A.LOGGED_OUT}),
        (_A.PAUSED, "Logout"): frozenset({_A.LOGGED_OUT}),
        (_A.WRAP_UP, "Logout"): frozenset({_A.LOGGED_OUT}),
        # With an offer ringing or a call up, logout waits (pending).
        (_A.RESERVED, "Logout"): frozenset({_A.RESERVED}),
        (_A.ON_CALL, "Logout"): frozenset({_A.ON_CALL}),
        (_A.READY, "Pause"): frozenset({_A.PAUSED}),
        (_A.PAUSED, "Pause"): frozenset({_A.PAUSED}),  # a new reason
        (_A.WRAP_UP, "Pause"): frozenset({_A.PAUSED}),
        (_A.RESERVED, "Pause"): frozenset({_A.RESERVED}),
        (_A.ON_CALL, "Pause"): frozenset({_A.ON_CALL}),
        (_A.PAUSED, "Unpause"): frozenset({_A.READY}),
        # Cancels a pending pause (a no-op without one).
        (_A.RESERVED, "Unpause"): frozenset({_A.RESERVED}),
        (_A.ON_CALL, "Unpause"): frozenset({_A.ON_CALL}),
        (_A.READY, "OfferMade"): frozenset({_A.RESERVED}),
        (_A.RESERVED, "OfferAnswered"): frozenset({_A.ON_CALL}),
        # Ring timeout, declined, or the agent leg failed: counts toward auto-pause.
        (_A.RESERVED, "OfferMissed"): _FREED,
        # Another agent won a ring-all, or the caller left: not the agent's fault.
        (_A.RESERVED, "OfferCancelled"): _FREED,
        (_A.ON_CALL, "CallEnded"): _FREED | {_A.WRAP_UP},
        # The wrap-up timer fired, or the agent said it is done early.
        (_A.WRAP_UP, "WrapUpEnded"): _FREED,
        # A new run finds the agent still talking on a call it adopts.
        (_A.LOGGED_OUT, "CallAdopted"): frozenset({_A.ON_CALL}),
        (_A.READY, "CallAdopted"): frozenset({_A.ON_CALL}),
        (_A.PAUSED, "CallAdopted"): frozenset({_A.ON_CALL}),
        # A new run puts an agent back as the last run left it (logged in).
        (_A.LOGGED_OUT, "Restore"): frozenset({_A.READY, _A.PAUSED}),
        # The controller stops: whatever the agent was doing, it is served no more.
        (_A.READY, "Shutdown"): frozenset({_A.LOGGED_OUT}),
        (_A.PAUSED, "Shutdown"): frozenset({_A.LOGGED_OUT}),
        (_A.RESERVED, "Shutdown"): frozenset({_A.LOGGED_OUT}),
        (_A.ON_CALL, "Shutdown"): frozenset({_A.LOGGED_OUT}),
        (_A.WRAP_UP, "Shutdown"): frozenset({_A.LOGGED_OUT}),
    },
)


class UnknownAgent(KeyError):
    """A command named an agent the board has no profile for."""


class CallMismatch(ValueError):
    """An offer or call event named a call the agent is not reserved for or on."""


class NotAMember(ValueError):
    """An offer from a queue the agent does not serve right now."""


@dataclass(frozen=True, slots=True)
class AgentStateRecord:
    """One row of agent_state_log: the agent's state from `at` on."""

    agent_id: str
    state: AgentState
    reason: str | None  # the pause reason; None unless paused
    tenants: tuple[str, ...]  # sorted; whom the agent serves from `at` on
    queues: tuple[str, ...]  # sorted
    at: datetime
    previous: AgentState
    event: str  # the table event, or "Reconfigured" for a membership change
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class LoggedState:
    """One agent_state_log row as a new run reads it back."""

    state: AgentState
    reason: str | None
    queues: tuple[str, ...]  # the queues it served; () when not recorded
    at: datetime


@dataclass(frozen=True, slots=True)
class Restoration:
    """How an agent comes back when the controller starts (`AgentBoard.restore`)."""

    paused_reason: str | None  # None: ready
    queues: tuple[str, ...]


def restoration(
    rows: Sequence[LoggedState], now: datetime, within: timedelta
) -> Restoration | None:
    """What an agent is when the controller starts, from its last log rows
    (newest first; two are enough). None: logged out.

    - Logged out by the agent (or never logged in): stays out.
    - Logged out by a stopping controller (SHUTDOWN_REASON), or for a run
      that died (LOST_REASON), less than `within` ago: back as it was
      before. After a longer stop (the night), out: the agent may have gone
      home.
    - Anything else (a dead run's rows without its LOST_REASON row): back as
      the log left it.

    Back means: paused stays paused with its reason; ready, ringing, on a
    call or in wrap-up comes back ready (a call that survived the restart
    is adopted after).
    """
    if not rows:
        return None
    last = rows[0]
    if last.state is _A.LOGGED_OUT:
        stopped = last.reason in _STOP_REASONS and now - last.at <= within
        if not stopped or len(rows) < 2:
            return None
        last = rows[1]
        if last.state is _A.LOGGED_OUT:
            return None
    if last.state is _A.PAUSED:
        return Restoration(last.reason or "restored", last.queues)
    return Restoration(None, last.queues)


_STOP_REASONS = frozenset({SHUTDOWN_REASON, LOST_REASON})


def lost_run_logout(
    last: LoggedState | None, alive_at: datetime | None, now: datetime
) -> LoggedState | None:
    """The row a starting controller writes for an agent whose last row
    (`last`) says logged in: the run that wrote it died without logging
    anyone out. Logged out as of `alive_at`, the last moment that run was
    known alive (its liveness stamp), so the time it was down is not billed
    as readiness. Never before the agent's own last row (the log stays in
    order), never after `now` (a clock stepped back). No stamp (a first
    start, a new data directory): as of the last row, which bills less
    rather than more. None when the agent is logged out already."""
    if last is None or last.state is _A.LOGGED_OUT:
        return None
    at = last.at if alive_at is None else max(last.at, min(alive_at, now))
    return LoggedState(_A.LOGGED_OUT, LOST_REASON, (), at)


@dataclass(frozen=True, slots=True)
class AvailableAgent:
    """A ready agent as the router sees it (only the queues it serves now)."""

    agent_id: str
    skills: Mapping[str, int]
    queues: Mapping[str, QueueMembership]
    idle_since: datetime
    calls_taken: int = 0


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """A read-only view of one agent, for the API, the engine and tests."""

    agent_id: str
    state: AgentState
    reason: str | None
    queues: tuple[str, ...]
    tenants: tuple[str, ...]
    since: datetime | None
    idle_since: datetime | None
    calls_taken: int
    missed_in_row: int
    call_id: str | None
    queue_id: str | None
    wrapup_until: datetime | None
    pending: str | None  # "logout", or the pending pause reason


@dataclass(frozen=True, slots=True)
class BoardChange:
    """What one command did: log rows to persist, timers to start or cancel."""

    records: tuple[AgentStateRecord, ...] = ()
    timers: tuple[StartTimer | CancelTimer, ...] = ()
    auto_paused: bool = False


_NO_CHANGE = BoardChange()
_LOGOUT = "\x00logout"  # pending marker; a pause reason is never this


@dataclass(slots=True)
class _Agent:
    profile: AgentProfile
    state: AgentState = _A.LOGGED_OUT
    reason: str | None = None
    served: tuple[str, ...] = ()  # queue ids, sorted
    tenants: tuple[str, ...] = ()
    since: datetime | None = None
    idle_since: datetime | None = None
    calls_taken: int = 0
    missed_in_row: int = 0
    call_id: str | None = None
    queue_id: str | None = None
    pending: str | None = None
    wrapup_until: datetime | None = None
    wrapup_timer: str | None = None
    login_queues: frozenset[str] | None = None  # None: every membership
    view: AvailableAgent | None = None  # cached while ready: the router reads it often


class AgentBoard:
    """Every agent's state. Mutated only through its commands, each of which
    returns the log rows and timers it produced."""

    def __init__(
        self,
        profiles: Iterable[AgentProfile],
        queues: Iterable[Queue] | Mapping[str, Queue],
        *,
        auto_pause_after: int = 3,
    ) -> None:
        if auto_pause_after < 0:
            raise ValueError("auto_pause_after must not be negative")
        self.auto_pause_after = auto_pause_after
        self._queues = _queue_map(queues)
        self._agents: dict[str, _Agent] = {}
        for profile in profiles:
            if profile.id in self._agents:
                raise ValueError(f"agent {profile.id} listed twice")
            self._agents[profile.id] = _Agent(profile)
        self._timers: dict[str, str] = {}  # armed wrap-up timer -> agent id
        self._timer_serial = 0

    @property
    def queues(self) -> Mapping[str, Queue]:
        return MappingProxyType(self._queues)

    # -- commands from the agent (feature codes, API) ---------------------------------

    def login(
        self,
        agent_id: str,
        now: datetime,
        *,
        queues: Iterable[str] | None = None,
        paused_reason: str | None = None,
    ) -> BoardChange:
        """Log in to every membership, or to the given subset of them."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "Login")  # a refusal first, as for any command
        chosen: frozenset[str] | None = None
        if queues is not None:
            chosen = frozenset(queues)
            unknown = chosen - {m.queue_id for m in ag.profile.memberships}
            if unknown:
                raise NotAMember(f"agent {agent_id} is no member of {sorted(unknown)}")
        return self._log_in(ag, chosen, paused_reason, now, "Login")

    def restore(
        self,
        agent_id: str,
        now: datetime,
        *,
        queues: Iterable[str] = (),
        paused_reason: str | None = None,
    ) -> BoardChange:
        """Log the agent back in as an earlier run left it (`restoration`):
        to the queues it had chosen that it is still a member of, or to
        every membership when none of them is left (or none was recorded)."""
        ag = self._get(agent_id, now)
        kept = frozenset(queues) & {m.queue_id for m in ag.profile.memberships}
        return self._log_in(ag, kept or None, paused_reason, now, "Restore")

    def call_adopted(
        self, agent_id: str, call_id: str, queue_id: str, now: datetime
    ) -> BoardChange:
        """A new run found the agent still talking on a call of an earlier run:
        on that call now. Logged out: logged in to every membership first;
        paused: paused again (same reason) when the call ends."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "CallAdopted")
        paused_for = ag.reason if ag.state is _A.PAUSED else None
        if ag.state is _A.LOGGED_OUT:
            self._join(ag, None)
        ag.pending = paused_for
        ag.call_id, ag.queue_id = call_id, queue_id
        ag.calls_taken += 1
        return BoardChange(self._set(ag, _A.ON_CALL, None, now, "CallAdopted"))

    def shutdown(self, agent_id: str, now: datetime) -> BoardChange:
        """The controller stops: log the agent out, saying why (SHUTDOWN_REASON)."""
        ag = self._get(agent_id, now)
        return self._free(ag, _A.LOGGED_OUT, SHUTDOWN_REASON, now, "Shutdown")

    def logout(self, agent_id: str, now: datetime) -> BoardChange:
        ag = self._get(agent_id, now)
        targets = AGENT_TRANSITIONS.targets(ag.state, "Logout")
        if _A.LOGGED_OUT not in targets:
            ag.pending = _LOGOUT
            return _NO_CHANGE
        return self._free(ag, _A.LOGGED_OUT, None, now, "Logout")

    def pause(self, agent_id: str, reason: str, now: datetime) -> BoardChange:
        _reason(reason)
        ag = self._get(agent_id, now)
        targets = AGENT_TRANSITIONS.targets(ag.state, "Pause")
        if _A.PAUSED not in targets:
            if ag.pending != _LOGOUT:  # a pending logout outranks a pause
                ag.pending = reason
            return _NO_CHANGE
        return self._free(ag, _A.PAUSED, reason, now, "Pause")

    def unpause(self, agent_id: str, now: datetime) -> BoardChange:
        ag = self._get(agent_id, now)
        targets = AGENT_TRANSITIONS.targets(ag.state, "Unpause")
        if _A.READY not in targets:
            if ag.pending != _LOGOUT:
                ag.pending = None
            return _NO_CHANGE
        ag.idle_since = now
        return BoardChange(self._set(ag, _A.READY, None, now, "Unpause"))

    def end_wrapup(self, agent_id: str, now: datetime) -> BoardChange:
        """The agent is done with its notes before the wrap-up timer."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "WrapUpEnded")
        return self._wrapup_over(ag, now)

    # -- what happens to offers and calls (the engine reports these) ---------------------

    def offer_made(self, agent_id: str, call_id: str, queue_id: str, now: datetime) -> BoardChange:
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "OfferMade")
        if queue_id not in ag.served:
            raise NotAMember(f"agent {agent_id} does not serve queue {queue_id} now")
        ag.call_id, ag.queue_id = call_id, queue_id
        return BoardChange(self._set(ag, _A.RESERVED, None, now, "OfferMade"))

    def offer_answered(self, agent_id: str, call_id: str, now: datetime) -> BoardChange:
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "OfferAnswered")
        self._same_call(ag, call_id)
        ag.calls_taken += 1
        ag.missed_in_row = 0
        return BoardChange(self._set(ag, _A.ON_CALL, None, now, "OfferAnswered"))

    def offer_missed(self, agent_id: str, call_id: str, now: datetime) -> BoardChange:
        """Ring timeout, declined, or the agent leg failed."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "OfferMissed")
        self._same_call(ag, call_id)
        ag.missed_in_row += 1
        auto = 0 < self.auto_pause_after <= ag.missed_in_row
        if ag.pending == _LOGOUT:
            return self._free(ag, _A.LOGGED_OUT, None, now, "OfferMissed")
        if auto:
            change = self._free(ag, _A.PAUSED, AUTO_PAUSE_REASON, now, "OfferMissed")
            return BoardChange(change.records, change.timers, auto_paused=True)
        return self._become_free(ag, now, "OfferMissed", keep_idle=True)

    def offer_cancelled(self, agent_id: str, call_id: str, now: datetime) -> BoardChange:
        """Another agent won the ring-all, or the caller hung up while it rang."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "OfferCancelled")
        self._same_call(ag, call_id)
        return self._become_free(ag, now, "OfferCancelled", keep_idle=True)

    def call_ended(
        self, agent_id: str, call_id: str, now: datetime, *, wrapup_ms: int | None = None
    ) -> BoardChange:
        """The bridged call is over: wrap-up for the queue's `wrapup_ms`
        (or the given override), then ready."""
        ag = self._get(agent_id, now)
        AGENT_TRANSITIONS.targets(ag.state, "CallEnded")
        self._same_call(ag, call_id)
        if wrapup_ms is None:
            queue = self._queues.get(ag.queue_id or "")
            wrapup_ms = queue.wrapup_ms if queue is not None else 0
        if wrapup_ms < 0:
            raise ValueError("wrapup_ms must not be negative")
        if wrapup_ms == 0:
            return self._become_free(ag, now, "CallEnded", keep_idle=False)
        self._timer_serial += 1
        timer_id = f"{AGENT_TIMER_PREFIX}{agent_id}/wrapup/{self._timer_serial}"
        self._timers[timer_id] = agent_id
        ag.wrapup_timer = timer_id
        ag.wrapup_until = now + timedelta(milliseconds=wrapup_ms)
        records = self._set(ag, _A.WRAP_UP, None, now, "CallEnded")
        return BoardChange(records, (StartTimer(timer_id, wrapup_ms),))

    def timer_fired(self, timer_id: str, now: datetime) -> BoardChange:
        _aware(now)
        agent_id = self._timers.pop(timer_id, None)
        if agent_id is None:
            return _NO_CHANGE  # cancelled or already handled: a harmless race
        ag = self._agents[agent_id]
        ag.wrapup_timer = None  # it has fired: nothing to cancel any more
        return self._wrapup_over(ag, now)

    def owns_timer(self, timer_id: str) -> bool:
        return timer_id.startswith(AGENT_TIMER_PREFIX)

    # -- configuration --------------------------------------------------------------

    def reconfigure(
        self,
        profiles: Iterable[AgentProfile],
        queues: Iterable[Queue] | Mapping[str, Queue],
        now: datetime,
    ) -> BoardChange:
        """New profiles and queues. A logged-in agent whose served queues or
        tenants change gets a "Reconfigured" row, so readiness shares follow.
        An agent may be dropped only while logged out."""
        _aware(now)
        new_queues = _queue_map(queues)
        by_id = {p.id: p for p in profiles}
        dropped = [i for i, ag in self._agents.items() if i not in by_id]
        busy = [i for i in dropped if self._agents[i].state is not _A.LOGGED_OUT]
        if busy:
            raise ValueError(f"agents {sorted(busy)} are logged in: log them out first")
        self._queues = new_queues
        for agent_id in dropped:
            del self._agents[agent_id]
        records: list[AgentStateRecord] = []
        for profile in by_id.values():
            ag = self._agents.get(profile.id)
            if ag is None:
                self._agents[profile.id] = _Agent(profile)
                continue
            ag.profile = profile
            if ag.state is _A.LOGGED_OUT:
                continue
            before = (ag.served, ag.tenants)
            self._serve(ag)
            ag.view = None
            if (ag.served, ag.tenants) != before:
                records.append(self._record(ag, ag.state, now, "Reconfigured"))
        return BoardChange(tuple(records))

    # -- reading ------------------------------------------------------------------------

    def available(self) -> tuple[AvailableAgent, ...]:
        """Ready agents that serve at least one queue, for `Router.route`."""
        out: list[AvailableAgent] = []
        for ag in self._agents.values():
            if ag.state is _A.READY and ag.served:
                if ag.view is None:
                    ag.view = self._view(ag)
                out.append(ag.view)
        return tuple(out)

    def staffed(self, queue_id: str) -> int:
        """Agents logged in to the queue and not paused (estimated-wait input)."""
        return sum(
            1
            for ag in self._agents.values()
            if ag.state in READINESS_STATES and queue_id in ag.served
        )

    def status(self, agent_id: str) -> AgentStatus:
        ag = self._get(agent_id)
        return AgentStatus(
            agent_id=agent_id,
            state=ag.state,
            reason=ag.reason,
            queues=ag.served,
            tenants=ag.tenants,
            since=ag.since,
            idle_since=ag.idle_since,
            calls_taken=ag.calls_taken,
            missed_in_row=ag.missed_in_row,
            call_id=ag.call_id,
            queue_id=ag.queue_id,
            wrapup_until=ag.wrapup_until,
            pending="logout" if ag.pending == _LOGOUT else ag.pending,
        )

    def statuses(self) -> tuple[AgentStatus, ...]:
        return tuple(self.status(agent_id) for agent_id in self._agents)

    def agent_ids(self) -> tuple[str, ...]:
        return tuple(self._agents)

    # -- internals -----------------------------------------------------------------------

    def _get(self, agent_id: str, now: datetime | None = None) -> _Agent:
        if now is not None:
            _aware(now)
        try:
            return self._agents[agent_id]
        except KeyError:
            raise UnknownAgent(agent_id) from None

    @staticmethod
    def _same_call(ag: _Agent, call_id: str) -> None:
        if ag.call_id != call_id:
            raise CallMismatch(f"agent {ag.profile.id} has call {ag.call_id}, not {call_id}")

    def _serve(self, ag: _Agent) -> None:
        """Recompute the queues (and their tenants) the agent serves."""
        queues = sorted(
            m.queue_id
            for m in ag.profile.memberships
            if m.queue_id in self._queues
            and (ag.login_queues is None or m.queue_id in ag.login_queues)
        )
        ag.served = tuple(queues)
        ag.tenants = tuple(sorted({self._queues[q].tenant_id for q in queues}))

    def _view(self, ag: _Agent) -> AvailableAgent:
        assert ag.idle_since is not None  # set on every way into READY
        memberships = {m.queue_id: m for m in ag.profile.memberships if m.queue_id in ag.served}
        return AvailableAgent(
            ag.profile.id,
            ag.profile.skills,
            MappingProxyType(memberships),
            ag.idle_since,
            ag.calls_taken,
        )

    def _log_in(
        self,
        ag: _Agent,
        queues: frozenset[str] | None,
        paused_reason: str | None,
        now: datetime,
        event: str,
    ) -> BoardChange:
        target = _A.READY if paused_reason is None else _A.PAUSED
        AGENT_TRANSITIONS.move(ag.state, event, target)
        if paused_reason is not None:
            _reason(paused_reason)
        self._join(ag, queues)
        ag.idle_since = now if target is _A.READY else None
        return BoardChange(self._set(ag, target, paused_reason, now, event))

    def _join(self, ag: _Agent, queues: frozenset[str] | None) -> None:
        """Logging in: the queues chosen (None: every membership), fresh counts."""
        ag.login_queues = queues
        ag.calls_taken = 0
        ag.missed_in_row = 0
        ag.pending = None
        self._serve(ag)

    def _wrapup_over(self, ag: _Agent, now: datetime) -> BoardChange:
        cancel = self._cancel_wrapup(ag)
        change = self._become_free(ag, now, "WrapUpEnded", keep_idle=False)
        return BoardChange(change.records, cancel + change.timers)

    def _become_free(
        self, ag: _Agent, now: datetime, event: str, *, keep_idle: bool
    ) -> BoardChange:
        """The agent would be ready now: a pending command may say otherwise."""
        if ag.pending == _LOGOUT:
            return self._free(ag, _A.LOGGED_OUT, None, now, event)
        if ag.pending is not None:
            return self._free(ag, _A.PAUSED, ag.pending, now, event)
        if not keep_idle or ag.idle_since is None:
            ag.idle_since = now
        ag.call_id = ag.queue_id = None
        return BoardChange(self._set(ag, _A.READY, None, now, event))

    def _free(
        self, ag: _Agent, target: AgentState, reason: str | None, now: datetime, event: str
    ) -> BoardChange:
        """Move to paused or logged out, ending any wrap-up and pending command."""
        AGENT_TRANSITIONS.move(ag.state, event, target)  # refuse before changing anything
        cancel = self._cancel_wrapup(ag)
        ag.pending = None
        ag.call_id = ag.queue_id = None
        ag.missed_in_row = 0
        if target is _A.LOGGED_OUT:
            # The row says the agent serves nobody from now on.
            ag.served, ag.tenants, ag.login_queues, ag.idle_since = (), (), None, None
        return BoardChange(self._set(ag, target, reason, now, event), cancel)

    def _cancel_wrapup(self, ag: _Agent) -> tuple[CancelTimer, ...]:
        ag.wrapup_until = None
        timer_id, ag.wrapup_timer = ag.wrapup_timer, None
        if timer_id is None:
            return ()
        self._timers.pop(timer_id, None)
        return (CancelTimer(timer_id),)

    def _set(
        self, ag: _Agent, target: AgentState, reason: str | None, now: datetime, event: str
    ) -> tuple[AgentStateRecord, ...]:
        previous = ag.state
        ag.state = AGENT_TRANSITIONS.move(previous, event, target)
        ag.view = None
        if previous is target and ag.reason == reason:
            return ()  # e.g. the same pause reason again: nothing changed
        ag.reason = reason
        ag.since = now
        return (self._record(ag, target, now, event, previous=previous),)

    def _record(
        self,
        ag: _Agent,
        state: AgentState,
        now: datetime,
        event: str,
        *,
        previous: AgentState | None = None,
    ) -> AgentStateRecord:
        return AgentStateRecord(
            agent_id=ag.profile.id,
            state=state,
            reason=ag.reason,
            tenants=ag.tenants,
            queues=ag.served,
            at=now,
            previous=state if previous is None else previous,
            event=event,
            call_id=ag.call_id,
        )


def _aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _reason(reason: str) -> None:
    if not reason or reason == _LOGOUT:
        raise ValueError("a pause needs a reason")
    if len(reason) > MAX_REASON_LENGTH:
        raise ValueError(f"a pause reason has at most {MAX_REASON_LENGTH} characters")


def _queue_map(queues: Iterable[Queue] | Mapping[str, Queue]) -> dict[str, Queue]:
    items = queues.values() if isinstance(queues, Mapping) else queues
    out: dict[str, Queue] = {}
    for q in items:
        if q.id in out:
            raise ValueError(f"queue {q.id} listed twice")
        out[q.id] = q
    return out
