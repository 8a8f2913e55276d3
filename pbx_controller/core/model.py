"""The configuration the core decides with: tenants and their DIDs.

Plain frozen data, loaded by the service from the database and handed to
the engine; the engine never reads configuration itself. Queues, agents
with their skills and queue memberships, and business hours follow the
tenants; contracts live in contract.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import Enum
from types import MappingProxyType
from zoneinfo import ZoneInfo

from pbx_controller.core.consent import NEVER_RECORD, ConsentRules, RecordingRules

# Frozen, so one shared default instance is safe.
KEEP_90_DAYS = RecordingRules()


@dataclass(frozen=True, slots=True)
class Tenant:
    """A client firm of the call center."""

    id: str
    name: str
    timezone: str = "Europe/Warsaw"
    # Asterisk media URIs played to every caller first, e.g. "sound:hello-world".
    greeting: tuple[str, ...] = ("sound:hello-world",)
    # None: always open.
    business_hours: BusinessHours | None = None
    # Recording consent. The core's default never records; a tenant from
    # pbx.toml gets opt_in (explicit consent) unless it says otherwise.
    consent: ConsentRules = NEVER_RECORD
    recording: RecordingRules = KEEP_90_DAYS

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("tenant id must not be empty")


class DuplicateDid(ValueError):
    pass


@dataclass(frozen=True)
class Directory:
    """Everything the engine routes with: DID -> tenant (and queue), the
    queues, and the agents. One DID belongs to exactly one tenant."""

    tenants: Mapping[str, Tenant] = field(default_factory=dict)
    dids: Mapping[str, str] = field(default_factory=dict)
    # DID -> queue; a DID without one is answered with the greeting alone.
    did_queues: Mapping[str, str] = field(default_factory=dict)
    queues: Mapping[str, Queue] = field(default_factory=dict)
    agents: Mapping[str, AgentProfile] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        tenants: Iterable[Tenant],
        dids: Iterable[tuple[str, str]],
        *,
        queues: Iterable[Queue] = (),
        agents: Iterable[AgentProfile] = (),
        did_queues: Iterable[tuple[str, str]] = (),
    ) -> Directory:
        by_id = {t.id: t for t in tenants}
        did_map: dict[str, str] = {}
        for did, tenant_id in dids:
            if tenant_id not in by_id:
                raise ValueError(f"DID {did} names unknown tenant {tenant_id!r}")
            if did in did_map and did_map[did] != tenant_id:
                raise DuplicateDid(f"DID {did} belongs to {did_map[did]!r} and {tenant_id!r}")
            did_map[did] = tenant_id
        queue_map = {q.id: q for q in queues}
        for q in queue_map.values():
            if q.tenant_id not in by_id:
                raise ValueError(f"queue {q.id} names unknown tenant {q.tenant_id!r}")
        did_queue_map: dict[str, str] = {}
        for did, queue_id in did_queues:
            if did not in did_map:
                raise ValueError(f"queue {queue_id} is given for unknown DID {did}")
            queue = queue_map.get(queue_id)
            if queue is None:
                raise ValueError(f"DID {did} names unknown queue {queue_id!r}")
            if queue.tenant_id != did_map[did]:
                # One tenant's callers never wait in another tenant's queue.
                raise ValueError(
                    f"DID {did} of {did_map[did]!r} names queue {queue_id!r} of {queue.tenant_id!r}"
                )
            did_queue_map[did] = queue_id
        agent_map = {a.id: a for a in agents}
        for agent in agent_map.values():
            for membership in agent.memberships:
                if membership.queue_id not in queue_map:
                    raise ValueError(
                        f"agent {agent.id} names unknown queue {membership.queue_id!r}"
                    )
        return cls(
            MappingProxyType(by_id),
            MappingProxyType(did_map),
            MappingProxyType(did_queue_map),
            MappingProxyType(queue_map),
            MappingProxyType(agent_map),
        )

    def tenant_for_did(self, did: str) -> Tenant | None:
        tenant_id = self.dids.get(did)
        return None if tenant_id is None else self.tenants[tenant_id]

    def queue_for_did(self, did: str) -> Queue | None:
        queue_id = self.did_queues.get(did)
        return None if queue_id is None else self.queues[queue_id]

    def agent_for_endpoint(self, endpoint: str) -> AgentProfile | None:
        """The agent whose phone is `endpoint` ("agent-7" or "PJSIP/agent-7")."""
        for agent in self.agents.values():
            if agent.endpoint in (endpoint, f"PJSIP/{endpoint}"):
                return agent
        return None


# -- queues, agents, skills, business hours ----------------------------------------------
#
# Frozen configuration the routing engine and the agent board decide with.
# Durations are integer milliseconds; skill levels run 1 (novice) to 10.

SKILL_LEVELS = range(1, 11)


def _level(value: int, name: str) -> None:
    if value not in SKILL_LEVELS:
        raise ValueError(f"{name} must be a skill level 1-10, got {value!r}")


def _non_negative(value: int | None, name: str) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


class Strategy(Enum):
    """How a queue picks among eligible agents (routing.py documents each order)."""

    LONGEST_IDLE = "longest_idle"
    LEAST_CALLS = "least_calls"
    ROUND_ROBIN = "round_robin"
    LINEAR = "linear"
    WEIGHTED_RANDOM = "weighted_random"
    RING_ALL = "ring_all"


@dataclass(frozen=True, slots=True)
class Relaxation:
    """After a caller has waited `after_ms`, the skill's minimum level drops to
    `min_level`, or (with `optional`) the skill is no longer required."""

    after_ms: int
    min_level: int | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        _non_negative(self.after_ms, "after_ms")
        if (self.min_level is None) == (not self.optional):
            raise ValueError("a relaxation sets either min_level or optional, not both")
        if self.min_level is not None:
            _level(self.min_level, "min_level")


@dataclass(frozen=True, slots=True)
class SkillRequirement:
    """A queue needs `skill` at `min_level` or better; relaxations only widen."""

    skill: str
    min_level: int = 1
    relaxations: tuple[Relaxation, ...] = ()

    def __post_init__(self) -> None:
        if not self.skill:
            raise ValueError("skill must not be empty")
        _level(self.min_level, "min_level")
        level: int | None = self.min_level
        last_ms = -1
        for step in self.relaxations:
            if step.after_ms <= last_ms:
                raise ValueError(f"{self.skill}: relaxations must be in increasing after_ms")
            if level is None:
                raise ValueError(f"{self.skill}: no relaxation can follow 'optional'")
            if step.min_level is not None and step.min_level >= level:
                # A relaxation that tightens would un-match callers already matched.
                raise ValueError(f"{self.skill}: a relaxation must lower the level")
            level, last_ms = step.min_level, step.after_ms

    def level_after(self, waited_ms: int) -> int | None:
        """The minimum level in force after waiting `waited_ms`; None = optional."""
        level: int | None = self.min_level
        for step in self.relaxations:
            if waited_ms < step.after_ms:
                break
            level = step.min_level
        return level


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """Callers matching every given field get `priority` (higher is served first).
    An empty field matches anything."""

    priority: int
    caller_prefix: str = ""
    did: str = ""

    def matches(self, caller: str, did: str) -> bool:
        return caller.startswith(self.caller_prefix) and (not self.did or self.did == did)


@dataclass(frozen=True, slots=True)
class OverflowRule:
    """Placeholder for the overflow issue: where a caller goes after `after_ms`
    (or at once when nobody staffs the queue). The router does not read it."""

    after_ms: int | None = None
    when_unstaffed: bool = False
    queue_id: str | None = None
    dialplan_context: str | None = None


@dataclass(frozen=True, slots=True)
class Announcements:
    """What a waiting caller hears: hold music and, every `every_ms`, their
    position and the estimated wait (kpi.estimated_wait_ms)."""

    hold_music: str = "default"
    position: bool = True
    estimated_wait: bool = True
    first_after_ms: int = 15_000
    every_ms: int = 30_000

    def __post_init__(self) -> None:
        _non_negative(self.first_after_ms, "first_after_ms")
        if self.every_ms <= 0:
            raise ValueError("every_ms must be positive")


@dataclass(frozen=True, slots=True)
class Queue:
    id: str
    tenant_id: str
    name: str = ""
    strategy: Strategy = Strategy.LONGEST_IDLE
    skills: tuple[SkillRequirement, ...] = ()
    ring_timeout_ms: int = 15_000
    wrapup_ms: int = 10_000
    max_wait_ms: int | None = None
    max_callers: int | None = None
    # The service-level threshold reports use (80/20: 80 % within 20 s).
    service_level_ms: int = 20_000
    default_priority: int = 0
    priority_rules: tuple[PriorityRule, ...] = ()
    overflow: tuple[OverflowRule, ...] = ()
    announcements: Announcements = Announcements()

    def __post_init__(self) -> None:
        if not self.id or not self.tenant_id:
            raise ValueError("queue id and tenant_id must not be empty")
        if self.ring_timeout_ms <= 0:
            raise ValueError("ring_timeout_ms must be positive")
        for name in ("wrapup_ms", "max_wait_ms", "max_callers", "service_level_ms"):
            _non_negative(getattr(self, name), name)
        names = [req.skill for req in self.skills]
        if len(set(names)) != len(names):
            raise ValueError(f"queue {self.id}: a skill is required twice")

    def priority_for(self, caller: str, did: str) -> int:
        """The highest priority of the matching rules, else the default."""
        found = [r.priority for r in self.priority_rules if r.matches(caller, did)]
        return max(found, default=self.default_priority)

    def requirements_after(self, waited_ms: int) -> tuple[tuple[str, int], ...]:
        """(skill, min level) still required after waiting `waited_ms`."""
        out: list[tuple[str, int]] = []
        for req in self.skills:
            level = req.level_after(waited_ms)
            if level is not None:
                out.append((req.skill, level))
        return tuple(out)

    def admits(self, callers_waiting: int) -> bool:
        return self.max_callers is None or callers_waiting < self.max_callers


@dataclass(frozen=True, slots=True)
class QueueMembership:
    """An agent's place in a queue. Lower `penalty` is offered first; `order`
    is the agent's place for linear and round-robin; `weight` is its share
    under weighted random."""

    queue_id: str
    penalty: int = 0
    order: int = 0
    weight: int = 1

    def __post_init__(self) -> None:
        _non_negative(self.penalty, "penalty")
        if self.weight <= 0:
            raise ValueError("weight must be positive")


@dataclass(frozen=True, slots=True)
class AgentProfile:
    id: str
    name: str
    endpoint: str  # what an agent leg dials, e.g. "PJSIP/agent-7"
    skills: Mapping[str, int] = field(default_factory=dict)
    memberships: tuple[QueueMembership, ...] = ()
    recording_consent: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("agent id must not be empty")
        for skill, level in self.skills.items():
            _level(level, f"agent {self.id} skill {skill}")
        queues = [m.queue_id for m in self.memberships]
        if len(set(queues)) != len(queues):
            raise ValueError(f"agent {self.id}: a queue membership is listed twice")
        # Read-only, so a profile shared by the board and the router cannot drift.
        object.__setattr__(self, "skills", MappingProxyType(dict(self.skills)))

    def membership(self, queue_id: str) -> QueueMembership | None:
        for m in self.memberships:
            if m.queue_id == queue_id:
                return m
        return None


@dataclass(frozen=True, slots=True)
class OpenWindow:
    """Open on `weekday` (0 = Monday) from `start` to `end`, tenant-local wall
    time. `end` <= `start` runs past midnight into the next day; `end` ==
    `start` is open the whole 24 hours."""

    weekday: int
    start: time
    end: time

    def __post_init__(self) -> None:
        if self.weekday not in range(7):
            raise ValueError(f"weekday must be 0 (Monday) to 6, got {self.weekday}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window times are tenant-local wall times, without tzinfo")


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """Weekly opening windows plus holidays (whole local dates, closed)."""

    windows: tuple[OpenWindow, ...] = ()
    holidays: frozenset[date] = frozenset()

    def is_open(self, instant: datetime, zone: str | ZoneInfo) -> bool:
        if instant.utcoffset() is None:
            raise ValueError("instant must be timezone-aware")
        tz = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
        # Wall time from the instant: DST gaps never occur, folds read the same.
        local = instant.astimezone(tz)
        if local.date() in self.holidays:
            return False
        wall, day = local.time().replace(tzinfo=None, fold=0), local.weekday()
        for w in self.windows:
            if w.start < w.end:
                if w.weekday == day and w.start <= wall < w.end:
                    return True
            elif w.start == w.end:
                if w.weekday == day:
                    return True
            elif (w.weekday == day and wall >= w.start) or (
                (w.weekday + 1) % 7 == day and wall < w.end
            ):
                return True
        return False
